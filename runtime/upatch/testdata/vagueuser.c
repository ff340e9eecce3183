/* Defines its own lib_value, which interposes libvague.so's, and prints what the
 * library computes with it. Build: gcc -O2 vagueuser.c -L. -lvague -Wl,-rpath,DIR */
#include <stdio.h>
#include <unistd.h>
int lib_report(void);
__attribute__((noipa)) int lib_value(void) { return 7; }
int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) {
		printf("report=%d\n", lib_report());
		usleep(2000);
	}
}
