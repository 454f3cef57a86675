/*
 * net: a polling virtio-mmio virtio-net driver (virtio 1.2 §4.2, §5.1).
 *
 * Finds the first virtio-net device by probing the virtio-mmio windows at
 * 0xD000_0000 + i*0x1000 for the magic "virt", brings it up (VERSION_1, MAC),
 * posts receive buffers, broadcasts up to `count=` frames (EtherType 0x88b5),
 * one every 100 ms, whose payload names this guest (`id=`), and prints every
 * 0x88b5 frame it receives ("RX <src mac> <payload>").  It goes on for `ms=`
 * milliseconds after it has received `expect=` frames (or, without expect=,
 * after its last send) -- still sending, so a peer that started later hears
 * it too -- then prints a summary and powers off.  `pingpong=N` (with id=0 sending, id=1 echoing) measures
 * round trips instead; `flood=1` sends the `count=` frames back to back.  No interrupts:
 * the used rings are polled.
 */
#include "rt.h"

const char guest_name[] = "net";

#define MMIO_BASE	0xd0000000UL
#define MMIO_STRIDE	0x1000UL
#define MMIO_SLOTS	8

/* §4.2.2 MMIO Device Register Layout */
#define R_MAGIC		0x000
#define R_VERSION	0x004
#define R_DEVICE_ID	0x008
#define R_DEV_FEAT	0x010
#define R_DEV_FEAT_SEL	0x014
#define R_DRV_FEAT	0x020
#define R_DRV_FEAT_SEL	0x024
#define R_QUEUE_SEL	0x030
#define R_QUEUE_NUM_MAX	0x034
#define R_QUEUE_NUM	0x038
#define R_QUEUE_READY	0x044
#define R_QUEUE_NOTIFY	0x050
#define R_INT_STATUS	0x060
#define R_INT_ACK	0x064
#define R_STATUS	0x070
#define R_DESC_LO	0x080
#define R_DESC_HI	0x084
#define R_AVAIL_LO	0x090
#define R_AVAIL_HI	0x094
#define R_USED_LO	0x0a0
#define R_USED_HI	0x0a4
#define R_CONFIG	0x100

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8

#define F_MAC 5
#define F_VERSION_1 32	/* bit 0 of the high word */

#define QSZ 16
#define BUFSZ 2048
#define HDRSZ 12
#define ETHERTYPE 0x88b5

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSZ]; u16 used_event; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSZ]; u16 avail_event; };

struct vq {
	struct desc desc[QSZ] __attribute__((aligned(16)));
	struct avail avail __attribute__((aligned(2)));
	struct used used __attribute__((aligned(4096)));
	u16 last_used;
	u16 free_head;
	int index;
};

static struct vq rxq __attribute__((aligned(4096)));
static struct vq txq __attribute__((aligned(4096)));
static u8 rxbufs[QSZ][BUFSZ] __attribute__((aligned(4096)));
static u8 txbufs[QSZ][BUFSZ] __attribute__((aligned(4096)));
static volatile u8 *dev;
static u8 mac[6];

static u32 r32(u32 off) { return *(volatile u32 *)(dev + off); }
static void w32(u32 off, u32 v) { *(volatile u32 *)(dev + off) = v; }

static int find_device(void)
{
	for (int i = 0; i < MMIO_SLOTS; i++) {
		dev = (volatile u8 *)(MMIO_BASE + i * MMIO_STRIDE);
		if (r32(R_MAGIC) == 0x74726976 && r32(R_VERSION) == 2 && r32(R_DEVICE_ID) == 1)
			return i;
	}
	return -1;
}

static void setup_queue(struct vq *q, int index)
{
	q->index = index;
	w32(R_QUEUE_SEL, index);
	u32 max = r32(R_QUEUE_NUM_MAX);
	if (max < QSZ) {
		printf("queue %d: max size %u < %d\n", index, max, QSZ);
		poweroff();
	}
	w32(R_QUEUE_NUM, QSZ);
	u64 d = (u64)q->desc, a = (u64)&q->avail, u = (u64)&q->used;
	w32(R_DESC_LO, (u32)d); w32(R_DESC_HI, d >> 32);
	w32(R_AVAIL_LO, (u32)a); w32(R_AVAIL_HI, a >> 32);
	w32(R_USED_LO, (u32)u); w32(R_USED_HI, u >> 32);
	w32(R_QUEUE_READY, 1);
}

static void publish(struct vq *q, u16 head)
{
	q->avail.ring[q->avail.idx % QSZ] = head;
	barrier();
	q->avail.idx++;
	barrier();
}

static void post_rx(u16 i)
{
	rxq.desc[i].addr = (u64)rxbufs[i];
	rxq.desc[i].len = BUFSZ;
	rxq.desc[i].flags = 2;	/* VIRTQ_DESC_F_WRITE */
	publish(&rxq, i);
}

static u64 sent, received, tx_done;

/*
 * How many new used elements the device has published since `last`.  A value
 * more than the queue size ahead is not a real index (§2.7.8: the device
 * cannot use more buffers than were made available) but a torn read of a
 * used.idx being updated byte by byte; it is ignored until it settles.
 */
static u64 torn_reads;
static u16 torn_last, torn_seen;

static u16 used_pending(struct vq *q)
{
	u16 idx = *(volatile u16 *)&q->used.idx;
	u16 n = idx - q->last_used;
	if (n <= QSZ)
		return n;
	if (!torn_reads++) {
		torn_last = q->last_used;
		torn_seen = idx;
	}
	return 0;
}

static void reclaim_tx(void)
{
	u16 n = used_pending(&txq);
	txq.last_used += n;
	tx_done += n;
}

static void send_frame(const u8 *dst, const char *payload, u64 plen)
{
	/* Reclaim finished tx buffers; with QSZ slots in flight at most. */
	reclaim_tx();
	while (sent - tx_done >= QSZ) {
		cpu_relax();
		reclaim_tx();
	}
	u16 i = sent % QSZ;
	u8 *b = txbufs[i];
	memset(b, 0, HDRSZ);	/* struct virtio_net_hdr: no offloads */
	u8 *f = b + HDRSZ;
	memcpy(f, dst, 6);
	memcpy(f + 6, mac, 6);
	f[12] = ETHERTYPE >> 8;
	f[13] = ETHERTYPE & 0xff;
	memcpy(f + 14, payload, plen);
	u64 len = 14 + plen;
	if (len < 60) {
		memset(f + len, 0, 60 - len);
		len = 60;
	}
	txq.desc[i].addr = (u64)b;
	txq.desc[i].len = HDRSZ + len;
	txq.desc[i].flags = 0;
	publish(&txq, i);
	w32(R_QUEUE_NOTIFY, 1);
	sent++;
}

/* One received frame, or 0; copies its payload into out (NUL-terminated). */
static int poll_rx(u8 *src, char *out, u64 outsz)
{
	while (used_pending(&rxq)) {
		barrier();
		struct used_elem e = rxq.used.ring[rxq.last_used % QSZ];
		rxq.last_used++;
		u8 *f = rxbufs[e.id] + HDRSZ;
		int ours = e.len >= HDRSZ + 14 && f[12] == (ETHERTYPE >> 8) && f[13] == (ETHERTYPE & 0xff);
		if (ours) {
			u64 n = e.len - HDRSZ - 14;
			if (n >= outsz)
				n = outsz - 1;
			memcpy(src, f + 6, 6);
			memcpy(out, f + 14, n);
			out[n] = 0;
		}
		post_rx(e.id);
		w32(R_QUEUE_NOTIFY, 0);
		if (ours)
			return 1;
	}
	return 0;
}

static u64 now_us(void)
{
	return rdtsc() / (tsc_hz() / 1000000);
}

static const u8 broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static void pingpong(long id, long rounds)
{
	u8 src[6];
	char buf[64];
	if (id == 1) {	/* echo every frame back to its sender */
		for (;;) {
			if (poll_rx(src, buf, sizeof buf)) {
				if (!strcmp(buf, "stop"))
					break;
				send_frame(src, buf, strlen(buf) + 1);
			}
		}
		printf("PONG done\n");
		return;
	}
	/* id 0: wait until the peer answers, then time `rounds` round trips. */
	u64 t0 = 0;
	for (long i = -1; i < rounds; i++) {
		if (i == 0)
			t0 = now_us();
		u64 deadline = now_us() + (i < 0 ? 200000 : 2000000);
		send_frame(broadcast, "ping", 5);
		while (!poll_rx(src, buf, sizeof buf)) {
			if (now_us() > deadline) {
				if (i < 0) {
					i = -2;	/* the peer is not up yet: try again */
				} else {
					printf("PING timeout at round %ld\n", i);
					return;
				}
				break;
			}
		}
	}
	u64 us = now_us() - t0;
	send_frame(broadcast, "stop", 5);
	printf("PING rounds=%ld total_us=%lu rtt_us=%lu\n", rounds, us, us / (rounds ? rounds : 1));
}

void guest_main(void)
{
	long id = cmdline_long("id", 0);
	long count = cmdline_long("count", 5);
	long ms = cmdline_long("ms", 3000);
	long expect = cmdline_long("expect", -1);
	long rounds = cmdline_long("pingpong", 0);
	long flood = cmdline_long("flood", 0);

	int slot = find_device();
	if (slot < 0) {
		printf("NET no virtio-net device\n");
		return;
	}
	w32(R_STATUS, 0);
	w32(R_STATUS, S_ACK);
	w32(R_STATUS, S_ACK | S_DRIVER);
	w32(R_DEV_FEAT_SEL, 1);
	u32 hi = r32(R_DEV_FEAT);
	w32(R_DEV_FEAT_SEL, 0);
	u32 lo = r32(R_DEV_FEAT);
	if (!(hi & 1) || !(lo & (1u << F_MAC))) {
		printf("NET device lacks VERSION_1 or MAC: %x %x\n", hi, lo);
		return;
	}
	w32(R_DRV_FEAT_SEL, 1);
	w32(R_DRV_FEAT, 1);	/* VIRTIO_F_VERSION_1 */
	w32(R_DRV_FEAT_SEL, 0);
	w32(R_DRV_FEAT, 1u << F_MAC);
	w32(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	if (!(r32(R_STATUS) & S_FEATURES_OK)) {
		printf("NET FEATURES_OK refused\n");
		return;
	}
	setup_queue(&rxq, 0);
	setup_queue(&txq, 1);
	for (int i = 0; i < 6; i++)
		mac[i] = *(volatile u8 *)(dev + R_CONFIG + i);
	w32(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	for (u16 i = 0; i < QSZ; i++)
		post_rx(i);
	w32(R_QUEUE_NOTIFY, 0);
	printf("NET up slot=%d mac=%02x:%02x:%02x:%02x:%02x:%02x id=%ld\n", slot,
	       mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], id);

	if (rounds) {
		pingpong(id, rounds);
		return;
	}
	char payload[64], buf[128];
	u8 src[6];
	u64 next_send = now_us(), end = 0, start = now_us();
	for (;;) {
		u64 t = now_us();
		if ((long)sent < count && t >= next_send) {
			int n = snprintf(payload, sizeof payload, "hello from guest %ld seq %lu", id, sent);
			send_frame(broadcast, payload, n + 1);
			next_send = flood ? t : t + 100000;
		}
		if (poll_rx(src, buf, sizeof buf)) {
			received++;
			printf("RX %02x:%02x:%02x:%02x:%02x:%02x %s\n", src[0], src[1], src[2], src[3],
			       src[4], src[5], buf);
		}
		if (!end && (expect >= 0 ? (long)received >= expect : (long)sent >= count))
			end = t + ms * 1000;
		if (end && t >= end)
			break;
	}
	while (tx_done < sent) {	/* every frame handed to the device */
		reclaim_tx();
		cpu_relax();
	}
	if (flood)
		printf("NET flood sent=%lu us=%lu\n", sent, now_us() - start);
	if (torn_reads)
		printf("NET torn used.idx reads=%lu first: last_used=%#x read=%#x\n", torn_reads,
		       torn_last, torn_seen);
	printf("NET done sent=%lu received=%lu\n", sent, received);
}
