/* Replaces the ten functions of bench_target.c (each adds 100 more). */
#include <upatch.h>
#define G(n) int g##n(int x) { return x + n + 100; } UPATCH_FUNC(f##n, g##n);
G(0) G(1) G(2) G(3) G(4) G(5) G(6) G(7) G(8) G(9)
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
