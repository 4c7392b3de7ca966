/* Training: the loop over epochs and optimizer steps (micro-batches with
 * gradient accumulation, learning-rate schedule, clipping, evaluation,
 * checkpoints) of any model (strategies/model.h) on a mesh of emulated
 * devices, reporting through callbacks.
 * Thread-safety: tm_train is called from one host thread; the callbacks run
 * on the device thread, one at a time. */
#ifndef TM_TRAINER_H
#define TM_TRAINER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/arena.h"
#include "runtime/clock.h"
#include "runtime/world.h"
#include "strategies/checkpoint.h"
#include "strategies/data.h"
#include "strategies/offload.h"
#include "strategies/schedule.h"
#include "strategies/stage.h"

typedef enum { TM_LR_CONSTANT, TM_LR_COSINE } tm_lr_schedule;

typedef struct tm_step_info {
    long step;             /* 1-based optimizer step, counted from the start */
    int epoch;             /* 0-based epoch the step belongs to */
    long epoch_step;       /* 1-based step within the epoch */
    long steps_per_epoch;
    long total_steps;      /* epochs * steps_per_epoch */
    double loss;           /* mean loss over the step's batch (per row: a token
                              of the GPT), before the update */
    double lr;
    double grad_norm;      /* global gradient norm before clipping; -1 when
                              not clipping */
    double samples_per_s;  /* this run so far, training time only */
    double modeled_step_s; /* this step in modeled time (the reporting device's) */
} tm_step_info;

typedef struct tm_epoch_info {
    int epoch;             /* 0-based epoch just finished */
    double train_loss;     /* mean of the epoch's step losses (this run's part) */
    double test_loss;      /* mean over the evaluation set's rows */
    double test_acc;       /* fraction of samples in [0, 1] (one-row samples) */
    double samples_per_s;  /* the epoch's training steps only */
    double modeled_samples_per_s; /* the same in modeled time (slowest device) */
    double bubble;         /* pp > 1: measured pipeline bubble fraction; else -1 */
} tm_epoch_info;

/* An evaluation between epochs (every eval_every steps). */
typedef struct tm_eval_info {
    long step;             /* optimizer steps taken so far */
    double loss;           /* mean over the evaluation set's rows */
    double acc;            /* as tm_epoch_info.test_acc */
} tm_eval_info;

typedef struct tm_start_info {
    long step;             /* steps already taken (a resumed checkpoint's) */
    int epoch;             /* 0-based epoch of the next step */
    long epoch_step;       /* steps already taken in that epoch */
    long steps_per_epoch;
    int loaded;            /* a checkpoint was loaded (load_path) ... */
    int resumed;           /* ... with its optimizer state and position */
} tm_start_info;

typedef struct {
    const tm_model *model;
    int dp, pp, tp;        /* the mesh: dp * pp * tp devices */
    int zero;              /* ZeRO stage over the dp group (strategies/zero.h):
                              0 plain data parallelism, 1 optimizer state,
                              2 and gradients, 3 and parameters sharded */
    tm_precision precision; /* fp32 (the default) or bf16 mixed precision
                              (strategies/stage.h) */
    const char *stages;    /* layers per stage ("2,1,1"), NULL: balanced by FLOPs;
                              pp * virtual_stages entries with virtual stages */
    tm_schedule_kind schedule; /* pipeline schedule (any, also for pp = 1) */
    int virtual_stages;    /* interleaved-1f1b: chunks per device, v (0 or 1:
                              one); model stage c * pp + p is device p's
                              chunk c */
    int epochs;            /* length of the schedule, in epochs from step 0 */
    long max_steps;        /* stop this run after so many steps (0: none) */
    int batch;             /* samples per optimizer step (the global batch) */
    int micro_batches;     /* per replica: its batch / dp samples are split into
                              this many micro-batches (accumulation steps, and
                              the pipeline's micro-batches) */
    tm_optimizer optimizer;
    double lr;
    tm_lr_schedule lr_schedule;
    long warmup_steps;     /* linear warm-up (cosine schedule only) */
    double min_lr;         /* cosine: the rate it decays to */
    long lr_decay_steps;   /* cosine: steps from 0 to the end of the decay
                              (0: the length of the epochs) */
    double momentum;       /* SGD */
    double beta1, beta2;   /* AdamW */
    double weight_decay;   /* on the tensors the model marks for decay */
    double clip_grad;      /* clip the global gradient norm to this (0: off) */
    long eval_every;       /* also evaluate every N steps (0: epochs only) */
    uint64_t seed;         /* initialisation and data order */
    int shuffle;           /* 0: the files' own order */
    size_t mem_cap;        /* device arena bytes */
    tm_offload_kind offload; /* optimizer offload (strategies/offload.h): the
                              optimizer state in a host arena per device */
    size_t host_mem_cap;   /* that host arena's bytes (0 without offload) */
    const char *load_path; /* checkpoint to start from, or NULL */
    int load_weights;      /* take only its weights: step 0, fresh optimizer */
    tm_model_meta data_meta[TM_DATA_META]; /* identifies the training data in
                              checkpoints; a resume on other data is refused */
    int n_data_meta;
    int keep_params;       /* return the final weights in the result */
    const char *save_path; /* checkpoint written at the end, or NULL */
    tm_clock_config clock; /* modeled device and link rates; all zero: the
                              defaults (tm_clock_config_default) */
    int dry_run;           /* cost only (kernels/cost.h): the training steps
                              run every allocation, transfer, collective and
                              schedule, their kernels charge the modeled
                              clock and compute nothing; no evaluation, no
                              non-finite guard, losses 0. Modeled times and
                              memory peaks are a real run's (the planner's
                              prediction, README "Planner"); the weights
                              stay the initial ones */
    const char *trace_path; /* Chrome trace of the recorded steps, or NULL */
    int trace_wall;        /* trace in wall time instead of modeled time */
    long trace_first;      /* first recorded step of this run (1-based; 0: 1) */
    long trace_steps;      /* steps recorded (0: 1); the timeline and the
                              traffic table come from the first of them */
    int fail_device;       /* test hook: this device fails ... */
    long fail_step;        /* ... at this step (1-based); 0: never */
    const atomic_int *stop_request; /* non-zero (set by a signal handler)
                              stops every device after the step in flight,
                              the same step for all; NULL: never */
    void *ctx;             /* passed to the callbacks */
    void (*on_step)(void *ctx, const tm_step_info *info);
    void (*on_epoch)(void *ctx, const tm_epoch_info *info);
    void (*on_eval)(void *ctx, const tm_eval_info *info);
    /* Where the run starts, once, on the calling thread, before any step. */
    void (*on_start)(void *ctx, const tm_start_info *info);
} tm_train_config;

/* Mesh dimensions, for traffic. */
enum { TM_DIM_DP, TM_DIM_PP, TM_DIM_TP, TM_DIMS };

/* What one device did, for the per-device tables. */
typedef struct {
    int id, d, p, t;       /* device and mesh coordinates */
    int process;           /* the process that ran it (runtime/process.h) */
    tm_arena_stats memory; /* peaks by tag */
    double flops;          /* kernel FLOPs in training steps */
    int max_in_flight;     /* most micro-batches held at once by the pipeline
                              (chunk passes with virtual stages) */
    size_t activation_peak; /* activation bytes at most, during training steps */
    size_t acts_per_mb;    /* what the stage stores for one micro-batch in
                              flight, by the layers' formulas (README) */
    size_t activation_formula; /* activation_peak as worked out before the
                              run (tm_train_predict_activations) */
    uint64_t sent_bytes;   /* payload bytes this device sent over links */
    /* Modeled time of the training steps, split as in tm_clock_stats:
     * modeled_s = compute_s + comm_s + idle_s; comm_busy_s is the
     * communication and copy engines' sending time, overlapped or not. */
    double modeled_s, compute_s, comm_s, idle_s, comm_busy_s;
    /* Payload bytes sent in the first recorded step, per mesh dimension,
     * against the formula's figure, worked out from the plan before the run
     * (strategies/report.h prints both; the formulas are in README,
     * "Modeled time, traces and timelines"). */
    uint64_t step_sent[TM_DIMS];
    double step_analytic[TM_DIMS];
    double step_allreduce; /* what plain data parallelism's bucket all-reduces
                              would send in the step: ZeRO's yardstick */
    /* Memory by the formulas (README, "ZeRO"), from the plan before the
     * run: psi, the parameters of the device's shard of the model (its
     * stage, its tp rank); state_formula, the bytes of parameters,
     * gradients and optimizer state by the paper's formula for the run's
     * ZeRO stage (plain data parallelism: (8 + 4k) psi for k optimizer
     * state buffers); peak_formula, that plus the activations the pipeline
     * holds at its peak, ZeRO's layer in flight (comm_formula) and the bf16
     * copy of the parameters (bf16_formula: 2 psi in bf16 runs but under
     * ZeRO-3, else 0; with offload the masters leave state_formula, and
     * bf16_formula adds the layer in flight expanded from the copy, or
     * under ZeRO-3 is the copy of the replica's chunks, 2 psi / dp). */
    size_t psi;
    double state_formula, comm_formula, peak_formula, bf16_formula;
    /* Optimizer offload: the host arena's accounts (peaks under the host
     * tag; none of it in memory), its formula (the optimizer state's bytes
     * and in bf16 the fp32 masters', which state_formula then leaves out),
     * and the host link in the first recorded step: bytes measured against
     * the formula (4 per gradient out, 4 per parameter back or 2 in bf16,
     * for each parameter the device updates) and their modeled seconds. */
    tm_arena_stats host_memory;
    double host_formula;
    uint64_t step_host;
    double step_host_analytic, step_host_s;
    /* The first recorded step in modeled time: its pipeline's start (after
     * zeroing the gradients) and its end (after the optimizer). */
    double rec_start, rec_end;
    size_t rec_ev0, rec_ev1;   /* its events: [rec_ev0, rec_ev1) of tm_world_events */
    const tm_event *step_events; /* (n_step_events) those events, kept after the
                                    run (inside tm_train_result.step_events) */
    size_t n_step_events;
    /* Pipeline bubble accounting, summed over the steps: forward/backward
     * compute time; the start of the pipeline part (on stage 0 only: its
     * first micro-batch's copy from the host, then its first forward); the
     * end of this device's pipeline part (its last F, B or W, or a message
     * some later pass waits for). A replica's span is pp x (its stages'
     * latest end - its stage 0's start), to the last F, B or W of any stage
     * (the sum of each step's latest end is the latest stage's sum, as the
     * same stage ends last in every step); bubble = 1 - sum(busy) /
     * sum(span) (tm__train_bubble). */
    double bubble_busy_s, bubble_start_s, bubble_end_s;
} tm_device_report;

typedef struct {
    int ran;               /* the devices started: an error after this is the
                              run's, not its configuration's or inputs' */
    int stopped;           /* ended early at cfg->stop_request: the state
                              (and checkpoint) is its last step's, with no
                              final evaluation (test_acc, test_loss 0) */
    int stop_request;      /* the request's value that stopped the run (a
                              signal number), whichever process saw it
                              first; 0 if none did */
    int stop_process;      /* that process (runtime/process.h), -1 none */
    long steps;            /* optimizer steps taken in this run */
    double samples_per_s;  /* this run, training time only */
    double test_acc;       /* after the run */
    double test_loss;
    float *params;         /* keep_params: the final weights, full layout
                              (across processes: in the reporting
                              device's process only, else NULL) */
    double train_seconds;
    double gflops;         /* GEMM and elementwise FLOPs / training time */
    tm_arena_stats memory; /* device 0's arena, peaks included */
    double modeled_seconds;        /* training steps, slowest device */
    double modeled_samples_per_s;
    double bubble;                 /* pp > 1: measured bubble fraction; else -1 */
    int n_devices;
    tm_device_report *devices; /* (n_devices), freed by tm_train_result_free */
    tm_link_stats *links;      /* (n_links) every link the run used, whole run */
    int n_links;
    int recorded;              /* the run reached its first recorded step (else
                                  the timeline and step traffic are empty) */
    /* The first recorded step's forward and backward passes on replica 0,
     * tp rank 0, in modeled seconds from the start of stage 0's pipeline
     * part (before its first micro-batch's copy from the host); makespan to
     * the last F, B or W of any stage (tm_schedule_draw draws them). */
    tm_sched_event *timeline;
    int n_timeline;
    double timeline_makespan;
    tm_event *step_events;     /* every device's events of the first recorded
                                  step, device after device (for pictures of
                                  every device's step) */
} tm_train_result;

void tm_train_result_free(tm_train_result *r);

/* Checks a configuration before anything starts; returns TM_OK or TM_EINVAL
 * with a one-line message naming the constraint (batch divisibility, mesh
 * versus layers and widths, schedule, stages). */
int tm_train_check(const tm_train_config *cfg, const tm_data *train);

/* The reporting device: replica 0's last stage, tp rank 0. It reports the
 * run (progress, results) and, across processes, its process writes the
 * outputs. */
int tm_train_reporter(const tm_train_config *cfg);

/* The activation peak each device will reach in the training steps,
 * worked out from the configuration without running anything (a planner's
 * input): bytes[p * tp + t] for stage p's tensor-parallel rank t, the same
 * on every replica — the schedule's micro-batches in flight as the layers'
 * formulas and the model's tm_recompute size them, the transient buffers
 * of a forward and a backward, the last stage's targets
 * (strategies/pipeline.h). TM_OK, TM_EINVAL as tm_train_check (cfg on
 * train), TM_EHOSTMEM. */
int tm_train_predict_activations(const tm_train_config *cfg, const tm_data *train,
                                 size_t *bytes);

/* One device's peak bytes in the training steps, predicted from the
 * configuration before anything runs (a planner's input). */
typedef struct {
    size_t tag[TM_TAG_COUNT]; /* each tag's peak as the arena counts it:
                                 param, grad, optimizer (whole, or ZeRO's
                                 chunks), activation
                                 (tm_train_predict_activations), comm
                                 (ZeRO's layer in flight; not the
                                 collectives' small-message copy, at most
                                 16 KiB per group), workspace (sequence
                                 parallelism's partial LayerNorm sums),
                                 host (offload: the host arena's) */
    size_t peak;              /* the device arena's: the sum of its tags,
                                 its peak when every tag's peak falls in
                                 one moment (the last micro-batch's
                                 backward) */
} tm_memory_prediction;

/* out[p * tp + t] for stage p's tensor-parallel rank t, the same on every
 * replica (ZeRO: the one whose chunks hold the most). TM_OK, TM_EINVAL as
 * tm_train_check, TM_EHOSTMEM. */
int tm_train_predict_memory(const tm_train_config *cfg, const tm_data *train,
                            tm_memory_prediction *out);

/* Trains on `train` on dp * pp * tp emulated devices, evaluating on `test`
 * after every epoch and at the end. Every mesh computes what one device
 * would (same initialisation, data order and global batch).
 * Returns TM_OK, or an error with its message in *error (the world's, e.g.
 * the OOM report): TM_ENOMEM when the model does not fit (found before the
 * first step), TM_EFORMAT / TM_EIO for checkpoints, TM_EINVAL for a
 * checkpoint that does not match the model, TM_ENONFINITE when the loss or
 * a gradient became NaN or infinite (every device stops after the same
 * step; no checkpoint is written; on_step saw every step up to the failing
 * one). */
int tm_train(const tm_train_config *cfg, const tm_data *train, const tm_data *test,
             tm_train_result *out, char *error, size_t error_size);

/* The learning rate at 0-based step s of a run of total steps: linear
 * warm-up, then cosine decay from lr to min_lr at lr_decay_steps (or
 * total), min_lr after it. */
double tm_lr_at(const tm_train_config *cfg, long s, long total);

#endif
