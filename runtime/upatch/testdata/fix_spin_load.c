/* Replaces spin() of sighold.c with code that still loads through the target's
 * load(), so a signal can interrupt a thread below the new spin(). */
#include <upatch.h>
extern int load(void);
int spin_v2(int callee) { return callee ? load() + 2 : 2; }
UPATCH_FUNC(spin, spin_v2);
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
