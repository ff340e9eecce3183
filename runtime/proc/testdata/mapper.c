/* Test program for runtime/proc, built at test time:
 *   gcc -O2 -pthread -o mapper mapper.c
 * Usage: mapper FILE [zleader]. Maps FILE read-only, prints "ready", sleeps.
 * With "zleader" the main thread exits and a second thread keeps the process.
 * Built again with -DOTHER_BUILD=1 it is the same program with another build-id. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void *idle(void *arg) {
	(void)arg;
	for (;;) pause();
	return NULL;
}

#ifdef OTHER_BUILD
/* Built with -DOTHER_BUILD=1: other code, so another build-id (tests of build-id matching). */
const char other_build[] = "other build";
#endif

int main(int argc, char **argv) {
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) { perror("open"); return 1; }
	void *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED) { perror("mmap"); return 1; }
	close(fd);
	printf("ready %p\n", p);
	fflush(stdout);
	pthread_t t;
	pthread_create(&t, NULL, idle, NULL);
	if (argc > 2 && !strcmp(argv[2], "zleader")) pthread_exit(NULL);
	for (;;) pause();
}
