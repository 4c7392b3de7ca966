/* The world: SPMD launch, first-error propagation (no hangs), the watchdog,
 * host-memory refusal, OOM reports, and scale (64 and 256 devices on a
 * 2-core machine). Every element of every all-reduce output is checked,
 * and the outputs are fenced by guards that must come back untouched. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/collectives.h"
#include "runtime/status.h"
#include "tests/guarded.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

static tm_world *make_world(int n, size_t cap, double watchdog)
{
    tm_world_config cfg;
    tm_world_config_default(&cfg);
    cfg.n_devices = n;
    cfg.mem_cap = cap;
    cfg.watchdog_s = watchdog;
    tm_world *w = NULL;
    int st = tm_world_create(&w, &cfg);
    cr_assert_eq(st, TM_OK, "world_create(%d): %s", n, tm_error_message());
    return w;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int ids_fn(tm_device *dev, void *arg)
{
    int *seen = arg;
    seen[tm_device_id(dev)] += 1;
    return tm_device_count(dev) == tm_comm_size(tm_device_comm(dev)) ? TM_OK : TM_EINVAL;
}

Test(world, runs_every_device_once_and_again, .timeout = 30)
{
    int seen[16] = {0};
    tm_world *w = make_world(16, 1 << 16, 0);
    cr_expect_eq(tm_world_run(w, ids_fn, seen), TM_OK, "%s", tm_world_error(w));
    cr_expect_eq(tm_world_run(w, ids_fn, seen), TM_OK, "%s", tm_world_error(w));
    for (int i = 0; i < 16; i++) cr_expect_eq(seen[i], 2, "device %d ran %d times", i, seen[i]);
    cr_expect_str_empty(tm_world_error(w));
    cr_expect_eq(tm_world_failed_device(w), -1);
    tm_world_destroy(w);
    tm_world_destroy(NULL);
}

Test(world, bad_configs_are_refused)
{
    tm_world_config cfg;
    tm_world *w = (tm_world *)1;
    tm_world_config_default(&cfg);
    cfg.n_devices = 0;
    cr_expect_eq(tm_world_create(&w, &cfg), TM_EINVAL);
    cr_expect_null(w);
    cfg.n_devices = TM_MAX_DEVICES + 1;
    cr_expect_eq(tm_world_create(&w, &cfg), TM_EINVAL);
    tm_world_config_default(&cfg);
    cfg.ring_bytes = 3000;
    cr_expect_eq(tm_world_create(&w, &cfg), TM_EINVAL);
    cr_expect(strstr(tm_error_message(), "power of two") != NULL, "%s", tm_error_message());
    tm_world_config_default(&cfg);
    cfg.mem_cap = 0;
    cr_expect_eq(tm_world_create(&w, &cfg), TM_EINVAL);
}

Test(world, refuses_more_memory_than_the_host_has)
{
    tm_world_config cfg;
    tm_world_config_default(&cfg);
    cfg.n_devices = 256;
    cfg.mem_cap = (size_t)1 << 40; /* 256 TiB in all */
    tm_world *w = NULL;
    int st = tm_world_create(&w, &cfg);
    cr_expect_eq(st, TM_EHOSTMEM, "%s", tm_err_name(st));
    cr_expect_null(w);
    cr_expect(strstr(tm_error_message(), "available") != NULL, "%s", tm_error_message());
    /* The runtime serves several programs: it gives the figures and names
     * no program's flags. */
    cr_expect(strstr(tm_error_message(), "--") == NULL, "%s", tm_error_message());
    cr_expect(strstr(tm_error_message(), "256 devices x 1.00 TiB of device memory") != NULL, "%s",
              tm_error_message());
}

/* Device 3 fails in the middle of a stream of all-reduces; the others are
 * blocked in collectives at that moment and must all return promptly. */
typedef struct {
    int fail_at;
    atomic_int aborted;
    atomic_int finished;
    findings f;
} fail_job;

#define FAIL_COUNT ((size_t)(1 << 18) / sizeof(float))

/* Counts the devices on which the signals that end a process are blocked. */
static int mask_fn(tm_device *dev, void *arg)
{
    (void)dev;
    sigset_t now;
    pthread_sigmask(SIG_BLOCK, NULL, &now);
    int all = sigismember(&now, SIGINT) && sigismember(&now, SIGTERM) &&
              sigismember(&now, SIGHUP) && sigismember(&now, SIGPIPE);
    atomic_fetch_add((atomic_int *)arg, all);
    return TM_OK;
}

Test(world, signals_that_end_a_process_reach_the_host_thread_only, .timeout = 30)
{
    tm_world *w = make_world(4, 1 << 20, 0);
    atomic_int blocked = 0;
    cr_assert_eq(tm_world_run(w, mask_fn, &blocked), TM_OK, "%s", tm_world_error(w));
    cr_expect_eq(atomic_load(&blocked), 4, "%d of 4 devices block them", atomic_load(&blocked));
    sigset_t host;
    pthread_sigmask(SIG_BLOCK, NULL, &host);
    cr_expect(!sigismember(&host, SIGINT) && !sigismember(&host, SIGTERM),
              "the host thread's mask changed");
    tm_world_destroy(w);
}

static int fail_fn(tm_device *dev, void *arg)
{
    fail_job *j = arg;
    int me = tm_device_id(dev);
    guarded g;
    float *x = guarded_alloc(dev, &g, FAIL_COUNT, 1, GUARD_OUT);
    if (x == NULL) return TM_ENOMEM;
    memset(x, 0, FAIL_COUNT * sizeof(float));
    for (int i = 0; i < 1000; i++) {
        if (me == 3 && i == j->fail_at)
            return tm_error(TM_EFAIL, "injected failure at iteration %d", i);
        int st = tm_allreduce(tm_device_comm(dev), x, x, FAIL_COUNT, TM_SUM);
        if (st == TM_EABORTED) atomic_fetch_add(&j->aborted, 1);
        if (st != TM_OK) return st;
    }
    for (size_t i = 0; i < FAIL_COUNT; i++) value_check(&j->f, me, "x", x, i, 0.0f);
    guards_check(&j->f, me, "x", &g);
    guarded_free(dev, &g);
    atomic_fetch_add(&j->finished, 1);
    return TM_OK;
}

Test(world, one_failure_ends_every_device, .timeout = 30)
{
    tm_world *w = make_world(6, 1 << 20, 0);
    fail_job j = {.fail_at = 5};
    double t0 = now_s();
    int st = tm_world_run(w, fail_fn, &j);
    double dt = now_s() - t0;
    cr_expect_eq(st, TM_EFAIL, "%s", tm_err_name(st));
    cr_expect_eq(tm_world_failed_device(w), 3);
    cr_expect(strstr(tm_world_error(w), "device 3: injected failure at iteration 5") != NULL,
              "%s", tm_world_error(w));
    cr_expect_eq(atomic_load(&j.finished), 0);
    cr_expect_eq(atomic_load(&j.aborted), 5, "%d devices saw the abort", atomic_load(&j.aborted));
    cr_expect_lt(dt, 10.0, "took %.1f s", dt);
    /* The world is usable again after an aborted run. */
    j = (fail_job){.fail_at = 1 << 30};
    st = tm_world_run(w, fail_fn, &j);
    cr_expect_eq(st, TM_OK, "%s", tm_world_error(w));
    cr_expect_eq(atomic_load(&j.finished), 6);
    findings_report(&j.f, "after the aborted run");
    tm_world_destroy(w);
}

/* An allocation that fails inside a device (its arena is full) ends the run
 * with the arena's report naming the device. */
static int oom_fn(tm_device *dev, void *arg)
{
    (void)arg;
    if (tm_device_id(dev) == 1) {
        if (tm_device_alloc(dev, 4 << 20, TM_TAG_ACTIVATION) == NULL) return TM_ENOMEM;
    }
    return tm_barrier(tm_device_comm(dev));
}

Test(world, device_oom_is_reported, .timeout = 30)
{
    tm_world *w = make_world(3, 1 << 20, 0);
    int st = tm_world_run(w, oom_fn, NULL);
    cr_expect_eq(st, TM_ENOMEM, "%s", tm_err_name(st));
    cr_expect_eq(tm_world_failed_device(w), 1);
    cr_expect(strstr(tm_world_error(w), "device 1") != NULL, "%s", tm_world_error(w));
    cr_expect(strstr(tm_world_error(w), "activation") != NULL, "%s", tm_world_error(w));
    tm_world_destroy(w);
}

/* Devices 0 and 1 both wait to receive from each other: a deadlock the
 * watchdog must name; device 2 finishes normally. */
static int deadlock_fn(tm_device *dev, void *arg)
{
    (void)arg;
    tm_comm *c = tm_device_comm(dev);
    int me = tm_device_id(dev);
    char buf[8];
    if (me == 2) return TM_OK;
    return tm_recv(c, buf, sizeof buf, 1 - me);
}

Test(world, watchdog_names_a_deadlock, .timeout = 30)
{
    tm_world *w = make_world(3, 1 << 16, 1.0);
    double t0 = now_s();
    int st = tm_world_run(w, deadlock_fn, NULL);
    double dt = now_s() - t0;
    cr_expect_eq(st, TM_EDEADLOCK, "%s", tm_err_name(st));
    const char *e = tm_world_error(w);
    cr_expect(strstr(e, "device 0 waits to receive from device 1") != NULL, "%s", e);
    cr_expect(strstr(e, "device 1 waits to receive from device 0") != NULL, "%s", e);
    cr_expect(strstr(e, "device 2 finished") != NULL, "%s", e);
    cr_expect_lt(dt, 10.0);
    cr_expect_geq(dt, 1.0);
    tm_world_destroy(w);
}

/* A slow device that computes (no link traffic) while the others wait is
 * not a deadlock. */
static int slow_fn(tm_device *dev, void *arg)
{
    (void)arg;
    if (tm_device_id(dev) == 0) {
        struct timespec t = {1, 500000000};
        nanosleep(&t, NULL);
    }
    return tm_barrier(tm_device_comm(dev));
}

Test(world, slow_device_is_not_a_deadlock, .timeout = 30)
{
    tm_world *w = make_world(4, 1 << 16, 0.5);
    cr_expect_eq(tm_world_run(w, slow_fn, NULL), TM_OK, "%s", tm_world_error(w));
    tm_world_destroy(w);
}

typedef struct {
    int iters;
    size_t count;
    findings f;
} scale_job;

/* Device d's input at element i of iteration it is (d + i + it) mod 5, so
 * the sum over n devices depends only on (i + it) mod 5: five sums, worked
 * out once, check every element. */
static int scale_fn(tm_device *dev, void *arg)
{
    scale_job *j = arg;
    tm_comm *c = tm_device_comm(dev);
    guarded g;
    float *x = guarded_alloc(dev, &g, j->count, 1, GUARD_OUT);
    if (x == NULL) return TM_ENOMEM;
    int n = tm_device_count(dev), me = tm_device_id(dev);
    float sums[5] = {0};
    for (int k = 0; k < 5; k++)
        for (int q = 0; q < n; q++) sums[k] += (float)((q + k) % 5);
    for (int it = 0; it < j->iters; it++) {
        for (size_t i = 0; i < j->count; i++) x[i] = (float)((me + (int)i + it) % 5);
        TM_CHECK(tm_allreduce(c, x, x, j->count, TM_SUM));
        for (size_t i = 0; i < j->count; i++)
            value_check(&j->f, me, "x", x, i, sums[(i + (size_t)it) % 5]);
    }
    guards_check(&j->f, me, "x", &g);
    guarded_free(dev, &g);
    return TM_OK;
}

Test(world, sixty_four_devices_hundred_allreduces_of_1MiB, .timeout = 600)
{
    tm_world *w = make_world(64, 2 << 20, 0);
    scale_job j = {.iters = SANITIZED ? 5 : 100, .count = (1 << 20) / sizeof(float)};
    cr_expect_eq(tm_world_run(w, scale_fn, &j), TM_OK, "%s", tm_world_error(w));
    findings_report(&j.f, "all-reduce");
    tm_world_destroy(w);
}

Test(world, two_hundred_fifty_six_devices_allreduce_1MiB, .timeout = 600)
{
    tm_world *w = make_world(256, 2 << 20, 0);
    scale_job j = {.iters = 1, .count = (1 << 20) / sizeof(float)};
    cr_expect_eq(tm_world_run(w, scale_fn, &j), TM_OK, "%s", tm_world_error(w));
    findings_report(&j.f, "all-reduce");
    cr_expect_gt(tm_world_link_memory(w), 0);
    tm_world_destroy(w);
}
