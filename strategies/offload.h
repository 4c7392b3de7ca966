/* Optimizer offload (ZeRO-Offload's split, Ren et al. 2021): a device keeps
 * its optimizer state in a host-memory arena of its own (tag host, capped by
 * --host-mem-cap, never counted against the device's cap), and in bf16 runs
 * the fp32 master weights too; every step its gradients go to the host and
 * the updated parameters come back across the device's host link (in bf16
 * runs rounded to bf16 by the host, 2 bytes a parameter), and the optimizer
 * runs on the device's thread on the host's buffers. Under ZeRO each
 * replica offloads its shard.
 * Thread-safety: a tm_offload belongs to its device's thread. */
#ifndef TM_OFFLOAD_H
#define TM_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/arena.h"
#include "runtime/world.h"
#include "strategies/optimizer.h"

typedef enum { TM_OFFLOAD_NONE, TM_OFFLOAD_OPTIMIZER } tm_offload_kind;

/* "none" / "optimizer": 0, or -1 for anything else. */
int tm_offload_parse(const char *name, tm_offload_kind *out);
const char *tm_offload_name(tm_offload_kind kind);

/* Whether a device's buffers of this tag live in its host arena under
 * `kind` (bf16: a bf16 mixed-precision run): the one place that decides
 * what moves to the host — the optimizer state, and in bf16 runs the fp32
 * master weights (tag param). */
int tm_offload_on_host(tm_offload_kind kind, int bf16, tm_tag tag);

typedef struct tm_offload tm_offload;

/* Device dev's host arena of cap bytes with n_state optimizer state buffers
 * of n floats each in it (tag host, zeroed), then, when masters is set, the
 * fp32 master weights (n floats, tag host). TM_OK; TM_EINVAL naming
 * --host-mem-cap when they do not fit; TM_EHOSTMEM. */
int tm_offload_create(tm_offload **out, tm_device *dev, size_t cap, int n_state, size_t n,
                      int masters);
/* NULL is a no-op. */
void tm_offload_destroy(tm_offload *o);
/* The state buffers: state[i] for i < n_state, NULL past it. */
void tm_offload_state(const tm_offload *o, float **state);
/* The fp32 master weights (n floats), or NULL when not created with them. */
float *tm_offload_masters(const tm_offload *o);

/* The host link, charged like a micro-batch's copy from the host (bytes /
 * link bandwidth, the device waiting for it): n fp32 gradients to the host,
 * and n updated parameters back, in fp32 or, with the masters on the host,
 * their bf16 rounding (2 bytes each). */
void tm_offload_grads_out(tm_offload *o, size_t n);
void tm_offload_params_back(tm_offload *o, size_t n);
/* Bytes moved across the host link so far (both ways), and the modeled
 * seconds the device spent on them. */
uint64_t tm_offload_bytes(const tm_offload *o);
double tm_offload_seconds(const tm_offload *o);

/* The host arena's accounts (peaks under the host tag). */
void tm_offload_stats(const tm_offload *o, tm_arena_stats *out);
void tm_offload_reset_peak(tm_offload *o);

#endif
