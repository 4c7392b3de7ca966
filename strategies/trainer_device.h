/* Between trainer.c, which runs the steps, and trainer_setup.c, which
 * builds a device's state before them and stores and frees it after: the
 * run's job and one device's state. */
#ifndef TM_TRAINER_DEVICE_H
#define TM_TRAINER_DEVICE_H

#include "runtime/collectives.h"
#include "runtime/stop.h"
#include "strategies/offload.h"
#include "strategies/trainer.h"
#include "strategies/trainer_internal.h"
#include "strategies/zero.h"

/* What the host prepares for every device: read-only during the run,
 * except each device's own report slot and the shard copies at the end. */
typedef struct {
    const tm_train_config *cfg;
    const tm_data *train, *test;
    tm_model_state *state;   /* initial weights in, final weights out */
    int resumed;             /* state holds optimizer state and position */
    int first[TM_MAX_LAYERS + 1]; /* model stage g holds layers first[g] ..
                                     first[g+1]-1 (device g % pp's chunk g / pp) */
    tm_schedule sched;
    tm_train_result *result;
    tm_stop *stop;           /* where every device stops early (runtime/stop.h) */
    int gather;              /* across processes, with the state kept:
                                replica 0's devices send it to the
                                reporting device's process over the links */
} job;

/* A tensor that several stages hold: the group of this device's twins
 * (same d and t) on those stages — Megatron's embedding group — which sums
 * its gradient every step so that the copies stay bitwise equal, and the
 * shard in this stage's buffers (under ZeRO, this replica's chunk of it). */
typedef struct {
    tm_comm *comm;
    int chunk;         /* the device's chunk that holds it */
    size_t off, count;
} tied;

#define MAX_CHUNKS TM_SCHEDULE_MAX_VIRTUAL

/* A device's whole run state. Chunk c (of n_chunks, the run's virtual
 * stages; 1 without) is model stage c * pp + p with its own parameters,
 * gradients, optimizer state (or ZeRO's shards) and buckets. */
typedef struct {
    job *j;
    tm_device *dev;
    tm_mesh mesh;
    int n_chunks;
    tm_stage *stage;   /* (n_chunks) */
    tm_zero *zero[MAX_CHUNKS]; /* --zero 1 to 3: each chunk's shards; else NULL */
    tm_offload *offload; /* --offload optimizer: the host arena, every
                            chunk's state in turn; else NULL */
    size_t n_update[MAX_CHUNKS]; /* floats the optimizer updates per chunk
                                    (its shard) */
    size_t n_updated;  /* their sum */
    int *order;        /* epoch order (host memory), stage 0 and last stage */
    int *targets;      /* device buffer for the loss's targets */
    int is_first, is_last, reporter; /* holds model stage 0, the last */
    tied tied[TM__TRAIN_MAX_TIED];
    int n_tied;
    /* This epoch's modeled training time and bubble accounts. */
    double ep_modeled, ep_busy, ep_start, ep_end;
    double last_step;  /* the last step's modeled time */
} device;

/* The device's mesh, chunks (with ZeRO's shards, offload's host arena and
 * bf16 copies), weights from the job's state, loss targets, data order,
 * tied groups; the memory probe (a model that does not fit fails here,
 * with the arena's report) and the report's formulas. Sets the kernels'
 * cost hook (and dry switch) of the calling thread. */
int tm__train_setup(device *v);
/* Every chunk's shards back into the job's model state (replica 0 writes,
 * under ZeRO after gathering the others'). */
int tm__train_store(device *v);
/* Frees what tm__train_setup made, whatever it got to, and fills the
 * report's memory accounts (arena, host arena). */
void tm__train_teardown(device *v);

/* Chunk c's gradients the step zeroes, clips and checks: ZeRO's shard, or
 * the chunk's whole buffer; *n their floats. */
float *tm__train_step_grads(const device *v, int c, size_t *n);
/* A tied tensor's gradient as its embedding group sums it. */
float *tm__train_tied_grads(const device *v, const tied *t, size_t *count);

#endif
