/* Random sequences of collectives on split groups, shared by the
 * in-process and the cross-process collectives suites. The includer
 * defines value(seed, rank, i), the exactly summable inputs.
 * Thread-safety: random_fn runs on every device of a world. */
#ifndef TM_TEST_RANDOM_OPS_H
#define TM_TEST_RANDOM_OPS_H

#include "runtime/collectives.h"
#include "tests/guarded.h"

/* Random sequences of collectives on random sub-groups made by split. Every
 * device draws the same sequence from a shared seed, so the calls match. */
typedef struct {
    unsigned seed;
    const size_t *counts; /* the counts to draw from */
    size_t n_counts;
    findings f;
} random_job;

static unsigned next(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 16;
}

static int random_fn(tm_device *dev, void *arg)
{
    random_job *j = arg;
    tm_comm *world = tm_device_comm(dev);
    int me = tm_device_id(dev);
    unsigned s = j->seed;
    for (int iter = 0; iter < 40; iter++) {
        int ncolors = 1 + (int)(next(&s) % 3);
        unsigned salt = next(&s);
        /* Color and key from the device id and the shared salt. */
        int color = (int)((((unsigned)me * 2654435761u) ^ salt) % (unsigned)ncolors);
        int key = (int)(((unsigned)me * 40503u + salt) % 97u);
        tm_comm *g;
        TM_CHECK(tm_comm_split(world, color, key, &g));
        int gn = tm_comm_size(g), gr = tm_comm_rank(g);
        size_t cnt = j->counts[next(&s) % j->n_counts], skew = (size_t)iter % 4;
        int op = (int)(next(&s) % 4);
        size_t out_count = op == 1 ? (size_t)gn * cnt : cnt;
        guarded ga, gb;
        float *a = guarded_alloc(dev, &ga, (size_t)gn * cnt, skew, GUARD_IN);
        float *b = guarded_alloc(dev, &gb, out_count, skew, GUARD_OUT);
        if (a == NULL || b == NULL) return TM_ENOMEM;
        for (size_t i = 0; i < (size_t)gn * cnt; i++) a[i] = value(iter, tm_comm_device(g, gr), i);
        int st;
        switch (op) {
        case 0:
            st = tm_allreduce(g, a, b, cnt, TM_SUM);
            for (size_t i = 0; st == TM_OK && i < cnt; i++) {
                float sum = 0;
                for (int q = 0; q < gn; q++) sum += value(iter, tm_comm_device(g, q), i);
                value_check(&j->f, me, "allreduce", b, i, sum);
            }
            break;
        case 1:
            st = tm_allgather(g, a, b, cnt);
            for (int q = 0; st == TM_OK && q < gn; q++)
                for (size_t i = 0; i < cnt; i++)
                    value_check(&j->f, me, "allgather", b, (size_t)q * cnt + i,
                                value(iter, tm_comm_device(g, q), i));
            break;
        case 2:
            st = tm_reduce_scatter(g, a, b, cnt, TM_SUM);
            for (size_t i = 0; st == TM_OK && i < cnt; i++) {
                float sum = 0;
                for (int q = 0; q < gn; q++)
                    sum += value(iter, tm_comm_device(g, q), (size_t)gr * cnt + i);
                value_check(&j->f, me, "reduce_scatter", b, i, sum);
            }
            break;
        default:
            st = tm_barrier(g);
            break;
        }
        tm_comm_destroy(g);
        if (st != TM_OK) return st;
        guards_check(&j->f, me, "input", &ga);
        guards_check(&j->f, me, "output", &gb);
        guarded_free(dev, &gb);
        guarded_free(dev, &ga);
    }
    return TM_OK;
}

#endif
