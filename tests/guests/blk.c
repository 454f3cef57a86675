/*
 * blk: a polling virtio-blk driver (virtio 1.2 §5.2) on runtime/virtio_mmio.
 *
 * Uses the first virtio-blk device (QEMU microvm's virtio_mmio.device= entries,
 * else xvm's window).  Modes (`mode=`):
 *
 *   verify (default)  capacity, serial (GET_ID); writes a pattern (blk_pattern
 *                     below) to sectors 0, 1, 16..23 (one request, two data
 *                     descriptors), capacity/2 and capacity-1; reads them back;
 *                     FLUSH; a read at capacity and one straddling the end must
 *                     fail with IOERR.   -> "blk: verify ok capacity=<n> serial=<s>"
 *   ro                the device offers VIRTIO_BLK_F_RO, a read works, a write
 *                     fails with IOERR and leaves the sector unchanged
 *                                       -> "blk: ro ok capacity=<n> serial=<s>"
 *   bench             op=randread|randwrite|seqread|seqwrite bs=<bytes> count=<ios>
 *                     depth=<chains in flight> (1): "blk: bench start ..." then
 *                     "blk: bench <op> <count> ios in <ns> ns" (TSC, calibrated
 *                     against the LAPIC timer), then spins linger_ms= (300) before
 *                     powering off, so the host can sample the VMM's threads
 *   soak              writes the verify pattern to chunks=<n> (8) chunks of
 *                     chunk=<sectors> (256), then forever: reads chunk r%n into
 *                     one buffer (no vCPU write to it: only the device writes it)
 *                     and checks it checks=<k> (4) times
 *                                       -> "blk: soak round <r> ok" every=<n>
 *                     (1) rounds
 *                     (a live migration that misses the device's writes leaves
 *                     another round's data, or a stale used ring, behind);
 *                     ballast_kib=<k> (0) KiB at the pool's end are filled once,
 *                     so that a migration's first pass has that much to send
 *                     after the buffer
 *
 * A failure prints "blk: FAIL <what>" and powers off.  No interrupts: the used
 * ring is polled.
 */
#include "rt.h"
#include "virtio_mmio.h"

const char guest_name[] = "blk";

/* §5.2.3 feature bits */
#define VIRTIO_BLK_F_SEG_MAX	2
#define VIRTIO_BLK_F_RO		5
#define VIRTIO_BLK_F_BLK_SIZE	6
#define VIRTIO_BLK_F_FLUSH	9

/* §5.2.6 */
#define VIRTIO_BLK_T_IN		0
#define VIRTIO_BLK_T_OUT	1
#define VIRTIO_BLK_T_FLUSH	4
#define VIRTIO_BLK_T_GET_ID	8
#define VIRTIO_BLK_S_OK		0
#define VIRTIO_BLK_S_IOERR	1
#define VIRTIO_BLK_S_UNSUPP	2
#define VIRTIO_BLK_ID_BYTES	20

#define SECTOR			512
#define QSIZE			128
#define MAX_DEPTH		32
#define POOL_BYTES		(8UL << 20)
#define TIMEOUT_US		10000000UL

struct blk_req_hdr { u32 type; u32 reserved; u64 sector; };

struct slot {
	struct blk_req_hdr hdr;
	volatile u8 status;
};

VQ_RING_MEM(ring_mem, QSIZE);
static struct vmmio_dev dev;
static struct virtq vq;
static struct slot slots[MAX_DEPTH] __attribute__((aligned(64)));
static u8 pool[POOL_BYTES] __attribute__((aligned(4096)));
static u64 capacity;
static u64 offered;	/* the device's features */

static void NORETURN fail(const char *what, long a, long b)
{
	printf("blk: FAIL %s (%ld, %ld)\n", what, a, b);
	vmmio_fail(&dev);
	poweroff();
}

/* value of "key=<word>" on the command line, copied into buf; or dflt */
static const char *cmdline_str(const char *key, char *buf, u64 size, const char *dflt)
{
	u64 klen = strlen(key);
	const char *p = cmdline();
	while (*p) {
		while (*p == ' ')
			p++;
		if (!strncmp(p, key, klen) && p[klen] == '=') {
			const char *s = p + klen + 1;
			u64 n = 0;
			while (s[n] && s[n] != ' ' && n + 1 < size) {
				buf[n] = s[n];
				n++;
			}
			buf[n] = 0;
			return buf;
		}
		while (*p && *p != ' ')
			p++;
	}
	return dflt;
}

/* The byte the verify pattern puts at offset i of sector s (tests/kvm/test_block_guest.py). */
static u8 blk_pattern(u64 s, u64 i)
{
	return (u8)((i + s * 37) ^ 0xa5 ^ (s >> 8));
}

/* ---- requests */

/* Submit one request in slot `k`; data descriptors are `data[0..ndata)`. */
static void submit(int k, u32 type, u64 sector, const struct vq_buf *data, int ndata)
{
	struct vq_buf bufs[2 + 4];
	struct slot *s = &slots[k];
	s->hdr.type = type;
	s->hdr.reserved = 0;
	s->hdr.sector = sector;
	s->status = 0xff;
	bufs[0] = (struct vq_buf){ &s->hdr, sizeof s->hdr };
	for (int i = 0; i < ndata; i++)
		bufs[1 + i] = data[i];
	bufs[1 + ndata] = (struct vq_buf){ (const void *)&s->status, 1 };
	/* §5.2.6: header and OUT data device-readable; IN/GET_ID data and status writable */
	int nout = type == VIRTIO_BLK_T_OUT ? 1 + ndata : 1;
	int nin = 2 + ndata - nout;
	if (vq_add(&vq, bufs, nout, nin, (void *)(u64)k) < 0)
		fail("no free descriptors", k, vq.num_free);
}

/* Wait for any one request; returns its slot, *len its used length. */
static int complete(u32 *len)
{
	void *cookie;
	if (vq_wait(&vq, len, &cookie, TIMEOUT_US) < 0)
		fail("request timed out after 10 s (in flight, avail idx)", vq_in_flight(&vq), vq.avail_idx);
	return (int)(u64)cookie;
}

/* One request, synchronously; returns its status byte. */
static int request(u32 type, u64 sector, void *data, u32 len, u32 *used_len)
{
	struct vq_buf b[2];
	int n = 0;
	if (len > 4096 && type != VIRTIO_BLK_T_GET_ID) {	/* two descriptors: exercise chains */
		b[0] = (struct vq_buf){ data, len / 2 };
		b[1] = (struct vq_buf){ (u8 *)data + len / 2, len - len / 2 };
		n = 2;
	} else if (len) {
		b[0] = (struct vq_buf){ data, len };
		n = 1;
	}
	submit(0, type, sector, b, n);
	vq_kick(&vq);
	u32 ul;
	complete(&ul);
	if (used_len)
		*used_len = ul;
	return slots[0].status;
}

/* ---- setup */

static void setup(u64 wanted)
{
	if (vmmio_find(VIRTIO_ID_BLOCK, 0, &dev) < 0) {
		vmmio_describe_probe();
		fail("no virtio-blk device", 0, 0);
	}
	if (vmmio_begin(&dev, wanted, &offered) < 0)
		fail("feature negotiation", (long)offered, 0);
	if (vq_init(&dev, &vq, 0, QSIZE, ring_mem) < 0)
		fail("queue setup", 0, 0);
	vmmio_driver_ok(&dev);
	capacity = vmmio_config64(&dev, 0);	/* §5.2.4 capacity, 512-byte sectors */
	printf("blk: device at 0x%lx irq %u features 0x%lx (offered 0x%lx) queue %u capacity %lu\n",
	       (u64)dev.base, dev.irq, dev.features, offered, vq.size, capacity);
}

static void read_serial(char *serial)
{
	static u8 id[VIRTIO_BLK_ID_BYTES];
	memset(id, 0, sizeof id);
	int st = request(VIRTIO_BLK_T_GET_ID, 0, id, sizeof id, 0);
	if (st == VIRTIO_BLK_S_UNSUPP) {
		memcpy(serial, "(unsupported)", 14);
		return;
	}
	if (st != VIRTIO_BLK_S_OK)
		fail("GET_ID status", st, 0);
	/* §5.2.6: NUL-terminated unless all 20 bytes are used */
	int n = 0;
	while (n < VIRTIO_BLK_ID_BYTES && id[n])
		n++;
	memcpy(serial, id, n);
	serial[n] = 0;
}

/* ---- verify / ro */

static void fill(u8 *buf, u64 sector, u64 nsectors)
{
	for (u64 s = 0; s < nsectors; s++)
		for (u64 i = 0; i < SECTOR; i++)
			buf[s * SECTOR + i] = blk_pattern(sector + s, i);
}

static void check(const u8 *buf, u64 sector, u64 nsectors)
{
	for (u64 s = 0; s < nsectors; s++)
		for (u64 i = 0; i < SECTOR; i++)
			if (buf[s * SECTOR + i] != blk_pattern(sector + s, i)) {
				printf("blk: FAIL read back sector %lu byte %lu: 0x%02x, wrote 0x%02x\n",
				       sector + s, i, buf[s * SECTOR + i], blk_pattern(sector + s, i));
				vmmio_fail(&dev);
				poweroff();
			}
}

static void verify(void)
{
	setup(1UL << VIRTIO_BLK_F_FLUSH | 1UL << VIRTIO_BLK_F_BLK_SIZE | 1UL << VIRTIO_BLK_F_SEG_MAX);
	if (offered >> VIRTIO_BLK_F_RO & 1)
		fail("verify needs a writable disk but the device offers VIRTIO_BLK_F_RO", 0, 0);
	if (capacity < 32)
		fail("capacity too small for verify (sectors, need)", capacity, 32);
	char serial[VIRTIO_BLK_ID_BYTES + 1];
	read_serial(serial);

	struct { u64 sector, n; } w[] = {
		{ 0, 1 }, { 1, 1 }, { 16, 8 }, { capacity / 2, 1 }, { capacity - 1, 1 },
	};
	u8 *buf = pool;
	for (u64 k = 0; k < sizeof w / sizeof w[0]; k++) {
		fill(buf, w[k].sector, w[k].n);
		int st = request(VIRTIO_BLK_T_OUT, w[k].sector, buf, w[k].n * SECTOR, 0);
		if (st != VIRTIO_BLK_S_OK)
			fail("write status (sector, status)", w[k].sector, st);
	}
	for (u64 k = 0; k < sizeof w / sizeof w[0]; k++) {
		memset(buf, 0, w[k].n * SECTOR);
		u32 used;
		int st = request(VIRTIO_BLK_T_IN, w[k].sector, buf, w[k].n * SECTOR, &used);
		if (st != VIRTIO_BLK_S_OK)
			fail("read status (sector, status)", w[k].sector, st);
		if (used != w[k].n * SECTOR + 1)
			fail("read used length (sector, len)", w[k].sector, used);
		check(buf, w[k].sector, w[k].n);
	}
	if (vmmio_has(&dev, VIRTIO_BLK_F_FLUSH)) {
		int st = request(VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0);
		if (st != VIRTIO_BLK_S_OK)
			fail("flush status", st, 0);
	} else {
		printf("blk: device does not offer FLUSH\n");
	}
	int st = request(VIRTIO_BLK_T_IN, capacity, buf, SECTOR, 0);
	if (st != VIRTIO_BLK_S_IOERR)
		fail("read at capacity: status, expected IOERR", st, VIRTIO_BLK_S_IOERR);
	st = request(VIRTIO_BLK_T_IN, capacity - 1, buf, 2 * SECTOR, 0);
	if (st != VIRTIO_BLK_S_IOERR)
		fail("read across the end: status, expected IOERR", st, VIRTIO_BLK_S_IOERR);
	printf("blk: verify ok capacity=%lu serial=%s\n", capacity, serial);
}

static void readonly(void)
{
	setup(1UL << VIRTIO_BLK_F_RO | 1UL << VIRTIO_BLK_F_FLUSH | 1UL << VIRTIO_BLK_F_BLK_SIZE);
	if (!vmmio_has(&dev, VIRTIO_BLK_F_RO))
		fail("device does not offer VIRTIO_BLK_F_RO", (long)dev.features, 0);
	char serial[VIRTIO_BLK_ID_BYTES + 1];
	read_serial(serial);
	u8 *before = pool, *buf = pool + 4096;
	int st = request(VIRTIO_BLK_T_IN, 0, before, SECTOR, 0);
	if (st != VIRTIO_BLK_S_OK)
		fail("read status", st, 0);
	fill(buf, 0, 1);
	st = request(VIRTIO_BLK_T_OUT, 0, buf, SECTOR, 0);
	if (st != VIRTIO_BLK_S_IOERR)
		fail("write to a read-only disk: status, expected IOERR", st, VIRTIO_BLK_S_IOERR);
	memset(buf, 0, SECTOR);
	st = request(VIRTIO_BLK_T_IN, 0, buf, SECTOR, 0);
	if (st != VIRTIO_BLK_S_OK)
		fail("read after write status", st, 0);
	for (int i = 0; i < SECTOR; i++)
		if (buf[i] != before[i])
			fail("sector 0 changed on a read-only disk at byte", i, buf[i]);
	printf("blk: ro ok capacity=%lu serial=%s\n", capacity, serial);
}

/* ---- bench */

static u64 rng = 0x9e3779b97f4a7c15UL;
static u64 xorshift(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void bench(void)
{
	char opbuf[16];
	const char *op = cmdline_str("op", opbuf, sizeof opbuf, "randread");
	u64 bs = cmdline_long("bs", 4096);
	u64 count = cmdline_long("count", 1000);
	u64 depth = cmdline_long("depth", 1);
	int randwrite = !strcmp(op, "randwrite");
	int rand = !strcmp(op, "randread") || randwrite, write = !strcmp(op, "seqwrite") || randwrite;
	if (!rand && !write && strcmp(op, "seqread"))
		fail("unknown op", 0, 0);
	if (depth < 1 || depth > MAX_DEPTH || bs < SECTOR || bs % SECTOR || bs * depth > POOL_BYTES)
		fail("bad bs/depth (bs, depth)", bs, depth);
	setup(1UL << VIRTIO_BLK_F_FLUSH | 1UL << VIRTIO_BLK_F_BLK_SIZE | 1UL << VIRTIO_BLK_F_SEG_MAX);
	u64 span = capacity / (bs / SECTOR);	/* whole blocks on the disk */
	if (span == 0)
		fail("disk smaller than one block (capacity, bs)", capacity, bs);
	if (write)
		for (u64 i = 0; i < bs * depth; i++)
			pool[i] = (u8)(i * 7 + 1);
	u64 hz = tsc_hz();
	u64 next = 0, submitted = 0, done = 0;
	printf("blk: bench start op=%s bs=%lu count=%lu depth=%lu tsc_hz=%lu\n", op, bs, count, depth, hz);
	u64 t0 = rdtsc();
	for (u64 k = 0; k < depth && submitted < count; k++, submitted++) {
		u64 block = rand ? xorshift() % span : next++ % span;
		struct vq_buf b = { pool + k * bs, (u32)bs };
		submit((int)k, write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, block * (bs / SECTOR), &b, 1);
	}
	vq_kick(&vq);
	while (done < count) {
		u32 len;
		int k = complete(&len);
		if (slots[k].status != VIRTIO_BLK_S_OK)
			fail("bench request status (io, status)", done, slots[k].status);
		done++;
		if (submitted < count) {
			u64 block = rand ? xorshift() % span : next++ % span;
			struct vq_buf b = { pool + k * bs, (u32)bs };
			submit(k, write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, block * (bs / SECTOR), &b, 1);
			submitted++;
			vq_kick(&vq);
		}
	}
	u64 cycles = rdtsc() - t0;
	u64 ns = cycles * 1000 / (hz / 1000000);
	printf("blk: bench %s %lu ios in %lu ns\n", op, count, ns);
	/* stay up a while: the host samples the VMM's threads after this line */
	delay_us(cmdline_long("linger_ms", 300) * 1000);
}

/* ---- soak */

static void soak(void)
{
	u64 chunk = cmdline_long("chunk", 256), chunks = cmdline_long("chunks", 8);
	u64 checks = cmdline_long("checks", 4), every = cmdline_long("every", 1), ballast = cmdline_long("ballast_kib", 0) << 10;
	setup(1UL << VIRTIO_BLK_F_FLUSH | 1UL << VIRTIO_BLK_F_BLK_SIZE | 1UL << VIRTIO_BLK_F_SEG_MAX);
	if (chunk < 1 || chunk * SECTOR + ballast > POOL_BYTES || chunk * chunks > capacity)
		fail("bad chunk/chunks/ballast (chunk, chunks)", chunk, chunks);
	for (u64 i = POOL_BYTES - ballast; i < POOL_BYTES; i++)
		pool[i] = (u8)(i * 7 + 1);
	u8 *buf = pool;
	for (u64 c = 0; c < chunks; c++) {
		fill(buf, c * chunk, chunk);
		int st = request(VIRTIO_BLK_T_OUT, c * chunk, buf, chunk * SECTOR, 0);
		if (st != VIRTIO_BLK_S_OK)
			fail("soak write status (chunk, status)", c, st);
	}
	printf("blk: soak start chunk=%lu chunks=%lu\n", chunk, chunks);
	for (u64 r = 0;; r++) {
		u64 sector = (r % chunks) * chunk;
		int st = request(VIRTIO_BLK_T_IN, sector, buf, chunk * SECTOR, 0);
		if (st != VIRTIO_BLK_S_OK)
			fail("soak read status (round, status)", r, st);
		for (u64 k = 0; k < checks; k++)
			check(buf, sector, chunk);
		if (every && r % every == 0)
			printf("blk: soak round %lu ok\n", r);
	}
}

void guest_main(void)
{
	char modebuf[16];
	const char *mode = cmdline_str("mode", modebuf, sizeof modebuf, "verify");
	if (!strcmp(mode, "verify"))
		verify();
	else if (!strcmp(mode, "ro"))
		readonly();
	else if (!strcmp(mode, "bench"))
		bench();
	else if (!strcmp(mode, "soak"))
		soak();
	else
		fail("unknown mode", 0, 0);
}
