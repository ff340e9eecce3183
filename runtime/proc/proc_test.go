package proc

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var mapperBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "proc-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mapperBin = filepath.Join(dir, "mapper")
	if out, err := exec.Command("gcc", "-O2", "-pthread", "-o", mapperBin, "testdata/mapper.c").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build mapper: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startMapper runs mapper on file and returns its pid and the address of the
// mapping it made.
func startMapper(t *testing.T, file string, args ...string) (int, uint64) {
	t.Helper()
	cmd := exec.Command(mapperBin, append([]string{file}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("mapper: %v", err)
	}
	addr, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(strings.TrimPrefix(line, "ready")), "0x"), 16, 64)
	if err != nil {
		t.Fatalf("mapper said %q", line)
	}
	return cmd.Process.Pid, addr
}

func find(ms []Mapping, addr uint64) (Mapping, bool) {
	for _, m := range ms {
		if m.Start == addr {
			return m, true
		}
	}
	return Mapping{}, false
}

func TestMapsOfRealProcess(t *testing.T) {
	file := filepath.Join(t.TempDir(), "data with space")
	if err := os.WriteFile(file, []byte(strings.Repeat("hello\n", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	dev, ino, err := FileID(file)
	if err != nil {
		t.Fatal(err)
	}
	pid, addr := startMapper(t, file)

	ms, err := Maps(pid)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := find(ms, addr)
	if !ok {
		t.Fatalf("no mapping at %#x", addr)
	}
	if m.Path != file || m.Deleted || m.Perms != "r--p" || m.Offset != 0 || m.End-m.Start != 4096 {
		t.Fatalf("mapping %+v", m)
	}
	if m.Dev != dev || m.Inode != ino {
		t.Fatalf("maps says %d:%d, FileID %d:%d", m.Dev, m.Inode, dev, ino)
	}
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil || st.Ino != ino {
		t.Fatalf("stat inode %d, FileID %d (%v)", st.Ino, ino, err)
	}
	exe, err := Exe(pid)
	if err != nil || exe != mapperBin {
		t.Fatalf("Exe = %q, %v; want %q", exe, err, mapperBin)
	}
	var sawExe, sawVdso, sawStack bool
	for i, m := range ms {
		if i > 0 && m.Start < ms[i-1].End {
			t.Errorf("mappings out of order: %v after %v", m.Format(), ms[i-1].Format())
		}
		sawExe = sawExe || (m.Path == mapperBin && m.Executable())
		sawVdso = sawVdso || m.Path == "[vdso]"
		sawStack = sawStack || m.Path == "[stack]"
	}
	if !sawExe || !sawVdso || !sawStack {
		t.Errorf("exe %v vdso %v stack %v", sawExe, sawVdso, sawStack)
	}

	// The mapped file stays reachable after it is deleted.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	ms, err = Maps(pid)
	if err != nil {
		t.Fatal(err)
	}
	m, _ = find(ms, addr)
	if !m.Deleted || m.Path != file {
		t.Fatalf("after delete: %+v", m)
	}
	b, err := os.ReadFile(MappedFile(pid, m))
	if err != nil || !strings.HasPrefix(string(b), "hello\n") {
		t.Fatalf("read through map_files: %q..., %v", b[:min(len(b), 12)], err)
	}
	pids, err := ProcessesMapping(dev, ino)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pids, pid) {
		t.Fatalf("ProcessesMapping(deleted file) = %v, want %d in it", pids, pid)
	}
}

func TestProcessesMapping(t *testing.T) {
	file := filepath.Join(t.TempDir(), "shared")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	dev, ino, err := FileID(file)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := startMapper(t, file)
	b, _ := startMapper(t, file, "zleader")
	// Let b's leader exit: a fixed sleep can end first on a loaded machine; 30 s only
	// guards against a hang.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if st, err := ThreadState(b, b); err == nil && st == 'Z' {
			break
		}
	}
	pids, err := ProcessesMapping(dev, ino)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(pids)
	want := []int{a, b}
	slices.Sort(want)
	if !slices.Equal(pids, want) {
		t.Fatalf("ProcessesMapping = %v, want %v (pids, never tids)", pids, want)
	}
	// The process whose leader exited is still described through a live thread.
	if st, err := ThreadState(b, b); err != nil || st != 'Z' {
		t.Fatalf("leader of %d: %c, %v", b, st, err)
	}
	ms, err := Maps(b)
	if err != nil || len(ms) == 0 {
		t.Fatalf("Maps of a zombie-leader process: %d mappings, %v", len(ms), err)
	}
	if exe, err := Exe(b); err != nil || exe != mapperBin {
		t.Fatalf("Exe of a zombie-leader process: %q, %v", exe, err)
	}
	for _, m := range ms {
		if m.Path == file {
			if _, err := os.Stat(MappedFile(b, m)); err != nil {
				t.Fatalf("MappedFile of a zombie-leader process: %v", err)
			}
		}
	}
	tids, err := Threads(b)
	if err != nil || len(tids) != 2 {
		t.Fatalf("Threads = %v, %v", tids, err)
	}
	// Nothing maps a file that nobody mapped.
	other := filepath.Join(t.TempDir(), "unmapped")
	os.WriteFile(other, []byte("y"), 0o644)
	d2, i2, _ := FileID(other)
	if pids, err := ProcessesMapping(d2, i2); err != nil || len(pids) != 0 {
		t.Fatalf("ProcessesMapping(unmapped) = %v, %v", pids, err)
	}
}

func TestMissingProcess(t *testing.T) {
	if _, err := Maps(1 << 30); !IsGone(err) {
		t.Errorf("Maps of a missing pid: %v", err)
	}
	if _, err := Threads(1 << 30); !IsGone(err) {
		t.Errorf("Threads of a missing pid: %v", err)
	}
	if _, _, err := FileID("/nonexistent/file"); err == nil {
		t.Error("FileID of a missing file succeeded")
	}
}

func TestParseMaps(t *testing.T) {
	text := "" +
		"55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1234                       /usr/bin/prog\n" +
		"55d0c0a02000-55d0c0a07000 r-xp 00002000 103:05 1234                      /usr/bin/prog\n" +
		"7f0000000000-7f0000001000 rw-s 00000000 00:01 99                         /dev/zero (deleted)\n" +
		"7f0000001000-7f0000002000 rw-p 00000000 00:00 0 \n" +
		"7f0000002000-7f0000003000 r--p 00001000 fd:01 77                         /tmp/a b (deleted)\n" +
		"7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n" +
		"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n"
	ms, err := ParseMaps([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mapping{
		{0x55d0c0a00000, 0x55d0c0a02000, 0, "r--p", unix.Mkdev(0xfd, 1), 1234, "/usr/bin/prog", false},
		{0x55d0c0a02000, 0x55d0c0a07000, 0x2000, "r-xp", unix.Mkdev(0x103, 5), 1234, "/usr/bin/prog", false},
		{0x7f0000000000, 0x7f0000001000, 0, "rw-s", unix.Mkdev(0, 1), 99, "/dev/zero", true},
		{0x7f0000001000, 0x7f0000002000, 0, "rw-p", 0, 0, "", false},
		{0x7f0000002000, 0x7f0000003000, 0x1000, "r--p", unix.Mkdev(0xfd, 1), 77, "/tmp/a b", true},
		{0x7ffd00000000, 0x7ffd00021000, 0, "rw-p", 0, 0, "[stack]", false},
		{0xffffffffff600000, 0xffffffffff601000, 0, "--xp", 0, 0, "[vsyscall]", false},
	}
	if !slices.Equal(ms, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", ms, want)
	}
	if !ms[1].Executable() || ms[1].Writable() || !ms[2].Writable() || ms[2].Private() {
		t.Error("permission helpers")
	}
	for _, bad := range []string{
		"zz-10 r--p 0 00:00 0",
		"10-20 r--p 0 00:00",
		"10-20",
		"10-20 r--p 0 fffff:00 0 /x",
		"10-20 r--p 0 00:00 99999999999999999999999 /x",
		"10-20 r--p 0 00:00 1/x",
	} {
		if _, err := ParseMaps([]byte(bad)); err == nil {
			t.Errorf("ParseMaps(%q) succeeded", bad)
		}
	}
}

// FuzzParseMaps: never panics, and what it accepts it can print back and
// re-parse to the same mappings.
func FuzzParseMaps(f *testing.F) {
	f.Add([]byte("55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1234   /usr/bin/prog\n"))
	f.Add([]byte("7f0000000000-7f0000001000 rw-s 00000000 00:01 99   /dev/zero (deleted)\n10-20 ---p 0 0:0 0\n"))
	if b, err := os.ReadFile("/proc/self/maps"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ms, err := ParseMaps(data)
		if err != nil {
			return
		}
		var b strings.Builder
		for _, m := range ms {
			b.WriteString(m.Format())
			b.WriteByte('\n')
		}
		again, err := ParseMaps([]byte(b.String()))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", b.String(), err)
		}
		if !slices.Equal(ms, again) {
			t.Fatalf("round trip differs:\n%+v\n%+v", ms, again)
		}
	})
}

func BenchmarkMaps(b *testing.B) {
	file := filepath.Join(b.TempDir(), "f")
	os.WriteFile(file, []byte("x"), 0o644)
	cmd := exec.Command(mapperBin, file)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	bufio.NewReader(out).ReadString('\n')
	ms, err := Maps(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Maps(cmd.Process.Pid); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(ms)), "mappings")
}

// BenchmarkProcessesMapping scans every process of the machine for the C
// library, the worst case (nearly every process maps it).
func BenchmarkProcessesMapping(b *testing.B) {
	target := "/bin/sh"
	for _, c := range []string{"/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib64/libc.so.6", "/lib64/libc.so.6"} {
		if _, err := os.Stat(c); err == nil {
			target = c
			break
		}
	}
	dev, ino, err := FileID(target)
	if err != nil {
		b.Fatal(err)
	}
	all, _ := Pids()
	found, _ := ProcessesMapping(dev, ino)
	for b.Loop() {
		if _, err := ProcessesMapping(dev, ino); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(all)), "processes")
	b.ReportMetric(float64(len(found)), "matches")
}

func BenchmarkThreads(b *testing.B) {
	for b.Loop() {
		if _, err := Threads(os.Getpid()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFileID(b *testing.B) {
	for b.Loop() {
		if _, _, err := FileID(mapperBin); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseMaps is the parser alone, on this process's maps text.
func BenchmarkParseMaps(b *testing.B) {
	data, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := ParseMaps(data); err != nil {
			b.Fatal(err)
		}
	}
}

// A query answers for every mapping what maps says about it.
func TestQueryMatchesMaps(t *testing.T) {
	pid := os.Getpid()
	q, err := OpenQuery(pid)
	if err != nil {
		t.Fatalf("OpenQuery: %v (the kernel of this machine has PROCMAP_QUERY)", err)
	}
	defer q.Close()
	ms, err := Maps(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range ms {
		if want.Inode == 0 {
			continue // anonymous memory of the Go runtime may change meanwhile; [vsyscall] is no VMA
		}
		for _, a := range []uint64{want.Start, want.End - 1} {
			got, ok, err := q.At(a)
			if err != nil || !ok {
				t.Fatalf("At(%#x): %v %v, want %s", a, ok, err, want.Format())
			}
			want.Path, want.Deleted = "", false
			if got != want {
				t.Errorf("At(%#x) = %+v, want %+v", a, got, want)
			}
		}
	}
	if _, ok, err := q.At(8); ok || err != nil {
		t.Errorf("At(8) = %v %v, want no mapping", ok, err)
	}
}

// The caught signals of a process are the handlers it installed: the Go runtime of
// this test catches SIGURG (preemption).
func TestCaughtSignals(t *testing.T) {
	m, err := CaughtSignals(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m&(1<<(unix.SIGURG-1)) == 0 {
		t.Errorf("SigCgt %#x lacks SIGURG", m)
	}
	if _, err := CaughtSignals(1 << 30); err == nil {
		t.Error("a missing process has caught signals")
	}
}

// StatMapped names and stats the very file behind a mapping.
func TestStatMapped(t *testing.T) {
	ms, err := Maps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range ms {
		if m.Inode == 0 || !strings.HasPrefix(m.Path, "/") {
			continue
		}
		path, st, err := StatMapped(os.Getpid(), m)
		if err != nil || path != MappedFile(os.Getpid(), m) || st.Ino != m.Inode {
			t.Fatalf("StatMapped(%s) = %q, inode %d, %v; want %q, inode %d", m.Format(), path, st.Ino, err, MappedFile(os.Getpid(), m), m.Inode)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no file mapping in the test process")
	}
}
