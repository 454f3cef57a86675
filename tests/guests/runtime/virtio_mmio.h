/*
 * A polling virtio-mmio driver library for the test guests (virtio 1.2 §4.2,
 * split virtqueues §2.7).  Modern devices only (Version 2, VIRTIO_F_VERSION_1).
 *
 *	struct vmmio_dev d;
 *	vmmio_find(2, 0, &d);				// first virtio-blk
 *	vmmio_begin(&d, wanted, &accepted);		// reset, ACK, DRIVER, features, FEATURES_OK
 *	vq_init(&d, &q, 0, 128, ring_mem);		// split ring in guest memory
 *	vmmio_driver_ok(&d);
 *	head = vq_add(&q, bufs, nout, nin, cookie);	// device-readable bufs first
 *	vq_kick(&d, &q);
 *	while (vq_poll(&q, &len, &cookie) < 0) cpu_relax();
 *
 * Devices are found in the `virtio_mmio.device=<size>@<base>:<irq>` entries of
 * the command line (QEMU -M microvm,acpi=off appends them), else in xvm's
 * window (0xD000_0000 + i*0x1000) and QEMU microvm's (0xFEB0_0000 + i*0x200).
 * Unclaimed MMIO reads as all ones (xvm) or zeros (QEMU): neither is "virt".  Memory is identity-mapped, so a buffer's address
 * is its guest-physical address.  Not thread-safe: one cpu per queue.
 */
#ifndef GUEST_VIRTIO_MMIO_H
#define GUEST_VIRTIO_MMIO_H

#include "rt.h"

/* §4.2.2 MMIO Device Register Layout */
#define VIRTIO_MMIO_MAGIC_VALUE		0x000	/* 0x74726976 "virt" */
#define VIRTIO_MMIO_VERSION		0x004
#define VIRTIO_MMIO_DEVICE_ID		0x008
#define VIRTIO_MMIO_VENDOR_ID		0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES	0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL	0x014
#define VIRTIO_MMIO_DRIVER_FEATURES	0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL	0x024
#define VIRTIO_MMIO_QUEUE_SEL		0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX	0x034
#define VIRTIO_MMIO_QUEUE_NUM		0x038
#define VIRTIO_MMIO_QUEUE_READY		0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY	0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS	0x060
#define VIRTIO_MMIO_INTERRUPT_ACK	0x064
#define VIRTIO_MMIO_STATUS		0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW	0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH	0x084
#define VIRTIO_MMIO_QUEUE_AVAIL_LOW	0x090
#define VIRTIO_MMIO_QUEUE_AVAIL_HIGH	0x094
#define VIRTIO_MMIO_QUEUE_USED_LOW	0x0a0
#define VIRTIO_MMIO_QUEUE_USED_HIGH	0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION	0x0fc
#define VIRTIO_MMIO_CONFIG		0x100

#define VIRTIO_MMIO_MAGIC		0x74726976

/* §2.1 Device Status Field */
#define VIRTIO_CONFIG_S_ACKNOWLEDGE	1
#define VIRTIO_CONFIG_S_DRIVER		2
#define VIRTIO_CONFIG_S_DRIVER_OK	4
#define VIRTIO_CONFIG_S_FEATURES_OK	8
#define VIRTIO_CONFIG_S_NEEDS_RESET	64
#define VIRTIO_CONFIG_S_FAILED		128

/* §6 Reserved Feature Bits */
#define VIRTIO_F_VERSION_1		32

/* §2.7.5 / §2.7.6 / §2.7.8 */
#define VIRTQ_DESC_F_NEXT		1
#define VIRTQ_DESC_F_WRITE		2
#define VIRTQ_AVAIL_F_NO_INTERRUPT	1
#define VIRTQ_USED_F_NO_NOTIFY		1

#define VIRTIO_ID_NET			1
#define VIRTIO_ID_BLOCK			2

#define VQ_MAX_SIZE			256

struct virtq_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct virtq_avail { u16 flags; u16 idx; u16 ring[]; };
struct virtq_used_elem { u32 id; u32 len; };
struct virtq_used { u16 flags; u16 idx; struct virtq_used_elem ring[]; };

/* Bytes of ring memory for a queue of `n` entries (4 KiB aligned, see vq_init). */
#define VQ_RING_BYTES(n) \
	((((16 * (n) + 6 + 2 * (n)) + 4095) & ~4095) + ((6 + 8 * (n) + 4095) & ~4095))
/* Static storage for one ring: VQ_RING_MEM(rxring, 128); */
#define VQ_RING_MEM(name, n) static u8 name[VQ_RING_BYTES(n)] __attribute__((aligned(4096)))

struct vmmio_dev {
	volatile u8 *base;
	u32 device_id;
	u32 irq;		/* from the command line; 0 if unknown */
	u64 features;		/* negotiated (after vmmio_begin) */
};

struct vq_buf {
	const void *addr;
	u32 len;
};

struct virtq {
	struct vmmio_dev *dev;
	u16 index;		/* queue number */
	u16 size;
	u16 num_free;
	u16 free_head;
	u16 avail_idx;		/* driver's shadow of avail->idx */
	u16 last_used;
	struct virtq_desc *desc;
	struct virtq_avail *avail;
	struct virtq_used *used;
	void *cookie[VQ_MAX_SIZE];	/* per head, returned by vq_poll */
	u16 chain_len[VQ_MAX_SIZE];
};

/* ---- registers */
u32 vmmio_read32(const struct vmmio_dev *d, u32 off);
void vmmio_write32(const struct vmmio_dev *d, u32 off, u32 v);
u8 vmmio_config8(const struct vmmio_dev *d, u32 off);
u32 vmmio_config32(const struct vmmio_dev *d, u32 off);
u64 vmmio_config64(const struct vmmio_dev *d, u32 off);	/* generation-checked, §4.2.3.1 */

/* ---- discovery: the `nth` (0-based) device with `device_id`; 0 on success, -1 if none */
int vmmio_find(u32 device_id, int nth, struct vmmio_dev *d);
/* The base addresses probed so far are printed by this, for failure messages. */
void vmmio_describe_probe(void);

/*
 * §3.1.1 initialisation up to FEATURES_OK: reset, ACKNOWLEDGE, DRIVER, read the
 * device features, accept `wanted & offered` | VERSION_1, FEATURES_OK and check
 * it stuck.  Returns 0, or -1 with a message printed (no VERSION_1, refused,
 * legacy device).  *offered (may be NULL) gets the device's features.
 */
int vmmio_begin(struct vmmio_dev *d, u64 wanted, u64 *offered);
void vmmio_driver_ok(struct vmmio_dev *d);
u32 vmmio_status(const struct vmmio_dev *d);
void vmmio_fail(struct vmmio_dev *d);	/* set FAILED */
static inline int vmmio_has(const struct vmmio_dev *d, int bit) { return (d->features >> bit) & 1; }

/*
 * §4.2.3.2 queue setup: `size` (a power of 2, <= VQ_MAX_SIZE) is clamped to
 * QueueNumMax; `mem` is VQ_RING_BYTES(size) bytes, 4 KiB aligned (VQ_RING_MEM).
 * Used-buffer interrupts are suppressed (VIRTQ_AVAIL_F_NO_INTERRUPT): poll.
 * Returns the size used, or -1 (queue absent or already live).
 */
int vq_init(struct vmmio_dev *d, struct virtq *q, u16 index, u16 size, void *mem);

/*
 * Add one chain: `nout` device-readable buffers then `nin` device-writable
 * ones, and make it available (not yet notified).  Returns the head, or -1
 * if fewer than nout+nin descriptors are free.
 */
int vq_add(struct virtq *q, const struct vq_buf *bufs, int nout, int nin, void *cookie);
/* Notify the device (QueueNotify) unless it asked not to be (VIRTQ_USED_F_NO_NOTIFY). */
void vq_kick(struct virtq *q);
/* One completed chain: its head (and *len, *cookie), its descriptors freed; -1 if none yet. */
int vq_poll(struct virtq *q, u32 *len, void **cookie);
/* Wait for one completed chain; -1 after `timeout_us` (0: forever). */
int vq_wait(struct virtq *q, u32 *len, void **cookie, u64 timeout_us);
/* Chains the device has not completed yet. */
static inline u16 vq_in_flight(const struct virtq *q)
{
	return (u16)(q->avail_idx - q->last_used);
}

#endif
