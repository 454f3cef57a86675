/*
 * pio_bench: count (cmdline count=N, default 100000) byte writes to the
 * UART scratch register 0x3ff; every one of them exits to the VMM.
 * port=N selects another port (e.g. port=0x80 to see how a host treats it).
 */
#include "rt.h"

const char guest_name[] = "pio_bench";

void guest_main(void)
{
	long count = cmdline_long("count", 100000);
	if (count < 0)
		count = 100000;
	u16 port = (u16)cmdline_long("port", 0x3ff);
	if (port != 0x3ff)
		printf("bench port %#x\n", port);
	printf("bench start %ld\n", count);
	u64 t0 = rdtsc();
	for (long i = 0; i < count; i++)
		outb(port, (u8)i);
	u64 t1 = rdtsc();
	printf("bench done %ld\n", count);
	if (count)
		printf("bench tsc_cycles_per_exit %lu\n", (t1 - t0) / (u64)count);
}
