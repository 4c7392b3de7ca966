#include "runtime/collectives.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <immintrin.h>
#endif

#include "runtime/clock_internal.h"
#include "runtime/comm_internal.h"
#include "runtime/status.h"

typedef enum {
    OP_ALLREDUCE = 1,
    OP_ALLGATHER,
    OP_REDUCE_SCATTER,
    OP_BROADCAST,
    OP_BARRIER,
    OP_P2P,
} op_kind;

static const char *op_name(uint32_t kind)
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

/* One step of an algorithm: optionally receive a message from `in`, combine
 * it with `local`, store the result in `dst` and forward it to `out` — the
 * primitives of NCCL's ring (send, recv-reduce-send, recv-reduce-copy-send,
 * recv-copy-send, recv) are the combinations of these fields. */
typedef struct {
    tm_link *in;           /* receive from (NULL: nothing received) */
    tm_link *out;          /* send to (NULL: nothing sent) */
    int in_rank, out_rank; /* group ranks of the peers, for messages */
    const void *local;     /* added to the received data when reduce, else
                              the data sent when nothing is received */
    void *dst;             /* result stored here (NULL: not stored) */
    size_t bytes;
    int reduce;            /* result = received + local (float32) */
    float scale;           /* result *= scale when != 1 (avg, last step) */
    int nt;                /* non-temporal stores into dst */
    int indep;             /* what is sent does not depend on what is
                              received (modeled time: sent before) */
} step;

/* The element loops of every step. The portable ones are the reference and
 * the fallback; the library is built for baseline x86-64, where gcc -O2
 * leaves them scalar (addss), so x86 gets AVX2 versions chosen at run time.
 * Those load each operand once and store the value to both places a step
 * may write, the outgoing ring and the output. Measured here, against the
 * scalar loops that stored the output in a second pass over the ring: a
 * 2-device all-reduce 1.45x faster at 1 MiB and 1.39x at 16 MiB (cores
 * close together, see tm__link_stream); with the cores far apart, the
 * second pass alone, put back, made it 1.25x slower at 1 MiB and 1.33x at
 * 16 MiB, and the 8-device one (whose all-gather copies ring to ring and
 * output) 1.1x. */
enum {
    ST_DST_NT = 1,  /* non-temporal stores into the output */
    ST_RING_NT = 2, /* non-temporal stores into the outgoing ring */
};

/* out and/or dst = (a + b) * scale; dst may be a or b (accumulation). */
static void reduce_ref(float *out, float *dst, const float *a, const float *b, size_t n,
                       float scale)
{
    float *to = out != NULL ? out : dst;
    if (scale != 1.0f)
        for (size_t i = 0; i < n; i++) to[i] = (a[i] + b[i]) * scale;
    else
        for (size_t i = 0; i < n; i++) to[i] = a[i] + b[i];
    if (out != NULL && dst != NULL) memcpy(dst, out, n * sizeof *dst);
}

/* out and/or dst = src. */
static void copy_ref(float *out, float *dst, const float *src, size_t n)
{
    if (out != NULL) memcpy(out, src, n * sizeof *src);
    if (dst != NULL) memcpy(dst, src, n * sizeof *src);
}

#if defined(__x86_64__)
#define TM_AVX2 __attribute__((target("avx2")))

/* Eight floats to out[i] and dst[i], streaming where `how` says. */
TM_AVX2 static inline void put8(float *out, float *dst, size_t i, __m256 v, int how)
{
    if (out != NULL) {
        if (how & ST_RING_NT)
            _mm256_stream_ps(out + i, v);
        else
            _mm256_storeu_ps(out + i, v);
    }
    if (dst != NULL) {
        if (how & ST_DST_NT)
            _mm256_stream_ps(dst + i, v);
        else
            _mm256_storeu_ps(dst + i, v);
    }
}

/* Elements stored the plain way before the streamed target reaches the
 * 32-byte alignment streaming stores need (the ring first: its stores are
 * the ones a reader waits for). *how loses the streaming of a target that
 * is still misaligned then. */
static size_t align_head(const float *out, const float *dst, size_t n, int *how)
{
    if (out == NULL) *how &= ~ST_RING_NT;
    if (dst == NULL) *how &= ~ST_DST_NT;
    const float *lead = *how & ST_RING_NT ? out : *how & ST_DST_NT ? dst : NULL;
    if (lead == NULL) return 0;
    size_t h = ((32 - ((uintptr_t)lead & 31)) & 31) / sizeof(float);
    if (h > n) h = n;
    if ((*how & ST_RING_NT) && ((uintptr_t)(out + h) & 31) != 0) *how &= ~ST_RING_NT;
    if ((*how & ST_DST_NT) && ((uintptr_t)(dst + h) & 31) != 0) *how &= ~ST_DST_NT;
    return h;
}

TM_AVX2 static void reduce_avx2(float *out, float *dst, const float *a, const float *b, size_t n,
                                float scale, int how)
{
    size_t i = align_head(out, dst, n, &how);
    reduce_ref(out, dst, a, b, i, scale);
    const __m256 s = _mm256_set1_ps(scale);
    const int scaled = scale != 1.0f;
    for (; i + 16 <= n; i += 16) {
        __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        if (scaled) {
            v0 = _mm256_mul_ps(v0, s);
            v1 = _mm256_mul_ps(v1, s);
        }
        put8(out, dst, i, v0, how);
        put8(out, dst, i + 8, v1, how);
    }
    reduce_ref(out ? out + i : NULL, dst ? dst + i : NULL, a + i, b + i, n - i, scale);
}

TM_AVX2 static void copy_avx2(float *out, float *dst, const float *src, size_t n, int how)
{
    size_t i = align_head(out, dst, n, &how);
    if (how == 0 && (out == NULL || dst == NULL)) {
        /* One plain target: the C library's copy is as fast as any loop. */
        copy_ref(out, dst, src, n);
        return;
    }
    copy_ref(out, dst, src, i);
    for (; i + 16 <= n; i += 16) {
        __m256 v0 = _mm256_loadu_ps(src + i), v1 = _mm256_loadu_ps(src + i + 8);
        put8(out, dst, i, v0, how);
        put8(out, dst, i + 8, v1, how);
    }
    copy_ref(out ? out + i : NULL, dst ? dst + i : NULL, src + i, n - i);
}

static int have_avx2(void) { return __builtin_cpu_supports("avx2"); }
#endif

/* how: ST_* flags, honoured where the CPU allows (the caller fences). */
static void reduce_floats(float *out, float *dst, const float *a, const float *b, size_t n,
                          float scale, int how)
{
#if defined(__x86_64__)
    if (have_avx2()) {
        reduce_avx2(out, dst, a, b, n, scale, how);
        return;
    }
#endif
    (void)how;
    reduce_ref(out, dst, a, b, n, scale);
}

static void copy_floats(float *out, float *dst, const float *src, size_t n, int how)
{
#if defined(__x86_64__)
    if (have_avx2()) {
        copy_avx2(out, dst, src, n, how);
        return;
    }
#endif
    (void)how;
    copy_ref(out, dst, src, n);
}

static int mismatch(tm_comm *c, const step *s, uint32_t kind, const tm_msg_header *h)
{
    return tm_error(TM_EINVAL,
                    "mismatched collectives on communicator '%s': device %d expected %s #%u of "
                    "%zu bytes from device %d, which sent %s #%u of %llu bytes%s",
                    c->name, c->devices[c->rank], op_name(kind), c->seq, s->bytes,
                    c->devices[s->in_rank], op_name(h->kind), h->seq,
                    (unsigned long long)h->bytes,
                    h->comm != c->id ? " on another communicator" : "");
}

/* The header carries the message's modeled arrival time: sent at engine
 * time *t, which becomes the end of its transmission. */
static int send_header(tm_comm *c, uint32_t kind, uint32_t seq, const step *s, double *t)
{
    double arrival = tm__clock_send(tm__device_clock(c->dev), s->out, s->bytes, t);
    c->sent += s->bytes;
    tm_msg_header h = {kind, c->id, s->bytes, seq, 0, arrival};
    return tm__link_send_header(s->out, c->waiter, &h);
}

/* *arrival: the message's modeled arrival time. */
static int recv_header(tm_comm *c, uint32_t kind, uint32_t seq, const step *s, double *arrival)
{
    tm_msg_header h;
    TM_CHECK(tm__link_recv_header(s->in, c->waiter, &h));
    if (h.kind != kind || h.comm != c->id || h.bytes != s->bytes || h.seq != seq)
        return mismatch(c, s, kind, &h);
    *arrival = h.vtime;
    return TM_OK;
}

/* Moves bytes [from, to) of the step's message through the links. */
static int transfer(tm_comm *c, const step *s, size_t from, size_t to)
{
    tm_waiter *w = c->waiter;
    /* Reductions move whole floats; copies any bytes. */
    size_t unit = s->reduce ? sizeof(float) : 1;
    const uint8_t *local = s->local;
    uint8_t *dst = s->dst;
    /* The link knows whether its ring is better written around the caches
     * (the two devices' cores far apart). */
    int how = s->nt ? ST_DST_NT : 0;
    if (s->out != NULL && tm__link_stream(s->out)) how |= ST_RING_NT;
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
        if (s->reduce) {
            reduce_floats((float *)ring_out, dst ? (float *)(dst + done) : NULL,
                          (const float *)src, (const float *)(local + done), k / sizeof(float),
                          s->scale, how);
        } else if (k % sizeof(float) == 0 && done % sizeof(float) == 0) {
            copy_floats((float *)ring_out, dst ? (float *)(dst + done) : NULL, (const float *)src,
                        k / sizeof(float), how);
        } else {
            if (ring_out != NULL) memcpy(ring_out, src, k);
            if (dst != NULL) memcpy(dst + done, src, k);
        }
#if defined(__SSE__)
        /* Streaming stores are weakly ordered and the commit's release
         * store orders only plain ones: fence them before publishing. */
        if (how & ST_RING_NT) _mm_sfence();
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
static int run_step(tm_comm *c, uint32_t kind, uint32_t seq, const step *s, double *t)
{
    int send_first = s->in == NULL || s->indep;
    if (s->out != NULL && send_first) TM_CHECK(send_header(c, kind, seq, s, t));
    if (s->in != NULL) {
        double arrival;
        TM_CHECK(recv_header(c, kind, seq, s, &arrival));
        if (arrival > *t) *t = arrival;
    }
    if (s->out != NULL && !send_first) TM_CHECK(send_header(c, kind, seq, s, t));
    TM_CHECK(transfer(c, s, 0, s->bytes));
    return finish(c, s);
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
        TM_CHECK(run_step(c, OP_ALLREDUCE, seq, &s, t));
        for (int i = 1; i < n - 1; i++) {
            segment(total, n, (r - i + n) % n, &off, &len);
            s = proto;
            s.local = send + base + off;
            s.bytes = len * sizeof(float);
            s.reduce = 1;
            TM_CHECK(run_step(c, OP_ALLREDUCE, seq, &s, t));
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
        TM_CHECK(run_step(c, OP_ALLREDUCE, seq, &s, t));
        /* All-gather: finished segments travel on (recv-copy-send), the last
         * one only lands (recv). */
        for (int i = 1; i < n; i++) {
            segment(total, n, (r + 1 - i + n) % n, &off, &len);
            s = proto;
            if (i == n - 1) s.out = NULL;
            s.dst = recv + base + off;
            s.bytes = len * sizeof(float);
            s.nt = nt;
            TM_CHECK(run_step(c, OP_ALLREDUCE, seq, &s, t));
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
    for (int j = 1; j < n; j++) {
        int to = (r + j) % n;
        memset(&s, 0, sizeof s);
        s.out_rank = to;
        TM_CHECK(tm__comm_to(c, to, &s.out));
        s.local = send;
        s.bytes = bytes;
        TM_CHECK(run_step(c, OP_ALLREDUCE, seq, &s, t));
    }
    const float *mine = send;
    if (send == recv) {
        void *copy;
        TM_CHECK(scratch(c, bytes, &copy));
        memcpy(copy, send, bytes);
        mine = copy;
    }
    for (int j = 0; j < n; j++) {
        float sc = j == n - 1 ? scale : 1.0f;
        if (j == r) {
            if (j == 0)
                for (size_t i = 0; i < count; i++) recv[i] = mine[i] * sc;
            else
                reduce_floats(NULL, recv, recv, mine, count, sc, 0);
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
        TM_CHECK(run_step(c, OP_ALLREDUCE, seq, &s, t));
        if (j == 0 && sc != 1.0f)
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

int tm_allreduce(tm_comm *c, const float *send, float *recv, size_t count, tm_reduce_op op)
{
    uint32_t seq = c->seq++;
    int n = c->size;
    float scale = op == TM_AVG ? 1.0f / (float)n : 1.0f;
    size_t bytes = count * sizeof(float);
    if (n == 1) {
        if (send != recv) memmove(recv, send, bytes);
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
    if ((const uint8_t *)send != in_place) memmove(out + (size_t)r * bytes, send, bytes);
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
        TM_CHECK(run_step(c, OP_ALLGATHER, seq, &s, t));
        for (int i = 1; i < n; i++) {
            int j = (r - i + n) % n;
            s = proto;
            if (i == n - 1) s.out = NULL;
            s.dst = out + (size_t)j * bytes + off;
            s.bytes = len;
            s.nt = nt;
            TM_CHECK(run_step(c, OP_ALLGATHER, seq, &s, t));
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
        if (send != recv) memmove(recv, send, count * sizeof(float));
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
            TM_CHECK(run_step(c, OP_REDUCE_SCATTER, seq, &s, t));
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
    /* A chain root -> root+1 -> ... streams through every link at once. */
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
    return vend(c, &v, run_step(c, OP_BROADCAST, seq, &s, &v.t), "broadcast", s.bytes);
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
        TM_CHECK(run_step(c, OP_BARRIER, seq, &s, t));
    }
    return vend(c, &v, TM_OK, "barrier", 0);
}

static int check_peer(tm_comm *c, int peer)
{
    if (peer < 0 || peer >= c->size || peer == c->rank)
        return tm_error(TM_EINVAL, "device %d: peer rank %d is not another member of '%s' (size %d)",
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
    TM_CHECK(run_step(c, OP_P2P, 0, &s, &t));
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
    TM_CHECK(run_step(c, OP_P2P, 0, &s, &arrival));
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
        TM_CHECK(recv_header(c, OP_P2P, 0, &in->s, &in->arrival));
        in->phase = 1;
    }
    while (in->phase == 1 && in->got < in->s.bytes) {
        TM_CHECK(tm__link_read_acquire(l, w, block ? 1 : 0, in->s.bytes - in->got, &p, &n));
        if (n == 0) return TM_OK;
        memcpy((uint8_t *)in->s.dst + in->got, p, n);
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
    TM_CHECK(send_header(c, OP_P2P, 0, &out, &t));
    size_t piece = tm_world_ring_bytes(c->world) / 4;
    for (size_t sent = 0; sent < sendbytes;) {
        TM_CHECK(advance(c, &in, 0));
        size_t k = sendbytes - sent < piece ? sendbytes - sent : piece;
        TM_CHECK(transfer(c, &out, sent, sent + k));
        sent += k;
    }
    TM_CHECK(tm__link_send_pad(out.out, c->waiter, sendbytes));
    while (in.phase < 3) TM_CHECK(advance(c, &in, 1));
    tm__clock_send_end(vc, start, t, c->name, sendbytes);
    tm__clock_recv(vc, c->devices[src], in.arrival, c->name, recvbytes);
    return TM_OK;
}
