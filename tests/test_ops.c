/* Suite `ops`: every backward against central finite differences of a
 * double-precision reference (which also checks the forward), known values,
 * the softmax's stability at ±1e4, the add-into contract and the cost hook. */
#include "kernels/cost.h"
#include "kernels/gelu_simd.h"
#include "kernels/gemm.h"
#include "kernels/isa.h"
#include "kernels/ops.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Float kernels against exact double math: a forward is a short chain of
 * roundings; a gradient may sum a few dozen terms. Wrong formulas miss these
 * by orders of magnitude. */
#define FWD_TOL 1e-5
#define GRAD_TOL 1e-4
/* Central differences in double: truncation ~h², rounding ~1e-16/h. */
#define FD_STEP 1e-5

static uint64_t rng_state = 0x5eed;

static float frand(void) /* splitmix64 -> uniform in [-1, 1) */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / (double)(1u << 23) - 1.0);
}

static void fill(float *a, size_t n, float scale, float offset)
{
    for (size_t i = 0; i < n; i++) a[i] = offset + scale * frand();
}

/* |x| in [0.1, 1]: a finite difference must not straddle ReLU's kink. */
static void fill_away_from_zero(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float u = frand();
        a[i] = (u < 0 ? -0.1f : 0.1f) + 0.9f * u;
    }
}

static void widen(double *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] = src[i];
}

/* Relative error of got against want, measured against the larger of |want|
 * and a hundredth of the tensor's largest |want|: an entry that cancels to
 * nearly zero is judged on the tensor's scale, not its own. Every entry is
 * checked; the worst error is printed and returned. */
static double compare(const char *what, const float *got, const double *want,
                      size_t n, double tol)
{
    double scale = 0.0, worst = 0.0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    double floor_ = fmax(1e-2 * scale, 1e-30);
    for (size_t i = 0; i < n; i++) {
        double err = fabs(got[i] - want[i]) / fmax(fabs(want[i]), floor_);
        cr_expect(err <= tol, "%s[%zu]: got %.9g, want %.9g (rel err %.2e)",
                  what, i, got[i], want[i], err);
        worst = fmax(worst, err);
    }
    printf("ops: %-22s max rel err %.2e\n", what, worst);
    return worst;
}

/* The backward contract: a second call adds the same gradient again. */
static void expect_doubled(const char *what, const float *twice,
                           const float *once, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cr_expect(fabsf(twice[i] - 2.0f * once[i]) <=
                      1e-5f * (fabsf(once[i]) + 1e-3f),
                  "%s[%zu]: second call gave %.9g, want 2 x %.9g", what, i,
                  twice[i], once[i]);
}

/* Scalar losses L = sum(dout · f(inputs)) in double; dL/dx is what the
 * backward computes given dout. */
typedef double (*loss_fn)(void *ctx);

static void fd_gradient(double *grad, loss_fn loss, void *ctx, double *x,
                        size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_STEP;
        double up = loss(ctx);
        x[i] = x0 - FD_STEP;
        double down = loss(ctx);
        x[i] = x0;
        grad[i] = (up - down) / (2.0 * FD_STEP);
    }
}

/* ---- linear ---- */

enum { LB = 9, LIN = 37, LOUT = 19 };

typedef struct {
    double x[LB * LIN], w[LOUT * LIN], b[LOUT], dy[LB * LOUT];
    double y[LB * LOUT];
} linear_case;

static void linear_ref(linear_case *c)
{
    for (int r = 0; r < LB; r++)
        for (int o = 0; o < LOUT; o++) {
            double acc = c->b[o];
            for (int i = 0; i < LIN; i++)
                acc += c->x[r * LIN + i] * c->w[o * LIN + i];
            c->y[r * LOUT + o] = acc;
        }
}

static double linear_loss(void *ctx)
{
    linear_case *c = ctx;
    linear_ref(c);
    double l = 0.0;
    for (int i = 0; i < LB * LOUT; i++) l += c->dy[i] * c->y[i];
    return l;
}

Test(ops, linear_forward_backward_match_finite_differences)
{
    static float x[LB * LIN], w[LOUT * LIN], b[LOUT], dy[LB * LOUT],
        y[LB * LOUT];
    static float dx[LB * LIN], dw[LOUT * LIN], db[LOUT];
    static float dx1[LB * LIN], dw1[LOUT * LIN], db1[LOUT];
    static linear_case c;
    static double g[LOUT * LIN];
    fill(x, LB * LIN, 1, 0), fill(w, LOUT * LIN, 0.3f, 0);
    fill(b, LOUT, 1, 0), fill(dy, LB * LOUT, 1, 0);
    widen(c.x, x, LB * LIN), widen(c.w, w, LOUT * LIN);
    widen(c.b, b, LOUT), widen(c.dy, dy, LB * LOUT);

    tm_linear_forward(y, x, w, b, LB, LIN, LOUT);
    linear_ref(&c);
    compare("linear out", y, c.y, LB * LOUT, FWD_TOL);

    tm_linear_backward(dx, dw, db, dy, x, w, LB, LIN, LOUT);
    fd_gradient(g, linear_loss, &c, c.x, LB * LIN);
    compare("linear dinp", dx, g, LB * LIN, GRAD_TOL);
    fd_gradient(g, linear_loss, &c, c.w, LOUT * LIN);
    compare("linear dweight", dw, g, LOUT * LIN, GRAD_TOL);
    fd_gradient(g, linear_loss, &c, c.b, LOUT);
    compare("linear dbias", db, g, LOUT, GRAD_TOL);

    memcpy(dx1, dx, sizeof dx), memcpy(dw1, dw, sizeof dw);
    memcpy(db1, db, sizeof db);
    tm_linear_backward(dx, dw, db, dy, x, w, LB, LIN, LOUT);
    expect_doubled("linear dinp", dx, dx1, LB * LIN);
    expect_doubled("linear dweight", dw, dw1, LOUT * LIN);
    expect_doubled("linear dbias", db, db1, LOUT);
}

Test(ops, linear_without_bias_and_with_skipped_gradients)
{
    static float x[LB * LIN], w[LOUT * LIN], dy[LB * LOUT], y[LB * LOUT];
    static float dw_all[LOUT * LIN], dw_only[LOUT * LIN], dx[LB * LIN],
        db[LOUT];
    static linear_case c; /* bias stays zero */
    fill(x, LB * LIN, 1, 0), fill(w, LOUT * LIN, 0.3f, 0);
    fill(dy, LB * LOUT, 1, 0);
    widen(c.x, x, LB * LIN), widen(c.w, w, LOUT * LIN);

    /* Garbage in y: with no bias the GEMM must ignore what was there. */
    for (int i = 0; i < LB * LOUT; i++) y[i] = NAN;
    tm_linear_forward(y, x, w, NULL, LB, LIN, LOUT);
    linear_ref(&c);
    compare("linear out (no bias)", y, c.y, LB * LOUT, FWD_TOL);

    tm_linear_backward(dx, dw_all, db, dy, x, w, LB, LIN, LOUT);
    tm_linear_backward(NULL, dw_only, NULL, dy, x, w, LB, LIN, LOUT);
    cr_expect(memcmp(dw_all, dw_only, sizeof dw_all) == 0,
              "skipping dinp and dbias must not change dweight");
}

Test(ops, linear_relu_forward_is_linear_then_relu)
{
    static float x[LB * LIN], w[LOUT * LIN], b[LOUT], fused[LB * LOUT],
        lin[LB * LOUT], want[LB * LOUT];
    fill(x, LB * LIN, 1, 0), fill(w, LOUT * LIN, 0.3f, 0), fill(b, LOUT, 1, 0);
    tm_linear_relu_forward(fused, x, w, b, LB, LIN, LOUT);
    tm_linear_forward(lin, x, w, b, LB, LIN, LOUT);
    tm_relu_forward(want, lin, LB * LOUT);
    int negatives = 0;
    for (int i = 0; i < LB * LOUT; i++) {
        negatives += lin[i] < 0;
        cr_expect(fused[i] == want[i], "[%d]: fused %.9g, two-step %.9g", i,
                  fused[i], want[i]);
    }
    cr_expect(negatives > 0, "the case must exercise the clamp");
}

/* ---- bias add ---- */

enum { BB = 5, BC = 37 };

typedef struct {
    double x[BB * BC], b[BC], dy[BB * BC];
} bias_case;

static double bias_loss(void *ctx)
{
    bias_case *c = ctx;
    double l = 0.0;
    for (int r = 0; r < BB; r++)
        for (int j = 0; j < BC; j++)
            l += c->dy[r * BC + j] * (c->x[r * BC + j] + c->b[j]);
    return l;
}

Test(ops, bias_add_matches_finite_differences)
{
    float x[BB * BC], b[BC], dy[BB * BC], db[BC] = {0}, db1[BC];
    double want[BB * BC], g[BC];
    bias_case c;
    fill(x, BB * BC, 1, 0), fill(b, BC, 1, 0), fill(dy, BB * BC, 1, 0);
    widen(c.x, x, BB * BC), widen(c.b, b, BC), widen(c.dy, dy, BB * BC);
    tm_bias_add_forward(x, b, BB, BC);
    for (int r = 0; r < BB; r++)
        for (int j = 0; j < BC; j++)
            want[r * BC + j] = c.x[r * BC + j] + c.b[j];
    compare("bias_add out", x, want, BB * BC, FWD_TOL);

    tm_bias_add_backward(db, dy, BB, BC);
    fd_gradient(g, bias_loss, &c, c.b, BC);
    compare("bias_add dbias", db, g, BC, GRAD_TOL);
    memcpy(db1, db, sizeof db);
    tm_bias_add_backward(db, dy, BB, BC);
    expect_doubled("bias_add dbias", db, db1, BC);
}

/* ---- elementwise: ReLU, GELU, residual ---- */

enum { EN = 53 }; /* three vector blocks of 16 and a tail of 5 */

typedef struct {
    double x[EN], x2[EN], dy[EN];
    double (*f)(double);
} elementwise_case;

static double elementwise_loss(void *ctx)
{
    elementwise_case *c = ctx;
    double l = 0.0;
    for (int i = 0; i < EN; i++) l += c->dy[i] * c->f(c->x[i]);
    return l;
}

static double relu_ref(double x) { return x > 0 ? x : 0; }

static double gelu_ref(double x)
{
    return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

Test(ops, relu_matches_finite_differences)
{
    float x[EN], y[EN], dy[EN], dx[EN] = {0}, dx1[EN], mask[EN];
    double want[EN], g[EN];
    elementwise_case c = {.f = relu_ref};
    fill_away_from_zero(x, EN), fill(dy, EN, 1, 0);
    widen(c.x, x, EN), widen(c.dy, dy, EN);
    tm_relu_forward(y, x, EN);
    for (int i = 0; i < EN; i++) want[i] = relu_ref(c.x[i]);
    compare("relu out", y, want, EN, 0.0);

    fd_gradient(g, elementwise_loss, &c, c.x, EN);
    tm_relu_backward(dx, dy, y, EN);
    compare("relu dinp", dx, g, EN, GRAD_TOL);
    memcpy(dx1, dx, sizeof dx);
    tm_relu_backward(dx, dy, y, EN);
    expect_doubled("relu dinp", dx, dx1, EN);

    /* The in-place form overwrites, and a dead unit's inf becomes 0. */
    memcpy(mask, dy, sizeof dy);
    for (int i = 0; i < EN; i++)
        if (y[i] == 0.0f) mask[i] = INFINITY;
    tm_relu_backward_inplace(mask, y, EN);
    compare("relu dinp (in place)", mask, g, EN, GRAD_TOL);
}

Test(ops, gelu_matches_finite_differences)
{
    float x[EN], y[EN], dy[EN], dx[EN] = {0}, dx1[EN];
    double want[EN], g[EN];
    elementwise_case c = {.f = gelu_ref};
    fill(x, EN, 3, 0), fill(dy, EN, 1, 0);
    widen(c.x, x, EN), widen(c.dy, dy, EN);
    tm_gelu_forward(y, x, EN);
    for (int i = 0; i < EN; i++) want[i] = gelu_ref(c.x[i]);
    compare("gelu out", y, want, EN, FWD_TOL);

    tm_gelu_backward(dx, dy, x, EN);
    fd_gradient(g, elementwise_loss, &c, c.x, EN);
    compare("gelu dinp", dx, g, EN, GRAD_TOL);
    memcpy(dx1, dx, sizeof dx);
    tm_gelu_backward(dx, dy, x, EN);
    expect_doubled("gelu dinp", dx, dx1, EN);
}

/* Every instruction set's GELU loops this CPU can run, each against the
 * double-precision formula and its finite differences (the active set is
 * one of them; the generic loops are the libm reference). */
Test(ops, gelu_every_isa_path_matches_finite_differences)
{
    for (int i = 0; i < TM_ISA_COUNT; i++) {
        tm_isa isa = (tm_isa)i;
        if (!tm_isa_supported(isa)) continue;
        float x[EN], y[EN], dy[EN], dx[EN] = {0};
        double want[EN], g[EN];
        elementwise_case c = {.f = gelu_ref};
        fill(x, EN, 4, 0), fill(dy, EN, 1, 0);
        widen(c.x, x, EN), widen(c.dy, dy, EN);
        char what[64];
        tm__gelu_forward_isa(isa, y, x, EN);
        for (int k = 0; k < EN; k++) want[k] = gelu_ref(c.x[k]);
        snprintf(what, sizeof what, "gelu out (%s)", tm_isa_name(isa));
        compare(what, y, want, EN, FWD_TOL);
        tm__gelu_backward_isa(isa, dx, dy, x, EN);
        fd_gradient(g, elementwise_loss, &c, c.x, EN);
        snprintf(what, sizeof what, "gelu dinp (%s)", tm_isa_name(isa));
        compare(what, dx, g, EN, GRAD_TOL);
    }
}

/* The in-place backward and the fused bias + GELU, on every instruction
 * set's loops, against the two-buffer kernels they stand for. */
Test(ops, gelu_inplace_and_bias_gelu_match_the_plain_kernels)
{
    enum { B = 3, C = 37 };
    for (int i = 0; i < TM_ISA_COUNT; i++) {
        tm_isa isa = (tm_isa)i;
        if (!tm_isa_supported(isa)) continue;
        float x[B * C], d[B * C], want[B * C] = {0}, bias[C], pre[B * C], out[B * C];
        fill(x, B * C, 4, 0), fill(d, B * C, 1, 0), fill(bias, C, 1, 0);
        tm__gelu_backward_isa(isa, want, d, x, B * C);
        tm__gelu_backward_inplace_isa(isa, d, x, B * C);
        for (int k = 0; k < B * C; k++)
            cr_expect(fabsf(d[k] - want[k]) <= 1e-6f * (fabsf(want[k]) + 1e-6f),
                      "%s: in place [%d] %.9g, want %.9g", tm_isa_name(isa), k, d[k], want[k]);
        memcpy(pre, x, sizeof pre);
        tm__bias_gelu_forward_isa(isa, out, pre, bias, B, C);
        for (int b = 0; b < B; b++)
            for (int c = 0; c < C; c++) {
                int k = b * C + c;
                double v = (double)(x[k] + bias[c]);
                cr_expect(pre[k] == x[k] + bias[c], "%s: pre[%d] is not x + bias",
                          tm_isa_name(isa), k);
                /* Judged on the tensor's scale, as compare() does: the
                 * libm path's 1 + tanh cancels for x < -3. */
                cr_expect(fabs(out[k] - gelu_ref(v)) <= FWD_TOL * (fabs(gelu_ref(v)) + 0.04),
                          "%s: bias gelu [%d] %.9g, want %.9g", tm_isa_name(isa), k, out[k],
                          gelu_ref(v));
            }
    }
}

Test(ops, gelu_known_values)
{
    /* torch.nn.functional.gelu(x, approximate='tanh') in float64. */
    const float x[] = {-3, -1, -0.5f, 0, 0.5f, 1, 3};
    const double want[] = {-0.00363739208177, -0.158808009392,
                           -0.154285990175,  0.0,
                           0.345714009825,   0.841191990608,
                           2.99636260792};
    float y[7];
    tm_gelu_forward(y, x, 7);
    for (int i = 0; i < 7; i++)
        cr_expect(fabs(y[i] - want[i]) <= 1e-6, "GELU(%g) = %.9g, want %.9g",
                  x[i], y[i], want[i]);
}

static double residual_loss(void *ctx)
{
    elementwise_case *c = ctx;
    double l = 0.0;
    for (int i = 0; i < EN; i++) l += c->dy[i] * (c->x[i] + c->x2[i]);
    return l;
}

Test(ops, residual_matches_finite_differences)
{
    float a[EN], b[EN], y[EN], dy[EN], da[EN] = {0}, db[EN] = {0}, da1[EN],
        db1[EN];
    double want[EN], g[EN];
    elementwise_case c;
    fill(a, EN, 1, 0), fill(b, EN, 1, 0), fill(dy, EN, 1, 0);
    widen(c.x, a, EN), widen(c.x2, b, EN), widen(c.dy, dy, EN);
    tm_residual_forward(y, a, b, EN);
    for (int i = 0; i < EN; i++) want[i] = c.x[i] + c.x2[i];
    compare("residual out", y, want, EN, FWD_TOL);

    tm_residual_backward(da, db, dy, EN);
    fd_gradient(g, residual_loss, &c, c.x, EN);
    compare("residual dinp1", da, g, EN, GRAD_TOL);
    fd_gradient(g, residual_loss, &c, c.x2, EN);
    compare("residual dinp2", db, g, EN, GRAD_TOL);
    memcpy(da1, da, sizeof da), memcpy(db1, db, sizeof db);
    tm_residual_backward(da, db, dy, EN);
    expect_doubled("residual dinp1", da, da1, EN);
    expect_doubled("residual dinp2", db, db1, EN);
}

/* ---- LayerNorm ---- */

enum { NB = 3, NC = 37 };
#define LN_EPS 1e-5f

typedef struct {
    double x[NB * NC], w[NC], b[NC], dy[NB * NC];
    double y[NB * NC], mean[NB], rstd[NB];
} layernorm_case;

static void layernorm_ref(layernorm_case *c)
{
    for (int r = 0; r < NB; r++) {
        const double *x = c->x + r * NC;
        double m = 0.0, v = 0.0;
        for (int j = 0; j < NC; j++) m += x[j] / NC;
        for (int j = 0; j < NC; j++) v += (x[j] - m) * (x[j] - m) / NC;
        c->mean[r] = m;
        c->rstd[r] = 1.0 / sqrt(v + (double)LN_EPS);
        for (int j = 0; j < NC; j++)
            c->y[r * NC + j] = (x[j] - m) * c->rstd[r] * c->w[j] + c->b[j];
    }
}

static double layernorm_loss(void *ctx)
{
    layernorm_case *c = ctx;
    layernorm_ref(c);
    double l = 0.0;
    for (int i = 0; i < NB * NC; i++) l += c->dy[i] * c->y[i];
    return l;
}

Test(ops, layernorm_matches_finite_differences)
{
    static float x[NB * NC], w[NC], b[NC], dy[NB * NC], y[NB * NC], mean[NB],
        rstd[NB];
    static float dx[NB * NC], dw[NC], db[NC], dx1[NB * NC], dw1[NC], db1[NC];
    static double g[NB * NC];
    static layernorm_case c;
    fill(x, NB * NC, 2, 0.5f), fill(w, NC, 0.5f, 1), fill(b, NC, 1, 0);
    fill(dy, NB * NC, 1, 0);
    widen(c.x, x, NB * NC), widen(c.w, w, NC), widen(c.b, b, NC);
    widen(c.dy, dy, NB * NC);

    tm_layernorm_forward(y, mean, rstd, x, w, b, NB, NC, LN_EPS);
    layernorm_ref(&c);
    compare("layernorm out", y, c.y, NB * NC, FWD_TOL);
    compare("layernorm mean", mean, c.mean, NB, FWD_TOL);
    compare("layernorm rstd", rstd, c.rstd, NB, FWD_TOL);

    tm_layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, NB, NC);
    fd_gradient(g, layernorm_loss, &c, c.x, NB * NC);
    compare("layernorm dinp", dx, g, NB * NC, GRAD_TOL);
    fd_gradient(g, layernorm_loss, &c, c.w, NC);
    compare("layernorm dweight", dw, g, NC, GRAD_TOL);
    fd_gradient(g, layernorm_loss, &c, c.b, NC);
    compare("layernorm dbias", db, g, NC, GRAD_TOL);

    memcpy(dx1, dx, sizeof dx), memcpy(dw1, dw, sizeof dw);
    memcpy(db1, db, sizeof db);
    tm_layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, NB, NC);
    expect_doubled("layernorm dinp", dx, dx1, NB * NC);
    expect_doubled("layernorm dweight", dw, dw1, NC);
    expect_doubled("layernorm dbias", db, db1, NC);
}

Test(ops, layernorm_known_values)
{
    /* torch.nn.functional.layer_norm([1, 2, 3, 4], (4,), eps=1e-5). */
    const float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 1, 1}, b[4] = {0};
    const double want[4] = {-1.34163541997, -0.447211806656, 0.447211806656,
                            1.34163541997};
    float y[4], mean, rstd;
    tm_layernorm_forward(y, &mean, &rstd, x, w, b, 1, 4, 1e-5f);
    compare("layernorm [1,2,3,4]", y, want, 4, 1e-6);
    cr_expect(mean == 2.5f, "mean %.9g, want 2.5", mean);
    cr_expect(fabs(rstd - 0.894423613312618) <= 1e-6, "rstd %.9g", rstd);
}

/* ---- softmax cross-entropy and accuracy ---- */

enum { XB = 4, XC = 21 };

typedef struct {
    double logits[XB * XC];
    int labels[XB];
} xent_case;

static double xent_row_ref(const double *x, int label, int C)
{
    double max = x[0], sum = 0.0;
    for (int j = 1; j < C; j++) max = fmax(max, x[j]);
    for (int j = 0; j < C; j++) sum += exp(x[j] - max);
    return log(sum) - (x[label] - max);
}

static double xent_loss(void *ctx) /* the mean over rows */
{
    xent_case *c = ctx;
    double l = 0.0;
    for (int r = 0; r < XB; r++)
        l += xent_row_ref(c->logits + r * XC, c->labels[r], XC) / XB;
    return l;
}

Test(ops, softmax_xent_matches_finite_differences)
{
    float logits[XB * XC], d[XB * XC], losses[XB], scaled[XB * XC];
    double want[XB], g[XB * XC];
    xent_case c = {.labels = {3, 0, 20, 11}};
    fill(logits, XB * XC, 4, 0);
    widen(c.logits, logits, XB * XC);

    float mean = tm_softmax_xent_forward_backward(d, losses, logits, c.labels,
                                                  XB, XC, 1.0f / XB);
    for (int r = 0; r < XB; r++)
        want[r] = xent_row_ref(c.logits + r * XC, c.labels[r], XC);
    compare("xent row losses", losses, want, XB, FWD_TOL);
    double mean_want = xent_loss(&c);
    cr_expect(fabs(mean - mean_want) <= FWD_TOL * mean_want,
              "mean loss %.9g, want %.9g", mean, mean_want);
    fd_gradient(g, xent_loss, &c, c.logits, XB * XC);
    compare("xent dlogits", d, g, XB * XC, GRAD_TOL);

    /* grad_scale only scales; dlogits == NULL only skips the gradient. */
    float mean2 = tm_softmax_xent_forward_backward(scaled, NULL, logits,
                                                   c.labels, XB, XC, 0.5f);
    float mean3 = tm_softmax_xent_forward_backward(NULL, NULL, logits,
                                                   c.labels, XB, XC, 1.0f);
    cr_expect(mean2 == mean && mean3 == mean, "loss %.9g %.9g %.9g", mean,
              mean2, mean3);
    for (int i = 0; i < XB * XC; i++) g[i] *= 0.5 * XB;
    compare("xent dlogits x0.5", scaled, g, XB * XC, GRAD_TOL);
}

Test(ops, softmax_xent_known_values)
{
    /* torch.nn.functional.cross_entropy([[1, 2, 3]], [0]) and its grad. */
    const float logits[3] = {1, 2, 3};
    const double want_d[3] = {-0.90996942683, 0.244728471055, 0.665240955775};
    float d[3];
    float loss =
        tm_softmax_xent_forward_backward(d, NULL, logits, (int[]){0}, 1, 3, 1);
    cr_expect(fabs(loss - 2.40760596444) <= 1e-6, "loss %.9g", loss);
    compare("xent [1,2,3]", d, want_d, 3, 1e-6);

    /* Uniform logits: the loss is log C and the gradient 1/C - onehot. */
    enum { C = 10 };
    float u[2 * C], du[2 * C];
    for (int i = 0; i < 2 * C; i++) u[i] = 0.25f;
    loss = tm_softmax_xent_forward_backward(du, NULL, u, (int[]){7, 2}, 2, C,
                                            0.5f);
    cr_expect(fabs(loss - log(C)) <= 1e-6, "uniform loss %.9g, want log 10",
              loss);
    for (int i = 0; i < 2 * C; i++) {
        double want = 0.5 * (0.1 - (i == 7 || i == C + 2));
        cr_expect(fabs(du[i] - want) <= 1e-7, "du[%d] %.9g, want %.9g", i,
                  du[i], want);
    }
    cr_expect(tm_softmax_xent_forward_backward(NULL, NULL, u, NULL, 0, C, 1) ==
                  0.0f,
              "an empty batch has loss 0");
}

Test(ops, softmax_xent_is_stable_at_1e4)
{
    /* Rows: the label at the minimum, at the maximum, all equal at +1e4,
     * all equal at -1e4. */
    const float logits[4 * 3] = {1e4f, -1e4f, 0,    1e4f,  -1e4f, 0,
                                 1e4f, 1e4f,  1e4f, -1e4f, -1e4f, -1e4f};
    const int labels[4] = {1, 0, 2, 1};
    const double want_loss[4] = {2e4, 0, log(3), log(3)};
    const double want_d[4 * 3] = {1, -1, 0, 0, 0, 0, 1.0 / 3, 1.0 / 3,
                                  -2.0 / 3, 1.0 / 3, -2.0 / 3, 1.0 / 3};
    float d[4 * 3], losses[4];
    float mean = tm_softmax_xent_forward_backward(d, losses, logits, labels, 4,
                                                  3, 1.0f);
    cr_expect(isfinite(mean), "mean loss %g", mean);
    for (int r = 0; r < 4; r++)
        cr_expect(fabs(losses[r] - want_loss[r]) <= 1e-6 * (1 + want_loss[r]),
                  "row %d loss %.9g, want %.9g", r, losses[r], want_loss[r]);
    for (int i = 0; i < 4 * 3; i++)
        cr_expect(isfinite(d[i]) && fabs(d[i] - want_d[i]) <= 1e-6,
                  "d[%d] %.9g, want %.9g", i, d[i], want_d[i]);
}

Test(ops, accuracy_counts_argmax_ties_to_lowest_index)
{
    const float logits[5 * 3] = {
        0.1f, 0.9f, 0.3f, /* argmax 1 */
        2.0f, 5.0f, 5.0f, /* tie: 1, not 2 */
        7.0f, 7.0f, 7.0f, /* tie: 0 */
        -3.f, -2.f, -1.f, /* argmax 2 */
        1e4f, 0.0f, -1e4f /* argmax 0 */
    };
    cr_expect_eq(tm_accuracy(logits, (int[]){1, 1, 0, 2, 0}, 5, 3), 5);
    cr_expect_eq(tm_accuracy(logits, (int[]){1, 2, 1, 2, 1}, 5, 3), 2);
    cr_expect_eq(tm_accuracy(logits, (int[]){0, 0, 2, 0, 2}, 5, 3), 0);
}

/* ---- cost reports ---- */

typedef struct {
    int calls;
    double flops, bytes;
} cost_log;

static void log_cost(void *ctx, double flops, double bytes)
{
    cost_log *log = ctx;
    log->calls++;
    log->flops += flops;
    log->bytes += bytes;
}

static cost_log cost_log_;

static void cost_start(void)
{
    cost_log_ = (cost_log){0};
    tm_cost_set_hook(log_cost, &cost_log_);
}

static void expect_cost(const char *what, int calls, double flops,
                        double bytes)
{
    cr_expect(cost_log_.calls == calls && cost_log_.flops == flops &&
                  cost_log_.bytes == bytes,
              "%s charged %d calls, %g flops, %g bytes; want %d, %g, %g",
              what, cost_log_.calls, cost_log_.flops, cost_log_.bytes, calls,
              flops, bytes);
}

Test(ops, each_op_charges_its_cost_once)
{
    enum { N = 100, B = 4, C = 10 };
    static float a[N], b[N], y[N], d[N], w[C], bias[C], mean[B], rstd[B],
        dw[C], db[C];
    fill(a, N, 1, 0), fill(b, N, 1, 0), fill(d, N, 1, 0);
    fill(w, C, 1, 0), fill(bias, C, 1, 0);
    int labels[B] = {1, 2, 3, 4};

    cost_start(), tm_relu_forward(y, a, N);
    expect_cost("relu_forward", 1, N, 8 * N);
    cost_start(), tm_relu_backward(d, a, y, N);
    expect_cost("relu_backward", 1, 2 * N, 16 * N);
    cost_start(), tm_relu_backward_inplace(d, y, N);
    expect_cost("relu_backward_inplace", 1, N, 12 * N);
    cost_start(), tm_gelu_forward(y, a, N);
    expect_cost("gelu_forward", 1, 9 * N, 8 * N);
    cost_start(), tm_gelu_backward(d, b, a, N);
    expect_cost("gelu_backward", 1, 20 * N, 16 * N);
    cost_start(), tm_residual_forward(y, a, b, N);
    expect_cost("residual_forward", 1, N, 12 * N);
    cost_start(), tm_residual_backward(d, y, b, N);
    expect_cost("residual_backward", 1, 2 * N, 20 * N);
    cost_start(), tm_bias_add_forward(y, bias, B, C);
    expect_cost("bias_add_forward", 1, B * C, 4 * (2 * B * C + C));
    cost_start(), tm_bias_add_backward(w, a, B, C);
    expect_cost("bias_add_backward", 1, B * C, 4 * (B * C + 2 * C));
    cost_start(), tm_layernorm_forward(y, mean, rstd, a, w, bias, B, C, 1e-5f);
    expect_cost("layernorm_forward", 1, 8 * B * C + 4 * B,
                4 * (2 * B * C + 2 * C + 2 * B));
    cost_start();
    tm_layernorm_backward(d, dw, db, b, a, w, mean, rstd, B, C);
    expect_cost("layernorm_backward", 1, 17 * B * C,
                4 * (4 * B * C + 5 * C + 2 * B));
    cost_start();
    tm_softmax_xent_forward_backward(d, b, a, labels, B, C, 1.0f / B);
    expect_cost("softmax_xent", 1, 5 * B * C + 5 * B,
                4 * (2 * B * C + 2 * B));
    cost_start(), tm_accuracy(a, labels, B, C);
    expect_cost("accuracy", 1, B * C, 4 * (B * C + B));
    tm_cost_set_hook(NULL, NULL);
}

/* The linear layers charge their GEMMs (whatever tm_sgemm reports) plus
 * their own bias and activation work, counted once. */
Test(ops, linear_charges_gemm_plus_bias)
{
    enum { B = 8, IN = 12, OUT = 5 };
    static float x[B * IN], w[OUT * IN], bias[OUT], y[B * OUT], dy[B * OUT],
        dx[B * IN], dw[OUT * IN], db[OUT];
    fill(x, B * IN, 1, 0), fill(w, OUT * IN, 1, 0), fill(dy, B * OUT, 1, 0);

    cost_start();
    tm_sgemm('N', 'T', B, OUT, IN, 1.0f, x, IN, w, IN, 1.0f, y, OUT);
    cost_log fwd = cost_log_;
    cost_start();
    tm_sgemm('N', 'N', B, IN, OUT, 1.0f, dy, OUT, w, IN, 1.0f, dx, IN);
    tm_sgemm('T', 'N', OUT, IN, B, 1.0f, dy, OUT, x, IN, 1.0f, dw, IN);
    cost_log bwd = cost_log_;
    cr_assert(fwd.flops >= 2.0 * B * IN * OUT, "tm_sgemm charges its FLOPs");

    cost_start(), tm_linear_forward(y, x, w, bias, B, IN, OUT);
    expect_cost("linear_forward", fwd.calls + 1, fwd.flops + B * OUT,
                fwd.bytes + 4 * (OUT + B * OUT));
    cost_start(), tm_linear_relu_forward(y, x, w, bias, B, IN, OUT);
    expect_cost("linear_relu_forward", fwd.calls + 1, fwd.flops + 2 * B * OUT,
                fwd.bytes + 4 * (OUT + B * OUT) + 8 * B * OUT);
    cost_start(), tm_linear_backward(dx, dw, db, dy, x, w, B, IN, OUT);
    expect_cost("linear_backward", bwd.calls + 1, bwd.flops + B * OUT,
                bwd.bytes + 4 * (B * OUT + 2 * OUT));
    tm_cost_set_hook(NULL, NULL);
}
