/* Takes a SIGILL with known values in every general register and prints, from the
 * handler, what the kernel left on the stack: the handler's return address slot
 * and the words above it, the code at the return address, the ucontext's address
 * and glibc's offsets into it, and the interrupted rsp and rip as the ucontext says.
 * Build: gcc -O1 -fno-omit-frame-pointer sigframe.c -o sigframe */
#define _GNU_SOURCE
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

/* Sets rax=0x1000, rdx=0x1001, rcx=0x1002, rbx=0x1003, rsi=0x1004, rdi=0x1005,
 * rbp=0x1006 and r8-r15=0x1008-0x100f (their DWARF numbers, plus 0x1000), then
 * traps at trap_here. It never returns: the handler exits. */
__asm__(".text\n.globl trap\ntrap:\n"
	"mov $0x1000, %rax\nmov $0x1001, %rdx\nmov $0x1002, %rcx\nmov $0x1003, %rbx\n"
	"mov $0x1004, %rsi\nmov $0x1005, %rdi\nmov $0x1006, %rbp\n"
	"mov $0x1008, %r8\nmov $0x1009, %r9\nmov $0x100a, %r10\nmov $0x100b, %r11\n"
	"mov $0x100c, %r12\nmov $0x100d, %r13\nmov $0x100e, %r14\nmov $0x100f, %r15\n"
	".globl trap_here\ntrap_here:\nud2\n");
void trap(void);
extern char trap_here[];

static void on_ill(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;
	/* With a frame pointer, the return address is just above the saved rbp. */
	unsigned long *slot = (unsigned long *)__builtin_frame_address(0) + 1;
	unsigned char *code = __builtin_return_address(0);
	(void)sig, (void)si;
	printf("offsets %zu %zu %zu\n", offsetof(ucontext_t, uc_mcontext.gregs[REG_R8]),
	       offsetof(ucontext_t, uc_mcontext.gregs[REG_RIP]), offsetof(ucontext_t, uc_mcontext.gregs[REG_CSGSFS]));
	printf("slot %lx uc %lx trap %lx rsp %lx rip %lx\n", (unsigned long)slot, (unsigned long)uc,
	       (unsigned long)trap_here, (unsigned long)uc->uc_mcontext.gregs[REG_RSP],
	       (unsigned long)uc->uc_mcontext.gregs[REG_RIP]);
	printf("code");
	for (int i = -7; i < 9; i++)
		printf(" %02x", code[i]);
	printf("\nframe");
	for (int i = 0; i < 32; i++)
		printf(" %lx", slot[i]);
	printf("\n");
	fflush(stdout);
	_exit(0);
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_ill;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGILL, &sa, NULL);
	trap();
	return 1;
}
