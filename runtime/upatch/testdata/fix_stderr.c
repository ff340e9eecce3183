/* Replaces greet() with code that reads glibc's stderr, a variable of another library
 * that a PIE program which never used it has no copy of. */
#include <stdio.h>
#include <upatch.h>
int greet_stderr(void) { return fileno(stderr) + 10; }
UPATCH_FUNC(greet, greet_stderr);
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
