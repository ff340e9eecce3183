/* A server-like target for the shadow-variable tests: two worker threads each serve
 * their own four connections in a loop; every 40 rounds a worker closes one and opens
 * a new one (malloc may give the new one the old one's address). Each serve prints
 * "conn <id> bytes <n>"; every 10 rounds worker 0 prints "report".
 * Build: gcc -O2 -g -pthread shadow_server.c -o shadow_server */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct conn {
	int id;
	int bytes;
};

static pthread_mutex_t out = PTHREAD_MUTEX_INITIALIZER;
static int next_id;

__attribute__((noipa)) struct conn *conn_open(void)
{
	struct conn *c = calloc(1, sizeof *c);
	c->id = __atomic_add_fetch(&next_id, 1, __ATOMIC_RELAXED);
	return c;
}

__attribute__((noipa)) void conn_close(struct conn *c) { free(c); }

__attribute__((noipa)) void conn_serve(struct conn *c)
{
	c->bytes++;
	pthread_mutex_lock(&out);
	printf("conn %d bytes %d\n", c->id, c->bytes);
	fflush(stdout);
	pthread_mutex_unlock(&out);
}

__attribute__((noipa)) void report(struct conn **cs, int n)
{
	(void)cs;
	pthread_mutex_lock(&out);
	printf("report %d conns\n", n);
	fflush(stdout);
	pthread_mutex_unlock(&out);
}

static void *worker(void *arg)
{
	long w = (long)arg;
	struct conn *cs[4];
	for (int i = 0; i < 4; i++)
		cs[i] = conn_open();
	for (long round = 1;; round++) {
		for (int i = 0; i < 4; i++)
			conn_serve(cs[i]);
		if (round % 40 == 0) {
			int i = (round / 40) % 4;
			conn_close(cs[i]);
			cs[i] = conn_open();
		}
		if (w == 0 && round % 10 == 0)
			report(cs, 4);
		usleep(2000);
	}
	return NULL;
}

int main(void)
{
	pthread_t t;
	pthread_create(&t, NULL, worker, (void *)1L);
	worker((void *)0L);
	return 0;
}
