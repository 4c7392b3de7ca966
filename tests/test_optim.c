/* Suite `optim`: SGD and AdamW against steps computed by hand (values checked
 * against torch.optim in float64), against a double-precision reference over
 * vector-width and tail elements, on slices, their cost reports, and every
 * instruction set's loops against the portable ones. */
#include "kernels/cost.h"
#include "kernels/isa.h"
#include "kernels/optim.h"
#include "kernels/optim_internal.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { N = 37 }; /* two vector blocks of 16 and a tail of 5 */

static uint64_t rng_state = 0xada;

static float frand(void) /* splitmix64 -> uniform in [-1, 1) */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / (double)(1u << 23) - 1.0);
}

static void fill(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++) a[i] = frand();
}

/* Step 1 must not read the state: fill it with what an arena might hold. */
static void poison(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++) a[i] = NAN;
}

/* Within rel of want, or within abs where want is a small difference of
 * larger terms (whose own rounding sets the error). */
static void expect_near(const char *what, double got, double want, double rel,
                        double abs)
{
    cr_expect(fabs(got - want) <= fmax(rel * fabs(want), abs),
              "%s: got %.12g, want %.12g", what, got, want);
}

/* ---- SGD ---- */

Test(optim, sgd_without_momentum_by_hand)
{
    float p = 1.0f, g = 0.5f;
    tm_sgd_step(&p, &g, NULL, 1, (tm_sgd_params){.lr = 0.1}, 1);
    expect_near("p", p, 0.95, 1e-7, 0); /* 1 - 0.1 * 0.5 */
    p = 1.0f;
    tm_sgd_step(&p, &g, NULL, 1,
                (tm_sgd_params){.lr = 0.1, .weight_decay = 0.1}, 1);
    expect_near("p with decay", p, 0.94, 1e-7, 0); /* 1 - 0.1 * (0.5 + 0.1) */
}

Test(optim, sgd_momentum_first_step_initialises_buffer)
{
    /* torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=wd), gradients 0.5
     * then -0.25 on p = 1. Step 1 clones d = g + wd p into the buffer; step 2
     * is buf = 0.9 buf + d. */
    struct {
        double wd, p1, buf1, p2, buf2;
    } cases[] = {
        {0.0, 0.95, 0.5, 0.93, 0.2},     /* buf2 = 0.45 - 0.25 */
        {0.1, 0.94, 0.6, 0.9016, 0.384}, /* d2 = -0.25 + 0.094 */
    };
    for (int c = 0; c < 2; c++) {
        tm_sgd_params hp = {
            .lr = 0.1, .momentum = 0.9, .weight_decay = cases[c].wd};
        float p = 1.0f, g = 0.5f, buf;
        poison(&buf, 1);
        tm_sgd_step(&p, &g, &buf, 1, hp, 1);
        expect_near("p after step 1", p, cases[c].p1, 1e-7, 0);
        expect_near("buf after step 1", buf, cases[c].buf1, 1e-7, 0);
        g = -0.25f;
        tm_sgd_step(&p, &g, &buf, 1, hp, 2);
        expect_near("p after step 2", p, cases[c].p2, 1e-6, 0);
        expect_near("buf after step 2", buf, cases[c].buf2, 1e-6, 0);
    }
}

Test(optim, sgd_matches_double_reference)
{
    tm_sgd_params hp = {.lr = 0.05, .momentum = 0.8, .weight_decay = 0.01};
    float p[N], g[N], buf[N];
    double pd[N], bufd[N];
    fill(p, N), poison(buf, N);
    for (int i = 0; i < N; i++) pd[i] = p[i];
    for (long t = 1; t <= 3; t++) {
        fill(g, N);
        tm_sgd_step(p, g, buf, N, hp, t);
        for (int i = 0; i < N; i++) {
            double d = g[i] + hp.weight_decay * pd[i];
            bufd[i] = t == 1 ? d : hp.momentum * bufd[i] + d;
            pd[i] -= hp.lr * bufd[i];
            expect_near("p", p[i], pd[i], 1e-5, 1e-6);
            expect_near("buf", buf[i], bufd[i], 1e-5, 1e-6);
        }
    }
}

/* ---- AdamW ---- */

Test(optim, adamw_two_steps_by_hand)
{
    /* lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, p = 1,
     * gradients 0.5 then -0.25. Step 1: m = 0.05, v = 0.00025, and the bias
     * corrections (1 - 0.9, 1 - 0.999) make mhat = g, vhat = g², so
     * p = 0.999 - 0.1 · 0.5 / (0.5 + 1e-8) = 0.899000002.
     * Step 2: m = 0.045 - 0.025 = 0.02, v = 0.00024975 + 0.0000625 =
     * 0.00031225, mhat = m / 0.19, vhat = v / 0.001999, and
     * p = 0.899000002 · 0.999 - 0.1 · mhat / (sqrt(vhat) + 1e-8)
     *   = 0.871467298706 (torch.optim.AdamW agrees to 12 digits). */
    tm_adamw_params hp = TM_ADAMW_DEFAULTS;
    hp.lr = 0.1;
    float p = 1.0f, g = 0.5f, m, v;
    poison(&m, 1), poison(&v, 1);
    tm_adamw_step(&p, &g, &m, &v, 1, hp, 1);
    expect_near("m after step 1", m, 0.05, 1e-6, 0);
    expect_near("v after step 1", v, 0.00025, 1e-6, 0);
    expect_near("p after step 1", p, 0.899000002, 1e-7, 0);
    g = -0.25f;
    tm_adamw_step(&p, &g, &m, &v, 1, hp, 2);
    expect_near("m after step 2", m, 0.02, 1e-6, 0);
    expect_near("v after step 2", v, 0.00031225, 1e-6, 0);
    expect_near("p after step 2", p, 0.871467298706, 1e-6, 0);
}

Test(optim, adamw_bias_correction_makes_constant_gradients_step_lr)
{
    /* With a constant gradient g, mhat = g and vhat = g² at every step t
     * (that is what the corrections 1 - beta^t are for), so each step moves
     * p by lr · |g| / (|g| + eps) ≈ lr, however small g is. Uncorrected,
     * step 1 would move it by lr · 0.1 / sqrt(0.001) ≈ 3.16 lr. */
    tm_adamw_params hp = TM_ADAMW_DEFAULTS;
    hp.weight_decay = 0.0;
    float p = 0.0f, g = 1e-3f, m, v;
    double want = 0.0;
    for (long t = 1; t <= 5; t++) {
        tm_adamw_step(&p, &g, &m, &v, 1, hp, t);
        want -= hp.lr * 1e-3 / (1e-3 + hp.eps);
        expect_near("p", p, want, 1e-5, 0);
    }
}

Test(optim, adamw_matches_double_reference)
{
    tm_adamw_params hp = {.lr = 0.01, .beta1 = 0.8, .beta2 = 0.95,
                          .eps = 1e-6, .weight_decay = 0.1};
    float p[N], g[N], m[N], v[N];
    double pd[N], md[N] = {0}, vd[N] = {0};
    fill(p, N), poison(m, N), poison(v, N);
    for (int i = 0; i < N; i++) pd[i] = p[i];
    for (long t = 1; t <= 3; t++) {
        fill(g, N);
        tm_adamw_step(p, g, m, v, N, hp, t);
        for (int i = 0; i < N; i++) {
            pd[i] *= 1 - hp.lr * hp.weight_decay;
            md[i] = hp.beta1 * md[i] + (1 - hp.beta1) * g[i];
            vd[i] = hp.beta2 * vd[i] + (1 - hp.beta2) * g[i] * g[i];
            double mhat = md[i] / (1 - pow(hp.beta1, t));
            double vhat = vd[i] / (1 - pow(hp.beta2, t));
            pd[i] -= hp.lr * mhat / (sqrt(vhat) + hp.eps);
            expect_near("p", p[i], pd[i], 1e-5, 1e-6);
            expect_near("m", m[i], md[i], 1e-5, 1e-6);
            expect_near("v", v[i], vd[i], 1e-5, 1e-6);
        }
    }
}

/* ---- slices, validation, cost ---- */

Test(optim, a_slice_update_touches_only_the_slice)
{
    enum { LEN = 40, LO = 10, HI = 31 };
    float p[LEN], g[LEN], m[LEN], v[LEN], p0[LEN], m0[LEN], v0[LEN];
    float ps[HI - LO], ms[HI - LO], vs[HI - LO];
    fill(p, LEN), fill(g, LEN), fill(m, LEN), fill(v, LEN);
    for (int i = 0; i < LEN; i++) v[i] = fabsf(v[i]);
    memcpy(p0, p, sizeof p), memcpy(m0, m, sizeof m), memcpy(v0, v, sizeof v);
    memcpy(ps, p + LO, sizeof ps), memcpy(ms, m + LO, sizeof ms);
    memcpy(vs, v + LO, sizeof vs);
    tm_adamw_params hp = TM_ADAMW_DEFAULTS;

    /* Step 2, so the slice's state is read as well as written. */
    tm_adamw_step(p + LO, g + LO, m + LO, v + LO, HI - LO, hp, 2);
    tm_adamw_step(ps, g + LO, ms, vs, HI - LO, hp, 2);
    for (int i = 0; i < LEN; i++) {
        int inside = i >= LO && i < HI;
        cr_expect(inside ? p[i] != p0[i] : p[i] == p0[i] && m[i] == m0[i] &&
                                                  v[i] == v0[i],
                  "element %d %s", i, inside ? "not updated" : "touched");
        if (inside)
            cr_expect(p[i] == ps[i - LO] && m[i] == ms[i - LO] &&
                          v[i] == vs[i - LO],
                      "element %d differs from the same update made alone", i);
    }
    float q[LEN], q0[LEN], b[LEN];
    fill(q, LEN), fill(b, LEN), memcpy(q0, q, sizeof q);
    tm_sgd_step(q + LO, g + LO, b + LO, HI - LO,
                (tm_sgd_params){.lr = 0.1, .momentum = 0.9}, 2);
    for (int i = 0; i < LEN; i++)
        cr_expect((i >= LO && i < HI) == (q[i] != q0[i]),
                  "SGD element %d wrongly %s", i,
                  q[i] != q0[i] ? "touched" : "untouched");
}

Test(optim, params_check_rejects_what_pytorch_rejects)
{
    cr_expect_null(tm_adamw_params_check(TM_ADAMW_DEFAULTS));
    cr_expect_null(tm_sgd_params_check((tm_sgd_params){.lr = 0.1}));
    struct {
        tm_adamw_params hp;
        const char *field;
    } bad[] = {
        {{.lr = -1, .beta1 = 0.9, .beta2 = 0.999}, "learning rate"},
        {{.lr = NAN, .beta1 = 0.9, .beta2 = 0.999}, "learning rate"},
        {{.lr = 1, .beta1 = 1.0, .beta2 = 0.999}, "beta1"},
        {{.lr = 1, .beta1 = 0.9, .beta2 = -0.1}, "beta2"},
        {{.lr = 1, .beta1 = 0.9, .beta2 = 0.9, .eps = -1}, "eps"},
        {{.lr = 1, .beta1 = 0.9, .beta2 = 0.9, .weight_decay = -1}, "decay"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *msg = tm_adamw_params_check(bad[i].hp);
        cr_expect(msg != NULL && strstr(msg, bad[i].field) != NULL,
                  "case %zu: message \"%s\" should name %s", i,
                  msg ? msg : "(null)", bad[i].field);
    }
    cr_expect_not_null(tm_sgd_params_check((tm_sgd_params){.lr = -0.1}));
    cr_expect_not_null(
        tm_sgd_params_check((tm_sgd_params){.lr = 0.1, .momentum = -1}));
    cr_expect_not_null(
        tm_sgd_params_check((tm_sgd_params){.lr = 0.1, .weight_decay = NAN}));
}

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

Test(optim, steps_charge_their_cost_once)
{
    float p[N], g[N], m[N], v[N];
    fill(p, N), fill(g, N);
    struct {
        int which; /* 0 plain SGD, 1 momentum SGD, 2 AdamW */
        double flops, bytes;
    } cases[] = {{0, 4.0 * N, 12.0 * N},
                 {1, 6.0 * N, 20.0 * N},
                 {2, 14.0 * N, 28.0 * N}};
    for (int c = 0; c < 3; c++) {
        cost_log log = {0};
        tm_cost_set_hook(log_cost, &log);
        if (cases[c].which == 2)
            tm_adamw_step(p, g, m, v, N, TM_ADAMW_DEFAULTS, 1);
        else
            tm_sgd_step(p, g, m, N,
                        (tm_sgd_params){.lr = 0.1,
                                        .momentum = cases[c].which ? 0.9 : 0},
                        1);
        tm_cost_set_hook(NULL, NULL);
        cr_expect(log.calls == 1 && log.flops == cases[c].flops &&
                      log.bytes == cases[c].bytes,
                  "case %d: %d calls, %g flops, %g bytes", c, log.calls,
                  log.flops, log.bytes);
    }
}

/* Every instruction set's loops against the portable ones, bitwise, over
 * lengths around the vector widths (tails of every size), both step kinds
 * (first and later) and momentum on and off, through three steps. */
Test(optim, every_isa_path_matches_the_portable_loops_bitwise)
{
    enum { MAXN = 70 };
    static const size_t lens[] = {0, 1, 7, 15, 16, 17, 31, 33, 64, MAXN};
    tm_sgd_params sgd[2] = {{0.05, 0.9, 5e-4}, {0.1, 0.0, 1e-3}};
    tm_adamw_params adamw = TM_ADAMW_DEFAULTS;
    for (int isa = TM_ISA_AVX2; isa < TM_ISA_COUNT; isa++) {
        if (!tm_isa_supported((tm_isa)isa)) continue;
        for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
            size_t n = lens[l];
            float g[MAXN], p0[MAXN], p1[MAXN], a0[MAXN], a1[MAXN], b0[MAXN], b1[MAXN];
            fill(p0, MAXN);
            memcpy(p1, p0, sizeof p0);
            poison(a0, MAXN);
            poison(a1, MAXN);
            poison(b0, MAXN);
            poison(b1, MAXN);
            for (int h = 0; h < 2; h++) {
                for (long step = 1; step <= 3; step++) {
                    fill(g, MAXN);
                    tm__sgd_step_isa(TM_ISA_GENERIC, p0, g, a0, n, sgd[h], step);
                    tm__sgd_step_isa(isa, p1, g, a1, n, sgd[h], step);
                    cr_expect(memcmp(p0, p1, sizeof p0) == 0 && memcmp(a0, a1, sizeof a0) == 0,
                              "%s sgd n=%zu momentum %g step %ld", tm_isa_name((tm_isa)isa), n,
                              sgd[h].momentum, step);
                }
            }
            for (long step = 1; step <= 3; step++) {
                fill(g, MAXN);
                tm__adamw_step_isa(TM_ISA_GENERIC, p0, g, a0, b0, n, adamw, step);
                tm__adamw_step_isa(isa, p1, g, a1, b1, n, adamw, step);
                cr_expect(memcmp(p0, p1, sizeof p0) == 0 && memcmp(a0, a1, sizeof a0) == 0 &&
                              memcmp(b0, b1, sizeof b0) == 0,
                          "%s adamw n=%zu step %ld", tm_isa_name((tm_isa)isa), n, step);
            }
        }
    }
}
