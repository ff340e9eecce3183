package layout

import (
	"bufio"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/symbols"
)

// hostSrc is a target program that cooperates with the test instead of being
// ptraced: it prints where its symbols are, receives a linked image on stdin,
// maps it at the requested address and calls the replacement functions. That
// runs the relocated bytes for real (the engine's tests do the same through
// ptrace); here a wrong relocation shows up as a wrong result or a crash.
const hostSrc = `
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>
int counter = 100;
int table[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
__thread int tls_small = 7;
__thread int tls_le = 9;
__attribute__((noipa)) int *bump(void) { static int count = 40; count++; return &count; }
__attribute__((noipa)) void far_func(void) { printf("far_func called\n"); }
static void readall(void *p, size_t n) {
	for (size_t got = 0; got < n;) {
		ssize_t r = read(0, (char *)p + got, n - got);
		if (r <= 0) exit(2);
		got += r;
	}
}
int main(void) {
	char *tp;
	__asm__("mov %%fs:0, %0" : "=r"(tp));
	int *count = bump();
	printf("counter %p\ncount.0 %p\ntable %p\nprintf %p\nfar_func %p\nmain %p\n",
	       (void *)&counter, (void *)count, (void *)table, (void *)printf, (void *)far_func, (void *)main);
	printf("tls_small %ld\ntls_le %ld\nend\n", (long)((char *)&tls_small - tp), (long)((char *)&tls_le - tp));
	fflush(stdout);
	uint64_t h[5]; /* base, text size, data size, greet_v2, calls_far */
	readall(h, sizeof h);
	char *m = mmap((void *)h[0], h[1] + h[2], PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (m != (char *)h[0]) { perror("mmap"); return 3; }
	readall(m, h[1] + h[2]);
	if (mprotect(m, h[1], PROT_READ | PROT_EXEC)) { perror("mprotect"); return 4; }
	int r = ((int (*)(int))h[3])(3);
	printf("greet %d counter %d count %d\n", r, counter, *count);
	printf("caller %d\n", ((int (*)(void))h[4])());
	return 0;
}
`

func TestExecute(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(dir, "host")
	if err := os.WriteFile(host+".c", []byte(hostSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-O2", "-fpie", "-pie", host+".c", "-o", host).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	hostELF, err := symbols.Open(host, symbols.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		flags []string
		// offset of the load address from the host's main, and the
		// trampolines that distance makes necessary
		dist      int64
		wantTramp int
	}{
		// Near the executable: data in reach; printf (libc) and the missing weak
		// "maybe" (0) are far, so they go through trampolines.
		{"near", []string{"-fpie"}, -1 * gib, 2},
		// 16 GiB away with PIC code: data through the GOT, every call through a
		// trampoline (far_func, printf, maybe).
		{"far", []string{"-fpic", "-DNO_PC32_DATA"}, -16 * gib, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := patchobj.ParseBytes(buildObject(t, fixSrc, tc.flags...))
			if err != nil {
				t.Fatal(err)
			}
			p, err := NewPlan(o)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(host)
			stdin, _ := cmd.StdinPipe()
			stdoutPipe, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			out := bufio.NewReader(stdoutPipe)
			addrs := map[string]int64{}
			for {
				line, err := out.ReadString('\n')
				if err != nil {
					t.Fatalf("host: %v", err)
				}
				f := strings.Fields(line)
				if len(f) == 1 && f[0] == "end" {
					break
				}
				v, err := strconv.ParseInt(strings.TrimPrefix(f[1], "0x"), map[bool]int{true: 16, false: 10}[strings.HasPrefix(f[1], "0x")], 64)
				if len(f) != 2 || err != nil {
					t.Fatalf("host line %q", line)
				}
				addrs[f[0]] = v
			}
			r := &fakeResolver{syms: map[string]fakeSym{}, tls: map[string]int64{}}
			for _, n := range []string{"counter", "count.0", "table"} {
				r.syms[n] = fakeSym{uint64(addrs[n]), false}
			}
			for _, n := range []string{"printf", "far_func"} {
				r.syms[n] = fakeSym{uint64(addrs[n]), true}
			}
			// TLS offsets from the ELF by the glibc rule, checked against the process.
			for _, n := range []string{"tls_small", "tls_le"} {
				s, err := hostELF.Lookup(n, 0)
				if err != nil {
					t.Fatal(err)
				}
				off, err := hostELF.TPOffset(s)
				if err != nil || off != addrs[n] {
					t.Fatalf("TPOffset(%s) = %d, %v; the process says %d", n, off, err, addrs[n])
				}
				r.tls[n] = off
			}
			base := uint64(addrs["main"]+tc.dist) &^ (pageSize - 1)
			img, err := p.Link(base, r)
			if err != nil {
				t.Fatal(err)
			}
			if img.TrampolinesUsed != tc.wantTramp {
				t.Errorf("TrampolinesUsed = %d, want %d", img.TrampolinesUsed, tc.wantTramp)
			}
			entry := map[string]uint64{}
			for _, f := range img.Funcs {
				entry[f.OldName] = f.New
			}
			hdr := make([]byte, 40)
			for i, v := range []uint64{base, uint64(len(img.Text)), uint64(len(img.Data)), entry["greet"], entry["caller"]} {
				binary.LittleEndian.PutUint64(hdr[8*i:], v)
			}
			stdin.Write(hdr)
			stdin.Write(img.Text)
			stdin.Write(img.Data)
			rest, _ := io.ReadAll(out)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("host: %v\n%s", err, rest)
			}
			// greet_v2(3): counter 100->101, count 41->43, prints via printf,
			// skips the missing weak maybe(), returns twice(21) + table[3].
			want := "new greeting 101 16\ngreet 45 counter 101 count 43\nfar_func called\ncaller 1\n"
			if string(rest) != want {
				t.Errorf("host output:\n%s\nwant:\n%s", rest, want)
			}
		})
	}
}
