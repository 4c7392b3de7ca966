/* The modeled clock against hand-computed figures: one message and two on one
 * link, kernel charges (compute- and bandwidth-bound), the ring all-reduce on
 * 2-6 devices, asynchronous collectives, inter-node links, bitwise
 * reproducibility of a mixed program, the recorded events, the Chrome trace
 * writer and the configuration check. Device functions only store into their
 * own slot of the job; the host checks after tm_world_run has joined them. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/collectives.h"
#include "runtime/status.h"
#include "strategies/json.h"

/* Rates chosen so every expected time is a short product by hand. */
#define GFLOPS 10.0
#define GBPS 5.0
#define LINK_GBPS 2.0
#define LAT_US 3.0
#define LAT (LAT_US * 1e-6)
#define MAXD 8
/* 64 KiB rings: a ring step carries up to 4096 floats. */
#define RING ((size_t)1 << 16)

static tm_clock_config clock_cfg(void)
{
    tm_clock_config c;
    tm_clock_config_default(&c);
    c.device_gflops = GFLOPS;
    c.device_gbps = GBPS;
    c.link_gbps = LINK_GBPS;
    c.link_latency_us = LAT_US;
    c.devices_per_node = 0;
    return c;
}

static tm_world *make_world(int n, const tm_clock_config *clock)
{
    tm_world_config cfg;
    tm_world_config_default(&cfg);
    cfg.n_devices = n;
    cfg.mem_cap = 1 << 20;
    cfg.ring_bytes = RING;
    cfg.watchdog_s = 10;
    cfg.clock = *clock;
    tm_world *w = NULL;
    int st = tm_world_create(&w, &cfg);
    cr_assert_eq(st, TM_OK, "world_create: %s", tm_error_message());
    return w;
}

/* Modeled times are sums and maxima of the same few terms in one order, so
 * only rounding separates them from the hand formula. */
static int close_to(double got, double want)
{
    return got == want || fabs(got - want) <= 1e-9 * fabs(want);
}

/* Seconds a message of `bytes` holds an intra-node link. */
static double hold(double bytes) { return bytes / (LINK_GBPS * 1e9); }

static void run_ok(tm_world *w, tm_device_fn fn, void *arg)
{
    int st = tm_world_run(w, fn, arg);
    cr_assert_eq(st, TM_OK, "run failed: %s (%s)", tm_err_name(st), tm_world_error(w));
}

/* Device 0 computes for lead_flops, then sends `sends` messages of `bytes`
 * to device 1, which receives them; stats after each message. */
typedef struct {
    size_t bytes;
    int sends;
    double lead_flops;
    tm_clock_stats after[2][2]; /* [message][device] */
} p2p_job;

static int p2p_fn(tm_device *dev, void *arg)
{
    p2p_job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int r = tm_device_id(dev);
    unsigned char *buf = tm_device_alloc(dev, j->bytes, TM_TAG_WORKSPACE);
    if (buf == NULL) return TM_ENOMEM;
    memset(buf, r + 1, j->bytes);
    if (r == 0 && j->lead_flops > 0) tm_clock_charge(dev, j->lead_flops, 0);
    for (int k = 0; k < j->sends; k++) {
        if (r == 0)
            TM_CHECK(tm_send(c, buf, j->bytes, 1));
        else
            TM_CHECK(tm_recv(c, buf, j->bytes, 0));
        tm_clock_stats_get(dev, &j->after[k][r]);
    }
    return TM_OK;
}

Test(clock, one_send_arrives_after_transfer_and_latency, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(2, &cc);
    p2p_job j = {.bytes = 40000, .sends = 1};
    run_ok(w, p2p_fn, &j);
    double b = (double)j.bytes;
    const tm_clock_stats *s = &j.after[0][0], *r = &j.after[0][1];
    cr_expect(close_to(r->now, LAT + hold(b)), "receiver at %.12g s, want %.12g", r->now,
              LAT + hold(b));
    cr_expect(close_to(r->comm_wait, LAT + hold(b)), "receiver waited %.12g s on the transfer",
              r->comm_wait);
    cr_expect_eq(r->idle, 0.0, "receiver idle %.12g s with a sender that started at once",
                 r->idle);
    cr_expect_eq(s->now, 0.0, "a send made the sender's compute engine wait: %.12g", s->now);
    cr_expect(close_to(s->p2p_now, hold(b)), "sender's copy engine at %.12g, want %.12g",
              s->p2p_now, hold(b));
    cr_expect_eq(s->comm_now, 0.0, "a send occupied the collective engine: %.12g", s->comm_now);
    cr_expect(close_to(s->comm_busy, hold(b)), "sender busy %.12g", s->comm_busy);
    /* The host sees what the device saw last. */
    for (int d = 0; d < 2; d++) {
        tm_clock_stats h;
        tm_world_clock_stats(w, d, &h);
        cr_expect(memcmp(&h, &j.after[0][d], sizeof h) == 0, "device %d: host stats differ", d);
    }
    tm_world_destroy(w);
}

Test(clock, back_to_back_sends_serialize_on_the_link, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(2, &cc);
    p2p_job j = {.bytes = 40000, .sends = 2};
    run_ok(w, p2p_fn, &j);
    double b = (double)j.bytes;
    cr_expect(close_to(j.after[0][1].now, LAT + hold(b)), "first arrival %.12g",
              j.after[0][1].now);
    cr_expect(close_to(j.after[1][1].now, LAT + 2 * hold(b)), "second arrival %.12g, want %.12g",
              j.after[1][1].now, LAT + 2 * hold(b));
    cr_expect(close_to(j.after[1][0].p2p_now, 2 * hold(b)), "sender's copy engine %.12g",
              j.after[1][0].p2p_now);
    cr_expect_eq(j.after[1][0].now, 0.0, "sends made the sender wait");
    const tm_clock_stats *r = &j.after[1][1];
    cr_expect(close_to(r->now, r->compute + r->comm_wait + r->idle),
              "now %.12g is not compute + comm_wait + idle", r->now);
    tm_world_destroy(w);
}

Test(clock, waiting_for_a_late_sender_is_idle, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(2, &cc);
    /* 1e6 FLOPs at 10 GFLOP/s: the sender computes for 100 us first. */
    p2p_job j = {.bytes = 40000, .sends = 1, .lead_flops = 1e6};
    run_ok(w, p2p_fn, &j);
    double b = (double)j.bytes, lead = 1e-4;
    const tm_clock_stats *r = &j.after[0][1];
    cr_expect(close_to(r->now, lead + hold(b) + LAT), "receiver at %.12g", r->now);
    cr_expect(close_to(r->idle, lead), "idle %.12g, want the sender's 100 us", r->idle);
    cr_expect(close_to(r->comm_wait, hold(b) + LAT), "comm_wait %.12g", r->comm_wait);
    cr_expect(close_to(j.after[0][0].p2p_now, lead + hold(b)), "send left at %.12g",
              j.after[0][0].p2p_now - hold(b));
    tm_world_destroy(w);
}

typedef struct {
    double flops, bytes;
    tm_clock_stats st;
} charge_job;

static int charge_fn(tm_device *dev, void *arg)
{
    charge_job *j = arg;
    tm_clock_charge(dev, j->flops, j->bytes);
    tm_clock_stats_get(dev, &j->st);
    return TM_OK;
}

Test(clock, a_kernel_takes_the_longer_of_flops_and_bytes, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(1, &cc);
    struct {
        double flops, bytes, want;
    } cases[] = {
        {1e8, 1e6, 1e-2},  /* compute-bound: 10 ms of FLOPs, 0.2 ms of bytes */
        {1e3, 1e8, 2e-2},  /* bandwidth-bound: 0.1 us of FLOPs, 20 ms of bytes */
        {5e7, 2.5e7, 5e-3}, /* both 5 ms */
        {0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        charge_job j = {.flops = cases[i].flops, .bytes = cases[i].bytes};
        run_ok(w, charge_fn, &j);
        cr_expect(close_to(j.st.now, cases[i].want), "case %zu: %.12g s, want %.12g", i,
                  j.st.now, cases[i].want);
        cr_expect_eq(j.st.compute, j.st.now, "case %zu: kernel time not all compute", i);
        cr_expect_eq(j.st.comm_now, 0.0, "case %zu: a kernel moved the comm engine", i);
    }
    tm_world_destroy(w);
}

typedef struct {
    size_t count;
    tm_clock_stats st[MAXD];
} allreduce_job;

static int allreduce_fn(tm_device *dev, void *arg)
{
    allreduce_job *j = arg;
    float *x = tm_device_alloc(dev, j->count * sizeof(float), TM_TAG_WORKSPACE);
    if (x == NULL) return TM_ENOMEM;
    for (size_t i = 0; i < j->count; i++) x[i] = (float)(i % 7);
    TM_CHECK(tm_allreduce(tm_device_comm(dev), x, x, j->count, TM_SUM));
    tm_clock_stats_get(dev, &j->st[tm_device_id(dev)]);
    return TM_OK;
}

Test(clock, ring_allreduce_takes_2_n_minus_1_steps, .timeout = 60)
{
    tm_clock_config cc = clock_cfg();
    /* 6000 floats: divisible by 2..6, and at most one ring chunk per device
     * (4096 floats), so the ring makes one round of 2(n-1) messages. */
    size_t count = 6000;
    tm_allreduce_set_algo(TM_ALGO_RING);
    for (int n = 2; n <= 6; n++) {
        tm_world *w = make_world(n, &cc);
        cr_assert_leq(count, tm_world_ring_bytes(w) / 4 / sizeof(float) * (size_t)n);
        allreduce_job j = {.count = count};
        run_ok(w, allreduce_fn, &j);
        double seg = (double)(count / (size_t)n * sizeof(float));
        double want = 2.0 * (n - 1) * (LAT + hold(seg));
        for (int d = 0; d < n; d++) {
            const tm_clock_stats *s = &j.st[d];
            cr_expect(close_to(s->now, want), "n=%d device %d: %.12g s, want %.12g", n, d, s->now,
                      want);
            cr_expect(close_to(s->comm_now, want), "n=%d device %d: comm engine %.12g", n, d,
                      s->comm_now);
            cr_expect(close_to(s->comm_wait, want), "n=%d device %d: comm_wait %.12g", n, d,
                      s->comm_wait);
            cr_expect(close_to(s->comm_busy, 2.0 * (n - 1) * hold(seg)),
                      "n=%d device %d: sent for %.12g s", n, d, s->comm_busy);
            cr_expect_eq(s->compute + s->idle, 0.0, "n=%d device %d", n, d);
        }
        tm_world_destroy(w);
    }
    tm_allreduce_set_algo(TM_ALGO_AUTO);
}

/* Asynchronous all-reduces beside a kernel, then synchronous again. */
typedef struct {
    size_t count;
    double kernel_flops;
    tm_clock_stats issued[MAXD], computed[MAXD], second[MAXD], synced[MAXD], sync_mode[MAXD];
} async_job;

static int async_fn(tm_device *dev, void *arg)
{
    async_job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int r = tm_device_id(dev);
    float *x = tm_device_alloc(dev, j->count * sizeof(float), TM_TAG_WORKSPACE);
    if (x == NULL) return TM_ENOMEM;
    for (size_t i = 0; i < j->count; i++) x[i] = 1.0f;
    tm_clock_async(dev, 1);
    TM_CHECK(tm_allreduce(c, x, x, j->count, TM_SUM));
    tm_clock_stats_get(dev, &j->issued[r]);
    tm_clock_charge(dev, j->kernel_flops, 0);
    tm_clock_stats_get(dev, &j->computed[r]);
    TM_CHECK(tm_allreduce(c, x, x, j->count, TM_SUM));
    tm_clock_stats_get(dev, &j->second[r]);
    tm_clock_sync(dev);
    tm_clock_stats_get(dev, &j->synced[r]);
    tm_clock_async(dev, 0);
    TM_CHECK(tm_allreduce(c, x, x, j->count, TM_SUM));
    tm_clock_stats_get(dev, &j->sync_mode[r]);
    return TM_OK;
}

Test(clock, async_allreduce_overlaps_compute_until_sync, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(2, &cc);
    tm_allreduce_set_algo(TM_ALGO_RING);
    /* 2 devices, 6000 floats: two messages of 12000 bytes, 9 us each, so an
     * all-reduce takes T = 18 us; the kernel takes 10 us. */
    async_job j = {.count = 6000, .kernel_flops = 1e5};
    run_ok(w, async_fn, &j);
    tm_allreduce_set_algo(TM_ALGO_AUTO);
    double t = 2 * (LAT + hold(12000)), k = 1e-5;
    for (int d = 0; d < 2; d++) {
        cr_expect_eq(j.issued[d].now, 0.0, "device %d: async all-reduce advanced compute to %.12g",
                     d, j.issued[d].now);
        cr_expect(close_to(j.issued[d].comm_now, t), "device %d: comm engine %.12g, want %.12g", d,
                  j.issued[d].comm_now, t);
        cr_expect(close_to(j.computed[d].now, k), "device %d: kernel ended at %.12g", d,
                  j.computed[d].now);
        /* The second one queues behind the first on the comm engine. */
        cr_expect(close_to(j.second[d].comm_now, 2 * t), "device %d: second ends %.12g, want %.12g",
                  d, j.second[d].comm_now, 2 * t);
        cr_expect(close_to(j.second[d].now, k), "device %d: compute moved to %.12g", d,
                  j.second[d].now);
        cr_expect(close_to(j.synced[d].now, 2 * t), "device %d: sync to %.12g, want %.12g", d,
                  j.synced[d].now, 2 * t);
        cr_expect(close_to(j.synced[d].comm_wait, 2 * t - k), "device %d: waited %.12g", d,
                  j.synced[d].comm_wait);
        cr_expect(close_to(j.sync_mode[d].now, 3 * t), "device %d: synchronous one ends %.12g",
                  d, j.sync_mode[d].now);
    }
    tm_world_destroy(w);
}

/* 0 -> 1 inside node 0, 1 -> 2 across nodes (2 devices per node). */
/* Devices 0 and 1 run an asynchronous all-reduce of 6000 floats, then
 * device 0 sends 4000 bytes to device 2 (another link): the send leaves
 * through the copy engine at once, not after the all-reduce. */
typedef struct {
    tm_clock_stats sender, receiver;
} overtake_job;

static int overtake_fn(tm_device *dev, void *arg)
{
    overtake_job *j = arg;
    tm_comm *world = tm_device_comm(dev), *pair = NULL;
    int r = tm_device_id(dev);
    TM_CHECK(tm_comm_split(world, r < 2 ? 0 : -1, r, &pair));
    float *v = tm_device_alloc(dev, 6000 * sizeof(float), TM_TAG_WORKSPACE);
    int st = v == NULL ? TM_ENOMEM : TM_OK;
    if (st == TM_OK) memset(v, 0, 6000 * sizeof(float));
    if (st == TM_OK && pair != NULL) {
        tm_clock_async(dev, 1);
        st = tm_allreduce(pair, v, v, 6000, TM_SUM);
        tm_clock_async(dev, 0);
    }
    if (st == TM_OK && r == 0) {
        st = tm_send(world, v, 4000, 2);
        tm_clock_stats_get(dev, &j->sender);
    } else if (st == TM_OK && r == 2) {
        st = tm_recv(world, v, 4000, 0);
        tm_clock_stats_get(dev, &j->receiver);
    }
    tm_comm_destroy(pair);
    return st;
}

Test(clock, a_send_does_not_queue_behind_an_async_collective, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(3, &cc);
    tm_allreduce_set_algo(TM_ALGO_RING);
    overtake_job j;
    memset(&j, 0, sizeof j);
    run_ok(w, overtake_fn, &j);
    tm_allreduce_set_algo(TM_ALGO_AUTO);
    /* The split took modeled time of its own: t0, where device 0's compute
     * engine stands when it issues the all-reduce and the send. */
    double ring = 2 * (LAT + hold(3000 * sizeof(float))), t0 = j.sender.now;
    cr_expect(close_to(j.sender.comm_now - t0, ring), "all-reduce took %.12g, want %.12g",
              j.sender.comm_now - t0, ring);
    cr_expect(close_to(j.sender.p2p_now - t0, hold(4000)),
              "send took %.12g after %.12g, want %.12g", j.sender.p2p_now - t0, t0, hold(4000));
    cr_expect(close_to(j.receiver.now, j.sender.p2p_now + LAT),
              "message arrived at %.12g, want %.12g", j.receiver.now, j.sender.p2p_now + LAT);
    tm_world_destroy(w);
}

typedef struct {
    size_t bytes;
    tm_clock_stats st[MAXD];
} nodes_job;

static int nodes_fn(tm_device *dev, void *arg)
{
    nodes_job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    int r = tm_device_id(dev);
    void *buf = tm_device_alloc(dev, j->bytes, TM_TAG_WORKSPACE);
    if (buf == NULL) return TM_ENOMEM;
    memset(buf, r, j->bytes);
    if (r == 0) TM_CHECK(tm_send(c, buf, j->bytes, 1));
    if (r == 1) {
        TM_CHECK(tm_send(c, buf, j->bytes, 2));
        TM_CHECK(tm_recv(c, buf, j->bytes, 0));
    }
    if (r == 2) TM_CHECK(tm_recv(c, buf, j->bytes, 1));
    tm_clock_stats_get(dev, &j->st[r]);
    return TM_OK;
}

Test(clock, inter_node_links_use_their_own_rate_and_latency, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    cc.devices_per_node = 2;
    cc.inter_node_gbps = 0.5;
    cc.inter_node_latency_us = 20;
    tm_world *w = make_world(4, &cc);
    nodes_job j = {.bytes = 40000};
    run_ok(w, nodes_fn, &j);
    double b = (double)j.bytes, inter = b / 0.5e9 + 20e-6;
    cr_expect(close_to(j.st[1].now, LAT + hold(b)), "0 -> 1 arrived at %.12g, want %.12g",
              j.st[1].now, LAT + hold(b));
    cr_expect(close_to(j.st[2].now, inter), "1 -> 2 arrived at %.12g, want %.12g", j.st[2].now,
              inter);
    cr_expect(close_to(j.st[1].p2p_now, b / 0.5e9), "1 -> 2 held device 1 for %.12g",
              j.st[1].p2p_now);
    tm_world_destroy(w);

    /* The pure function, both ways and with one node. */
    struct {
        int src, dst, per, inter;
    } pairs[] = {{0, 1, 2, 0}, {1, 0, 2, 0}, {1, 2, 2, 1}, {2, 1, 2, 1}, {3, 2, 2, 0},
                 {0, 3, 2, 1}, {0, 3, 4, 0}, {1, 6, 0, 0}, {4, 5, 4, 0}, {3, 4, 4, 1}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        cc.devices_per_node = pairs[i].per;
        double h, lat;
        tm_clock_link(&cc, pairs[i].src, pairs[i].dst, 1000, &h, &lat);
        double want_h = pairs[i].inter ? 1000 / 0.5e9 : hold(1000);
        double want_lat = pairs[i].inter ? 20e-6 : LAT;
        cr_expect(close_to(h, want_h) && close_to(lat, want_lat),
                  "%d -> %d with %d per node: hold %.12g latency %.12g", pairs[i].src,
                  pairs[i].dst, pairs[i].per, h, lat);
    }
}

/* A fixed pseudo-random mix of every operation on the world and on two
 * split groups, each after a rank-dependent kernel, about half of the
 * collectives asynchronous. */
#define MIX_OPS 40
#define MIX_FLOATS 8192

typedef struct {
    tm_clock_stats st[MAXD];
} mix_job;

static uint32_t mix_next(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

static int mix_op(tm_device *dev, tm_comm *world, tm_comm *half, float *a, float *b, uint32_t op,
                  uint32_t arg)
{
    int r = tm_comm_rank(world), n = tm_comm_size(world);
    static const size_t counts[] = {1, 7, 300, 3000, 5000};
    size_t count = counts[arg % 5];
    tm_clock_charge(dev, 1e4 * (1 + (r * 7 + arg) % 5), 1e4 * (r + 1));
    tm_clock_async(dev, (arg >> 4) & 1);
    if ((arg >> 5) % 3 == 0) tm_clock_sync(dev);
    switch (op % 8) {
    case 0: return tm_allreduce(world, a, a, count, TM_SUM);
    case 1: return tm_allreduce(half, a, b, count, TM_AVG);
    case 2: return tm_allgather(half, a, b, 1 + arg % 500);
    case 3: return tm_reduce_scatter(world, a, b, 1 + arg % 600, TM_SUM);
    case 4: return tm_broadcast(half, a, count, (int)(arg % (uint32_t)tm_comm_size(half)));
    case 5: return tm_barrier(world);
    case 6: return tm_sendrecv(world, a, 4 * count, (r + 1) % n, b, 4 * count, (r + n - 1) % n);
    default:
        /* Even ranks send to the next odd one. */
        if (r % 2 == 0) return tm_send(world, a, 4 * count, r + 1);
        return tm_recv(world, b, 4 * count, r - 1);
    }
}

static int mix_fn(tm_device *dev, void *arg)
{
    mix_job *j = arg;
    tm_comm *world = tm_device_comm(dev), *half = NULL;
    int r = tm_device_id(dev);
    tm_clock_record(dev, 1);
    float *a = tm_device_alloc(dev, MIX_FLOATS * sizeof(float), TM_TAG_WORKSPACE);
    float *b = tm_device_alloc(dev, MIX_FLOATS * sizeof(float), TM_TAG_WORKSPACE);
    if (a == NULL || b == NULL) return TM_ENOMEM;
    for (int i = 0; i < MIX_FLOATS; i++) a[i] = (float)((i + r) % 5);
    TM_CHECK(tm_comm_split(world, r % 2, r, &half));
    /* Every device draws the same sequence. */
    uint32_t seed = 12345;
    int st = TM_OK;
    for (int k = 0; st == TM_OK && k < MIX_OPS; k++) {
        uint32_t op = mix_next(&seed), x = mix_next(&seed);
        st = mix_op(dev, world, half, a, b, op, x);
    }
    tm_clock_sync(dev);
    tm_comm_destroy(half);
    tm_clock_stats_get(dev, &j->st[r]);
    return st;
}

/* The modeled part of each device's events. */
typedef struct {
    double start, end;
    uint64_t bytes, sent;
    int engine;
} mevent;

static mevent *copy_events(const tm_world *w, int n, size_t *counts)
{
    size_t total = 0, k;
    for (int d = 0; d < n; d++) {
        tm_world_events(w, d, &counts[d]);
        total += counts[d];
    }
    mevent *out = calloc(total ? total : 1, sizeof *out), *p = out;
    cr_assert_not_null(out);
    for (int d = 0; d < n; d++) {
        const tm_event *e = tm_world_events(w, d, &k);
        for (size_t i = 0; i < k; i++)
            *p++ = (mevent){e[i].start, e[i].end, e[i].bytes, e[i].sent, e[i].engine};
    }
    return out;
}

Test(clock, modeled_times_are_bitwise_reproducible, .timeout = 60)
{
    tm_clock_config cc = clock_cfg();
    int n = 8;
    tm_world *w = make_world(n, &cc), *w2 = make_world(n, &cc);
    mix_job runs[3];
    size_t counts[3][MAXD];
    mevent *ev[3];
    memset(runs, 0, sizeof runs);
    /* Twice on one world (the clocks and links reset) and once on another. */
    for (int k = 0; k < 3; k++) {
        tm_world *on = k < 2 ? w : w2;
        run_ok(on, mix_fn, &runs[k]);
        ev[k] = copy_events(on, n, counts[k]);
    }
    double latest = 0;
    for (int d = 0; d < n; d++) latest = fmax(latest, runs[0].st[d].now);
    cr_expect_gt(latest, 0.0, "the mix took no modeled time");
    for (int k = 1; k < 3; k++) {
        cr_expect(memcmp(runs[k].st, runs[0].st, sizeof runs[0].st) == 0,
                  "run %d: device stats differ from run 0", k);
        cr_assert(memcmp(counts[k], counts[0], sizeof counts[0]) == 0,
                  "run %d: event counts differ from run 0", k);
        size_t total = 0;
        for (int d = 0; d < n; d++) total += counts[0][d];
        cr_expect(memcmp(ev[k], ev[0], total * sizeof(mevent)) == 0,
                  "run %d: modeled events differ from run 0", k);
    }
    for (int d = 0; d < n; d++) {
        const tm_clock_stats *s = &runs[0].st[d];
        cr_expect(close_to(s->now, s->compute + s->comm_wait + s->idle),
                  "device %d: now %.12g != compute %.12g + comm_wait %.12g + idle %.12g", d,
                  s->now, s->compute, s->comm_wait, s->idle);
    }
    for (int k = 0; k < 3; k++) free(ev[k]);
    tm_world_destroy(w);
    tm_world_destroy(w2);
}

/* Device 1 computes 100 us and sends 4000 bytes; device 0 runs two forward
 * kernels, receives, runs one more forward and three backwards (the last
 * two in one label), then both all-reduce and device 0 runs one more
 * backward. Kernels are 1e5 FLOPs: 10 us each. */
static int events_fn(tm_device *dev, void *arg)
{
    (void)arg;
    tm_comm *c = tm_device_comm(dev);
    int r = tm_device_id(dev);
    char name[32];
    snprintf(name, sizeof name, "dev \"%d\"", r);
    tm_clock_set_name(dev, name);
    float *x = tm_device_alloc(dev, 6000 * sizeof(float), TM_TAG_WORKSPACE);
    if (x == NULL) return TM_ENOMEM;
    memset(x, 0, 6000 * sizeof(float));
    tm_clock_record(dev, 1);
    if (r == 1) {
        tm_clock_charge(dev, 1e6, 0);
        TM_CHECK(tm_send(c, x, 4000, 0));
    } else {
        tm_clock_label(dev, 'F', 0, 0);
        tm_clock_charge(dev, 1e5, 0);
        tm_clock_charge(dev, 1e5, 0);
        TM_CHECK(tm_recv(c, x, 4000, 1));
        tm_clock_charge(dev, 1e5, 0);
        tm_clock_label(dev, 'B', 0, 0);
        tm_clock_charge(dev, 1e5, 0);
        tm_clock_label(dev, 'B', 0, 0);
        tm_clock_charge(dev, 1e5, 0);
    }
    TM_CHECK(tm_allreduce(c, x, x, 6000, TM_SUM));
    if (r == 0) tm_clock_charge(dev, 1e5, 0);
    tm_clock_record(dev, 0);
    /* Not recorded. */
    tm_clock_charge(dev, 1e5, 0);
    return TM_OK;
}

/* No compute event of device d contains, strictly inside, the end of a wait:
 * a receive's arrival or a synchronous collective's end. */
static void check_no_span(const tm_world *w, int d)
{
    size_t n;
    const tm_event *e = tm_world_events(w, d, &n);
    for (size_t i = 0; i < n; i++) {
        if (e[i].engine != TM_ENGINE_COMPUTE) continue;
        cr_expect_leq(e[i].start, e[i].end, "device %d event %zu runs backwards", d, i);
        for (size_t k = 0; k < n; k++)
            if (e[k].engine != TM_ENGINE_COMPUTE)
                cr_expect(!(e[k].end > e[i].start && e[k].end < e[i].end),
                          "device %d: compute event %zu [%.9g, %.9g] spans the end of %s at %.9g",
                          d, i, e[i].start, e[i].end, e[k].name, e[k].end);
    }
}

Test(clock, compute_events_merge_one_label_and_stop_at_waits, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(2, &cc);
    tm_allreduce_set_algo(TM_ALGO_RING);
    run_ok(w, events_fn, NULL);
    tm_allreduce_set_algo(TM_ALGO_AUTO);
    size_t n;
    const tm_event *e = tm_world_events(w, 0, &n);
    /* forward [0,20us], recv, forward, backward (two kernels), allreduce,
     * backward. */
    cr_assert_eq(n, 6, "device 0 recorded %zu events", n);
    double k = 1e-5, arrival = 1e-4 + hold(4000) + LAT;
    struct {
        int engine;
        const char *name;
        char phase;
        double start, end; /* < 0: not checked here */
    } want[] = {
        {TM_ENGINE_COMPUTE, "forward", 'F', 0, 2 * k},
        /* The message's bytes come in over the transfer before its arrival. */
        {TM_ENGINE_RECV, "recv", 0, 1e-4 + LAT, arrival},
        {TM_ENGINE_COMPUTE, "forward", 'F', arrival, arrival + k},
        {TM_ENGINE_COMPUTE, "backward", 'B', arrival + k, arrival + 3 * k},
        {TM_ENGINE_COLLECTIVE, "allreduce", 0, arrival + 3 * k, -1},
        {TM_ENGINE_COMPUTE, "backward", 'B', -1, -1},
    };
    for (size_t i = 0; i < n; i++) {
        cr_expect_eq(e[i].engine, want[i].engine, "event %zu on engine %d", i, e[i].engine);
        cr_expect_str_eq(e[i].name, want[i].name, "event %zu is %s", i, e[i].name);
        if (e[i].engine == TM_ENGINE_COMPUTE) {
            cr_expect_eq(e[i].phase, want[i].phase, "event %zu phase %c", i, e[i].phase);
            cr_expect(e[i].stage == 0 && e[i].mb == 0, "event %zu stage %d mb %d", i,
                      e[i].stage, e[i].mb);
        }
        if (want[i].start >= 0)
            cr_expect(close_to(e[i].start, want[i].start), "event %zu starts %.12g, want %.12g",
                      i, e[i].start, want[i].start);
        if (want[i].end >= 0)
            cr_expect(close_to(e[i].end, want[i].end), "event %zu ends %.12g, want %.12g", i,
                      e[i].end, want[i].end);
    }
    /* The last backward starts when the all-reduce ends: not merged with the
     * backward before it, across the wait. */
    cr_expect_eq(e[5].start, e[4].end, "backward after the all-reduce starts at %.12g, not %.12g",
                 e[5].start, e[4].end);
    cr_expect_gt(e[5].start, e[3].end, "the all-reduce took no time");
    cr_expect(close_to(e[5].end - e[5].start, k), "last backward lasts %.12g",
              e[5].end - e[5].start);
    cr_expect_eq(e[4].bytes, 6000 * sizeof(float), "all-reduce bytes %llu",
                 (unsigned long long)e[4].bytes);
    cr_expect_eq(e[4].sent, 6000 * sizeof(float), "2 devices: each sends half twice, sent %llu",
                 (unsigned long long)e[4].sent);
    /* Device 1: compute (unlabelled), send, all-reduce. */
    const tm_event *e1 = tm_world_events(w, 1, &n);
    cr_assert_eq(n, 3, "device 1 recorded %zu events", n);
    cr_expect_str_eq(e1[0].name, "compute");
    cr_expect(close_to(e1[0].end, 1e-4), "device 1 computed until %.12g", e1[0].end);
    cr_expect_str_eq(e1[1].name, "send");
    cr_expect(e1[1].engine == TM_ENGINE_SEND && e1[1].sent == 4000, "device 1's send");
    cr_expect(close_to(e1[1].start, 1e-4) && close_to(e1[1].end, 1e-4 + hold(4000)),
              "send [%.12g, %.12g]", e1[1].start, e1[1].end);
    for (int d = 0; d < 2; d++) check_no_span(w, d);
    tm_world_destroy(w);
}

/* The whole file, NUL-terminated. */
/* A kernel, an overlapped all-reduce, a kernel: one compute event, since
 * the compute engine never waited. */
static int overlap_fn(tm_device *dev, void *arg)
{
    (void)arg;
    tm_comm *c = tm_device_comm(dev);
    float *v = tm_device_alloc(dev, 6000 * sizeof(float), TM_TAG_WORKSPACE);
    if (v == NULL) return TM_ENOMEM;
    memset(v, 0, 6000 * sizeof(float));
    tm_clock_record(dev, 1);
    tm_clock_label(dev, 'B', 0, 3);
    tm_clock_charge(dev, 1e5, 0);
    tm_clock_async(dev, 1);
    TM_CHECK(tm_allreduce(c, v, v, 6000, TM_SUM));
    tm_clock_async(dev, 0);
    tm_clock_charge(dev, 1e5, 0);
    tm_clock_record(dev, 0);
    return TM_OK;
}

Test(clock, an_overlapped_collective_does_not_split_a_compute_event, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(2, &cc);
    run_ok(w, overlap_fn, NULL);
    for (int d = 0; d < 2; d++) {
        size_t n;
        const tm_event *e = tm_world_events(w, d, &n);
        size_t compute = 0;
        for (size_t i = 0; i < n; i++) {
            if (e[i].engine != TM_ENGINE_COMPUTE) continue;
            compute++;
            cr_expect(close_to(e[i].end - e[i].start, 2e-5),
                      "device %d: backward lasts %.12g, want both kernels' 2e-5", d,
                      e[i].end - e[i].start);
        }
        cr_expect_eq(compute, 1, "device %d: %zu compute events, want 1", d, compute);
        cr_expect_eq(n, 2, "device %d: %zu events, want the backward and the all-reduce", d, n);
    }
    tm_world_destroy(w);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert_not_null(buf);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

/* The parser keeps no value for a fraction, so the times are read from the
 * text: every occurrence of "key": must be a non-negative number. Returns how
 * many there were. */
static int check_non_negative(const char *text, const char *key)
{
    int n = 0;
    for (const char *p = strstr(text, key); p != NULL; p = strstr(p + 1, key)) {
        char *end;
        double v = strtod(p + strlen(key), &end);
        cr_expect(end != p + strlen(key) && v >= 0 && p[strlen(key)] != '-',
                  "%s%.20s is not a non-negative number", key, p + strlen(key));
        n++;
    }
    return n;
}

/* Checks a trace of the world's last run; wall says which clock. */
static void check_trace(const tm_world *w, const char *path, int wall)
{
    size_t len;
    char *text = slurp(path, &len);
    tm_json_doc *doc = NULL;
    int st = tm_json_parse(&doc, text, len);
    cr_assert_eq(st, TM_OK, "trace does not parse: %s", tm_error_message());
    const tm_json *root = tm_json_root(doc), *events = tm_json_get(root, "traceEvents");
    cr_assert(events != NULL && events->type == TM_JSON_ARRAY, "no traceEvents array");
    const tm_json *other = tm_json_get(root, "otherData");
    const tm_json *clk = other ? tm_json_get(other, "clock") : NULL;
    cr_expect(clk != NULL && clk->type == TM_JSON_STRING &&
                  strcmp(clk->str, wall ? "wall" : "modeled") == 0,
              "otherData.clock missing or wrong");
    int n = tm_world_size(w), named[MAXD] = {0}, x_events = 0, x_per[MAXD] = {0};
    for (const tm_json *e = events->child; e != NULL; e = e->next) {
        const tm_json *ph = tm_json_get(e, "ph"), *pid = tm_json_get(e, "pid");
        const tm_json *name = tm_json_get(e, "name");
        cr_assert(ph != NULL && ph->type == TM_JSON_STRING && pid != NULL && pid->is_uint &&
                      name != NULL && name->type == TM_JSON_STRING,
                  "an event without ph, pid or name");
        cr_assert_lt(pid->uint, (uint64_t)n, "pid %llu of %d devices",
                     (unsigned long long)pid->uint, n);
        if (strcmp(ph->str, "M") == 0) {
            if (strcmp(name->str, "process_name") == 0) {
                named[pid->uint]++;
                const tm_json *args = tm_json_get(e, "args");
                const tm_json *pn = args ? tm_json_get(args, "name") : NULL;
                char want[32];
                snprintf(want, sizeof want, "dev \"%d\"", (int)pid->uint);
                cr_expect(pn != NULL && pn->type == TM_JSON_STRING && strcmp(pn->str, want) == 0,
                          "pid %llu is not named %s", (unsigned long long)pid->uint, want);
            }
            continue;
        }
        cr_expect_str_eq(ph->str, "X", "event of phase %s", ph->str);
        const tm_json *ts = tm_json_get(e, "ts"), *dur = tm_json_get(e, "dur");
        const tm_json *tid = tm_json_get(e, "tid");
        cr_expect(ts != NULL && ts->type == TM_JSON_NUMBER && dur != NULL &&
                      dur->type == TM_JSON_NUMBER,
                  "X event without ts and dur");
        /* Engines 0-2, then a receive track per peer (tid 3: the host). */
        cr_expect(tid != NULL && tid->is_uint && tid->uint < (uint64_t)TM_ENGINE_RECV + 1 + n,
                  "X event tid");
        x_events++;
        x_per[pid->uint]++;
    }
    for (int d = 0; d < n; d++) {
        size_t k;
        tm_world_events(w, d, &k);
        cr_expect_eq(named[d], 1, "device %d has %d process_name records", d, named[d]);
        cr_expect_eq((size_t)x_per[d], k, "device %d: %d X events for %zu recorded", d, x_per[d],
                     k);
    }
    cr_expect_eq(check_non_negative(text, "\"ts\":"), x_events, "ts count");
    cr_expect_eq(check_non_negative(text, "\"dur\":"), x_events, "dur count");
    tm_json_free(doc);
    free(text);
}

/* Writes the last run's trace to path through an outfile, as a program does. */
static int write_trace(tm_world *w, const char *path, int wall)
{
    tm_outfile *o;
    TM_CHECK(tm_outfile_open(&o, path));
    int st = tm_world_trace_write(w, o, wall);
    if (st != TM_OK) {
        tm_outfile_abandon(o);
        return st;
    }
    return tm_outfile_commit(o);
}

/* The last run's trace as text (freed by the caller; its length in *len),
 * through a file named after `what` that is removed again. */
static char *trace_text(tm_world *w, const char *what, size_t *len)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/tm_clock_%s_%ld.json", what, (long)getpid());
    cr_assert_eq(write_trace(w, path, 0), TM_OK, "%s", tm_error_message());
    char *text = slurp(path, len);
    unlink(path);
    cr_assert(text != NULL);
    return text;
}

Test(clock, trace_is_chrome_json_and_a_failed_write_leaves_no_file, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(2, &cc);
    run_ok(w, events_fn, NULL);
    char dir[] = "/tmp/tm_clock_XXXXXX", path[256], missing[300];
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
    snprintf(path, sizeof path, "%s/trace.json", dir);
    for (int wall = 0; wall < 2; wall++) {
        int st = write_trace(w, path, wall);
        cr_assert_eq(st, TM_OK, "trace_write (wall %d): %s", wall, tm_error_message());
        check_trace(w, path, wall);
    }
    unlink(path);
    snprintf(missing, sizeof missing, "%s/no/such/dir/trace.json", dir);
    int st = write_trace(w, missing, 0);
    cr_expect_eq(st, TM_EIO, "writing into a missing directory: %s", tm_err_name(st));
    cr_expect(strstr(tm_error_message(), missing) != NULL, "message does not name the path: %s",
              tm_error_message());
    cr_expect_neq(access(missing, F_OK), 0, "a trace appeared at %s", missing);
    cr_expect_eq(rmdir(dir), 0, "%s not empty after the failed write: %s", dir, strerror(errno));
    tm_world_destroy(w);
}

Test(clock, config_check_rejects_bad_rates)
{
    tm_clock_config good = clock_cfg();
    cr_expect_eq(tm_clock_config_check(&good), TM_OK, "%s", tm_error_message());
    tm_clock_config def;
    tm_clock_config_default(&def);
    cr_expect_eq(tm_clock_config_check(&def), TM_OK, "defaults: %s", tm_error_message());
    tm_clock_config zero_lat = good;
    zero_lat.link_latency_us = 0;
    zero_lat.inter_node_latency_us = 0;
    cr_expect_eq(tm_clock_config_check(&zero_lat), TM_OK, "zero latency is a free link: %s",
                 tm_error_message());

    const size_t rates[] = {offsetof(tm_clock_config, device_gflops),
                            offsetof(tm_clock_config, device_gbps),
                            offsetof(tm_clock_config, link_gbps),
                            offsetof(tm_clock_config, inter_node_gbps)};
    const size_t lats[] = {offsetof(tm_clock_config, link_latency_us),
                           offsetof(tm_clock_config, inter_node_latency_us)};
    /* Absurd figures too: a rate of 1e-300 made every kernel take forever. */
    const double bad_rates[] = {0, -1, NAN, INFINITY, 1e-300, 1e-4, 1e300};
    const double bad_lats[] = {-1e-3, NAN, INFINITY, 1e7, 1e300};
    for (size_t f = 0; f < 4; f++)
        for (size_t v = 0; v < 7; v++) {
            tm_clock_config c = good;
            memcpy((char *)&c + rates[f], &bad_rates[v], sizeof(double));
            cr_expect_eq(tm_clock_config_check(&c), TM_EINVAL, "rate %zu = %g accepted", f,
                         bad_rates[v]);
            cr_expect(strstr(tm_error_message(), "must be") != NULL, "message: %s",
                      tm_error_message());
        }
    for (size_t f = 0; f < 2; f++)
        for (size_t v = 0; v < 5; v++) {
            tm_clock_config c = good;
            memcpy((char *)&c + lats[f], &bad_lats[v], sizeof(double));
            cr_expect_eq(tm_clock_config_check(&c), TM_EINVAL, "latency %zu = %g accepted", f,
                         bad_lats[v]);
        }
    /* The flags say the range they want. */
    tm_clock_config parsed = good;
    cr_expect_eq(tm_clock_config_flag(&parsed, "device-gflops", "1e-300"), -1);
    cr_expect(strstr(tm_error_message(), "--device-gflops wants a number in 0.001..1e+07") != NULL,
              "%s", tm_error_message());
    cr_expect_eq(tm_clock_config_flag(&parsed, "link-latency-us", "2e6"), -1);
    cr_expect_eq(tm_clock_config_flag(&parsed, "device-gflops", "1e7"), 1, "the bound itself");
    cr_expect_eq(parsed.device_gflops, 1e7);
    tm_clock_config c = good;
    c.devices_per_node = -1;
    cr_expect_eq(tm_clock_config_check(&c), TM_EINVAL, "negative devices_per_node accepted");

    /* A world refuses a bad clock before creating anything. */
    tm_world_config wc;
    tm_world_config_default(&wc);
    wc.n_devices = 2;
    wc.mem_cap = 1 << 20;
    wc.clock.link_gbps = 0;
    tm_world *w = NULL;
    cr_expect_eq(tm_world_create(&w, &wc), TM_EINVAL, "world with a free-speed link created");
    cr_expect_null(w);
}

/* A name cut inside a UTF-8 character and a micro-batch number past 32767
 * still make a valid trace with the right numbers. */
static int odd_names_fn(tm_device *dev, void *arg)
{
    (void)arg;
    char name[64];
    /* 30 two-byte characters: the 47 bytes a name keeps end mid-character. */
    name[0] = '\0';
    for (int i = 0; i < 30; i++) strcat(name, "\xc3\xa9");
    tm_clock_set_name(dev, name);
    tm_clock_record(dev, 1);
    tm_clock_label(dev, 'F', 0, 40000);
    tm_clock_charge(dev, 1e3, 0);
    tm_clock_record(dev, 0);
    return TM_OK;
}

Test(clock, a_cut_name_and_a_large_micro_batch_make_a_valid_trace, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(1, &cc);
    run_ok(w, odd_names_fn, NULL);
    size_t n;
    const tm_event *e = tm_world_events(w, 0, &n);
    cr_assert_eq(n, 1);
    cr_expect_eq(e[0].mb, 40000, "micro-batch %d", (int)e[0].mb);
    size_t len;
    char *text = trace_text(w, "utf8", &len);
    tm_json_doc *doc = NULL;
    cr_expect_eq(tm_json_parse(&doc, text, len), TM_OK, "trace does not parse: %s",
                 tm_error_message());
    cr_expect(strstr(text, "\"mb\":40000") != NULL, "mb not written as 40000");
    tm_json_free(doc);
    free(text);
    tm_world_destroy(w);
}

/* Kernels of odd lengths (a few thousandths of a microsecond, no decimal
 * spells them) under alternating labels: spans that follow each other on
 * the compute track, each ending where the next starts. */
static int thirds_fn(tm_device *dev, void *arg)
{
    (void)arg;
    tm_clock_record(dev, 1);
    for (int i = 0; i < 300; i++) {
        double us = (1 + i * 7919 % 997) / 3001.0;
        tm_clock_label(dev, i % 2 ? 'B' : 'F', 0, i);
        tm_clock_charge(dev, GFLOPS * 1e3 * us, 0);
    }
    tm_clock_record(dev, 0);
    return TM_OK;
}

/* A "key":123.4567 number of the trace as ticks of 0.1 ns, exactly. */
static long long ticks_at(const char *p)
{
    long long whole = 0, frac = 0;
    for (; *p >= '0' && *p <= '9'; p++) whole = whole * 10 + (*p - '0');
    cr_assert_eq(*p, '.', "not 4 decimals: %.20s", p);
    int digits = 0;
    for (p++; *p >= '0' && *p <= '9'; p++, digits++) frac = frac * 10 + (*p - '0');
    cr_assert_eq(digits, 4, "not 4 decimals");
    return whole * 10000 + frac;
}

Test(clock, spans_that_follow_each_other_never_overlap_in_the_trace, .timeout = 30)
{
    tm_clock_config cc = clock_cfg();
    tm_world *w = make_world(1, &cc);
    run_ok(w, thirds_fn, NULL);
    size_t len;
    char *text = trace_text(w, "thirds", &len);
    long long prev_end = -1;
    int spans = 0, overlaps = 0;
    for (const char *p = strstr(text, "\"ts\":"); p != NULL; p = strstr(p + 1, "\"ts\":")) {
        long long ts = ticks_at(p + 5);
        const char *d = strstr(p, "\"dur\":");
        cr_assert_not_null(d);
        long long end = ts + ticks_at(d + 6);
        overlaps += prev_end > ts;
        cr_expect_leq(prev_end, ts, "span %d starts at %lld, before the last ended at %lld",
                      spans, ts, prev_end);
        prev_end = end;
        spans++;
    }
    cr_expect_eq(spans, 300, "%d spans", spans);
    cr_expect_eq(overlaps, 0, "%d of %d spans overlap the one before", overlaps, spans);
    free(text);
    tm_world_destroy(w);
}
