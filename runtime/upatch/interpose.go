package upatch

import (
	"fmt"
	"strings"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
)

// A shared library's exported function is reached by name: PLT calls, vtables and
// function pointers that the dynamic linker filled in bind to the first definition in
// the process's global scope, and the executable comes first. When the executable
// defines and exports a function of the same name, the process runs the executable's
// copy, and replacing the library's would change nothing that runs. C++ makes that
// common: a program that uses a class of a library compiles the inline members it
// uses into itself, and ld exports such a definition when a linked library defines
// it too. The patch is refused for that process, naming the function and the copy
// it runs. Libraries loaded before the target can interpose as well; their order is
// the dynamic linker's and is not checked here.

// checkInterposed refuses a patch of a shared library whose replaced exported
// functions the process's executable defines too.
func (e *Engine) checkInterposed(pid int, maps []proc.Mapping, tgt *target, obj *patchobj.Object) error {
	exe, err := proc.Exe(pid)
	if err != nil {
		return nil // findTarget read it already; a process gone now fails later
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	if exe == tgt.path {
		return nil
	}
	var exeFile string
	for _, m := range maps {
		if m.Path == exe && m.Offset == 0 && (m.Dev != tgt.dev || m.Inode != tgt.inode) {
			exeFile = proc.MappedFile(pid, m)
			break
		}
	}
	if exeFile == "" {
		return nil
	}
	var names []string
	for _, f := range obj.Funcs {
		if f.OldPos != 0 {
			continue // a local symbol is not reached by name
		}
		if _, ok := tgt.elf.Dynamic(f.OldName); ok {
			names = append(names, f.OldName)
		}
	}
	if len(names) == 0 {
		return nil
	}
	ef, err := e.elfs.Open(exeFile)
	if err != nil {
		return nil // not readable as an ELF: nothing to say about it
	}
	for _, n := range names {
		if _, ok := ef.Dynamic(n); ok {
			return fmt.Errorf("pid %d: %w: %s of %s: %s defines and exports it too, and the process runs that copy (replacing the library's would change nothing)",
				pid, ErrInterposed, n, tgt.path, exe)
		}
	}
	return nil
}
