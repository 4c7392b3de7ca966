/* Test helpers shared by the training suites: MLP models built from a
 * width list, kept in a pool for the life of the test process (tm_train
 * reads the model for as long as the configuration lives). */
#ifndef TM_TEST_MODELS_H
#define TM_TEST_MODELS_H

#include <criterion/criterion.h>

#include "runtime/status.h"
#include "strategies/mlp.h"

#define TEST_MODELS 64

static tm_model test_model_pool[TEST_MODELS];
static int test_model_count;

/* The MLP "784,256,10" style spec with activation act. */
static inline const tm_model *mlp_model(const char *spec, tm_activation act)
{
    tm_mlp_config c;
    const char *why = "";
    cr_assert_eq(tm_mlp_parse(spec, &c, &why), 0, "model %s: %s", spec, why);
    c.act = act;
    cr_assert_lt(test_model_count, TEST_MODELS, "test model pool exhausted");
    tm_model *m = &test_model_pool[test_model_count++];
    cr_assert_eq(tm_mlp_model(m, &c), TM_OK, "%s", tm_error_message());
    return m;
}

#endif
