/* Collectives against serial references: every op, group sizes 1-9, counts
 * 0, 1, 7, 1000 and larger than a ring, in place and not, both all-reduce
 * algorithms (and which one ran), outputs of 4 MiB and more with misaligned
 * starts (the streaming stores), random sequences on split groups, failure
 * and deadlock. Every element of every output is checked, and every output
 * buffer is fenced by guards that must come back untouched. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/collectives.h"
#include "runtime/status.h"
#include "tests/guarded.h"

/* Small rings make "larger than the ring" cheap: 4 KiB = 1024 floats. */
#define RING 4096
#define BIG 2600 /* floats: 2.5 rings */

/* Exactly representable small integers: any summation order gives the
 * exact sum, so results compare with ==. */
static float value(int seed, int rank, size_t i)
{
    return (float)((int)((seed * 31u + rank * 7u + i * 3u) % 17u) - 8);
}

static tm_world *make_world_sized(int n, size_t mem_cap, size_t ring)
{
    tm_world_config cfg;
    tm_world_config_default(&cfg);
    cfg.n_devices = n;
    cfg.mem_cap = mem_cap;
    cfg.ring_bytes = ring;
    cfg.watchdog_s = 5;
    tm_world *w = NULL;
    int st = tm_world_create(&w, &cfg);
    cr_assert_eq(st, TM_OK, "world_create: %s", tm_error_message());
    return w;
}

static tm_world *make_world(int n) { return make_world_sized(n, 1 << 20, RING); }

/* The largest message the direct all-reduce takes on a ring of `ring`
 * bytes: half the ring less two alignment units (runtime/collectives.h). */
static size_t direct_max_floats(size_t ring)
{
    return (ring / 2 - 2 * TM_LINK_ALIGN) / sizeof(float);
}

/* The algorithm tm_allreduce must run, by the rules runtime/collectives.h
 * documents: the direct one only on groups of up to 8 and for messages of
 * up to half a ring; auto picks it only up to 16 KiB. */
static tm_allreduce_algo expected_algo(tm_allreduce_algo forced, int n, size_t count,
                                       size_t ring)
{
    int direct_fits = n <= 8 && count <= direct_max_floats(ring);
    if (forced == TM_ALGO_RING || !direct_fits) return TM_ALGO_RING;
    if (forced == TM_ALGO_DIRECT) return TM_ALGO_DIRECT;
    return count * sizeof(float) <= (16 << 10) ? TM_ALGO_DIRECT : TM_ALGO_RING;
}

typedef struct {
    size_t count;
    int in_place;
    tm_reduce_op op;
    size_t skew;             /* every buffer starts this many floats past an
                                aligned address */
    tm_allreduce_algo algo;  /* all-reduce: the algorithm that must run */
    findings f;
} job;

/* The all-reduce ran exactly once, with the expected algorithm, or not at
 * all when it had nothing to move. */
static void algo_check(job *j, tm_comm *c, int r)
{
    int moves = tm_comm_size(c) > 1 && j->count > 0;
    uint64_t ring = tm_allreduce_runs(c, TM_ALGO_RING);
    uint64_t direct = tm_allreduce_runs(c, TM_ALGO_DIRECT);
    uint64_t want_ring = moves && j->algo == TM_ALGO_RING;
    uint64_t want_direct = moves && j->algo == TM_ALGO_DIRECT;
    if (ring != want_ring || direct != want_direct)
        found(&j->f, "device %d: ran ring %llu and direct %llu times, want %llu and %llu", r,
              (unsigned long long)ring, (unsigned long long)direct,
              (unsigned long long)want_ring, (unsigned long long)want_direct);
    if (tm_allreduce_runs(c, TM_ALGO_AUTO) != ring + direct)
        found(&j->f, "device %d: all-reduce runs of both algorithms do not add up", r);
}

static int allreduce_fn(tm_device *dev, void *arg)
{
    job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int n = tm_comm_size(c), r = tm_comm_rank(c);
    size_t cnt = j->count;
    guarded gs = {0}, gr = {0};
    float *send = guarded_alloc(dev, &gs, cnt, j->skew, j->in_place ? GUARD_OUT : GUARD_IN);
    float *recv = j->in_place ? send : guarded_alloc(dev, &gr, cnt, j->skew, GUARD_OUT);
    if (send == NULL || recv == NULL) return TM_ENOMEM;
    for (size_t i = 0; i < cnt; i++) send[i] = value(1, r, i);
    TM_CHECK(tm_allreduce(c, send, recv, cnt, j->op));
    for (size_t i = 0; i < cnt; i++) {
        float sum = 0;
        for (int q = 0; q < n; q++) sum += value(1, q, i);
        value_check(&j->f, r, "recv", recv, i, j->op == TM_AVG ? sum * (1.0f / (float)n) : sum);
        if (!j->in_place) value_check(&j->f, r, "send", send, i, value(1, r, i));
    }
    guards_check(&j->f, r, "send", &gs);
    if (!j->in_place) {
        guards_check(&j->f, r, "recv", &gr);
        guarded_free(dev, &gr);
    }
    guarded_free(dev, &gs);
    algo_check(j, c, r);
    return TM_OK;
}

/* Runs fn on every device and reports what they found (in *f) under
 * `label`. */
static void run_checked(tm_world *w, tm_device_fn fn, void *arg, findings *f, const char *label)
{
    int st = tm_world_run(w, fn, arg);
    cr_expect_eq(st, TM_OK, "%s: %s", label, tm_world_error(w));
    findings_report(f, label);
}

static const size_t counts[] = {0, 1, 7, 1000, BIG};
#define N_COUNTS (sizeof counts / sizeof counts[0])

static void sweep_allreduce(tm_allreduce_algo algo)
{
    /* Around the direct algorithm's limit too: its last message and the
     * first one it must leave to the ring. */
    const size_t sizes[] = {0, 1, 7, direct_max_floats(RING), direct_max_floats(RING) + 1, 1000,
                            BIG};
    tm_allreduce_set_algo(algo);
    for (int n = 1; n <= 9; n++) {
        tm_world *w = make_world(n);
        for (size_t ci = 0; ci < sizeof sizes / sizeof sizes[0]; ci++)
            for (int in_place = 0; in_place < 2; in_place++)
                for (int op = 0; op < 2; op++) {
                    job j = {.count = sizes[ci], .in_place = in_place, .op = (tm_reduce_op)op,
                             .algo = expected_algo(algo, n, sizes[ci], RING)};
                    char label[96];
                    snprintf(label, sizeof label, "allreduce n=%d count=%zu in_place=%d op=%d",
                             n, sizes[ci], in_place, op);
                    run_checked(w, allreduce_fn, &j, &j.f, label);
                }
        tm_world_destroy(w);
    }
    tm_allreduce_set_algo(TM_ALGO_AUTO);
}

Test(collectives, allreduce_ring, .timeout = 120) { sweep_allreduce(TM_ALGO_RING); }
Test(collectives, allreduce_direct, .timeout = 120) { sweep_allreduce(TM_ALGO_DIRECT); }
Test(collectives, allreduce_auto, .timeout = 120) { sweep_allreduce(TM_ALGO_AUTO); }

static int allgather_fn(tm_device *dev, void *arg)
{
    job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int n = tm_comm_size(c), r = tm_comm_rank(c);
    size_t cnt = j->count;
    guarded gs = {0}, gr = {0};
    float *recv = guarded_alloc(dev, &gr, (size_t)n * cnt, j->skew, GUARD_OUT);
    float *send = j->in_place ? recv + (size_t)r * cnt
                              : guarded_alloc(dev, &gs, cnt, j->skew, GUARD_IN);
    if (send == NULL || recv == NULL) return TM_ENOMEM;
    for (size_t i = 0; i < cnt; i++) send[i] = value(2, r, i);
    TM_CHECK(tm_allgather(c, send, recv, cnt));
    for (int q = 0; q < n; q++)
        for (size_t i = 0; i < cnt; i++)
            value_check(&j->f, r, "recv", recv, (size_t)q * cnt + i, value(2, q, i));
    guards_check(&j->f, r, "recv", &gr);
    if (!j->in_place) {
        for (size_t i = 0; i < cnt; i++) value_check(&j->f, r, "send", send, i, value(2, r, i));
        guards_check(&j->f, r, "send", &gs);
        guarded_free(dev, &gs);
    }
    guarded_free(dev, &gr);
    return TM_OK;
}

static int reduce_scatter_fn(tm_device *dev, void *arg)
{
    job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int n = tm_comm_size(c), r = tm_comm_rank(c);
    size_t cnt = j->count, own = (size_t)r * cnt;
    guarded gs = {0}, gr = {0};
    float *send = guarded_alloc(dev, &gs, (size_t)n * cnt, j->skew,
                                j->in_place ? GUARD_OUT : GUARD_IN);
    float *recv = j->in_place ? send + own : guarded_alloc(dev, &gr, cnt, j->skew, GUARD_OUT);
    if (send == NULL || recv == NULL) return TM_ENOMEM;
    for (size_t i = 0; i < (size_t)n * cnt; i++) send[i] = value(3, r, i);
    TM_CHECK(tm_reduce_scatter(c, send, recv, cnt, j->op));
    for (size_t i = 0; i < cnt; i++) {
        float sum = 0;
        for (int q = 0; q < n; q++) sum += value(3, q, own + i);
        value_check(&j->f, r, "recv", recv, i, j->op == TM_AVG ? sum * (1.0f / (float)n) : sum);
    }
    /* The other blocks of the input stay as they were, in place too: there
     * they fence the output block on both sides. */
    for (size_t i = 0; i < (size_t)n * cnt; i++)
        if (!j->in_place || i < own || i >= own + cnt)
            value_check(&j->f, r, "send", send, i, value(3, r, i));
    guards_check(&j->f, r, "send", &gs);
    if (!j->in_place) {
        guards_check(&j->f, r, "recv", &gr);
        guarded_free(dev, &gr);
    }
    guarded_free(dev, &gs);
    return TM_OK;
}

static int broadcast_fn(tm_device *dev, void *arg)
{
    job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int n = tm_comm_size(c), r = tm_comm_rank(c);
    size_t cnt = j->count;
    guarded g;
    float *buf = guarded_alloc(dev, &g, cnt, j->skew, GUARD_OUT);
    if (buf == NULL) return TM_ENOMEM;
    for (int root = 0; root < n; root++) {
        for (size_t i = 0; i < cnt; i++) buf[i] = value(4 + root, r, i);
        TM_CHECK(tm_broadcast(c, buf, cnt, root));
        for (size_t i = 0; i < cnt; i++)
            value_check(&j->f, r, "buf", buf, i, value(4 + root, root, i));
    }
    guards_check(&j->f, r, "buf", &g);
    guarded_free(dev, &g);
    return TM_OK;
}

static void sweep(tm_device_fn fn, const char *what, int ops)
{
    for (int n = 1; n <= 9; n++) {
        tm_world *w = make_world(n);
        for (size_t ci = 0; ci < N_COUNTS; ci++)
            for (int in_place = 0; in_place < 2; in_place++)
                for (int op = 0; op < ops; op++) {
                    /* Starts 0-3 floats past an aligned address. */
                    job j = {.count = counts[ci], .in_place = in_place, .op = (tm_reduce_op)op,
                             .skew = (ci + (size_t)op) % 4};
                    char label[96];
                    snprintf(label, sizeof label, "%s n=%d count=%zu in_place=%d op=%d", what, n,
                             counts[ci], in_place, op);
                    run_checked(w, fn, &j, &j.f, label);
                }
        tm_world_destroy(w);
    }
}

Test(collectives, allgather, .timeout = 120) { sweep(allgather_fn, "allgather", 1); }
Test(collectives, reduce_scatter, .timeout = 120) { sweep(reduce_scatter_fn, "reduce_scatter", 2); }
Test(collectives, broadcast, .timeout = 120) { sweep(broadcast_fn, "broadcast", 1); }

/* Outputs of 4 MiB and more are written with streaming (non-temporal)
 * stores. A start one float past an aligned address makes every element
 * loop on such an output run all three of its parts: plain stores up to
 * the 32-byte alignment, the streamed body, the plain tail. LARGE is odd,
 * so the segments and slices that tile it are not multiples of the body's
 * 16 floats either. */
#define LARGE (((size_t)4 << 20) / sizeof(float) + 13)
#define LARGE_RING ((size_t)64 << 10)

Test(collectives, large_outputs_with_misaligned_starts, .timeout = 300)
{
    for (int n = 2; n <= 3; n++) {
        /* The largest job, reduce-scatter out of place, holds n + 1 blocks. */
        tm_world *w = make_world_sized(n, (size_t)(n + 2) * LARGE * sizeof(float), LARGE_RING);
        size_t gather = LARGE / (size_t)n + 5; /* n x gather floats >= 4 MiB */
        struct {
            tm_device_fn fn;
            const char *what;
            size_t count;
        } ops[] = {{allreduce_fn, "allreduce", LARGE},
                   {allgather_fn, "allgather", gather},
                   {reduce_scatter_fn, "reduce_scatter", LARGE}};
        for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++)
            for (int in_place = 0; in_place < 2; in_place++) {
                tm_reduce_op op = in_place ? TM_AVG : TM_SUM;
                job j = {.count = ops[o].count, .in_place = in_place, .op = op,
                         .skew = in_place ? 3 : 1,
                         .algo = expected_algo(TM_ALGO_AUTO, n, LARGE, LARGE_RING)};
                char label[96];
                snprintf(label, sizeof label, "%s n=%d count=%zu in_place=%d", ops[o].what, n,
                         ops[o].count, in_place);
                run_checked(w, ops[o].fn, &j, &j.f, label);
            }
        tm_world_destroy(w);
    }
}

/* Random floats (not exact): every member must hold the same bits, and the
 * result must match a double-precision sum within fp32 tolerance. */
#define NDEV_BITS 5
#define CNT_BITS 3001
static float bits_out[NDEV_BITS][CNT_BITS];

static float rnd(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

/* The ring must be large enough for the direct algorithm to take CNT_BITS
 * floats in one message. */
#define BITS_RING ((size_t)64 << 10)

typedef struct {
    tm_allreduce_algo algo;
    findings f;
} bits_job;

static int identical_fn(tm_device *dev, void *arg)
{
    bits_job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int r = tm_device_id(dev);
    guarded g;
    float *x = guarded_alloc(dev, &g, CNT_BITS, 1, GUARD_OUT);
    if (x == NULL) return TM_ENOMEM;
    unsigned s = 1234u + (unsigned)r;
    for (int i = 0; i < CNT_BITS; i++) x[i] = rnd(&s);
    TM_CHECK(tm_allreduce(c, x, x, CNT_BITS, TM_AVG));
    memcpy(bits_out[r], x, sizeof bits_out[r]);
    guards_check(&j->f, r, "x", &g);
    guarded_free(dev, &g);
    if (tm_allreduce_runs(c, j->algo) != 1)
        found(&j->f, "device %d: the forced algorithm did not run", r);
    return TM_OK;
}

Test(collectives, results_identical_on_every_member, .timeout = 60)
{
    cr_assert_leq(CNT_BITS, direct_max_floats(BITS_RING));
    tm_allreduce_algo algos[] = {TM_ALGO_RING, TM_ALGO_DIRECT};
    for (int a = 0; a < 2; a++) {
        tm_allreduce_set_algo(algos[a]);
        tm_world *w = make_world_sized(NDEV_BITS, 1 << 20, BITS_RING);
        bits_job j = {.algo = algos[a]};
        char label[32];
        snprintf(label, sizeof label, "algo %d", a);
        run_checked(w, identical_fn, &j, &j.f, label);
        tm_world_destroy(w);
        double worst = 0;
        for (int i = 0; i < CNT_BITS; i++) {
            double ref = 0;
            for (int r = 0; r < NDEV_BITS; r++) {
                unsigned s = 1234u + (unsigned)r;
                float v = 0;
                for (int k = 0; k <= i; k++) v = rnd(&s);
                ref += v;
            }
            ref /= NDEV_BITS;
            double err = fabs(bits_out[0][i] - ref);
            if (err > worst) worst = err;
            for (int r = 1; r < NDEV_BITS; r++)
                cr_expect(memcmp(&bits_out[r][i], &bits_out[0][i], sizeof(float)) == 0,
                          "algo %d: device %d differs from device 0 at %d", a, r, i);
        }
        cr_expect_lt(worst, 1e-6, "algo %d: max error %g against double", a, worst);
    }
    tm_allreduce_set_algo(TM_ALGO_AUTO);
}

#include "tests/random_ops.h"

Test(collectives, random_sequences_on_split_groups, .timeout = 120)
{
    for (int n = 2; n <= 9; n += 3) {
        tm_world *w = make_world(n);
        for (unsigned seed = 1; seed <= 3; seed++) {
            random_job j = {.seed = seed * 7919u + (unsigned)n, .counts = counts, .n_counts = N_COUNTS};
            char label[48];
            snprintf(label, sizeof label, "n=%d seed=%u", n, seed);
            run_checked(w, random_fn, &j, &j.f, label);
        }
        tm_world_destroy(w);
    }
}

static int split_order_fn(tm_device *dev, void *arg)
{
    atomic_int *wrong = arg;
    int me = tm_device_id(dev);
    tm_comm *g;
    /* Evens and odds, ordered by descending id. */
    TM_CHECK(tm_comm_split(tm_device_comm(dev), me % 2, -me, &g));
    int n = tm_device_count(dev), expect_size = (n - me % 2 + 1) / 2;
    if (tm_comm_size(g) != expect_size) atomic_fetch_add(wrong, 1);
    for (int r = 0; r + 1 < tm_comm_size(g); r++)
        if (tm_comm_device(g, r) <= tm_comm_device(g, r + 1)) atomic_fetch_add(wrong, 1);
    if (tm_comm_device(g, tm_comm_rank(g)) != me) atomic_fetch_add(wrong, 1);
    tm_comm *none;
    TM_CHECK(tm_comm_split(tm_device_comm(dev), me == 0 ? -1 : 1, 0, &none));
    if ((me == 0) != (none == NULL)) atomic_fetch_add(wrong, 1);
    tm_comm_destroy(none);
    tm_comm_destroy(g);
    return TM_OK;
}

Test(collectives, split_orders_by_key, .timeout = 30)
{
    tm_world *w = make_world(7);
    atomic_int wrong = 0;
    cr_assert_eq(tm_world_run(w, split_order_fn, &wrong), TM_OK, "%s", tm_world_error(w));
    cr_expect_eq(atomic_load(&wrong), 0);
    tm_world_destroy(w);
}

static int mesh_fn(tm_device *dev, void *arg)
{
    findings *f = arg;
    tm_mesh m;
    TM_CHECK(tm_mesh_create(dev, 2, 2, 2, &m));
    int me = tm_device_id(dev);
    if (me != (m.d * m.pp + m.p) * m.tp + m.t) found(f, "device %d: mesh coordinates", me);
    /* Sum of device ids in each group, checked against the mesh formula. */
    tm_comm *groups[3] = {m.dp_comm, m.pp_comm, m.tp_comm};
    const char *names[3] = {"dp sum", "pp sum", "tp sum"};
    float want[3] = {(float)((0 * 2 + m.p) * 2 + m.t + (1 * 2 + m.p) * 2 + m.t),
                     (float)((m.d * 2 + 0) * 2 + m.t + (m.d * 2 + 1) * 2 + m.t),
                     (float)((m.d * 2 + m.p) * 2 * 2 + 1)};
    for (int k = 0; k < 3; k++) {
        guarded g;
        float *v = guarded_alloc(dev, &g, 1, (size_t)k, GUARD_OUT);
        if (v == NULL) return TM_ENOMEM;
        v[0] = (float)me;
        TM_CHECK(tm_allreduce(groups[k], v, v, 1, TM_SUM));
        value_check(f, me, names[k], v, 0, want[k]);
        guards_check(f, me, names[k], &g);
        guarded_free(dev, &g);
    }
    if (tm_comm_rank(m.tp_comm) != m.t || tm_comm_rank(m.dp_comm) != m.d ||
        tm_comm_rank(m.pp_comm) != m.p)
        found(f, "device %d: group ranks differ from the mesh coordinates", me);
    tm_mesh_destroy(&m);
    return TM_OK;
}

Test(collectives, mesh_groups, .timeout = 30)
{
    tm_world *w = make_world(8);
    findings f = {0};
    cr_assert_eq(tm_world_run(w, mesh_fn, &f), TM_OK, "%s", tm_world_error(w));
    findings_report(&f, "mesh 2x2x2");
    tm_world_destroy(w);
}

/* Point-to-point: a ring of large sendrecvs (each message 3 rings long)
 * cannot deadlock, and plain send/recv interoperate with it. */
static int sendrecv_fn(tm_device *dev, void *arg)
{
    findings *f = arg;
    tm_comm *c = tm_device_comm(dev);
    int n = tm_comm_size(c), r = tm_comm_rank(c);
    size_t cnt = 3 * RING / sizeof(float) + 5;
    guarded go, gi, gg;
    float *out = guarded_alloc(dev, &go, cnt, 0, GUARD_IN);
    float *in = guarded_alloc(dev, &gi, cnt, 1, GUARD_OUT);
    if (out == NULL || in == NULL) return TM_ENOMEM;
    for (size_t i = 0; i < cnt; i++) out[i] = value(9, r, i);
    int next = (r + 1) % n, prev = (r + n - 1) % n;
    TM_CHECK(tm_sendrecv(c, out, cnt * sizeof(float), next, in, cnt * sizeof(float), prev));
    for (size_t i = 0; i < cnt; i++) value_check(f, r, "in", in, i, value(9, prev, i));
    guards_check(f, r, "in", &gi);
    /* Odd-length raw bytes with plain send/recv, into a buffer of four
     * guard floats: the 13 bytes received replace the first 13 bytes, the
     * last three keep the guard pattern's last three. */
    char msg[13] = "hello, ring!";
    char *got = (char *)guarded_alloc(dev, &gg, 4, 0, GUARD_OUT);
    if (got == NULL) return TM_ENOMEM;
    uint32_t pattern = GUARD_OUT;
    if (r == 0) TM_CHECK(tm_send(c, msg, sizeof msg, 1));
    if (r == 1) {
        TM_CHECK(tm_recv(c, got, sizeof msg, 0));
        if (memcmp(msg, got, sizeof msg) != 0) found(f, "device 1: the 13 bytes differ");
        if (memcmp(got + sizeof msg, (char *)&pattern + 1, 3) != 0)
            found(f, "device 1: the bytes after the 13 received changed");
    }
    guards_check(f, r, "got", &gg);
    guarded_free(dev, &gg);
    guarded_free(dev, &gi);
    guarded_free(dev, &go);
    return TM_OK;
}

/* Runs fn on rings of 2 to 5 devices, reporting each ring's findings. */
static void on_rings(tm_device_fn fn)
{
    for (int n = 2; n <= 5; n++) {
        tm_world *w = make_world(n);
        findings f = {0};
        cr_expect_eq(tm_world_run(w, fn, &f), TM_OK, "%s", tm_world_error(w));
        char label[16];
        snprintf(label, sizeof label, "n=%d", n);
        findings_report(&f, label);
        tm_world_destroy(w);
    }
}

Test(collectives, sendrecv_ring_of_large_messages, .timeout = 30) { on_rings(sendrecv_fn); }

/* The ring exchange of interleaved 1F1B: every device sends to and
 * receives from both neighbours at once, each message 3 rings long (two
 * per link when n = 2, in list order), over and over; nothing deadlocks and
 * every byte lands. */
static int exchange_fn(tm_device *dev, void *arg)
{
    findings *f = arg;
    tm_comm *c = tm_device_comm(dev);
    int n = tm_comm_size(c), r = tm_comm_rank(c);
    int next = (r + 1) % n, prev = (r + n - 1) % n;
    size_t cnt = 3 * RING / sizeof(float) + 7;
    guarded g[4];
    float *b[4];
    for (int k = 0; k < 4; k++) {
        b[k] = guarded_alloc(dev, &g[k], cnt, k >= 2, k < 2 ? GUARD_IN : GUARD_OUT);
        if (b[k] == NULL) return TM_ENOMEM;
    }
    for (int round = 0; round < 3; round++) {
        /* Up to next (an activation) and down to prev (a gradient). */
        for (size_t i = 0; i < cnt; i++) {
            b[0][i] = value(20 + round, r, i);
            b[1][i] = value(40 + round, r, i);
        }
        tm_p2p send[2] = {{b[0], cnt * sizeof(float), next}, {b[1], cnt * sizeof(float), prev}};
        tm_p2p recv[2] = {{b[2], cnt * sizeof(float), prev}, {b[3], cnt * sizeof(float), next}};
        TM_CHECK(tm_exchange(c, send, 2, recv, 2));
        for (size_t i = 0; i < cnt; i++) {
            value_check(f, r, "from prev", b[2], i, value(20 + round, prev, i));
            value_check(f, r, "from next", b[3], i, value(40 + round, next, i));
        }
    }
    guards_check(f, r, "from prev", &g[2]);
    guards_check(f, r, "from next", &g[3]);
    for (int k = 0; k < 4; k++) guarded_free(dev, &g[k]);
    return TM_OK;
}

Test(collectives, exchange_ring_both_ways, .timeout = 60) { on_rings(exchange_fn); }

static int exchange_bad_fn(tm_device *dev, void *arg)
{
    (void)arg;
    tm_p2p many[TM_EXCHANGE_MAX + 1];
    memset(many, 0, sizeof many);
    return tm_exchange(tm_device_comm(dev), many, TM_EXCHANGE_MAX + 1, NULL, 0);
}

Test(collectives, exchange_of_too_many_messages_is_refused, .timeout = 30)
{
    tm_world *w = make_world(2);
    cr_expect_eq(tm_world_run(w, exchange_bad_fn, NULL), TM_EINVAL);
    cr_expect(strstr(tm_world_error(w), "at most 4 sends") != NULL, "%s", tm_world_error(w));
    tm_world_destroy(w);
}

static int mismatch_fn(tm_device *dev, void *arg)
{
    (void)arg;
    tm_comm *c = tm_device_comm(dev);
    float x[64] = {0};
    if (tm_device_id(dev) == 0) return tm_allreduce(c, x, x, 64, TM_SUM);
    return tm_allreduce(c, x, x, 32, TM_SUM);
}

Test(collectives, mismatched_sizes_are_an_error, .timeout = 30)
{
    tm_world *w = make_world(2);
    int st = tm_world_run(w, mismatch_fn, NULL);
    cr_expect_eq(st, TM_EINVAL, "status %s: %s", tm_err_name(st), tm_world_error(w));
    cr_expect(strstr(tm_world_error(w), "mismatched") != NULL, "%s", tm_world_error(w));
    tm_world_destroy(w);
}
