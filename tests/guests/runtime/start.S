/*
 * Boot code shared by every xvm test guest.
 *
 * Entry: PVH (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected mode, paging off,
 * flat segments, %ebx = physical address of struct hvm_start_info.
 * We load a GDT, switch to long mode with identity-mapped 4-level paging
 * (first 4 GiB, 2 MiB pages, U/S=1 at every level, PML4 slot 256 empty: the
 * PVM contract) and call rt_start_bsp(start_info) in C.
 *
 * On PVM hosts every instruction is emulated (microseconds each) until the
 * guest registers its virtual-IF page, in long mode as well; hence static page
 * tables (the 32-bit part is a dozen instructions) and the VIF registration
 * as the first thing rt_start_bsp/rt_start_ap do.
 *
 * Application processors start in real mode at AP_TRAMPOLINE (copied there
 * by the BSP), switch to protected mode and join the same 32-bit path.
 */
#include "layout.h"

#define PTE_P   0x001
#define PTE_RW  0x002
#define PTE_US  0x004
#define PTE_PS  0x080
#define PTE_TABLE (PTE_P | PTE_RW | PTE_US)
#define PTE_LARGE (PTE_P | PTE_RW | PTE_US | PTE_PS)

#define MSR_EFER 0xc0000080

/* -DBOOT_TRACE: mark boot stages on port 0xe9 (cvmm -v prints when they happen) */
#ifdef BOOT_TRACE
#define TRACE(n) movb $n, %al; outb %al, $0xe9
#else
#define TRACE(n)
#endif
#define EFER_LME 0x100

	.section .note.GNU-stack, "", @progbits

/* ---------------------------------------------------------------- notes */
	.pushsection .note.Xen, "a", @note
	.balign 4
	.long 4			/* namesz: "Xen\0" */
	.long 4			/* descsz */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.long pvh_start32
	.balign 4
	.popsection

/* ----------------------------------------------------------- 32-bit entry */
	.section .text.boot, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	movl %ebx, %esi			/* start_info, kept in %esi */
	TRACE(1)
	lgdt gdt_ptr
	movl $GDT_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	ljmp $GDT_CODE32, $1f		/* reload CS from our own GDT */
1:	movl $1, %edi			/* 1 = bootstrap processor */
	/* fall through */

/* %edi = 1 on the BSP, 0 on an AP; %esi = start_info on the BSP */
enter_long_mode:
	movl %cr4, %eax
	orl $0x20, %eax			/* CR4.PAE */
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	orl $0x80000001, %eax		/* CR0.PG | CR0.PE */
	andl $0x9fffffff, %eax		/* clear CD, NW */
	movl %eax, %cr0
	ljmp $GDT_CODE64, $start64

	.globl ap_start32
ap_start32:
	movl $GDT_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %edi, %edi
	xorl %esi, %esi
	jmp enter_long_mode

/* ----------------------------------------------------------- 64-bit entry */
	.code64
start64:
	movl $GDT_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	TRACE(2)
	testl %edi, %edi
	jz ap_start64

	/*
	 * BSP. On PVM hosts everything up to the registration of the virtual-IF
	 * page is emulated, so rt_start_bsp registers it first and only then
	 * zeroes .bss; the stack lives in .bss.boot, which is never zeroed by
	 * the guest (the loader zero-fills it as part of the PT_LOAD memsz).
	 */
	movq $cpu_stacks + STACK_SIZE, %rsp
	xorl %ebp, %ebp
	movl %esi, %edi
	call rt_start_bsp
	jmp halt_forever

ap_start64:
	/* claim a cpu index: 1, 2, ... */
	movl $1, %eax
	lock xaddl %eax, ap_next_index
	cmpl $MAX_CPUS, %eax
	jae halt_forever
	movl %eax, %edi
	incl %eax
	shlq $STACK_SHIFT, %rax
	addq $cpu_stacks, %rax
	movq %rax, %rsp
	xorl %ebp, %ebp
	call rt_start_ap
	/* fall through */
	.globl halt_forever
halt_forever:
	hlt
	jmp halt_forever

/* ------------------------------------------------------------ AP trampoline
 * Copied to AP_TRAMPOLINE (below 1 MiB, 4 KiB aligned); the SIPI vector is
 * AP_TRAMPOLINE >> 12, so an AP starts here with CS = AP_TRAMPOLINE >> 4, IP = 0.
 */
	.code16
	.globl ap_trampoline_start, ap_trampoline_end
ap_trampoline_start:
	cli
	cld
	movw %cs, %ax
	movw %ax, %ds
	lgdtl (tramp_gdt_ptr - ap_trampoline_start)
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $GDT_CODE32, $ap_start32
	.balign 8
tramp_gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt
ap_trampoline_end:

/* ------------------------------------------------------------ rdmsr probe
 * u64 rdmsr_safe(u32 msr, int *ok): the #GP handler recognises a fault at
 * rdmsr_probe_insn and resumes at rdmsr_probe_fail.
 */
	.code64
	.globl rdmsr_safe, rdmsr_probe_insn, rdmsr_probe_fail
rdmsr_safe:
	movl %edi, %ecx
rdmsr_probe_insn:
	rdmsr
	shlq $32, %rdx
	orq %rdx, %rax
	movl $1, (%rsi)
	ret
rdmsr_probe_fail:
	movl $0, (%rsi)
	xorl %eax, %eax
	ret

/* -------------------------------------------------------- interrupt stubs */
	.altmacro
	.macro ISR vec
	.balign 16
	.if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	.else
	pushq $0
	.endif
	pushq $\vec
	jmp isr_common
	.endm

	.balign 16
	.globl isr_table_start
isr_table_start:
	.set vec, 0
	.rept 256
	ISR %vec
	.set vec, vec + 1
	.endr

isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rdi
	movq %rsp, %rbx
	andq $-16, %rsp
	cld
	call trap_dispatch
	movq %rbx, %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq

	/* table of stub addresses, for the C code filling the IDT */
	.section .rodata
	.balign 8
	.globl isr_stubs
isr_stubs:
	.set vec, 0
	.rept 256
	.quad isr_table_start + vec * 16
	.set vec, vec + 1
	.endr

/* ------------------------------------------------------------------ data */
	.section .data
	.balign 16
gdt:
	.quad 0
	.quad 0x00af9a000000ffff	/* 0x08: 64-bit code */
	.quad 0x00cf92000000ffff	/* 0x10: data */
	.quad 0x00cf9a000000ffff	/* 0x18: 32-bit code */
gdt_end:
	.balign 8
	.word 0
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt

	.globl ap_next_index
	.balign 4
ap_next_index:
	.long 1

	/* identity map of the first 4 GiB with 2 MiB pages, all U/S=1 */
	.section .data.pagetables, "aw"
	.balign 4096
	.globl pml4
pml4:
	.quad pdpt + PTE_TABLE
	.fill 511, 8, 0
pdpt:
	.quad pd + 0 * 4096 + PTE_TABLE
	.quad pd + 1 * 4096 + PTE_TABLE
	.quad pd + 2 * 4096 + PTE_TABLE
	.quad pd + 3 * 4096 + PTE_TABLE
	.fill 508, 8, 0
pd:
	.set i, 0
	.rept 2048
	.quad (i << 21) + PTE_LARGE
	.set i, i + 1
	.endr
