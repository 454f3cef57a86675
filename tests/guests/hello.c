/*
 * hello: greet, report PVM detection and the command line, power off.
 * fault=1|2|3|4 (#UD, #PF, #DE, #GP) raises that exception instead of powering off, to test
 * the exception report ("EXCEPTION #UD vector=6 ... rip=...").
 */
#include "rt.h"

const char guest_name[] = "hello";

void guest_main(void)
{
	printf("Hello from xvm guest\n");
	printf("pvm=%d\n", pvm);
	printf("cmdline: %s\n", cmdline());

	switch (cmdline_long("fault", 0)) {
	case 0:
		return;
	case 1:	/* fault=1: #UD */
		__asm__ volatile("ud2");
		break;
	case 2:	/* fault=2: #PF above the 4 GiB identity map */
		(void)*(volatile u64 *)0x123456789000UL;
		break;
	case 3:	/* fault=3: #DE */
		__asm__ volatile("xor %%ecx, %%ecx; mov $100, %%eax; xor %%edx, %%edx; div %%ecx"
				 ::: "rax", "rcx", "rdx", "cc");
		break;
	case 4:	/* fault=4: #GP (non-canonical address) */
		(void)*(volatile u64 *)0x8000000000000000UL;
		break;
	}
}
