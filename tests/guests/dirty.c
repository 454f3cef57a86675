/*
 * dirty: dirty memory at full speed and check it.  Pass g writes (g << 32 | page) into
 * the first word of every 4 KiB page of mib= MiB (default 32) starting at 16 MiB, after
 * checking the page still holds pass g-1's value: a page lost or stale after a live
 * migration prints "dirty: FAIL".  Prints "dirty: pass <g>" every 2^shift passes
 * (default 4).  The guest needs 16 + mib MiB of RAM.
 */
#include "rt.h"

const char guest_name[] = "dirty";

#define BASE (16UL << 20)

void guest_main(void)
{
	long mib = cmdline_long("mib", 32);
	long shift = cmdline_long("shift", 4);
	u64 pages = (u64)mib << 8;
	volatile u64 *mem = (volatile u64 *)BASE;
	u64 mask = (1UL << shift) - 1;
	printf("dirty: %ld MiB from 16 MiB\n", mib);
	for (u64 gen = 1;; gen++) {
		for (u64 p = 0; p < pages; p++) {
			volatile u64 *word = mem + p * 512;
			u64 want = gen == 1 ? 0 : ((gen - 1) << 32 | p);
			u64 have = *word;
			if (have != want) {
				printf("dirty: FAIL page %lu pass %lu has %lx want %lx\n", p, gen, have, want);
				halt();
			}
			*word = gen << 32 | p;
		}
		if ((gen & mask) == 0)
			printf("dirty: pass %lu\n", gen);
	}
}
