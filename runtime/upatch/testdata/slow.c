/* A target whose one thread is nearly always inside slow(), blocked reading a line
 * of stdin there; each line read makes it print what slow() returned. The engine
 * must wait for slow() to return before it may replace it.
 * Build: gcc -O2 -g slow.c -o slow */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((noipa)) int slow(void)
{
	char c;
	/* Blocks here: the return address into main() sits on the stack. */
	if (read(0, &c, 1) != 1)
		exit(0);
	return 1;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	for (;;)
		printf("slow=%d\n", slow());
}
