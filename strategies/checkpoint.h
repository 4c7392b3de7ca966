/* The model as one device would hold it, in host memory — parameters and
 * optimizer state in the single-device flat layout — and its checkpoints in
 * safetensors format: layers.N.weight [OUT, IN] and layers.N.bias [OUT] as
 * PyTorch names them, optimizer state under optimizer., the training
 * position in __metadata__, written atomically. Every mesh saves and loads
 * this same file: devices copy their shards to and from it.
 * Thread-safety: plain data; one writer at a time. */
#ifndef TM_CHECKPOINT_H
#define TM_CHECKPOINT_H

#include <stdint.h>

#include "runtime/outfile.h"
#include "strategies/stage.h"

typedef struct {
    long step;          /* optimizer steps taken */
    int epoch;          /* epoch the next step belongs to */
    long epoch_step;    /* steps already taken in that epoch */
    uint64_t data_seed; /* seed of the data order, kept across a resume */
} tm_train_position;

typedef struct {
    tm_mlp_config cfg;
    tm_optimizer opt;
    size_t n_params;
    float *params;       /* (n_params) host memory */
    float *opt_state[2]; /* SGD momentum_buffer; AdamW exp_avg, exp_avg_sq */
    int n_opt_state;
    tm_train_position pos;
} tm_model_state;

/* Allocates (zeroed) host buffers for cfg and the optimizer's state
 * (momentum buffer only when momentum != 0). TM_OK or TM_EHOSTMEM. */
int tm_model_state_init(tm_model_state *m, const tm_mlp_config *cfg, tm_optimizer opt,
                        double momentum);
void tm_model_state_free(tm_model_state *m);

/* Writes everything into out, which the caller commits. TM_OK, TM_EIO. */
int tm_checkpoint_save(tm_outfile *out, const tm_model_state *m);

/* Reads parameters (checking names and shapes against m's model) and, when
 * the file has them, the optimizer state and position (*resumed = 1); a
 * file with only layers.* tensors loads as weights (*resumed = 0).
 * TM_OK, TM_EIO, TM_EFORMAT, or TM_EINVAL for a mismatch. */
int tm_checkpoint_load(const char *path, tm_model_state *m, int *resumed);

#endif
