/* Kill-campaign target: eight threads (main + 7 workers) call the ten patchable
 * functions of bench_fix.c in a loop. On "check\n" from stdin the main thread
 * prints "sum=S": 55 with every function original, 1055 with every one patched,
 * anything else when the patch is half in.
 * Build: gcc -O2 -no-pie -pthread campaign_target.c -o campaign_target */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define F(n) __attribute__((noipa)) int f##n(int x) { return x + n; }
F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9)

static volatile int sink;

static int sum(void)
{
	return f0(1) + f1(1) + f2(1) + f3(1) + f4(1) + f5(1) + f6(1) + f7(1) + f8(1) + f9(1);
}

static void *worker(void *arg)
{
	(void)arg;
	for (;;) {
		sink += sum();
		usleep(50);
	}
	return NULL;
}

int main(void)
{
	char line[64];
	pthread_t t;
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 0; i < 7; i++)
		pthread_create(&t, NULL, worker, NULL);
	printf("ready\n");
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "check", 5) == 0)
			printf("sum=%d\n", sum());
	}
	return 0;
}
