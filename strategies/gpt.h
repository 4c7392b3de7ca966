/* The GPT as a model (strategies/model.h): nanoGPT's architecture with
 * bias=True and dropout 0 over the 256 byte values — token and position
 * embeddings, L pre-LayerNorm blocks of causal self-attention and a GELU
 * MLP, a final LayerNorm and an LM head tied to the token embedding — with
 * nanoGPT's tensor names, so checkpoints load into that model.
 * Layers: the embedding (attached to the first block's stage), one per
 * block, the head (ln_f and the logits, attached to the last block's).
 * Thread-safety: pure functions of their arguments. */
#ifndef TM_GPT_H
#define TM_GPT_H

#include <stdint.h>

#include "strategies/model.h"

#define TM_GPT_VOCAB 256
#define TM_GPT_MAX_LAYERS (TM_MAX_LAYERS - 2)
#define TM_GPT_MAX_WIDTH 16384 /* d_model and context at most */

typedef struct {
    int n_layer; /* L blocks */
    int n_head;  /* H heads per block */
    int n_embd;  /* C channels (d_model), a multiple of H */
    int block_size; /* T positions (the context) */
    int sequence_parallel; /* split the sequence between the tensor-parallel
                              regions over the tp group (a way to run it,
                              not part of the model: never saved) */
} tm_gpt_config;

/* NULL when cfg is a valid GPT, else a one-line reason naming the flag. */
const char *tm_gpt_check(const tm_gpt_config *cfg);

/* The model's tables (tm_model_destroy frees them). TM_EINVAL (with
 * tm_gpt_check's reason), TM_EHOSTMEM. */
int tm_gpt_model(tm_model *m, const tm_gpt_config *cfg);

/* The GPT configuration of a built model, or NULL for another family. */
const tm_gpt_config *tm_gpt_of(const tm_model *m);

/* The configuration of the GPT a checkpoint holds: from our metadata, or
 * (a file from nanoGPT) from its tensors' shapes — wte (256, C), wpe (T,
 * C), L blocks — with the head count from heads, which shapes cannot tell
 * (0: not given). TM_EINVAL when heads is needed and missing or differs
 * from the metadata's, or the file is not a byte-level GPT; TM_EIO,
 * TM_EFORMAT from reading it. */
int tm_gpt_config_from_file(const char *path, int heads, tm_gpt_config *out);

/* nanoGPT's initialisation into the full flat buffer: every Linear and
 * Embedding weight ~ N(0, 0.02), the blocks' attn.c_proj and mlp.c_proj
 * weights ~ N(0, 0.02 / sqrt(2 L)), biases 0, LayerNorm weights 1 and
 * biases 0; tensor i from PCG32 stream i of seed (Box-Muller normals). */
void tm_gpt_init(const tm_model *m, float *params, uint64_t seed);

#endif
