/* A target whose worker thread takes a signal inside a function: spin() (which a
 * patch replaces), itself or in its callee load() (modes ending in "deep"), or
 * other() (which none does, but whose frame holds stale copies of spin's address).
 * Each line "g" on stdin makes the worker call it once with the page it loads from
 * made inaccessible: the load faults, and the SIGSEGV handler, on a sigaltstack
 * (modes "alt", "altdeep", "other") or on the thread's own stack ("normal",
 * "normaldeep"), prints "handler" and waits for a line "r". Then it makes the page
 * readable and returns, the load is done again, and the worker prints what the
 * function returned. A line "s" makes the main thread print spin() (page readable).
 * Build: gcc -O2 -g -pthread sighold.c -o sighold */
#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile int *page;
static volatile sig_atomic_t release;
static sem_t go;
static int use_other, on_altstack, deep;

__attribute__((noipa)) int load(void) { return *page; }

__attribute__((noipa)) int spin(int callee)
{
	/* The signal interrupts this very load (the thread is inside spin()), or the
	 * one in load() (spin's frame is a caller's). */
	int v = callee ? load() : *page;
	return v + 1;
}

__attribute__((noipa)) int other(void)
{
	volatile unsigned long words[8];
	for (int i = 0; i < 8; i++)
		words[i] = (unsigned long)spin + 8 + i;
	int v = *page;
	return v + (int)(words[0] & 0);
}

static void on_segv(int sig, siginfo_t *si, void *uc)
{
	static const char msg[] = "handler\n";
	struct timespec ms = {0, 1000000};
	(void)sig, (void)si, (void)uc;
	if (write(1, msg, sizeof msg - 1) < 0)
		_exit(1);
	while (!release)
		nanosleep(&ms, NULL);
	release = 0;
	mprotect((void *)page, 4096, PROT_READ);
}

static void *worker(void *arg)
{
	(void)arg;
	if (on_altstack) {
		/* A mapping of its own between two inaccessible pages: the kernel cannot
		 * merge it with the thread's stack, so the end of the mapping that holds the
		 * handler's stack pointer is the end of the alternate stack. */
		stack_t ss = {.ss_size = 64 * 1024};
		char *m = mmap(NULL, ss.ss_size + 2 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED || mprotect(m + 4096, ss.ss_size, PROT_READ | PROT_WRITE) != 0)
			_exit(2);
		ss.ss_sp = m + 4096;
		if (sigaltstack(&ss, NULL) != 0)
			_exit(2);
	}
	for (;;) {
		sem_wait(&go);
		mprotect((void *)page, 4096, PROT_NONE);
		int v = use_other ? other() : spin(deep);
		mprotect((void *)page, 4096, PROT_READ);
		printf("%s=%d\n", use_other ? "other" : "spin", v);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "alt";
	use_other = strcmp(mode, "other") == 0;
	on_altstack = strncmp(mode, "normal", 6) != 0;
	deep = strstr(mode, "deep") != NULL;
	setvbuf(stdout, NULL, _IOLBF, 0);
	page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		return 1;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_segv;
	sa.sa_flags = SA_SIGINFO | (on_altstack ? SA_ONSTACK : 0);
	sigaction(SIGSEGV, &sa, NULL);
	sem_init(&go, 0, 0);
	pthread_t t;
	pthread_create(&t, NULL, worker, NULL);
	printf("ready\n");
	for (int c; (c = getchar()) != EOF;) {
		if (c == 'g')
			sem_post(&go);
		else if (c == 'r')
			release = 1;
		else if (c == 's')
			printf("spin=%d\n", spin(0));
	}
	return 0;
}
