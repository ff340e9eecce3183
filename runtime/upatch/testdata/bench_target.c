/* Benchmark target: ten patchable functions, N threads calling them, and on
 * "measure\n" from stdin it prints the cost of one call of f0 in ns.
 * Build: gcc -O2 -pthread bench_target.c -o bench_target */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define F(n) __attribute__((noipa)) int f##n(int x) { return x + n; }
F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9)

static volatile int sink;

static void *worker(void *arg)
{
	(void)arg;
	for (;;) {
		sink += f0(1) + f1(1) + f2(1) + f3(1) + f4(1) + f5(1) + f6(1) + f7(1) + f8(1) + f9(1);
		usleep(50);
	}
	return NULL;
}

static double ns_per_call(void)
{
	struct timespec a, b;
	const long n = 20000000;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		sink += f0((int)i);
	clock_gettime(CLOCK_MONOTONIC, &b);
	return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 0;
	char line[64];
	pthread_t t;
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 0; i < threads; i++)
		pthread_create(&t, NULL, worker, NULL);
	printf("ready\n");
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "measure", 7) == 0)
			printf("ns=%.3f f0=%d\n", ns_per_call(), f0(0));
	}
	return 0;
}
