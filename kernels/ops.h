/* Neural-network layers on one device, forward and backward, in llm.c style.
 * Thread-safe: calls touch only their arguments and the thread's cost hook. */
#ifndef TM_OPS_H
#define TM_OPS_H

#include <stddef.h>

#include "kernels/bf16.h"

/* Conventions.
 * Shapes: B = rows (the batch), IN / OUT = input / output features,
 * C = channels or classes, n = elements of a flat buffer. Matrices are dense
 * and row-major. Outputs come first, then inputs, then sizes.
 * Backward functions ADD into their d-buffers (a gradient that reaches a
 * tensor along two paths simply accumulates); one zero-grad per step clears
 * them. Two exceptions say so: tm_relu_backward_inplace rewrites a gradient
 * in place, and the softmax cross-entropy starts the backward pass and so
 * overwrites dlogits.
 * Buffers given to one call must not overlap unless a function says so.
 * No function allocates, and the elementwise loops vectorise (except GELU's
 * and the softmax's, which call tanhf and expf).
 * Cost: each call reports its FLOPs and bytes once through tm__cost_charge
 * (kernels/cost.h). Arithmetic counts one FLOP per operation, a comparison
 * one, and a transcendental (exp, log, tanh, sqrt) one; bytes are each
 * buffer's reads plus writes, counted once. GEMMs charge themselves inside
 * tm_sgemm; the linear layers add only their bias and activation work.
 * Size arguments are the caller's contract (non-negative, matching the
 * buffers); violating it is a bug, not an input error. */

/* The GEMM every op below runs (tm_sgemm's arguments), for kinds that
 * multiply on their own too: tm_sgemm, or, while the calling thread's bf16
 * mixed precision is on, tm_gemm_bf16 (both operands rounded to bf16 to
 * nearest even, fp32 accumulation) reading an operand that lies inside the
 * registered fp32 master weights from the same element of their bf16 copy. */
void tm_ops_gemm(char transa, char transb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* Sets the calling thread's precision for tm_ops_gemm: on 0 is fp32 (the
 * default, tm_sgemm bit for bit); master (n floats) and copy (n bf16, its
 * rounding) register the weights whose copy feeds the GEMMs (NULL: none). */
void tm_ops_set_bf16(int on, const float *master, const tm_bf16 *copy, size_t n);
/* Adds to the calling thread's registered weights an fp32 view (n floats,
 * the expansion of copy, n bf16) whose GEMM operands are read from copy:
 * 0, or -1 when TM_OPS_BF16_VIEWS views are registered already.
 * tm_ops_set_bf16 and tm_ops_unmap_bf16 drop every view. */
#define TM_OPS_BF16_VIEWS 16
int tm_ops_map_bf16(const float *view, const tm_bf16 *copy, size_t n);
void tm_ops_unmap_bf16(void);

/* Linear layer with PyTorch's nn.Linear layout: out = inp · weightᵀ + bias.
 * bias may be NULL (no bias). */
void tm_linear_forward(float *out,          /* (B, OUT) */
                       const float *inp,    /* (B, IN) */
                       const float *weight, /* (OUT, IN) */
                       const float *bias,   /* (OUT) or NULL */
                       int B, int IN, int OUT);

/* The same followed by ReLU, out = max(0, inp · weightᵀ + bias). Only the
 * activated output is kept: tm_relu_backward* need nothing else. */
void tm_linear_relu_forward(float *out,          /* (B, OUT) */
                            const float *inp,    /* (B, IN) */
                            const float *weight, /* (OUT, IN) */
                            const float *bias,   /* (OUT) or NULL */
                            int B, int IN, int OUT);

/* dinp += dout · weight, dweight += doutᵀ · inp, dbias += column sums of
 * dout. Any of the three d-buffers may be NULL to skip it (the first layer
 * needs no dinp; a layer without bias has no dbias). */
void tm_linear_backward(float *dinp,         /* (B, IN) or NULL */
                        float *dweight,      /* (OUT, IN) or NULL */
                        float *dbias,        /* (OUT) or NULL */
                        const float *dout,   /* (B, OUT) */
                        const float *inp,    /* (B, IN) */
                        const float *weight, /* (OUT, IN) */
                        int B, int IN, int OUT);

/* In place: out[b, c] += bias[c] (the bias added after a row-parallel
 * linear's all-reduce). Its input gradient is dout itself; only the bias has
 * a backward: dbias += column sums of dout. */
void tm_bias_add_forward(float *out,        /* (B, C), in place */
                         const float *bias, /* (C) */
                         int B, int C);
void tm_bias_add_backward(float *dbias,      /* (C) */
                          const float *dout, /* (B, C) */
                          int B, int C);

/* out = max(0, inp). */
void tm_relu_forward(float *out, const float *inp, size_t n);
/* dinp += dout where out > 0 (the forward output is enough: out > 0 exactly
 * where inp > 0). The gradient at 0 is 0, as in PyTorch. */
void tm_relu_backward(float *dinp, const float *dout, const float *out,
                      size_t n);
/* The same fused into the gradient buffer: d = (out > 0) ? d : 0, turning
 * the gradient of the activation into the gradient of its input without a
 * second buffer or a zero-grad. */
void tm_relu_backward_inplace(float *d, const float *out, size_t n);

/* GELU, tanh approximation (PyTorch's approximate='tanh'):
 * out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³))). */
void tm_gelu_forward(float *out, const float *inp, size_t n);
/* dinp += dout · GELU'(inp). */
void tm_gelu_backward(float *dinp, const float *dout, const float *inp,
                      size_t n);
/* The same in place: d (the gradient of GELU's output) becomes the
 * gradient of its input, d = d · GELU'(inp), with no second buffer. */
void tm_gelu_backward_inplace(float *d, const float *inp, size_t n);
/* A linear layer's bias and GELU in one pass: pre[b, c] += bias[c] (kept:
 * the backward needs it), out = GELU(pre). */
void tm_bias_gelu_forward(float *out,        /* (B, C) */
                          float *pre,        /* (B, C), in place */
                          const float *bias, /* (C) */
                          int B, int C);

/* out = inp1 + inp2; backward adds dout into both dinp1 and dinp2. */
void tm_residual_forward(float *out, const float *inp1, const float *inp2,
                         size_t n);
void tm_residual_backward(float *dinp1, float *dinp2, const float *dout,
                          size_t n);

/* LayerNorm over the last dimension, as nn.LayerNorm(C, eps): biased
 * variance, out = (inp - mean) · rstd · weight + bias with
 * rstd = 1 / sqrt(var + eps). mean and rstd are saved for the backward;
 * either may be NULL when no backward will follow. */
void tm_layernorm_forward(float *out,          /* (B, C) */
                          float *mean,         /* (B) or NULL */
                          float *rstd,         /* (B) or NULL */
                          const float *inp,    /* (B, C) */
                          const float *weight, /* (C) */
                          const float *bias,   /* (C) */
                          int B, int C, float eps);
/* Adds into dinp, dweight and dbias (none may be NULL). */
void tm_layernorm_backward(float *dinp,         /* (B, C) */
                           float *dweight,      /* (C) */
                           float *dbias,        /* (C) */
                           const float *dout,   /* (B, C) */
                           const float *inp,    /* (B, C) */
                           const float *weight, /* (C) */
                           const float *mean,   /* (B) */
                           const float *rstd,   /* (B) */
                           int B, int C);

/* Fused softmax + cross-entropy with integer labels, numerically stable
 * (log-sum-exp after subtracting the row maximum, so logits of ±1e4 give a
 * finite loss and gradient). Returns the mean of the B row losses (0 when
 * B == 0); losses, if not NULL, receives each row's loss.
 * dlogits, if not NULL, is OVERWRITTEN with (softmax - onehot) · grad_scale.
 * grad_scale is the caller's choice of mean: 1/B makes dlogits the gradient
 * of the returned mean; with gradient accumulation or data parallelism the
 * loss is a mean over the global batch, so pass 1/global_batch and the
 * micro-batch gradients sum to the right thing.
 * labels must lie in [0, C): the data loader validates them, and an
 * out-of-range label here is a bug (it asserts). */
float tm_softmax_xent_forward_backward(float *dlogits,      /* (B, C) or NULL */
                                       float *losses,       /* (B) or NULL */
                                       const float *logits, /* (B, C) */
                                       const int *labels,   /* (B) */
                                       int B, int C, float grad_scale);

/* How many rows have argmax(logits) == label, ties going to the lowest index
 * as torch.argmax does. A row containing NaN yields some index in [0, C). */
int tm_accuracy(const float *logits, /* (B, C) */
                const int *labels,   /* (B) */
                int B, int C);

/* The vocabulary-parallel cross-entropy (Megatron's
 * vocab_parallel_cross_entropy): a rank holds n of the classes, columns
 * [v0, v0 + n) of the whole, in rows of ld floats (columns n..ld-1 are
 * padding: never read, their gradient written 0). The caller combines the
 * ranks' row maxima (the largest), then their sums and target logits (by
 * addition); the loss of a row is log(sum) - target. */

/* max[b]: the largest of the row's n logits (-inf when n is 0); arg, if
 * not NULL, its column (the first of equal maxima), -1 when n is 0. */
void tm_xent_shard_max(float *max, int *arg, const float *logits, int B, int n, int ld);
/* With the rows' global maxima: sum[b] = sum of exp(x - max[b]) over the
 * held columns, and target[b] = x[label] - max[b] when this rank holds the
 * label, else 0. d, if not NULL, receives each exp(x - max) (its padding
 * columns 0) for tm_xent_shard_backward. */
void tm_xent_shard_forward(float *d, float *sum, float *target, const float *logits,
                           const float *max, const int *labels, int B, int n, int ld, int v0);
/* With the rows' global sums: d = (d / sum - onehot) * grad_scale over the
 * held columns. */
void tm_xent_shard_backward(float *d, const float *sum, const int *labels, int B, int n, int ld,
                            int v0, float grad_scale);

/* ---- transformer layers (llm.c's names: B sequences of T positions,
 * C channels, NH heads of hs = C / NH channels, V vocabulary rows) ---- */

/* Token plus position embedding: out[b, t] = wte[tokens[b, t] - v0] +
 * wpe[t] for a token in [v0, v0 + V) — the rows this caller holds (the
 * whole vocabulary: v0 = 0) — and wpe[t] alone for any other (a
 * vocabulary-parallel rank's share). wpe may be NULL (no positions). */
void tm_embedding_forward(float *out,        /* (B*T, C) */
                          const int *tokens, /* (B*T) */
                          const float *wte,  /* (V, C) */
                          const float *wpe,  /* (T, C) or NULL */
                          int BT, int T, int C, int v0, int V);
/* dwte[tokens - v0] += dout for the rows held, dwpe[t] += dout (dwpe may be
 * NULL). Rows are added in order, so repeated tokens sum deterministically. */
void tm_embedding_backward(float *dwte,       /* (V, C) */
                           float *dwpe,       /* (T, C) or NULL */
                           const float *dout, /* (B*T, C) */
                           const int *tokens, /* (B*T) */
                           int BT, int T, int C, int v0, int V);

/* Causal self-attention. qkv holds each position's q, k and v side by
 * side, (B, T, 3C): q in channels [0, C), k in [C, 2C), v in [2C, 3C),
 * head h in channels [h hs, (h + 1) hs) of each. att receives the softmax
 * weights softmax(q kᵀ / sqrt(hs)) over the positions up to each row's own
 * (zeros after it); out = att v per head, heads side by side. */
void tm_attention_forward(float *out,       /* (B, T, C) */
                          float *att,       /* (B, NH, T, T) */
                          const float *qkv, /* (B, T, 3C) */
                          int B, int T, int C, int NH);
/* The same output without keeping the weights (selective recomputation):
 * each head's T x T weights go to scratch, which the next head reuses. */
void tm_attention_forward_drop(float *out,       /* (B, T, C) */
                               float *scratch,   /* (T, T) */
                               const float *qkv, /* (B, T, 3C) */
                               int B, int T, int C, int NH);
/* dqkv receives the gradients of q, k and v: OVERWRITTEN, unlike the
 * other backwards (every element is written once, so the caller need not
 * clear it). scratch holds one head's score gradients. */
void tm_attention_backward(float *dqkv,       /* (B, T, 3C) */
                           float *scratch,    /* (T, T) */
                           const float *dout, /* (B, T, C) */
                           const float *qkv,  /* (B, T, 3C) */
                           const float *att,  /* (B, NH, T, T) */
                           int B, int T, int C, int NH);
/* tm_attention_backward without the forward's weights: each head's are
 * recomputed from q and k into scratch's second T x T (the same kernels on
 * the same operands, so the same bits), then used as above; charges the
 * recomputed scores and softmax too. */
void tm_attention_backward_recompute(float *dqkv,       /* (B, T, 3C) */
                                     float *scratch,    /* (2, T, T) */
                                     const float *dout, /* (B, T, C) */
                                     const float *qkv,  /* (B, T, 3C) */
                                     int B, int T, int C, int NH);

/* In place: out[b, c] += bias[c] + res[b, c] (a projection's bias and the
 * residual stream it joins; bias may be NULL). */
void tm_bias_residual_forward(float *out,       /* (B, C), in place */
                              const float *res,  /* (B, C) */
                              const float *bias, /* (C) or NULL */
                              int B, int C);
/* d += dout elementwise (a gradient reaching a tensor along two paths). */
void tm_add_inplace(float *d, const float *dout, size_t n);

#endif
