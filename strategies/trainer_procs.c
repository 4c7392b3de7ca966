/* A run whose devices span processes (runtime/process.h): after the world
 * has run, every process gets what the others' devices recorded — their
 * reports, the reporting device's results and position, and the model
 * state that replica 0's devices stored — so that whichever process writes
 * the outputs writes them whole. */
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/trainer_internal.h"

/* What the reporting device sets for the run (trainer.c, train_loop). */
typedef struct {
    int stopped;
    long steps;
    double samples_per_s, train_seconds, test_acc, test_loss;
    tm_train_position pos;
    long failed;      /* this process's divergence: its step, 0 none */
    char why[256];
} reported;

/* Takes each float of `full` from the process whose devices stored it
 * (owned[i] != 0 there): the stored ranges of replica 0's devices are
 * disjoint and cover the layout. */
static int merge(tm_world *w, float *full, const float *owned, size_t n)
{
    int procs = tm_world_size(w) / tm_world_device_count_local(w);
    float *all = malloc(sizeof(float) * n * (size_t)procs);
    float *marks = malloc(sizeof(float) * n * (size_t)procs);
    int st = all == NULL || marks == NULL
                 ? tm_error(TM_EHOSTMEM, "cannot allocate the gathered model state")
                 : TM_OK;
    if (st == TM_OK) st = tm_world_share_host(w, full, sizeof(float) * n, all);
    if (st == TM_OK) st = tm_world_share_host(w, owned, sizeof(float) * n, marks);
    for (int p = 0; st == TM_OK && p < procs; p++)
        for (size_t i = 0; i < n; i++)
            if (marks[(size_t)p * n + i] != 0) full[i] = all[(size_t)p * n + i];
    free(all);
    free(marks);
    return st;
}

int tm__train_share(tm_world *w, const tm_train_config *cfg, tm_train_result *res,
                    tm_model_state *state, const float *owned, tm_stop *stop)
{
    if (tm_world_device_count_local(w) == tm_world_size(w)) return TM_OK;
    TM_CHECK(tm_world_share(w, res->devices, sizeof *res->devices));
    for (int i = 0; i < res->n_devices; i++) res->devices[i].process = tm_world_device_process(w, i);
    int reporter = (cfg->pp - 1) * cfg->tp;
    reported mine = {res->stopped, res->steps, res->samples_per_s, res->train_seconds,
                     res->test_acc, res->test_loss, state->pos, 0, ""};
    mine.failed = tm_stop_failed(stop, mine.why, sizeof mine.why);
    int procs = tm_world_size(w) / tm_world_device_count_local(w);
    reported *all = malloc(sizeof *all * (size_t)procs);
    if (all == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the run's results");
    int st = tm_world_share_host(w, &mine, sizeof mine, all);
    if (st == TM_OK) {
        reported *r = &all[tm_world_device_process(w, reporter)];
        res->stopped = r->stopped;
        res->steps = r->steps;
        res->samples_per_s = r->samples_per_s;
        res->train_seconds = r->train_seconds;
        res->test_acc = r->test_acc;
        res->test_loss = r->test_loss;
        state->pos = r->pos;
        /* A divergence found after the processes agreed to stop reached
         * only its own process: the lowest step wins everywhere. */
        for (int p = 0; p < procs; p++)
            if (all[p].failed > 0) tm_stop_fail(stop, all[p].failed, all[p].why);
    }
    free(all);
    if (st == TM_OK && owned != NULL) {
        st = merge(w, state->params, owned, state->n_params);
        for (int i = 0; st == TM_OK && i < state->n_opt_state; i++)
            st = merge(w, state->opt_state[i], owned, state->n_params);
    }
    return st;
}
