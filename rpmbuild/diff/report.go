package diff

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ReportSchema is the version of the JSON form of Report.
const ReportSchema = 1

// Report is the patch report: of one translation unit (Result.Report), or of one
// target ELF (MergeReports). The pipeline prints its text form and stores the JSON
// next to patch.json in the patch RPM; `syscare info` shows Summary.
type Report struct {
	Schema int    `json:"schema"`
	Target string `json:"target,omitempty"`
	// Files are the translation units the report covers.
	Files []string `json:"files,omitempty"`
	// Changed lists the replaced functions with the reason each is in the patch.
	Changed []FuncChange `json:"changed"`
	// New lists functions that exist only in the fixed build.
	New []string `json:"new"`
	// LineOnly lists functions left out because only line numbers moved.
	LineOnly []string `json:"line_only"`
	Warnings []string `json:"warnings"`
	// NoChange lists translation units that compiled differently in no functional way.
	NoChange []string `json:"no_change,omitempty"`
	// Notes are remarks of the pipeline (e.g. a changed file that goes into no binary).
	Notes   []string `json:"notes,omitempty"`
	Refused *Refusal `json:"refused,omitempty"`
}

// FuncChange is one replaced function.
type FuncChange struct {
	Name string `json:"name"`
	File string `json:"file,omitempty"`
	// Why: "code changed", "inlining", "ipa clone", "cold part" or "read-only data".
	Why    string `json:"why"`
	Detail string `json:"detail,omitempty"`
	// Inlines names the functions whose inlined copies the function carries.
	Inlines []string `json:"inlines,omitempty"`
}

// Refusal is why a patch cannot be built.
type Refusal struct {
	File     string `json:"file,omitempty"`
	Function string `json:"function"`
	Section  string `json:"section"`
	Reason   string `json:"reason"`
}

// Reasons a function is in the patch.
const (
	WhyCode     = "code changed"
	WhyInlining = "inlining"
	WhyIPA      = "ipa clone"
	WhyCold     = "cold part"
	WhyData     = "read-only data"
)

func isClone(name string) bool {
	for _, s := range []string{".isra", ".constprop", ".part", ".lto_priv"} {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

// Report describes the result of a successful Diff.
func (r *Result) Report() *Report {
	rp := &Report{Schema: ReportSchema, Files: []string{r.File}, New: r.New(), LineOnly: append([]string(nil), r.LineOnly...),
		Warnings: append([]string(nil), r.Warnings...)}
	changed := map[string]bool{}
	for _, n := range r.changed {
		changed[n] = true
	}
	p := r.patched
	for _, s := range p.secs {
		if !s.include || !s.exec() || s.status != Changed {
			continue
		}
		f := s.primary()
		if f == nil || f.twin == nil || isCold(f.name) {
			continue
		}
		fc := FuncChange{Name: f.twin.name, File: r.File, Why: WhyCode, Inlines: r.inlines[f.name]}
		var changedInlines []string
		for _, g := range fc.Inlines {
			if changed[g] && g != f.twin.name {
				changedInlines = append(changedInlines, g)
			}
		}
		switch {
		case strings.HasPrefix(s.reason, "uses changed read-only data"):
			fc.Why, fc.Detail = WhyData, s.reason
		case strings.HasPrefix(s.reason, "its cold part"):
			fc.Why, fc.Detail = WhyCold, s.reason
		case len(changedInlines) > 0:
			fc.Why, fc.Detail = WhyInlining, "carries an inlined copy of changed "+strings.Join(changedInlines, ", ")
		case isClone(f.name) || isClone(f.twin.name):
			fc.Why, fc.Detail = WhyIPA, "compiler clone of "+strings.SplitN(f.twin.name, ".", 2)[0]
		}
		rp.Changed = append(rp.Changed, fc)
	}
	sort.Slice(rp.Changed, func(i, j int) bool { return rp.Changed[i].Name < rp.Changed[j].Name })
	return rp
}

// ReportError describes a Diff that ended in ErrNoChange or an *UnpatchableError for
// the translation unit file; other errors give nil.
func ReportError(file string, err error) *Report {
	rp := &Report{Schema: ReportSchema, Files: []string{file}}
	var ue *UnpatchableError
	switch {
	case errors.As(err, &ue):
		rp.Refused = &Refusal{File: file, Function: ue.Function, Section: ue.Section, Reason: ue.Reason}
	case errors.Is(err, ErrNoChange):
		rp.NoChange = []string{file}
	default:
		return nil
	}
	return rp
}

// MergeReports joins the reports of the translation units that make up one target ELF.
// The first refusal wins.
func MergeReports(target string, parts ...*Report) *Report {
	m := &Report{Schema: ReportSchema, Target: target}
	for _, p := range parts {
		if p == nil {
			continue
		}
		m.Files = append(m.Files, p.Files...)
		m.Changed = append(m.Changed, p.Changed...)
		m.New = append(m.New, p.New...)
		m.LineOnly = append(m.LineOnly, p.LineOnly...)
		m.Warnings = append(m.Warnings, p.Warnings...)
		m.NoChange = append(m.NoChange, p.NoChange...)
		m.Notes = append(m.Notes, p.Notes...)
		if m.Refused == nil && p.Refused != nil {
			r := *p.Refused
			m.Refused = &r
		}
	}
	sort.SliceStable(m.Changed, func(i, j int) bool {
		if m.Changed[i].File != m.Changed[j].File {
			return m.Changed[i].File < m.Changed[j].File
		}
		return m.Changed[i].Name < m.Changed[j].Name
	})
	for _, l := range []*[]string{&m.Files, &m.New, &m.LineOnly, &m.NoChange} {
		sort.Strings(*l)
	}
	return m
}

// JSON renders the report for the patch RPM.
func (rp *Report) JSON() ([]byte, error) {
	c := *rp
	for _, l := range []*[]string{&c.New, &c.LineOnly, &c.Warnings} {
		if *l == nil {
			*l = []string{}
		}
	}
	if c.Changed == nil {
		c.Changed = []FuncChange{}
	}
	b, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// ParseReport reads the JSON form back.
func ParseReport(b []byte) (*Report, error) {
	var rp Report
	if err := json.Unmarshal(b, &rp); err != nil {
		return nil, fmt.Errorf("patch report: %w", err)
	}
	if rp.Schema != ReportSchema {
		return nil, fmt.Errorf("patch report: schema %d, want %d", rp.Schema, ReportSchema)
	}
	return &rp, nil
}

// Summary is one line for `syscare info`.
func (rp *Report) Summary() string {
	if rp.Refused != nil {
		return fmt.Sprintf("refused: function %s, section %s: %s", rp.Refused.Function, rp.Refused.Section, rp.Refused.Reason)
	}
	var dep int
	for _, c := range rp.Changed {
		if c.Why != WhyCode {
			dep++
		}
	}
	return fmt.Sprintf("%d changed functions (%d through inlining, clones or data), %d new, %d line-only left out, %d warnings",
		len(rp.Changed), dep, len(rp.New), len(rp.LineOnly), len(rp.Warnings))
}

// Text renders the report for a terminal and the build log.
func (rp *Report) Text() string {
	var b strings.Builder
	if rp.Target != "" {
		fmt.Fprintf(&b, "Patch report for %s\n", rp.Target)
	} else {
		b.WriteString("Patch report\n")
	}
	if len(rp.Files) > 0 {
		fmt.Fprintf(&b, "  files: %s\n", strings.Join(rp.Files, " "))
	}
	if rp.Refused != nil {
		fmt.Fprintf(&b, "  REFUSED: function %s, section %s: %s\n", rp.Refused.Function, rp.Refused.Section, rp.Refused.Reason)
		if rp.Refused.File != "" {
			fmt.Fprintf(&b, "    in %s\n", rp.Refused.File)
		}
	}
	fmt.Fprintf(&b, "  changed functions (%d):\n", len(rp.Changed))
	for _, c := range rp.Changed {
		fmt.Fprintf(&b, "    %s", c.Name)
		if c.File != "" {
			fmt.Fprintf(&b, " (%s)", c.File)
		}
		fmt.Fprintf(&b, ": %s", c.Why)
		if c.Detail != "" {
			fmt.Fprintf(&b, ", %s", c.Detail)
		}
		if len(c.Inlines) > 0 {
			fmt.Fprintf(&b, " [inlines %s]", strings.Join(c.Inlines, ", "))
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "  new functions (%d): %s\n", len(rp.New), list(rp.New))
	fmt.Fprintf(&b, "  line-only changes left out (%d): %s\n", len(rp.LineOnly), list(rp.LineOnly))
	if len(rp.NoChange) > 0 {
		fmt.Fprintf(&b, "  no functional change: %s\n", strings.Join(rp.NoChange, " "))
	}
	for _, w := range rp.Warnings {
		fmt.Fprintf(&b, "  warning: %s\n", w)
	}
	for _, n := range rp.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	return b.String()
}
