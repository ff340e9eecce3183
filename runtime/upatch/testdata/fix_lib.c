/* Replaces lib_value() in libshared.so; built -fPIC like the library. */
#include <upatch.h>
int lib_value_v2(void) { return 200; }
UPATCH_FUNC(lib_value, lib_value_v2);
#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
