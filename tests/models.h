/* Test helpers shared by the suites: models (MLPs from a width list, GPTs
 * from their sizes) kept in a pool for the life of the test process
 * (tm_train reads the model for as long as the configuration lives), a
 * seeded uniform source, and an allocation that cannot fail silently. */
#ifndef TM_TEST_MODELS_H
#define TM_TEST_MODELS_H

#include <criterion/criterion.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/gpt.h"
#include "strategies/mlp.h"

#define TEST_MODELS 64

static tm_model test_model_pool[TEST_MODELS];
static int test_model_count;

/* The pool's entries, with what built them, so that a test process that
 * runs every test (the TSan stand-in) builds each model once. */
static char test_model_key[TEST_MODELS][160];

static inline tm_model *pooled(const char *key, int *fresh)
{
    for (int i = 0; i < test_model_count; i++)
        if (strcmp(test_model_key[i], key) == 0) {
            *fresh = 0;
            return &test_model_pool[i];
        }
    cr_assert_lt(test_model_count, TEST_MODELS, "test model pool exhausted");
    snprintf(test_model_key[test_model_count], sizeof test_model_key[0], "%s", key);
    *fresh = 1;
    return &test_model_pool[test_model_count++];
}

/* The MLP "784,256,10" style spec with activation act. */
static inline const tm_model *mlp_model(const char *spec, tm_activation act)
{
    char key[160];
    snprintf(key, sizeof key, "mlp %s %d", spec, (int)act);
    int fresh;
    tm_model *m = pooled(key, &fresh);
    if (!fresh) return m;
    tm_mlp_config c;
    const char *why = "";
    cr_assert_eq(tm_mlp_parse(spec, &c, &why), 0, "model %s: %s", spec, why);
    c.act = act;
    cr_assert_eq(tm_mlp_model(m, &c), TM_OK, "%s", tm_error_message());
    return m;
}

/* The GPT of L blocks, H heads, C channels and context T, run with
 * sequence parallelism when sp is set. */
static inline const tm_model *gpt_model_sp(int L, int H, int C, int T, int sp)
{
    char key[160];
    snprintf(key, sizeof key, "gpt %d %d %d %d %d", L, H, C, T, sp);
    int fresh;
    tm_model *m = pooled(key, &fresh);
    if (!fresh) return m;
    tm_gpt_config g = {L, H, C, T, sp};
    cr_assert_eq(tm_gpt_model(m, &g), TM_OK, "%s", tm_error_message());
    return m;
}

static inline const tm_model *gpt_model(int L, int H, int C, int T)
{
    return gpt_model_sp(L, H, C, T, 0);
}

/* m run with activation recomputation r: a copy of its tables sharing
 * m's configuration, kept in the pool like m. */
static inline const tm_model *recomputed(const tm_model *m, tm_recompute r)
{
    char key[160];
    snprintf(key, sizeof key, "recompute %p %d", (const void *)m, (int)r);
    int fresh;
    tm_model *c = pooled(key, &fresh);
    if (!fresh) return c;
    *c = *m;
    c->recompute = r;
    return c;
}

/* The suite's random stream; a suite may set the state to its own seed. */
static uint64_t test_rng_state = 0x5eed;

/* splitmix64 -> uniform in [-1, 1). */
static inline double test_uniform(void)
{
    uint64_t z = (test_rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1p-52 - 1.0;
}

/* bytes of zeroed memory (at least one), or the test stops. */
static inline void *test_alloc(size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    cr_assert_not_null(p);
    return p;
}

#endif
