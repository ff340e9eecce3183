/* A shared library for the engine tests. Build: gcc -O2 -g -fPIC -shared libshared.c -o libshared.so */
__attribute__((noipa)) int lib_value(void) { return 100; }
