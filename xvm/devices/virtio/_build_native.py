"""cffi (API mode) build of the C descriptor-chain walker.

The C walker does exactly what :meth:`xvm.devices.virtio.queue.Queue.walk`
does, check for check and in the same order, and reports the same error
codes (``queue.E_*``); the Python walker stays the reference and both pass
the same tests.  Built by setuptools through ``cffi_modules`` when the
package is installed, or on first use into a cache directory
(:mod:`xvm.devices.virtio.native`).
"""
import hashlib

import cffi

# xvm_blk_serve's structures (see SOURCE), one text for the declarations and the definitions.
BLK_TURN_STRUCTS = """
struct xvm_blk_queue {
    const struct xvm_region *regions; uint32_t nregions; uintptr_t desc_table;
    uint32_t queue_size; int indirect_ok; uintptr_t avail_ring; uintptr_t used_ring;
    int event_idx; int readonly; int fd; const volatile int *stop;
};
struct xvm_blk_turn {
    uint64_t capacity, parallel_min; uint32_t threads; int32_t nowait;
    uint32_t budget, next_avail, next_used, notified_used; int32_t signalled_used;
    uint32_t notify, head, reaped, reads, writes; uint64_t read_bytes, write_bytes;
};
"""

CDEF = """
struct xvm_region { uint64_t gpa; uint64_t size; uintptr_t host; };
struct xvm_piece { uint64_t gpa; uint64_t len; };
int xvm_walk_chain(const struct xvm_region *regions, uint32_t nregions,
                   uintptr_t desc_table, uint32_t queue_size, uint32_t head,
                   int indirect_ok, struct xvm_piece *out, uint32_t max_out,
                   uint32_t *n_readable, uint32_t *n_total, uint64_t *err_value);
struct xvm_blk_result { uint32_t type; uint32_t used; uint64_t bytes; };
struct xvm_blk_ctx;
struct xvm_blk_ctx *xvm_blk_ctx_new(uint32_t width, uint32_t max_scratch);
void xvm_blk_ctx_free(struct xvm_blk_ctx *ctx);
int xvm_blk_start(struct xvm_blk_ctx *ctx, const struct xvm_region *regions, uint32_t nregions,
                  uintptr_t desc_table, uint32_t queue_size, uint32_t head, int indirect_ok,
                  uint64_t capacity, int readonly, int fd, uint32_t threads,
                  uint64_t parallel_min, int nowait, uint32_t more,
                  struct xvm_blk_result *result);
uint32_t xvm_blk_reap(struct xvm_blk_ctx *ctx, int wait, uint32_t *heads,
                      struct xvm_blk_result *results, uint32_t max);
uint32_t xvm_blk_inflight(struct xvm_blk_ctx *ctx);
uint32_t xvm_blk_pool_peak(int reset);
void xvm_blk_pool_rendezvous(uint32_t n, uint32_t timeout_ms);
int xvm_blk_serve(struct xvm_blk_ctx *ctx, const struct xvm_blk_queue *q,
                  struct xvm_blk_turn *t, uint32_t *heads, struct xvm_blk_result *results);
int xvm_net_rx(const struct xvm_region *regions, uint32_t nregions,
               uintptr_t desc_table, uint32_t queue_size, int indirect_ok,
               uintptr_t avail_ring, uintptr_t used_ring, uint32_t next_avail,
               uint32_t next_used, int event_idx, int mergeable,
               unsigned char *frame, uint32_t length,
               struct xvm_piece *scratch, uint32_t max_scratch, uint32_t *consumed);
int64_t xvm_net_tx(const struct xvm_region *regions, uint32_t nregions,
                   uintptr_t desc_table, uint32_t queue_size, uint32_t head, int indirect_ok,
                   struct xvm_piece *scratch, uint32_t max_scratch, uint32_t features, int fd);
""" + BLK_TURN_STRUCTS

SOURCE = r"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* preadv2, pwritev2 (Python.h defines it already) */
#endif
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
 * pwritev straight between the image and guest RAM, write the status byte; several requests
 * in flight side by side on a small thread pool (xvm_blk_start, xvm_blk_reap).  Anything else
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

/* preadv2/pwritev2 the pieces [first, last) with the first `skip` bytes of `first` left out
 * and `trim` bytes of the last piece left out; 0, -1 (errno set), or BLK_WOULD_BLOCK when
 * `flags` has RWF_NOWAIT and the data is not all at hand (the caller does it again without:
 * a read that stopped half way is simply read again). */
#define BLK_WOULD_BLOCK 2
static int blk_io(const struct xvm_region *r, uint32_t n, int fd, int write,
                  const struct xvm_piece *pieces, uint32_t first, uint32_t last,
                  uint64_t skip, uint64_t trim, uint64_t offset, int flags)
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
            ssize_t done = write ? pwritev2(fd, iov + at, cnt - at, (off_t)offset, flags)
                                 : preadv2(fd, iov + at, cnt - at, (off_t)offset, flags);
            if (flags && (done < 0 || (uint64_t)done < want)) {
                if (done >= 0 || errno == EAGAIN || errno == EOPNOTSUPP || errno == EINTR)
                    return BLK_WOULD_BLOCK;
                return -1;
            }
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

/* One parsed IN/OUT request: its pieces (in its own scratch), what it moves, where. */
struct blk_plan {
    const struct xvm_region *regions;
    uint32_t nregions, type, nread, ntotal;
    int fd;
    uint64_t sector, length;
    struct xvm_piece *p;
    int rc;             /* blk_execute's answer */
};

/* Walk and check one request as xvm/devices/block/request.py parse does; XVM_BLK_DONE with
 * `plan` filled if C can do it, XVM_BLK_FALLBACK (nothing written) if Python must. */
static int blk_parse(const struct xvm_region *regions, uint32_t nregions,
                     uintptr_t desc_table, uint32_t queue_size, uint32_t head,
                     int indirect_ok, struct xvm_piece *p, uint32_t max_scratch,
                     uint64_t capacity, int readonly, int fd, struct blk_plan *plan)
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
    plan->regions = regions;
    plan->nregions = nregions;
    plan->fd = fd;
    plan->type = type;
    plan->nread = nread;
    plan->ntotal = ntotal;
    plan->sector = sector;
    plan->length = length;
    plan->p = p;
    return XVM_BLK_DONE;
}

/* Move a parsed request's data and write its status byte (not when the I/O failed or, with
 * RWF_NOWAIT in `flags`, would block).  0, -1 or BLK_WOULD_BLOCK. */
static int blk_execute(struct blk_plan *plan, int flags)
{
    const struct xvm_region *regions = plan->regions;
    uint32_t nregions = plan->nregions;
    struct xvm_piece *p = plan->p;
    if (plan->length) {
        int rc;
        if (plan->type == VIRTIO_BLK_T_IN) {
            rc = blk_io(regions, nregions, plan->fd, 0, p, plan->nread, plan->ntotal, 0, 1,
                        plan->sector << BLK_SECTOR_SHIFT, flags);
        } else {
            /* skip the header: find the piece where the data starts */
            uint64_t skip = BLK_HEADER_SIZE;
            uint32_t first = 0;
            while (skip >= p[first].len) { skip -= p[first].len; first++; }
            rc = blk_io(regions, nregions, plan->fd, 1, p, first, plan->nread, skip, 0,
                        plan->sector << BLK_SECTOR_SHIFT, flags);
        }
        if (rc)
            return rc;
    }
    {
        struct xvm_piece *last = &p[plan->ntotal - 1];
        unsigned char *status = (unsigned char *)piece_host(regions, nregions, last) + last->len - 1;
        *status = VIRTIO_BLK_S_OK;
    }
    return 0;
}

/* ---- requests in flight side by side: a per-queue context and a shared I/O pool ----------
 * xvm_blk_start parses one request into a free slot of the queue's context and either does
 * it at once (small, or a read the page cache has: RWF_NOWAIT) or hands it to the pool,
 * a few helper threads shared by every disk of the process; xvm_blk_reap collects finished
 * ones (waiting for one if asked).  The caller (the queue's worker) writes the used ring;
 * it starts a request only if it does not overlap on the disk a write in flight (or any
 * request in flight, if it writes), so the result is the ring-order one, and it drains
 * everything in flight before any request the C path does not do (FLUSH first of all:
 * a flush covers the writes before it).  One mutex guards the pool's job list, the
 * contexts' finished lists and the counters; a slot's plan is written only while the slot is
 * free.  After fork() the child has no helpers and a fresh mutex (pthread_atfork); with no
 * helper at all (thread creation refused) requests are done at once. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#define BLK_POOL_MAX 32
#define XVM_BLK_STARTED 0       /* in flight: xvm_blk_reap returns it */
#define XVM_BLK_DONE_NOW 1      /* done (or failed: used 0) already, *result filled */
#define XVM_BLK_NOT_C 2         /* Python's: drain, then the reference path */
#define XVM_BLK_CONFLICT 3      /* overlaps a request in flight: drain, then start again */
#define SLOT_FREE 0
#define SLOT_BUSY 1

struct blk_slot {
    struct blk_plan plan;
    uint32_t head;
    int state;
    struct xvm_blk_ctx *ctx;
    struct blk_slot *next;      /* in the pool's job list, then in ctx's finished list */
};

struct xvm_blk_ctx {
    uint32_t width, inflight;
    struct blk_slot *slots;
    struct xvm_piece *scratch;  /* max_scratch pieces per slot */
    uint32_t max_scratch;
    struct blk_slot *finished, **finished_tail;
    pthread_cond_t completed;
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t pool_met = PTHREAD_COND_INITIALIZER;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static struct blk_slot *pool_jobs, **pool_jobs_tail = &pool_jobs;
static uint32_t pool_threads, pool_running, pool_peak, pool_rendezvous, pool_rendezvous_ms;

static void pool_prepare(void) { pthread_mutex_lock(&pool_lock); }
static void pool_parent(void) { pthread_mutex_unlock(&pool_lock); }
static void pool_child(void)
{
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
    pool_lock = lock;
    pool_work = cond;
    pool_met = cond;
    pool_jobs = NULL;
    pool_jobs_tail = &pool_jobs;
    pool_threads = pool_running = 0;
}
static void pool_setup(void) { pthread_atfork(pool_prepare, pool_parent, pool_child); }

static void *pool_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&pool_lock);
    for (;;) {
        struct blk_slot *s = pool_jobs;
        struct xvm_blk_ctx *ctx;
        if (!s) {
            pthread_cond_wait(&pool_work, &pool_lock);
            continue;
        }
        pool_jobs = s->next;
        if (!pool_jobs)
            pool_jobs_tail = &pool_jobs;
        if (++pool_running > pool_peak)
            pool_peak = pool_running;
        if (pool_rendezvous) {  /* tests: hold until that many run at once */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += pool_rendezvous_ms / 1000;
            until.tv_nsec += (long)(pool_rendezvous_ms % 1000) * 1000000;
            if (until.tv_nsec >= 1000000000) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000;
            }
            pthread_cond_broadcast(&pool_met);
            while (pool_rendezvous && pool_running < pool_rendezvous)
                if (pthread_cond_timedwait(&pool_met, &pool_lock, &until))
                    break;
        }
        pthread_mutex_unlock(&pool_lock);
        s->plan.rc = blk_execute(&s->plan, 0);
        pthread_mutex_lock(&pool_lock);
        pool_running--;
        ctx = s->ctx;
        s->next = NULL;
        *ctx->finished_tail = s;
        ctx->finished_tail = &s->next;
        pthread_cond_signal(&ctx->completed);
    }
    return NULL;
}

/* Under pool_lock: `want` helpers (at most BLK_POOL_MAX), as far as the system lets us;
 * they block every signal (signals are for the VMM's own threads). */
static void pool_grow(uint32_t want)
{
    pthread_attr_t attr;
    sigset_t all, old;
    if (want > BLK_POOL_MAX)
        want = BLK_POOL_MAX;
    if (pool_threads >= want)
        return;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (pool_threads < want) {
        pthread_t t;
        if (pthread_create(&t, &attr, pool_main, NULL))
            break;
        pool_threads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
}

uint32_t xvm_blk_pool_peak(int reset)
{
    uint32_t peak;
    pthread_mutex_lock(&pool_lock);
    peak = pool_peak;
    if (reset)
        pool_peak = 0;
    pthread_mutex_unlock(&pool_lock);
    return peak;
}

/* Tests: each pool job waits until `n` run at once (0: off), `timeout_ms` at most. */
void xvm_blk_pool_rendezvous(uint32_t n, uint32_t timeout_ms)
{
    pthread_mutex_lock(&pool_lock);
    pool_rendezvous = n;
    pool_rendezvous_ms = timeout_ms;
    pthread_cond_broadcast(&pool_met);
    pthread_mutex_unlock(&pool_lock);
}

struct xvm_blk_ctx *xvm_blk_ctx_new(uint32_t width, uint32_t max_scratch)
{
    struct xvm_blk_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return NULL;
    ctx->width = width;
    ctx->max_scratch = max_scratch;
    ctx->slots = calloc(width, sizeof *ctx->slots);
    ctx->scratch = calloc((size_t)width * max_scratch, sizeof *ctx->scratch);
    if (!ctx->slots || !ctx->scratch) {
        free(ctx->slots);
        free(ctx->scratch);
        free(ctx);
        return NULL;
    }
    ctx->finished_tail = &ctx->finished;
    pthread_cond_init(&ctx->completed, NULL);
    return ctx;
}

/* Only with nothing in flight (the caller drains first). */
void xvm_blk_ctx_free(struct xvm_blk_ctx *ctx)
{
    pthread_cond_destroy(&ctx->completed);
    free(ctx->slots);
    free(ctx->scratch);
    free(ctx);
}

/* Two requests must not be in flight together if they overlap on the disk and either
 * writes: then side by side ends as one after another. */
static int blk_conflict(const struct blk_plan *a, const struct blk_plan *b)
{
    uint64_t a_end = a->sector + (a->length >> BLK_SECTOR_SHIFT);
    uint64_t b_end = b->sector + (b->length >> BLK_SECTOR_SHIFT);
    if (a->type == VIRTIO_BLK_T_IN && b->type == VIRTIO_BLK_T_IN)
        return 0;
    return a->sector < b_end && b->sector < a_end;
}

static void blk_result(const struct blk_plan *plan, struct xvm_blk_result *result)
{
    result->type = plan->type;
    result->bytes = plan->length;
    result->used = plan->rc ? 0
        : (uint32_t)((plan->type == VIRTIO_BLK_T_IN ? plan->length : 0) + 1);
}

/* Start request `head` (see above; the caller keeps fewer than `width` in flight).
 * Requests of `parallel_min` bytes or more go to the pool (`threads` helpers) unless
 * nothing is in flight and no other request is waiting (`more` == 0): then a helper would
 * only add a hand-over; smaller reads are tried without blocking first (when `nowait`) and
 * go to the pool if they would block; smaller writes are done at once.  With `threads` 0
 * every request is done at once.  On XVM_BLK_DONE_NOW, result->used == 0 means its I/O
 * failed and nothing was reported to the guest (Python does it again, errors and all). */
int xvm_blk_start(struct xvm_blk_ctx *ctx, const struct xvm_region *regions, uint32_t nregions,
                  uintptr_t desc_table, uint32_t queue_size, uint32_t head, int indirect_ok,
                  uint64_t capacity, int readonly, int fd, uint32_t threads,
                  uint64_t parallel_min, int nowait, uint32_t more,
                  struct xvm_blk_result *result)
{
    struct blk_slot *s = NULL;
    struct blk_plan *plan;
    uint32_t i;
    int pool, done;

    for (i = 0; i < ctx->width; i++)
        if (ctx->slots[i].state == SLOT_FREE) {
            s = &ctx->slots[i];
            break;
        }
    if (!s)
        return XVM_BLK_CONFLICT;  /* full: the caller drains */
    plan = &s->plan;
    if (blk_parse(regions, nregions, desc_table, queue_size, head, indirect_ok,
                  ctx->scratch + (size_t)(s - ctx->slots) * ctx->max_scratch, ctx->max_scratch,
                  capacity, readonly, fd, plan))
        return XVM_BLK_NOT_C;
    /* Busy slots' plans do not change until reaped: no lock needed to read them. */
    for (i = 0; i < ctx->width; i++)
        if (ctx->slots[i].state == SLOT_BUSY && blk_conflict(&ctx->slots[i].plan, plan))
            return XVM_BLK_CONFLICT;
    pool = done = 0;
    if (threads && plan->length) {
        if (plan->length >= parallel_min) {
            pool = ctx->inflight || more;
        } else if (plan->type == VIRTIO_BLK_T_IN && nowait) {
            plan->rc = blk_execute(plan, RWF_NOWAIT);
            pool = plan->rc == BLK_WOULD_BLOCK;
            done = !pool;
        } else {
            pool = plan->type == VIRTIO_BLK_T_IN;
        }
    }
    if (!pool) {
        if (!done)
            plan->rc = blk_execute(plan, 0);
        blk_result(plan, result);
        return XVM_BLK_DONE_NOW;
    }
    pthread_once(&pool_once, pool_setup);
    s->head = head;
    s->ctx = ctx;
    s->state = SLOT_BUSY;
    s->next = NULL;
    ctx->inflight++;
    pthread_mutex_lock(&pool_lock);
    pool_grow(threads);
    if (!pool_threads) {  /* no helper could be had: do it here */
        pthread_mutex_unlock(&pool_lock);
        s->state = SLOT_FREE;
        ctx->inflight--;
        plan->rc = blk_execute(plan, 0);
        blk_result(plan, result);
        return XVM_BLK_DONE_NOW;
    }
    *pool_jobs_tail = s;
    pool_jobs_tail = &s->next;
    pthread_cond_signal(&pool_work);
    pthread_mutex_unlock(&pool_lock);
    return XVM_BLK_STARTED;
}

/* Collect up to `max` finished requests into heads[] and results[] (used == 0: the I/O
 * failed, as for xvm_blk_start); with `wait`, first wait until one finishes if any is in
 * flight.  Returns how many. */
uint32_t xvm_blk_reap(struct xvm_blk_ctx *ctx, int wait, uint32_t *heads,
                      struct xvm_blk_result *results, uint32_t max)
{
    uint32_t n = 0;
    pthread_mutex_lock(&pool_lock);
    while (wait && !ctx->finished && ctx->inflight)
        pthread_cond_wait(&ctx->completed, &pool_lock);
    while (ctx->finished && n < max) {
        struct blk_slot *s = ctx->finished;
        ctx->finished = s->next;
        if (!ctx->finished)
            ctx->finished_tail = &ctx->finished;
        heads[n] = s->head;
        blk_result(&s->plan, &results[n]);
        s->state = SLOT_FREE;
        ctx->inflight--;
        n++;
    }
    pthread_mutex_unlock(&pool_lock);
    return n;
}

uint32_t xvm_blk_inflight(struct xvm_blk_ctx *ctx)
{
    return ctx->inflight;
}

/* ---- one turn of a virtio-blk queue in C (virtio 1.2 §2.7.6-§2.7.10, §5.2.6) -------------
 * What xvm/devices/virtio/batch.py Batch.serve_in_flight does with this context's
 * xvm_blk_start and xvm_blk_reap, without going back to Python for each request: pop
 * available heads (with EVENT_IDX, avail_event follows them), start each, return finished
 * ones on the used ring (element, then used.idx: §2.7.8.2), and when the ring is empty
 * re-enable notifications and look once more (§2.7.10).  Whether the driver wants a used
 * buffer notification (§2.7.7.2) is decided here, as Queue.needs_notification decides it,
 * and the caller sends it (t->notify).  The turn stops for Python (every return but IDLE
 * and BUDGET leaves requests in flight, for the caller's drain):
 *   XVM_TURN_HEAD_*   t->head was popped and is the reference path's, or conflicts with a
 *                     request in flight (the caller drains, starts it again), or its I/O
 *                     failed (the caller does it again in Python, errors and all);
 *   XVM_TURN_NOTIFY   a notification is due after a reaping (requests may be in flight);
 *   XVM_TURN_STOP     *q->stop was set: t->reaped finished requests in heads[]/results[]
 *                     are not on the used ring yet (the caller decides whether the ring is
 *                     still its own);
 *   XVM_TURN_REAPED   as STOP, because one of them failed its I/O (the caller does that one
 *                     again in Python, errors and all, and goes on);
 *   XVM_TURN_RING     avail.idx is more than Queue Size ahead (§2.7.6): nothing popped.
 * t->budget heads at most are popped.  Counters of the requests done are added to t. */
/* struct xvm_blk_queue: the queue and its disk as they stay for the engine's life; `stop` is
 * the worker's stop request (Worker.stop_flag; NULL: none).  struct xvm_blk_turn, one call's:
 * in, the disk's capacity and the I/O pool's knobs (as xvm_blk_start's); in and out, the
 * turn's budget, the queue's indexes, Queue.signalled_used (-1: never) and
 * Batch.notified_used; out, the rest (see above) and the counters of what was done.  Laid
 * out without padding: Python packs and unpacks it with struct (block/device.py). */
/* BLK_TURN_STRUCTS */
_Static_assert(sizeof(struct xvm_blk_turn) == 80, "struct xvm_blk_turn has padding");

#define XVM_TURN_IDLE 0
#define XVM_TURN_BUDGET 1
#define XVM_TURN_HEAD_PYTHON 2
#define XVM_TURN_HEAD_CONFLICT 3
#define XVM_TURN_HEAD_FAILED 4
#define XVM_TURN_NOTIFY 5
#define XVM_TURN_STOP 6
#define XVM_TURN_RING 7
#define XVM_TURN_REAPED 8
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

static void turn_count(struct xvm_blk_turn *t, const struct xvm_blk_result *r)
{
    if (r->type == VIRTIO_BLK_T_IN) {
        t->reads++;
        t->read_bytes += r->bytes;
    } else {
        t->writes++;
        t->write_bytes += r->bytes;
    }
}

static void turn_used(const struct xvm_blk_queue *q, struct xvm_blk_turn *t, uint32_t head,
                      uint32_t len)
{
    volatile uint16_t *used16 = (volatile uint16_t *)q->used_ring;
    volatile uint32_t *elems = (volatile uint32_t *)(q->used_ring + 4);
    uint32_t slot = t->next_used % q->queue_size;
    elems[2 * slot] = head;
    elems[2 * slot + 1] = len;
    t->next_used = (t->next_used + 1) & 0xFFFF;
    __asm__ __volatile__("" ::: "memory");  /* §2.7.8.2: the element before idx (x86 TSO) */
    used16[1] = (uint16_t)t->next_used;
}

/* Queue.needs_notification: with EVENT_IDX, notify iff used_event lies in (old, new]. */
static int turn_wants_notification(const struct xvm_blk_queue *q, struct xvm_blk_turn *t)
{
    volatile uint16_t *avail = (volatile uint16_t *)q->avail_ring;
    int32_t old = t->signalled_used;
    uint16_t new = (uint16_t)t->next_used;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* our used.idx store before the loads below */
    t->signalled_used = new;
    if (q->event_idx) {
        uint16_t used_event;
        if (old < 0)
            return 1;
        used_event = avail[2 + q->queue_size];
        return (uint16_t)(new - used_event - 1) < (uint16_t)(new - (uint16_t)old);
    }
    return !(avail[0] & VIRTQ_AVAIL_F_NO_INTERRUPT);
}

/* Decide on a notification for what was used since the last one; 1 if one is due. */
static int turn_notify(const struct xvm_blk_queue *q, struct xvm_blk_turn *t)
{
    if (t->next_used == t->notified_used)
        return 0;
    t->notified_used = t->next_used;
    t->notify = turn_wants_notification(q, t);
    return t->notify;
}

int xvm_blk_serve(struct xvm_blk_ctx *ctx, const struct xvm_blk_queue *q,
                  struct xvm_blk_turn *t, uint32_t *heads, struct xvm_blk_result *results)
{
    volatile uint16_t *avail = (volatile uint16_t *)q->avail_ring;
    volatile uint16_t *used16 = (volatile uint16_t *)q->used_ring;
    struct xvm_blk_result r;
    int more = 0;

    t->notify = t->reaped = t->reads = t->writes = 0;
    t->read_bytes = t->write_bytes = 0;
    for (;;) {
        while (ctx->inflight < ctx->width) {
            uint32_t pending, head;
            int rc;
            if (q->stop && *q->stop)
                return XVM_TURN_STOP;
            pending = (uint16_t)(avail[1] - t->next_avail);
            __asm__ __volatile__("" ::: "memory");  /* idx before the ring entries */
            if (pending > q->queue_size)
                return XVM_TURN_RING;  /* §2.7.6: the caller raises QueueError */
            if (!pending)
                break;
            if (!t->budget) {
                more = 1;
                break;
            }
            head = avail[2 + t->next_avail % q->queue_size];
            t->next_avail = (t->next_avail + 1) & 0xFFFF;
            t->budget--;
            if (q->event_idx)  /* §2.7.10: notify us when the next one is added */
                used16[2 + 4 * q->queue_size] = (uint16_t)t->next_avail;
            rc = xvm_blk_start(ctx, q->regions, q->nregions, q->desc_table, q->queue_size, head,
                               q->indirect_ok, t->capacity, q->readonly, q->fd, t->threads,
                               t->parallel_min, t->nowait, pending - 1, &r);
            if (rc == XVM_BLK_STARTED)
                continue;
            t->head = head;
            if (rc == XVM_BLK_NOT_C)
                return XVM_TURN_HEAD_PYTHON;
            if (rc == XVM_BLK_CONFLICT)
                return XVM_TURN_HEAD_CONFLICT;
            if (!r.used)
                return XVM_TURN_HEAD_FAILED;
            turn_count(t, &r);
            if (q->stop && *q->stop) {  /* done, but is the ring still ours? */
                heads[0] = head;
                results[0] = r;
                t->reaped = 1;
                return XVM_TURN_STOP;
            }
            turn_used(q, t, head, r.used);
        }
        if (ctx->inflight) {
            uint32_t n = xvm_blk_reap(ctx, 1, heads, results, ctx->width), i;
            for (i = 0; i < n; i++)
                if (results[i].used)
                    turn_count(t, &results[i]);
            t->reaped = n;
            if (q->stop && *q->stop)
                return XVM_TURN_STOP;
            for (i = 0; i < n; i++)
                if (!results[i].used)
                    break;
            if (i < n)  /* an I/O failed: Python does it again, and returns them all */
                return XVM_TURN_REAPED;
            t->reaped = 0;
            for (i = 0; i < n; i++)
                turn_used(q, t, heads[i], results[i].used);
            if (turn_notify(q, t))  /* after each reaping, as Batch.serve_in_flight */
                return XVM_TURN_NOTIFY;
            continue;
        }
        if (more)
            return XVM_TURN_BUDGET;
        /* §2.7.10: notifications on again (avail_event), then one more look */
        if (q->event_idx)
            used16[2 + 4 * q->queue_size] = (uint16_t)t->next_avail;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if ((uint16_t)(avail[1] - t->next_avail))
            continue;
        turn_notify(q, t);
        return XVM_TURN_IDLE;
    }
}

/* ---- virtio-net receive (virtio 1.2 §5.1.6.3, §5.1.6.4): one frame into rx buffers ------
 * frame[0:length] starts with the 12-byte virtio_net_hdr_v1.  Chains are taken from the
 * available ring in order, checked as xvm/devices/net/device.py _next_rx_chain checks them,
 * filled, and returned on the used ring with num_buffers set (§5.1.6.4).  Returns
 * XVM_RX_DONE (*consumed chains used), XVM_RX_STARVED (too few buffers: nothing consumed,
 * bytes written into still-available buffers are the device's to overwrite), or
 * XVM_RX_FALLBACK (a malformed or unusable chain, a corrupt ring: nothing consumed; the
 * Python reference handles it, errors and all).
 * Write order, as device.py _deliver: num_buffers is set in frame[10:12] first, then the
 * frame is copied in order, buffer after buffer, each byte once.  The spec does not say
 * what a guest publishing one buffer twice (aliased) gets; this order says it: the later
 * pieces of the frame overwrite the earlier ones, the header's num_buffers included. */
#define XVM_RX_DONE 0
#define XVM_RX_STARVED 1
#define XVM_RX_FALLBACK 2
#define VIRTIO_NET_HDR_SIZE 12

int xvm_net_rx(const struct xvm_region *regions, uint32_t nregions,
               uintptr_t desc_table, uint32_t queue_size, int indirect_ok,
               uintptr_t avail_ring, uintptr_t used_ring, uint32_t next_avail,
               uint32_t next_used, int event_idx, int mergeable,
               unsigned char *frame, uint32_t length,
               struct xvm_piece *p, uint32_t max_scratch, uint32_t *consumed)
{
    volatile uint16_t *avail = (volatile uint16_t *)avail_ring;
    volatile uint16_t *used16 = (volatile uint16_t *)used_ring;
    volatile uint32_t *elems = (volatile uint32_t *)(used_ring + 4);
    uint16_t avail_idx = avail[1];
    uint32_t pending = (uint16_t)(avail_idx - next_avail), n = 0, offset = 0;

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
    /* §5.1.6.4 num_buffers: the chains the packet spans (1 without MRG_RXBUF), in the
     * frame's header before it is copied (see above). */
    frame[10] = n & 0xff;
    frame[11] = n >> 8;
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
            offset += take;
            chain_used += take;
        }
        {
            uint32_t slot = (uint16_t)(next_used + k) % queue_size;
            elems[2 * slot] = head;
            elems[2 * slot + 1] = chain_used;
        }
    }
    if (offset < length)
        return XVM_RX_FALLBACK;
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


SOURCE = SOURCE.replace("/* BLK_TURN_STRUCTS */\n", BLK_TURN_STRUCTS)


def digest():
    """The source's fingerprint, compiled into the module (``xvm_native_digest()``): a
    module built from another source is rebuilt (:mod:`xvm.devices.virtio.native`), even
    when only a function's body or argument types changed."""
    return hashlib.sha256((CDEF + SOURCE).encode()).hexdigest()


def make_builder(module_name="xvm.devices.virtio._native"):
    builder = cffi.FFI()
    builder.cdef(CDEF + "const char *xvm_native_digest(void);\n")
    source = SOURCE + f'\nconst char *xvm_native_digest(void) {{ return "{digest()}"; }}\n'
    builder.set_source(module_name, source, extra_compile_args=["-O2", "-std=gnu11"])
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
