/* Replaces greet(): returns 2. Build: gcc -c -O2 -ffunction-sections -fdata-sections -I include fix_greet.c */
#include <upatch.h>
int greet_v2(void) { return 2; }
UPATCH_FUNC(greet, greet_v2);
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
