package kernel

import (
	"context"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// The kernel's own sections in a compiled object, by what the build does with them.
//
// Tables whose entries describe places in a function that the kernel patches or
// looks up while it runs (exception fixups, alternatives, static-key jumps, BUG/WARN
// sites, paravirt sites): the differ carries into the patch object the entries of the
// functions it carries (carriedTables, in ktables.go), so that the replacement
// behaves as the original.

// Tables the module can do without: unwind data (the livepatch transition treats a
// stack it cannot unwind as not yet switched and retries), ftrace call sites (the
// replacement's __fentry__ call stays a call of the kernel's return stub), retpoline
// and return-thunk sites (the thunks stay in use), lock prefixes for uniprocessor
// patching, and static-call sites: in 6.1 __static_call_update
// (kernel/static_call_inline.c) rewrites the trampoline (arch_static_call_transform
// with a NULL site) before it walks the sites, so a call site the module does not
// list keeps calling the trampoline, which always jumps to the current function.
var droppedTables = []string{
	".orc_unwind", ".orc_unwind_ip", "__mcount_loc", ".return_sites", ".retpoline_sites", ".call_sites",
	".ibt_endbr_seal", ".smp_locks", "__patchable_function_entries", ".static_call_sites",
	".static_call.text",
}

// kernelTables returns the names of the kernel's table sections present in the
// object that the differ must not see: the dropped ones and the export tables (the
// carried ones are the differ's, as Options.Tables).
func kernelTables(path string) ([]string, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var present []string
	for _, s := range f.Sections {
		if slices.Contains(droppedTables, s.Name) || isExportTable(s.Name) {
			present = append(present, s.Name)
		}
	}
	return present, nil
}

func isExportTable(name string) bool {
	return strings.HasPrefix(name, "___ksymtab") || strings.HasPrefix(name, "__ksymtab") || strings.HasPrefix(name, "__kcrctab")
}

// exportTable returns the names of the exported-symbol sections of the object.
func exportTable(present []string) []string {
	var out []string
	for _, n := range present {
		if isExportTable(n) {
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
