#include "runtime/stop.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "runtime/status.h"

/* How often a device waiting for the processes' agreement looks at the
 * abort flag. */
#define AGREE_POLL_NS 20000000L

struct tm_stop {
    pthread_mutex_t lock; /* guards everything below; never held while waiting */
    const atomic_int *request; /* set from outside (a signal handler), or NULL */
    int asked;            /* a stop was asked for (request seen, or a failure) */
    long started;         /* the largest step any device has been allowed */
    long stop;            /* the first step no device takes; 0: not fixed yet */
    long failed;          /* the step of the kept failure; 0: none */
    char why[256];        /* its reason */
    int req, req_process; /* the request's value that asked, and where */

    /* Across processes (tm_stop_span): */
    int procs, me;        /* processes that agree (1: this one alone); ours */
    tm_stop_tell_fn tell;
    void *ctx;
    const atomic_int *abort;
    int told;             /* our frontier is frozen and told */
    int heard;            /* frontiers known, ours included */
    long front;           /* the largest of them */
    pthread_cond_t fixed; /* the stop is fixed */
};

int tm_stop_create(tm_stop **out, long done, const atomic_int *request)
{
    tm_stop *s = calloc(1, sizeof *s);
    *out = s;
    if (s == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the run's stop agreement");
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->fixed, NULL);
    s->request = request;
    s->started = done;
    s->req_process = -1;
    s->procs = 1;
    return TM_OK;
}

void tm_stop_destroy(tm_stop *s)
{
    if (s == NULL) return;
    pthread_cond_destroy(&s->fixed);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void tm_stop_span(tm_stop *s, int processes, int me, tm_stop_tell_fn tell, void *ctx,
                  const atomic_int *abort)
{
    pthread_mutex_lock(&s->lock);
    s->procs = processes;
    s->me = me;
    s->tell = tell;
    s->ctx = ctx;
    s->abort = abort;
    pthread_mutex_unlock(&s->lock);
}

/* Counts one more process's frontier; with all of them the stop is fixed. */
static void count_front(tm_stop *s, long started)
{
    if (started > s->front) s->front = started;
    if (++s->heard == s->procs) {
        s->stop = s->front + 1;
        pthread_cond_broadcast(&s->fixed);
    }
}

/* Across processes, once a stop is asked: no device of ours goes past the
 * steps already begun until all agree, and the others learn where we are. */
static void freeze(tm_stop *s)
{
    if (s->procs == 1 || s->told) return;
    s->told = 1;
    tm_stop_word word = {s->me, s->req_process == s->me ? s->req : 0, s->started, s->failed, ""};
    snprintf(word.why, sizeof word.why, "%s", s->why);
    s->tell(s->ctx, &word);
    count_front(s, s->started);
}

int tm_stop_begin(tm_stop *s, long step)
{
    pthread_mutex_lock(&s->lock);
    int req = s->request != NULL ? atomic_load(s->request) : 0;
    if (!s->asked && req != 0) {
        s->asked = 1;
        s->req = req;
        s->req_process = s->me;
    }
    /* Every device that began a step up to `started` will finish it (its
     * partners are in it or will reach it), so that is where all stop. */
    if (s->asked && s->procs == 1 && s->stop == 0) s->stop = s->started + 1;
    if (s->asked) freeze(s);
    /* Across processes a step past our frontier waits for the others'. */
    while (s->procs > 1 && s->told && s->stop == 0 && step > s->started) {
        if (atomic_load(s->abort)) {
            pthread_mutex_unlock(&s->lock);
            return 0;
        }
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += AGREE_POLL_NS;
        if (t.tv_nsec >= 1000000000L) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->fixed, &s->lock, &t);
    }
    int go = s->stop == 0 || step < s->stop;
    if (go && step > s->started) s->started = step;
    pthread_mutex_unlock(&s->lock);
    return go;
}

static void keep_failure(tm_stop *s, long step, const char *why)
{
    if (s->failed == 0 || step < s->failed) {
        s->failed = step;
        snprintf(s->why, sizeof s->why, "%s", why);
    }
}

void tm_stop_fail(tm_stop *s, long step, const char *why)
{
    pthread_mutex_lock(&s->lock);
    s->asked = 1;
    keep_failure(s, step, why);
    freeze(s);
    pthread_mutex_unlock(&s->lock);
}

void tm_stop_heard(tm_stop *s, const tm_stop_word *word)
{
    pthread_mutex_lock(&s->lock);
    s->asked = 1;
    if (word->request != 0 && s->req == 0) {
        s->req = word->request;
        s->req_process = word->process;
    }
    if (word->failed > 0) keep_failure(s, (long)word->failed, word->why);
    freeze(s);
    count_front(s, (long)word->started);
    pthread_mutex_unlock(&s->lock);
}

long tm_stop_failed(tm_stop *s, char *why, size_t n)
{
    pthread_mutex_lock(&s->lock);
    long step = s->failed;
    if (why != NULL && n > 0) snprintf(why, n, "%s", step ? s->why : "");
    pthread_mutex_unlock(&s->lock);
    return step;
}

long tm_stop_step(tm_stop *s)
{
    pthread_mutex_lock(&s->lock);
    long stop = s->stop;
    pthread_mutex_unlock(&s->lock);
    return stop;
}

int tm_stop_requested(tm_stop *s, int *process)
{
    pthread_mutex_lock(&s->lock);
    int req = s->req;
    *process = s->req_process;
    pthread_mutex_unlock(&s->lock);
    return req;
}
