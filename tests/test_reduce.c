/* Suite `reduce`: the collectives' element loops (runtime/reduce.h), every
 * path this CPU runs against the portable reference, bitwise: sums with and
 * without scaling, copies, one or two destinations, in place, streaming
 * stores on and off, every alignment, lengths around the vector widths;
 * nothing written outside the destination range. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "runtime/reduce.h"

enum { MAXN = 300, PAD = 24, LEN = MAXN + 2 * PAD };
#define SENTINEL (-555.5f)

static float value(unsigned i, unsigned salt)
{
    unsigned x = (i + 1) * 2654435761u ^ salt * 40503u;
    return (float)(x >> 8) / (float)(1u << 24) * 4.0f - 2.0f;
}

typedef struct {
    _Alignas(64) float a[LEN], b[LEN], out[LEN], dst[LEN];
} buffers;

static void fill(buffers *x)
{
    for (unsigned i = 0; i < LEN; i++) {
        x->a[i] = value(i, 1);
        x->b[i] = value(i, 2);
        x->out[i] = SENTINEL;
        x->dst[i] = SENTINEL;
    }
}

static const size_t lens[] = {0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 64, 100, 255, MAXN};

/* One call on the reference and on `path`, both from the same inputs. kind:
 * 0 reduce into out and dst, 1 reduce into out only, 2 into dst only, 3
 * reduce accumulating into a (dst == a), 4 copy to both, 5 copy to out, 6
 * copy to dst. */
static int same(tm__loops path, int kind, size_t n, size_t off, float scale, int how)
{
    static buffers r, t;
    fill(&r);
    fill(&t);
    buffers *x[2] = {&r, &t};
    for (int v = 0; v < 2; v++) {
        tm__loops p = v ? path : TM__LOOPS_REF;
        float *a = x[v]->a + PAD + off, *b = x[v]->b + PAD + off;
        float *out = x[v]->out + PAD + off, *dst = x[v]->dst + PAD + off;
        switch (kind) {
        case 0: tm__reduce_floats_on(p, out, dst, a, b, n, scale, how); break;
        case 1: tm__reduce_floats_on(p, out, NULL, a, b, n, scale, how); break;
        case 2: tm__reduce_floats_on(p, NULL, dst, a, b, n, scale, how); break;
        case 3: tm__reduce_floats_on(p, NULL, a, a, b, n, scale, how); break;
        case 4: tm__copy_floats_on(p, out, dst, a, n, how); break;
        case 5: tm__copy_floats_on(p, out, NULL, a, n, how); break;
        default: tm__copy_floats_on(p, NULL, dst, a, n, how); break;
        }
    }
    /* Streaming stores are ordered by a fence before anyone reads them. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return memcmp(&r, &t, sizeof r) == 0;
}

Test(reduce, every_path_matches_the_reference_bitwise)
{
    int paths = 0;
    for (int p = 1; p < TM__LOOPS_COUNT; p++) {
        if (!tm__loops_supported((tm__loops)p)) continue;
        paths++;
        for (int kind = 0; kind < 7; kind++)
            for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
                for (size_t off = 0; off < 9; off++)
                    for (int how = 0; how < 4; how++)
                        for (int sc = 0; sc < 2; sc++)
                            cr_expect(same((tm__loops)p, kind, lens[l], off, sc ? 0.5f : 1.0f,
                                           how),
                                      "path %d kind %d n=%zu offset %zu how %d scale %s", p,
                                      kind, lens[l], off, how, sc ? "0.5" : "1");
    }
    cr_log_info("%d paths besides the reference", paths);
}

/* The reference itself, against sums written out here. */
Test(reduce, reference_sums_scales_and_copies)
{
    static buffers x;
    fill(&x);
    float *a = x.a + PAD, *b = x.b + PAD, *out = x.out + PAD, *dst = x.dst + PAD;
    tm__reduce_floats_on(TM__LOOPS_REF, out, dst, a, b, 37, 0.5f, 0);
    for (int i = 0; i < 37; i++) {
        cr_expect_eq(out[i], (a[i] + b[i]) * 0.5f, "out[%d]", i);
        cr_expect_eq(dst[i], out[i], "dst[%d]", i);
    }
    cr_expect_eq(out[37], SENTINEL);
    cr_expect_eq(out[-1], SENTINEL);
    tm__copy_floats_on(TM__LOOPS_REF, NULL, dst, b, 5, 0);
    for (int i = 0; i < 5; i++) cr_expect_eq(dst[i], b[i], "copy %d", i);
    cr_expect(tm__loops_supported(TM__LOOPS_REF));
    cr_expect_not(tm__loops_supported(TM__LOOPS_COUNT));
}
