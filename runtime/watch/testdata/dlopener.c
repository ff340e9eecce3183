/* Loads libvictim.so with dlopen after main started (argv[1] is its path). */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv)
{
	printf("before dlopen\n");
	fflush(stdout);
	void *h = dlopen(argv[1], RTLD_NOW);
	if (!h) {
		printf("dlopen: %s\n", dlerror());
		return 1;
	}
	int (*answer)(void) = (int (*)(void))dlsym(h, "libvictim_answer");
	printf("answer=%d\n", answer());
	return 0;
}
