/* The divergence check after each step (strategies/trainer_guard.c): a
 * non-finite loss on the stage that knows it, or a non-finite gradient on
 * any device, asks for a stop whose reason names the value; finite values
 * and a loss on a stage that does not know it do not. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/trainer_internal.h"

static tm_stop *stop;

static void make_stop(void) { cr_assert_eq(tm_stop_create(&stop, 0, NULL), TM_OK); }
static void free_stop(void) { tm_stop_destroy(stop); }

Test(guard, finite_values_pass, .init = make_stop, .fini = free_stop)
{
    float g[7] = {1, -2, 3e38f, -3e38f, 0, 1e-30f, 5};
    tm__train_guard(stop, 1, 1, 2.5, g, 7, 0);
    /* A stage without the loss passes whatever its loss slot holds. */
    tm__train_guard(stop, 2, 0, NAN, g, 7, 1);
    cr_expect_eq(tm_stop_failed(stop, NULL, 0), 0);
}

Test(guard, a_non_finite_loss_is_named, .init = make_stop, .fini = free_stop)
{
    float g[3] = {1, 2, 3};
    char why[128];
    tm__train_guard(stop, 9, 1, INFINITY, g, 3, 0);
    cr_expect_eq(tm_stop_failed(stop, why, sizeof why), 9);
    cr_expect_str_eq(why, "the loss is inf");
    tm__train_guard(stop, 4, 1, NAN, g, 3, 0);
    cr_expect_eq(tm_stop_failed(stop, why, sizeof why), 4);
    cr_expect_str_eq(why, "the loss is nan");
}

Test(guard, a_non_finite_gradient_with_a_finite_loss_is_named, .init = make_stop,
     .fini = free_stop)
{
    char why[128];
    for (size_t n = 1; n <= 9; n++) {
        float g[9] = {0};
        g[n - 1] = n % 2 ? INFINITY : -INFINITY; /* the last one, whatever the length */
        tm_stop *s;
        cr_assert_eq(tm_stop_create(&s, 0, NULL), TM_OK);
        tm__train_guard(s, 3, 1, 0.5, g, n, 6);
        cr_expect_eq(tm_stop_failed(s, why, sizeof why), 3, "length %zu", n);
        cr_expect_str_eq(why, "the gradient norm is inf (device 6's part)");
        tm_stop_destroy(s);
    }
    float g[5] = {1, NAN, 2, 3, 4};
    tm__train_guard(stop, 7, 0, 0, g, 5, 2);
    cr_expect_eq(tm_stop_failed(stop, why, sizeof why), 7);
    cr_expect_str_eq(why, "the gradient norm is nan (device 2's part)");
}
