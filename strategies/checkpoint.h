/* Checkpoints in safetensors format: the model as PyTorch names it
 * (layers.N.weight [OUT, IN], layers.N.bias [OUT]), optimizer state under
 * optimizer., and the training position in __metadata__, written atomically.
 * Thread-safety: called by the device thread that owns the replica. */
#ifndef TM_CHECKPOINT_H
#define TM_CHECKPOINT_H

#include <stdint.h>

#include "strategies/replica.h"

typedef struct {
    long step;          /* optimizer steps taken */
    int epoch;          /* epoch the next step belongs to */
    long epoch_step;    /* steps already taken in that epoch */
    uint64_t data_seed; /* seed of the data order, kept across a resume */
} tm_train_position;

/* Writes parameters, optimizer state and position. TM_OK, TM_EIO. */
int tm_checkpoint_save(const char *path, const tm_replica *r, tm_optimizer opt,
                       const tm_train_position *pos);

/* Reads parameters (checking names and shapes against r's model) and, when
 * the file has them, the optimizer state and position (*resumed = 1);
 * a file with only layers.* tensors loads as weights (*resumed = 0).
 * TM_OK, TM_EIO, TM_EFORMAT, or TM_EINVAL for a mismatch. */
int tm_checkpoint_load(const char *path, tm_replica *r, tm_optimizer opt,
                       tm_train_position *pos, int *resumed);

#endif
