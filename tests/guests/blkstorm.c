/*
 * blkstorm: a hostile virtio-blk driver on two cpus (issue 10).  cpu 1 keeps
 * the request queue full of 1 MiB reads (every one resubmitted as soon as it
 * is used, all into the same buffers) while cpu 0, once `warmup=` (200)
 * reads have completed, writes 0 to the device status (a reset) and times
 * that write.  Then cpu 0 stops cpu 1, initialises the device again and reads
 * sector 0 to show it still works.
 *
 *   "blkstorm: reset took <us> us after <n> reads"
 *   "blkstorm: ok"                 (or "blkstorm: FAIL <what>")
 *
 * Needs 2 vCPUs (an ACPI MADT or not: cpu 1 is woken with INIT-SIPI-SIPI).
 * While cpu 1 floods, cpu 0 sleeps in HLT between LAPIC timer ticks, so that
 * on a 2-core host the flood and the VMM's worker have the cpus to themselves.
 */
#include "rt.h"
#include "virtio_mmio.h"

const char guest_name[] = "blkstorm";

#define VIRTIO_BLK_T_IN		0
#define VIRTIO_BLK_S_OK		0
#define QSIZE			256
#define DEPTH			(QSIZE / 3)	/* header, data, status: 3 descriptors each */
#define READ_BYTES		(1UL << 20)
#define BUFFERS			4
#define TIMEOUT_US		10000000UL
#define TIMER_VECTOR		0x40

struct blk_req_hdr { u32 type; u32 reserved; u64 sector; };
struct slot { struct blk_req_hdr hdr; volatile u8 status; };

VQ_RING_MEM(ring_mem, QSIZE);
static struct vmmio_dev dev;
static struct virtq vq;
static struct slot slots[DEPTH] __attribute__((aligned(64)));
static u8 pool[BUFFERS * READ_BYTES] __attribute__((aligned(4096)));
static u64 capacity;

static volatile int flooding;	/* cpu 0 -> cpu 1: keep going */
static volatile int flooder_up;	/* cpu 1 -> cpu 0 */
static volatile int flooder_done;
static volatile u64 reads_done;

static void timer_handler(struct trap_frame *f)
{
	(void)f;
	lapic_eoi();
}

static void NORETURN fail(const char *what, long a, long b)
{
	printf("blkstorm: FAIL %s (%ld, %ld)\n", what, a, b);
	poweroff();
}

static void submit(struct virtq *q, int k, u64 sector, void *data, u32 len)
{
	struct slot *s = &slots[k];
	s->hdr = (struct blk_req_hdr){ VIRTIO_BLK_T_IN, 0, sector };
	s->status = 0xff;
	struct vq_buf bufs[3] = {
		{ &s->hdr, sizeof s->hdr }, { data, len }, { (const void *)&s->status, 1 },
	};
	if (vq_add(q, bufs, 1, 2, (void *)(u64)k) < 0)
		fail("no free descriptors", k, q->num_free);
}

static void setup(struct virtq *q)
{
	u64 offered;
	if (vmmio_find(VIRTIO_ID_BLOCK, 0, &dev) < 0) {
		vmmio_describe_probe();
		fail("no virtio-blk device", 0, 0);
	}
	if (vmmio_begin(&dev, 0, &offered) < 0)
		fail("feature negotiation", (long)offered, 0);
	if (vq_init(&dev, q, 0, QSIZE, ring_mem) < 0)
		fail("queue setup", 0, 0);
	vmmio_driver_ok(&dev);
	capacity = vmmio_config64(&dev, 0);
}

/* cpu 1: the flood. */
void guest_ap_main(int cpu)
{
	if (cpu != 1)
		return;
	flooder_up = 1;
	while (!flooding)
		cpu_relax();
	u64 span = capacity > READ_BYTES / 512 ? capacity / (READ_BYTES / 512) : 1;
	for (int k = 0; k < DEPTH; k++)
		submit(&vq, k, (k % span) * (READ_BYTES / 512), pool + (k % BUFFERS) * READ_BYTES,
		       READ_BYTES);
	vq_kick(&vq);
	while (flooding) {
		u32 len;
		void *cookie;
		if (vq_poll(&vq, &len, &cookie) < 0) {
			cpu_relax();
			continue;
		}
		int k = (int)(u64)cookie;
		reads_done++;
		submit(&vq, k, slots[k].hdr.sector, pool + (k % BUFFERS) * READ_BYTES, READ_BYTES);
		vq_kick(&vq);
	}
	flooder_done = 1;
}

static void wait_flag(volatile int *flag, const char *what)
{
	u64 hz = tsc_hz(), deadline = rdtsc() + hz * 5;
	while (!*flag)
		if ((s64)(rdtsc() - deadline) > 0)
			fail(what, 0, 0);
}

void guest_main(void)
{
	lapic_enable();
	u64 hz = tsc_hz();
	setup(&vq);
	start_aps();
	wait_flag(&flooder_up, "cpu 1 did not start");

	u64 warmup = (u64)cmdline_long("warmup", 200);
	irq_register(TIMER_VECTOR, timer_handler);
	lapic_timer_periodic(TIMER_VECTOR, 5000);
	flooding = 1;
	u64 deadline = rdtsc() + hz * 10;
	while (reads_done < warmup) {
		wait_for_interrupt();
		if ((s64)(rdtsc() - deadline) > 0)
			fail("reads did not complete (done, wanted)", (long)reads_done, (long)warmup);
	}
	irq_disable();
	lapic_write(LAPIC_LVT_TIMER, 1u << 16);	/* masked */
	u64 before = reads_done;
	u64 t0 = rdtsc();
	vmmio_write32(&dev, VIRTIO_MMIO_STATUS, 0);	/* §4.2.2.1: a reset */
	u64 t1 = rdtsc();
	flooding = 0;
	wait_flag(&flooder_done, "cpu 1 did not stop");
	printf("blkstorm: reset took %lu us after %lu reads\n", (t1 - t0) * 1000000 / hz, before);
	if (vmmio_status(&dev) != 0)
		fail("status after reset", vmmio_status(&dev), 0);

	/* A second life: the device serves a read. */
	static struct virtq vq2;
	setup(&vq2);
	submit(&vq2, 0, 0, pool, 4096);
	vq_kick(&vq2);
	u32 len;
	void *cookie;
	if (vq_wait(&vq2, &len, &cookie, TIMEOUT_US) < 0)
		fail("read after reset timed out", 0, 0);
	if (slots[0].status != VIRTIO_BLK_S_OK || len != 4097)
		fail("read after reset (status, len)", slots[0].status, len);
	printf("blkstorm: ok\n");
}
