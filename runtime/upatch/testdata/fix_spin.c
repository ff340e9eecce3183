/* Replaces spin() of sighold.c: returns 2 without touching the page. */
#include <upatch.h>
int spin_v2(int callee) { (void)callee; return 2; }
UPATCH_FUNC(spin, spin_v2);
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
