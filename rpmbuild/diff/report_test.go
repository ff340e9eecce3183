package diff

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestReportInliningAndJSON(t *testing.T) {
	orig := `int helper(int x) { return x * 3; }
int user1(int a) { return helper(a) + 1; }
int user2(int a) { return helper(a) - 1; }
int plain(int a) { return a; }
`
	fixed := `int helper(int x) { return x * 3 + 1; }
int user1(int a) { return helper(a) + 1; }
int user2(int a) { return helper(a) - 1; }
int plain(int a) { return a + 2; }
`
	// -fPIE: with -fPIC the global helper is interposable and never inlined
	ob, pb := pair(t, "inl", orig, fixed, "-fPIE")
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
	if err != nil {
		t.Fatal(err)
	}
	rp := r.Report()
	why := map[string]string{}
	for _, c := range rp.Changed {
		why[c.Name] = c.Why
	}
	want := map[string]string{"helper": WhyCode, "plain": WhyCode, "user1": WhyInlining, "user2": WhyInlining}
	if !reflect.DeepEqual(why, want) {
		t.Errorf("reasons %v, want %v\n%s", why, want, rp.Text())
	}
	b, err := rp.JSON()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseReport(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Changed, rp.Changed) {
		t.Errorf("JSON round trip: %+v, want %+v", back.Changed, rp.Changed)
	}
	if !strings.Contains(rp.Text(), "user1 (inl.c): inlining, carries an inlined copy of changed helper") {
		t.Errorf("text:\n%s", rp.Text())
	}
	if s := rp.Summary(); !strings.HasPrefix(s, "4 changed functions (2 through inlining") {
		t.Errorf("summary %q", s)
	}
}

func TestMergeReports(t *testing.T) {
	var parts []*Report
	for _, c := range []diffCase{caseNamed("constructor-warning"), caseNamed("new-static-helper")} { // constructor warning; new helper
		ob, pb := pair(t, c.file, c.orig, c.fixed, "-fPIE")
		r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, r.Report())
	}
	c := caseNamed("new-tls-FAIL")
	ob, pb := pair(t, c.file, c.orig, c.fixed, "-fPIE")
	_, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
	parts = append(parts, ReportError("h.c", err))
	parts = append(parts, ReportError("f.c", ErrNoChange))
	m := MergeReports("/usr/bin/prog", parts...)
	if m.Refused == nil || !strings.Contains(m.Refused.Reason, "thread-local") || m.Refused.File != "h.c" {
		t.Errorf("refusal %+v", m.Refused)
	}
	if !reflect.DeepEqual(m.Files, []string{"b.c", "f.c", "h.c", "s9.c"}) || !reflect.DeepEqual(m.NoChange, []string{"f.c"}) {
		t.Errorf("files %q, no change %q", m.Files, m.NoChange)
	}
	if len(m.Warnings) == 0 || !strings.Contains(m.Warnings[0], "constructor init") {
		t.Errorf("warnings %q", m.Warnings)
	}
	txt := m.Text()
	for _, s := range []string{"Patch report for /usr/bin/prog", "REFUSED: function", "new functions (1): clamp", "warning: constructor init"} {
		if !strings.Contains(txt, s) {
			t.Errorf("text lacks %q:\n%s", s, txt)
		}
	}
	if ReportError("x.c", bytes.ErrTooLarge) != nil {
		t.Error("ReportError of an ordinary error is not nil")
	}
}
