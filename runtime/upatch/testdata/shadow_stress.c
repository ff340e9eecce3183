/* Exercises the shadow-variable API of upatch.h on many threads at once, in a plain
 * program that maps the table itself as the loader would (magic, size).
 * Build: gcc -O2 -pthread -I include shadow_stress.c -o shadow_stress
 * Prints "ok <figures>" or "FAIL <what>" and exits nonzero. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <upatch.h>

/* The symbol the loader would bind: here the start of a mapping made below. */
asm(".globl __upatch_shadow_table\n.set __upatch_shadow_table, table_storage\n");
#define TABLE_SIZE (sizeof(struct upatch_shadow_table) + UPATCH_SHADOW_ARENA)
char table_storage[TABLE_SIZE] __attribute__((aligned(4096)));

#define THREADS 8
#define OBJS 64
#define ROUNDS 20000

static char objs[THREADS][OBJS];
static char shared_obj;
static long dtor_calls, ctor_calls;
static int failed;

struct val {
	long owner;
	long n;
};

static void fail(const char *what)
{
	if (!__atomic_exchange_n(&failed, 1, __ATOMIC_SEQ_CST))
		printf("FAIL %s\n", what);
}

static int ctor(void *obj, void *data, unsigned long size, void *arg)
{
	(void)obj;
	if (size != sizeof(struct val))
		fail("ctor size");
	((struct val *)data)->owner = (long)arg;
	__atomic_add_fetch(&ctor_calls, 1, __ATOMIC_RELAXED);
	return 0;
}

static void dtor(void *obj, void *data)
{
	(void)obj;
	(void)data;
	__atomic_add_fetch(&dtor_calls, 1, __ATOMIC_RELAXED);
}

static void *worker(void *arg)
{
	long me = (long)arg;
	long n[OBJS] = {0};
	unsigned seed = (unsigned)me * 7919u + 1;
	for (int r = 0; r < ROUNDS; r++) {
		int i = rand_r(&seed) % OBJS;
		void *o = &objs[me][i];
		switch (rand_r(&seed) % 4) {
		case 0:
		case 1: {
			struct val *v = upatch_shadow_get_or_alloc(o, 7, sizeof *v, ctor, (void *)me, dtor);
			if (!v || v->owner != me || v->n != n[i])
				fail("get_or_alloc returned another's data");
			else
				n[i] = ++v->n;
			break;
		}
		case 2: {
			struct val *v = upatch_shadow_get(o, 7);
			if (n[i] == 0 ? v != 0 && v->n != 0 : !v || v->n != n[i] || v->owner != me)
				fail("get lost data");
			break;
		}
		case 3:
			upatch_shadow_free(o, 7, 0);
			n[i] = 0;
			break;
		}
		long *s = upatch_shadow_get_or_alloc(&shared_obj, 8, sizeof(long), 0, 0, 0);
		if (!s)
			fail("shared");
		else
			__atomic_add_fetch(s, 1, __ATOMIC_RELAXED);
	}
	return 0;
}

int main(void)
{
	struct upatch_shadow_table *t = &__upatch_shadow_table;
	pthread_t th[THREADS];
	t->magic = UPATCH_SHADOW_MAGIC;
	t->size = TABLE_SIZE;
	for (long i = 0; i < THREADS; i++)
		pthread_create(&th[i], 0, worker, (void *)i);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], 0);
	long *s = upatch_shadow_get(&shared_obj, 8);
	if (!s || *s != (long)THREADS * ROUNDS)
		fail("shared counter lost increments");
	if (upatch_shadow_alloc(&shared_obj, 8, 8, 0, 0, 0) != 0)
		fail("alloc over existing data");
	unsigned long live = t->live;
	long before = dtor_calls;
	upatch_shadow_free_all(7, 0);
	if (t->live != 1 || dtor_calls - before != (long)live - 1)
		fail("free_all");
	if (ctor_calls - dtor_calls != 0)
		fail("every attached value was destroyed once");
	/* A full table says so with NULL. */
	t->size = sizeof(*t) + t->used;
	if (upatch_shadow_get_or_alloc(&objs[0][0], 99, 1 << 20, 0, 0, 0) != 0)
		fail("allocation past the end of the table");
	if (!failed)
		printf("ok threads %d rounds %d used %lu bytes live-before-free-all %lu\n", THREADS, ROUNDS, t->used, live);
	return failed;
}
