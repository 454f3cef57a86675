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
 *
 * `mq=1` is multiqueue (§5.1.6.5.5): the driver negotiates VIRTIO_NET_F_MQ and
 * VIRTIO_NET_F_CTRL_VQ, sets up rx0, tx0, rx1, tx1 and the control queue, sends
 * control commands a device must refuse (0 pairs, max_virtqueue_pairs + 1, an RX-mode
 * command it did not negotiate, a truncated command) and prints each ack ("MQ ctrl
 * <what> ack=<n>"), enables 2 pairs, then sends UDP/IPv4 frames of `flows=` flows
 * (default 4; flow k from port 40000+k to 50000+k, on transmit pair k % 2) every
 * 100 ms and prints every UDP reply it receives with the receive pair it came on
 * ("RX q=<pair> flow=<k> <payload>").  It ends `ms=` after every flow has had a
 * reply, or after `timeout=` ms (default 20000), with a summary line.
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
#define F_CTRL_VQ 17
#define F_MQ 22
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

#define PAIRS 2

/* One receiveq/transmitq pair and its buffers (§5.1.2: rx is 2(N-1), tx 2(N-1)+1). */
struct pair {
	struct vq rxv __attribute__((aligned(4096)));
	struct vq txv __attribute__((aligned(4096)));
	u8 rxb[QSZ][BUFSZ] __attribute__((aligned(4096)));
	u8 txb[QSZ][BUFSZ] __attribute__((aligned(4096)));
	u64 nsent, ndone, nrecv;
};

/* Pair 0 under the names the single-queue driver below uses. */
static struct pair pairs[PAIRS];
#define rxq (pairs[0].rxv)
#define txq (pairs[0].txv)
#define rxbufs (pairs[0].rxb)
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

static void post_rx_on(struct pair *p, u16 i)
{
	p->rxv.desc[i].addr = (u64)p->rxb[i];
	p->rxv.desc[i].len = BUFSZ;
	p->rxv.desc[i].flags = 2;	/* VIRTQ_DESC_F_WRITE */
	publish(&p->rxv, i);
}

static void post_rx(u16 i) { post_rx_on(&pairs[0], i); }

#define sent (pairs[0].nsent)
#define tx_done (pairs[0].ndone)
#define received (pairs[0].nrecv)

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

static void reclaim_tx_on(struct pair *p)
{
	u16 n = used_pending(&p->txv);
	p->txv.last_used += n;
	p->ndone += n;
}

static void reclaim_tx(void) { reclaim_tx_on(&pairs[0]); }

/* A free tx buffer of pair p (waiting for one while QSZ are in flight). */
static u8 *tx_buffer(struct pair *p)
{
	reclaim_tx_on(p);
	while (p->nsent - p->ndone >= QSZ) {
		cpu_relax();
		reclaim_tx_on(p);
	}
	u8 *b = p->txb[p->nsent % QSZ];
	memset(b, 0, HDRSZ);	/* struct virtio_net_hdr: no offloads */
	return b;
}

/* Hand the frame in tx_buffer(p) (len bytes after the header) to the device. */
static void tx_publish(struct pair *p, u64 len)
{
	u16 i = p->nsent % QSZ;
	if (len < 60) {
		memset(p->txb[i] + HDRSZ + len, 0, 60 - len);
		len = 60;
	}
	p->txv.desc[i].addr = (u64)p->txb[i];
	p->txv.desc[i].len = HDRSZ + len;
	p->txv.desc[i].flags = 0;
	publish(&p->txv, i);
	w32(R_QUEUE_NOTIFY, p->txv.index);
	p->nsent++;
}

static void send_frame(const u8 *dst, const char *payload, u64 plen)
{
	struct pair *p = &pairs[0];
	u8 *f = tx_buffer(p) + HDRSZ;
	memcpy(f, dst, 6);
	memcpy(f + 6, mac, 6);
	f[12] = ETHERTYPE >> 8;
	f[13] = ETHERTYPE & 0xff;
	memcpy(f + 14, payload, plen);
	tx_publish(p, 14 + plen);
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

static void multiqueue(long flows, long ms, long timeout_ms);
static u16 max_pairs = 1;
static struct vq ctrlq __attribute__((aligned(4096)));

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
	long mq = cmdline_long("mq", 0);

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
	u32 want = 1u << F_MAC;
	if (mq) {
		u32 mqf = (1u << F_CTRL_VQ) | (1u << F_MQ);
		if ((lo & mqf) != mqf) {
			printf("MQ device lacks VIRTIO_NET_F_MQ or CTRL_VQ: %x\n", lo);
			return;
		}
		want |= mqf;
	}
	w32(R_DRV_FEAT_SEL, 1);
	w32(R_DRV_FEAT, 1);	/* VIRTIO_F_VERSION_1 */
	w32(R_DRV_FEAT_SEL, 0);
	w32(R_DRV_FEAT, want);
	w32(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	if (!(r32(R_STATUS) & S_FEATURES_OK)) {
		printf("NET FEATURES_OK refused\n");
		return;
	}
	setup_queue(&rxq, 0);
	setup_queue(&txq, 1);
	if (mq) {
		/* §5.1.4 max_virtqueue_pairs; §5.1.2 controlq comes after all the pairs. */
		max_pairs = *(volatile u16 *)(dev + R_CONFIG + 8);
		if (max_pairs < PAIRS) {
			printf("MQ max_virtqueue_pairs=%u < %d\n", max_pairs, PAIRS);
			return;
		}
		for (int p = 1; p < PAIRS; p++) {
			setup_queue(&pairs[p].rxv, 2 * p);
			setup_queue(&pairs[p].txv, 2 * p + 1);
		}
		setup_queue(&ctrlq, 2 * max_pairs);
	}
	for (int i = 0; i < 6; i++)
		mac[i] = *(volatile u8 *)(dev + R_CONFIG + i);
	w32(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	for (int p = 0; p < (mq ? PAIRS : 1); p++) {
		for (u16 i = 0; i < QSZ; i++)
			post_rx_on(&pairs[p], i);
		w32(R_QUEUE_NOTIFY, pairs[p].rxv.index);
	}
	printf("NET up slot=%d mac=%02x:%02x:%02x:%02x:%02x:%02x id=%ld\n", slot,
	       mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], id);

	if (rounds) {
		pingpong(id, rounds);
		return;
	}
	if (mq) {
		multiqueue(cmdline_long("flows", 4), ms, cmdline_long("timeout", 20000));
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

/* ---- multiqueue (mq=1) ------------------------------------------------------------ */

/* §5.1.6.5 struct virtio_net_ctrl: class, command, data (device-readable), ack (writable). */
static struct { u8 cls, cmd; u8 data[14]; } ctrl_cmd __attribute__((aligned(16)));
static volatile u8 ctrl_ack;

/* Send one control command with `len` bytes of data; its ack, or -1 if the device used
 * the buffer without writing one, or -2 if it did not answer within a second. */
static int ctrl(u8 cls, u8 cmd, const void *data, u32 len)
{
	ctrl_cmd.cls = cls;
	ctrl_cmd.cmd = cmd;
	memcpy(ctrl_cmd.data, data, len);
	ctrl_ack = 0xee;
	u16 d = ctrlq.free_head;
	ctrlq.free_head = (d + 2) % QSZ;
	ctrlq.desc[d].addr = (u64)&ctrl_cmd;
	ctrlq.desc[d].len = 2 + len;
	ctrlq.desc[d].flags = 1;	/* VIRTQ_DESC_F_NEXT */
	ctrlq.desc[d].next = (d + 1) % QSZ;
	ctrlq.desc[(d + 1) % QSZ].addr = (u64)&ctrl_ack;
	ctrlq.desc[(d + 1) % QSZ].len = 1;
	ctrlq.desc[(d + 1) % QSZ].flags = 2;	/* VIRTQ_DESC_F_WRITE */
	publish(&ctrlq, d);
	w32(R_QUEUE_NOTIFY, ctrlq.index);
	u64 deadline = now_us() + 1000000;
	while (!used_pending(&ctrlq)) {
		if (now_us() > deadline)
			return -2;
		cpu_relax();
	}
	barrier();
	struct used_elem e = ctrlq.used.ring[ctrlq.last_used % QSZ];
	ctrlq.last_used++;
	return e.len >= 1 ? ctrl_ack : -1;
}

#define CTRL_RX 0
#define CTRL_MQ 4
#define FLOWS_MAX 8

static u16 csum16(const u8 *p, u64 n)
{
	u32 sum = 0;
	for (u64 i = 0; i + 1 < n; i += 2)
		sum += (p[i] << 8) | p[i + 1];
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

static void put16(u8 *p, u16 v) { p[0] = v >> 8; p[1] = v; }
static u16 get16(const u8 *p) { return (p[0] << 8) | p[1]; }

/* UDP/IPv4 from 10.218.0.2:40000+flow to 10.218.0.3:50000+flow, broadcast, on pair p. */
static void send_udp(int p, long flow, const char *payload, u64 plen)
{
	u8 *f = tx_buffer(&pairs[p]) + HDRSZ;
	memcpy(f, broadcast, 6);
	memcpy(f + 6, mac, 6);
	put16(f + 12, 0x0800);
	u8 *ip = f + 14, *udp = ip + 20;
	memset(ip, 0, 20);
	ip[0] = 0x45;
	put16(ip + 2, 20 + 8 + plen);
	ip[8] = 64;
	ip[9] = 17;
	const u8 src[4] = {10, 218, 0, 2}, dst[4] = {10, 218, 0, 3};
	memcpy(ip + 12, src, 4);
	memcpy(ip + 16, dst, 4);
	put16(ip + 10, csum16(ip, 20));
	put16(udp, 40000 + flow);
	put16(udp + 2, 50000 + flow);
	put16(udp + 4, 8 + plen);
	put16(udp + 6, 0);	/* no UDP checksum (IPv4) */
	memcpy(udp + 8, payload, plen);
	tx_publish(&pairs[p], 14 + 20 + 8 + plen);
}

/* A UDP reply to one of our flows on pair p: its flow (payload copied), or -1. */
static long poll_udp(int p, char *out, u64 outsz)
{
	struct pair *q = &pairs[p];
	while (used_pending(&q->rxv)) {
		barrier();
		struct used_elem e = q->rxv.used.ring[q->rxv.last_used % QSZ];
		q->rxv.last_used++;
		u8 *f = q->rxb[e.id] + HDRSZ;
		long flow = -1;
		if (e.len >= HDRSZ + 14 + 28 && get16(f + 12) == 0x0800 && f[14 + 9] == 17) {
			u8 *udp = f + 14 + 20;
			long k = (long)get16(udp + 2) - 40000;
			if (k >= 0 && k < FLOWS_MAX && get16(udp) == 50000 + k) {
				u64 n = e.len - HDRSZ - 14 - 28;
				if (n >= outsz)
					n = outsz - 1;
				memcpy(out, udp + 8, n);
				out[n] = 0;
				flow = k;
			}
		}
		post_rx_on(q, e.id);
		w32(R_QUEUE_NOTIFY, q->rxv.index);
		if (flow >= 0)
			return flow;
	}
	return -1;
}

static void multiqueue(long flows, long ms, long timeout_ms)
{
	if (flows < 1 || flows > FLOWS_MAX)
		flows = 4;
	u16 v;
	/* What a device must refuse (§5.1.6.5.5, §5.1.6.5.1), each answered VIRTIO_NET_ERR. */
	v = 0;
	printf("MQ ctrl pairs-0 ack=%d\n", ctrl(CTRL_MQ, 0, &v, 2));
	v = max_pairs + 1;
	printf("MQ ctrl pairs-over-max ack=%d\n", ctrl(CTRL_MQ, 0, &v, 2));
	v = 2;
	printf("MQ ctrl pairs-truncated ack=%d\n", ctrl(CTRL_MQ, 0, &v, 1));
	u8 on = 1;
	printf("MQ ctrl rx-promisc ack=%d\n", ctrl(CTRL_RX, 0, &on, 1));
	v = PAIRS;
	int ack = ctrl(CTRL_MQ, 0, &v, 2);
	printf("MQ pairs=%d ack=%d max=%u\n", PAIRS, ack, max_pairs);
	if (ack != 0)
		return;

	char payload[64], buf[128];
	u64 got[PAIRS][FLOWS_MAX] = {{0}};
	long answered = 0;
	u64 start = now_us(), next_send = start, end = 0, seq = 0;
	for (;;) {
		u64 t = now_us();
		if (t >= next_send) {
			for (long k = 0; k < flows; k++) {
				int n = snprintf(payload, sizeof payload, "mq pair %ld flow %ld seq %lu",
						 k % PAIRS, k, seq);
				send_udp(k % PAIRS, k, payload, n + 1);
			}
			seq++;
			next_send = t + 100000;
		}
		for (int p = 0; p < PAIRS; p++) {
			long k = poll_udp(p, buf, sizeof buf);
			if (k < 0)
				continue;
			if (!got[0][k] && !got[1][k])
				answered++;
			got[p][k]++;
			pairs[p].nrecv++;
			printf("RX q=%d flow=%ld %s\n", p, k, buf);
		}
		if (!end && answered >= flows)
			end = t + ms * 1000;
		if (end && t >= end)
			break;
		if (t - start > (u64)timeout_ms * 1000) {
			printf("MQ timeout: %ld of %ld flows answered\n", answered, flows);
			break;
		}
	}
	for (int p = 0; p < PAIRS; p++)
		while (pairs[p].ndone < pairs[p].nsent) {
			reclaim_tx_on(&pairs[p]);
			cpu_relax();
		}
	printf("MQ done sent0=%lu sent1=%lu received0=%lu received1=%lu\n", pairs[0].nsent,
	       pairs[1].nsent, pairs[0].nrecv, pairs[1].nrecv);
}
