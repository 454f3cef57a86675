/* Core of the test-guest runtime: boot, traps, PVM interrupts, LAPIC, power. */
#include "rt.h"

int pvm;
const struct hvm_start_info *start_info;

#define BOOT_BSS __attribute__((section(".bss.boot")))

/* Not zeroed by the guest (see start.S): in use before .bss is cleared. */
char cpu_stacks[MAX_CPUS * STACK_SIZE] __attribute__((aligned(4096))) BOOT_BSS;

/*
 * One virtual-IF area per cpu. PVM ignores the low 12 bits of the address
 * written to MSR_PVM_VIF (it reads back page-aligned), so each area must sit
 * at the start of its own page.
 */
static struct {
	struct pvm_vif vif;
	u8 pad[4096 - sizeof(struct pvm_vif)];
} vif_area[MAX_CPUS] __attribute__((aligned(4096))) BOOT_BSS;
static struct idt_entry_early { u64 lo, hi; } early_idt[14] __attribute__((aligned(16))) BOOT_BSS;
extern char __bss_start[], __bss_end[];

struct idt_entry {
	u16 off0, sel;
	u8 ist, type;
	u16 off1;
	u32 off2, zero;
};
static struct idt_entry idt[256] __attribute__((aligned(16)));
static irq_handler_t irq_handlers[256];
extern const u64 isr_stubs[256];
extern const char rdmsr_probe_insn[], rdmsr_probe_fail[];
extern char ap_trampoline_start[], ap_trampoline_end[];

/* seen by tests/diagnostics: the virtual IF when an interrupt arrived */
volatile u64 irq_count, irq_entry_if_clear;
/* PVM: re-raise the virtual IF after a handler ourselves (1) or rely on iretq (0) */
int vif_restore_in_handler = 1;

int this_cpu(void)
{
	u64 sp;
	__asm__ volatile("mov %%rsp, %0" : "=r"(sp));
	return (int)((sp - (u64)cpu_stacks) >> STACK_SHIFT);
}

struct pvm_vif *this_vif(void)
{
	return &vif_area[this_cpu()].vif;
}

void spin_lock(spinlock_t *l)
{
	while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
		while (l->locked)
			cpu_relax();
}

void spin_unlock(spinlock_t *l)
{
	__atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------ interrupts */

void irq_enable(void)
{
	if (pvm) {
		struct pvm_vif *v = this_vif();
		v->if_ = 1;
		barrier();
		if (v->pending)
			outb(0x80, 0);	/* ask the host to deliver what is pending */
	} else {
		__asm__ volatile("sti" ::: "memory");
	}
}

void irq_disable(void)
{
	if (pvm) {
		this_vif()->if_ = 0;
		barrier();
	} else {
		__asm__ volatile("cli" ::: "memory");
	}
}

void wait_for_interrupt(void)
{
	if (pvm) {
		irq_enable();
		hlt();
	} else {
		__asm__ volatile("sti; hlt" ::: "memory");
	}
}

void irq_register(int vector, irq_handler_t fn)
{
	irq_handlers[vector] = fn;
}

void console_lock_break(void);

static const char *const exc_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS",
	"#NP", "#SS", "#GP", "#PF", "15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

static void NORETURN exception(struct trap_frame *f)
{
	u64 cr2 = 0;
	if (f->vector == 14) {
		__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
		if (pvm && !cr2)
			cr2 = this_vif()->cr2;
	}
	const char *name = exc_names[f->vector] ? exc_names[f->vector] : "?";
	console_lock_break();
	printf("EXCEPTION %s vector=%lu error=%#lx rip=%#lx rsp=%#lx cr2=%#lx cpu=%d\n",
	       name, f->vector, f->error, f->rip, f->rsp, cr2, this_cpu());
	halt();
}

void trap_dispatch(struct trap_frame *f)
{
	if (f->vector == 13 && f->rip == (u64)rdmsr_probe_insn) {
		f->rip = (u64)rdmsr_probe_fail;	/* rdmsr_safe: MSR absent */
		return;
	}
	if (f->vector < 32)
		exception(f);

	struct pvm_vif *v = pvm ? this_vif() : 0;
	if (v) {
		/* Behave like an interrupt gate: no nesting while handling. */
		if (!v->if_)
			irq_entry_if_clear++;
		v->if_ = 0;
		barrier();
	}
	irq_count++;
	if (irq_handlers[f->vector])
		irq_handlers[f->vector](f);
	else if (f->vector != 0xff)
		lapic_eoi();
	if (v && vif_restore_in_handler) {
		/* Interrupts were enabled when this one was taken: re-enable, as iretq would. */
		v->if_ = 1;
		barrier();
		if (v->pending)
			outb(0x80, 0);
	}
}

static void idt_init(void)
{
	for (int i = 0; i < 256; i++) {
		u64 a = isr_stubs[i];
		idt[i].off0 = (u16)a;
		idt[i].sel = GDT_CODE64;
		idt[i].ist = 0;
		idt[i].type = 0x8e;	/* present, DPL0, 64-bit interrupt gate */
		idt[i].off1 = (u16)(a >> 16);
		idt[i].off2 = (u32)(a >> 32);
		idt[i].zero = 0;
	}
}

static void idt_load(void)
{
	struct __attribute__((packed)) { u16 limit; u64 base; } p = { sizeof(idt) - 1, (u64)idt };
	__asm__ volatile("lidt %0" :: "m"(p));
}

/* ------------------------------------------------------------ LAPIC/IOAPIC */

u32 lapic_read(u32 reg) { return *(volatile u32 *)(LAPIC_BASE + reg); }
void lapic_write(u32 reg, u32 v) { *(volatile u32 *)(LAPIC_BASE + reg) = v; }
u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }
void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

void lapic_enable(void)
{
	lapic_write(LAPIC_SVR, 0x100 | 0xff);	/* software enable, spurious vector 0xff */
	lapic_write(LAPIC_LVT_LINT0, 0x10000);	/* masked: no 8259 ExtINT */
}

void lapic_timer_periodic(int vector, u32 period_us)
{
	lapic_write(LAPIC_TIMER_DIV, 0xb);	/* divide by 1: 1 GHz on KVM and QEMU */
	lapic_write(LAPIC_LVT_TIMER, (1u << 17) | (u32)vector);
	lapic_write(LAPIC_TIMER_INIT, period_us * 1000);
}

static void ioapic_write(u32 reg, u32 v)
{
	*(volatile u32 *)(IOAPIC_BASE) = reg;
	*(volatile u32 *)(IOAPIC_BASE + 0x10) = v;
}

void ioapic_route(int pin, int vector, u32 dest_apic_id)
{
	/* fixed delivery, physical destination, edge, active high, unmasked */
	ioapic_write(0x11 + 2 * pin, dest_apic_id << 24);
	ioapic_write(0x10 + 2 * pin, (u32)vector);
}

/* ------------------------------------------------------------ time */

static u64 tsc_hz_cached;

u64 tsc_hz(void)
{
	if (tsc_hz_cached)
		return tsc_hz_cached;
	/* one-shot masked LAPIC timer at 1 GHz as the reference: 10 ms */
	lapic_write(LAPIC_TIMER_DIV, 0xb);
	lapic_write(LAPIC_LVT_TIMER, 0x10000);
	lapic_write(LAPIC_TIMER_INIT, 0xffffffff);
	u32 c0 = lapic_read(LAPIC_TIMER_CUR);
	u64 t0 = rdtsc();
	u32 c1;
	do
		c1 = lapic_read(LAPIC_TIMER_CUR);
	while (c0 - c1 < 10000000 && c1 != 0);
	u64 t1 = rdtsc();
	lapic_write(LAPIC_TIMER_INIT, 0);
	u64 ns = c0 - c1;
	tsc_hz_cached = ns ? (t1 - t0) * 1000000000UL / ns : 2000000000UL;
	if (tsc_hz_cached < 1000000)
		tsc_hz_cached = 2000000000UL;
	return tsc_hz_cached;
}

void delay_us(u64 us)
{
	u64 end = rdtsc() + tsc_hz() / 1000000 * us;
	while ((s64)(rdtsc() - end) < 0)
		cpu_relax();
}

/* ------------------------------------------------------------ power */

void NORETURN halt(void)
{
	irq_disable();
	for (;;)
		hlt();
}

void NORETURN poweroff(void)
{
	/* ACPI PM1a_CNT at 0x604: SLP_TYP=0 | SLP_EN (QEMU -M pc, xvm) */
	outw(0x604, 0x2000);
	delay_us(200000);	/* QEMU acts on the request asynchronously */
	outb(0xf4, 0);		/* QEMU isa-debug-exit, if present (e.g. -M microvm) */
	printf("poweroff: still running\n");
	halt();
}

void NORETURN reboot(void)
{
	outb(0x64, 0xfe);	/* i8042: pulse reset line */
	delay_us(200000);
	printf("reboot: still running\n");
	halt();
}

/* ------------------------------------------------------------ boot */

extern void uart_init(void);
extern void cmdline_init(const struct hvm_start_info *si);

__attribute__((weak)) void guest_ap_main(int cpu) { (void)cpu; }

/*
 * On a PVM host the vCPU is emulated instruction by instruction (several us
 * each) until the guest registers its virtual-IF page; only then does it run
 * natively. So do as little as possible before that: an IDT with just #GP
 * (for the rdmsr probe on other hosts), the probe, the registration.
 */
static int pvm_enter(void)
{
	u64 gp = isr_stubs[13];
	early_idt[13].lo = (gp & 0xffff) | ((u64)GDT_CODE64 << 16) | (0x8eUL << 40) |
			   ((gp >> 16 & 0xffff) << 48);
	early_idt[13].hi = gp >> 32;
	struct __attribute__((packed)) { u16 limit; u64 base; } p = { sizeof(early_idt) - 1, (u64)early_idt };
	__asm__ volatile("lidt %0" :: "m"(p));

	int ok;
	u64 id = rdmsr_safe(MSR_PVM_ID, &ok);
	if (!ok || id != PVM_ID_VALUE)
		return 0;
	vif_area[0].vif.if_ = 0;
	vif_area[0].vif.pending = 0;
	wrmsr(MSR_PVM_VIF, (u64)&vif_area[0].vif);
	return 1;
}

void rt_start_bsp(u32 start_info_paddr)
{
	int on_pvm = pvm_enter();
	/* now native on PVM: clear .bss (not done by start.S, see there) */
	for (u64 *p = (u64 *)__bss_start; p < (u64 *)__bss_end; p++)
		*p = 0;
	pvm = on_pvm;
	idt_init();
	idt_load();
	uart_init();

	start_info = (const struct hvm_start_info *)(u64)start_info_paddr;
	if (start_info && start_info->magic == XEN_HVM_START_MAGIC_VALUE)
		cmdline_init(start_info);
	else
		start_info = 0;

	/* mask both 8259s: firmware may have left them routed to LINT0 */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);

	printf("xvm-guest %s ready\n", guest_name);
	if (!start_info)
		printf("warning: no hvm_start_info (ebx=%#x)\n", start_info_paddr);
	guest_main();
	poweroff();
}

void rt_start_ap(int cpu)
{
	if (pvm)	/* first: the AP runs emulated until it registers its VIF page */
		wrmsr(MSR_PVM_VIF, (u64)&vif_area[cpu].vif);
	idt_load();
	guest_ap_main(cpu);
	halt();
}

/* Copy the real-mode AP entry to AP_TRAMPOLINE; returns the SIPI vector. */
int ap_trampoline_install(void)
{
	memcpy((void *)AP_TRAMPOLINE, ap_trampoline_start,
	       (u64)(ap_trampoline_end - ap_trampoline_start));
	return AP_TRAMPOLINE >> 12;
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

/* INIT-SIPI-SIPI to every other CPU (the LAPIC must be enabled): each runs guest_ap_main. */
void start_aps(void)
{
	int vector = ap_trampoline_install();
	icr_send(ICR_ALL_BUT_SELF | ICR_LEVEL_ASSERT | ICR_INIT);
	delay_us(10000);
	icr_send(ICR_ALL_BUT_SELF | ICR_STARTUP | (u32)vector);
	delay_us(200);
	icr_send(ICR_ALL_BUT_SELF | ICR_STARTUP | (u32)vector);
}
