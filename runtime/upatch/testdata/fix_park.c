/* Replaces park(), which a test keeps busy in a thread. */
#include <upatch.h>
int park_v2(void) { return 'p'; }
UPATCH_FUNC(park, park_v2);
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
