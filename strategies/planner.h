/* The planner: every way to run one model on N devices (dp x tp x pp,
 * micro-batches, schedule and its virtual stages, sequence parallelism,
 * recomputation, ZeRO stage, precision, optimizer offload), each candidate's peak memory per
 * device from the model's tables (tm_train_predict_memory) and, for those
 * that fit, its modeled step time from a dry run (tm_train_config.dry_run:
 * every kernel charges the modeled clock and computes nothing, so the
 * time is the real run's, bitwise), ranked by modeled throughput.
 * Thread-safety: one call at a time (each dry run is a world of its own). */
#ifndef TM_PLANNER_H
#define TM_PLANNER_H

#include <stddef.h>

#include "strategies/data.h"
#include "strategies/model.h"
#include "strategies/trainer.h"

/* One way to run the model. */
typedef struct {
    int dp, pp, tp, micro_batches, zero, sp;
    tm_schedule_kind schedule;
    tm_recompute recompute;
    tm_precision precision;
    tm_offload_kind offload;
    int virtual_stages;    /* interleaved-1f1b: chunks per device (0 or 1:
                              one) */
} tm_plan_point;

typedef struct {
    tm_plan_point pt;
    int order;             /* place in the enumeration: the tie-break */
    int fits;              /* predicted peak within the device cap (and the
                              host arena within its cap under offload), and
                              its dry run did not run out of memory */
    int dominated;         /* fits, but not dry-run: the same point without
                              recomputation and offload fits too, and is
                              never slower (each only adds work to a fixed
                              order of operations) */
    size_t peak;           /* predicted peak bytes of the fullest device */
    int oom;               /* the peak fit the cap but the dry run ran out of
                              memory: the collectives' small-message copies
                              (up to 16 KiB per group, which the prediction
                              leaves out) did not fit beside it */
    size_t need;           /* the least cap it may fit: peak, plus three
                              such copies after an oom */
    size_t host_peak;      /* offload: the fullest host arena's, else 0 */
    /* From the dry run (fitting, undominated candidates only; 0 and -1
     * otherwise): */
    double step_s;         /* modeled time of the steady step (TM_PLAN_STEP) */
    size_t dry_peak;       /* the fullest device's arena peak: peak plus
                              the collectives' small copies, to the byte */
    double bubble;         /* pp > 1: the bubble over the run's steps; else -1 */
    double sent[TM_DIMS];  /* payload bytes all devices sent in that step, by
                              mesh dimension */
    double host_bytes;     /* offload: bytes over the host links in it */
} tm_plan_candidate;

/* The step the planner and its verification measure: the second. The
 * first starts from the devices' set-up, not from a previous step's end,
 * so its start carries what set-up left behind. */
#define TM_PLAN_STEP 2

typedef struct {
    /* models[sp][recompute]: the model without (0) and with (1) sequence
     * parallelism (NULL when the model has none: the MLP), each with its
     * recomputation set (NULL: not searched; selective only for the GPT). */
    const tm_model *models[2][3];
    const tm_data *train;  /* TM_PLAN_STEP steps' worth of batches at least */
    int devices;
    int batch;
    size_t mem_cap;
    size_t host_mem_cap;   /* 0: offload not searched */
    int precisions;        /* bit 1 << TM_PRECISION_*: the precisions searched */
    const tm_train_config *recipe; /* optimizer, its hyper-parameters, the
                              clock, the seed: the rest of every candidate's
                              configuration */
    void (*progress)(void *ctx, int done, int total);
    void *ctx;
} tm_plan_request;

/* The variants the search runs of a model: m (and m_sp, the same model
 * with sequence parallelism, or NULL) with each recomputation (selective
 * for the GPT only), copied into variants and pointed to by req->models. */
void tm_plan_models(tm_plan_request *req, tm_model variants[2][3], const tm_model *m,
                    const tm_model *m_sp);

/* Every point of the space that tm_train_check accepts on req->devices
 * devices, in the enumeration's order (dp, tp, micro-batches, schedule,
 * virtual stages, sequence parallelism, recomputation, ZeRO, precision,
 * offload, each from its smallest), into a malloc'd array (*out, *n): the
 * space tm_plan_search ranks, for a sweep that runs it all. TM_OK, or
 * TM_EHOSTMEM with its message. */
int tm_plan_points(const tm_plan_request *req, tm_plan_point **out, int *n);

/* Every candidate that tm_train_check accepts, fitting or not, into a
 * malloc'd array (*out, *n): the dry-run ones first by throughput (highest
 * first), then the dominated ones, then those that do not fit, each group
 * by predicted peak (smallest first) after that. TM_OK (also with nothing
 * valid: *n = 0), or an error of a dry run or the host's memory with its
 * message. */
int tm_plan_search(const tm_plan_request *req, tm_plan_candidate **out, int *n);

/* The train config of a candidate: req->recipe with the point's settings
 * and model, for TM_PLAN_STEP steps. */
tm_train_config tm_plan_config(const tm_plan_request *req, const tm_plan_point *pt);

/* The build/train flags that run pt: the mesh ("--dp 1 --pp 2 --tp 4"),
 * then those of its settings that differ from build/train's defaults
 * ("--micro-batches 4 --schedule interleaved-1f1b --virtual-stages 2
 * --zero 1 ..."). */
void tm_plan_flags(const tm_plan_point *pt, char *buf, size_t n);

/* Whether the model has a valid configuration (memory aside) on
 * `devices` devices. */
int tm_plan_any_valid(const tm_plan_request *req, int devices);

#endif
