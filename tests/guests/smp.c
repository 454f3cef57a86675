/*
 * smp: wake every AP with a broadcast INIT-SIPI-SIPI, let each print
 * "cpu <apic_id> up", wait for them and print "smp: <n> cpus". The guest
 * discovers its CPUs itself: if there is an ACPI MADT (QEMU, xvm) it waits
 * for the enabled processors listed there (at most 5 s), otherwise (cvmm) until
 * the count has been stable for settle_ms (default 1000) or 5 s.
 */
#include "rt.h"

const char guest_name[] = "smp";

static volatile int cpus_up = 1;

static int acpi_checksum_ok(const u8 *p, u32 len)
{
	u8 sum = 0;
	for (u32 i = 0; i < len; i++)
		sum += p[i];
	return sum == 0;
}

static const u8 *find_rsdp(void)
{
	if (start_info && start_info->rsdp_paddr && start_info->rsdp_paddr < 0x100000000UL)
		return (const u8 *)start_info->rsdp_paddr;
	for (u64 a = 0xe0000; a < 0x100000; a += 16)
		if (!strncmp((const char *)a, "RSD PTR ", 8) && acpi_checksum_ok((const u8 *)a, 20))
			return (const u8 *)a;
	return 0;
}

static u32 rd32(const u8 *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }

/* number of enabled processors in the MADT, or 0 if there is none */
static int madt_cpus(void)
{
	const u8 *rsdp = find_rsdp();
	if (!rsdp)
		return 0;
	u64 root = rd32(rsdp + 16);
	int entry_size = 4;
	if (rsdp[15] >= 2 && (rd32(rsdp + 24) | (u64)rd32(rsdp + 28) << 32)) {
		root = rd32(rsdp + 24) | (u64)rd32(rsdp + 28) << 32;
		entry_size = 8;
	}
	if (!root || root >= 0x100000000UL)
		return 0;
	const u8 *sdt = (const u8 *)root;
	u32 len = rd32(sdt + 4);
	if (len < 36 || len > 0x10000)
		return 0;
	for (u32 off = 36; off + entry_size <= len; off += entry_size) {
		u64 t = rd32(sdt + off) | (entry_size == 8 ? (u64)rd32(sdt + off + 4) << 32 : 0);
		if (!t || t >= 0x100000000UL)
			continue;
		const u8 *madt = (const u8 *)t;
		if (strncmp((const char *)madt, "APIC", 4))
			continue;
		u32 mlen = rd32(madt + 4);
		if (mlen < 44 || mlen > 0x10000)
			return 0;
		int n = 0;
		for (u32 p = 44; p + 2 <= mlen && madt[p + 1] >= 2; p += madt[p + 1]) {
			if (madt[p] == 0 && madt[p + 1] >= 8 && (rd32(madt + p + 4) & 1))
				n++;	/* Processor Local APIC, enabled */
			else if (madt[p] == 9 && madt[p + 1] >= 16 && (rd32(madt + p + 8) & 1))
				n++;	/* Processor Local x2APIC, enabled */
		}
		return n;
	}
	return 0;
}

void guest_ap_main(int cpu)
{
	u32 id = lapic_id();
	/* print before counting: once the BSP sees n cpus, n lines are out */
	printf("cpu %u up (index %d, pvm=%d)\n", id, cpu, pvm);
	__atomic_fetch_add(&cpus_up, 1, __ATOMIC_SEQ_CST);
}

void guest_main(void)
{
	lapic_enable();
	printf("cpu %u up (index 0, bsp)\n", lapic_id());
	u64 hz = tsc_hz();

	u64 t0 = rdtsc();
	start_aps();

	int expected = madt_cpus();
	if (expected)
		printf("smp: ACPI MADT lists %d cpus\n", expected);
	/* done when all MADT cpus are up, or without a MADT when the count has
	 * not changed for settle_ms; at most 5 s either way */
	u64 settle = hz / 1000 * (u64)cmdline_long("settle_ms", 1000);
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
		if (expected ? n >= expected : now - changed > settle)
			break;
		if ((s64)(now - deadline) > 0)
			break;
		cpu_relax();
	}
	u64 ms = (rdtsc() - t0) * 1000 / hz;
	printf("smp: %d cpus\n", cpus_up);
	printf("smp: last cpu after %lu ms of %lu ms, tsc %lu kHz\n", (changed - t0) * 1000 / hz, ms,
	       hz / 1000);
}
