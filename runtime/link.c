#include "runtime/link.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "runtime/collectives.h"
#include "runtime/status.h"
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#define CACHE_LINE 64
/* Head-line transfers whose median decides tm__link_stream, and the time
 * above which ring bytes are streamed: between the 30-40 ns and 130-150 ns
 * measured here with the two cores close together and far apart (see
 * tm__link_stream). */
#define LAT_SAMPLES 8
#define STREAM_NS 80.0

/* The two counters are free-running byte counts compared by difference; the
 * ring position is counter & mask. Each side owns one cache line and only
 * reads the other's: producer and consumer never write the same line in the
 * fast path. Lock ordering: there are no locks; the sleep/wake handshake is
 * a Dekker pair (flag store, full fence, counter load) on each side.
 *
 * The sleep flags have lines of their own, written only around a sleep:
 * each side reads the other's flag after every publication, which on the
 * counter's line would be a cross-core miss every time (and would hide the
 * head line's transfer time that tm__link_stream measures).
 *
 * What both ends share lives in a control block beside the ring, in memory
 * both ends map: the process's own for a link between two threads, a
 * shared-memory window for a link between two processes (whose handles then
 * differ: each process sees the ring at its own address). */
typedef struct {
    /* Written by the consumer. */
    _Alignas(CACHE_LINE) atomic_uint_fast64_t head; /* bytes consumed */
    /* Written by the producer. */
    _Alignas(CACHE_LINE) atomic_uint_fast64_t tail; /* bytes published */
    /* Written by the consumer when it sleeps, and by the producer waking it. */
    _Alignas(CACHE_LINE) atomic_uint cons_sleeping; /* consumer asleep waiting for data */
    atomic_uint cons_event;       /* futex word the consumer sleeps on */
    /* Written by the producer when it sleeps, and by the consumer waking it. */
    _Alignas(CACHE_LINE) atomic_uint prod_sleeping; /* producer asleep waiting for space */
    atomic_uint prod_event;       /* futex word the producer sleeps on */
} ctrl;

_Static_assert(sizeof(ctrl) <= TM_LINK_CTRL_BYTES, "the control block fits its slot");

/* One process's handle on a link: the fields each side keeps to itself. */
struct tm_link {
    /* The consumer's. */
    _Alignas(CACHE_LINE) uint64_t cons_tail_cache; /* last tail seen, avoids a shared load */

    /* The producer's. */
    _Alignas(CACHE_LINE) uint64_t prod_head_cache; /* last head seen */
    uint64_t bytes;               /* payload bytes sent */
    uint64_t messages;            /* headers sent */
    uint32_t lat[LAT_SAMPLES];    /* head-line transfer times, in ticks */
    int n_lat;                    /* samples in lat */
    int stream;                   /* tm__link_stream's answer */
    double vfree;                 /* modeled time the link is free again */
    uint64_t msg_end;             /* proxy: stream position where the message
                                     being written ends (padding included) */

    /* Read-only after creation. */
    _Alignas(CACHE_LINE) ctrl *c; /* the shared control block */
    uint8_t *ring;
    uint64_t capacity;
    uint64_t mask;
    int src, dst;
    int futex_shared;             /* the ends are in two processes */
    int owns_memory;              /* ring and c were allocated here */
    const tm_link_proxy *proxy;   /* the far end's engine, or NULL */
};

static long futex(atomic_uint *word, int op, unsigned val, const struct timespec *t)
{
    return syscall(SYS_futex, (unsigned *)word, op, val, t, NULL, 0);
}

/* Futexes between two processes must not be private: the kernel then keys
 * them by the shared page rather than by this process's address space. */
static int wait_op(const tm_link *l) { return l->futex_shared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE; }
static int wake_op(const tm_link *l) { return l->futex_shared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE; }

void tm__doorbell_ring(tm_doorbell *d)
{
    atomic_fetch_add_explicit(&d->word, 1, memory_order_release);
    /* Orders the increment before the flag load: pairs with the fence in
     * tm__doorbell_wait, so the waiter either sees the new word or is
     * woken. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&d->sleeping, memory_order_relaxed))
        syscall(SYS_futex, (unsigned *)&d->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

void tm__doorbell_wait(tm_doorbell *d, unsigned seen, long timeout_ns)
{
    atomic_store_explicit(&d->sleeping, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&d->word, memory_order_relaxed) == seen) {
        struct timespec t = {timeout_ns / 1000000000L, timeout_ns % 1000000000L};
        syscall(SYS_futex, (unsigned *)&d->word, FUTEX_WAIT_PRIVATE, seen, &t, NULL, 0);
    }
    atomic_store_explicit(&d->sleeping, 0, memory_order_relaxed);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

#if defined(__x86_64__)
static double ticks_per_ns;    /* time-stamp counter rate */
static uint64_t tick_overhead; /* what an empty timed interval reads */
static pthread_once_t ticks_once = PTHREAD_ONCE_INIT;

/* The fences keep a timed load inside its interval: the first stops it from
 * starting early, the second waits for its data. */
static inline uint64_t ticks(void)
{
    _mm_lfence();
    uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
}

/* Once per process, on the first link: 0.2 ms against the monotonic clock. */
static void calibrate_ticks(void)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    uint64_t t0 = ticks();
    double ns;
    do {
        cpu_relax();
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns = 1e9 * (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec);
    } while (ns < 200e3);
    ticks_per_ns = (double)(ticks() - t0) / ns;
    tick_overhead = UINT64_MAX;
    for (int i = 0; i < 64; i++) {
        uint64_t t1 = ticks(), t2 = ticks();
        if (t2 - t1 < tick_overhead) tick_overhead = t2 - t1;
    }
}
#endif

/* Ring memory, touched now: on this VM the first write to a 4 KiB page
 * costs 10-20 us, which the first few hundred small messages through a new
 * ring would otherwise pay (a 2-device 4 KiB all-reduce measured 14 us
 * instead of 2.4). Rings of 2 MiB or more ask for huge pages, whose first
 * touch is cheaper still. aligned_alloc wants the size to be a multiple of
 * the alignment. A payload-free thread's messages write only their
 * headers into the ring: it touches none of it now, and only 4 KiB pages
 * as headers land. */
static uint8_t *ring_alloc(size_t capacity)
{
    const size_t huge = (size_t)2 << 20;
    size_t align = capacity >= huge ? huge : capacity < 4096 ? capacity : 4096;
    uint8_t *ring = aligned_alloc(align, capacity);
    if (ring == NULL || tm_comm_dry()) return ring;
    if (capacity >= huge) madvise(ring, capacity, MADV_HUGEPAGE);
    memset(ring, 0, capacity);
    return ring;
}

static int check_capacity(size_t capacity)
{
    if (capacity < 4 * TM_LINK_ALIGN || (capacity & (capacity - 1)) != 0)
        return tm_error(TM_EINVAL, "link ring size %zu is not a power of two >= %d",
                        capacity, 4 * TM_LINK_ALIGN);
#if defined(__x86_64__)
    pthread_once(&ticks_once, calibrate_ticks);
#endif
    return TM_OK;
}

static tm_link *handle(size_t capacity, int src, int dst)
{
    tm_link *l = aligned_alloc(CACHE_LINE, sizeof *l);
    if (l == NULL) return NULL;
    memset(l, 0, sizeof *l);
    l->capacity = capacity;
    l->mask = capacity - 1;
    l->src = src;
    l->dst = dst;
    return l;
}

int tm__link_create(tm_link **out, size_t capacity, int src, int dst)
{
    *out = NULL;
    TM_CHECK(check_capacity(capacity));
    tm_link *l = handle(capacity, src, dst);
    if (l == NULL) goto err;
    l->owns_memory = 1;
    l->c = aligned_alloc(CACHE_LINE, sizeof *l->c);
    if (l->c == NULL) goto err;
    memset(l->c, 0, sizeof *l->c);
    l->ring = ring_alloc(capacity);
    if (l->ring == NULL) goto err;
    *out = l;
    return TM_OK;
err:
    if (l != NULL) free(l->c);
    free(l);
    return tm_error(TM_EHOSTMEM, "cannot allocate a %zu-byte ring for link %d->%d",
                    capacity, src, dst);
}

int tm__link_attach(tm_link **out, void *mem, size_t capacity, int src, int dst)
{
    *out = NULL;
    TM_CHECK(check_capacity(capacity));
    tm_link *l = handle(capacity, src, dst);
    if (l == NULL)
        return tm_error(TM_EHOSTMEM, "cannot allocate the handle of link %d->%d", src, dst);
    l->c = mem;
    l->ring = (uint8_t *)mem + TM_LINK_CTRL_BYTES;
    l->futex_shared = 1;
    /* Both ends start from the same zeroed memory, so the counters agree. */
    l->prod_head_cache = atomic_load(&l->c->head);
    l->cons_tail_cache = atomic_load(&l->c->tail);
    *out = l;
    return TM_OK;
}

void tm__link_set_proxy(tm_link *l, const tm_link_proxy *proxy) { l->proxy = proxy; }

void tm__link_destroy(tm_link *link)
{
    if (link == NULL) return;
    if (link->owns_memory) {
        free(link->ring);
        free(link->c);
    }
    free(link);
}

void tm__link_reset(tm_link *link)
{
    atomic_store(&link->c->head, 0);
    atomic_store(&link->c->tail, 0);
    link->cons_tail_cache = 0;
    link->prod_head_cache = 0;
}

/* Sleeps on *event until woken, unless ready() turns true after the sleeping
 * flag is raised (the other side then either sees the flag and wakes us, or
 * published before our check, which then succeeds). A one-second timeout is
 * only a safety net: every wake-up is explicit. */
static int sleep_until(tm_link *l, tm_waiter *w, atomic_uint *sleeping,
                       atomic_uint *event, int for_space,
                       int (*ready)(tm_link *, uint64_t), uint64_t need)
{
    unsigned ev = atomic_load_explicit(event, memory_order_acquire);
    atomic_store_explicit(sleeping, 1, memory_order_relaxed);
    /* Orders the flag store before the counter load in ready(): pairs with
     * the fence in notify(). */
    atomic_thread_fence(memory_order_seq_cst);
    int st = TM_OK;
    if (!ready(l, need)) {
        if (atomic_load(w->abort)) {
            st = TM_EABORTED;
        } else {
            atomic_store_explicit(&w->blocked_for_space, for_space, memory_order_relaxed);
            atomic_store_explicit(&w->blocked_on, l, memory_order_release);
            /* After the flag: the engine's thread sees us asleep, and keeps
             * moving bytes until we wake. */
            if (l->proxy != NULL) tm__doorbell_ring(l->proxy->bell);
            struct timespec t = {1, 0};
            futex(event, wait_op(l), ev, &t);
            atomic_store_explicit(&w->blocked_on, NULL, memory_order_release);
        }
    }
    atomic_store_explicit(sleeping, 0, memory_order_relaxed);
    return st;
}

/* Wakes the other side if it announced that it sleeps. */
static void notify(const tm_link *l, atomic_uint *sleeping, atomic_uint *event)
{
    /* Orders our counter store before the flag load: pairs with the fence in
     * sleep_until(), so either we see the flag or the sleeper sees our
     * counter. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(sleeping, memory_order_relaxed)) {
        atomic_fetch_add_explicit(event, 1, memory_order_release);
        futex(event, wake_op(l), 1, NULL);
    }
}

static uint64_t contiguous_free(tm_link *l, uint64_t head)
{
    uint64_t tail = atomic_load_explicit(&l->c->tail, memory_order_relaxed);
    uint64_t free_bytes = l->capacity - (tail - head);
    uint64_t to_wrap = l->capacity - (tail & l->mask);
    return free_bytes < to_wrap ? free_bytes : to_wrap;
}

static int space_ready(tm_link *l, uint64_t need)
{
    /* Acquire: the consumer's release of head is our licence to overwrite
     * the bytes it has consumed. */
    l->prod_head_cache = atomic_load_explicit(&l->c->head, memory_order_acquire);
    return contiguous_free(l, l->prod_head_cache) >= need;
}

/* Whether ring bytes should bypass the caches, decided from how long the
 * head line, just written by the consumer, takes to reach the producer.
 * Measured here: 30-40 ns while the host keeps this VM's two vCPUs close
 * (a cache-line ping-pong takes 200 ns there and back), 130-150 ns while
 * it places them far apart (600 ns); it moves them every few minutes. Far
 * apart, a line crossing over is slower than one from memory, and
 * overwriting lines the consumer still holds costs another crossing: plain
 * ring stores made a 2-device 1 MiB all-reduce 2.6x slower than streaming
 * ones (177 against 67 us), which in turn are 1.8x slower close together
 * (85 against 48 us). The median of LAT_SAMPLES transfers ignores the ones
 * a preemption stretched. */
#if defined(__x86_64__)
static void record_transfer(tm_link *l, uint64_t t)
{
    l->lat[l->n_lat++] = t > UINT32_MAX ? UINT32_MAX : (uint32_t)t;
    if (l->n_lat < LAT_SAMPLES) return;
    l->n_lat = 0;
    for (int i = 1; i < LAT_SAMPLES; i++)
        for (int j = i; j > 0 && l->lat[j - 1] > l->lat[j]; j--) {
            uint32_t x = l->lat[j];
            l->lat[j] = l->lat[j - 1];
            l->lat[j - 1] = x;
        }
    double median = 0.5 * ((double)l->lat[LAT_SAMPLES / 2 - 1] + (double)l->lat[LAT_SAMPLES / 2]);
    l->stream = ticks_per_ns > 0 && median > STREAM_NS * ticks_per_ns;
}

/* space_ready, timing the load of head when the consumer has moved it since
 * we last looked: the line then comes from the consumer's core. */
static int space_ready_timed(tm_link *l, uint64_t need)
{
    uint64_t seen = l->prod_head_cache, t0 = ticks();
    uint64_t head = atomic_load_explicit(&l->c->head, memory_order_acquire);
    uint64_t t = ticks() - t0;
    l->prod_head_cache = head;
    if (head != seen) record_transfer(l, t > tick_overhead ? t - tick_overhead : 0);
    return contiguous_free(l, head) >= need;
}
#else
static int space_ready_timed(tm_link *l, uint64_t need) { return space_ready(l, need); }
#endif

/* Producer: 1 if ring bytes should be written with non-temporal stores
 * (which the producer fences before committing), 0 for plain stores. */
int tm__link_stream(const tm_link *l) { return l->stream; }

static uint64_t contiguous_data(tm_link *l, uint64_t tail)
{
    uint64_t head = atomic_load_explicit(&l->c->head, memory_order_relaxed);
    uint64_t avail = tail - head;
    uint64_t to_wrap = l->capacity - (head & l->mask);
    return avail < to_wrap ? avail : to_wrap;
}

static int data_ready(tm_link *l, uint64_t need)
{
    /* Acquire: pairs with the producer's release of tail, making the bytes
     * it wrote before publishing visible to us. */
    l->cons_tail_cache = atomic_load_explicit(&l->c->tail, memory_order_acquire);
    return contiguous_data(l, l->cons_tail_cache) >= need;
}

/* Spin, then yield, then sleep, until ready(l, need) or abort. On a link
 * with an engine at the far end, every turn first gives the engine a
 * chance to move the bytes we wait for, and a sleep leaves that to its
 * thread (sleep_until rings it). */
static int wait_for(tm_link *l, tm_waiter *w, int for_space,
                    int (*ready)(tm_link *, uint64_t), uint64_t need)
{
    const tm_link_proxy *x = l->proxy;
    for (int i = 0; i < w->spin; i++) {
        cpu_relax();
        if (x != NULL) x->kick(x->ctx, 1);
        if (ready(l, need)) return TM_OK;
    }
    for (int i = 0; i < w->yields; i++) {
        sched_yield();
        if (x != NULL) x->kick(x->ctx, 1);
        if (ready(l, need)) return TM_OK;
    }
    for (;;) {
        if (atomic_load_explicit(w->abort, memory_order_relaxed)) return TM_EABORTED;
        int st = for_space
            ? sleep_until(l, w, &l->c->prod_sleeping, &l->c->prod_event, 1, ready, need)
            : sleep_until(l, w, &l->c->cons_sleeping, &l->c->cons_event, 0, ready, need);
        if (st != TM_OK) return st;
        if (ready(l, need)) return TM_OK;
    }
}

int tm__link_write_acquire(tm_link *l, tm_waiter *w, size_t min, size_t max,
                           uint8_t **ptr, size_t *got)
{
    /* The cached head may be stale: refresh it before settling for less
     * than max, and wait only if even the fresh value gives less than min. */
    if (contiguous_free(l, l->prod_head_cache) < max && !space_ready_timed(l, min))
        TM_CHECK(wait_for(l, w, 1, space_ready, min));
    uint64_t n = contiguous_free(l, l->prod_head_cache);
    uint64_t tail = atomic_load_explicit(&l->c->tail, memory_order_relaxed);
    *ptr = l->ring + (tail & l->mask);
    *got = n < max ? n : max;
    return TM_OK;
}

void tm__link_engine_commit(tm_link *l, size_t n)
{
    uint64_t tail = atomic_load_explicit(&l->c->tail, memory_order_relaxed);
    /* Release: the bytes written into the ring happen-before the consumer's
     * acquire of the new tail. A producer that wrote them with non-temporal
     * stores has fenced those (sfence) before calling this. */
    atomic_store_explicit(&l->c->tail, tail + n, memory_order_release);
    notify(l, &l->c->cons_sleeping, &l->c->cons_event);
}

/* The engine sends what is published in messages of its own, and receives
 * into the ring in quarter-ring blocks (runtime/mpi.c): a device calls it
 * when a message is whole (header, payload and padding in one of the
 * engine's messages) or a quarter of the ring is behind it, and when its
 * reading frees a quarter block. Whatever it waits for, it calls it anyway
 * (wait_for). */
static int crosses_quarter(const tm_link *l, uint64_t before, uint64_t n)
{
    uint64_t quarter = l->capacity / 4;
    return before / quarter != (before + n) / quarter;
}

void tm__link_write_commit(tm_link *l, size_t n)
{
    tm__link_engine_commit(l, n);
    if (l->proxy == NULL) return;
    uint64_t tail = atomic_load_explicit(&l->c->tail, memory_order_relaxed);
    if (tail >= l->msg_end || crosses_quarter(l, tail - n, n)) l->proxy->kick(l->proxy->ctx, 0);
}

int tm__link_read_acquire(tm_link *l, tm_waiter *w, size_t min, size_t max,
                          const uint8_t **ptr, size_t *got)
{
    if (contiguous_data(l, l->cons_tail_cache) < max && !data_ready(l, min))
        TM_CHECK(wait_for(l, w, 0, data_ready, min));
    uint64_t n = contiguous_data(l, l->cons_tail_cache);
    uint64_t head = atomic_load_explicit(&l->c->head, memory_order_relaxed);
    *ptr = l->ring + (head & l->mask);
    *got = n < max ? n : max;
    return TM_OK;
}

void tm__link_engine_release(tm_link *l, size_t n)
{
    uint64_t head = atomic_load_explicit(&l->c->head, memory_order_relaxed);
    /* Release: our reads of the ring bytes are done before the producer may
     * overwrite them. */
    atomic_store_explicit(&l->c->head, head + n, memory_order_release);
    notify(l, &l->c->prod_sleeping, &l->c->prod_event);
}

void tm__link_read_release(tm_link *l, size_t n)
{
    tm__link_engine_release(l, n);
    if (l->proxy == NULL) return;
    uint64_t head = atomic_load_explicit(&l->c->head, memory_order_relaxed);
    if (crosses_quarter(l, head - n, n)) l->proxy->kick(l->proxy->ctx, 0);
}

static size_t pad_of(uint64_t bytes)
{
    return (size_t)((TM_LINK_ALIGN - bytes % TM_LINK_ALIGN) % TM_LINK_ALIGN);
}

int tm__link_send_header(tm_link *l, tm_waiter *w, const tm_msg_header *hdr)
{
    uint8_t *p;
    size_t got;
    TM_CHECK(tm__link_write_acquire(l, w, sizeof *hdr, sizeof *hdr, &p, &got));
    memcpy(p, hdr, sizeof *hdr);
    l->messages++;
    l->bytes += hdr->bytes;
    uint64_t tail = atomic_load_explicit(&l->c->tail, memory_order_relaxed);
    l->msg_end = tail + sizeof *hdr + hdr->bytes + pad_of(hdr->bytes);
    tm__link_write_commit(l, sizeof *hdr);
    return TM_OK;
}

int tm__link_recv_header(tm_link *l, tm_waiter *w, tm_msg_header *hdr)
{
    const uint8_t *p;
    size_t got;
    TM_CHECK(tm__link_read_acquire(l, w, sizeof *hdr, sizeof *hdr, &p, &got));
    memcpy(hdr, p, sizeof *hdr);
    tm__link_read_release(l, sizeof *hdr);
    return TM_OK;
}


/* Padding never wraps: the message started aligned and the ring size is a
 * multiple of the alignment. It is skipped without touching the bytes. */
int tm__link_send_pad(tm_link *l, tm_waiter *w, uint64_t bytes)
{
    size_t pad = pad_of(bytes), got;
    uint8_t *p;
    if (pad == 0) return TM_OK;
    TM_CHECK(tm__link_write_acquire(l, w, pad, pad, &p, &got));
    tm__link_write_commit(l, pad);
    return TM_OK;
}

int tm__link_recv_pad(tm_link *l, tm_waiter *w, uint64_t bytes)
{
    size_t pad = pad_of(bytes), got;
    const uint8_t *p;
    if (pad == 0) return TM_OK;
    TM_CHECK(tm__link_read_acquire(l, w, pad, pad, &p, &got));
    tm__link_read_release(l, pad);
    return TM_OK;
}

void tm__link_wake_all(tm_link *l)
{
    atomic_fetch_add(&l->c->prod_event, 1);
    futex(&l->c->prod_event, wake_op(l), INT_MAX, NULL);
    atomic_fetch_add(&l->c->cons_event, 1);
    futex(&l->c->cons_event, wake_op(l), INT_MAX, NULL);
}

size_t tm__link_peek(tm_link *l, uint64_t pos, const uint8_t **ptr)
{
    /* Acquire: as data_ready, the bytes before tail are visible. */
    uint64_t tail = atomic_load_explicit(&l->c->tail, memory_order_acquire);
    uint64_t to_wrap = l->capacity - (pos & l->mask);
    *ptr = l->ring + (pos & l->mask);
    return (size_t)(tail - pos < to_wrap ? tail - pos : to_wrap);
}

int tm__link_consumer_waiting(const tm_link *l)
{
    return (int)atomic_load_explicit(&l->c->cons_sleeping, memory_order_relaxed);
}

int tm__link_producer_waiting(const tm_link *l)
{
    return (int)atomic_load_explicit(&l->c->prod_sleeping, memory_order_relaxed);
}

uint64_t tm__link_published(const tm_link *l)
{
    return atomic_load_explicit(&l->c->tail, memory_order_relaxed);
}

uint64_t tm__link_progress(const tm_link *l)
{
    return atomic_load_explicit(&l->c->tail, memory_order_relaxed) +
           atomic_load_explicit(&l->c->head, memory_order_relaxed);
}

int tm__link_src(const tm_link *l) { return l->src; }
int tm__link_dst(const tm_link *l) { return l->dst; }
size_t tm__link_capacity(const tm_link *l) { return l->capacity; }
uint64_t tm__link_bytes(const tm_link *l) { return l->bytes; }
uint64_t tm__link_messages(const tm_link *l) { return l->messages; }

double *tm__link_vfree(tm_link *l) { return &l->vfree; }
