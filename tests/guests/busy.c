/*
 * busy: increment a 64-bit counter in memory forever and print it every
 * 2^shift iterations (cmdline shift=N, default 28). Pause/resume must keep it.
 * With smp=1 every other vCPU is started too and spins on a counter of its
 * own (not printed), so a domain of N vCPUs wants N CPUs.
 */
#include "rt.h"

const char guest_name[] = "busy";

volatile u64 busy_counter;
volatile u64 ap_counters[64];

void guest_ap_main(int cpu)
{
	volatile u64 *counter = &ap_counters[cpu & 63];
	for (;;)
		*counter = *counter + 1;
}

void guest_main(void)
{
	long shift = cmdline_long("shift", 28);
	if (shift < 8 || shift > 40)
		shift = 28;
	u64 mask = (1UL << shift) - 1;
	if (cmdline_long("smp", 0)) {
		lapic_enable();
		start_aps();
	}
	printf("busy: printing every 2^%ld iterations\n", shift);
	for (;;) {
		u64 n = busy_counter + 1;
		busy_counter = n;
		if ((n & mask) == 0)
			printf("count %lu\n", n);
	}
}
