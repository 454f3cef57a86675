/*
 * busy: increment a 64-bit counter in memory forever and print it every
 * 2^shift iterations (cmdline shift=N, default 28). Pause/resume must keep it.
 */
#include "rt.h"

const char guest_name[] = "busy";

volatile u64 busy_counter;

void guest_main(void)
{
	long shift = cmdline_long("shift", 28);
	if (shift < 8 || shift > 40)
		shift = 28;
	u64 mask = (1UL << shift) - 1;
	printf("busy: printing every 2^%ld iterations\n", shift);
	for (;;) {
		u64 n = busy_counter + 1;
		busy_counter = n;
		if ((n & mask) == 0)
			printf("count %lu\n", n);
	}
}
