/* Refers to a symbol no target has: must be refused with the process untouched. */
#include <upatch.h>
extern int no_such_symbol_anywhere;
int greet_bad(void) { return no_such_symbol_anywhere; }
UPATCH_FUNC(greet, greet_bad);
