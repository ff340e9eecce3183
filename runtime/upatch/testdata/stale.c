/* A target whose threads hold stale words: stale() leaves the addresses of greet()
 * and inside_greet in its frame, then sleeps in libc, so a word-by-word scan of its
 * stack finds greet although no frame of it runs there. held() really sleeps inside
 * a callee of hold(): its return address is a real frame.
 * Build: gcc -O2 -g -pthread stale.c -o stale */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

__attribute__((noipa)) int greet(void) { return 1; }
__attribute__((noipa)) int hold(void);

__attribute__((noipa)) void sleeper(void) { for (;;) pause(); }

__attribute__((noipa)) int hold(void) { sleeper(); return 0; }

__attribute__((noipa)) static void stale(void)
{
	volatile unsigned long words[8];
	for (int i = 0; i < 8; i++)
		words[i] = (unsigned long)greet + i;
	(void)words[0];
	for (;;)
		pause(); /* the words stay in this frame */
}

static void *stale_thread(void *arg) { (void)arg; stale(); return NULL; }
static void *hold_thread(void *arg) { (void)arg; hold(); return NULL; }

int main(void)
{
	pthread_t a, b;
	pthread_create(&a, NULL, stale_thread, NULL);
	pthread_create(&b, NULL, hold_thread, NULL);
	for (;;) {
		printf("greet=%d\n", greet());
		fflush(stdout);
		usleep(5000);
	}
}
