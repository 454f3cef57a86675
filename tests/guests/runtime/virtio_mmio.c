/* A polling virtio-mmio driver library: see virtio_mmio.h. */
#include "virtio_mmio.h"

#define XVM_MMIO_BASE	0xd0000000UL
#define XVM_MMIO_STRIDE	0x1000UL
#define XVM_MMIO_SLOTS	32
/* QEMU -M microvm (hw/i386/microvm.h VIRTIO_MMIO_BASE): listed on the command line
 * only with acpi=off; with ACPI only in the DSDT, so probe it as well. */
#define MICROVM_MMIO_BASE	0xfeb00000UL
#define MICROVM_MMIO_STRIDE	0x200UL
#define MICROVM_MMIO_SLOTS	24
#define MAX_CANDIDATES	64

static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

u32 vmmio_read32(const struct vmmio_dev *d, u32 off) { return *(volatile u32 *)(d->base + off); }
void vmmio_write32(const struct vmmio_dev *d, u32 off, u32 v) { *(volatile u32 *)(d->base + off) = v; }
u8 vmmio_config8(const struct vmmio_dev *d, u32 off) { return d->base[VIRTIO_MMIO_CONFIG + off]; }
u32 vmmio_config32(const struct vmmio_dev *d, u32 off) { return vmmio_read32(d, VIRTIO_MMIO_CONFIG + off); }

u64 vmmio_config64(const struct vmmio_dev *d, u32 off)
{
	/* §4.2.3.1 / §2.5.1: re-read until ConfigGeneration is stable across the access. */
	for (;;) {
		u32 gen = vmmio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION);
		u64 v = vmmio_config32(d, off) | (u64)vmmio_config32(d, off + 4) << 32;
		if (vmmio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION) == gen)
			return v;
	}
}

u32 vmmio_status(const struct vmmio_dev *d) { return vmmio_read32(d, VIRTIO_MMIO_STATUS); }

static void set_status(struct vmmio_dev *d, u32 bits)
{
	vmmio_write32(d, VIRTIO_MMIO_STATUS, vmmio_status(d) | bits);
}

void vmmio_fail(struct vmmio_dev *d) { set_status(d, VIRTIO_CONFIG_S_FAILED); }
void vmmio_driver_ok(struct vmmio_dev *d) { set_status(d, VIRTIO_CONFIG_S_DRIVER_OK); }

/* ---- discovery */

struct candidate { u64 base; u32 irq; };
static struct candidate candidates[MAX_CANDIDATES];
static int ncandidates;

/* number with optional 0x prefix and K/M/G suffix; advances *p */
static u64 parse_num(const char **p)
{
	const char *s = *p;
	u64 v = 0;
	int base = 10;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		base = 16, s += 2;
	for (;; s++) {
		int dg;
		if (*s >= '0' && *s <= '9')
			dg = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			dg = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			dg = *s - 'A' + 10;
		else
			break;
		v = v * base + dg;
	}
	if (*s == 'K' || *s == 'k')
		v <<= 10, s++;
	else if (*s == 'M' || *s == 'm')
		v <<= 20, s++;
	else if (*s == 'G' || *s == 'g')
		v <<= 30, s++;
	*p = s;
	return v;
}

static void add_candidate(u64 base, u32 irq)
{
	for (int i = 0; i < ncandidates; i++)
		if (candidates[i].base == base)
			return;
	if (ncandidates < MAX_CANDIDATES)
		candidates[ncandidates++] = (struct candidate){ base, irq };
}

static void collect_candidates(void)
{
	static const char key[] = "virtio_mmio.device=";
	if (ncandidates)
		return;
	/* Linux's virtio_mmio.device=<size>@<baseaddr>:<irq>[:<id>] */
	const char *p = cmdline();
	while (*p) {
		while (*p == ' ')
			p++;
		if (!strncmp(p, key, sizeof key - 1)) {
			const char *s = p + sizeof key - 1;
			parse_num(&s);			/* size */
			if (*s == '@') {
				s++;
				u64 base = parse_num(&s);
				u32 irq = 0;
				if (*s == ':') {
					s++;
					irq = (u32)parse_num(&s);
				}
				/* below 4 GiB: that is what the runtime's page tables map */
				if (base && base < (1UL << 32))
					add_candidate(base, irq);
			}
		}
		while (*p && *p != ' ')
			p++;
	}
	if (ncandidates)
		return;
	for (u64 i = 0; i < XVM_MMIO_SLOTS; i++)
		add_candidate(XVM_MMIO_BASE + i * XVM_MMIO_STRIDE, 0);
	/* highest first, the order in which QEMU fills its transports */
	for (u64 i = MICROVM_MMIO_SLOTS; i-- > 0;)
		add_candidate(MICROVM_MMIO_BASE + i * MICROVM_MMIO_STRIDE, 0);
}

int vmmio_find(u32 device_id, int nth, struct vmmio_dev *d)
{
	collect_candidates();
	for (int i = 0; i < ncandidates; i++) {
		struct vmmio_dev t = { (volatile u8 *)candidates[i].base, 0, candidates[i].irq, 0 };
		if (vmmio_read32(&t, VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MMIO_MAGIC)
			continue;
		t.device_id = vmmio_read32(&t, VIRTIO_MMIO_DEVICE_ID);
		if (t.device_id != device_id)	/* 0: an empty transport */
			continue;
		if (nth-- == 0) {
			*d = t;
			return 0;
		}
	}
	return -1;
}

void vmmio_describe_probe(void)
{
	collect_candidates();
	printf("virtio-mmio: probed %d windows (first 0x%lx, last 0x%lx)\n", ncandidates,
	       ncandidates ? candidates[0].base : 0UL,
	       ncandidates ? candidates[ncandidates - 1].base : 0UL);
}

int vmmio_begin(struct vmmio_dev *d, u64 wanted, u64 *offered)
{
	u32 version = vmmio_read32(d, VIRTIO_MMIO_VERSION);
	if (version != 2) {
		printf("virtio-mmio at 0x%lx: version %u, not 2 (legacy devices unsupported)\n",
		       (u64)d->base, version);
		return -1;
	}
	/* §3.1.1 steps 1-3 */
	vmmio_write32(d, VIRTIO_MMIO_STATUS, 0);
	while (vmmio_status(d) != 0)	/* §4.2.3.1: reset completes when 0 reads back */
		cpu_relax();
	set_status(d, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	set_status(d, VIRTIO_CONFIG_S_DRIVER);
	/* step 4: features, 32 bits at a time */
	vmmio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	u64 dev = vmmio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES);
	vmmio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	dev |= (u64)vmmio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	if (offered)
		*offered = dev;
	if (!(dev >> VIRTIO_F_VERSION_1 & 1)) {
		printf("virtio-mmio at 0x%lx: device does not offer VIRTIO_F_VERSION_1 (features 0x%lx)\n",
		       (u64)d->base, dev);
		vmmio_fail(d);
		return -1;
	}
	u64 drv = (wanted & dev) | (1UL << VIRTIO_F_VERSION_1);
	vmmio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	vmmio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)drv);
	vmmio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	vmmio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(drv >> 32));
	/* steps 5-6 */
	set_status(d, VIRTIO_CONFIG_S_FEATURES_OK);
	if (!(vmmio_status(d) & VIRTIO_CONFIG_S_FEATURES_OK)) {
		printf("virtio-mmio at 0x%lx: FEATURES_OK refused for features 0x%lx\n", (u64)d->base, drv);
		vmmio_fail(d);
		return -1;
	}
	d->features = drv;
	return 0;
}

/* ---- split virtqueues (§2.7) */

int vq_init(struct vmmio_dev *d, struct virtq *q, u16 index, u16 size, void *mem)
{
	vmmio_write32(d, VIRTIO_MMIO_QUEUE_SEL, index);
	if (vmmio_read32(d, VIRTIO_MMIO_QUEUE_READY)) {
		printf("virtio-mmio at 0x%lx: queue %u already ready\n", (u64)d->base, index);
		return -1;
	}
	u32 max = vmmio_read32(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (max == 0) {
		printf("virtio-mmio at 0x%lx: queue %u not available\n", (u64)d->base, index);
		return -1;
	}
	if (size > VQ_MAX_SIZE)
		size = VQ_MAX_SIZE;
	while (size > max)
		size >>= 1;
	u8 *m = mem;
	memset(m, 0, VQ_RING_BYTES(size));
	q->dev = d;
	q->index = index;
	q->size = size;
	q->desc = (struct virtq_desc *)m;
	q->avail = (struct virtq_avail *)(m + 16 * size);
	q->used = (struct virtq_used *)(m + ((16 * size + 6 + 2 * size + 4095) & ~4095));
	q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;	/* §2.7.7: we poll */
	for (u16 i = 0; i < size; i++) {
		q->desc[i].next = (u16)(i + 1);
		q->cookie[i] = 0;
		q->chain_len[i] = 0;
	}
	q->free_head = 0;
	q->num_free = size;
	q->avail_idx = 0;
	q->last_used = 0;
	vmmio_write32(d, VIRTIO_MMIO_QUEUE_NUM, size);
	u64 a = (u64)q->desc, b = (u64)q->avail, c = (u64)q->used;
	vmmio_write32(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)a);
	vmmio_write32(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (u32)(a >> 32));
	vmmio_write32(d, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (u32)b);
	vmmio_write32(d, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (u32)(b >> 32));
	vmmio_write32(d, VIRTIO_MMIO_QUEUE_USED_LOW, (u32)c);
	vmmio_write32(d, VIRTIO_MMIO_QUEUE_USED_HIGH, (u32)(c >> 32));
	vmmio_write32(d, VIRTIO_MMIO_QUEUE_READY, 1);
	return size;
}

int vq_add(struct virtq *q, const struct vq_buf *bufs, int nout, int nin, void *cookie)
{
	int n = nout + nin;
	if (n <= 0 || n > q->num_free)
		return -1;
	u16 head = q->free_head, i = head;
	for (int k = 0; k < n; k++) {
		struct virtq_desc *dsc = &q->desc[i];
		dsc->addr = (u64)bufs[k].addr;
		dsc->len = bufs[k].len;
		dsc->flags = (k >= nout ? VIRTQ_DESC_F_WRITE : 0) | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
		i = dsc->next;
	}
	q->free_head = i;
	q->num_free -= n;
	q->cookie[head] = cookie;
	q->chain_len[head] = (u16)n;
	/* §2.7.13: ring entry, then (after a write barrier) the index */
	q->avail->ring[q->avail_idx & (q->size - 1)] = head;
	barrier();	/* x86 stores are ordered; keep the compiler from reordering */
	q->avail_idx++;
	*(volatile u16 *)&q->avail->idx = q->avail_idx;
	return head;
}

void vq_kick(struct virtq *q)
{
	/* §2.7.10: the idx store must be visible before the flags are read */
	mb();
	if (!(*(volatile u16 *)&q->used->flags & VIRTQ_USED_F_NO_NOTIFY))
		vmmio_write32(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

int vq_poll(struct virtq *q, u32 *len, void **cookie)
{
	u16 ready = *(volatile u16 *)&q->used->idx - q->last_used;
	/* More than is in flight is not a real index but a torn read of an idx being
	 * written (§2.7.8: the device cannot use more than was made available). */
	if (ready == 0 || ready > vq_in_flight(q))
		return -1;
	barrier();	/* read the element after the index (x86 loads are ordered) */
	struct virtq_used_elem e = q->used->ring[q->last_used & (q->size - 1)];
	q->last_used++;
	u16 head = (u16)e.id;
	if (head >= q->size || !q->chain_len[head]) {
		printf("virtq %u: device returned bad head %u\n", q->index, head);
		halt();
	}
	/* put the chain back on the free list */
	u16 i = head;
	for (u16 k = 1; k < q->chain_len[head]; k++)
		i = q->desc[i].next;
	q->desc[i].next = q->free_head;
	q->free_head = head;
	q->num_free += q->chain_len[head];
	q->chain_len[head] = 0;
	if (len)
		*len = e.len;
	if (cookie)
		*cookie = q->cookie[head];
	return head;
}

int vq_wait(struct virtq *q, u32 *len, void **cookie, u64 timeout_us)
{
	u64 deadline = timeout_us ? rdtsc() + tsc_hz() / 1000000 * timeout_us : 0;
	for (;;) {
		int h = vq_poll(q, len, cookie);
		if (h >= 0 || (deadline && (s64)(rdtsc() - deadline) > 0))
			return h;
		cpu_relax();
	}
}
