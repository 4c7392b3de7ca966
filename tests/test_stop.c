/* runtime/stop: devices several steps apart all stop after the same step,
 * whether a flag (a signal) or one device's failure asks for the stop, and
 * none is left waiting for a partner's step that never comes. Devices are
 * threads in a chain: device i takes step k only after device i-1 has
 * finished it (as a pipeline stage waits for its input), and at most
 * WINDOW steps ahead of device i+1, so the chain is skewed by several steps
 * when the stop comes. A wrong agreement shows as unequal last steps or as
 * a hang (the timeout). The same across "processes": one tm_stop each,
 * agreeing through words that a postman thread carries late. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "runtime/status.h"
#include "runtime/stop.h"

#define DEVICES 8
#define WINDOW 3

#define PROCS 4 /* "processes" of the spanned test: two devices each */

typedef struct {
    tm_stop *stop;
    tm_stop *stops[PROCS]; /* spanned: each device's process's own */
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
    tm_stop *stop = c->stops[0] != NULL ? c->stops[d->id / (DEVICES / PROCS)] : c->stop;
    for (long step = c->done[d->id] + 1; step <= c->limit; step++) {
        if (!tm_stop_begin(stop, step)) break;
        pthread_mutex_lock(&c->lock);
        while ((d->id > 0 && c->done[d->id - 1] < step) ||
               (d->id < DEVICES - 1 && c->done[d->id + 1] < step - WINDOW))
            pthread_cond_wait(&c->moved, &c->lock);
        pthread_mutex_unlock(&c->lock);
        pause_a_little(&seed);
        if (d->id == 3 && step == c->fail_step) tm_stop_fail(stop, step, "device 3 gave up");
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

/* Across processes: one tm_stop per process, their words carried by a
 * postman thread (as the progress threads carry them between processes),
 * late on purpose. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t posted;
    tm_stop_word words[PROCS * PROCS];
    int to[PROCS * PROCS], n, delivered, quit;
    tm_stop **stops;
} postman;

typedef struct {
    postman *pm;
    int from;
} sender;

static void tell(void *ctx, const tm_stop_word *word)
{
    sender *s = ctx;
    pthread_mutex_lock(&s->pm->lock);
    for (int p = 0; p < PROCS; p++) {
        if (p == s->from) continue;
        s->pm->words[s->pm->n] = *word;
        s->pm->to[s->pm->n++] = p;
    }
    pthread_cond_signal(&s->pm->posted);
    pthread_mutex_unlock(&s->pm->lock);
}

static void *deliver(void *arg)
{
    postman *pm = arg;
    pthread_mutex_lock(&pm->lock);
    for (;;) {
        while (pm->delivered == pm->n && !pm->quit) pthread_cond_wait(&pm->posted, &pm->lock);
        if (pm->delivered == pm->n) break;
        int k = pm->delivered++;
        pthread_mutex_unlock(&pm->lock);
        struct timespec ts = {0, 2000000L};
        nanosleep(&ts, NULL);
        tm_stop_heard(pm->stops[pm->to[k]], &pm->words[k]);
        pthread_mutex_lock(&pm->lock);
    }
    pthread_mutex_unlock(&pm->lock);
    return NULL;
}

Test(stop, processes_agree_on_one_stop_whichever_asks, .timeout = 60)
{
    for (int round = 0; round < 4; round++) {
        static chain c;
        memset(&c, 0, sizeof c);
        c.limit = 1000000;
        /* Odd rounds: device 3 (process 1) fails; even: process 1's flag. */
        atomic_int flag = 0, abort = 0;
        if (round % 2) c.fail_step = 30 + round;
        static postman pm;
        memset(&pm, 0, sizeof pm);
        pthread_mutex_init(&pm.lock, NULL);
        pthread_cond_init(&pm.posted, NULL);
        pm.stops = c.stops;
        sender from[PROCS];
        pthread_mutex_init(&c.lock, NULL);
        pthread_cond_init(&c.moved, NULL);
        for (int p = 0; p < PROCS; p++) {
            cr_assert_eq(tm_stop_create(&c.stops[p], 0, p == 1 ? &flag : NULL), TM_OK);
            from[p] = (sender){&pm, p};
            tm_stop_span(c.stops[p], PROCS, p, tell, &from[p], &abort);
        }
        pthread_t post, t[DEVICES];
        cr_assert_eq(pthread_create(&post, NULL, deliver, &pm), 0);
        device d[DEVICES];
        for (int i = 0; i < DEVICES; i++) {
            d[i] = (device){&c, i};
            cr_assert_eq(pthread_create(&t[i], NULL, run_device, &d[i]), 0);
        }
        if (round % 2 == 0) {
            struct timespec ts = {0, 1000000L * (20 + 10 * round)};
            nanosleep(&ts, NULL);
            atomic_store(&flag, 15);
        }
        for (int i = 0; i < DEVICES; i++) pthread_join(t[i], NULL);
        pthread_mutex_lock(&pm.lock);
        pm.quit = 1;
        pthread_cond_signal(&pm.posted);
        pthread_mutex_unlock(&pm.lock);
        pthread_join(post, NULL);
        long stop = tm_stop_step(c.stops[0]);
        cr_expect_gt(stop, 1, "round %d: the stop came before any step", round);
        for (int p = 0; p < PROCS; p++) {
            cr_expect_eq(tm_stop_step(c.stops[p]), stop, "round %d: process %d stops at %ld, "
                         "process 0 at %ld", round, p, tm_stop_step(c.stops[p]), stop);
            int where = -2;
            int req = tm_stop_requested(c.stops[p], &where);
            cr_expect(round % 2 ? req == 0 && where == -1 : req == 15 && where == 1,
                      "round %d: process %d says request %d in process %d", round, p, req, where);
            char why[64];
            cr_expect_eq(tm_stop_failed(c.stops[p], why, sizeof why), round % 2 ? c.fail_step : 0);
        }
        for (int i = 0; i < DEVICES; i++)
            cr_expect_eq(c.done[i], stop - 1, "round %d: device %d finished step %ld, the stop "
                         "is at %ld", round, i, c.done[i], stop);
        for (int p = 0; p < PROCS; p++) tm_stop_destroy(c.stops[p]);
        pthread_mutex_destroy(&pm.lock);
        pthread_cond_destroy(&pm.posted);
    }
}
