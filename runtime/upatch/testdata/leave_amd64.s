/* The code a busy frame returns through while the engine waits for it to leave
 * (runtime/upatch/wait.go). The engine writes the frame's return-address slot
 * with the address of an entry; the entry pushes the real return address and
 * comes here. This saves what the system calls clobber, sends the thread the
 * notification signal (read from offset 0x40), restores and returns where the
 * frame would have returned. Traced, the signal stops the thread for the
 * engine; untraced (the engine died), it is one the process ignores, and the
 * thread goes on unharmed. No arithmetic: the flags are left as they were.
 * Build: as leave_amd64.s -o leave.o && objcopy -O binary -j .text leave.o leave.bin */
	.text
common:
	push %rax
	push %rcx
	push %r11
	push %rdi
	push %rsi
	mov $186, %eax		/* gettid */
	syscall
	mov %eax, %edi
	mov sig(%rip), %esi
	mov $200, %eax		/* tkill */
	syscall
notified:
	pop %rsi
	pop %rdi
	pop %r11
	pop %rcx
	pop %rax
	ret
	.org 0x40, 0x90
sig:
	.long 0
