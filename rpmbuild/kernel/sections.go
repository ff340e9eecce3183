package kernel

import (
	"context"
	"debug/elf"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// The kernel's own sections in a compiled object, by what the build does with them.
//
// Tables whose entries point into functions and that the module would need for the
// replacement code to behave as the original (exception fixups, alternatives,
// static keys and calls, BUG/WARN sites, paravirt sites): a changed function with an
// entry in one of them is refused for now, naming the section; carrying the entries
// into the module is the next step.
var neededTables = map[string]string{
	"__ex_table":         "exception table (user-memory access fixups)",
	".altinstructions":   "alternative instructions",
	"__jump_table":       "static keys (jump labels)",
	".static_call_sites": "static calls",
	"__bug_table":        "BUG/WARN sites",
	".parainstructions":  "paravirt patch sites",
}

// Tables the module can do without: unwind data (the livepatch transition treats a
// stack it cannot unwind as not yet switched and retries), ftrace call sites (the
// replacement's __fentry__ call stays a call of the kernel's return stub), retpoline
// and return-thunk sites (the thunks stay in use), lock prefixes for uniprocessor
// patching.
var droppedTables = []string{
	".orc_unwind", ".orc_unwind_ip", "__mcount_loc", ".return_sites", ".retpoline_sites", ".call_sites",
	".ibt_endbr_seal", ".smp_locks", "__patchable_function_entries", ".altinstr_replacement", ".altinstr_aux",
	".static_call.text",
}

// kernelTables lists, per table section of the object, the code sections its entries
// point into; it also returns the names of every table section present.
func kernelTables(path string) (map[string][]string, []string, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	uses := map[string][]string{}
	var present []string
	isTable := func(name string) bool {
		if _, ok := neededTables[name]; ok {
			return true
		}
		for _, d := range droppedTables {
			if name == d {
				return true
			}
		}
		return strings.HasPrefix(name, "___ksymtab") || strings.HasPrefix(name, "__ksymtab") || strings.HasPrefix(name, "__kcrctab")
	}
	for _, s := range f.Sections {
		if isTable(s.Name) {
			present = append(present, s.Name)
		}
		if s.Type != elf.SHT_RELA || int(s.Info) >= len(f.Sections) {
			continue
		}
		target := f.Sections[s.Info].Name
		if _, ok := neededTables[target]; !ok {
			continue
		}
		data, err := s.Data()
		if err != nil {
			return nil, nil, err
		}
		seen := map[string]bool{}
		for i := 0; i+24 <= len(data); i += 24 {
			sym := int(le64(data[i+8:]) >> 32)
			if sym == 0 || sym > len(syms) {
				continue
			}
			y := syms[sym-1]
			if int(y.Section) >= len(f.Sections) || y.Section == elf.SHN_UNDEF {
				continue
			}
			sec := f.Sections[y.Section]
			if sec.Flags&elf.SHF_EXECINSTR != 0 && !seen[sec.Name] {
				seen[sec.Name] = true
				uses[target] = append(uses[target], sec.Name)
			}
		}
	}
	return uses, present, nil
}

func le64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// exportTable returns the names of the exported-symbol sections of the object.
func exportTable(present []string) []string {
	var out []string
	for _, n := range present {
		if strings.HasPrefix(n, "___ksymtab") || strings.HasPrefix(n, "__ksymtab") || strings.HasPrefix(n, "__kcrctab") {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// stripTables writes a copy of the object without the kernel's table sections, which
// the differ must not take for data the new code uses.
func stripTables(ctx context.Context, log io.Writer, in, out string, present []string) error {
	args := []string{}
	for _, n := range present {
		args = append(args, "--remove-section="+n)
	}
	return run(ctx, log, "", nil, "objcopy", append(args, in, out)...)
}
