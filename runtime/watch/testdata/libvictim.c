/* Watched shared library. Its constructor prints, so that the tests can see that the process
 * was stopped before the library's own code ran. Built with -shared -fPIC. */
#include <unistd.h>

__attribute__((constructor)) static void libvictim_init(void)
{
	write(1, "ctor\n", 5);
}

int libvictim_answer(void)
{
	return 42;
}
