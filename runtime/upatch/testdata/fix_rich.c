/* New code with a new static helper, a libc call through the PLT, a new string
 * literal, a global and a function-static of the target, and a TLS variable of the
 * executable. */
#include <stdio.h>
#include <string.h>
#include <upatch.h>
extern int counter;
extern int calls_0 __asm__("calls.0"); /* bump()'s function-static */
extern __thread int tls_value;

static __attribute__((noinline)) int tenfold(int x) { return 10 * x; }

int greet_rich(void)
{
	char buf[32];
	counter += 2;
	snprintf(buf, sizeof buf, "%s-%d", "rich", calls_0 > 0);
	return tenfold((int)strlen(buf)); /* "rich-1" -> 60 */
}

int bump_v2(void)
{
	calls_0 += 1000;
	return calls_0;
}

int tls_read_v2(void) { return tls_value + 1000; }

int work_v2(int x) { return x + 100; }

UPATCH_FUNC(greet, greet_rich);
UPATCH_FUNC(bump, bump_v2);
UPATCH_FUNC(tls_read, tls_read_v2);
UPATCH_FUNC(work, work_v2);
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
