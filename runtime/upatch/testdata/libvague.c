/* A shared library whose exported function is also defined by the program using it, as
 * a C++ program holds its own copy of a library's inline function.
 * Build: gcc -O2 -g -fPIC -shared libvague.c -o libvague.so */
__attribute__((noipa)) int lib_value(void) { return 100; }
/* Called by name through the PLT: it binds to the program's lib_value. */
int lib_report(void) { return lib_value() + 1; }
