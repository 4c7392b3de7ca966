/* A run whose devices span processes (runtime/process.h): after the world
 * has run, every process gets what the others' devices recorded — their
 * reports, the reporting device's results and position — so that the
 * process that writes the outputs writes them whole (the model state
 * reaches it over the links, trainer_setup.c). */
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

int tm__train_share(tm_world *w, const tm_train_config *cfg, tm_train_result *res,
                    tm_model_state *state, tm_stop *stop)
{
    if (tm_world_device_count_local(w) == tm_world_size(w)) return TM_OK;
    TM_CHECK(tm_world_share(w, res->devices, sizeof *res->devices));
    for (int i = 0; i < res->n_devices; i++) res->devices[i].process = tm_world_device_process(w, i);
    int reporter = tm_train_reporter(cfg);
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
    return st;
}
