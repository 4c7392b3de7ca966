#include "runtime/collectives.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <immintrin.h>
#endif

#include "runtime/clock_internal.h"
#include "runtime/reduce.h"
#include "runtime/status.h"
#include "runtime/step.h"

/* The direct (latency) all-reduce is used up to this many bytes on groups up
 * to DIRECT_MAX_DEVICES; see README for the measurement behind it. */
#define DIRECT_MAX_BYTES ((size_t)16 << 10)
#define DIRECT_MAX_DEVICES 8
/* Outputs this large are written with non-temporal stores: the caller will
 * not read them soon, and bypassing the cache keeps the rings in it. Still
 * right here: streaming a 1 MiB output cost 10%, plain stores into a 16 MiB
 * one 9%. */
#define NT_MIN_BYTES ((size_t)4 << 20)

static atomic_int algo_override = -1;

int tm_allreduce_algo_parse(const char *name, tm_allreduce_algo *out)
{
    static const char *names[] = {"auto", "ring", "direct"};
    for (int i = 0; i < 3; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (tm_allreduce_algo)i;
            return 0;
        }
    return -1;
}

void tm_allreduce_set_algo(tm_allreduce_algo algo) { atomic_store(&algo_override, (int)algo); }

tm_allreduce_algo tm_allreduce_get_algo(void)
{
    int a = atomic_load(&algo_override);
    if (a < 0) {
        tm_allreduce_algo parsed = TM_ALGO_AUTO;
        const char *env = getenv("TM_ALLREDUCE");
        if (env != NULL) tm_allreduce_algo_parse(env, &parsed);
        a = (int)parsed;
        atomic_store(&algo_override, a);
    }
    return (tm_allreduce_algo)a;
}

/* Links to the ring neighbours. */
static int ring_links(tm_comm *c, step *proto)
{
    memset(proto, 0, sizeof *proto);
    proto->in_rank = (c->rank + c->size - 1) % c->size;
    proto->out_rank = (c->rank + 1) % c->size;
    proto->scale = 1.0f;
    TM_CHECK(tm__comm_from(c, proto->in_rank, &proto->in));
    return tm__comm_to(c, proto->out_rank, &proto->out);
}

/* Elements per ring step: a quarter of the ring, so a device is never more
 * than one step's data ahead of its successor and the ring cannot fill up
 * around the whole cycle (the no-deadlock condition of a bounded ring). */
static size_t ring_chunk(tm_comm *c)
{
    return tm_world_ring_bytes(c->world) / 4 / sizeof(float);
}

/* Segment j of n over `total` elements: balanced, the first total % n one
 * longer, so any count works. */
static void segment(size_t total, int n, int j, size_t *off, size_t *len)
{
    size_t base = total / (size_t)n, rem = total % (size_t)n, jj = (size_t)j;
    *off = jj * base + (jj < rem ? jj : rem);
    *len = base + (jj < rem);
}

static int ring_allreduce(tm_comm *c, uint32_t seq, const float *send, float *recv, size_t count,
                          float scale, int nt, double *t)
{
    int n = c->size, r = c->rank;
    step proto, s;
    c->allreduce_runs[TM_ALGO_RING]++;
    TM_CHECK(ring_links(c, &proto));
    size_t chunk = ring_chunk(c), round = chunk * (size_t)n;
    for (size_t base = 0; base < count; base += round) {
        size_t total = count - base < round ? count - base : round, off, len;
        /* Reduce-scatter: segment r leaves first; at step i the partial sum
         * of segment r - i arrives, gains our term and moves on. */
        segment(total, n, r, &off, &len);
        s = proto;
        s.in = NULL;
        s.local = send + base + off;
        s.bytes = len * sizeof(float);
        TM_CHECK(tm__step_run(c, OP_ALLREDUCE, seq, &s, t));
        for (int i = 1; i < n - 1; i++) {
            segment(total, n, (r - i + n) % n, &off, &len);
            s = proto;
            s.local = send + base + off;
            s.bytes = len * sizeof(float);
            s.reduce = 1;
            TM_CHECK(tm__step_run(c, OP_ALLREDUCE, seq, &s, t));
        }
        /* Segment r + 1 is complete here: store it and start the all-gather
         * with it (recv-reduce-copy-send). */
        segment(total, n, (r + 1) % n, &off, &len);
        s = proto;
        s.local = send + base + off;
        s.dst = recv + base + off;
        s.bytes = len * sizeof(float);
        s.reduce = 1;
        s.scale = scale;
        s.nt = nt;
        TM_CHECK(tm__step_run(c, OP_ALLREDUCE, seq, &s, t));
        /* All-gather: finished segments travel on (recv-copy-send), the last
         * one only lands (recv). */
        for (int i = 1; i < n; i++) {
            segment(total, n, (r + 1 - i + n) % n, &off, &len);
            s = proto;
            if (i == n - 1) s.out = NULL;
            s.dst = recv + base + off;
            s.bytes = len * sizeof(float);
            s.nt = nt;
            TM_CHECK(tm__step_run(c, OP_ALLREDUCE, seq, &s, t));
        }
    }
    return TM_OK;
}

static int scratch(tm_comm *c, size_t bytes, void **out)
{
    if (c->scratch_bytes < bytes) {
        if (c->scratch != NULL) tm_device_free(c->dev, c->scratch);
        c->scratch_bytes = 0;
        c->scratch = tm_device_alloc(c->dev, bytes, TM_TAG_COMM);
        if (c->scratch == NULL) return TM_ENOMEM;
        c->scratch_bytes = bytes;
    }
    *out = c->scratch;
    return TM_OK;
}

/* Latency-oriented: one hop. Everyone sends its vector to everyone, then
 * sums x_0 + x_1 + ... in rank order, so every member computes the same
 * bits. Needs each message to fit half a ring (checked by the caller). */
static int direct_allreduce(tm_comm *c, uint32_t seq, const float *send, float *recv,
                            size_t count, float scale, double *t)
{
    int n = c->size, r = c->rank;
    size_t bytes = count * sizeof(float);
    step s;
    c->allreduce_runs[TM_ALGO_DIRECT]++;
    for (int j = 1; j < n; j++) {
        int to = (r + j) % n;
        memset(&s, 0, sizeof s);
        s.out_rank = to;
        TM_CHECK(tm__comm_to(c, to, &s.out));
        s.local = send;
        s.bytes = bytes;
        TM_CHECK(tm__step_run(c, OP_ALLREDUCE, seq, &s, t));
    }
    const float *mine = send;
    if (send == recv) {
        void *copy;
        TM_CHECK(scratch(c, bytes, &copy));
        if (!tm_comm_dry()) memcpy(copy, send, bytes);
        mine = copy;
    }
    for (int j = 0; j < n; j++) {
        float sc = j == n - 1 ? scale : 1.0f;
        if (j == r && tm_comm_dry()) continue;
        if (j == r) {
            if (j == 0)
                for (size_t i = 0; i < count; i++) recv[i] = mine[i] * sc;
            else
                tm__reduce_floats(NULL, recv, recv, mine, count, sc, 0);
            continue;
        }
        memset(&s, 0, sizeof s);
        s.in_rank = j;
        TM_CHECK(tm__comm_from(c, j, &s.in));
        s.dst = recv;
        s.bytes = bytes;
        s.scale = sc;
        if (j > 0) {
            s.local = recv;
            s.reduce = 1;
        }
        TM_CHECK(tm__step_run(c, OP_ALLREDUCE, seq, &s, t));
        if (j == 0 && sc != 1.0f && !tm_comm_dry())
            for (size_t i = 0; i < count; i++) recv[i] *= sc;
    }
    return TM_OK;
}

/* A collective's modeled time on the communication engine. */
typedef struct {
    tm_vclock *vc;
    double start, t;
} vspan;

static vspan vbegin(tm_comm *c)
{
    tm_vclock *vc = tm__device_clock(c->dev);
    double s = tm__clock_comm_begin(vc);
    c->sent = 0;
    return (vspan){vc, s, s};
}

/* Ends the span of a collective that moved `bytes` (nccl-tests' count). */
static int vend(tm_comm *c, const vspan *v, int st, const char *name, size_t bytes)
{
    if (st == TM_OK) tm__clock_comm_end(v->vc, v->start, v->t, name, c->name, bytes, c->sent);
    return st;
}

static void end_nt(int nt)
{
#if defined(__SSE__)
    /* Non-temporal stores are weakly ordered: fence them before the caller
     * (or another thread after a join) relies on the output. */
    if (nt) _mm_sfence();
#else
    (void)nt;
#endif
}

tm_allreduce_algo tm_allreduce_algo_for(const tm_comm *c, size_t count)
{
    size_t bytes = count * sizeof(float);
    tm_allreduce_algo algo = tm_allreduce_get_algo();
    size_t direct_max = tm_world_ring_bytes(c->world) / 2 - 2 * TM_LINK_ALIGN;
    int direct_fits = bytes <= direct_max && c->size <= DIRECT_MAX_DEVICES;
    if (algo == TM_ALGO_DIRECT && !direct_fits) return TM_ALGO_RING;
    if (algo == TM_ALGO_AUTO)
        return direct_fits && bytes <= DIRECT_MAX_BYTES ? TM_ALGO_DIRECT : TM_ALGO_RING;
    return algo;
}

uint64_t tm_allreduce_runs(const tm_comm *c, tm_allreduce_algo algo)
{
    if (algo == TM_ALGO_AUTO)
        return c->allreduce_runs[TM_ALGO_RING] + c->allreduce_runs[TM_ALGO_DIRECT];
    return c->allreduce_runs[algo];
}

int tm_allreduce(tm_comm *c, const float *send, float *recv, size_t count, tm_reduce_op op)
{
    uint32_t seq = c->seq++;
    int n = c->size;
    float scale = op == TM_AVG ? 1.0f / (float)n : 1.0f;
    size_t bytes = count * sizeof(float);
    if (n == 1) {
        if (send != recv && !tm_comm_dry()) memmove(recv, send, bytes);
        return TM_OK;
    }
    if (count == 0) return TM_OK;
    tm_allreduce_algo algo = tm_allreduce_algo_for(c, count);
    vspan v = vbegin(c);
    if (algo == TM_ALGO_DIRECT)
        return vend(c, &v, direct_allreduce(c, seq, send, recv, count, scale, &v.t),
                    "allreduce (direct)", bytes);
    int nt = bytes >= NT_MIN_BYTES;
    int st = ring_allreduce(c, seq, send, recv, count, scale, nt, &v.t);
    end_nt(nt);
    return vend(c, &v, st, "allreduce", bytes);
}

/* Ring all-gather of `bytes` per rank, in slices of one ring chunk. */
static int ring_allgather(tm_comm *c, uint32_t seq, const void *send, void *recv, size_t bytes,
                          double *t)
{
    int n = c->size, r = c->rank;
    uint8_t *out = recv;
    const uint8_t *in_place = out + (size_t)r * bytes;
    if ((const uint8_t *)send != in_place && !tm_comm_dry())
        memmove(out + (size_t)r * bytes, send, bytes);
    if (n == 1) return TM_OK;
    step proto, s;
    TM_CHECK(ring_links(c, &proto));
    size_t chunk = ring_chunk(c) * sizeof(float);
    int nt = bytes * (size_t)n >= NT_MIN_BYTES;
    for (size_t off = 0; off == 0 || off < bytes; off += chunk) {
        size_t len = bytes - off < chunk ? bytes - off : chunk;
        s = proto;
        s.in = NULL;
        s.local = in_place + off;
        s.bytes = len;
        TM_CHECK(tm__step_run(c, OP_ALLGATHER, seq, &s, t));
        for (int i = 1; i < n; i++) {
            int j = (r - i + n) % n;
            s = proto;
            if (i == n - 1) s.out = NULL;
            s.dst = out + (size_t)j * bytes + off;
            s.bytes = len;
            s.nt = nt;
            TM_CHECK(tm__step_run(c, OP_ALLGATHER, seq, &s, t));
        }
        if (bytes == 0) break;
    }
    end_nt(nt);
    return TM_OK;
}

int tm_allgather(tm_comm *c, const float *send, float *recv, size_t count)
{
    vspan v = vbegin(c);
    int st = ring_allgather(c, c->seq++, send, recv, count * sizeof(float), &v.t);
    if (c->size == 1) return st;
    return vend(c, &v, st, "allgather", count * sizeof(float) * (size_t)c->size);
}

int tm_reduce_scatter(tm_comm *c, const float *send, float *recv, size_t count, tm_reduce_op op)
{
    uint32_t seq = c->seq++;
    int n = c->size, r = c->rank;
    float scale = op == TM_AVG ? 1.0f / (float)n : 1.0f;
    if (n == 1) {
        if (send != recv && !tm_comm_dry()) memmove(recv, send, count * sizeof(float));
        return TM_OK;
    }
    step proto, s;
    TM_CHECK(ring_links(c, &proto));
    size_t chunk = ring_chunk(c);
    vspan v = vbegin(c);
    double *t = &v.t;
    for (size_t off = 0; off < count; off += chunk) {
        size_t len = count - off < chunk ? count - off : chunk;
        /* Block r - 1 leaves first, so that after n - 1 hops the complete
         * sum that arrives is our own block r. */
        for (int i = 0; i < n; i++) {
            int j = (r - 1 - i + 2 * n) % n;
            s = proto;
            if (i == 0) s.in = NULL;
            if (i == n - 1) {
                s.out = NULL;
                s.dst = recv + off;
                s.scale = scale;
            }
            s.local = send + (size_t)j * count + off;
            s.bytes = len * sizeof(float);
            s.reduce = i > 0;
            TM_CHECK(tm__step_run(c, OP_REDUCE_SCATTER, seq, &s, t));
        }
    }
    return vend(c, &v, TM_OK, "reduce_scatter", count * sizeof(float) * (size_t)n);
}

int tm_broadcast(tm_comm *c, float *buf, size_t count, int root)
{
    uint32_t seq = c->seq++;
    int n = c->size, r = c->rank;
    if (root < 0 || root >= n)
        return tm_error(TM_EINVAL, "broadcast root %d outside communicator '%s' of %d", root,
                        c->name, n);
    if (n == 1) return TM_OK;
    /* A chain root -> root+1 -> ...: in wall time the pieces stream through
     * every link at once; the modeled clock, like every step, forwards a
     * message once it has arrived whole (store and forward). */
    int pos = (r - root + n) % n;
    step s;
    memset(&s, 0, sizeof s);
    s.bytes = count * sizeof(float);
    s.in_rank = (r + n - 1) % n;
    s.out_rank = (r + 1) % n;
    if (pos > 0) TM_CHECK(tm__comm_from(c, s.in_rank, &s.in));
    if (pos < n - 1) TM_CHECK(tm__comm_to(c, s.out_rank, &s.out));
    if (pos == 0)
        s.local = buf;
    else
        s.dst = buf;
    vspan v = vbegin(c);
    return vend(c, &v, tm__step_run(c, OP_BROADCAST, seq, &s, &v.t), "broadcast", s.bytes);
}

int tm_barrier(tm_comm *c)
{
    uint32_t seq = c->seq++;
    int n = c->size, r = c->rank;
    /* Dissemination: after round k everyone has heard, directly or not,
     * from 2^(k+1) members; log2(n) rounds and n log n links in all. */
    if (n == 1) return TM_OK;
    vspan v = vbegin(c);
    double *t = &v.t;
    for (int k = 1; k < n; k *= 2) {
        step s;
        memset(&s, 0, sizeof s);
        s.indep = 1;
        s.out_rank = (r + k) % n;
        s.in_rank = (r - k % n + n) % n;
        TM_CHECK(tm__comm_to(c, s.out_rank, &s.out));
        TM_CHECK(tm__comm_from(c, s.in_rank, &s.in));
        TM_CHECK(tm__step_run(c, OP_BARRIER, seq, &s, t));
    }
    return vend(c, &v, TM_OK, "barrier", 0);
}
