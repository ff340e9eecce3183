// Package patchobj parses SysCare user-space patch objects: the contract between
// the builder (syscare build, or a person writing a patch in C with upatch.h) and
// the runtime loader.
//
// # The format
//
// A patch object is an ELF64, little-endian, x86-64 relocatable file (ET_REL), as
// produced by `gcc -c -O2 -ffunction-sections -fdata-sections`. Its allocatable
// sections (.text.*, .rodata.*, .data.*, .bss.*) are loaded into the target process
// near the target ELF; its undefined symbols are resolved at load time. Sections
// whose names start with ".upatch." describe the patch and are never loaded:
//
//	.upatch.version   required. One or more 4-byte little-endian words, each the format
//	                  version, 2 (upatch.h writes one per translation unit; `ld -r` concatenates
//	                  them, so all must agree). Format 1 had no such section and is refused, as is
//	                  a version newer than the runtime's.
//	.upatch.funcs     required. An array of 32-byte entries, one per replaced function:
//	    offset 0  new_func  uint64  address of the replacement; carries an R_X86_64_64
//	                                relocation against a symbol defined in this object
//	                                (a function or its section), in an executable section
//	    offset 8  old_name  uint64  address of the replaced function's name; carries an
//	                                R_X86_64_64 relocation against a NUL-terminated string
//	                                in a section of this object (by convention .upatch.strings)
//	    offset 16 old_pos   uint64  0: the name is unique among the target's function
//	                                symbols (local or global); N >= 1: the N-th function
//	                                symbol of that name in the target's .symtab order,
//	                                which tells apart static functions of the same name
//	                                from different source files (kpatch's sympos)
//	    offset 24 flags     uint64  reserved, must be 0
//	.upatch.syms      optional. An array of 24-byte entries that bind undefined symbols of
//	                  this object to a given symbol of the target:
//	    offset 0  name      uint64  R_X86_64_64 relocation against the undefined symbol's name
//	    offset 8  target    uint64  R_X86_64_64 relocation against the name to look up in the
//	                                target (differs from name when the builder gave an alias to
//	                                tell apart two static variables of the same name)
//	    offset 16 pos       uint64  0: the target name is unique; N >= 1: the N-th symbol of
//	                                that name in the target's .symtab order
//	.upatch.build_id  optional. The GNU build-id of the target ELF as lowercase or uppercase
//	                  hexadecimal ASCII, NUL-terminated. The loader refuses a target whose
//	                  build-id differs. Without it the loader refuses to patch unless forced.
//	.upatch.offsets   optional; always written by syscare build. An array of 48-byte entries,
//	                  each a target symbol resolved from the target's debuginfo when the patch was
//	                  built (see "Self-contained patches" below):
//	    offset 0  name      uint64  R_X86_64_64 relocation against the target symbol's name
//	    offset 8  pos       uint64  as in .upatch.funcs (kind 1) or .upatch.syms (kind 2)
//	    offset 16 value     uint64  the symbol's st_value in the target ELF: its run-time address
//	                                is the ELF's load bias plus value (the bias is 0 for a non-PIE
//	                                executable); for an STT_TLS symbol, the offset in the TLS block
//	    offset 24 size      uint64  st_size
//	    offset 32 room      uint64  kind 1: how many bytes from value the jump may overwrite, at
//	                                least size; for a function shorter than the 14-byte jump, the
//	                                bytes up to the next symbol, at most 16 (the loader checks in
//	                                the process that those past size are padding); kind 2: 0
//	    offset 40 info      uint64  byte 0: kind, 1 for a replaced function (an entry of
//	                                .upatch.funcs), 2 for a symbol the new code uses (what an
//	                                undefined symbol stands for: its .upatch.syms binding, or its
//	                                own name at position 0); byte 1: the ELF symbol type (STT_*);
//	                                the other bytes 0
//	                  An entry repeated by `ld -r` must be identical. Every entry of .upatch.funcs
//	                  must have one.
//	.upatch.strings   the strings referenced by the tables above (not loaded).
//
// The replaced function is found in the target ELF (the executable or the shared
// library named by the caller), its address must be at least as long as the jump the
// loader writes. All functions of one object are switched together.
//
// # Self-contained patches
//
// Production hosts do not install -debuginfo packages, and packaged binaries are
// stripped, so a patch cannot count on finding the target's static functions and
// variables by name on the host. An object with a .upatch.offsets section is
// self-contained: the replaced functions and every symbol of the target ELF the new code
// uses carry their offsets, which the builder read from the debuginfo whose build-id the
// object records (so the offsets fit exactly that binary). The loader checks the
// build-id first, then that each offset falls inside a loadable segment of the mapped
// file (an executable one for a replaced function), and resolves the rest only
// dynamically: the target's PLT, then the dynamic symbols of the other mapped libraries
// (libc's functions and data, IFUNCs, symbol versions). It never reads the target's
// .symtab or debuginfo for such an object.
//
// # Symbols left undefined
//
// In an object without .upatch.offsets (written by hand with upatch.h), undefined
// symbols are resolved in this order: the target ELF's .symtab (from the file or its
// separate debuginfo), its .dynsym, then the dynamic symbols of the shared libraries
// mapped in the process. Local statics of the target are reachable by their symtab
// names (gcc's "counter.0" for a function-static), with .upatch.syms for duplicates.
//
// One name is the loader's own, in every object: __upatch_shadow_table, the
// process's table of shadow variables (upatch.h), which the loader maps the first
// time a patch uses it and shares between every patch of the process.
//
// # Relocations
//
// Loaded sections may carry the x86-64 relocations listed in Supported: the absolute and
// PC-relative forms gcc -O2 emits, GOT-relative loads (the loader provides its own GOT),
// R_X86_64_TPOFF32/GOTTPOFF for reading TLS variables of the executable, and
// R_X86_64_TLSGD/TLSLD/DTPOFF32/DTPOFF64 for the TLS variables of a shared library (the
// loader fills the tls_index pair with the library's module id as the process has it,
// read from the library's own GOT, for the patch's call to __tls_get_addr). A relocation
// of any other type is refused when the object is parsed, naming the section and offset.
//
// Sections that are not loaded: .upatch.*, .comment, .note.*, .eh_frame (replacement code
// has no unwind tables in the process; C++ exceptions must not propagate through it),
// .debug_*, and every section without SHF_ALLOC.
package patchobj
