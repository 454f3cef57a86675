/*
 * smp: wake every AP with a broadcast INIT-SIPI-SIPI, let each print
 * "cpu <apic_id> up", wait until the number of CPUs is stable and print
 * "smp: <n> cpus". The guest discovers its CPUs itself.
 */
#include "rt.h"

const char guest_name[] = "smp";

int ap_trampoline_install(void);

static volatile int cpus_up = 1;

void guest_ap_main(int cpu)
{
	u32 id = lapic_id();
	__atomic_fetch_add(&cpus_up, 1, __ATOMIC_SEQ_CST);
	printf("cpu %u up (index %d, pvm=%d)\n", id, cpu, pvm);
}

#define ICR_ALL_BUT_SELF (3u << 18)
#define ICR_LEVEL_ASSERT (1u << 14)
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)
#define ICR_BUSY (1u << 12)

static void icr_send(u32 lo)
{
	lapic_write(LAPIC_ICR_HI, 0);
	lapic_write(LAPIC_ICR_LO, lo);
	for (int i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
		cpu_relax();
}

void guest_main(void)
{
	lapic_enable();
	printf("cpu %u up (index 0, bsp)\n", lapic_id());
	u64 hz = tsc_hz();
	int vector = ap_trampoline_install();

	u64 t0 = rdtsc();
	icr_send(ICR_ALL_BUT_SELF | ICR_LEVEL_ASSERT | ICR_INIT);
	delay_us(10000);
	icr_send(ICR_ALL_BUT_SELF | ICR_STARTUP | (u32)vector);
	delay_us(200);
	icr_send(ICR_ALL_BUT_SELF | ICR_STARTUP | (u32)vector);

	/* done when the count has not changed for settle_ms (default 300), at most 5 s */
	u64 settle = hz / 1000 * (u64)cmdline_long("settle_ms", 300);
	u64 deadline = t0 + hz * 5;
	int last = cpus_up;
	u64 changed = rdtsc();
	for (;;) {
		u64 now = rdtsc();
		int n = cpus_up;
		if (n != last) {
			last = n;
			changed = now;
		}
		if (now - changed > settle || (s64)(now - deadline) > 0)
			break;
		cpu_relax();
	}
	u64 ms = (rdtsc() - t0) * 1000 / hz;
	printf("smp: %d cpus\n", cpus_up);
	printf("smp: last cpu after %lu ms of %lu ms, tsc %lu kHz\n", (changed - t0) * 1000 / hz, ms,
	       hz / 1000);
}
