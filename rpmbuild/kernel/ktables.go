package kernel

import (
	"bytes"
	"debug/elf"
	"fmt"
	"strings"

	"github.com/syscare/syscare/rpmbuild/diff"
)

// carriedTables are the kernel's tables whose entries the differ carries for the
// functions it carries. Entry layouts are x86-64 Linux 6.1's (checked against the
// 6.1 tree's headers; the differ also checks every entry has a relocation at its
// code field, so a different layout is refused rather than misread):
//
//   - __ex_table: struct exception_table_entry { int insn, fixup, data; }
//     (arch/x86/include/asm/extable.h), 12 bytes.
//   - .altinstructions: struct alt_instr { s32 instr_offset; s32 repl_offset; u16
//     cpuid; u8 instrlen; u8 replacementlen; } __packed (asm/alternative.h), 12
//     bytes; the replacement code is in .altinstr_replacement (6.3 widened cpuid to
//     u32 ft_flags: 14 bytes, which the check above refuses).
//   - __jump_table: struct jump_entry { s32 code; s32 target; long key; }
//     (include/linux/jump_label.h), 16 bytes. Never dropped: a key enabled while
//     the patch is in would not switch the replacement's branch.
//   - __bug_table: struct bug_entry { int bug_addr_disp; int file_disp; unsigned
//     short line, flags; } (asm-generic/bug.h with GENERIC_BUG_RELATIVE_POINTERS and
//     DEBUG_BUGVERBOSE), 12 bytes: without it a WARN_ON of the replacement is an
//     invalid-opcode oops.
//   - .parainstructions: struct paravirt_patch_site { u8 *instr; u8 type; u8 len; }
//     (asm/paravirt_types.h), 16 bytes with its padding.
var carriedTables = []diff.Table{
	{Section: "__ex_table", EntrySize: 12, Code: 0},
	{Section: ".altinstructions", EntrySize: 12, Code: 0, Aux: ".altinstr_replacement", AuxField: 4, AuxLen: 11},
	{Section: "__jump_table", EntrySize: 16, Code: 0},
	{Section: "__bug_table", EntrySize: 12, Code: 0},
	{Section: ".parainstructions", EntrySize: 16, Code: 0},
}

// ownedSections are carried whole as the module's own when carried code references
// them. __dyndbg holds the pr_debug/dev_dbg descriptors (struct _ddebug,
// include/linux/dynamic_debug.h): each holds its call site's line number, so a fix
// that moves lines changes the descriptors of unchanged functions too, which the
// differ must not take for changed data; and a carried function's descriptor must be
// the module's own, so that its carried __jump_table entry names a key of the module
// (dynamic_debug registers the module's __dyndbg at load: ddebug_add_module in
// kernel/module/main.c), not one of a module that livepatch would reach too late (see
// checkModuleTableRefs). The unit's other descriptors come along unused: no carried
// jump entry names their keys; they show in the dynamic_debug control file under the
// patch module's name. A changed format of a function whose code is unchanged is not
// seen (the format is in the descriptor, not in the code).
var ownedSections = []string{"__dyndbg"}

// checkModuleTableRefs refuses a patch object of a module's translation unit whose
// carried table entries (or alternative replacement code) need a symbol of that
// module reached through livepatch (modSyms, by the patch object's name). In 6.1,
// load_module applies .klp.rela.vmlinux.* sections with the module's own relocations
// (apply_relocations in kernel/module/main.c calls klp_apply_section_relocs with
// objname NULL, which means vmlinux), before module_finalize applies alternatives and
// paravirt sites and before the MODULE_STATE_COMING notifiers take the jump and
// static-call entries; .klp.rela.MODULE.* sections are applied only by
// klp_init_object_loaded, once that module is loaded and the patch enabled
// (kernel/livepatch/core.c): too late for entries the kernel has already read.
func checkModuleTableRefs(obj []byte, module string, modSyms map[string]bool) error {
	if len(modSyms) == 0 {
		return nil
	}
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		return err
	}
	syms, err := f.Symbols()
	if err != nil {
		return err
	}
	symName := func(i uint32) (string, int) {
		if i == 0 || int(i) > len(syms) {
			return "", -1
		}
		y := syms[i-1]
		if elf.ST_TYPE(y.Info) == elf.STT_SECTION && int(y.Section) < len(f.Sections) {
			return f.Sections[y.Section].Name, int(y.Section)
		}
		return y.Name, -1
	}
	sizes := map[string]int{}
	for _, t := range carriedTables {
		sizes[t.Section] = t.EntrySize
	}
	type rel struct {
		off    uint64
		sym    string
		addend int64
	}
	relsOf := func(target string) []rel {
		var out []rel
		for _, s := range f.Sections {
			if s.Type != elf.SHT_RELA || int(s.Info) >= len(f.Sections) || f.Sections[s.Info].Name != target {
				continue
			}
			data, err := s.Data()
			if err != nil {
				return nil
			}
			for at := 0; at+24 <= len(data); at += 24 {
				name, _ := symName(uint32(le.Uint64(data[at+8:]) >> 32))
				out = append(out, rel{le.Uint64(data[at:]), name, int64(le.Uint64(data[at+16:]))})
			}
		}
		return out
	}
	// funcOf names the function an entry's code field points at.
	funcOf := func(rels []rel, entry uint64) string {
		for _, r := range rels {
			if r.off == entry {
				return strings.TrimPrefix(r.sym, ".text.")
			}
		}
		return "?"
	}
	refuse := func(fn, table, sym string) error {
		return &diff.UnpatchableError{Function: fn, Section: table,
			Reason: fmt.Sprintf("its %s entry needs %s, a symbol of the module %s that it does not export: livepatch writes such relocations (.klp.rela.%s.*) only once that module is loaded, after the kernel has already read the patch module's %s at its own load",
				table, sym, module, module, table)}
	}
	for table, n := range sizes {
		rels := relsOf(table)
		for _, r := range rels {
			if modSyms[r.sym] {
				return refuse(funcOf(rels, r.off/uint64(n)*uint64(n)), table, r.sym)
			}
		}
	}
	// Replacement code: named by the alternative entry whose piece holds it.
	alt := relsOf(".altinstructions")
	altSec := f.Section(".altinstructions")
	for _, r := range relsOf(".altinstr_replacement") {
		if !modSyms[r.sym] {
			continue
		}
		fn := "?"
		if altSec != nil {
			data, _ := altSec.Data()
			for _, a := range alt {
				if a.sym != ".altinstr_replacement" || a.off%12 != 4 || int(a.off)+8 > len(data) {
					continue
				}
				if from := uint64(a.addend); r.off >= from && r.off < from+uint64(data[a.off+7]) {
					fn = funcOf(alt, a.off-4)
				}
			}
		}
		return refuse(fn, ".altinstructions", r.sym)
	}
	return nil
}
