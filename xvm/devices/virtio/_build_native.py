"""cffi (API mode) build of the C descriptor-chain walker.

The C walker does exactly what :meth:`xvm.devices.virtio.queue.Queue.walk`
does, check for check and in the same order, and reports the same error
codes (``queue.E_*``); the Python walker stays the reference and both pass
the same tests.  Built by setuptools through ``cffi_modules`` when the
package is installed, or on first use into a cache directory
(:mod:`xvm.devices.virtio.native`).
"""
import cffi

CDEF = """
struct xvm_region { uint64_t gpa; uint64_t size; uintptr_t host; };
struct xvm_piece { uint64_t gpa; uint64_t len; };
int xvm_walk_chain(const struct xvm_region *regions, uint32_t nregions,
                   uintptr_t desc_table, uint32_t queue_size, uint32_t head,
                   int indirect_ok, struct xvm_piece *out, uint32_t max_out,
                   uint32_t *n_readable, uint32_t *n_total, uint64_t *err_value);
struct xvm_blk_result { uint32_t type; uint32_t used; uint64_t bytes; };
int xvm_blk_request(const struct xvm_region *regions, uint32_t nregions,
                    uintptr_t desc_table, uint32_t queue_size, uint32_t head,
                    int indirect_ok, struct xvm_piece *scratch, uint32_t max_scratch,
                    uint64_t capacity, int readonly, int fd,
                    struct xvm_blk_result *result);
int xvm_net_rx(const struct xvm_region *regions, uint32_t nregions,
               uintptr_t desc_table, uint32_t queue_size, int indirect_ok,
               uintptr_t avail_ring, uintptr_t used_ring, uint32_t next_avail,
               uint32_t next_used, int event_idx, int mergeable,
               const unsigned char *frame, uint32_t length,
               struct xvm_piece *scratch, uint32_t max_scratch, uint32_t *consumed);
int64_t xvm_net_tx(const struct xvm_region *regions, uint32_t nregions,
                   uintptr_t desc_table, uint32_t queue_size, uint32_t head, int indirect_ok,
                   struct xvm_piece *scratch, uint32_t max_scratch, uint32_t features, int fd);
"""

SOURCE = r"""
#include <stdint.h>
#include <string.h>

struct xvm_region { uint64_t gpa; uint64_t size; uintptr_t host; };
struct xvm_piece { uint64_t gpa; uint64_t len; };

/* virtio 1.2 §2.7.5 struct virtq_desc, little-endian (x86). */
struct virtq_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };

#define VIRTQ_DESC_F_NEXT     1
#define VIRTQ_DESC_F_WRITE    2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_DESC_SIZE       16

/* Error codes: keep in step with xvm/devices/virtio/queue.py E_*. */
enum {
    E_HEAD_RANGE = 1, E_TOO_LONG = 2, E_INDIRECT_NOT_NEGOTIATED = 3, E_NESTED_INDIRECT = 4,
    E_INDIRECT_WITH_NEXT = 5, E_INDIRECT_LEN = 6, E_INDIRECT_NOT_IN_RAM = 7, E_TOTAL_LEN = 8,
    E_BUFFER_NOT_IN_RAM = 9, E_READABLE_AFTER_WRITABLE = 10, E_NEXT_RANGE = 11,
    E_OUT_FULL = 12,
};

/* The region holding gpa (regions sorted by gpa, non-overlapping), or NULL. */
static const struct xvm_region *find_region(const struct xvm_region *r, uint32_t n, uint64_t gpa)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r[mid].gpa <= gpa)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    r = &r[lo - 1];
    return gpa - r->gpa < r->size ? r : NULL;
}

/* Host address of [gpa, gpa+len) if it lies wholly inside one region, else 0. */
static uintptr_t host_range(const struct xvm_region *r, uint32_t n, uint64_t gpa, uint64_t len)
{
    const struct xvm_region *c = find_region(r, n, gpa);
    if (!c)
        return 0;
    uint64_t off = gpa - c->gpa;
    if (len > c->size - off)
        return 0;
    return c->host + off;
}

int xvm_walk_chain(const struct xvm_region *regions, uint32_t nregions,
                   uintptr_t desc_table, uint32_t queue_size, uint32_t head,
                   int indirect_ok, struct xvm_piece *out, uint32_t max_out,
                   uint32_t *n_readable, uint32_t *n_total, uint64_t *err_value)
{
    const unsigned char *table = (const unsigned char *)desc_table;
    uint32_t table_len = queue_size, index = head, count = 0, nout = 0, nread = 0;
    int in_indirect = 0, seen_writable = 0;
    uint64_t total = 0;

    /* §2.7.6: ring[] entries index the descriptor table. */
    if (head >= queue_size) {
        *err_value = head;
        return E_HEAD_RANGE;
    }
    for (;;) {
        struct virtq_desc d;
        /* §2.7.5.3.1: no chain longer than Queue Size, counted afresh in an indirect
         * table; this bounds every loop (§2.7.5.2). */
        if (++count > queue_size) {
            *err_value = queue_size;
            return E_TOO_LONG;
        }
        /* One read of the guest's descriptor: later changes by the guest are not seen. */
        memcpy(&d, table + (size_t)VIRTQ_DESC_SIZE * index, sizeof d);
        __asm__ __volatile__("" ::: "memory");
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            uintptr_t t;
            if (!indirect_ok)                   /* §2.7.5.3.1 */
                return E_INDIRECT_NOT_NEGOTIATED;
            if (in_indirect)                    /* §2.7.5.3.1 one table per descriptor */
                return E_NESTED_INDIRECT;
            if (d.flags & VIRTQ_DESC_F_NEXT)    /* §2.7.5.3.1 not both INDIRECT and NEXT */
                return E_INDIRECT_WITH_NEXT;
            if (d.len == 0 || d.len % VIRTQ_DESC_SIZE) {  /* §2.7.5.3 */
                *err_value = d.len;
                return E_INDIRECT_LEN;
            }
            t = host_range(regions, nregions, d.addr, d.len);
            if (!t) {                           /* §2.7.5.3 */
                *err_value = d.addr;
                return E_INDIRECT_NOT_IN_RAM;
            }
            table = (const unsigned char *)t;
            table_len = d.len / VIRTQ_DESC_SIZE;
            in_indirect = 1;
            index = 0;
            count = 0;
            continue;
        }
        total += d.len;                         /* §2.7.5.2 at most 2^32 bytes */
        if (total > (1ULL << 32)) {
            *err_value = total;
            return E_TOTAL_LEN;
        }
        if (d.len) {
            uint64_t gpa = d.addr, len = d.len;
            int writable = d.flags & VIRTQ_DESC_F_WRITE;
            while (len) {                       /* §2.7.5: buffers are guest RAM */
                const struct xvm_region *c = find_region(regions, nregions, gpa);
                uint64_t take;
                if (!c) {
                    *err_value = gpa;
                    return E_BUFFER_NOT_IN_RAM;
                }
                take = c->size - (gpa - c->gpa);
                if (take > len)
                    take = len;
                if (nout >= max_out)
                    return E_OUT_FULL;
                out[nout].gpa = gpa;
                out[nout].len = take;
                nout++;
                gpa += take;
                len -= take;
            }
            if (writable) {
                seen_writable = 1;
            } else {
                if (seen_writable)              /* §2.7.4.2 writable after readable */
                    return E_READABLE_AFTER_WRITABLE;
                nread = nout;
            }
        }
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            break;
        if (d.next >= table_len) {              /* §2.7.5 next stays in the table */
            *err_value = d.next;
            return E_NEXT_RANGE;
        }
        index = d.next;
    }
    *n_readable = nread;
    *n_total = nout;
    return 0;
}

/* ---- virtio-blk (virtio 1.2 §5.2.6): the IN/OUT request path ----------------------------
 * The common requests, done without Python: walk the chain, parse the header, preadv or
 * pwritev straight between the image and guest RAM, write the status byte.  Anything else
 * (another request type, any malformed request, an I/O error) returns XVM_BLK_FALLBACK
 * having written nothing to the guest, and the Python reference path
 * (xvm/devices/block/request.py parse, device.py execute) does it, errors and all. */
#include <errno.h>
#include <sys/uio.h>

struct xvm_blk_result { uint32_t type; uint32_t used; uint64_t bytes; };

#define XVM_BLK_DONE 0
#define XVM_BLK_FALLBACK 1
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_S_OK 0
#define BLK_HEADER_SIZE 16
#define BLK_SECTOR_SHIFT 9
#define BLK_IOV_BATCH 1024  /* IOV_MAX */

static uintptr_t piece_host(const struct xvm_region *r, uint32_t n, const struct xvm_piece *p)
{
    return host_range(r, n, p->gpa, p->len);
}

/* preadv/pwritev the pieces [first, last) with the first `skip` bytes of `first` left out
 * and `trim` bytes of the last piece left out; 0, or -1 (errno set). */
static int blk_io(const struct xvm_region *r, uint32_t n, int fd, int write,
                  const struct xvm_piece *pieces, uint32_t first, uint32_t last,
                  uint64_t skip, uint64_t trim, uint64_t offset)
{
    struct iovec iov[BLK_IOV_BATCH];
    uint32_t i = first;
    while (i < last) {
        int cnt = 0;
        uint64_t want = 0;
        for (; i < last && cnt < BLK_IOV_BATCH; i++) {
            uint64_t len = pieces[i].len;
            uintptr_t host = piece_host(r, n, &pieces[i]);
            if (i == first) { host += skip; len -= skip; }
            if (i == last - 1) len -= trim;
            if (!len) continue;
            iov[cnt].iov_base = (void *)host;
            iov[cnt].iov_len = len;
            want += len;
            cnt++;
        }
        int at = 0;
        while (want) {
            ssize_t done = write ? pwritev(fd, iov + at, cnt - at, (off_t)offset)
                                 : preadv(fd, iov + at, cnt - at, (off_t)offset);
            if (done < 0) {
                if (errno == EINTR) continue;
                return -1;
            }
            if (done == 0) {
                if (write) { errno = EIO; return -1; }
                /* the file shrank under us: what is not there reads as zero */
                for (; at < cnt; at++)
                    memset(iov[at].iov_base, 0, iov[at].iov_len);
                break;
            }
            offset += done;
            want -= done;
            while (done && at < cnt) {
                if ((size_t)done >= iov[at].iov_len) { done -= iov[at].iov_len; at++; }
                else {
                    iov[at].iov_base = (char *)iov[at].iov_base + done;
                    iov[at].iov_len -= done;
                    done = 0;
                }
            }
        }
    }
    return 0;
}

int xvm_blk_request(const struct xvm_region *regions, uint32_t nregions,
                    uintptr_t desc_table, uint32_t queue_size, uint32_t head,
                    int indirect_ok, struct xvm_piece *p, uint32_t max_scratch,
                    uint64_t capacity, int readonly, int fd,
                    struct xvm_blk_result *result)
{
    uint32_t nread, ntotal, i;
    uint64_t err, readable_len = 0, writable_len = 0, got = 0, length, other;
    unsigned char header[BLK_HEADER_SIZE];
    uint32_t type;
    uint64_t sector;

    if (xvm_walk_chain(regions, nregions, desc_table, queue_size, head, indirect_ok,
                       p, max_scratch, &nread, &ntotal, &err))
        return XVM_BLK_FALLBACK;  /* the Python walker raises the same ChainError */
    for (i = 0; i < nread; i++)
        readable_len += p[i].len;
    for (i = nread; i < ntotal; i++)
        writable_len += p[i].len;
    /* §5.2.6: a 16-byte device-readable header first, a device-writable status byte last. */
    if (writable_len == 0 || readable_len < BLK_HEADER_SIZE)
        return XVM_BLK_FALLBACK;
    for (i = 0; i < nread && got < BLK_HEADER_SIZE; i++) {
        uint64_t take = p[i].len < BLK_HEADER_SIZE - got ? p[i].len : BLK_HEADER_SIZE - got;
        memcpy(header + got, (const void *)piece_host(regions, nregions, &p[i]), take);
        got += take;
    }
    __asm__ __volatile__("" ::: "memory");
    memcpy(&type, header, 4);
    memcpy(&sector, header + 8, 8);
    if (type == VIRTIO_BLK_T_IN) {
        length = writable_len - 1;
        other = readable_len - BLK_HEADER_SIZE;
    } else if (type == VIRTIO_BLK_T_OUT) {
        length = readable_len - BLK_HEADER_SIZE;
        other = writable_len - 1;
        if (readonly)
            return XVM_BLK_FALLBACK;  /* §5.2.6.2 IOERR, counted by Python */
    } else {
        return XVM_BLK_FALLBACK;
    }
    /* §5.2.6 data in one direction only; §5.2.6.1 a multiple of 512 bytes, within capacity. */
    if (other || length % 512 || sector > capacity || (length >> BLK_SECTOR_SHIFT) > capacity - sector)
        return XVM_BLK_FALLBACK;
    if (length) {
        int rc;
        if (type == VIRTIO_BLK_T_IN) {
            rc = blk_io(regions, nregions, fd, 0, p, nread, ntotal, 0, 1,
                        sector << BLK_SECTOR_SHIFT);
        } else {
            /* skip the header: find the piece where the data starts */
            uint64_t skip = BLK_HEADER_SIZE;
            uint32_t first = 0;
            while (skip >= p[first].len) { skip -= p[first].len; first++; }
            rc = blk_io(regions, nregions, fd, 1, p, first, nread, skip, 0,
                        sector << BLK_SECTOR_SHIFT);
        }
        if (rc)
            return XVM_BLK_FALLBACK;  /* Python retries and reports the BackendError */
    }
    {
        struct xvm_piece *last = &p[ntotal - 1];
        unsigned char *status = (unsigned char *)piece_host(regions, nregions, last) + last->len - 1;
        *status = VIRTIO_BLK_S_OK;
    }
    result->type = type;
    result->bytes = length;
    result->used = (uint32_t)((type == VIRTIO_BLK_T_IN ? length : 0) + 1);
    return XVM_BLK_DONE;
}

/* ---- virtio-net receive (virtio 1.2 §5.1.6.3, §5.1.6.4): one frame into rx buffers ------
 * frame[0:length] starts with the 12-byte virtio_net_hdr_v1.  Chains are taken from the
 * available ring in order, checked as xvm/devices/net/device.py _next_rx_chain checks them,
 * filled, and returned on the used ring with num_buffers set (§5.1.6.4).  Returns
 * XVM_RX_DONE (*consumed chains used), XVM_RX_STARVED (too few buffers: nothing consumed,
 * bytes written into still-available buffers are the device's to overwrite), or
 * XVM_RX_FALLBACK (a malformed or unusable chain, a corrupt ring: nothing consumed; the
 * Python reference handles it, errors and all). */
#define XVM_RX_DONE 0
#define XVM_RX_STARVED 1
#define XVM_RX_FALLBACK 2
#define VIRTIO_NET_HDR_SIZE 12

int xvm_net_rx(const struct xvm_region *regions, uint32_t nregions,
               uintptr_t desc_table, uint32_t queue_size, int indirect_ok,
               uintptr_t avail_ring, uintptr_t used_ring, uint32_t next_avail,
               uint32_t next_used, int event_idx, int mergeable,
               const unsigned char *frame, uint32_t length,
               struct xvm_piece *p, uint32_t max_scratch, uint32_t *consumed)
{
    volatile uint16_t *avail = (volatile uint16_t *)avail_ring;
    volatile uint16_t *used16 = (volatile uint16_t *)used_ring;
    volatile uint32_t *elems = (volatile uint32_t *)(used_ring + 4);
    uint16_t avail_idx = avail[1];
    uint32_t pending = (uint16_t)(avail_idx - next_avail), n = 0, offset = 0;
    unsigned char *num_buffers[2] = {0, 0};

    __asm__ __volatile__("" ::: "memory");
    if (pending > queue_size || length < VIRTIO_NET_HDR_SIZE)  /* §2.7.6: Python raises */
        return XVM_RX_FALLBACK;
    /* Pass 1: are there enough usable buffers?  Nothing is written. */
    {
        uint64_t room = 0;
        while (room < length) {
            uint32_t nread, ntotal, i;
            uint64_t err, wlen = 0;
            if (n == pending)
                return XVM_RX_STARVED;
            if (xvm_walk_chain(regions, nregions, desc_table, queue_size,
                               avail[2 + (uint16_t)(next_avail + n) % queue_size], indirect_ok,
                               p, max_scratch, &nread, &ntotal, &err))
                return XVM_RX_FALLBACK;
            for (i = 0; i < ntotal; i++)
                wlen += p[i].len;
            /* §5.1.6.3: device-writable only, the first buffer large enough for the header;
             * without MRG_RXBUF each buffer holds a whole packet (§5.1.6.3.1). */
            if (nread || wlen < VIRTIO_NET_HDR_SIZE || (!mergeable && wlen < length))
                return XVM_RX_FALLBACK;
            room += wlen;
            n++;
        }
    }
    /* Pass 2: copy into those chains (walked again: a guest that changed them meanwhile
     * gets the Python path's answer). */
    for (uint32_t k = 0; k < n; k++) {
        uint32_t nread, ntotal, i, chain_used = 0;
        uint64_t err;
        uint16_t head = avail[2 + (uint16_t)(next_avail + k) % queue_size];
        if (xvm_walk_chain(regions, nregions, desc_table, queue_size, head, indirect_ok,
                           p, max_scratch, &nread, &ntotal, &err) || nread)
            return XVM_RX_FALLBACK;
        for (i = 0; i < ntotal && offset < length; i++) {
            uint32_t take = p[i].len < length - offset ? (uint32_t)p[i].len : length - offset;
            unsigned char *host = (unsigned char *)host_range(regions, nregions, p[i].gpa, p[i].len);
            memcpy(host, frame + offset, take);
            if (offset <= 10 && 10 < offset + take)
                num_buffers[0] = host + (10 - offset);
            if (offset <= 11 && 11 < offset + take)
                num_buffers[1] = host + (11 - offset);
            offset += take;
            chain_used += take;
        }
        {
            uint32_t slot = (uint16_t)(next_used + k) % queue_size;
            elems[2 * slot] = head;
            elems[2 * slot + 1] = chain_used;
        }
    }
    if (offset < length || !num_buffers[0] || !num_buffers[1])
        return XVM_RX_FALLBACK;
    /* §5.1.6.4 num_buffers: the chains the packet spans (1 without MRG_RXBUF). */
    num_buffers[0][0] = n & 0xff;
    num_buffers[1][0] = n >> 8;
    __asm__ __volatile__("" ::: "memory");
    used16[1] = (uint16_t)(next_used + n);  /* §2.7.8.2: elements before idx */
    if (event_idx)                            /* §2.7.10 avail_event */
        used16[2 + 4 * queue_size] = (uint16_t)(next_avail + n);
    *consumed = n;
    return XVM_RX_DONE;
}

/* ---- virtio-net transmit (virtio 1.2 §5.1.6.2): one chain's packet to the TAP ----------
 * The checks of xvm/devices/net/request.py parse_tx, in its order; the packet (header
 * first) goes out in one writev.  Returns the frame's length without the header, or
 * XVM_TX_FALLBACK (-1) having sent nothing: a malformed packet or a failed write is the
 * Python path's to count and report.  `features` holds the low 32 feature bits. */
#define XVM_TX_FALLBACK (-1)
#define NET_ETH_HLEN 14
#define NET_MAX_FRAME 65550
#define NET_F_CSUM 0
#define NET_F_HOST_TSO4 11
#define NET_F_HOST_TSO6 12
#define NET_F_HOST_ECN 13
#define NET_F_HOST_UFO 14
#define NET_HDR_F_NEEDS_CSUM 1
#define NET_GSO_NONE 0
#define NET_GSO_TCPV4 1
#define NET_GSO_UDP 3
#define NET_GSO_TCPV6 4
#define NET_GSO_ECN 0x80
#define NET_TX_IOV 1024

int64_t xvm_net_tx(const struct xvm_region *regions, uint32_t nregions,
                   uintptr_t desc_table, uint32_t queue_size, uint32_t head, int indirect_ok,
                   struct xvm_piece *p, uint32_t max_scratch, uint32_t features, int fd)
{
    uint32_t nread, ntotal, i;
    uint64_t err, total = 0, got = 0, frame_len;
    unsigned char h[VIRTIO_NET_HDR_SIZE];
    struct iovec iov[NET_TX_IOV];
    uint8_t flags, gso_type, gso;
    uint16_t gso_size, csum_start, csum_offset;

    if (xvm_walk_chain(regions, nregions, desc_table, queue_size, head, indirect_ok,
                       p, max_scratch, &nread, &ntotal, &err))
        return XVM_TX_FALLBACK;
    if (ntotal != nread || nread > NET_TX_IOV)  /* §5.1.6.2 device-readable only */
        return XVM_TX_FALLBACK;
    for (i = 0; i < nread; i++) {
        iov[i].iov_base = (void *)piece_host(regions, nregions, &p[i]);
        iov[i].iov_len = p[i].len;
        total += p[i].len;
    }
    /* §5.1.6: the 12-byte header and an Ethernet header at least; at most MAX_FRAME. */
    if (total < VIRTIO_NET_HDR_SIZE + NET_ETH_HLEN)
        return XVM_TX_FALLBACK;
    frame_len = total - VIRTIO_NET_HDR_SIZE;
    if (frame_len > NET_MAX_FRAME)
        return XVM_TX_FALLBACK;
    for (i = 0; i < nread && got < VIRTIO_NET_HDR_SIZE; i++) {
        uint64_t take = p[i].len < VIRTIO_NET_HDR_SIZE - got ? p[i].len : VIRTIO_NET_HDR_SIZE - got;
        memcpy(h + got, iov[i].iov_base, take);
        got += take;
    }
    __asm__ __volatile__("" ::: "memory");
    flags = h[0];
    gso_type = h[1];
    memcpy(&gso_size, h + 4, 2);
    memcpy(&csum_start, h + 6, 2);
    memcpy(&csum_offset, h + 8, 2);
    if (flags || gso_type) {
        /* §5.1.6.2.1: only NEEDS_CSUM, and only with VIRTIO_NET_F_CSUM, inside the frame */
        if (flags & ~NET_HDR_F_NEEDS_CSUM)
            return XVM_TX_FALLBACK;
        if (flags & NET_HDR_F_NEEDS_CSUM) {
            if (!(features & (1u << NET_F_CSUM)))
                return XVM_TX_FALLBACK;
            if ((uint64_t)csum_start + csum_offset + 2 > frame_len)
                return XVM_TX_FALLBACK;
        }
        gso = gso_type & ~NET_GSO_ECN;
        if (gso != NET_GSO_NONE) {
            uint32_t need = gso == NET_GSO_TCPV4 ? NET_F_HOST_TSO4 : gso == NET_GSO_TCPV6
                            ? NET_F_HOST_TSO6 : gso == NET_GSO_UDP ? NET_F_HOST_UFO : 32;
            if (need == 32 || !(features & (1u << need)))
                return XVM_TX_FALLBACK;
            if (!(flags & NET_HDR_F_NEEDS_CSUM) || gso_size == 0)
                return XVM_TX_FALLBACK;
            if ((gso_type & NET_GSO_ECN) && !(features & (1u << NET_F_HOST_ECN)))
                return XVM_TX_FALLBACK;
        } else if (gso_type & NET_GSO_ECN) {
            return XVM_TX_FALLBACK;
        }
    }
    for (;;) {
        ssize_t n = writev(fd, iov, (int)nread);
        if (n >= 0)
            break;
        if (errno != EINTR)
            return XVM_TX_FALLBACK;
    }
    return (int64_t)frame_len;
}
"""


def make_builder(module_name="xvm.devices.virtio._native"):
    builder = cffi.FFI()
    builder.cdef(CDEF)
    builder.set_source(module_name, SOURCE, extra_compile_args=["-O2", "-std=gnu11"])
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
