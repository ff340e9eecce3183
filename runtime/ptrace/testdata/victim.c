/* Test victim for runtime/ptrace, built at test time:
 *   gcc -O2 -pthread -o victim victim.c
 * Usage: victim MODE [N]. Every mode prints "ready" once its threads exist, then
 * lines the test watches to see that the process still runs normally. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long counter;
static volatile unsigned long alarms;

static void say(const char *fmt, unsigned long v) {
	char b[128];
	int n = snprintf(b, sizeof b, fmt, v);
	if (n > 0) write(1, b, (size_t)n);
}

static void nap_us(long us) {
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
	nanosleep(&ts, NULL);
}

static void *spinner(void *arg) {
	(void)arg;
	for (;;) counter++;
	return NULL;
}

static void *sleeper(void *arg) {
	(void)arg;
	for (;;) { nap_us(1000); counter++; }
	return NULL;
}

static void *ticker(void *arg) {
	(void)arg;
	for (unsigned long i = 0;; i++) { say("tick %lu\n", i); nap_us(10000); }
	return NULL;
}

static void *shortlived(void *arg) {
	(void)arg;
	nap_us(200);
	return NULL;
}

static void start(void *(*fn)(void *), int n) {
	for (int i = 0; i < n; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, fn, NULL) != 0) { perror("pthread_create"); exit(1); }
		pthread_detach(t);
	}
}

static void onalarm(int sig) { (void)sig; alarms++; }

static char *self;
static int gen;
static void *execer(void *arg) {
	(void)arg;
	nap_us(3000);
	char g[16];
	snprintf(g, sizeof g, "%d", gen + 1);
	execl(self, self, "exec", g, (char *)NULL);
	perror("execl");
	exit(1);
}

int main(int argc, char **argv) {
	const char *mode = argc > 1 ? argv[1] : "sleep";
	int n = argc > 2 ? atoi(argv[2]) : 1;
	if (!strcmp(mode, "spin") || !strcmp(mode, "sleep")) {
		start(!strcmp(mode, "spin") ? spinner : sleeper, n - 1);
		say("ready\n", 0);
		ticker(NULL);
	} else if (!strcmp(mode, "spawn")) {
		/* A thread is created every ~20 us and lives ~200 us. */
		start(ticker, 1);
		say("ready\n", 0);
		for (;;) { start(shortlived, 1); nap_us(20); }
	} else if (!strcmp(mode, "read")) {
		char line[256];
		say("ready\n", 0);
		while (fgets(line, sizeof line, stdin)) {
			char b[300];
			int k = snprintf(b, sizeof b, "got %s", line);
			write(1, b, (size_t)k);
		}
	} else if (!strcmp(mode, "nap")) {
		say("ready\n", 0);
		for (unsigned long i = 0;; i++) { nap_us(200000); say("tick %lu\n", i); }
	} else if (!strcmp(mode, "zleader")) {
		/* The group leader exits and stays a zombie while the others run. */
		start(sleeper, n - 2);
		start(ticker, 1);
		say("ready\n", 0);
		pthread_exit(NULL);
	} else if (!strcmp(mode, "alarm")) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = onalarm;
		sa.sa_flags = SA_RESTART;
		sigaction(SIGALRM, &sa, NULL);
		struct itimerval it = {{0, 100}, {0, 100}};
		setitimer(ITIMER_REAL, &it, NULL);
		start(sleeper, n - 1);
		say("ready\n", 0);
		for (;;) { nap_us(10000); say("tick %lu\n", alarms); }
	} else if (!strcmp(mode, "exec")) {
		/* A non-leader thread re-executes the program every few ms. */
		self = "/proc/self/exe";
		gen = n;
		say("gen %lu\n", (unsigned long)gen);
		start(sleeper, 2);
		start(execer, 1);
		for (;;) nap_us(1000);
	}
	return 0;
}
