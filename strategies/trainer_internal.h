/* Between the trainer's files only: what derives from the run's
 * configuration (trainer_config.c), the accounts of a run that
 * trainer_observe.c keeps (formulas, timeline, traffic, summary), the
 * memory checks (trainer_fit.c), the guard and the sharing across
 * processes. */
#ifndef TM_TRAINER_INTERNAL_H
#define TM_TRAINER_INTERNAL_H

#include "runtime/stop.h"
#include "runtime/world.h"
#include "strategies/trainer.h"
#include "strategies/zero.h"

/* After a successful run, from the world's recorded events: res->timeline,
 * res->recorded, each device's measured step traffic and its events of the
 * step (res->step_events). TM_OK or TM_EHOSTMEM. */
int tm__train_observe(const tm_world *w, const tm_train_config *cfg, tm_train_result *res);

/* What one training step of this device should send per mesh dimension, by
 * the formulas, into rep->step_analytic (before the run, from the plan),
 * and what plain data parallelism's all-reduces would send into
 * rep->step_allreduce; stage and zero: the device's chunks
 * (tm__train_chunks) and their ZeRO shards (NULL each without); tied_bytes:
 * what it sends to sum tied tensors between stages. */
void tm__train_formulas(const tm_train_config *cfg, const tm_stage *stage, tm_zero *const *zero,
                        const tm_mesh *mesh, int rows, double tied_bytes, tm_device_report *rep);
/* The run's modeled figures (time, samples/s, bubble) from the device
 * reports, after the run. */
/* The bubble from each device's accounts acc[i * stride + 0, 1, 2]: busy,
 * start and end (tm_device_report's bubble_busy_s, bubble_start_s,
 * bubble_end_s) of the dp x pp x tp devices, device (d, p, t) at index
 * (d pp + p) tp + t; -1 without a pipeline or a span. */
double tm__train_bubble(const tm_train_config *cfg, const double *acc, int stride);
void tm__train_summarize(const tm_train_config *cfg, tm_train_result *res);

/* Whether every device's shard of the model (parameters, gradients and
 * optimizer state, as tm_stage_create allocates them; not what offload
 * keeps in host memory) fits cfg->mem_cap,
 * decided per (stage, tp rank) by tm_arena_fits, which reserves nothing, so
 * before the host allocates anything for the model: TM_OK, or TM_ENOMEM
 * with the arena's report for the first device (replica 0) that would run
 * out. first: layers per stage. */
int tm__train_fits(const tm_train_config *cfg, const int *first);
/* The same for the host arena of optimizer offload (cfg->host_mem_cap),
 * part of tm_train_check: TM_OK, or TM_EINVAL naming --host-mem-cap and
 * what the first device that would not fit keeps there. */
int tm__train_host_fits(const tm_train_config *cfg, const int *first);

/* Tensors held by several pipeline stages (tied), at most. */
#define TM__TRAIN_MAX_TIED 4

/* The optimizer's configuration of the run. */
tm_optim_config tm__train_optim(const tm_train_config *cfg);
/* Rows of one micro-batch: its samples' rows (a sequence's tokens). */
int tm__train_rows(const tm_train_config *cfg);
/* The run's clock: cfg->clock, or the default when it is all zeros. */
void tm__train_clock(const tm_train_config *cfg, tm_clock_config *out);
/* The model stages (ascending, of n_stages; layers per stage in first)
 * whose layers use tensor i, into stages (when not NULL); returns their
 * number. More than one: a tied tensor that each of them holds. */
int tm__train_tied_stages(const tm_model *m, const int *first, int n_stages, int i, int *stages);

/* Chunks per device: cfg->virtual_stages, at least 1. */
int tm__train_chunks(const tm_train_config *cfg);

/* Layers per model stage into first[0 .. pp * chunks]: the user's --stages
 * or balanced by FLOPs. TM_EINVAL as tm_stages_parse. */
int tm__train_split(const tm_train_config *cfg, int *first);

/* The run's schedule (virtual stages included): tm_schedule_make_virtual. */
int tm__train_schedule(const tm_train_config *cfg, tm_schedule *out);

/* Device p's tensor-parallel rank t: its activation peak in the training
 * steps (tm_train_predict_activations) for the model stage split first and
 * micro-batches of rows rows, over its chunks. */
int tm__train_activation_peak(const tm_train_config *cfg, const int *first,
                              const tm_schedule *sched, int rows, int p, int t, size_t *bytes);

/* After this device's step `step`: a non-finite loss (has_loss: the last
 * stage, which knows it) or gradient asks every device to stop, with the
 * step and the value as the reason (runtime/stop.h). */
void tm__train_guard(tm_stop *stop, long step, int has_loss, double loss, const float *grads,
                     size_t n, int device);

/* After a run whose devices span processes: every process gets the device
 * reports, the reporting device's results and position, and every
 * process's divergence (kept in stop). (The stored model state reached the
 * reporting device's process over the links: trainer_setup.c.) A no-op
 * with one process. TM_OK, TM_EHOSTMEM or TM_ESYS. */
int tm__train_share(tm_world *w, const tm_train_config *cfg, tm_train_result *res,
                    tm_model_state *state, tm_stop *stop);

#endif
