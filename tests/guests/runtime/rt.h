/* The xvm test-guest runtime: what every guest can use. */
#ifndef GUEST_RT_H
#define GUEST_RT_H

#include "layout.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long s64;

#define NORETURN __attribute__((noreturn))
#define barrier() __asm__ volatile("" ::: "memory")

/* ---- Xen PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h) */
#define XEN_HVM_START_MAGIC_VALUE 0x336ec578

struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;	/* version >= 1 */
	u32 memmap_entries;
	u32 reserved;
};

/* ---- PVM paravirtual interface (see /work/shared/ENVIRONMENT.md) */
#define MSR_PVM_VIF	0x4b564d10	/* write: gpa of struct pvm_vif */
#define MSR_PVM_ID	0x4b564d11	/* read: PVM_ID_VALUE on PVM hosts, #GP elsewhere */
#define PVM_ID_VALUE	0x4d5650	/* "PVM" */

struct pvm_vif {
	volatile u8 if_;
	volatile u8 pending;
	u8 pad[6];
	volatile u64 cr2;
};

/* ---- interrupt frame built by isr_common in start.S */
struct trap_frame {
	u64 r15, r14, r13, r12, r11, r10, r9, r8;
	u64 rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vector, error;
	u64 rip, cs, rflags, rsp, ss;
};

typedef void (*irq_handler_t)(struct trap_frame *f);

/* ---- port and MSR access */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ volatile("wrmsr" :: "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void hlt(void) { __asm__ volatile("hlt" ::: "memory"); }
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

u64 rdmsr_safe(u32 msr, int *ok);

/* ---- spinlock */
typedef struct { volatile int locked; } spinlock_t;
void spin_lock(spinlock_t *l);
void spin_unlock(spinlock_t *l);

/* ---- runtime state */
extern int pvm;				/* 1 when running on a PVM host */
extern const struct hvm_start_info *start_info;
int this_cpu(void);			/* 0 = BSP, APs 1.. in order of arrival */
struct pvm_vif *this_vif(void);

/* ---- console (8250 at 0x3f8) */
#define COM1 0x3f8
void uart_putc(char c);
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int snprintf(char *buf, u64 size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- kernel command line */
const char *cmdline(void);
long cmdline_long(const char *key, long dflt);

/* ---- interrupts */
void irq_enable(void);
void irq_disable(void);
void irq_register(int vector, irq_handler_t fn);
void wait_for_interrupt(void);		/* enable interrupts and halt until one arrives */

/* ---- LAPIC (xAPIC MMIO) and IOAPIC */
#define LAPIC_BASE	0xfee00000UL
#define LAPIC_ID	0x020
#define LAPIC_EOI	0x0b0
#define LAPIC_SVR	0x0f0
#define LAPIC_ICR_LO	0x300
#define LAPIC_ICR_HI	0x310
#define LAPIC_LVT_TIMER	0x320
#define LAPIC_LVT_LINT0	0x350
#define LAPIC_LVT_LINT1	0x360
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR	0x390
#define LAPIC_TIMER_DIV	0x3e0
#define IOAPIC_BASE	0xfec00000UL

u32 lapic_read(u32 reg);
void lapic_write(u32 reg, u32 v);
u32 lapic_id(void);
void lapic_enable(void);
void lapic_eoi(void);
void lapic_timer_periodic(int vector, u32 period_us);
void ioapic_route(int pin, int vector, u32 dest_apic_id);

/* ---- time */
u64 tsc_hz(void);			/* calibrated against the LAPIC timer (1 GHz bus) */
void delay_us(u64 us);

/* ---- SMP */
void start_aps(void);		/* INIT-SIPI-SIPI to all other CPUs: guest_ap_main */

/* ---- power */
void NORETURN poweroff(void);
void NORETURN reboot(void);
void NORETURN halt(void);

/* ---- string helpers */
u64 strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, u64 n);
void *memcpy(void *d, const void *s, u64 n);
void *memset(void *d, int c, u64 n);

/* ---- implemented by each guest */
extern const char guest_name[];
void guest_main(void);
void guest_ap_main(int cpu);		/* weak, optional */

#endif
