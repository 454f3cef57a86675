/*
 * pio_bench: count (cmdline count=N, default 100000) byte writes to the
 * UART scratch register 0x3ff; every one of them exits to the VMM.
 */
#include "rt.h"

const char guest_name[] = "pio_bench";

void guest_main(void)
{
	long count = cmdline_long("count", 100000);
	if (count < 0)
		count = 100000;
	printf("bench start %ld\n", count);
	u64 t0 = rdtsc();
	for (long i = 0; i < count; i++)
		outb(0x3ff, (u8)i);
	u64 t1 = rdtsc();
	printf("bench done %ld\n", count);
	if (count)
		printf("bench tsc_cycles_per_exit %lu\n", (t1 - t0) / (u64)count);
}
