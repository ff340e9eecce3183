/* Linked against libvictim.so: ld.so runs the library's initializers before main. */
#include <stdio.h>

int libvictim_answer(void);

int main(void)
{
	printf("main answer=%d\n", libvictim_answer());
	return 0;
}
