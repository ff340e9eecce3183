package kernel

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/runtime/kpatch"
	"github.com/syscare/syscare/tests/kernel/qemuboot"
)

// cachedVmlinux unpacks the cached kernel-debuginfo RPM's vmlinux (once per test).
func cachedVmlinux(t *testing.T, release string) *Vmlinux {
	vm, _ := cachedDebuginfo(t, release)
	return vm
}

// cachedDebuginfo unpacks the cached kernel-debuginfo RPM and returns its vmlinux and
// the directory of its modules' debug files.
func cachedDebuginfo(t *testing.T, release string) (*Vmlinux, string) {
	m, _ := filepath.Glob(filepath.Join(qemuboot.Cache(t, release), "rpms/debuginfo-*/kernel-debuginfo-*.rpm"))
	if len(m) == 0 {
		t.Fatal("no cached kernel-debuginfo RPM (tests/kbuild TestInputsE2E makes it)")
	}
	sort.Strings(m)
	m = m[len(m)-1:]
	dir := t.TempDir()
	if out, err := exec.Command("sh", "-c", "cd "+dir+" && rpm2cpio "+m[0]+" | cpio -idm --quiet").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	vm, err := ReadVmlinux(filepath.Join(dir, "usr/lib/debug/lib/modules", release, "vmlinux"))
	if err != nil {
		t.Fatal(err)
	}
	return vm, filepath.Join(dir, "usr/lib/debug/lib/modules", release, "kernel")
}

// TestSymversFromVmlinux: the exports and CRCs read from the debuginfo's vmlinux are
// Debian's own Module.symvers (its vmlinux lines), which its headers package ships.
func TestSymversFromVmlinux(t *testing.T) {
	_, release := kernelSRPM(t)
	vm := cachedVmlinux(t, release)
	if vm.Release() != release {
		t.Errorf("vermagic %q names release %q, want %s", vm.Vermagic, vm.Release(), release)
	}
	debs, _ := filepath.Glob(filepath.Join(qemuboot.Cache(t, release), "debs", "linux-headers-"+release+"_*.deb"))
	if len(debs) == 0 {
		t.Fatal("no cached headers package")
	}
	out, err := exec.Command("sh", "-c", "dpkg-deb --fsys-tarfile "+debs[0]+" | tar -xO ./usr/src/linux-headers-"+release+"/Module.symvers").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		if len(f) >= 4 && f[2] == "vmlinux" {
			want[f[1]] = sc.Text()
		}
	}
	var got bytes.Buffer
	vm.WriteSymvers(&got)
	lines := strings.Split(strings.TrimRight(got.String(), "\n"), "\n")
	if len(lines) != len(want) {
		t.Errorf("%d exports from vmlinux, Debian's Module.symvers has %d", len(lines), len(want))
	}
	bad := 0
	for _, l := range lines {
		name := strings.Split(l, "\t")[1]
		if want[name] != l && bad < 5 {
			bad++
			t.Errorf("export %s: %q, Debian's %q", name, l, want[name])
		}
	}
}

// fixPair prepares a build's copy of the cached tree and compiles the translation unit
// of the fix testdata/NAME.patch (tests/kbuild) before and after the fix.
type fixPair struct {
	tu            TU
	orig, patched string
	tree, work    string
	release       string
	log           *strings.Builder
}

func compileFix(t *testing.T, name string) *fixPair {
	srpm, release := kernelSRPM(t)
	fp := &fixPair{work: t.TempDir(), release: release, log: &strings.Builder{}}
	cache := filepath.Join(qemuboot.Cache(t, release), "trees")
	tr, err := PrepareTree(context.Background(), TreeOptions{SRPM: srpm, Release: release, Cache: cache, Work: fp.work, Jobs: 2, Log: fp.log, Prep: prepFromSRPM(srpm, fp.log)})
	if err != nil {
		t.Fatalf("%v\n%s", err, tail(fp.log.String()))
	}
	fp.tree = tr.Dir
	patch, _ := filepath.Abs("../../tests/kbuild/testdata/" + name + ".patch")
	files, err := TouchedFiles([]string{patch})
	if err != nil {
		t.Fatal(err)
	}
	tus, _, err := TUs(files)
	if err != nil || len(tus) != 1 {
		t.Fatalf("TUs %v: %v", tus, err)
	}
	fp.tu = tus[0]
	ctx := context.Background()
	fp.orig, fp.patched = filepath.Join(fp.work, "orig.o"), filepath.Join(fp.work, "patched.o")
	if err := Compile(ctx, fp.log, tr.Dir, release, &fp.tu, fp.orig); err != nil {
		t.Fatalf("%v\n%s", err, tail(fp.log.String()))
	}
	if out, err := exec.Command("patch", "-p1", "-d", tr.Dir, "-i", patch).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if err := Compile(ctx, fp.log, tr.Dir, release, &fp.tu, fp.patched); err != nil {
		t.Fatalf("%v\n%s", err, tail(fp.log.String()))
	}
	return fp
}

// module builds the livepatch module name of obj against fp's tree and opens it.
func (fp *fixPair) module(t *testing.T, vm *Vmlinux, name string, obj PatchObject) (*Module, *elf.File) {
	t.Helper()
	m, err := BuildModule(context.Background(), ModuleInput{Name: name, Objects: []PatchObject{obj},
		Vmlinux: vm, Tree: fp.tree, Release: fp.release, Dir: filepath.Join(fp.work, "module"), Log: fp.log})
	if err != nil {
		t.Fatalf("module: %v\n%s", err, tail(fp.log.String()))
	}
	f, err := elf.Open(m.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return m, f
}

// TestInitRefused: a fix to __init code is refused, naming the function and section.
func TestInitRefused(t *testing.T) {
	fp := compileFix(t, "init")
	vm := cachedVmlinux(t, fp.release)
	_, _, err := Diff(context.Background(), fp.log, fp.tu, fp.orig, fp.patched, filepath.Join(fp.work, "diff"), vm)
	var u *diff.UnpatchableError
	if !errors.As(err, &u) || u.Function != "proc_loadavg_init" || u.Section != ".init.text" || !strings.Contains(u.Reason, "__init") {
		t.Fatalf("diff of an __init fix: %v, want a refusal of proc_loadavg_init in .init.text", err)
	}
	t.Log(err)
}

// TestLayoutRefused: a fix that widens a member of a struct the changed functions use
// (binfmt_misc's Node: int offset becomes long) is refused, naming the layout change.
// The fix keeps every line where it was, so that only the layout is refused.
func TestLayoutRefused(t *testing.T) {
	fp := compileFix(t, "layout")
	vm := cachedVmlinux(t, fp.release)
	if fp.tu.Module != "binfmt_misc" {
		t.Errorf("fs/binfmt_misc.c builds into module %q, want binfmt_misc", fp.tu.Module)
	}
	_, _, err := Diff(context.Background(), fp.log, fp.tu, fp.orig, fp.patched, filepath.Join(fp.work, "diff"), vm)
	var u *diff.UnpatchableError
	if !errors.As(err, &u) || !strings.Contains(u.Reason, "member offset") || !strings.Contains(u.Reason, "Node") {
		t.Fatalf("diff of a layout change: %v, want a refusal naming Node's member offset", err)
	}
	t.Log(err)
}

// TestLoadavgModule builds the livepatch module of a fix to loadavg_proc_show from the
// cached prepared tree: compile twice, diff, module; the module replaces that one
// function, reaches the kernel's non-exported symbols through .klp.rela sections and
// carries the running kernel's vermagic.
func TestLoadavgModule(t *testing.T) {
	fp := compileFix(t, "loadavg")
	vm := cachedVmlinux(t, fp.release)
	ctx := context.Background()
	log, work := fp.log, fp.work
	r, obj, err := Diff(ctx, log, fp.tu, fp.orig, fp.patched, filepath.Join(work, "diff"), vm)
	if err != nil {
		t.Fatalf("diff: %v\n%s", err, tail(log.String()))
	}
	t.Logf("diff:\n%s", r.String())
	if got := strings.Join(r.Changed(), " "); got != "loadavg_proc_show" {
		t.Fatalf("changed %q, want loadavg_proc_show", got)
	}
	m, f := fp.module(t, vm, "klp_loadavg", PatchObject{TU: fp.tu, Object: obj})
	t.Logf("module %s: %d bytes, %d livepatch relocations, funcs %v", m.Path, m.Size, m.KlpRelocations, m.Funcs)
	mi, err := kpatch.ReadModInfo(m.Path)
	if err != nil || !mi.Livepatch || strings.TrimSpace(mi.VerMagic) != strings.TrimSpace(vm.Vermagic) {
		t.Fatalf("modinfo %+v (%v), want livepatch and vermagic %q", mi, err, vm.Vermagic)
	}
	klp := f.Section(".klp.rela.vmlinux..text.loadavg_proc_show")
	if klp == nil || klp.Flags&shfRelaLivepatch == 0 || klp.Flags&elf.SHF_ALLOC == 0 || klp.Size == 0 {
		t.Fatalf("no livepatch relocation section for loadavg_proc_show: %+v", klp)
	}
	syms, _ := f.Symbols()
	klpSyms := 0
	for _, s := range syms {
		if strings.HasPrefix(s.Name, klpSymPrefix) {
			klpSyms++
			if s.Section != shnLivepatch {
				t.Errorf("%s: section %#x, want SHN_LIVEPATCH", s.Name, s.Section)
			}
		}
		if s.Section == elf.SHN_UNDEF && s.Name != "" {
			if _, ok := vm.Exports[s.Name]; !ok {
				t.Errorf("undefined %s is not exported by the kernel", s.Name)
			}
		}
	}
	if klpSyms == 0 || m.KlpRelocations == 0 {
		t.Errorf("%d .klp.sym symbols, %d relocations moved", klpSyms, m.KlpRelocations)
	}
}

// TestTablesModule builds the module of a fix to meminfo_proc_show, a function with
// alternatives (static_cpu_has: an .altinstructions entry whose replacement jumps back
// into the function, and .altinstr_aux code) to which the fix adds a WARN_ON_ONCE
// (a __bug_table entry naming the file): the patch object and the module carry the
// function's two alternative entries, its replacement piece and the new BUG entry.
func TestTablesModule(t *testing.T) {
	fp := compileFix(t, "meminfo")
	vm := cachedVmlinux(t, fp.release)
	ctx := context.Background()
	r, obj, err := Diff(ctx, fp.log, fp.tu, fp.orig, fp.patched, filepath.Join(fp.work, "diff"), vm)
	if err != nil {
		t.Fatalf("diff: %v\n%s", err, tail(fp.log.String()))
	}
	if got := strings.Join(r.Changed(), " "); got != "meminfo_proc_show" {
		t.Fatalf("changed %q, want meminfo_proc_show", got)
	}
	want := map[string]uint64{".altinstructions": 24, "__bug_table": 12}
	po, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	for name, size := range want {
		if s := po.Section(name); s == nil || s.Size != size {
			t.Errorf("patch object %s: %+v, want %d bytes", name, s, size)
		}
	}
	if po.Section(".altinstr_replacement") == nil || po.Section(".altinstr_aux") == nil {
		t.Errorf("patch object lacks the replacement or aux code of the alternatives")
	}
	m, f := fp.module(t, vm, "klp_meminfo", PatchObject{TU: fp.tu, Object: obj})
	for name, size := range want {
		if s := f.Section(name); s == nil || s.Size != size {
			t.Errorf("module %s: %+v, want %d bytes", name, s, size)
		}
	}
	t.Logf("module %s: %d bytes, %d livepatch relocations", m.Path, m.Size, m.KlpRelocations)
}

// TestDyndbgModule builds the module of a fix to binfmt_misc (a module) that adds a
// pr_debug to check_special_flags and so moves the line of every pr_debug below it:
// the descriptors of the unchanged functions (line numbers only) are not taken for
// changed data, the changed function's descriptors are the module's own (its
// __jump_table entries name keys in the module's __dyndbg, not binfmt_misc symbols
// that livepatch would write too late), and the module builds.
func TestDyndbgModule(t *testing.T) {
	fp := compileFix(t, "dyndbg")
	vm, mods := cachedDebuginfo(t, fp.release)
	target, err := ReadModule(filepath.Join(mods, "fs/binfmt_misc.ko"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r, obj, err := Diff(ctx, fp.log, fp.tu, fp.orig, fp.patched, filepath.Join(fp.work, "diff"), target)
	if err != nil {
		t.Fatalf("diff: %v\n%s", err, tail(fp.log.String()))
	}
	// check_special_flags is inlined into bm_register_write.
	if got := strings.Join(r.Changed(), " "); got != "bm_register_write" {
		t.Errorf("changed %q, want bm_register_write", got)
	}
	// The descriptors below the new line did change (their line numbers): the diff
	// above went through because they are not compared.
	dd := func(path string) []byte {
		f, err := elf.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		s := f.Section("__dyndbg")
		if s == nil {
			t.Fatalf("%s has no __dyndbg", path)
		}
		b, _ := s.Data()
		return b
	}
	if o, p := dd(fp.orig), dd(fp.patched); len(p) != len(o)+56 || bytes.Equal(o, p[:len(o)]) {
		t.Errorf("__dyndbg: %d bytes before, %d after: want one more 56-byte descriptor and moved lines in the others", len(o), len(p))
	}
	po, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	if po.Section("__dyndbg") == nil || po.Section("__jump_table") == nil {
		t.Fatalf("patch object lacks __dyndbg or __jump_table")
	}
	m, f := fp.module(t, vm, "klp_dyndbg", PatchObject{TU: fp.tu, Object: obj, Target: target})
	for _, s := range f.Sections {
		if strings.HasPrefix(s.Name, ".klp.rela.binfmt_misc.__jump_table") || strings.HasPrefix(s.Name, ".klp.rela.binfmt_misc.__dyndbg") {
			t.Errorf("module has %s: a key reached through livepatch", s.Name)
		}
	}
	t.Logf("module %s: %d bytes, %d livepatch relocations", m.Path, m.Size, m.KlpRelocations)
}
