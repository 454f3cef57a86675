/*
 * pio_bench: count (cmdline count=N, default 100000) byte writes to the
 * UART scratch register 0x3ff; every one of them exits to the VMM.
 *
 * For measuring a host, other operations can be timed the same way:
 *   port=N      OUT to another port (e.g. 0x80, or 0x21 handled by the in-kernel PIC)
 *   op=in       IN from the port instead of OUT
 *   op=mmio     32-bit write to addr=N (default 0xd0000000, unbacked: KVM_EXIT_MMIO)
 *   op=mmio_read  32-bit read from addr=N
 *   op=lapic    read of the LAPIC ID register (in-kernel LAPIC emulation)
 *   op=cpuid    CPUID leaf 0
 *   op=rdmsr    RDMSR of IA32_APIC_BASE (0x1b)
 * The VMM's wall time between "bench start" and "bench done" is the figure
 * of merit; the guest also prints its own TSC-based ns per operation.
 */
#include "rt.h"

const char guest_name[] = "pio_bench";

static int cmdline_is(const char *key, const char *value)
{
	const char *p = cmdline();
	u64 klen = strlen(key), vlen = strlen(value);
	while (*p) {
		while (*p == ' ')
			p++;
		if (!strncmp(p, key, klen) && p[klen] == '=' && !strncmp(p + klen + 1, value, vlen) &&
		    (p[klen + 1 + vlen] == ' ' || p[klen + 1 + vlen] == 0))
			return 1;
		while (*p && *p != ' ')
			p++;
	}
	return 0;
}

void guest_main(void)
{
	long count = cmdline_long("count", 100000);
	if (count < 0)
		count = 100000;
	u16 port = (u16)cmdline_long("port", 0x3ff);
	volatile u32 *addr = (volatile u32 *)(u64)cmdline_long("addr", 0xd0000000L);
	const char *op = "out";
	if (cmdline_is("op", "in"))
		op = "in";
	else if (cmdline_is("op", "mmio"))
		op = "mmio";
	else if (cmdline_is("op", "mmio_read"))
		op = "mmio_read";
	else if (cmdline_is("op", "lapic"))
		op = "lapic";
	else if (cmdline_is("op", "cpuid"))
		op = "cpuid";
	else if (cmdline_is("op", "rdmsr"))
		op = "rdmsr";
	if (strcmp(op, "out") || port != 0x3ff)
		printf("bench op %s port %#x addr %p\n", op, port, (void *)addr);
	u64 hz = tsc_hz();

	printf("bench start %ld\n", count);
	u64 t0 = rdtsc();
	switch (op[0] == 'o' ? 0 : op[0] == 'i' ? 1 : op[0] == 'l' ? 4 : op[0] == 'c' ? 5 :
		op[0] == 'r' ? 6 : op[4] == '_' ? 3 : 2) {
	case 0:
		for (long i = 0; i < count; i++)
			outb(port, (u8)i);
		break;
	case 1:
		for (long i = 0; i < count; i++)
			(void)inb(port);
		break;
	case 2:
		for (long i = 0; i < count; i++)
			*addr = (u32)i;
		break;
	case 3:
		for (long i = 0; i < count; i++)
			(void)*addr;
		break;
	case 4:
		for (long i = 0; i < count; i++)
			(void)lapic_read(LAPIC_ID);
		break;
	case 5:
		for (long i = 0; i < count; i++) {
			u32 a, b, c, d;
			cpuid(0, 0, &a, &b, &c, &d);
		}
		break;
	case 6:
		for (long i = 0; i < count; i++) {
			int ok;
			(void)rdmsr_safe(0x1b, &ok);
		}
		break;
	}
	u64 t1 = rdtsc();
	printf("bench done %ld\n", count);
	if (count)
		printf("bench guest_ns_per_op %lu (tsc %lu kHz)\n",
		       (t1 - t0) * 1000000000UL / hz / (u64)count, hz / 1000);
}
