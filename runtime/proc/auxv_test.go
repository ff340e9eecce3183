package proc

import (
	"os"
	"testing"
)

// The auxiliary vector of this process gives its page size and the start of its
// vDSO mapping; an entry it lacks is absent, and a process that does not exist is
// an error.
func TestAuxvValue(t *testing.T) {
	pid := os.Getpid()
	if v, ok, err := AuxvValue(pid, 6); err != nil || !ok || v != uint64(os.Getpagesize()) { // AT_PAGESZ
		t.Errorf("AT_PAGESZ = %d, %v, %v; want %d", v, ok, err, os.Getpagesize())
	}
	maps, err := Maps(pid)
	if err != nil {
		t.Fatal(err)
	}
	var vdso uint64
	for _, m := range maps {
		if m.Path == "[vdso]" {
			vdso = m.Start
		}
	}
	if v, ok, err := AuxvValue(pid, 33); err != nil || !ok || v != vdso || v == 0 { // AT_SYSINFO_EHDR
		t.Errorf("AT_SYSINFO_EHDR = %#x, %v, %v; want the [vdso] mapping at %#x", v, ok, err, vdso)
	}
	if v, ok, err := AuxvValue(pid, 0xfff); err != nil || ok {
		t.Errorf("an entry the vector lacks: %#x, %v, %v", v, ok, err)
	}
	if _, _, err := AuxvValue(1<<30, 6); err == nil || !IsGone(err) {
		t.Errorf("a process that does not exist: %v, want an error IsGone accepts", err)
	}
}
