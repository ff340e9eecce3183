/* Watched executable. Built as PIE, -no-pie and -static by the tests (see fixtures_test.go).
 * It prints one line from main; "flag" is the word a tracer overwrites while the process is
 * stopped at its entry point, to show that the write lands before main reads it. */
#include <stdio.h>
#include <unistd.h>

volatile long flag = 0;

int main(int argc, char **argv)
{
	/* Unbuffered: the tests read the output file while the process is stopped. */
	setvbuf(stdout, NULL, _IONBF, 0);
	printf("main flag=%ld\n", flag);
	if (argc > 1) { /* "hold": wait for EOF on stdin, so that a late stop still finds it alive */
		char c;
		while (read(0, &c, 1) > 0)
			;
	}
	printf("done\n");
	return 0;
}
