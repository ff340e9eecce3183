/* Watched shared library. Its constructor prints, so that the tests can see that the process
 * was stopped before the library's own code ran. Built with -shared -fPIC; with -nostartfiles
 * it has DT_INIT_ARRAY and no DT_INIT, and with -DNO_CTOR as well no initializer at all.
 * -DSTATIC_CTOR makes the constructor local. */
#include <unistd.h>

#ifdef STATIC_CTOR /* the DT_INIT_ARRAY slot then has a RELATIVE relocation, else a symbolic one */
#define LINKAGE static
#else
#define LINKAGE
#endif

#ifndef NO_CTOR
__attribute__((constructor)) LINKAGE void libvictim_init(void)
{
	write(1, "ctor\n", 5);
}
#endif

int libvictim_answer(void)
{
	return 42;
}
