package diff

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
)

// tableSrc has two functions with entries in kernel-style tables made by inline asm
// (the kernel's macros emit them the same way): an exception-table entry, an
// alternative whose replacement calls a function, and a static-key jump entry whose
// key is a static variable. FIX is the changed function's return value.
const tableSrc = `
extern void repl_f(void), repl_g(void);
static long key_f[2], key_g[2];
#define TABLES(key, repl) asm volatile( \
	"1: nop\n" \
	".pushsection __ex_table,\"a\"\n .balign 4\n .long 1b - .\n .long 1b - .\n .long 3\n .popsection\n" \
	"661: .byte 0x0f,0x1f,0x44,0x00,0x00\n" \
	".pushsection .altinstructions,\"a\"\n .long 661b - .\n .long 663f - .\n .word 7\n .byte 5\n .byte 5\n .popsection\n" \
	".pushsection .altinstr_replacement,\"ax\"\n 663: call " #repl "\n .popsection\n" \
	"2: nop\n" \
	".pushsection __jump_table,\"aw\"\n .balign 8\n .long 2b - .\n .long 2b - .\n .quad %c0 + 1 - .\n .popsection\n" \
	: : "i"(key))
int f(int x) { TABLES(key_f, repl_f); return x + FIX; }
int g(int x) { TABLES(key_g, repl_g); return x * 3; }
`

var testTables = []Table{
	{Section: "__ex_table", EntrySize: 12},
	{Section: ".altinstructions", EntrySize: 12, Aux: ".altinstr_replacement", AuxField: 4, AuxLen: 11},
	{Section: "__jump_table", EntrySize: 16},
}

// changedObject diffs orig against fixed with opts, checks that the changed functions
// are want (space-separated) and returns the patch object.
func changedObject(t *testing.T, orig, fixed []byte, opts Options, want string) *elf.File {
	t.Helper()
	r, err := Diff(bytes.NewReader(orig), bytes.NewReader(fixed), opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Changed(), " "); got != want {
		t.Fatalf("changed %q, want %q", got, want)
	}
	obj, err := r.Object()
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// relocsOf lists "offset symbol" for the relocations of section name in obj.
func relocsOf(t *testing.T, f *elf.File, name string) []string {
	t.Helper()
	syms, _ := f.Symbols()
	var out []string
	for _, s := range f.Sections {
		if s.Type != elf.SHT_RELA || f.Sections[s.Info].Name != name {
			continue
		}
		data, _ := s.Data()
		for at := 0; at+24 <= len(data); at += 24 {
			y := syms[le.Uint64(data[at+8:])>>32-1]
			n := y.Name
			if elf.ST_TYPE(y.Info) == elf.STT_SECTION {
				n = f.Sections[y.Section].Name
			}
			out = append(out, fmt.Sprintf("%d %s", le.Uint64(data[at:]), n))
		}
	}
	sort.Strings(out)
	return out
}

// TestTablesCarried: the patch of f carries f's entry of each table and nothing of
// g's: one entry per table, pointing at f's code, the jump entry's key a reference to
// the original's key_f (an alias, its low "branch" bit kept in the addend), and of the
// replacement code only the relocation of f's piece (repl_f).
func TestTablesCarried(t *testing.T) {
	orig, fixed := pair(t, "tables.c", "#define FIX 1\n"+tableSrc, "#define FIX 2\n"+tableSrc, "-fno-pic")
	f := changedObject(t, orig, fixed, Options{Tables: testTables, AliasPrefix: "A_"}, "f") // the tables are not compared
	for _, tb := range testTables {
		s := f.Section(tb.Section)
		if s == nil || s.Size != uint64(tb.EntrySize) {
			t.Fatalf("%s: %+v, want one %d-byte entry", tb.Section, s, tb.EntrySize)
		}
		rel := relocsOf(t, f, tb.Section)
		if len(rel) == 0 || rel[0] != "0 .text.f" {
			t.Errorf("%s relocations %q, want the code field at 0 against .text.f", tb.Section, rel)
		}
	}
	if rel := relocsOf(t, f, ".altinstr_replacement"); strings.Join(rel, ",") != "1 repl_f" {
		t.Errorf(".altinstr_replacement relocations %q, want only repl_f's call (at 1)", rel)
	}
	jt := relocsOf(t, f, "__jump_table")
	if strings.Join(jt, ",") != "0 .text.f,4 .text.f,8 A_key_f" {
		t.Errorf("__jump_table relocations %q, want code, target and the key through alias A_key_f", jt)
	}
	syms, _ := f.Symbols()
	for _, y := range syms {
		if y.Name == "repl_g" || y.Name == "A_key_g" {
			t.Errorf("symbol %s of g's entries is in the patch object", y.Name)
		}
	}
}

// TestTableSizeRefused: an entry size that is not the object's is refused, naming the
// table, rather than carrying misread entries.
func TestTableSizeRefused(t *testing.T) {
	orig, fixed := pair(t, "tables.c", "#define FIX 1\n"+tableSrc, "#define FIX 2\n"+tableSrc, "-fno-pic")
	for _, bad := range []Table{
		{Section: "__ex_table", EntrySize: 16},  // 24 bytes are not whole entries
		{Section: "__jump_table", EntrySize: 8}, // entries without a code relocation
		{Section: ".altinstructions", EntrySize: 14, Aux: ".altinstr_replacement", AuxField: 4, AuxLen: 13},
	} {
		_, err := Diff(bytes.NewReader(orig), bytes.NewReader(fixed), Options{Tables: []Table{bad}})
		var u *UnpatchableError
		if !errors.As(err, &u) || u.Section != bad.Section || !strings.Contains(u.Reason, "entr") {
			t.Errorf("entry size %d for %s: %v, want a refusal naming the table", bad.EntrySize, bad.Section, err)
			continue
		}
		t.Log(err)
	}
}

// dyndbgSrc has pr_debug-style call sites: a descriptor in __dyndbg holding the line,
// passed to the print function, and a jump entry whose key is in the descriptor.
// EXTRA moves the lines of everything below it.
const dyndbgSrc = `
struct desc { const char *fmt; unsigned line; long key[2]; };
extern void print(struct desc *);
#define DBG(msg) do { \
	static struct desc __attribute__((section("__dyndbg"), used, aligned(8))) d = { msg, __LINE__ }; \
	asm volatile("1: nop\n.pushsection __jump_table,\"aw\"\n .balign 8\n .long 1b - .\n .long 1b - .\n .quad %c0 - .\n .popsection\n" : : "i"(&d.key)); \
	print(&d); } while (0)
EXTRA
int f(int x) { DBG("f"); return x + FIX; }
int g(int x) { DBG("g"); return x * 3; }
`

// TestDyndbgOwned: a fix that moves the lines of g's descriptor (which only the
// unchanged g uses) is not refused for it, and f's jump entry carried with f points
// at the patch's own copy of the descriptors (the key inside it), not at the
// original's.
func TestDyndbgOwned(t *testing.T) {
	orig, fixed := pair(t, "dd.c", "#define FIX 1\n"+strings.Replace(dyndbgSrc, "EXTRA", "", 1),
		"#define FIX 2\n"+strings.Replace(dyndbgSrc, "EXTRA", "\n\n", 1), "-fno-pic")
	opts := Options{Tables: []Table{{Section: "__jump_table", EntrySize: 16}}, AliasPrefix: "A_"}
	var u *UnpatchableError
	if _, err := Diff(bytes.NewReader(orig), bytes.NewReader(fixed), opts); !errors.As(err, &u) || u.Section != "__dyndbg" {
		t.Fatalf("without __dyndbg owned: %v, want the moved lines refused as changed data of __dyndbg (else the test shows nothing)", err)
	}
	opts.Owned = []string{"__dyndbg"}
	f := changedObject(t, orig, fixed, opts, "f")
	if f.Section("__dyndbg") == nil {
		t.Fatal("the patch object has no __dyndbg")
	}
	if jt := relocsOf(t, f, "__jump_table"); len(jt) != 3 || jt[2] != "8 __dyndbg" {
		t.Errorf("__jump_table relocations %q, want the key in the patch's own __dyndbg", jt)
	}
	if rel := relocsOf(t, f, ".text.f"); !strings.Contains(strings.Join(rel, ","), "__dyndbg") {
		t.Errorf(".text.f relocations %q, want the descriptor in the patch's own __dyndbg", rel)
	}
}
