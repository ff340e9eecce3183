/* Replaces slow() of slow.c: the new one also blocks reading stdin, and returns 2. */
#include <stdlib.h>
#include <unistd.h>
#include <upatch.h>
int slow_v2(void)
{
	char c;
	if (read(0, &c, 1) != 1)
		exit(0);
	return 2;
}
UPATCH_FUNC(slow, slow_v2);
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
