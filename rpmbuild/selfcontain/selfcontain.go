// Package selfcontain makes a hand-written patch object self-contained: it resolves,
// from the target's debug file, every target symbol the object uses and adds them as
// .upatch.offsets (and the target's build-id), so that the patch applies on hosts that
// have no debuginfo. syscare build does the same for the objects it emits.
package selfcontain

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/runtime/patchobj"
)

// Entry is one resolved target symbol.
type Entry struct {
	Key patchobj.OffsetKey
	patchobj.Offset
}

// Resolve computes the .upatch.offsets entries of obj from the target's symbol table
// (loc). A replaced function must be a plain function of the target; a symbol the
// target does not define is left out: the loader finds it in the process's libraries.
func Resolve(obj *patchobj.Object, loc *debuginfo.Locator) ([]Entry, error) {
	var out []Entry
	seen := map[patchobj.OffsetKey]bool{}
	add := func(e Entry) {
		if !seen[e.Key] {
			seen[e.Key] = true
			out = append(out, e)
		}
	}
	for _, f := range obj.Funcs {
		off, err := find(loc, f.OldName, f.OldPos, true)
		if err != nil {
			return nil, fmt.Errorf("replaced function %q: %w", f.OldName, err)
		}
		if off.Type != elf.STT_FUNC {
			return nil, fmt.Errorf("replaced function %q: the target's symbol is %v, not a plain function", f.OldName, off.Type)
		}
		add(Entry{Key: patchobj.OffsetKey{Kind: patchobj.OffsetFunc, Name: f.OldName, Pos: f.OldPos}, Offset: off})
	}
	for i, s := range obj.Symbols {
		if s.Defined() || s.Name == "" || !relocated(obj, uint32(i)) {
			continue
		}
		ts := obj.Target(s.Name)
		off, err := find(loc, ts.Name, ts.Pos, false)
		if err == errUndefined {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("symbol %q: %w", ts.Name, err)
		}
		off.Room = 0
		add(Entry{Key: patchobj.OffsetKey{Kind: patchobj.OffsetSymbol, Name: ts.Name, Pos: ts.Pos}, Offset: off})
	}
	return out, nil
}

var errUndefined = fmt.Errorf("not defined in the target")

// find applies the loader's rule: position N among the symbols of that name, or for
// position 0 the definition a reference by name binds to.
func find(loc *debuginfo.Locator, name string, pos uint64, isFunc bool) (patchobj.Offset, error) {
	if pos > 0 {
		return loc.Symbol(name, pos, isFunc)
	}
	off, ok, err := loc.Global(name)
	if err == nil && !ok {
		err = errUndefined
	}
	return off, err
}

// relocated tells whether a loaded section of obj relocates against symbol i.
func relocated(obj *patchobj.Object, i uint32) bool {
	for _, sec := range obj.Sections {
		if sec == nil || !sec.Load {
			continue
		}
		for _, r := range sec.Relocs {
			if r.Sym == i {
				return true
			}
		}
	}
	return false
}

// Make writes to out the object in plus the offsets of every target symbol it uses,
// read from the target's debug file, and the target's build-id when in records none.
// It refuses an object made for another build-id or that already carries offsets.
func Make(ctx context.Context, in, debugFile, out string) ([]Entry, error) {
	data, err := os.ReadFile(in)
	if err != nil {
		return nil, err
	}
	obj, err := patchobj.ParseBytes(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", in, err)
	}
	if obj.SelfContained() {
		return nil, fmt.Errorf("%s already carries %s", in, patchobj.OffsetsSection)
	}
	idHex, err := debuginfo.BuildID(debugFile)
	if err != nil {
		return nil, err
	}
	id, err := hex.DecodeString(idHex)
	if err != nil {
		return nil, err
	}
	if obj.TargetBuildID != nil && !bytes.Equal(obj.TargetBuildID, id) {
		return nil, fmt.Errorf("%s is for build-id %x, %s is of %x", in, obj.TargetBuildID, debugFile, id)
	}
	loc, err := debuginfo.NewLocator(debugFile)
	if err != nil {
		return nil, fmt.Errorf("symbols of %s: %w", debugFile, err)
	}
	entries, err := Resolve(obj, loc)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "syscare-selfcontain-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	asm := assembly(entries, obj.TargetBuildID == nil, hex.EncodeToString(id))
	src, table := filepath.Join(tmp, "offsets.s"), filepath.Join(tmp, "offsets.o")
	if err := os.WriteFile(src, []byte(asm), 0o644); err != nil {
		return nil, err
	}
	if err := command(ctx, "as", "-o", table, src); err != nil {
		return nil, err
	}
	if err := command(ctx, "ld", "-r", "-o", out, in, table); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	if o, err := patchobj.ParseBytes(b); err != nil || !o.SelfContained() {
		return nil, fmt.Errorf("the self-contained object %s does not parse back: %v", out, err)
	}
	return entries, nil
}

// assembly writes the table as GNU assembler source: the names go into
// .upatch.strings, referenced by R_X86_64_64 relocations as the format wants.
func assembly(entries []Entry, withID bool, id string) string {
	var b strings.Builder
	for i, e := range entries {
		fmt.Fprintf(&b, "\t.section %s,\"a\"\n.Lname%d:\n\t.asciz %s\n", patchobj.StringsSection, i, asString(e.Key.Name))
		fmt.Fprintf(&b, "\t.section %s,\"a\"\n\t.balign 8\n\t.quad .Lname%d, %d, %d, %d, %d, %d\n", patchobj.OffsetsSection, i,
			e.Key.Pos, e.Value, e.Size, e.Room, uint64(e.Key.Kind)|uint64(e.Type)<<8)
	}
	if withID {
		fmt.Fprintf(&b, "\t.section %s,\"a\"\n\t.asciz %s\n", patchobj.BuildIDSection, asString(id))
	}
	b.WriteString("\t.section .note.GNU-stack,\"\",@progbits\n")
	return b.String()
}

// asString quotes s for the assembler, every byte outside plain ASCII in octal.
func asString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			fmt.Fprintf(&b, "\\%03o", c)
			continue
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

func command(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", name, err, out)
	}
	return nil
}
