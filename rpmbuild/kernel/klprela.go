package kernel

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
)

// Livepatch ELF conventions (Documentation/livepatch/module-elf-format.rst).
const (
	// shfRelaLivepatch marks a .klp.rela section: the module loader leaves it to
	// livepatch, which applies it once the object it names is loaded.
	shfRelaLivepatch = 0x00100000
	// shnLivepatch is the section index of a .klp.sym symbol, resolved by livepatch.
	shnLivepatch = 0xff20
	// klpSymPrefix starts the name of a symbol livepatch resolves:
	// .klp.sym.OBJECT.NAME,POS (OBJECT vmlinux or a module name).
	klpSymPrefix  = ".klp.sym."
	klpRelaPrefix = ".klp.rela."
)

// KlpSymName is the livepatch name of the symbol name of object obj at position pos.
func KlpSymName(obj, name string, pos uint64) string {
	return fmt.Sprintf("%s%s.%s,%d", klpSymPrefix, obj, name, pos)
}

// klpObject returns the object a .klp.sym name belongs to.
func klpObject(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, klpSymPrefix)
	if !ok {
		return "", false
	}
	obj, _, ok := strings.Cut(rest, ".")
	return obj, ok && obj != ""
}

var le = binary.LittleEndian

// MoveKlpRelocations rewrites a linked livepatch module: every relocation against a
// .klp.sym symbol moves out of its .rela section into .klp.rela.OBJECT.SECTION (flagged
// SHF_ALLOC|SHF_RELA_LIVEPATCH, applied by livepatch instead of the module loader), and
// those symbols get the section index SHN_LIVEPATCH. It returns the new file and the
// number of relocations moved. New sections and the grown section-name table go at
// the end of the file; nothing else moves.
func MoveKlpRelocations(ko []byte) ([]byte, int, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, 0, err
	}
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Type != elf.ET_REL {
		return nil, 0, fmt.Errorf("not a 64-bit little-endian relocatable module")
	}
	shoff := le.Uint64(ko[0x28:])
	shnum := int(le.Uint16(ko[0x3c:]))
	shstrndx := int(le.Uint16(ko[0x3e:]))
	if shnum != len(f.Sections) || shnum == 0 || shstrndx >= shnum {
		return nil, 0, fmt.Errorf("extended section numbering is not supported")
	}
	out := append([]byte(nil), ko...)
	hdr := func(i int) []byte { return out[shoff+uint64(i)*64 : shoff+uint64(i+1)*64] }
	symtab := -1
	for i, s := range f.Sections {
		if s.Type == elf.SHT_SYMTAB {
			symtab = i
		}
	}
	if symtab < 0 {
		return nil, 0, fmt.Errorf("no symbol table")
	}
	st := f.Sections[symtab]
	strtab := f.Sections[st.Link]
	strs, err := strtab.Data()
	if err != nil {
		return nil, 0, err
	}
	nsyms := int(st.Size / 24)
	klpObj := map[int]string{}
	for i := 1; i < nsyms; i++ {
		ent := out[st.Offset+uint64(i)*24:][:24]
		name := cstring(strs, le.Uint32(ent))
		obj, ok := klpObject(name)
		if !ok {
			continue
		}
		if shndx := le.Uint16(ent[6:]); shndx != uint16(elf.SHN_UNDEF) && shndx != shnLivepatch {
			return nil, 0, fmt.Errorf("symbol %s is defined in the module", name)
		}
		le.PutUint16(ent[6:], shnLivepatch)
		klpObj[i] = obj
	}
	type newSec struct {
		name       string
		data       []byte
		info, link uint32
	}
	var added []newSec
	moved := 0
	for i, s := range f.Sections {
		if s.Type != elf.SHT_RELA || int(s.Link) != symtab || strings.HasPrefix(s.Name, klpRelaPrefix) {
			continue
		}
		data := out[s.Offset : s.Offset+s.Size]
		var keep []byte
		byObj := map[string][]byte{}
		for at := 0; at+24 <= len(data); at += 24 {
			ent := data[at : at+24]
			sym := int(le.Uint64(ent[8:]) >> 32)
			if obj, ok := klpObj[sym]; ok {
				byObj[obj] = append(byObj[obj], ent...)
				moved++
			} else {
				keep = append(keep, ent...)
			}
		}
		if len(byObj) == 0 {
			continue
		}
		copy(data, keep)
		clear(data[len(keep):])
		le.PutUint64(hdr(i)[32:], uint64(len(keep)))
		target := f.Sections[s.Info].Name
		objs := make([]string, 0, len(byObj))
		for o := range byObj {
			objs = append(objs, o)
		}
		sort.Strings(objs)
		for _, o := range objs {
			added = append(added, newSec{name: klpRelaPrefix + o + "." + target, data: byObj[o], info: s.Info, link: uint32(symtab)})
		}
	}
	if len(added) == 0 {
		return out, 0, nil
	}
	// New contents, then the grown .shstrtab, then the whole section header table.
	shstr := append([]byte(nil), out[f.Sections[shstrndx].Offset:f.Sections[shstrndx].Offset+f.Sections[shstrndx].Size]...)
	oldHeaders := append([]byte(nil), out[shoff:shoff+uint64(shnum)*64]...)
	var headers [][]byte
	for _, a := range added {
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
		off := uint64(len(out))
		out = append(out, a.data...)
		nameOff := uint32(len(shstr))
		shstr = append(append(shstr, a.name...), 0)
		h := make([]byte, 64)
		le.PutUint32(h[0:], nameOff)
		le.PutUint32(h[4:], uint32(elf.SHT_RELA))
		le.PutUint64(h[8:], uint64(elf.SHF_ALLOC|elf.SHF_INFO_LINK)|shfRelaLivepatch)
		le.PutUint64(h[24:], off)
		le.PutUint64(h[32:], uint64(len(a.data)))
		le.PutUint32(h[40:], a.link)
		le.PutUint32(h[44:], a.info)
		le.PutUint64(h[48:], 8)
		le.PutUint64(h[56:], 24)
		headers = append(headers, h)
	}
	strOff := uint64(len(out))
	out = append(out, shstr...)
	for len(out)%8 != 0 {
		out = append(out, 0)
	}
	newShoff := uint64(len(out))
	out = append(out, oldHeaders...)
	for _, h := range headers {
		out = append(out, h...)
	}
	sh := out[newShoff+uint64(shstrndx)*64:]
	le.PutUint64(sh[24:], strOff)
	le.PutUint64(sh[32:], uint64(len(shstr)))
	le.PutUint64(out[0x28:], newShoff)
	le.PutUint16(out[0x3c:], uint16(shnum+len(added)))
	return out, moved, nil
}

func cstring(b []byte, off uint32) string {
	if int(off) >= len(b) {
		return ""
	}
	s := b[off:]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return string(s)
}
