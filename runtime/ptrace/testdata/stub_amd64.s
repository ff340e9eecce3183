# The code runtime/ptrace injects into a stopped thread (stubCode in
# stub_amd64.go is this file assembled: as, then objcopy -O binary -j .text).
# The tracer writes a frame below the thread's stack pointer, sets rip to
# `stub` and rsp to the frame, and lets the thread run. The stub runs the ops,
# sets the done flag, sends itself the notification signal if there is one (a
# signal the process does not catch: while traced it stops the thread for the
# tracer, untraced it is discarded), then waits on the done flag (futex,
# bounded by the timeout in the frame; the tracer takes the thread back at the
# notification or during this wait). Last it restores the signal mask (the
# tracer blocks the other signals while the stub runs), every register and
# rflags from the frame, and returns to the saved rip with `ret 256`, which
# also puts rsp back: the frame ends 256 bytes below the thread's stack
# pointer, past its 128-byte red zone.
#
# Frame (F = rsp on entry):
#   F+0    number of ops on entry; then the descriptor an op saved (-1)
#   F+8    done flag
#   F+16   struct timespec of the final wait
#   F+32   offset from F of the saved rflags; the saved rip follows it
#   F+40   saved rax rbx rcx rdx rsi rdi rbp r8 r9 r10 r11 r12 r13 r14 r15
#   F+160  failed flag (a critical op returned an error)
#   F+168  the thread's signal mask, restored before returning
#   F+176  notification signal: 0 none, -1 chosen by the stub (SIGURG, else
#          SIGWINCH, whichever has no handler; the choice is written back),
#          then the tgid (F+184) and tid (F+192)
#   F+200  struct sigaction read back by rt_sigaction (32 bytes)
#   F+232  ops, 64 bytes each: word, a0..a5, result
# Op word: bits 0-31 syscall number; 32 first argument = saved descriptor;
# 33 call the function a0 with a1..a5; 34 table write: pwrite64 each of a2
# 64-byte entries at a1 (address +0, length u32 +24, bytes +32); 35 save the
# result as descriptor; 36 critical; 37 skip (result -ECANCELED) once failed.
	.intel_syntax noprefix
	.text
	.globl stub
stub:
	mov rbx, rsp
	lea r12, [rbx+232]
	mov r13, [rbx]
	mov qword ptr [rbx], -1
	mov qword ptr [rbx+160], 0
1:	test r13, r13
	jz 9f
	mov rax, [r12]
	bt rax, 37
	jnc 0f
	cmp qword ptr [rbx+160], 0
	je 0f
	mov rax, -125
	jmp 3f
0:	mov rdi, [r12+8]
	mov rsi, [r12+16]
	mov rdx, [r12+24]
	mov r10, [r12+32]
	mov r8, [r12+40]
	mov r9, [r12+48]
	bt rax, 32
	jnc 2f
	mov rdi, [rbx]
2:	bt rax, 33
	jc 5f
	bt rax, 34
	jc 6f
	mov eax, eax
	syscall
3:	mov [r12+56], rax
	mov rcx, [r12]
	test rax, rax
	jns 4f
	bt rcx, 36
	jnc 4f
	mov qword ptr [rbx+160], 1
4:	bt rcx, 35
	jnc 10f
	mov [rbx], rax
10:	add r12, 64
	dec r13
	jmp 1b
5:	mov rax, rdi
	mov rdi, rsi
	mov rsi, rdx
	mov rdx, r10
	mov rcx, r8
	mov r8, r9
	mov rbp, rsp
	and rsp, -16
	call rax
	mov rsp, rbp
	jmp 3b
6:	mov r14, rdi
	mov rbp, rsi
	mov r15, rdx
7:	test r15, r15
	jz 8f
	mov eax, 18
	mov rdi, r14
	lea rsi, [rbp+32]
	mov edx, [rbp+24]
	mov r10, [rbp]
	syscall
	test rax, rax
	js 3b
	add rbp, 64
	dec r15
	jmp 7b
8:	xor eax, eax
	jmp 3b
9:	mov rdx, [rbx+176]
	cmp rdx, -1
	jne 12f
	mov r12d, 23
13:	mov eax, 13
	mov edi, r12d
	xor esi, esi
	lea rdx, [rbx+200]
	mov r10d, 8
	syscall
	test rax, rax
	jnz 14f
	cmp qword ptr [rbx+200], 1
	jbe 15f
14:	cmp r12d, 28
	je 16f
	mov r12d, 28
	jmp 13b
16:	xor r12d, r12d
15:	mov [rbx+176], r12
	mov rdx, r12
12:	mov qword ptr [rbx+8], 1
	test rdx, rdx
	jz 11f
	mov eax, 234
	mov rdi, [rbx+184]
	mov rsi, [rbx+192]
	syscall
	.globl notified
notified:
11:	mov eax, 202
	lea rdi, [rbx+8]
	mov esi, 128
	mov edx, 1
	lea r10, [rbx+16]
	xor r8d, r8d
	xor r9d, r9d
	syscall
	.globl parked
parked:
	mov eax, 14
	mov edi, 2
	lea rsi, [rbx+168]
	xor edx, edx
	mov r10d, 8
	syscall
	mov rax, [rbx+32]
	lea rsp, [rbx+rax]
	mov rax, [rbx+40]
	mov rcx, [rbx+56]
	mov rdx, [rbx+64]
	mov rsi, [rbx+72]
	mov rdi, [rbx+80]
	mov rbp, [rbx+88]
	mov r8, [rbx+96]
	mov r9, [rbx+104]
	mov r10, [rbx+112]
	mov r11, [rbx+120]
	mov r12, [rbx+128]
	mov r13, [rbx+136]
	mov r14, [rbx+144]
	mov r15, [rbx+152]
	mov rbx, [rbx+48]
	popfq
	ret 256
	.globl stub_end
stub_end:
	.asciz "/proc/self/mem"
