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

/*
 * Shadow variables: new data attached to an object of the running program, for a
 * fix that needs state the program's structures have no room for (a new member, a
 * per-object counter). The data is keyed by (object address, id); an id names one
 * kind of shadow data and must mean the same thing in every patch that uses it.
 *
 *     struct conn_extra { unsigned long requests; };
 *     struct conn_extra *x = upatch_shadow_get_or_alloc(conn, 1, sizeof *x, 0, 0, 0);
 *     if (x) x->requests++;
 *     ...
 *     upatch_shadow_free(conn, 1, 0);    // where the program frees conn
 *
 * Storage: one table per process, not per patch. The loader maps it the first time a
 * patch that uses this API is applied to the process, records it in the header of
 * every such patch, and binds the symbol __upatch_shadow_table to it; a later patch
 * (a cumulative one included) finds the same table, so the data attached by one
 * patch is seen by the next while both, or the later alone, stay applied. The table
 * is unmapped when the last patch that uses it is removed.
 *
 * The data lives inside the table (no malloc): the table holds UPATCH_SHADOW_ARENA
 * bytes of data in all; an allocation that does not fit returns NULL, which the
 * patch must handle (keep the old behaviour). Every call takes a spin lock in the
 * table (atomic builtins, no pthread symbols), so they may run on any thread; the
 * constructor runs with the lock held and must not call this API. A pointer to data
 * stays valid until that data is freed: the patch frees an object's data where the
 * object itself is freed, when no other thread uses it.
 *
 * Destructors run when a patch calls upatch_shadow_free (or upatch_shadow_free_all).
 * When a patch is removed and the table stays for another, the destructors that are
 * in the removed patch's code are forgotten (freeing that data later runs none).
 * Not done: at the removal of the last patch that uses the table the loader unmaps
 * it without running the destructors (running code of the target with every thread
 * stopped could deadlock on a lock a stopped thread holds), so shadow data must not
 * own memory outside the table, or the patch must free it itself.
 *
 * A cumulative patch applied after the one it replaces was removed starts with an
 * empty table, unless the old one was removed with `upatch-manage unpatch
 * --keep-shadow` (Options.KeepShadow): then the table stays mapped and the next patch
 * that uses the API adopts it. In between, the original code runs: an object it frees
 * keeps its data, which a new object at the same address would inherit.
 */
#define UPATCH_SHADOW_MAGIC   0x5744414853505555UL /* "UUPSHADW" */
#define UPATCH_SHADOW_BUCKETS 4096
#define UPATCH_SHADOW_ARENA   (4UL << 20)

/* One shadow variable; its data follows, 16-byte aligned. */
struct upatch_shadow_entry {
	unsigned long next;      /* offset of the next entry of the bucket (or free list), 0: none */
	const void *obj;         /* the object the data is attached to */
	unsigned long id;
	unsigned long cap;       /* bytes of data this entry can hold */
	void (*dtor)(void *obj, void *data);
	unsigned long live;      /* 1 while attached */
} __attribute__((aligned(16)));

/* The table the loader maps once per process (layout read by the loader too). */
struct upatch_shadow_table {
	unsigned long magic;     /* UPATCH_SHADOW_MAGIC */
	unsigned long size;      /* bytes of the whole mapping */
	unsigned long used;      /* bytes of the arena handed out so far */
	unsigned long live;      /* attached entries */
	unsigned long free;      /* offset of the first freed entry, 0: none */
	int lock;                /* 0 free, 1 held */
	int reserved[5];
	unsigned long buckets[UPATCH_SHADOW_BUCKETS]; /* at 64: offsets of entries, 0: empty */
	/* the arena follows */
};

/* The loader reads these layouts (runtime/upatch/shadow.go): they must not move. */
typedef char upatch__shadow_table_layout[
	sizeof(struct upatch_shadow_table) == 64 + 8 * UPATCH_SHADOW_BUCKETS ? 1 : -1];
typedef char upatch__shadow_entry_layout[sizeof(struct upatch_shadow_entry) == 48 ? 1 : -1];

/*
 * Weak: the same fix source also links into a plain build of the program (the
 * package's next release), where no loader binds it; there every call finds no table
 * and answers as if the table were full (NULL), so the fix must keep the old
 * behaviour when it gets NULL.
 */
extern struct upatch_shadow_table __upatch_shadow_table __attribute__((weak));

/* The table, or NULL outside a patch (or if it was overwritten). */
static inline struct upatch_shadow_table *upatch__shadow_table(void)
{
	struct upatch_shadow_table *t = &__upatch_shadow_table;
	return t && t->magic == UPATCH_SHADOW_MAGIC ? t : 0;
}

/* Constructor: initialise data (size bytes, zeroed) for obj; nonzero refuses. */
typedef int (*upatch_shadow_ctor_t)(void *obj, void *data, unsigned long size, void *arg);
typedef void (*upatch_shadow_dtor_t)(void *obj, void *data);

static inline void upatch__shadow_lock(struct upatch_shadow_table *t)
{
	while (__atomic_exchange_n(&t->lock, 1, __ATOMIC_ACQUIRE))
		while (__atomic_load_n(&t->lock, __ATOMIC_RELAXED))
			__builtin_ia32_pause();
}

static inline void upatch__shadow_unlock(struct upatch_shadow_table *t)
{
	__atomic_store_n(&t->lock, 0, __ATOMIC_RELEASE);
}

static inline struct upatch_shadow_entry *upatch__shadow_at(struct upatch_shadow_table *t, unsigned long off)
{
	return off ? (struct upatch_shadow_entry *)((char *)t + off) : 0;
}

static inline unsigned long upatch__shadow_bucket(const void *obj, unsigned long id)
{
	unsigned long h = ((unsigned long)obj ^ (id * 0x9e3779b97f4a7c15UL)) * 0xff51afd7ed558ccdUL;
	return (h >> 40) % UPATCH_SHADOW_BUCKETS;
}

/* Caller holds the lock. */
static inline struct upatch_shadow_entry *upatch__shadow_find(struct upatch_shadow_table *t,
	const void *obj, unsigned long id, unsigned long **link)
{
	unsigned long *l = &t->buckets[upatch__shadow_bucket(obj, id)];
	struct upatch_shadow_entry *e;
	for (; (e = upatch__shadow_at(t, *l)) != 0; l = &e->next)
		if (e->obj == obj && e->id == id) {
			if (link)
				*link = l;
			return e;
		}
	return 0;
}

/* The data attached to obj under id, or NULL. */
static inline void *upatch_shadow_get(const void *obj, unsigned long id)
{
	struct upatch_shadow_table *t = upatch__shadow_table();
	struct upatch_shadow_entry *e;
	if (!t)
		return 0;
	upatch__shadow_lock(t);
	e = upatch__shadow_find(t, obj, id, 0);
	upatch__shadow_unlock(t);
	return e ? (void *)(e + 1) : 0;
}

/*
 * The data attached to obj under id; if there is none, size new bytes (zeroed, then
 * given to ctor if not NULL) are attached and returned. NULL when the table is full
 * or ctor refused. dtor (may be NULL) runs when the data is freed by the patch.
 */
static inline void *upatch_shadow_get_or_alloc(const void *obj, unsigned long id, unsigned long size,
	upatch_shadow_ctor_t ctor, void *arg, upatch_shadow_dtor_t dtor)
{
	struct upatch_shadow_table *t = upatch__shadow_table();
	struct upatch_shadow_entry *e;
	unsigned long need = (sizeof(*e) + size + 15) & ~15UL, *l, off;
	if (!t)
		return 0;
	upatch__shadow_lock(t);
	e = upatch__shadow_find(t, obj, id, 0);
	if (e) {
		upatch__shadow_unlock(t);
		return e + 1;
	}
	/* first fit from the freed entries, else the arena's end */
	for (l = &t->free; (e = upatch__shadow_at(t, *l)) != 0; l = &e->next)
		if (e->cap >= size)
			break;
	if (e) {
		*l = e->next;
	} else {
		off = sizeof(*t) + t->used;
		if (off + need > t->size) {
			upatch__shadow_unlock(t);
			return 0;
		}
		t->used += need;
		e = upatch__shadow_at(t, off);
		e->cap = need - sizeof(*e);
	}
	e->obj = obj;
	e->id = id;
	e->dtor = dtor;
	__builtin_memset(e + 1, 0, e->cap);
	if (ctor && ctor((void *)obj, e + 1, size, arg) != 0) {
		e->live = 0;
		e->next = t->free;
		t->free = (unsigned long)((char *)e - (char *)t);
		upatch__shadow_unlock(t);
		return 0;
	}
	e->live = 1;
	l = &t->buckets[upatch__shadow_bucket(obj, id)];
	e->next = *l;
	*l = (unsigned long)((char *)e - (char *)t);
	t->live++;
	upatch__shadow_unlock(t);
	return e + 1;
}

/* Like upatch_shadow_get_or_alloc, but NULL if obj already has data under id. */
static inline void *upatch_shadow_alloc(const void *obj, unsigned long id, unsigned long size,
	upatch_shadow_ctor_t ctor, void *arg, upatch_shadow_dtor_t dtor)
{
	if (upatch_shadow_get(obj, id))
		return 0;
	return upatch_shadow_get_or_alloc(obj, id, size, ctor, arg, dtor);
}

/*
 * Detach and free the data attached to obj under id, running dtor if not NULL (else
 * the destructor given when it was attached). The destructor runs after the lock is
 * released: it may call this API.
 */
static inline void upatch_shadow_free(const void *obj, unsigned long id, upatch_shadow_dtor_t dtor)
{
	struct upatch_shadow_table *t = upatch__shadow_table();
	struct upatch_shadow_entry *e;
	unsigned long *l;
	if (!t)
		return;
	upatch__shadow_lock(t);
	e = upatch__shadow_find(t, obj, id, &l);
	if (e) {
		*l = e->next;
		t->live--;
		e->live = 0;
	}
	upatch__shadow_unlock(t);
	if (!e)
		return;
	if (!dtor)
		dtor = e->dtor;
	if (dtor)
		dtor((void *)obj, e + 1);
	upatch__shadow_lock(t);
	e->next = t->free;
	t->free = (unsigned long)((char *)e - (char *)t);
	upatch__shadow_unlock(t);
}

/* Free the data of every object under id (the destructor runs for each). */
static inline void upatch_shadow_free_all(unsigned long id, upatch_shadow_dtor_t dtor)
{
	struct upatch_shadow_table *t = upatch__shadow_table();
	unsigned long b;
	if (!t)
		return;
	for (b = 0; b < UPATCH_SHADOW_BUCKETS; b++) {
		for (;;) {
			struct upatch_shadow_entry *e;
			const void *obj = 0;
			upatch__shadow_lock(t);
			for (e = upatch__shadow_at(t, t->buckets[b]); e; e = upatch__shadow_at(t, e->next))
				if (e->id == id)
					break;
			if (e)
				obj = e->obj;
			upatch__shadow_unlock(t);
			if (!e)
				break;
			upatch_shadow_free(obj, id, dtor);
		}
	}
}

#endif /* SYSCARE_UPATCH_H */
