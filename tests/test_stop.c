/* runtime/stop: devices several steps apart all stop after the same step,
 * whether a flag (a signal) or one device's failure asks for the stop, and
 * none is left waiting for a partner's step that never comes. Devices are
 * threads in a chain: device i takes step k only after device i-1 has
 * finished it (as a pipeline stage waits for its input), and at most
 * WINDOW steps ahead of device i+1, so the chain is skewed by several steps
 * when the stop comes. A wrong agreement shows as unequal last steps or as
 * a hang (the timeout). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "runtime/status.h"
#include "runtime/stop.h"

#define DEVICES 8
#define WINDOW 3

typedef struct {
    tm_stop *stop;
    pthread_mutex_t lock;
    pthread_cond_t moved;
    long done[DEVICES];  /* the last step each device finished */
    long fail_step;      /* device 3 fails at this step (0: never) */
    long limit;          /* no device goes past this step (a run's natural end) */
} chain;

typedef struct {
    chain *c;
    int id;
} device;

static void pause_a_little(unsigned *seed)
{
    struct timespec t = {0, 1000 * (long)(rand_r(seed) % 200)};
    nanosleep(&t, NULL);
}

static void *run_device(void *arg)
{
    device *d = arg;
    chain *c = d->c;
    unsigned seed = 1234u + (unsigned)d->id;
    for (long step = c->done[d->id] + 1; step <= c->limit; step++) {
        if (!tm_stop_begin(c->stop, step)) break;
        pthread_mutex_lock(&c->lock);
        while ((d->id > 0 && c->done[d->id - 1] < step) ||
               (d->id < DEVICES - 1 && c->done[d->id + 1] < step - WINDOW))
            pthread_cond_wait(&c->moved, &c->lock);
        pthread_mutex_unlock(&c->lock);
        pause_a_little(&seed);
        if (d->id == 3 && step == c->fail_step) tm_stop_fail(c->stop, step, "device 3 gave up");
        pthread_mutex_lock(&c->lock);
        c->done[d->id] = step;
        pthread_cond_broadcast(&c->moved);
        pthread_mutex_unlock(&c->lock);
    }
    return NULL;
}

/* Runs the chain from step `done` until it stops; `flag` (may be NULL) is
 * the stop request, raised by this thread after `raise_after_ms` (< 0:
 * never). */
static void run_chain(chain *c, long done, atomic_int *flag, int raise_after_ms)
{
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->moved, NULL);
    for (int i = 0; i < DEVICES; i++) c->done[i] = done;
    cr_assert_eq(tm_stop_create(&c->stop, done, flag), TM_OK);
    pthread_t t[DEVICES];
    device d[DEVICES];
    for (int i = 0; i < DEVICES; i++) {
        d[i] = (device){c, i};
        cr_assert_eq(pthread_create(&t[i], NULL, run_device, &d[i]), 0);
    }
    if (raise_after_ms >= 0) {
        struct timespec ts = {0, 1000000L * raise_after_ms};
        nanosleep(&ts, NULL);
        atomic_store(flag, 1);
    }
    for (int i = 0; i < DEVICES; i++) pthread_join(t[i], NULL);
}

/* Every device finished the same steps: up to one before the stop step. */
static void expect_same_last_step(chain *c)
{
    long stop = tm_stop_step(c->stop);
    for (int i = 0; i < DEVICES; i++)
        cr_expect_eq(c->done[i], stop - 1, "device %d finished step %ld, the stop is at %ld", i,
                     c->done[i], stop);
}

Test(stop, a_raised_flag_stops_every_device_after_the_same_step, .timeout = 60)
{
    for (int round = 0; round < 5; round++) {
        static chain c;
        memset(&c, 0, sizeof c);
        c.limit = 1000000;
        atomic_int flag = 0;
        run_chain(&c, 0, &flag, 20 + 10 * round);
        cr_expect_gt(tm_stop_step(c.stop), 1, "round %d: the stop came before any step",
                     round);
        expect_same_last_step(&c);
        cr_expect_eq(tm_stop_failed(c.stop, NULL, 0), 0);
        tm_stop_destroy(c.stop);
    }
}

Test(stop, a_device_failure_stops_everyone_and_is_kept, .timeout = 60)
{
    static chain c;
    memset(&c, 0, sizeof c);
    c.limit = 1000000;
    c.fail_step = 40;
    run_chain(&c, 10, NULL, -1);
    expect_same_last_step(&c);
    cr_expect_geq(tm_stop_step(c.stop), 41, "stopped at %ld, before the failing step ended",
                  tm_stop_step(c.stop));
    char why[64];
    cr_expect_eq(tm_stop_failed(c.stop, why, sizeof why), 40);
    cr_expect_str_eq(why, "device 3 gave up");
    /* A later step's reason does not replace an earlier one. */
    tm_stop_fail(c.stop, 55, "later");
    tm_stop_fail(c.stop, 12, "earlier");
    cr_expect_eq(tm_stop_failed(c.stop, why, sizeof why), 12);
    cr_expect_str_eq(why, "earlier");
    tm_stop_destroy(c.stop);
}

Test(stop, a_flag_raised_before_the_first_step_takes_no_step, .timeout = 30)
{
    static chain c;
    memset(&c, 0, sizeof c);
    c.limit = 1000000;
    atomic_int flag = 1;
    run_chain(&c, 7, &flag, -1);
    cr_expect_eq(tm_stop_step(c.stop), 8);
    expect_same_last_step(&c);
    tm_stop_destroy(c.stop);
}

Test(stop, a_run_that_ends_by_itself_has_no_stop_step, .timeout = 30)
{
    static chain c;
    memset(&c, 0, sizeof c);
    c.limit = 25;
    atomic_int flag = 0;
    run_chain(&c, 0, &flag, -1);
    cr_expect_eq(tm_stop_step(c.stop), 0);
    for (int i = 0; i < DEVICES; i++) cr_expect_eq(c.done[i], 25);
    tm_stop_destroy(c.stop);
    tm_stop_destroy(NULL);
}
