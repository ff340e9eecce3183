/* A target program for the engine tests: prints one line per round, forever.
 * Build: gcc -O2 -g [-no-pie] -pthread victim.c -o victim
 * Usage: victim [threads]  — threads>0 also runs that many threads calling work().
 * A line "park" on stdin makes a thread enter park() and block there until the
 * next line arrives. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int counter;
__thread int tls_value = 41;
static volatile long thread_sum;

/* noipa: gcc must not hoist or inline these calls, or the patch looks like it failed. */
__attribute__((noipa)) int greet(void) { return 1; }

__attribute__((noipa)) static int bump(void)
{
	static int calls; /* a function-static: "calls.0" in the symbol table */
	calls++;
	return calls;
}

__attribute__((noipa)) int work(int x) { return x + 1; }

__attribute__((noipa)) int tls_read(void) { return tls_value; }

static int park_fd[2];
__attribute__((noipa)) int park(void)
{
	char c;
	/* Blocks here: the return address into park() sits on this thread's stack. */
	if (read(park_fd[0], &c, 1) != 1)
		return -1;
	return c;
}

static void *parker(void *arg)
{
	(void)arg;
	park();
	return NULL;
}

static void *worker(void *arg)
{
	long id = (long)arg;
	for (;;) {
		thread_sum += work((int)id);
		usleep(100);
	}
	return NULL;
}

static void *stdin_reader(void *arg)
{
	char line[64];
	pthread_t t;
	(void)arg;
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "park", 4) == 0)
			pthread_create(&t, NULL, parker, NULL);
		else if (strncmp(line, "release", 7) == 0)
			(void)!write(park_fd[1], "x", 1);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 0;
	pthread_t t;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (pipe(park_fd) != 0)
		return 1;
	pthread_create(&t, NULL, stdin_reader, NULL);
	for (long i = 0; i < threads; i++)
		pthread_create(&t, NULL, worker, (void *)i);
	for (;;) {
		int b = bump();
		printf("greet=%d work=%d tls=%d counter=%d bump=%d\n", greet(), work(1), tls_read(), counter, b);
		usleep(2000);
	}
}
