/* Replaces hold() of stale.c, which a thread never leaves. */
#include <upatch.h>
int hold_v2(void) { return 7; }
UPATCH_FUNC(hold, hold_v2);
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
