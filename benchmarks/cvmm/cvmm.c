/*
 * cvmm: a tiny KVM VMM in C, the performance baseline for xvm.
 *
 * Boots a test guest ELF through its PVH entry exactly as xvm does:
 * KVM_CREATE_VM, KVM_CREATE_IRQCHIP, RAM at GPA 0, PT_LOAD segments copied
 * to their physical addresses, struct hvm_start_info + command line,
 * 32-bit flat protected mode (paging off), rip = PVH entry,
 * rbx = start_info, rflags = 2, CPUID from KVM_GET_SUPPORTED_CPUID.
 *
 * Port I/O handled in userspace: 8250 THR (0x3f8) -> stdout, LSR (0x3fd)
 * reads 0x60, scratch (0x3ff) writes counted, 0x604 SLP_EN -> exit 0,
 * i8042 reset (0x64 <- 0xfe) -> exit 2, port 0x80 ignored. stdin feeds the
 * 8250 receive FIFO; its interrupt goes to IOAPIC pin 4 via KVM_IRQ_LINE.
 *
 * Timing: wall time between the guest's "bench start" and "bench done"
 * lines, and ns per PIO exit over that window, printed to stderr.
 *
 * usage: cvmm [-c vcpus] [-m MiB] [-q] [-v] guest.elf ["cmdline"]
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define START_INFO_GPA	0x6000
#define MEMMAP_GPA	0x6100
#define CMDLINE_GPA	0x20000
#define CMDLINE_MAX	4096
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define XEN_HVM_START_MAGIC_VALUE 0x336ec578
#define MAX_VCPUS	32

struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	uint32_t memmap_entries, reserved;
};

struct hvm_memmap_table_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};

static int kvm_fd, vm_fd, run_size, nr_vcpus = 1, quiet;
static uint8_t *ram;
static uint64_t ram_size = 128ull << 20;
static uint32_t pvh_entry;
static struct kvm_cpuid2 *cpuid;

/* statistics and the bench window, updated by the vCPU threads */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t exits_total, exits_io, scratch_writes, bench_scratch0, bench_io0;
static struct timespec bench_t0, bench_cpu0;
static uint64_t bench_count;	/* from the guest's "bench start <count>" */
static char line[512];
static size_t line_len;
static uint8_t uart_regs[8];
static struct timespec t_start, t_first_output;
static uint8_t rx_fifo[4096];
static size_t rx_head, rx_tail;	/* guarded by out_lock */
static uint64_t port_exits[65536], irq_lines;
static int verbose;
static uint64_t mmio_exits, bench_mmio0;

/* 8250 interrupt line: ISA IRQ 4 -> in-kernel IOAPIC pin 4 (edge) */
static void uart_update_irq(void)
{
	int level = (uart_regs[1] & 0x01) && rx_head != rx_tail;
	static int last;
	if (level && !last) {
		struct kvm_irq_level irq = { .irq = 4, .level = 1 };
		ioctl(vm_fd, KVM_IRQ_LINE, &irq);
		irq.level = 0;
		ioctl(vm_fd, KVM_IRQ_LINE, &irq);
		irq_lines++;
	}
	last = level;
}

/* stdin -> UART receive FIFO */
static void *stdin_thread(void *arg)
{
	(void)arg;
	uint8_t buf[256];
	ssize_t n;
	while ((n = read(0, buf, sizeof(buf))) > 0) {
		pthread_mutex_lock(&out_lock);
		for (ssize_t i = 0; i < n && rx_head - rx_tail < sizeof(rx_fifo); i++)
			rx_fifo[rx_head++ % sizeof(rx_fifo)] = buf[i];
		uart_update_irq();
		pthread_mutex_unlock(&out_lock);
	}
	return NULL;
}

static void __attribute__((noreturn)) die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "cvmm: ");
	vfprintf(stderr, fmt, ap);
	if (errno)
		fprintf(stderr, ": %s", strerror(errno));
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static double now_diff_ns(const struct timespec *a, const struct timespec *b)
{
	return (b->tv_sec - a->tv_sec) * 1e9 + (b->tv_nsec - a->tv_nsec);
}

static void load_elf(const char *path)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		die("open %s", path);
	struct stat st;
	fstat(fd, &st);
	uint8_t *img = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (img == MAP_FAILED)
		die("mmap %s", path);
	Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
	errno = 0;
	if ((size_t)st.st_size < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG) ||
	    eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_machine != EM_X86_64)
		die("%s: not an x86-64 ELF64 image", path);
	if (eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > (uint64_t)st.st_size)
		die("%s: program headers out of file", path);
	Elf64_Phdr *ph = (Elf64_Phdr *)(img + eh->e_phoff);
	for (int i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_offset + ph[i].p_filesz > (uint64_t)st.st_size)
			die("%s: segment %d out of file", path, i);
		if (ph[i].p_type == PT_LOAD) {
			if (ph[i].p_paddr + ph[i].p_memsz > ram_size || ph[i].p_filesz > ph[i].p_memsz)
				die("%s: segment %d does not fit in RAM", path, i);
			memcpy(ram + ph[i].p_paddr, img + ph[i].p_offset, ph[i].p_filesz);
			memset(ram + ph[i].p_paddr + ph[i].p_filesz, 0, ph[i].p_memsz - ph[i].p_filesz);
		} else if (ph[i].p_type == PT_NOTE) {
			uint64_t off = 0;
			while (off + sizeof(Elf64_Nhdr) <= ph[i].p_filesz) {
				Elf64_Nhdr *n = (Elf64_Nhdr *)(img + ph[i].p_offset + off);
				const char *name = (const char *)(n + 1);
				uint64_t desc = off + sizeof(*n) + ((n->n_namesz + 3) & ~3u);
				if (n->n_type == XEN_ELFNOTE_PHYS32_ENTRY && n->n_namesz == 4 &&
				    !memcmp(name, "Xen", 4) && n->n_descsz >= 4 && desc + 4 <= ph[i].p_filesz)
					memcpy(&pvh_entry, img + ph[i].p_offset + desc, 4);
				off = desc + ((n->n_descsz + 3) & ~3u);
			}
		}
	}
	if (!pvh_entry)
		die("%s: no PVH entry note (Xen, type 18)", path);
	munmap(img, st.st_size);
	close(fd);
}

static void setup_start_info(const char *cmdline)
{
	struct hvm_start_info *si = (void *)(ram + START_INFO_GPA);
	struct hvm_memmap_table_entry *mm = (void *)(ram + MEMMAP_GPA);
	size_t n = strlen(cmdline);
	if (n >= CMDLINE_MAX)
		n = CMDLINE_MAX - 1;
	memcpy(ram + CMDLINE_GPA, cmdline, n);
	ram[CMDLINE_GPA + n] = 0;
	mm[0] = (struct hvm_memmap_table_entry){ 0, 0x9fc00, 1, 0 };
	mm[1] = (struct hvm_memmap_table_entry){ 0x100000, ram_size - 0x100000, 1, 0 };
	*si = (struct hvm_start_info){
		.magic = XEN_HVM_START_MAGIC_VALUE, .version = 1,
		.cmdline_paddr = CMDLINE_GPA, .memmap_paddr = MEMMAP_GPA, .memmap_entries = 2,
	};
}

static void setup_cpuid(void)
{
	int n = 256;
	cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(struct kvm_cpuid_entry2));
	cpuid->nent = n;
	if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
		die("KVM_GET_SUPPORTED_CPUID");
}

static void setup_vcpu(int vcpu_fd, int index)
{
	/* CPUID: supported set, with this vCPU's APIC ID in leaf 1 */
	for (uint32_t i = 0; i < cpuid->nent; i++)
		if (cpuid->entries[i].function == 1)
			cpuid->entries[i].ebx = (cpuid->entries[i].ebx & 0x00ffffff) | ((uint32_t)index << 24);
	/* CVMM_NO_CPUID=1 (experiment): leave the vCPU's CPUID table empty */
	if (!getenv("CVMM_NO_CPUID") && ioctl(vcpu_fd, KVM_SET_CPUID2, cpuid) < 0)
		die("KVM_SET_CPUID2");
	if (index != 0)
		return;	/* APs wait for INIT/SIPI in the in-kernel LAPIC */

	struct kvm_sregs s;
	if (ioctl(vcpu_fd, KVM_GET_SREGS, &s) < 0)
		die("KVM_GET_SREGS");
	struct kvm_segment code = {
		.base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 0xb,
		.present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
	};
	struct kvm_segment data = code;
	data.selector = 0x10;
	data.type = 0x3;
	s.cs = code;
	s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.cr0 = 0x11;	/* PE | ET, paging off */
	/* CVMM_ZERO_SELECTORS=1 (experiment): selector values 0, as PVH allows */
	if (getenv("CVMM_ZERO_SELECTORS"))
		s.cs.selector = s.ds.selector = s.es.selector = s.fs.selector = s.gs.selector = s.ss.selector = 0;
	if (getenv("CVMM_CR0_PE_ONLY"))
		s.cr0 = 0x1;
	s.cr4 = 0;
	s.efer = 0;
	if (ioctl(vcpu_fd, KVM_SET_SREGS, &s) < 0)
		die("KVM_SET_SREGS");

	struct kvm_regs r = { 0 };
	r.rip = pvh_entry;
	r.rbx = START_INFO_GPA;
	r.rflags = 2;
	if (ioctl(vcpu_fd, KVM_SET_REGS, &r) < 0)
		die("KVM_SET_REGS");
}


static int vcpu0_fd_for_console = -1, vcpu0_fd = -1;
static volatile int relocate_pending;

/* CVMM_VIF_RESET=1 (experiment): at the guest's "irq: echo ready", read the
 * PVM VIF MSR with KVM_GET_MSRS and write it back with KVM_SET_MSRS, as a
 * save/restore would. */
static void vif_msr_roundtrip(void)
{
	struct { struct kvm_msrs m; struct kvm_msr_entry e; } q = { .m.nmsrs = 1, .e.index = 0x4b564d10 };
	int n = ioctl(vcpu0_fd_for_console, KVM_GET_MSRS, &q);
	uint64_t got = q.e.data;
	const char *mode = getenv("CVMM_VIF_RESET");
	if (!strcmp(mode, "masked"))
		q.e.data &= ~0xfffULL;
	int m = ioctl(vcpu0_fd_for_console, KVM_SET_MSRS, &q);
	q.e.data = 0;
	int k = ioctl(vcpu0_fd_for_console, KVM_GET_MSRS, &q);
	fprintf(stderr, "cvmm: VIF msr get %d -> %#lx, set(%s) %d, get %d -> %#llx\n", n, got, mode, m, k,
		q.e.data);
}

static void console_char(uint8_t c)
{
	if (!t_first_output.tv_sec)
		clock_gettime(CLOCK_MONOTONIC, &t_first_output);
	if (!quiet)
		putchar(c);
	if (c == '\n') {
		line[line_len] = 0;
		if (!strncmp(line, "bench start", 11)) {
			clock_gettime(CLOCK_MONOTONIC, &bench_t0);
			clock_gettime(CLOCK_THREAD_CPUTIME_ID, &bench_cpu0);
			bench_count = strtoull(line + 11, NULL, 10);
			bench_scratch0 = scratch_writes;
			bench_io0 = exits_io;
			bench_mmio0 = mmio_exits;
		} else if (!strncmp(line, "bench done", 10)) {
			struct timespec t1, cpu1;
			clock_gettime(CLOCK_MONOTONIC, &t1);
			clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu1);
			double ns = now_diff_ns(&bench_t0, &t1);
			double cpu_ns = now_diff_ns(&bench_cpu0, &cpu1);
			uint64_t n = scratch_writes - bench_scratch0;
			uint64_t m = mmio_exits - bench_mmio0;
			fflush(stdout);
			fprintf(stderr, "cvmm: bench %lu PIO exits in %.3f ms: %.0f ns per PIO exit "
				"(%lu userspace I/O exits, %lu MMIO exits in the window)\n",
				n, ns / 1e6, n ? ns / n : 0.0, exits_io - bench_io0, m);
			/* CPU time of this vCPU thread (guest + KVM + VMM): less sensitive to host load */
			uint64_t ops = bench_count;
			fprintf(stderr, "cvmm: bench vcpu thread cpu time %.3f ms: %.0f ns per operation "
				"(%lu operations, %.0f ns wall)\n", cpu_ns / 1e6, ops ? cpu_ns / ops : 0.0, ops, ops ? ns / ops : 0.0);
		}
		if (!strncmp(line, "irq: echo ready", 15) && getenv("CVMM_VIF_RESET"))
			vif_msr_roundtrip();
		if (getenv("CVMM_RELOCATE")) {
			const char *at = getenv("CVMM_RELOCATE_AT") ? getenv("CVMM_RELOCATE_AT") : "irq: echo ready";
			static int done;
			if (!done && !strncmp(line, at, strlen(at)))
				done = relocate_pending = 1;
		}
		line_len = 0;
		fflush(stdout);
	} else if (line_len + 1 < sizeof(line)) {
		line[line_len++] = c;
	}
}

static void dump_seg(const char *name, const struct kvm_segment *g)
{
	fprintf(stderr, " %s=%#x/base %#llx/type %u/dpl %u/l %u/db %u", name, g->selector, g->base, g->type,
		g->dpl, g->l, g->db);
}

/* -v: what the VMM sees of vCPU 0 at the end (for save/restore on PVM) */
static void dump_vcpu0(void)
{
	struct kvm_regs r;
	struct kvm_sregs s;
	if (vcpu0_fd < 0 || ioctl(vcpu0_fd, KVM_GET_REGS, &r) < 0 || ioctl(vcpu0_fd, KVM_GET_SREGS, &s) < 0)
		return;
	fprintf(stderr, "cvmm: vcpu0 rip=%#llx rsp=%#llx rflags=%#llx cr0=%#llx cr3=%#llx cr4=%#llx efer=%#llx",
		r.rip, r.rsp, r.rflags, s.cr0, s.cr3, s.cr4, s.efer);
	dump_seg("cs", &s.cs);
	dump_seg("ss", &s.ss);
	fprintf(stderr, "\n");

	static const uint32_t probe[] = { 0x4b564d10, 0x4b564d11 };
	struct { struct kvm_msr_list l; uint32_t idx[1024]; } list = { .l.nmsrs = 1024 };
	int listed[2] = { 0, 0 };
	if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &list) == 0)
		for (uint32_t i = 0; i < list.l.nmsrs; i++)
			for (int j = 0; j < 2; j++)
				listed[j] |= list.l.indices[i] == probe[j];
	for (int j = 0; j < 2; j++) {
		struct { struct kvm_msrs m; struct kvm_msr_entry e; } q = { .m.nmsrs = 1, .e.index = probe[j] };
		int n = ioctl(vcpu0_fd, KVM_GET_MSRS, &q);
		fprintf(stderr, "cvmm: msr %#x: in KVM_GET_MSR_INDEX_LIST %s, KVM_GET_MSRS %s %#llx\n", probe[j],
			listed[j] ? "yes" : "no", n == 1 ? "ok" : "failed", n == 1 ? q.e.data : 0ULL);
	}
	fprintf(stderr, "cvmm: other readable MSRs in 0x4b564d00-0x4b564dff:");
	for (uint32_t idx = 0x4b564d00; idx <= 0x4b564dff; idx++) {
		struct { struct kvm_msrs m; struct kvm_msr_entry e; } q = { .m.nmsrs = 1, .e.index = idx };
		if (idx != probe[0] && idx != probe[1] && ioctl(vcpu0_fd, KVM_GET_MSRS, &q) == 1)
			fprintf(stderr, " %#x=%#llx", idx, q.e.data);
	}
	fprintf(stderr, "\n");
}

static void __attribute__((noreturn)) finish(int code, const char *why)
{
	fflush(stdout);
	if (verbose) {
		dump_vcpu0();
		struct timespec t_end;
		clock_gettime(CLOCK_MONOTONIC, &t_end);
		fprintf(stderr, "cvmm: first console byte after %.3f ms, exit after %.3f ms\n",
			t_first_output.tv_sec ? now_diff_ns(&t_start, &t_first_output) / 1e6 : -1.0,
			now_diff_ns(&t_start, &t_end) / 1e6);
		fprintf(stderr, "cvmm: uart irq edges %lu; mmio exits %lu; port exits:", irq_lines, mmio_exits);
		for (int p = 0; p < 65536; p++)
			if (port_exits[p])
				fprintf(stderr, " %#x:%lu", p, port_exits[p]);
		fprintf(stderr, "\n");
	}
	if (!quiet || code)
		fprintf(stderr, "cvmm: %s (exits %lu, io %lu, scratch writes %lu)\n",
			why, exits_total, exits_io, scratch_writes);
	exit(code);
}

static void on_signal(int sig)
{
	(void)sig;
	finish(5, "terminated by signal");	/* not async-signal-safe; good enough for a benchmark tool */
}

/* returns the value for an IN, handles an OUT */
static uint32_t pio(uint16_t port, int out, uint32_t val, int size)
{
	if (port >= 0x3f8 && port <= 0x3ff) {
		int reg = port - 0x3f8;
		if (out) {
			if (reg == 0 && !(uart_regs[3] & 0x80))
				console_char((uint8_t)val);
			else if (reg == 7)
				scratch_writes++;
			uart_regs[reg] = (uint8_t)val;
			if (reg == 1)
				uart_update_irq();
			return 0;
		}
		int dlab = uart_regs[3] & 0x80;
		if (reg == 5)	/* LSR: THR empty, transmitter empty, data ready */
			return 0x60 | (rx_head != rx_tail);
		if (reg == 0 && !dlab) {
			uint8_t c = 0;
			if (rx_head != rx_tail)
				c = rx_fifo[rx_tail++ % sizeof(rx_fifo)];
			uart_update_irq();
			return c;
		}
		if (reg == 2)	/* IIR: FIFOs on; receive data available or none */
			return ((uart_regs[1] & 1) && rx_head != rx_tail) ? 0xc4 : 0xc1;
		return uart_regs[reg];
	}
	if (port == 0xe9 && out) {	/* boot-stage trace from guests built with -DBOOT_TRACE */
		if (verbose) {
			struct timespec t;
			clock_gettime(CLOCK_MONOTONIC, &t);
			fprintf(stderr, "cvmm: trace %u at %.3f ms\n", val & 0xff, now_diff_ns(&t_start, &t) / 1e6);
		}
		return 0;
	}
	if (port == 0x604 && out && size == 2) {
		if (val & 0x2000)
			finish(0, "guest powered off");
		return 0;
	}
	if (port == 0x64 && out) {
		if ((val & 0xff) == 0xfe)
			finish(2, "guest requested reset");
		return 0;
	}
	if (port == 0x64 && !out)
		return 0;	/* i8042 status: empty */
	if (out)
		return 0;	/* 0x80 and anything else: ignored */
	return 0xffffffff;
}

struct vcpu {
	int index, fd;
	struct kvm_run *run;
	pthread_t thread;
};

/*
 * CVMM_RELOCATE=1|novif (experiment, 1 vCPU): when the guest prints a line
 * starting with CVMM_RELOCATE_AT (default "irq: echo ready"), move it to a brand-new VM the way a restore would:
 * complete the pending exit, save regs/sregs/fpu/lapic/events/mp_state,
 * the IOAPIC and selected MSRs (incl. PVM's VIF MSR), create a new VM on the
 * same RAM, restore, continue. Shows what PVM needs for save/restore.
 */
static void relocate(struct vcpu *v)
{
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_fpu fpu;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
	struct kvm_mp_state mp;
	struct kvm_irqchip ioapic = { .chip_id = KVM_IRQCHIP_IOAPIC };
	static const uint32_t msr_idx[] = { 0x10 /* TSC */, 0xc0000081, 0xc0000082, 0xc0000084,
		0xc0000100, 0xc0000101, 0xc0000102, 0x4b564d10 /* PVM VIF */ };
	/* CVMM_RELOCATE=novif: leave PVM's VIF MSR out of the restored state */
	int nmsr = !strcmp(getenv("CVMM_RELOCATE"), "novif") ? 7 : 8;
	enum { NMSR = sizeof(msr_idx) / sizeof(msr_idx[0]) };
	struct { struct kvm_msrs m; struct kvm_msr_entry e[NMSR]; } msrs = { .m.nmsrs = NMSR };
	for (int i = 0; i < NMSR; i++)
		msrs.e[i].index = msr_idx[i];

	v->run->immediate_exit = 1;	/* complete the exit we are in, so state is consistent */
	if (ioctl(v->fd, KVM_RUN, 0) == 0 || errno != EINTR)
		fprintf(stderr, "cvmm: relocate: immediate_exit run did not return EINTR\n");
	v->run->immediate_exit = 0;
	int got = 0;
	if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0 || ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0 ||
	    ioctl(v->fd, KVM_GET_FPU, &fpu) < 0 || ioctl(v->fd, KVM_GET_LAPIC, &lapic) < 0 ||
	    ioctl(v->fd, KVM_GET_VCPU_EVENTS, &events) < 0 || ioctl(v->fd, KVM_GET_MP_STATE, &mp) < 0 ||
	    ioctl(vm_fd, KVM_GET_IRQCHIP, &ioapic) < 0 || (got = ioctl(v->fd, KVM_GET_MSRS, &msrs)) != NMSR)
		die("relocate: saving state (msrs %d of %d)", got, NMSR);

	int old_vm = vm_fd, old_vcpu = v->fd;
	struct kvm_run *old_run = v->run;
	vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (vm_fd < 0)
		die("relocate: KVM_CREATE_VM");
	ioctl(vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000UL);
	if (ioctl(vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
		die("relocate: KVM_CREATE_IRQCHIP");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = ram_size, .userspace_addr = (uint64_t)ram,
	};
	if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("relocate: KVM_SET_USER_MEMORY_REGION");
	if (ioctl(vm_fd, KVM_SET_IRQCHIP, &ioapic) < 0)
		die("relocate: KVM_SET_IRQCHIP");
	v->fd = ioctl(vm_fd, KVM_CREATE_VCPU, 0);
	if (v->fd < 0)
		die("relocate: KVM_CREATE_VCPU");
	v->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED)
		die("relocate: mmap kvm_run");
	if (ioctl(v->fd, KVM_SET_CPUID2, cpuid) < 0 || ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0 ||
	    ioctl(v->fd, KVM_SET_REGS, &regs) < 0 || ioctl(v->fd, KVM_SET_FPU, &fpu) < 0 ||
	    ioctl(v->fd, KVM_SET_LAPIC, &lapic) < 0)
		die("relocate: restoring vcpu state");
	msrs.m.nmsrs = nmsr;
	int set = ioctl(v->fd, KVM_SET_MSRS, &msrs);
	if (ioctl(v->fd, KVM_SET_VCPU_EVENTS, &events) < 0 || ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0)
		die("relocate: restoring events/mp_state");
	struct { struct kvm_msrs m; struct kvm_msr_entry e; } q = { .m.nmsrs = 1, .e.index = 0x4b564d10 };
	ioctl(v->fd, KVM_GET_MSRS, &q);
	fprintf(stderr, "cvmm: relocated vcpu 0 to a new VM: rip %#llx, KVM_SET_MSRS set %d of %d, "
		"VIF msr %#llx -> %#llx\n", regs.rip, set, NMSR, msrs.e[NMSR - 1].data, q.e.data);
	munmap(old_run, run_size);
	close(old_vcpu);
	close(old_vm);
	vcpu0_fd = vcpu0_fd_for_console = v->fd;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	struct kvm_run *run = v->run;
	for (;;) {
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN vcpu %d", v->index);
		}
		pthread_mutex_lock(&out_lock);
		exits_total++;
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			exits_io++;
			port_exits[run->io.port]++;
			uint8_t *data = (uint8_t *)run + run->io.data_offset;
			for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
				int out = run->io.direction == KVM_EXIT_IO_OUT;
				uint32_t val = 0;
				if (out)
					memcpy(&val, data, run->io.size);
				val = pio(run->io.port, out, val, run->io.size);
				if (!out)
					memcpy(data, &val, run->io.size);
			}
			break;
		}
		case KVM_EXIT_MMIO:
			if (!run->mmio.is_write)
				memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
			if (mmio_exits++ == 0 && !quiet)
				fprintf(stderr, "cvmm: vcpu %d: unhandled MMIO %s at %#llx (reported once)\n", v->index,
					run->mmio.is_write ? "write" : "read", run->mmio.phys_addr);
			break;
		case KVM_EXIT_HLT:
			break;
		case KVM_EXIT_SHUTDOWN: {
			pthread_mutex_unlock(&out_lock);
			struct kvm_regs r;
			ioctl(v->fd, KVM_GET_REGS, &r);
			fprintf(stderr, "cvmm: vcpu %d: shutdown (triple fault?) rip=%#llx\n", v->index, r.rip);
			finish(3, "shutdown");
		}
		case KVM_EXIT_INTERNAL_ERROR: {
			pthread_mutex_unlock(&out_lock);
			struct kvm_regs r;
			ioctl(v->fd, KVM_GET_REGS, &r);
			fprintf(stderr, "cvmm: vcpu %d: internal error suberror %u rip=%#llx", v->index,
				run->internal.suberror, r.rip);
			for (uint32_t i = 0; i < run->internal.ndata && i < 16; i++)
				fprintf(stderr, " %#llx", run->internal.data[i]);
			fprintf(stderr, "\n");
			finish(4, "internal error");
		}
		case KVM_EXIT_FAIL_ENTRY:
			pthread_mutex_unlock(&out_lock);
			fprintf(stderr, "cvmm: vcpu %d: entry failed, reason %#llx\n", v->index,
				run->fail_entry.hardware_entry_failure_reason);
			finish(4, "entry failure");
		case KVM_EXIT_SYSTEM_EVENT:
			pthread_mutex_unlock(&out_lock);
			finish(run->system_event.type == KVM_SYSTEM_EVENT_RESET ? 2 : 0, "system event");
		default:
			pthread_mutex_unlock(&out_lock);
			fprintf(stderr, "cvmm: vcpu %d: unhandled exit reason %u\n", v->index, run->exit_reason);
			finish(4, "unhandled exit");
		}
		pthread_mutex_unlock(&out_lock);
		if (relocate_pending && v->index == 0 && nr_vcpus == 1) {
			relocate_pending = 0;
			relocate(v);
			run = v->run;
		}
	}
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: cvmm [-c vcpus] [-m MiB] [-q] [-v] guest.elf [\"cmdline\"]\n");
	exit(1);
}

int main(int argc, char **argv)
{
	int opt;
	while ((opt = getopt(argc, argv, "c:m:qv")) != -1) {
		switch (opt) {
		case 'c':
			nr_vcpus = atoi(optarg);
			if (nr_vcpus < 1 || nr_vcpus > MAX_VCPUS)
				usage();
			break;
		case 'm':
			ram_size = strtoull(optarg, NULL, 0) << 20;
			if (ram_size < (8ull << 20) || ram_size > (3ull << 30))
				usage();
			break;
		case 'q':
			quiet = 1;
			break;
		case 'v':
			verbose = 1;
			break;
		default:
			usage();
		}
	}
	if (optind >= argc)
		usage();
	const char *elf = argv[optind];
	const char *cmdline = optind + 1 < argc ? argv[optind + 1] : "";

	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		die("open /dev/kvm");
	if (ioctl(kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		die("KVM API version mismatch");
	vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (vm_fd < 0)
		die("KVM_CREATE_VM");
	if (!getenv("CVMM_NO_TSS"))	/* VMX real mode needs it; harmless elsewhere */
		ioctl(vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000UL);
	if (ioctl(vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
		die("KVM_CREATE_IRQCHIP");
	run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size <= 0)
		die("KVM_GET_VCPU_MMAP_SIZE");

	ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		die("mmap guest RAM");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = ram_size, .userspace_addr = (uint64_t)ram,
	};
	if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");

	load_elf(elf);
	setup_start_info(cmdline);
	setup_cpuid();

	static struct vcpu vcpus[MAX_VCPUS];
	for (int i = 0; i < nr_vcpus; i++) {
		struct vcpu *v = &vcpus[i];
		v->index = i;
		v->fd = ioctl(vm_fd, KVM_CREATE_VCPU, i);
		if (v->fd < 0)
			die("KVM_CREATE_VCPU %d", i);
		v->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
		if (v->run == MAP_FAILED)
			die("mmap kvm_run");
		setup_vcpu(v->fd, i);
	}
	vcpu0_fd = vcpu0_fd_for_console = vcpus[0].fd;
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	pthread_t input;
	pthread_create(&input, NULL, stdin_thread, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t_start);
	for (int i = 1; i < nr_vcpus; i++)
		pthread_create(&vcpus[i].thread, NULL, vcpu_thread, &vcpus[i]);
	vcpu_thread(&vcpus[0]);
	return 0;
}
