/*
 * irq: LAPIC timer and UART receive interrupts.
 *
 * Programs the LAPIC timer periodic (cmdline tick_us=N, default 10000), prints
 * "tick <n>" for the first few ticks (ticks=N, default 5), then enables the
 * 8250 receive interrupt (IER bit 0, MCR OUT2) routed through IOAPIC pin 4 and
 * echoes each received line as "echo: <line>". The line "quit" powers off.
 *
 * Probes of the host's interrupt model (PVM facts in README.md):
 *   debug=1        LAPIC/VIF state while interrupts are disabled, then enabled
 *   poll=1         wait for ticks by spinning with interrupts enabled, not hlt
 *   iretq_test=1   (PVM) does iretq alone restore the virtual IF?
 *   ifonly_test=1  (PVM) latency of a pending interrupt after if_=1 with/without out 0x80
 */
#include "rt.h"

const char guest_name[] = "irq";

#define TIMER_VECTOR 0x40
#define UART_VECTOR 0x41
#define UART_IRQ_PIN 4

extern volatile u64 irq_count, irq_entry_if_clear;
extern int vif_restore_in_handler;

static volatile u64 ticks, uart_irqs;
static volatile u64 first_cs, first_rflags;
static char rx_ring[256];
static volatile u32 rx_head, rx_tail;

static void timer_handler(struct trap_frame *f)
{
	if (!ticks) {
		first_cs = f->cs;
		first_rflags = f->rflags;
	}
	ticks++;
	lapic_eoi();
}

static void uart_collect(void)
{
	while (inb(COM1 + 5) & 0x01) {
		char c = (char)inb(COM1);
		if (rx_head - rx_tail < sizeof(rx_ring))
			rx_ring[rx_head++ % sizeof(rx_ring)] = c;
	}
}

static void uart_handler(struct trap_frame *f)
{
	(void)f;
	uart_irqs++;
	uart_collect();
	lapic_eoi();
}

void guest_main(void)
{
	lapic_enable();
	irq_register(TIMER_VECTOR, timer_handler);
	irq_register(UART_VECTOR, uart_handler);

	u64 hz = tsc_hz();
	long period = cmdline_long("tick_us", 10000);
	long nticks = cmdline_long("ticks", 5);
	lapic_timer_periodic(TIMER_VECTOR, (u32)period);
	u64 t0 = rdtsc();
	u64 seen = 0;
	int poll = (int)cmdline_long("poll", 0);
	if (cmdline_long("debug", 0)) {
		struct pvm_vif *v = this_vif();
		for (int i = 0; i < 5; i++) {
			delay_us(20000);
			printf("debug: svr=%#x cur=%u lvt=%#x isr=%#x irr=%#x if_=%u pending=%u ticks=%lu\n",
			       lapic_read(LAPIC_SVR), lapic_read(LAPIC_TIMER_CUR), lapic_read(LAPIC_LVT_TIMER),
			       lapic_read(0x120), lapic_read(0x220), v->if_, v->pending, ticks);
		}
		int ok;
		u64 reg = rdmsr_safe(MSR_PVM_VIF, &ok);
		u64 fl;
		__asm__ volatile("pushfq; popq %0" : "=r"(fl));
		printf("debug: vif=%p msr=%#lx ok=%d rflags=%#lx\n", v, reg, ok, fl);
		irq_enable();
		delay_us(50000);
		printf("debug: after enable if_=%u pending=%u ticks=%lu\n", v->if_, v->pending, ticks);
		if (cmdline_long("debug", 0) > 1) {
			__asm__ volatile("sti" ::: "memory");
			delay_us(50000);
			__asm__ volatile("pushfq; popq %0" : "=r"(fl));
			printf("debug: after sti if_=%u pending=%u ticks=%lu rflags=%#lx\n", v->if_, v->pending, ticks, fl);
		}
		irq_disable();
	}
	if (pvm && cmdline_long("ifonly_test", 0)) {
		/* with an interrupt pending, does raising if_ without the port 0x80 doorbell deliver it? */
		struct pvm_vif *v = this_vif();
		irq_disable();
		while (!v->pending)
			cpu_relax();
		u64 before = ticks;
		u64 t = rdtsc();
		v->if_ = 1;
		while (ticks == before && rdtsc() - t < hz)
			cpu_relax();
		u64 late_us = (rdtsc() - t) * 1000000 / hz;
		irq_disable();
		while (!v->pending)
			cpu_relax();
		before = ticks;
		t = rdtsc();
		irq_enable();	/* if_ = 1 and the port 0x80 doorbell */
		while (ticks == before && rdtsc() - t < hz)
			cpu_relax();
		u64 doorbell_us = (rdtsc() - t) * 1000000 / hz;
		irq_disable();
		printf("ifonly_test: pending interrupt delivered %lu us after if_=1 alone, "
		       "%lu us after if_=1 + out 0x80\n", late_us, doorbell_us);
	}
	if (pvm && cmdline_long("iretq_test", 0)) {
		/* does iretq alone restore the virtual IF from the frame's RFLAGS.IF? */
		struct pvm_vif *v = this_vif();
		vif_restore_in_handler = 0;
		u64 before = ticks;
		irq_enable();
		while (ticks == before)
			cpu_relax();
		u8 after = v->if_;
		vif_restore_in_handler = 1;
		irq_disable();
		printf("iretq_test: virtual IF after iretq = %u\n", after);
	}
	while (seen < (u64)nticks) {
		if (poll) {
			irq_enable();
			cpu_relax();
		} else {
			wait_for_interrupt();
		}
		irq_disable();
		if (ticks != seen) {
			seen = ticks;
			printf("tick %lu\n", seen);
		}
	}
	u64 us = (rdtsc() - t0) * 1000000 / hz;
	printf("irq: %lu ticks in %lu us (period %ld us); frame cs=%#lx rflags=%#lx; "
	       "virtual IF clear at entry %lu of %lu\n",
	       seen, us, period, first_cs, first_rflags, irq_entry_if_clear, irq_count);

	/* 8250 receive interrupt -> IOAPIC pin 4 -> UART_VECTOR on this cpu */
	ioapic_route(UART_IRQ_PIN, UART_VECTOR, lapic_id());
	outb(COM1 + 4, 0x0b);	/* DTR | RTS | OUT2 */
	outb(COM1 + 1, 0x01);	/* IER: received data available */
	/* input that arrived before the interrupt was enabled is kept, not dropped */
	uart_collect();
	printf("irq: echo ready\n");

	char line[128];
	u32 len = 0;
	for (;;) {
		wait_for_interrupt();
		irq_disable();
		while (rx_tail != rx_head) {
			char c = rx_ring[rx_tail++ % sizeof(rx_ring)];
			if (c != '\r' && c != '\n') {
				if (len + 1 < sizeof(line))
					line[len++] = c;
				continue;
			}
			if (!len)
				continue;
			line[len] = 0;
			len = 0;
			if (!strcmp(line, "quit")) {
				printf("irq: quit after %lu uart interrupts, %lu ticks\n", uart_irqs, ticks);
				return;
			}
			printf("echo: %s\n", line);
		}
	}
}
