#include "runtime/stop.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/status.h"

struct tm_stop {
    pthread_mutex_t lock; /* guards everything below; never held while waiting */
    const atomic_int *request; /* set from outside (a signal handler), or NULL */
    int asked;            /* a stop was asked for (request seen, or a failure) */
    long started;         /* the largest step any device has been allowed */
    long stop;            /* the first step no device takes; 0: not fixed yet */
    long failed;          /* the step of the kept failure; 0: none */
    char why[256];        /* its reason */
};

int tm_stop_create(tm_stop **out, long done, const atomic_int *request)
{
    tm_stop *s = calloc(1, sizeof *s);
    *out = s;
    if (s == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the run's stop agreement");
    pthread_mutex_init(&s->lock, NULL);
    s->request = request;
    s->started = done;
    return TM_OK;
}

void tm_stop_destroy(tm_stop *s)
{
    if (s == NULL) return;
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int tm_stop_begin(tm_stop *s, long step)
{
    pthread_mutex_lock(&s->lock);
    if (!s->asked && s->request != NULL && atomic_load(s->request) != 0) s->asked = 1;
    /* Every device that began a step up to `started` will finish it (its
     * partners are in it or will reach it), so that is where all stop. */
    if (s->asked && s->stop == 0) s->stop = s->started + 1;
    int go = s->stop == 0 || step < s->stop;
    if (go && step > s->started) s->started = step;
    pthread_mutex_unlock(&s->lock);
    return go;
}

void tm_stop_fail(tm_stop *s, long step, const char *why)
{
    pthread_mutex_lock(&s->lock);
    s->asked = 1;
    if (s->failed == 0 || step < s->failed) {
        s->failed = step;
        snprintf(s->why, sizeof s->why, "%s", why);
    }
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
