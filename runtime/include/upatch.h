/*
 * upatch.h - write a SysCare user-space hot patch by hand, in C.
 *
 * A patch is an object file built with
 *     gcc -c -O2 -ffunction-sections -fdata-sections -mno-direct-extern-access \
 *         -I runtime/include fix.c
 * (-mno-direct-extern-access: variables of other libraries, such as stderr, are read
 * through a GOT the loader provides, as they may be too far for a PC-relative access)
 * that defines replacement functions and names, with UPATCH_FUNC, which function of
 * the running program each one replaces. Everything the new code uses but does not
 * define (globals, static variables and functions of the target, libc functions) is
 * left undefined and resolved when the patch is loaded into the process.
 *
 *     #include <upatch.h>
 *     extern int counter;                  // a global of the target
 *     static int twice(int x) { return 2 * x; }
 *     int greet_v2(void) { counter++; return twice(21); }
 *     UPATCH_FUNC(greet, greet_v2);        // greet may be static in the target
 *     UPATCH_TARGET_BUILD_ID("9f3c...");   // optional: refuse any other binary
 *
 * The section layout is documented in the Go package runtime/patchobj. Patches made by
 * `syscare build` also carry .upatch.offsets (struct upatch_offset): every target symbol
 * they use, resolved from the target's debuginfo when the patch was built, so that the
 * host needs no -debuginfo package. A hand-written patch usually leaves that table out
 * and its symbols are looked up by name when it is loaded.
 */
#ifndef SYSCARE_UPATCH_H
#define SYSCARE_UPATCH_H

/* The patch-object format this header writes; the loader refuses any other. */
#define UPATCH_FORMAT_VERSION 2

/*
 * Every object that includes this header declares its format (4 bytes). `ld -r`
 * concatenates these words when it merges objects; they must all agree.
 */
static const unsigned int __upatch_format_version
	__attribute__((section(".upatch.version"), used, aligned(4))) = UPATCH_FORMAT_VERSION;

/* One entry of .upatch.funcs (32 bytes). */
struct upatch_func {
	const void *new_func;   /* the replacement, defined in this object */
	const char *old_name;   /* symbol name of the replaced function in the target */
	unsigned long old_pos;  /* 0: unique name; N: N-th symbol of that name in .symtab */
	unsigned long flags;    /* reserved, 0 */
};

/* One entry of .upatch.syms (24 bytes). */
struct upatch_sym {
	const char *name;       /* an undefined symbol of this object */
	const char *target;     /* the symbol's name in the target */
	unsigned long pos;      /* 0: unique; N: the N-th symbol of that name in .symtab */
};

/* Kinds of struct upatch_offset (low byte of info). */
#define UPATCH_OFFSET_FUNC   1  /* a replaced function: name and pos as in upatch_func */
#define UPATCH_OFFSET_SYMBOL 2  /* a symbol the new code uses: name and pos as in upatch_sym */

/*
 * One entry of .upatch.offsets (48 bytes), written by syscare build. value is the
 * symbol's st_value in the target ELF: the loader adds the ELF's load bias (0 for a
 * non-PIE executable); for a thread-local symbol it is the offset in the TLS block.
 */
struct upatch_offset {
	const char *name;       /* the target symbol's name */
	unsigned long pos;      /* as in upatch_func (functions) or upatch_sym (symbols) */
	unsigned long value;    /* st_value in the target ELF */
	unsigned long size;     /* st_size */
	unsigned long room;     /* functions: bytes the jump may cover (>= size); else 0 */
	unsigned long info;     /* byte 0: UPATCH_OFFSET_*; byte 1: ELF symbol type; rest 0 */
};

/* Replace the target function OLD with NEW. */
#define UPATCH_FUNC(old, new) UPATCH_FUNC_POS(old, new, 0)

/*
 * Replace the POS-th (1-based, .symtab order) function named OLD: for a static
 * function whose name occurs in several source files of the target.
 */
#define UPATCH_FUNC_POS(old, new, pos)                                           \
	static const char __upatch_name_##new[]                 \
		__attribute__((section(".upatch.strings"), used)) = #old;        \
	static const struct upatch_func __upatch_func_##new     \
		__attribute__((section(".upatch.funcs"), used, aligned(8))) = {  \
		(const void *)&new, __upatch_name_##new, (pos), 0 \
	}

/*
 * Bind the undefined symbol NAME (declared extern in this file) to the POS-th
 * symbol of that name in the target's .symtab: for duplicated static variables.
 */
#define UPATCH_SYMBOL_POS(name, pos)                                             \
	static const char __upatch_sname_##name[]                \
		__attribute__((section(".upatch.strings"), used)) = #name;       \
	static const struct upatch_sym __upatch_sym_##name       \
		__attribute__((section(".upatch.syms"), used, aligned(8))) = {   \
		__upatch_sname_##name,                           \
		__upatch_sname_##name, (pos)                     \
	}

/* Record the GNU build-id (hex) of the only target ELF this patch fits. */
#define UPATCH_TARGET_BUILD_ID(hex)                                              \
	static const char __upatch_build_id[]                                    \
		__attribute__((section(".upatch.build_id"), used)) = hex

#endif /* SYSCARE_UPATCH_H */
