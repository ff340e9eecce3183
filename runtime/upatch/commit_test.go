package upatch

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

// A patch whose commit was cut short (the pending mark still set, one jump
// missing) is not reported as applied, and the next run of the tool rolls it
// back entirely before doing its own work.
func TestPendingPatchRolledBack(t *testing.T) {
	bin := buildBenchTarget(t)
	v := start(t, bin, nil, "2")
	_, obj := buildPatch(t, "bench_fix.c", bin, "")
	e := NewEngine("/")
	pid := v.pid()
	maps, err := proc.Maps(pid)
	if err != nil {
		t.Fatal(err)
	}
	tgt, err := findTarget(pid, maps, "")
	if err != nil {
		t.Fatal(err)
	}
	ef, err := e.elfs.Open(tgt.file)
	if err != nil {
		t.Fatal(err)
	}
	// The first bytes of f0..f9 before any patch.
	r := ptrace.Remote{Pid: pid}
	var addrs []uint64
	var orig [][]byte
	for i := 0; i < 10; i++ {
		s, err := ef.LookupFunc("f"+strconv.Itoa(i), 0)
		if err != nil {
			t.Fatal(err)
		}
		a := tgt.bias - ef.MinVaddr + s.Value
		b := make([]byte, jmpRel32)
		if err := r.ReadMem(a, b); err != nil {
			t.Fatal(err)
		}
		addrs, orig = append(addrs, a), append(orig, b)
	}
	if err := e.Patch(pid, obj, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	maps, _ = proc.Maps(pid)
	hs, err := readHeaders(r, maps)
	if err != nil || len(hs) != 1 {
		t.Fatalf("headers: %v %v", hs, err)
	}
	h := hs[0]
	// Cut the commit short: pending again, f3's jump undone.
	mem, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/mem", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if _, err := mem.WriteAt([]byte{statePending, 0, 0, 0}, int64(h.Base+headerStateOff)); err != nil {
		t.Fatal(err)
	}
	if _, err := mem.WriteAt(orig[3], int64(addrs[3])); err != nil {
		t.Fatal(err)
	}
	if got, err := e.Info(pid); err != nil || len(got) != 0 {
		t.Fatalf("info lists a pending patch: %+v %v", got, err)
	}
	// The next run (an unpatch here) rolls it back, and then finds nothing.
	if err := e.Unpatch(pid, uuid1, opts(uuid1)); !errors.Is(err, ErrNotApplied) {
		t.Fatalf("unpatch of a pending patch: %v, want ErrNotApplied", err)
	}
	for i, a := range addrs {
		b := make([]byte, jmpRel32)
		if err := r.ReadMem(a, b); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, orig[i]) {
			t.Fatalf("f%d after the roll-back: %x, want the original %x", i, b, orig[i])
		}
	}
	maps, _ = proc.Maps(pid)
	for _, m := range maps {
		if m.Start <= h.Base && h.Base < m.End && m.Path == "" && strings.HasPrefix(m.Perms, "r-x") {
			t.Fatalf("the pending patch's memory at %#x is still mapped", h.Base)
		}
	}
	// And the patch applies again, whole.
	if err := e.Patch(pid, obj, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	v.stdin.Write([]byte("measure\n"))
	if l := v.waitFor(t, func(l string) bool { return strings.HasPrefix(l, "ns=") }); !strings.Contains(l, "f0=100") {
		t.Fatalf("after re-applying: %q", l)
	}
}

// A process that cannot open its own /proc/self/mem (no /proc in its mount
// namespace) is patched and unpatched all the same: the tool writes the jumps
// itself, in the same order, the pending mark cleared last.
func TestCommitWithoutProcInTarget(t *testing.T) {
	bin := buildVictim(t)
	v := start(t, "unshare", nil, "--mount", "--propagation", "private", "sh", "-c", "umount -l /proc && exec "+bin)
	_, obj := buildPatch(t, "fix_greet.c", bin, "")
	v.expect(t, "greet=1")
	e := NewEngine("/")
	if err := e.Patch(v.pid(), obj, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "greet=2")
	if applied, err := e.Info(v.pid()); err != nil || len(applied) != 1 {
		t.Fatalf("info = %+v, %v", applied, err)
	}
	if err := e.Unpatch(v.pid(), uuid1, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "greet=1")
	if applied, _ := e.Info(v.pid()); len(applied) != 0 {
		t.Fatalf("info after unpatch = %+v", applied)
	}
}
