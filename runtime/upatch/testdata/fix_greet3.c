/* A second patch of greet(), stacked on fix_greet.c: returns 3. */
#include <upatch.h>
int greet_v3(void) { return 3; }
UPATCH_FUNC(greet, greet_v3);
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
