/* The model as one device would hold it, in host memory — parameters and
 * optimizer state in the full flat layout of strategies/model.h — and its
 * checkpoints in safetensors format: every tensor under its table name
 * (PyTorch's state_dict keys: layers.N.weight for the MLP, nanoGPT's
 * transformer.* for the GPT; a tied tensor once), optimizer state as
 * optimizer.<name>.<state>, the model's identity, the data's and the
 * training position in __metadata__, written atomically. Every mesh saves
 * and loads this same file: devices copy their shards to and from it.
 * Thread-safety: plain data; one writer at a time. */
#ifndef TM_CHECKPOINT_H
#define TM_CHECKPOINT_H

#include <stdint.h>

#include "runtime/outfile.h"
#include "strategies/model.h"
#include "strategies/optimizer.h"

typedef struct {
    long step;          /* optimizer steps taken */
    int epoch;          /* epoch the next step belongs to */
    long epoch_step;    /* steps already taken in that epoch */
    uint64_t data_seed; /* seed of the data order, kept across a resume */
} tm_train_position;

#define TM_DATA_META 3 /* entries describing the training data at most */

typedef struct {
    const tm_model *model;
    tm_optimizer opt;
    size_t n_params;
    float *params;                      /* (n_params) host memory */
    float *opt_state[TM_OPT_MAX_STATE]; /* SGD momentum_buffer; AdamW exp_avg, exp_avg_sq */
    int n_opt_state;
    tm_train_position pos;
    tm_model_meta data[TM_DATA_META];   /* the corpus (text), for the resume check */
    int n_data;
} tm_model_state;

/* Allocates (zeroed) host buffers for the model and the optimizer's state.
 * TM_OK or TM_EHOSTMEM. */
int tm_model_state_init(tm_model_state *m, const tm_model *model, const tm_optim_config *opt);
void tm_model_state_free(tm_model_state *m);

/* Writes everything into out, which the caller commits. TM_OK, TM_EIO. */
int tm_checkpoint_save(tm_outfile *out, const tm_model_state *m);

typedef enum {
    TM_LOAD_RESUME,  /* parameters, and optimizer state and position when present */
    TM_LOAD_WEIGHTS, /* parameters only: a new run starts from them */
} tm_load_mode;

/* Reads the model's tensors (checking names and shapes) and, resuming,
 * the optimizer state and position when the file has them (*resumed = 1);
 * a file with only model tensors loads as weights (*resumed = 0). Refuses,
 * naming both values, a file whose model description (our metadata) or
 * optimizer differs, or — resuming a position — whose data does (m->data).
 * TM_OK, TM_EIO, TM_EFORMAT, or TM_EINVAL for a mismatch. */
int tm_checkpoint_load(const char *path, tm_model_state *m, tm_load_mode mode, int *resumed);

#endif
