/* Collectives across processes against serial references: run under
 * `mpirun -np P` (P = 2 or 4; scripts/run-tests.sh does), on a world of 12
 * devices split over the processes. Groups of 1 to 9 devices, laid out
 * contiguously across a process boundary and strided over every process,
 * run every collective at counts 0, 1, 7, the direct all-reduce's limit and
 * one past it, 1000 and 2.5 rings, in place and not, sum and average, each
 * all-reduce algorithm (and which one ran); then random sequences on split
 * groups, a mismatched pair of collectives (an error naming both sides),
 * a failing device and a deadlock (every process ends with its message),
 * and a stop asked in one process (all stop after the same step). Every
 * element of every output is checked, inside guards.
 * Built against the Criterion stand-in (tests/tsan-shim): Criterion forks a
 * process per test, which MPI does not survive. */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/collectives.h"
#include "runtime/process.h"
#include "runtime/status.h"
#include "runtime/stop.h"
#include "tests/guarded.h"

#define DEVICES 12
#define RING 4096
#define BIG 2600 /* floats: 2.5 rings */
#define DIRECT_MAX ((RING / 2 - 2 * TM_LINK_ALIGN) / sizeof(float))

static float value(int seed, int rank, size_t i)
{
    return (float)((int)((seed * 31u + rank * 7u + i * 3u) % 17u) - 8);
}

/* The suite's world; `stop` (may be NULL): its runs' stop agreement. */
static tm_world *make_world_stopping(tm_stop *stop)
{
    cr_assert_eq(tm_process_init(), TM_OK, "%s", tm_error_message());
    tm_world_config cfg;
    tm_world_config_default(&cfg);
    cfg.n_devices = DEVICES;
    cfg.mem_cap = 1 << 20;
    cfg.ring_bytes = RING;
    cfg.watchdog_s = 5;
    cfg.stop = stop;
    tm_world *w = NULL;
    int st = tm_world_create(&w, &cfg);
    cr_assert_eq(st, TM_OK, "world_create: %s", tm_error_message());
    return w;
}

static tm_world *make_world(void) { return make_world_stopping(NULL); }

typedef struct {
    int size, strided;       /* the group */
    tm_allreduce_algo algo;  /* forced for the run */
    findings f;
} group_job;

/* Group member r: contiguous groups end at the last device (so they cross
 * from one process into the next), strided ones take every fifth device
 * modulo 12 (5 is prime to 12, so they are distinct, and they visit every
 * process). */
static int member(const group_job *j, int r)
{
    return j->strided ? (r * 5 + j->size) % DEVICES : DEVICES - j->size + r;
}

static tm_allreduce_algo expected_algo(tm_allreduce_algo forced, int n, size_t count)
{
    int direct_fits = n <= 8 && count <= DIRECT_MAX;
    if (forced == TM_ALGO_RING || !direct_fits) return TM_ALGO_RING;
    if (forced == TM_ALGO_DIRECT) return TM_ALGO_DIRECT;
    return count * sizeof(float) <= (16 << 10) ? TM_ALGO_DIRECT : TM_ALGO_RING;
}

static const size_t counts[] = {0, 1, 7, DIRECT_MAX, DIRECT_MAX + 1, 1000, BIG};
#define N_COUNTS (sizeof counts / sizeof counts[0])

static int allreduce_all(tm_device *dev, group_job *j, tm_comm *c, int seed)
{
    int n = tm_comm_size(c), r = tm_comm_rank(c), me = tm_device_id(dev);
    for (size_t ci = 0; ci < N_COUNTS; ci++)
        for (int in_place = 0; in_place < 2; in_place++)
            for (int op = 0; op < 2; op++) {
                size_t cnt = counts[ci], skew = (ci + (size_t)op) % 4;
                uint64_t ring0 = tm_allreduce_runs(c, TM_ALGO_RING);
                uint64_t direct0 = tm_allreduce_runs(c, TM_ALGO_DIRECT);
                guarded gs = {0}, gr = {0};
                float *send = guarded_alloc(dev, &gs, cnt, skew, in_place ? GUARD_OUT : GUARD_IN);
                float *recv = in_place ? send : guarded_alloc(dev, &gr, cnt, skew, GUARD_OUT);
                if (send == NULL || recv == NULL) return TM_ENOMEM;
                for (size_t i = 0; i < cnt; i++) send[i] = value(seed, r, i);
                TM_CHECK(tm_allreduce(c, send, recv, cnt, (tm_reduce_op)op));
                for (size_t i = 0; i < cnt; i++) {
                    float sum = 0;
                    for (int q = 0; q < n; q++) sum += value(seed, q, i);
                    value_check(&j->f, me, "allreduce", recv, i,
                                op == TM_AVG ? sum * (1.0f / (float)n) : sum);
                }
                guards_check(&j->f, me, "allreduce send", &gs);
                if (!in_place) {
                    guards_check(&j->f, me, "allreduce recv", &gr);
                    guarded_free(dev, &gr);
                }
                guarded_free(dev, &gs);
                int moves = n > 1 && cnt > 0;
                tm_allreduce_algo want = expected_algo(j->algo, n, cnt);
                uint64_t ring = tm_allreduce_runs(c, TM_ALGO_RING) - ring0;
                uint64_t direct = tm_allreduce_runs(c, TM_ALGO_DIRECT) - direct0;
                if (ring != (uint64_t)(moves && want == TM_ALGO_RING) ||
                    direct != (uint64_t)(moves && want == TM_ALGO_DIRECT))
                    found(&j->f, "device %d: count %zu ran ring %llu, direct %llu times", me, cnt,
                          (unsigned long long)ring, (unsigned long long)direct);
            }
    return TM_OK;
}

static int others_all(tm_device *dev, group_job *j, tm_comm *c)
{
    int n = tm_comm_size(c), r = tm_comm_rank(c), me = tm_device_id(dev);
    for (size_t ci = 0; ci < N_COUNTS; ci++) {
        size_t cnt = counts[ci], skew = ci % 4;
        for (int in_place = 0; in_place < 2; in_place++) {
            /* All-gather. */
            guarded ga = {0}, gb = {0};
            float *recv = guarded_alloc(dev, &gb, (size_t)n * cnt, skew, GUARD_OUT);
            float *send = in_place ? recv + (size_t)r * cnt
                                   : guarded_alloc(dev, &ga, cnt, skew, GUARD_IN);
            if (send == NULL || recv == NULL) return TM_ENOMEM;
            for (size_t i = 0; i < cnt; i++) send[i] = value(2, r, i);
            TM_CHECK(tm_allgather(c, send, recv, cnt));
            for (int q = 0; q < n; q++)
                for (size_t i = 0; i < cnt; i++)
                    value_check(&j->f, me, "allgather", recv, (size_t)q * cnt + i, value(2, q, i));
            guards_check(&j->f, me, "allgather recv", &gb);
            if (!in_place) guarded_free(dev, &ga);
            guarded_free(dev, &gb);
            /* Reduce-scatter, sum and average. */
            for (int op = 0; op < 2; op++) {
                size_t own = (size_t)r * cnt;
                float *in = guarded_alloc(dev, &ga, (size_t)n * cnt, skew,
                                          in_place ? GUARD_OUT : GUARD_IN);
                float *out = in_place ? in + own : guarded_alloc(dev, &gb, cnt, skew, GUARD_OUT);
                if (in == NULL || out == NULL) return TM_ENOMEM;
                for (size_t i = 0; i < (size_t)n * cnt; i++) in[i] = value(3, r, i);
                TM_CHECK(tm_reduce_scatter(c, in, out, cnt, (tm_reduce_op)op));
                for (size_t i = 0; i < cnt; i++) {
                    float sum = 0;
                    for (int q = 0; q < n; q++) sum += value(3, q, own + i);
                    value_check(&j->f, me, "reduce_scatter", out, i,
                                op == TM_AVG ? sum * (1.0f / (float)n) : sum);
                }
                guards_check(&j->f, me, "reduce_scatter in", &ga);
                if (!in_place) {
                    guards_check(&j->f, me, "reduce_scatter out", &gb);
                    guarded_free(dev, &gb);
                }
                guarded_free(dev, &ga);
            }
        }
        /* Broadcast from every root. */
        guarded g;
        float *buf = guarded_alloc(dev, &g, cnt, skew, GUARD_OUT);
        if (buf == NULL) return TM_ENOMEM;
        for (int root = 0; root < n; root++) {
            for (size_t i = 0; i < cnt; i++) buf[i] = value(4 + root, r, i);
            TM_CHECK(tm_broadcast(c, buf, cnt, root));
            for (size_t i = 0; i < cnt; i++)
                value_check(&j->f, me, "broadcast", buf, i, value(4 + root, root, i));
        }
        guards_check(&j->f, me, "broadcast", &g);
        guarded_free(dev, &g);
        /* A ring of sendrecvs (messages larger than a ring too). */
        if (n > 1) {
            size_t bytes = cnt * sizeof(float);
            guarded ga, gb;
            float *out = guarded_alloc(dev, &ga, cnt, 0, GUARD_IN);
            float *in = guarded_alloc(dev, &gb, cnt, 0, GUARD_OUT);
            if (out == NULL || in == NULL) return TM_ENOMEM;
            for (size_t i = 0; i < cnt; i++) out[i] = value(9, r, i);
            TM_CHECK(tm_sendrecv(c, out, bytes, (r + 1) % n, in, bytes, (r + n - 1) % n));
            for (size_t i = 0; i < cnt; i++)
                value_check(&j->f, me, "sendrecv", in, i, value(9, (r + n - 1) % n, i));
            guards_check(&j->f, me, "sendrecv", &gb);
            guarded_free(dev, &gb);
            guarded_free(dev, &ga);
        }
        TM_CHECK(tm_barrier(c));
    }
    return TM_OK;
}

static int group_fn(tm_device *dev, void *arg)
{
    group_job *j = arg;
    int me = tm_device_id(dev), ids[DEVICES];
    int in = 0;
    for (int r = 0; r < j->size; r++) {
        ids[r] = member(j, r);
        in |= ids[r] == me;
    }
    if (!in) return TM_OK;
    tm_comm *c;
    TM_CHECK(tm_comm_create(dev, ids, j->size, j->strided ? "strided" : "block", &c));
    int st = allreduce_all(dev, j, c, 1 + j->size);
    if (st == TM_OK && j->algo == TM_ALGO_AUTO) st = others_all(dev, j, c);
    tm_comm_destroy(c);
    return st;
}

static void run_groups(tm_allreduce_algo algo)
{
    tm_world *w = make_world();
    tm_allreduce_set_algo(algo);
    for (int size = 1; size <= 9; size++)
        for (int strided = 0; strided < 2; strided++) {
            group_job j = {.size = size, .strided = strided, .algo = algo};
            char label[80];
            snprintf(label, sizeof label, "group of %d (%s), algorithm %d", size,
                     strided ? "strided" : "contiguous", (int)algo);
            int st = tm_world_run(w, group_fn, &j);
            cr_expect_eq(st, TM_OK, "%s: %s", label, tm_world_error(w));
            findings_report(&j.f, label);
        }
    tm_allreduce_set_algo(TM_ALGO_AUTO);
    tm_world_destroy(w);
}

/* The long tests' time limits are hang guards: the suite takes about 10 s
 * on a quiet machine, but with load averages of 15 to 60 on two cores the
 * first of them has run past 300 s (with point-to-point links between
 * two processes, whose MPI progress polls). */
Test(mpi_collectives, every_collective_on_groups_of_1_to_9, .timeout = 900)
{
    run_groups(TM_ALGO_AUTO);
}
Test(mpi_collectives, allreduce_ring, .timeout = 900) { run_groups(TM_ALGO_RING); }
Test(mpi_collectives, allreduce_direct, .timeout = 900) { run_groups(TM_ALGO_DIRECT); }

#include "tests/random_ops.h"

Test(mpi_collectives, random_sequences_on_split_groups, .timeout = 900)
{
    tm_world *w = make_world();
    for (unsigned seed = 1; seed <= 3; seed++) {
        random_job j = {.seed = seed * 7919u, .counts = counts, .n_counts = N_COUNTS};
        char label[32];
        snprintf(label, sizeof label, "seed %u", seed);
        int st = tm_world_run(w, random_fn, &j);
        cr_expect_eq(st, TM_OK, "%s: %s", label, tm_world_error(w));
        findings_report(&j.f, label);
    }
    tm_world_destroy(w);
}

/* The first and the last device (two processes) disagree on a count. */
static int mismatch_fn(tm_device *dev, void *arg)
{
    (void)arg;
    int me = tm_device_id(dev);
    if (me != 0 && me != DEVICES - 1) return TM_OK;
    int ids[2] = {0, DEVICES - 1};
    tm_comm *c;
    TM_CHECK(tm_comm_create(dev, ids, 2, "pair", &c));
    float buf[8] = {0};
    int st = tm_allreduce(c, buf, buf, me == 0 ? 5 : 6, TM_SUM);
    tm_comm_destroy(c);
    return st;
}

Test(mpi_collectives, mismatched_collectives_name_both_sides, .timeout = 60)
{
    tm_world *w = make_world();
    int st = tm_world_run(w, mismatch_fn, NULL);
    cr_expect_eq(st, TM_EINVAL, "status %d: %s", st, tm_world_error(w));
    const char *e = tm_world_error(w);
    cr_expect(strstr(e, "mismatched collectives") != NULL && strstr(e, "20 bytes") != NULL &&
                  strstr(e, "24 bytes") != NULL && strstr(e, "(process ") != NULL,
              "message: %s", e);
    /* The world is spent: a second run is refused, not hung. */
    cr_expect_eq(tm_world_run(w, mismatch_fn, NULL), TM_EINVAL);
    tm_world_destroy(w);
}

/* The last device fails while the others wait in an all-reduce. */
static int failing_fn(tm_device *dev, void *arg)
{
    (void)arg;
    if (tm_device_id(dev) == DEVICES - 1) return tm_error(TM_EFAIL, "injected failure");
    float x = 1;
    return tm_allreduce(tm_device_comm(dev), &x, &x, 1, TM_SUM);
}

Test(mpi_collectives, a_failure_ends_every_process, .timeout = 60)
{
    tm_world *w = make_world();
    int st = tm_world_run(w, failing_fn, NULL);
    cr_expect_eq(st, TM_EFAIL, "status %d: %s", st, tm_world_error(w));
    char want[64];
    snprintf(want, sizeof want, "device %d (process %d): injected failure", DEVICES - 1,
             tm_process_count() - 1);
    cr_expect(strcmp(tm_world_error(w), want) == 0, "message '%s', want '%s'",
              tm_world_error(w), want);
    cr_expect_eq(tm_world_failed_device(w), DEVICES - 1);
    tm_world_destroy(w);
}

/* Device 0 waits for a message that device DEVICES - 1 (another process)
 * never sends: the first process's watchdog ends every process. */
static int deadlock_fn(tm_device *dev, void *arg)
{
    (void)arg;
    if (tm_device_id(dev) != 0) return TM_OK;
    float x;
    return tm_recv(tm_device_comm(dev), &x, sizeof x, DEVICES - 1);
}

Test(mpi_collectives, a_deadlock_ends_every_process, .timeout = 60)
{
    tm_world *w = make_world();
    int st = tm_world_run(w, deadlock_fn, NULL);
    cr_expect_eq(st, TM_EDEADLOCK, "status %d: %s", st, tm_world_error(w));
    cr_expect(strstr(tm_world_error(w), "process 0: watchdog") == tm_world_error(w) &&
                  strstr(tm_world_error(w), "device 0 waits to receive from device 11") != NULL,
              "message: %s", tm_world_error(w));
    tm_world_destroy(w);
}

/* A stop asked in one process only (as a signal would): every device of
 * every process takes the same steps, an all-reduce over the world each,
 * and the stop names that process. */
#define STOP_AT 5
#define STOP_SIGNAL 15
typedef struct {
    tm_stop *stop;
    atomic_int request;   /* raised by the last device, in its process only */
    long last[DEVICES];   /* the last step each device took */
} stop_job;

static int stop_fn(tm_device *dev, void *arg)
{
    stop_job *j = arg;
    int me = tm_device_id(dev);
    for (long step = 1; step <= 1000 && tm_stop_begin(j->stop, step); step++) {
        float x = 1;
        TM_CHECK(tm_allreduce(tm_device_comm(dev), &x, &x, 1, TM_SUM));
        if (x != DEVICES) return tm_error(TM_EFAIL, "step %ld: sum %g", step, (double)x);
        j->last[me] = step;
        if (me == DEVICES - 1 && step == STOP_AT) atomic_store(&j->request, STOP_SIGNAL);
    }
    return TM_OK;
}

Test(mpi_collectives, a_stop_asked_in_one_process_stops_all_after_the_same_step, .timeout = 60)
{
    static stop_job j;
    memset(&j, 0, sizeof j);
    cr_assert_eq(tm_stop_create(&j.stop, 0, &j.request), TM_OK);
    tm_world *w = make_world_stopping(j.stop);
    int st = tm_world_run(w, stop_fn, &j);
    cr_expect_eq(st, TM_OK, "status %d: %s", st, tm_world_error(w));
    cr_expect_eq(tm_world_share(w, j.last, sizeof j.last[0]), TM_OK);
    for (int i = 0; i < DEVICES; i++)
        cr_expect(j.last[i] == j.last[0] && j.last[i] >= STOP_AT && j.last[i] < 1000,
                  "device %d took steps up to %ld, device 0 up to %ld", i, j.last[i], j.last[0]);
    int process = -2;
    cr_expect_eq(tm_stop_requested(j.stop, &process), STOP_SIGNAL);
    cr_expect_eq(process, tm_process_count() - 1);
    tm_world_destroy(w);
    tm_stop_destroy(j.stop);
}
