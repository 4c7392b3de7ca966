/* Point-to-point messages between members of a communicator: send, recv
 * and a sendrecv that progresses both directions at once. */
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "runtime/clock_internal.h"
#include "runtime/collectives.h"
#include "runtime/status.h"
#include "runtime/step.h"

static int check_peer(tm_comm *c, int peer)
{
    if (peer < 0 || peer >= c->size || peer == c->rank)
        return tm_error(TM_EINVAL,
                        "device %d: peer rank %d is not another member of '%s' (size %d)",
                        c->devices[c->rank], peer, c->name, c->size);
    return TM_OK;
}

int tm_send(tm_comm *c, const void *buf, size_t bytes, int peer)
{
    TM_CHECK(check_peer(c, peer));
    step s;
    memset(&s, 0, sizeof s);
    s.out_rank = peer;
    TM_CHECK(tm__comm_to(c, peer, &s.out));
    s.local = buf;
    s.bytes = bytes;
    tm_vclock *vc = tm__device_clock(c->dev);
    double start = tm__clock_send_begin(vc), t = start;
    TM_CHECK(tm__step_run(c, OP_P2P, 0, &s, &t));
    tm__clock_send_end(vc, start, t, c->name, bytes);
    return TM_OK;
}

int tm_recv(tm_comm *c, void *buf, size_t bytes, int peer)
{
    TM_CHECK(check_peer(c, peer));
    step s;
    memset(&s, 0, sizeof s);
    s.in_rank = peer;
    TM_CHECK(tm__comm_from(c, peer, &s.in));
    s.dst = buf;
    s.bytes = bytes;
    double arrival = 0;
    TM_CHECK(tm__step_run(c, OP_P2P, 0, &s, &arrival));
    tm__clock_recv(tm__device_clock(c->dev), c->devices[peer], arrival, c->name, bytes);
    return TM_OK;
}

/* The receiving half of a sendrecv as a state machine that can be advanced
 * without blocking: header, payload, padding. */
typedef struct {
    step s;
    int phase; /* 0 header, 1 payload, 2 padding, 3 done */
    size_t got;
    double arrival; /* modeled */
} incoming;

/* Moves what has arrived; with `block`, waits for at least some of it. */
static int advance(tm_comm *c, incoming *in, int block)
{
    tm_waiter *w = c->waiter;
    tm_link *l = in->s.in;
    const uint8_t *p;
    size_t n;
    if (in->phase == 0) {
        /* A header is committed whole, so any readable byte means all 32. */
        TM_CHECK(tm__link_read_acquire(l, w, block ? sizeof(tm_msg_header) : 0,
                                       sizeof(tm_msg_header), &p, &n));
        if (n < sizeof(tm_msg_header)) return TM_OK;
        TM_CHECK(tm__step_recv_header(c, OP_P2P, 0, &in->s, &in->arrival));
        in->phase = 1;
    }
    while (in->phase == 1 && in->got < in->s.bytes) {
        TM_CHECK(tm__link_read_acquire(l, w, block ? 1 : 0, in->s.bytes - in->got, &p, &n));
        if (n == 0) return TM_OK;
        if (!tm_comm_dry()) memcpy((uint8_t *)in->s.dst + in->got, p, n);
        tm__link_read_release(l, n);
        in->got += n;
    }
    if (in->phase == 1) in->phase = 2;
    size_t pad = (TM_LINK_ALIGN - in->s.bytes % TM_LINK_ALIGN) % TM_LINK_ALIGN;
    if (in->phase == 2) {
        TM_CHECK(tm__link_read_acquire(l, w, block ? pad : 0, pad, &p, &n));
        if (n < pad) return TM_OK;
        tm__link_read_release(l, pad);
        in->phase = 3;
    }
    return TM_OK;
}

int tm_sendrecv(tm_comm *c, const void *sendbuf, size_t sendbytes, int dst, void *recvbuf,
                size_t recvbytes, int src)
{
    TM_CHECK(check_peer(c, dst));
    TM_CHECK(check_peer(c, src));
    step out;
    incoming in;
    memset(&out, 0, sizeof out);
    memset(&in, 0, sizeof in);
    out.out_rank = dst;
    out.local = sendbuf;
    out.bytes = sendbytes;
    in.s.in_rank = src;
    in.s.dst = recvbuf;
    in.s.bytes = recvbytes;
    TM_CHECK(tm__comm_to(c, dst, &out.out));
    TM_CHECK(tm__comm_from(c, src, &in.s.in));
    /* Send in pieces of at most a quarter ring, taking in between whatever
     * has arrived without waiting for it; wait for the incoming message only
     * once ours is out. The peer may be in a sendrecv too (then neither can
     * fill the other's ring while blocked: each drains before every piece)
     * or may be computing before it sends (then our send completes on its
     * own). The messages are ordinary ones: the peer may use tm_send and
     * tm_recv. */
    tm_vclock *vc = tm__device_clock(c->dev);
    double start = tm__clock_send_begin(vc), t = start;
    TM_CHECK(tm__step_send_header(c, OP_P2P, 0, &out, &t));
    size_t piece = tm_world_ring_bytes(c->world) / 4;
    for (size_t sent = 0; sent < sendbytes;) {
        TM_CHECK(advance(c, &in, 0));
        size_t k = sendbytes - sent < piece ? sendbytes - sent : piece;
        TM_CHECK(tm__step_transfer(c, &out, sent, sent + k));
        sent += k;
    }
    TM_CHECK(tm__link_send_pad(out.out, c->waiter, sendbytes));
    while (in.phase < 3) TM_CHECK(advance(c, &in, 1));
    tm__clock_send_end(vc, start, t, c->name, sendbytes);
    tm__clock_recv(vc, c->devices[src], in.arrival, c->name, recvbytes);
    return TM_OK;
}

/* Advances the receives without waiting (block 0), or waits for some of
 * the first one still open; a receive waits for the earlier ones from its
 * peer. *open: how many are not done. */
static int advance_all(tm_comm *c, incoming *in, const tm_p2p *recv, int n, int block, int *open)
{
    *open = 0;
    for (int i = 0; i < n; i++) {
        if (in[i].phase == 3) continue;
        int first = 1;
        for (int k = 0; k < i && first; k++)
            first = in[k].phase == 3 || recv[k].peer != recv[i].peer;
        if (!first) {
            ++*open;
            continue;
        }
        TM_CHECK(advance(c, &in[i], block && *open == 0));
        *open += in[i].phase != 3;
    }
    return TM_OK;
}

int tm_exchange(tm_comm *c, const tm_p2p *send, int n_send, const tm_p2p *recv, int n_recv)
{
    if (n_send < 0 || n_recv < 0 || n_send > TM_EXCHANGE_MAX || n_recv > TM_EXCHANGE_MAX)
        return tm_error(TM_EINVAL, "an exchange has at most %d sends and %d receives, not %d "
                        "and %d", TM_EXCHANGE_MAX, TM_EXCHANGE_MAX, n_send, n_recv);
    incoming in[TM_EXCHANGE_MAX];
    memset(in, 0, sizeof in);
    for (int i = 0; i < n_recv; i++) {
        TM_CHECK(check_peer(c, recv[i].peer));
        in[i].s.in_rank = recv[i].peer;
        in[i].s.dst = recv[i].buf;
        in[i].s.bytes = recv[i].bytes;
        TM_CHECK(tm__comm_from(c, recv[i].peer, &in[i].s.in));
    }
    tm_vclock *vc = tm__device_clock(c->dev);
    size_t piece = tm_world_ring_bytes(c->world) / 4;
    int open = n_recv;
    /* As tm_sendrecv: each send in pieces of at most a quarter ring, taking
     * in between whatever has arrived. */
    for (int k = 0; k < n_send; k++) {
        TM_CHECK(check_peer(c, send[k].peer));
        step out;
        memset(&out, 0, sizeof out);
        out.out_rank = send[k].peer;
        out.local = send[k].buf;
        out.bytes = send[k].bytes;
        TM_CHECK(tm__comm_to(c, send[k].peer, &out.out));
        double start = tm__clock_send_begin(vc), t = start;
        TM_CHECK(tm__step_send_header(c, OP_P2P, 0, &out, &t));
        for (size_t sent = 0; sent < out.bytes;) {
            TM_CHECK(advance_all(c, in, recv, n_recv, 0, &open));
            size_t n = out.bytes - sent < piece ? out.bytes - sent : piece;
            TM_CHECK(tm__step_transfer(c, &out, sent, sent + n));
            sent += n;
        }
        TM_CHECK(tm__link_send_pad(out.out, c->waiter, out.bytes));
        tm__clock_send_end(vc, start, t, c->name, out.bytes);
    }
    /* Waiting on one link while a peer fills another could close a cycle
     * round the ring: with two or more peers still to come, poll them all
     * and yield; with one left, sleep on its link. */
    TM_CHECK(advance_all(c, in, recv, n_recv, 0, &open));
    while (open > 0) {
        int peers = 0; /* distinct peers of the open receives */
        for (int i = 0; i < n_recv; i++) {
            int again = 0;
            for (int k = 0; k < i; k++) again |= in[k].phase != 3 && recv[k].peer == recv[i].peer;
            peers += in[i].phase != 3 && !again;
        }
        if (peers > 1) {
            if (atomic_load_explicit(c->waiter->abort, memory_order_relaxed)) return TM_EABORTED;
            sched_yield();
        }
        TM_CHECK(advance_all(c, in, recv, n_recv, peers <= 1, &open));
    }
    for (int i = 0; i < n_recv; i++)
        tm__clock_recv(vc, c->devices[recv[i].peer], in[i].arrival, c->name, recv[i].bytes);
    return TM_OK;
}
