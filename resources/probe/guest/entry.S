/*
 * PVH entry of the probe guest.
 *
 * A PVH loader (ferrite, QEMU, Firecracker, Cloud Hypervisor) finds the
 * XEN_ELFNOTE_PHYS32_ENTRY note below and starts the vCPU there in 32-bit
 * protected mode, paging off, flat segments, with %ebx holding the physical
 * address of struct hvm_start_info. We clear .bss, identity-map the first
 * 4 GiB with 2 MiB pages (virtio-mmio windows live at 0xd0000000 and above),
 * switch to long mode and call probe_main(start_info) in C. Interrupts stay
 * off for the guest's whole life: the probe polls.
 */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define CR0_PE 0x1
#define CR0_PG 0x80000000
#define CR4_PAE 0x20
#define PTE_P_RW 0x3
#define PDE_P_RW_PS 0x83

	/* The note's p_align must stay 4: QEMU aligns the name by p_align. */
	.section .note.Xen, "a"
	.balign 4
	.long 4                 /* namesz: "Xen\0" */
	.long 4                 /* descsz: a 32-bit physical address */
	.long XEN_ELFNOTE_PHYS32_ENTRY
	.asciz "Xen"
	.long pvh_start

	.section .text32, "ax"
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	movl %ebx, %esi         /* keep start_info across the setup */

	/* .bss may hold leftovers (a loader need not clear it): zero it. */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl

	/* PML4[0] -> PDPT; PDPT[0..3] -> four page directories. */
	movl $pdpt, %eax
	orl $PTE_P_RW, %eax
	movl %eax, pml4
	movl $pd, %eax
	orl $PTE_P_RW, %eax
	movl %eax, pdpt
	addl $4096, %eax
	movl %eax, pdpt + 8
	addl $4096, %eax
	movl %eax, pdpt + 16
	addl $4096, %eax
	movl %eax, pdpt + 24

	/* 2048 PDEs of 2 MiB each: 0 .. 4 GiB identity. */
	movl $pd, %edi
	movl $PDE_P_RW_PS, %eax
	movl $2048, %ecx
1:	movl %eax, (%edi)
	addl $0x200000, %eax
	addl $8, %edi
	decl %ecx
	jnz 1b

	lgdt gdt_desc

	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	orl $(CR0_PE | CR0_PG), %eax
	movl %eax, %cr0

	ljmp $0x08, $long_entry

	.text
	.code64
long_entry:
	movl $0x10, %eax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw %ax, %fs
	movw %ax, %gs
	movq $stack_top, %rsp
	movl %esi, %edi         /* probe_main(start_info paddr) */
	call probe_main
2:	cli
	hlt
	jmp 2b

	.section .rodata
	.balign 8
gdt:
	.quad 0                         /* null */
	.quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
	.quad 0x00cf92000000ffff        /* 0x10: flat data */
gdt_end:
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

	.section .bss
	.balign 4096
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4 * 4096
	.balign 16
stack:	.skip 16384
stack_top:

	.section .note.GNU-stack, "", @progbits
