/* A directed channel between two devices: a single-producer/single-consumer
 * ring of bytes with an adaptive wait policy (spin, yield, then futex sleep).
 * Thread-safety: one producer thread and one consumer thread per link. */
#ifndef TM_LINK_H
#define TM_LINK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tm_link tm_link;

/* Every message starts on a TM_LINK_ALIGN boundary of the stream: payloads
 * are padded, so a header never straddles the ring's wrap and float payloads
 * stay aligned. */
#define TM_LINK_ALIGN 32

/* How the owner of a waiter waits, and what it is blocked on (for the
 * watchdog). One per device; written by its thread, read by the watchdog. */
typedef struct {
    const atomic_int *abort;  /* non-zero: the world aborts, waits return */
    int spin;                 /* pause iterations before yielding */
    int yields;               /* sched_yield() calls before sleeping */
    _Atomic(tm_link *) blocked_on; /* link slept on, NULL when running */
    atomic_int blocked_for_space;  /* 1: producer waiting for space */
} tm_waiter;

/* Message header: what a receiver expects is checked against it, so
 * mismatched collectives fail with a message instead of corrupting data. */
typedef struct {
    uint32_t kind;     /* operation (tm_op_kind in collectives) */
    uint32_t comm;     /* communicator id */
    uint64_t bytes;    /* payload bytes that follow */
    uint32_t seq;      /* collective sequence number on the communicator */
    uint32_t reserved;
    double vtime;      /* sender's modeled time when sent */
} tm_msg_header;

_Static_assert(sizeof(tm_msg_header) == TM_LINK_ALIGN, "header is one unit");

/* A progress thread's wake-up word: rung by a device that leaves it work
 * (bytes still to send, a sleep on bytes it brings), slept on by the
 * thread. Thread-safety: any thread rings, one waits. */
typedef struct {
    atomic_uint word;
    atomic_uint sleeping;
} tm_doorbell;
void tm__doorbell_ring(tm_doorbell *bell);
/* Sleeps until the word differs from `seen` (read before looking for
 * work), a ring, or timeout_ns. */
void tm__doorbell_wait(tm_doorbell *bell, unsigned seen, long timeout_ns);

/* Bytes before the ring in memory that tm__link_attach takes: the control
 * block both ends share (counters and sleep flags). */
#define TM_LINK_CTRL_BYTES 4096

/* capacity: power of two, >= 4 * TM_LINK_ALIGN. Returns TM_OK, TM_EINVAL or
 * TM_EHOSTMEM. Ring memory is host memory owned by the link. */
int tm__link_create(tm_link **out, size_t capacity, int src, int dst);
/* A handle on a link whose control block and ring are the
 * TM_LINK_CTRL_BYTES + capacity bytes at mem (zeroed before either end
 * first uses it), shared by two processes that each attach their own
 * handle: one produces, the other consumes. Its futexes are shared ones.
 * The memory stays the caller's. */
int tm__link_attach(tm_link **out, void *mem, size_t capacity, int src, int dst);
/* The engine at the far end of a link whose other end is not a device of
 * this process (runtime/mpi.c): the device's own thread moves bytes when it
 * can, so that a message needs no hand-off to another thread. `kick` is
 * called after the device publishes or releases bytes (waiting 0), and at
 * every turn of a wait's spin and yield phases (waiting 1: it will be
 * called again, or the device sleeps); it never blocks. `bell` is rung
 * when the device goes to sleep on the link: the engine's thread then
 * moves the bytes. */
typedef struct {
    void (*kick)(void *ctx, int waiting);
    void *ctx;
    tm_doorbell *bell;
} tm_link_proxy;
void tm__link_set_proxy(tm_link *link, const tm_link_proxy *proxy);
void tm__link_destroy(tm_link *link);
/* Empties the ring; only while no thread uses the link (after an abort). */
void tm__link_reset(tm_link *link);

/* Producer: waits until at least `min` contiguous bytes are free, then
 * returns a pointer to up to `max` of them in *ptr / *got. Returns TM_OK or
 * TM_EABORTED. */
int tm__link_write_acquire(tm_link *link, tm_waiter *w, size_t min, size_t max,
                           uint8_t **ptr, size_t *got);
/* Producer: publishes n bytes written at the acquired pointer. */
void tm__link_write_commit(tm_link *link, size_t n);
/* Producer: 1 if ring bytes should be written with non-temporal stores (the
 * producer fences them before committing): measured from how long the
 * consumer's counter line takes to arrive, i.e. how far apart the cores are. */
int tm__link_stream(const tm_link *link);
/* Consumer: waits until at least `min` contiguous bytes are readable. */
int tm__link_read_acquire(tm_link *link, tm_waiter *w, size_t min, size_t max,
                          const uint8_t **ptr, size_t *got);
/* Consumer: returns n bytes of ring space to the producer. */
void tm__link_read_release(tm_link *link, size_t n);

/* Producer: writes a header (counting one message of hdr->bytes). */
int tm__link_send_header(tm_link *link, tm_waiter *w, const tm_msg_header *hdr);
/* Consumer: reads the next header into *hdr. */
int tm__link_recv_header(tm_link *link, tm_waiter *w, tm_msg_header *hdr);
/* Either side: skips the padding after a payload of `bytes`. */
int tm__link_send_pad(tm_link *link, tm_waiter *w, uint64_t bytes);
int tm__link_recv_pad(tm_link *link, tm_waiter *w, uint64_t bytes);

/* The engine, draining a link as its consumer: the contiguous bytes
 * published from stream position pos (head <= pos <= tail) on, up to the
 * ring's wrap, left unconsumed (in flight) until it releases them. */
size_t tm__link_peek(tm_link *link, uint64_t pos, const uint8_t **ptr);
/* The engine's commit and release: as tm__link_write_commit and
 * tm__link_read_release, without calling the proxy back. */
void tm__link_engine_commit(tm_link *link, size_t n);
void tm__link_engine_release(tm_link *link, size_t n);
/* The consumer sleeps waiting for data; the producer sleeps waiting for
 * space. */
int tm__link_consumer_waiting(const tm_link *link);
int tm__link_producer_waiting(const tm_link *link);
/* Bytes published so far: the producer's stream position. */
uint64_t tm__link_published(const tm_link *link);

/* Wakes both ends (used on abort, after setting the abort flag). */
void tm__link_wake_all(tm_link *link);
/* Bytes ever published plus bytes ever consumed: grows while data moves. */
uint64_t tm__link_progress(const tm_link *link);
int tm__link_src(const tm_link *link);
int tm__link_dst(const tm_link *link);
size_t tm__link_capacity(const tm_link *link);
/* Payload bytes and messages sent so far (read when no thread runs). */
uint64_t tm__link_bytes(const tm_link *link);
uint64_t tm__link_messages(const tm_link *link);
/* Producer: the modeled time at which the link is free again (see
 * runtime/clock.h); reset to 0 by the world between runs. */
double *tm__link_vfree(tm_link *link);

#endif
