package upatch

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

var (
	serveLine    = regexp.MustCompile(`^conn (\d+) bytes (\d+)$`)
	countedLine  = regexp.MustCompile(`^conn (\d+) bytes (\d+) requests (\d+) since (\d+)$`)
	reportCounts = regexp.MustCompile(`^report 4 conns: (\d+=\d+ ?){4}$`)
)

// shadowOf returns the shadow-variable table the applied patches of pid record.
func shadowOf(t *testing.T, pid int) uint64 {
	t.Helper()
	maps, err := proc.Maps(pid)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := readHeaders(ptrace.Remote{Pid: pid}, maps)
	if err != nil {
		t.Fatal(err)
	}
	return existingShadow(hs)
}

// mappedAt reports whether some mapping of pid starts at addr.
func mappedAt(t *testing.T, pid int, addr uint64) bool {
	t.Helper()
	maps, err := proc.Maps(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range maps {
		if m.Start == addr {
			return true
		}
	}
	return false
}

// patchRange returns where the region of the applied patch uuid is in pid.
func patchRange(t *testing.T, pid int, uuid string) (uint64, uint64) {
	t.Helper()
	maps, err := proc.Maps(pid)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := readHeaders(ptrace.Remote{Pid: pid}, maps)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.UUID == uuid {
			return h.Base, h.Base + h.Size
		}
	}
	t.Fatalf("patch %s not in pid %d", uuid, pid)
	return 0, 0
}

// shadowDestructors returns the destructor of every attached shadow variable.
func shadowDestructors(t *testing.T, pid int, table uint64) []uint64 {
	t.Helper()
	mem := ptrace.Remote{Pid: pid}
	head := make([]byte, shadowBucketsOff+8*shadowBuckets)
	if err := mem.ReadMem(table, head); err != nil {
		t.Fatal(err)
	}
	var out []uint64
	var e [entrySize]byte
	for b := 0; b < shadowBuckets; b++ {
		for off := binary.LittleEndian.Uint64(head[shadowBucketsOff+8*b:]); off != 0; off = binary.LittleEndian.Uint64(e[entryNextOff:]) {
			if err := mem.ReadMem(table+off, e[:]); err != nil {
				t.Fatal(err)
			}
			out = append(out, binary.LittleEndian.Uint64(e[entryDtorOff:]))
		}
	}
	return out
}

// tableWords reads words 0..4 of the table: magic, size, used, live, free.
func tableWords(t *testing.T, pid int, addr uint64) [5]uint64 {
	t.Helper()
	var b [40]byte
	if err := (ptrace.Remote{Pid: pid}).ReadMem(addr, b[:]); err != nil {
		t.Fatal(err)
	}
	var w [5]uint64
	for i := range w {
		w[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return w
}

// A fix that adds per-object state to a running server: two worker threads serve
// connections; the patch attaches a request counter to each one, frees it when the
// connection closes; a second patch reads the counters from the same per-process
// table, and keeps reading them after the first is removed; removing the last one
// unmaps the table and the server runs as before.
func TestShadowVariablesOnServer(t *testing.T) {
	bin := buildShadowServer(t, t.TempDir())
	v := start(t, bin, nil)
	_, count := buildPatch(t, "fix_shadow_count.c", bin, "")
	_, report := buildPatch(t, "fix_shadow_report.c", bin, "")
	e := NewEngine("/")
	pid := v.pid()

	// Before: no counters, no table.
	maxID := 0
	v.waitFor(t, func(l string) bool {
		if m := serveLine.FindStringSubmatch(l); m != nil {
			id, _ := strconv.Atoi(m[1])
			maxID = max(maxID, id)
		}
		return strings.HasPrefix(l, "report")
	})
	if a := shadowOf(t, pid); a != 0 {
		t.Fatalf("shadow table %#x before any patch", a)
	}
	maxID += 8 // a worker may have opened connections after the last line read

	const uuidCount, uuidReport = "shadow-count", "shadow-report"
	st, err := e.PatchStats(pid, count, serverOpts(uuidCount))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("patch mapping a new shadow table: freeze %v (one run under test load; the freeze goal is median 250µs, p99 1ms, see bench_test.go)", st.Freeze)
	table := shadowOf(t, pid)
	if table == 0 || !mappedAt(t, pid, table) {
		t.Fatalf("no shadow table mapped after the patch (header says %#x)", table)
	}
	// Every connection counts its own requests, one per serve, on both
	// threads; a connection opened after the patch (on a recycled address, as
	// malloc gives it back) starts at 1: the closed one's counter was freed.
	last := map[int]int{}
	fresh := 0
	v.waitFor(t, func(l string) bool {
		m := countedLine.FindStringSubmatch(l)
		if m == nil {
			if serveLine.MatchString(l) && len(last) > 0 {
				t.Errorf("unpatched serve after patched ones: %q", l)
			}
			return false
		}
		id, _ := strconv.Atoi(m[1])
		n, _ := strconv.Atoi(m[3])
		bytes, _ := strconv.Atoi(m[2])
		since, _ := strconv.Atoi(m[4])
		// Lines may be skipped (the reader keeps the last few thousand), so the
		// exact check is bytes == since + requests, on every line.
		if prev, ok := last[id]; ok && n <= prev {
			t.Fatalf("conn %d: requests %d after %d: %q", id, n, prev, l)
		}
		if !func() bool { _, ok := last[id]; return ok }() && id > maxID {
			if n != 1 || since != 0 {
				t.Fatalf("connection %d opened after the patch starts at %q, want requests 1 since 0", id, l)
			}
			fresh++
		}
		if bytes != since+n {
			t.Fatalf("conn %d: bytes %d, counter attached at %d with %d requests since: %q", id, bytes, since, n, l)
		}
		last[id] = n
		return fresh >= 6
	})
	w := tableWords(t, pid, table)
	entry := uint64(64) // struct upatch_shadow_entry (48) + data (16), rounded
	if w[0] != shadowMagic || w[1] != shadowSize || w[3] > 8 || w[2] > 12*entry {
		t.Fatalf("table after %d reopened connections: magic %#x size %d used %d live %d: counters leak", fresh, w[0], w[1], w[2], w[3])
	}
	t.Logf("shadow table at %#x: %d bytes of arena used, %d counters live, after %d connections reopened", table, w[2], w[3], fresh)

	// A second patch finds the same table and reads the first one's counters.
	if st, err = e.PatchStats(pid, report, serverOpts(uuidReport)); err != nil {
		t.Fatal(err)
	}
	t.Logf("patch on the existing shadow table: freeze %v", st.Freeze)
	if a := shadowOf(t, pid); a != table {
		t.Fatalf("second patch uses table %#x, want %#x", a, table)
	}
	if applied, err := e.Info(pid); err != nil || len(applied) != 2 || applied[0].Shadow != table || applied[1].Shadow != table {
		t.Fatalf("info = %+v, %v: want both patches on table %#x", applied, err, table)
	}
	v.waitFor(t, func(l string) bool { return reportCounts.MatchString(l) })

	// The first patch goes: serves are as before, the table stays for the second,
	// and the counters keep no destructor in the code that went: the second
	// patch's report frees one counter each time, which would otherwise jump
	// into unmapped memory.
	lo, hi := patchRange(t, pid, uuidCount)
	if dtors := shadowDestructors(t, pid, table); !slices.ContainsFunc(dtors, func(d uint64) bool { return d >= lo && d < hi }) {
		t.Fatalf("no counter has the first patch's destructor (%#x-%#x): %x", lo, hi, dtors)
	}
	if err := e.Unpatch(pid, uuidCount, serverOpts(uuidCount)); err != nil {
		t.Fatal(err)
	}
	v.waitFor(t, func(l string) bool { return serveLine.MatchString(l) })
	if !mappedAt(t, pid, table) {
		t.Fatal("shadow table unmapped while the second patch still uses it")
	}
	dtors := shadowDestructors(t, pid, table)
	for _, d := range dtors {
		if d != 0 {
			t.Fatalf("destructor %#x left in the table after its patch (%#x-%#x) was removed", d, lo, hi)
		}
	}
	// Reports go on, the first connection's counter freed and not attached again.
	v.waitFor(t, func(l string) bool { return strings.HasPrefix(l, "report 4 conns:") })
	v.waitFor(t, func(l string) bool { return regexp.MustCompile(`^report 4 conns: \d+=- `).MatchString(l) })
	t.Logf("%d counters kept, their destructors forgotten, after the patch that attached them was removed", len(dtors))

	// The last one goes: the table is unmapped, the server runs as before.
	if err := e.Unpatch(pid, uuidReport, serverOpts(uuidReport)); err != nil {
		t.Fatal(err)
	}
	if mappedAt(t, pid, table) {
		t.Fatal("shadow table still mapped after the last patch using it was removed")
	}
	v.waitFor(t, func(l string) bool { return l == "report 4 conns" })
	v.waitFor(t, func(l string) bool { return serveLine.MatchString(l) })
	if n := patchMappings(t, pid); n != 0 {
		t.Fatalf("%d patch mappings left", n)
	}
	v.alive(t)
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		t.Fatal(err)
	}
}

// A table the program overwrote: the patches that use it see no table (and keep the
// old behaviour), a new patch that would use it is refused with nothing changed,
// and the patch still comes off, leaving those pages mapped.
func TestShadowTableOverwritten(t *testing.T) {
	bin := buildShadowServer(t, t.TempDir())
	v := start(t, bin, nil)
	_, count := buildPatch(t, "fix_shadow_count.c", bin, "")
	_, report := buildPatch(t, "fix_shadow_report.c", bin, "")
	e := NewEngine("/")
	pid := v.pid()
	if err := e.Patch(pid, count, serverOpts("shadow-count")); err != nil {
		t.Fatal(err)
	}
	v.waitFor(t, func(l string) bool { return countedLine.MatchString(l) })
	table := shadowOf(t, pid)
	mem, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", pid), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = mem.WriteAt(make([]byte, 8), int64(table))
	mem.Close()
	if err != nil {
		t.Fatal(err)
	}
	v.waitFor(t, func(l string) bool { return strings.HasSuffix(l, "requests none") })

	before := patchMappings(t, pid)
	err = e.Patch(pid, report, serverOpts("shadow-report"))
	if err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("patch over an overwritten table: %v, want a refusal naming it corrupt", err)
	}
	if n := patchMappings(t, pid); n != before {
		t.Fatalf("refused patch left %d patch mappings, had %d", n, before)
	}
	if applied, _ := e.Info(pid); len(applied) != 1 {
		t.Fatalf("applied after the refusal: %+v", applied)
	}
	if err := e.Unpatch(pid, "shadow-count", serverOpts("shadow-count")); err != nil {
		t.Fatal(err)
	}
	v.waitFor(t, func(l string) bool { return serveLine.MatchString(l) })
	if !mappedAt(t, pid, table) {
		t.Fatal("overwritten table unmapped: it is left alone")
	}
	v.alive(t)
}

// The API of upatch.h on eight threads at once: attach, read, free and a counter all
// threads share, against the table's lock; constructors and destructors pair up; a
// full table answers NULL.
func TestShadowAPIThreads(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "shadow_stress")
	gcc(t, "-O2", "-Wall", "-Werror", "-pthread", "-I", includeDir(), testdata("shadow_stress.c"), "-o", bin)
	out, err := exec.Command(bin).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ok ") {
		t.Fatalf("shadow_stress: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(string(out)))
}

// In production the target is stripped and the patch self-contained (what syscare
// build makes of a fix): the shadow table is reached the same way, as it is no
// symbol of the target but the loader's own.
func TestShadowSelfContainedOnStrippedTarget(t *testing.T) {
	dir := t.TempDir()
	bin := buildShadowServer(t, dir)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.Symbols()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf("#include %q\n", testdata("fix_shadow_count.c"))
	n := 0
	for _, s := range syms {
		kind, room := patchobj.OffsetSymbol, uint64(0)
		name, _, _ := strings.Cut(s.Name, "@") // stdout@GLIBC_2.2.5 in .symtab
		switch name {
		case "conn_serve", "conn_close":
			kind, room = patchobj.OffsetFunc, s.Size
		case "out", "stdout": // stdout: the executable's copy, as the builder records it
		default:
			continue
		}
		src += fmt.Sprintf(`static const char name%d[] __attribute__((section(".upatch.strings"))) = %q;
static const struct upatch_offset off%d __attribute__((section(".upatch.offsets"), used, aligned(8))) =
	{ name%d, 0, %#x, %d, %d, %d | %d << 8 };
`, n, name, n, n, s.Value, s.Size, room, kind, elf.ST_TYPE(s.Info))
		n++
	}
	if n != 4 {
		t.Fatalf("found %d of the 4 target symbols", n)
	}
	if out, err := exec.Command("strip", "--strip-all", bin).CombinedOutput(); err != nil {
		t.Fatalf("strip: %v\n%s", err, out)
	}
	c, obj := filepath.Join(dir, "fix.c"), filepath.Join(dir, "fix.o")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	gcc(t, "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", includeDir(),
		fmt.Sprintf(`-DTARGET_BUILD_ID="%s"`, buildIDHex(t, bin)), c, "-o", obj)
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	o, err := patchobj.ParseBytes(b)
	if err != nil || !o.SelfContained() {
		t.Fatalf("parse: %v (self-contained: %v)", err, err == nil && o.SelfContained())
	}

	v := start(t, bin, nil)
	e := NewEngine("/")
	pid := v.pid()
	if err := e.Patch(pid, o, serverOpts("shadow-sc")); err != nil {
		t.Fatal(err)
	}
	table := shadowOf(t, pid)
	v.waitFor(t, func(l string) bool { return countedLine.MatchString(l) && !strings.HasSuffix(l, "requests 1 since 0") })
	if err := e.Unpatch(pid, "shadow-sc", serverOpts("shadow-sc")); err != nil {
		t.Fatal(err)
	}
	if table == 0 || mappedAt(t, pid, table) {
		t.Fatalf("shadow table %#x: not recorded, or still mapped after unpatch", table)
	}
	v.waitFor(t, func(l string) bool { return serveLine.MatchString(l) })
	v.alive(t)
}

// A cumulative patch that replaces one using shadow variables, the way the manager
// supersedes (the old one off, then the new one on): removed with KeepShadow, the
// old patch leaves the table mapped, the new one adopts it and every connection's
// counter goes on from where it was; its own removal unmaps the table.
func TestShadowKeptForCumulativePatch(t *testing.T) {
	bin := buildShadowServer(t, t.TempDir())
	v := start(t, bin, nil)
	_, count := buildPatch(t, "fix_shadow_count.c", bin, "")
	e := NewEngine("/")
	pid := v.pid()
	if err := e.Patch(pid, count, serverOpts("shadow-v1")); err != nil {
		t.Fatal(err)
	}
	table := shadowOf(t, pid)
	high := map[int]int{}
	v.waitFor(t, func(l string) bool {
		if m := countedLine.FindStringSubmatch(l); m != nil {
			id, _ := strconv.Atoi(m[1])
			n, _ := strconv.Atoi(m[3])
			high[id] = n
		}
		return len(high) >= 8 && slices.Max(slices.Collect(maps.Values(high))) >= 30
	})
	keep := serverOpts("shadow-v1")
	keep.KeepShadow = true
	if err := e.Unpatch(pid, "shadow-v1", keep); err != nil {
		t.Fatal(err)
	}
	v.waitFor(t, func(l string) bool { return serveLine.MatchString(l) })
	if !mappedAt(t, pid, table) || shadowOf(t, pid) != 0 {
		t.Fatalf("table %#x not kept after the unpatch with KeepShadow", table)
	}
	if err := e.Patch(pid, count, serverOpts("shadow-v2")); err != nil {
		t.Fatal(err)
	}
	if a := shadowOf(t, pid); a != table {
		t.Fatalf("the cumulative patch uses table %#x, want the kept %#x", a, table)
	}
	// A connection counted before goes on from its count (the serves while no
	// patch was in are not counted: bytes runs ahead of since + requests).
	v.waitFor(t, func(l string) bool {
		m := countedLine.FindStringSubmatch(l)
		if m == nil {
			return false
		}
		id, _ := strconv.Atoi(m[1])
		n, _ := strconv.Atoi(m[3])
		prev, ok := high[id]
		return ok && prev >= 30 && n > prev
	})
	if err := e.Unpatch(pid, "shadow-v2", serverOpts("shadow-v2")); err != nil {
		t.Fatal(err)
	}
	if mappedAt(t, pid, table) {
		t.Fatal("table still mapped after its last patch went without KeepShadow")
	}
	v.waitFor(t, func(l string) bool { return serveLine.MatchString(l) })
	v.alive(t)
}

// buildShadowServer compiles testdata/shadow_server.c (two serving threads, objects
// reopened at recycled addresses) into dir and returns its path.
func buildShadowServer(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "shadow_server")
	gcc(t, "-O2", "-g", "-pthread", testdata("shadow_server.c"), "-o", bin)
	return bin
}

// serverOpts are the options for patching the shadow server. Its two threads are
// inside conn_serve whenever they print, and on a loaded machine a few quick retries
// can all find one there; so these tests wait for the frames to return, as the
// helper does, instead of failing on a busy thread.
func serverOpts(uuid string) Options {
	o := opts(uuid)
	o.Timeout = 30 * time.Second
	return o
}
