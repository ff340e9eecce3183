package diff

import (
	"bytes"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The builder's tools for vague linkage, on objects and a binary gcc and ld make here:
// which functions are vague, who inlined one, which object's copy a binary kept, and
// that a dropped copy leaves the patch object.

const boxHeader = `struct Box { int v; __attribute__((noipa)) int twice() const { return v * 2; } };
inline int quad(const Box *b) { return b->v * 4; }
`

func TestVagueFunctionsAndDrop(t *testing.T) {
	ob, pb := pair(t, "a.cc",
		boxHeader+"int useA(Box *b) { return b->twice() + quad(b); }\n",
		strings.Replace(boxHeader, "v * 2", "v * 3", 1)+"int useA(Box *b) { return b->twice() + quad(b); }\n", "-fPIC")
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Vague(), []string{"_ZNK3Box5twiceEv"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Vague() = %q, want %q\n%s", got, want, r)
	}
	if r.Drop("useA") {
		t.Error("Drop of a function that is not vague reported true")
	}
	if !r.Drop("_ZNK3Box5twiceEv") {
		t.Fatal("Drop of the vague function reported false")
	}
	if len(r.Changed()) != 0 {
		t.Errorf("changed after Drop: %q", r.Changed())
	}
}

// An object's own out-of-line copy is found; an inlined use is not a copy.
func TestVagueUsesFindsCopies(t *testing.T) {
	ob, _ := pair(t, "b.cc", boxHeader+"int useB(Box *b) { return quad(b) + 1; }\nint copyB(Box *b) { return b->twice(); }\n",
		boxHeader+"int useB(Box *b) { return quad(b) + 1; }\n", "-fPIC")
	uses, err := VagueUses(bytes.NewReader(ob), []string{"_Z4quadPK3Box", "_ZNK3Box5twiceEv", "_Z5otherv"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]VagueUse{"_ZNK3Box5twiceEv": {Defines: true}}
	if !reflect.DeepEqual(uses, want) {
		t.Errorf("VagueUses = %+v, want %+v", uses, want)
	}
}

// SameCode recognises the copy a linked binary kept, relocated, and tells it from a
// copy compiled from other source.
func TestSameCodeFindsKeptCopy(t *testing.T) {
	dir := t.TempDir()
	src := map[string]string{
		"a.cc": boxHeader + "int useA(Box *b) { return b->twice() + 1; }\n",
		"b.cc": strings.Replace(boxHeader, "v * 2", "v * 2 + g", 1) + "extern int g; int useB(Box *b) { return b->twice(); }\n",
	}
	src["b.cc"] = "extern int g;\n" + src["b.cc"]
	var objs []string
	for _, name := range []string{"a.cc", "b.cc"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src[name]), 0o644); err != nil {
			t.Fatal(err)
		}
		obj := strings.TrimSuffix(name, ".cc") + ".o"
		if out, err := exec.Command("g++", "-c", "-O2", "-fPIC", "-ffunction-sections", "-o", filepath.Join(dir, obj), filepath.Join(dir, name)).CombinedOutput(); err != nil {
			t.Fatalf("g++: %v\n%s", err, out)
		}
		objs = append(objs, filepath.Join(dir, obj))
	}
	if err := os.WriteFile(filepath.Join(dir, "g.c"), []byte("int g = 5;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	so := filepath.Join(dir, "lib.so")
	// b.o first: the linker keeps b.o's copy of Box::twice.
	if out, err := exec.Command("g++", "-shared", "-o", so, objs[1], objs[0], filepath.Join(dir, "g.c")).CombinedOutput(); err != nil {
		t.Fatalf("link: %v\n%s", err, out)
	}
	f, err := elf.Open(so)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, _ := f.Symbols()
	var code []byte
	for _, s := range syms {
		if s.Name == "_ZNK3Box5twiceEv" {
			sec := f.Sections[s.Section]
			code = make([]byte, s.Size)
			if _, err := sec.ReadAt(code, int64(s.Value-sec.Addr)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if code == nil {
		t.Fatal("lib.so has no Box::twice")
	}
	for i, want := range []bool{false, true} {
		data, _ := os.ReadFile(objs[i])
		got, err := SameCode(code, bytes.NewReader(data), "_ZNK3Box5twiceEv")
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("SameCode(lib.so, %s) = %v, want %v", filepath.Base(objs[i]), got, want)
		}
	}
}

// An object the fix does not rebuild that was compiled with a changed header refuses
// the patch, naming the inlined function, the header, the caller and the object (or
// only the object and the header when it inlined nothing); a rebuilt one does not, nor
// an object compiled without the header.
func TestCheckInlinersRefusesUncoveredCaller(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "box.h"), []byte(boxHeader), 0o644); err != nil {
		t.Fatal(err)
	}
	box := filepath.Join(dir, "box.h")
	ob := compile(t, dir, "c.cc", "#include \"box.h\"\nint useC(Box *b) { return quad(b) + 1; }\n", "-fPIC")
	only := compile(t, dir, "e.cc", "#include \"box.h\"\nint getE(const Box *b) { return b->v; }\n", "-fPIC")
	other := compile(t, dir, "d.cc", "int plain(int x) { return x + 1; }\n", "-fPIC")
	changed := func(f string) bool { return strings.HasSuffix(f, "/box.h") }
	use, err := FileUses(bytes.NewReader(ob), changed)
	if err != nil {
		t.Fatal(err)
	}
	want := FileUse{Files: []string{box}, Inlined: []InlinedCopy{{Func: "_Z4quadPK3Box", File: box, Caller: "_Z4useCP3Box"}}}
	if !reflect.DeepEqual(use, want) {
		t.Fatalf("FileUses(c.o) = %+v, want %+v", use, want)
	}
	if u, err := FileUses(bytes.NewReader(other), changed); err != nil || len(u.Files) != 0 || len(u.Inlined) != 0 {
		t.Errorf("FileUses(d.o) = %+v, %v; want nothing", u, err)
	}
	onlyUse, err := FileUses(bytes.NewReader(only), changed)
	if err != nil || !reflect.DeepEqual(onlyUse, FileUse{Files: []string{box}}) {
		t.Errorf("FileUses(e.o) = %+v, %v; want the header and no inlined copy", onlyUse, err)
	}
	if err := CheckInliners([]LinkedObject{{Name: "c.o", Rebuilt: true, Recorded: true, Use: use}}); err != nil {
		t.Errorf("rebuilt inliner refused: %v", err)
	}
	for _, c := range []struct {
		obj    LinkedObject
		reason string
	}{
		{LinkedObject{Name: "c.o", Use: use},
			"_Z4quadPK3Box (" + box + ") is inlined into _Z4useCP3Box in c.o, which the patch does not cover (the recorded build did not compile it)"},
		{LinkedObject{Name: "e.o", Recorded: true, Use: onlyUse},
			"e.o was compiled with the old " + box + ", which the fix changes, and the patch does not cover it (it is not rebuilt by the fix)"},
	} {
		err := CheckInliners([]LinkedObject{{Name: "d.o", Recorded: true}, c.obj})
		var ue *UnpatchableError
		if !errors.As(err, &ue) || ue.Reason != c.reason {
			t.Errorf("CheckInliners(%s): %v, want the refusal %q", c.obj.Name, err, c.reason)
		}
	}
}
