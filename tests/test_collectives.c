/* Collectives against serial references: every op, group sizes 1-9, counts
 * 0, 1, 7, 1000 and larger than a ring, in place and not, both all-reduce
 * algorithms, random sequences on split groups, failure and deadlock. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/collectives.h"
#include "runtime/status.h"

/* Small rings make "larger than the ring" cheap: 4 KiB = 1024 floats. */
#define RING 4096
#define BIG 2600 /* floats: 2.5 rings */

/* Exactly representable small integers: any summation order gives the
 * exact sum, so results compare with ==. */
static float value(int seed, int rank, size_t i)
{
    return (float)((int)((seed * 31u + rank * 7u + i * 3u) % 17u) - 8);
}

static tm_world *make_world(int n)
{
    tm_world_config cfg;
    tm_world_config_default(&cfg);
    cfg.n_devices = n;
    cfg.mem_cap = 1 << 20;
    cfg.ring_bytes = RING;
    cfg.watchdog_s = 5;
    tm_world *w = NULL;
    int st = tm_world_create(&w, &cfg);
    cr_assert_eq(st, TM_OK, "world_create: %s", tm_error_message());
    return w;
}

typedef struct {
    size_t count;
    int in_place;
    tm_reduce_op op;
    atomic_int wrong_atomic;
} job;

static int allreduce_fn(tm_device *dev, void *arg)
{
    job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int n = tm_comm_size(c), r = tm_comm_rank(c);
    size_t cnt = j->count;
    float *send = tm_device_alloc(dev, cnt * sizeof(float), TM_TAG_WORKSPACE);
    float *recv = j->in_place ? send : tm_device_alloc(dev, cnt * sizeof(float), TM_TAG_WORKSPACE);
    if (send == NULL || recv == NULL) return TM_ENOMEM;
    for (size_t i = 0; i < cnt; i++) send[i] = value(1, r, i);
    int st = tm_allreduce(c, send, recv, cnt, j->op);
    if (st != TM_OK) return st;
    int wrong = 0;
    for (size_t i = 0; i < cnt; i++) {
        float sum = 0;
        for (int q = 0; q < n; q++) sum += value(1, q, i);
        float want = j->op == TM_AVG ? sum * (1.0f / (float)n) : sum;
        if (recv[i] != want) wrong++;
        if (!j->in_place && send[i] != value(1, r, i)) wrong++;
    }
    atomic_fetch_add(&j->wrong_atomic, wrong);
    return TM_OK;
}

static const size_t counts[] = {0, 1, 7, 1000, BIG};

static void sweep_allreduce(tm_allreduce_algo algo)
{
    tm_allreduce_set_algo(algo);
    for (int n = 1; n <= 9; n++) {
        tm_world *w = make_world(n);
        for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++)
            for (int in_place = 0; in_place < 2; in_place++)
                for (int op = 0; op < 2; op++) {
                    job j = {.count = counts[ci], .in_place = in_place, .op = (tm_reduce_op)op};
                    int st = tm_world_run(w, allreduce_fn, &j);
                    cr_expect_eq(st, TM_OK, "n=%d: %s", n, tm_world_error(w));
                    cr_expect_eq(atomic_load(&j.wrong_atomic), 0,
                                 "allreduce n=%d count=%zu in_place=%d op=%d: %d wrong", n,
                                 counts[ci], in_place, op, atomic_load(&j.wrong_atomic));
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
    float *recv = tm_device_alloc(dev, (size_t)n * cnt * sizeof(float), TM_TAG_WORKSPACE);
    float *send = j->in_place ? recv + (size_t)r * cnt
                              : tm_device_alloc(dev, cnt * sizeof(float), TM_TAG_WORKSPACE);
    if (send == NULL || recv == NULL) return TM_ENOMEM;
    for (size_t i = 0; i < cnt; i++) send[i] = value(2, r, i);
    TM_CHECK(tm_allgather(c, send, recv, cnt));
    int wrong = 0;
    for (int q = 0; q < n; q++)
        for (size_t i = 0; i < cnt; i++)
            if (recv[(size_t)q * cnt + i] != value(2, q, i)) wrong++;
    atomic_fetch_add(&j->wrong_atomic, wrong);
    return TM_OK;
}

static int reduce_scatter_fn(tm_device *dev, void *arg)
{
    job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int n = tm_comm_size(c), r = tm_comm_rank(c);
    size_t cnt = j->count;
    float *send = tm_device_alloc(dev, (size_t)n * cnt * sizeof(float), TM_TAG_WORKSPACE);
    float *recv = j->in_place ? send + (size_t)r * cnt
                              : tm_device_alloc(dev, cnt * sizeof(float), TM_TAG_WORKSPACE);
    if (send == NULL || recv == NULL) return TM_ENOMEM;
    for (size_t i = 0; i < (size_t)n * cnt; i++) send[i] = value(3, r, i);
    TM_CHECK(tm_reduce_scatter(c, send, recv, cnt, j->op));
    int wrong = 0;
    for (size_t i = 0; i < cnt; i++) {
        float sum = 0;
        for (int q = 0; q < n; q++) sum += value(3, q, (size_t)r * cnt + i);
        float want = j->op == TM_AVG ? sum * (1.0f / (float)n) : sum;
        if (recv[i] != want) wrong++;
    }
    atomic_fetch_add(&j->wrong_atomic, wrong);
    return TM_OK;
}

static int broadcast_fn(tm_device *dev, void *arg)
{
    job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int n = tm_comm_size(c), r = tm_comm_rank(c);
    size_t cnt = j->count;
    float *buf = tm_device_alloc(dev, cnt * sizeof(float), TM_TAG_WORKSPACE);
    if (buf == NULL) return TM_ENOMEM;
    int wrong = 0;
    for (int root = 0; root < n; root++) {
        for (size_t i = 0; i < cnt; i++) buf[i] = value(4 + root, r, i);
        TM_CHECK(tm_broadcast(c, buf, cnt, root));
        for (size_t i = 0; i < cnt; i++)
            if (buf[i] != value(4 + root, root, i)) wrong++;
    }
    atomic_fetch_add(&j->wrong_atomic, wrong);
    return TM_OK;
}

static void sweep(tm_device_fn fn, const char *what, int ops)
{
    for (int n = 1; n <= 9; n++) {
        tm_world *w = make_world(n);
        for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++)
            for (int in_place = 0; in_place < 2; in_place++)
                for (int op = 0; op < ops; op++) {
                    job j = {.count = counts[ci], .in_place = in_place, .op = (tm_reduce_op)op};
                    int st = tm_world_run(w, fn, &j);
                    cr_expect_eq(st, TM_OK, "%s n=%d: %s", what, n, tm_world_error(w));
                    cr_expect_eq(atomic_load(&j.wrong_atomic), 0,
                                 "%s n=%d count=%zu in_place=%d op=%d: %d wrong", what, n,
                                 counts[ci], in_place, op, atomic_load(&j.wrong_atomic));
                }
        tm_world_destroy(w);
    }
}

Test(collectives, allgather, .timeout = 120) { sweep(allgather_fn, "allgather", 1); }
Test(collectives, reduce_scatter, .timeout = 120) { sweep(reduce_scatter_fn, "reduce_scatter", 2); }
Test(collectives, broadcast, .timeout = 120) { sweep(broadcast_fn, "broadcast", 1); }

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

static int identical_fn(tm_device *dev, void *arg)
{
    (void)arg;
    int r = tm_device_id(dev);
    float *x = tm_device_alloc(dev, CNT_BITS * sizeof(float), TM_TAG_WORKSPACE);
    if (x == NULL) return TM_ENOMEM;
    unsigned s = 1234u + (unsigned)r;
    for (int i = 0; i < CNT_BITS; i++) x[i] = rnd(&s);
    TM_CHECK(tm_allreduce(tm_device_comm(dev), x, x, CNT_BITS, TM_AVG));
    memcpy(bits_out[r], x, sizeof bits_out[r]);
    return TM_OK;
}

Test(collectives, results_identical_on_every_member, .timeout = 60)
{
    tm_allreduce_algo algos[] = {TM_ALGO_RING, TM_ALGO_DIRECT};
    for (int a = 0; a < 2; a++) {
        tm_allreduce_set_algo(algos[a]);
        tm_world *w = make_world(NDEV_BITS);
        cr_assert_eq(tm_world_run(w, identical_fn, NULL), TM_OK, "%s", tm_world_error(w));
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

/* Random sequences of collectives on random sub-groups made by split. Every
 * device draws the same sequence from a shared seed, so the calls match. */
typedef struct {
    unsigned seed;
    atomic_int wrong;
} random_job;

static unsigned next(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 16;
}

static int random_fn(tm_device *dev, void *arg)
{
    random_job *j = arg;
    tm_comm *world = tm_device_comm(dev);
    int me = tm_device_id(dev), n = tm_device_count(dev);
    unsigned s = j->seed;
    float *a = tm_device_alloc(dev, 9 * BIG * sizeof(float), TM_TAG_WORKSPACE);
    float *b = tm_device_alloc(dev, 9 * BIG * sizeof(float), TM_TAG_WORKSPACE);
    if (a == NULL || b == NULL) return TM_ENOMEM;
    for (int iter = 0; iter < 40; iter++) {
        int ncolors = 1 + (int)(next(&s) % 3);
        unsigned salt = next(&s);
        /* Color and key from the device id and the shared salt. */
        int color = (int)((((unsigned)me * 2654435761u) ^ salt) % (unsigned)ncolors);
        int key = (int)(((unsigned)me * 40503u + salt) % 97u);
        tm_comm *g;
        TM_CHECK(tm_comm_split(world, color, key, &g));
        int gn = tm_comm_size(g), gr = tm_comm_rank(g), wrong = 0;
        size_t cnt = counts[next(&s) % 5];
        int op = (int)(next(&s) % 4);
        for (size_t i = 0; i < (size_t)gn * cnt; i++) a[i] = value(iter, tm_comm_device(g, gr), i);
        int st;
        switch (op) {
        case 0:
            st = tm_allreduce(g, a, b, cnt, TM_SUM);
            for (size_t i = 0; st == TM_OK && i < cnt; i++) {
                float sum = 0;
                for (int q = 0; q < gn; q++) sum += value(iter, tm_comm_device(g, q), i);
                wrong += b[i] != sum;
            }
            break;
        case 1:
            st = tm_allgather(g, a, b, cnt);
            for (int q = 0; st == TM_OK && q < gn; q++)
                for (size_t i = 0; i < cnt; i++)
                    wrong += b[(size_t)q * cnt + i] != value(iter, tm_comm_device(g, q), i);
            break;
        case 2:
            st = tm_reduce_scatter(g, a, b, cnt, TM_SUM);
            for (size_t i = 0; st == TM_OK && i < cnt; i++) {
                float sum = 0;
                for (int q = 0; q < gn; q++)
                    sum += value(iter, tm_comm_device(g, q), (size_t)gr * cnt + i);
                wrong += b[i] != sum;
            }
            break;
        default:
            st = tm_barrier(g);
            break;
        }
        tm_comm_destroy(g);
        if (st != TM_OK) return st;
        atomic_fetch_add(&j->wrong, wrong);
    }
    (void)n;
    return TM_OK;
}

Test(collectives, random_sequences_on_split_groups, .timeout = 120)
{
    for (int n = 2; n <= 9; n += 3) {
        tm_world *w = make_world(n);
        for (unsigned seed = 1; seed <= 3; seed++) {
            random_job j = {.seed = seed * 7919u + (unsigned)n};
            cr_expect_eq(tm_world_run(w, random_fn, &j), TM_OK, "n=%d seed=%u: %s", n, seed,
                         tm_world_error(w));
            cr_expect_eq(atomic_load(&j.wrong), 0, "n=%d seed=%u: %d wrong", n, seed,
                         atomic_load(&j.wrong));
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
    atomic_int *wrong = arg;
    tm_mesh m;
    TM_CHECK(tm_mesh_create(dev, 2, 2, 2, &m));
    int me = tm_device_id(dev);
    if (me != (m.d * m.pp + m.p) * m.tp + m.t) atomic_fetch_add(wrong, 1);
    /* Sum of device ids in each group, checked against the mesh formula. */
    float v[3] = {(float)me, (float)me, (float)me};
    TM_CHECK(tm_allreduce(m.dp_comm, &v[0], &v[0], 1, TM_SUM));
    TM_CHECK(tm_allreduce(m.pp_comm, &v[1], &v[1], 1, TM_SUM));
    TM_CHECK(tm_allreduce(m.tp_comm, &v[2], &v[2], 1, TM_SUM));
    float dp_sum = (float)((0 * 2 + m.p) * 2 + m.t + (1 * 2 + m.p) * 2 + m.t);
    float pp_sum = (float)((m.d * 2 + 0) * 2 + m.t + (m.d * 2 + 1) * 2 + m.t);
    float tp_sum = (float)((m.d * 2 + m.p) * 2 * 2 + 1);
    if (v[0] != dp_sum || v[1] != pp_sum || v[2] != tp_sum) atomic_fetch_add(wrong, 1);
    if (tm_comm_rank(m.tp_comm) != m.t || tm_comm_rank(m.dp_comm) != m.d ||
        tm_comm_rank(m.pp_comm) != m.p)
        atomic_fetch_add(wrong, 1);
    tm_mesh_destroy(&m);
    return TM_OK;
}

Test(collectives, mesh_groups, .timeout = 30)
{
    tm_world *w = make_world(8);
    atomic_int wrong = 0;
    cr_assert_eq(tm_world_run(w, mesh_fn, &wrong), TM_OK, "%s", tm_world_error(w));
    cr_expect_eq(atomic_load(&wrong), 0);
    tm_world_destroy(w);
}

/* Point-to-point: a ring of large sendrecvs (each message 3 rings long)
 * cannot deadlock, and plain send/recv interoperate with it. */
static int sendrecv_fn(tm_device *dev, void *arg)
{
    atomic_int *wrong = arg;
    tm_comm *c = tm_device_comm(dev);
    int n = tm_comm_size(c), r = tm_comm_rank(c);
    size_t cnt = 3 * RING / sizeof(float) + 5;
    float *out = tm_device_alloc(dev, cnt * sizeof(float), TM_TAG_WORKSPACE);
    float *in = tm_device_alloc(dev, cnt * sizeof(float), TM_TAG_WORKSPACE);
    if (out == NULL || in == NULL) return TM_ENOMEM;
    for (size_t i = 0; i < cnt; i++) out[i] = value(9, r, i);
    int next = (r + 1) % n, prev = (r + n - 1) % n;
    TM_CHECK(tm_sendrecv(c, out, cnt * sizeof(float), next, in, cnt * sizeof(float), prev));
    for (size_t i = 0; i < cnt; i++)
        if (in[i] != value(9, prev, i)) atomic_fetch_add(wrong, 1);
    /* Odd-length raw bytes with plain send/recv. */
    char msg[13] = "hello, ring!", got[13] = {0};
    if (r == 0) TM_CHECK(tm_send(c, msg, sizeof msg, 1));
    if (r == 1) TM_CHECK(tm_recv(c, got, sizeof got, 0));
    if (r == 1 && memcmp(msg, got, sizeof msg) != 0) atomic_fetch_add(wrong, 1);
    return TM_OK;
}

Test(collectives, sendrecv_ring_of_large_messages, .timeout = 30)
{
    for (int n = 2; n <= 5; n++) {
        tm_world *w = make_world(n);
        atomic_int wrong = 0;
        cr_expect_eq(tm_world_run(w, sendrecv_fn, &wrong), TM_OK, "%s", tm_world_error(w));
        cr_expect_eq(atomic_load(&wrong), 0, "n=%d", n);
        tm_world_destroy(w);
    }
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
