/* Prints lib_value() of libshared.so forever. Build: gcc -O2 libuser.c -L. -lshared -Wl,-rpath,DIR */
#include <stdio.h>
#include <unistd.h>
int lib_value(void);
int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) {
		printf("lib=%d\n", lib_value());
		usleep(2000);
	}
}
