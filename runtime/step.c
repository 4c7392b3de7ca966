#include "runtime/step.h"

#include <string.h>
#if defined(__SSE__)
#include <immintrin.h>
#endif

#include "runtime/clock_internal.h"
#include "runtime/collectives.h"
#include "runtime/reduce.h"
#include "runtime/status.h"

static _Thread_local int dry;

void tm_comm_set_dry(int on) { dry = on != 0; }
int tm_comm_dry(void) { return dry; }

const char *tm__op_name(uint32_t kind)
{
    static const char *names[] = {"?",         "allreduce", "allgather", "reduce_scatter",
                                  "broadcast", "barrier",   "send/recv"};
    return kind < sizeof names / sizeof names[0] ? names[kind] : "?";
}

/* Bytes moved between two publications of ring counters: large enough that
 * the per-piece fence and wake check vanish, small enough that the next
 * device starts on a step's data while it is still arriving. Measured here
 * (2-device all-reduce, 1 MiB): 8 KiB pieces 36% slower than 32 KiB, 16 KiB
 * 13%; 64 and 128 KiB within 3%. */
#define PIECE_BYTES ((size_t)32 << 10)

static int mismatch(tm_comm *c, const step *s, uint32_t kind, const tm_msg_header *h)
{
    return tm_error(TM_EINVAL,
                    "mismatched collectives on communicator '%s': device %d expected %s #%u of "
                    "%zu bytes from device %d, which sent %s #%u of %llu bytes%s",
                    c->name, c->devices[c->rank], tm__op_name(kind), c->seq, s->bytes,
                    c->devices[s->in_rank], tm__op_name(h->kind), h->seq,
                    (unsigned long long)h->bytes,
                    h->comm != c->id ? " on another communicator" : "");
}

/* The header carries the message's modeled arrival time: sent at engine
 * time *t, which becomes the end of its transmission. */
int tm__step_send_header(tm_comm *c, uint32_t kind, uint32_t seq, const step *s, double *t)
{
    double arrival = tm__clock_send(tm__device_clock(c->dev), s->out, s->bytes, t);
    c->sent += s->bytes;
    tm_msg_header h = {kind, c->id, s->bytes, seq, 0, arrival};
    return tm__link_send_header(s->out, c->waiter, &h);
}

/* *arrival: the message's modeled arrival time. */
int tm__step_recv_header(tm_comm *c, uint32_t kind, uint32_t seq, const step *s, double *arrival)
{
    tm_msg_header h;
    TM_CHECK(tm__link_recv_header(s->in, c->waiter, &h));
    if (h.kind != kind || h.comm != c->id || h.bytes != s->bytes || h.seq != seq)
        return mismatch(c, s, kind, &h);
    *arrival = h.vtime;
    return TM_OK;
}

/* Moves bytes [from, to) of the step's message through the links. */
int tm__step_transfer(tm_comm *c, const step *s, size_t from, size_t to)
{
    tm_waiter *w = c->waiter;
    /* Reductions move whole floats; copies any bytes. */
    size_t unit = s->reduce ? sizeof(float) : 1;
    const uint8_t *local = s->local;
    uint8_t *dst = s->dst;
    /* The link knows whether its ring is better written around the caches
     * (the two devices' cores far apart). */
    int how = s->nt ? TM_ST_DST_NT : 0;
    if (s->out != NULL && tm__link_stream(s->out)) how |= TM_ST_RING_NT;
    for (size_t done = from; done < to;) {
        size_t want = to - done, k = want < PIECE_BYTES ? want : PIECE_BYTES;
        const uint8_t *src = local + done;
        uint8_t *ring_out = NULL;
        if (s->in != NULL) {
            const uint8_t *p;
            TM_CHECK(tm__link_read_acquire(s->in, w, unit, k, &p, &k));
            src = p;
        }
        if (s->out != NULL) TM_CHECK(tm__link_write_acquire(s->out, w, unit, k, &ring_out, &k));
        k -= k % unit;
        if (dry) {
            /* Nothing reads the values: only the counters move. */
        } else if (s->reduce) {
            tm__reduce_floats((float *)ring_out, dst ? (float *)(dst + done) : NULL,
                              (const float *)src, (const float *)(local + done),
                              k / sizeof(float), s->scale, how);
        } else if (k % sizeof(float) == 0 && done % sizeof(float) == 0) {
            tm__copy_floats((float *)ring_out, dst ? (float *)(dst + done) : NULL,
                            (const float *)src, k / sizeof(float), how);
        } else {
            if (ring_out != NULL) memcpy(ring_out, src, k);
            if (dst != NULL) memcpy(dst + done, src, k);
        }
#if defined(__SSE__)
        /* Streaming stores are weakly ordered and the commit's release
         * store orders only plain ones: fence them before publishing. */
        if (how & TM_ST_RING_NT) _mm_sfence();
#endif
        if (s->out != NULL) tm__link_write_commit(s->out, k);
        if (s->in != NULL) tm__link_read_release(s->in, k);
        done += k;
    }
    return TM_OK;
}

static int finish(tm_comm *c, const step *s)
{
    if (s->out != NULL) TM_CHECK(tm__link_send_pad(s->out, c->waiter, s->bytes));
    if (s->in != NULL) TM_CHECK(tm__link_recv_pad(s->in, c->waiter, s->bytes));
    return TM_OK;
}

/* *t: the communication engine's modeled time, advanced past the step. A
 * step that forwards what it receives sends once it has arrived; then its
 * header goes out after the incoming one is read (the wall-clock data still
 * streams through piece by piece: no step waits for a whole message). */
int tm__step_run(tm_comm *c, uint32_t kind, uint32_t seq, const step *s, double *t)
{
    int send_first = s->in == NULL || s->indep;
    if (s->out != NULL && send_first) TM_CHECK(tm__step_send_header(c, kind, seq, s, t));
    if (s->in != NULL) {
        double arrival;
        TM_CHECK(tm__step_recv_header(c, kind, seq, s, &arrival));
        if (arrival > *t) *t = arrival;
    }
    if (s->out != NULL && !send_first) TM_CHECK(tm__step_send_header(c, kind, seq, s, t));
    TM_CHECK(tm__step_transfer(c, s, 0, s->bytes));
    return finish(c, s);
}
