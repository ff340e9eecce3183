/* Linked against libvictim.so: ld.so runs the library's initializers before main. */
#include <stdio.h>

int libvictim_answer(void);

int main(void)
{
	/* Unbuffered: the tests read the output file while the process is stopped. */
	setvbuf(stdout, NULL, _IONBF, 0);
	printf("main answer=%d\n", libvictim_answer());
	return 0;
}
