/*
 * upatch.h - write a SysCare user-space hot patch by hand, in C.
 *
 * A patch is an object file built with
 *     gcc -c -O2 -ffunction-sections -fdata-sections -I runtime/include fix.c
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
 * The section layout is documented in the Go package runtime/patchobj.
 */
#ifndef SYSCARE_UPATCH_H
#define SYSCARE_UPATCH_H

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
