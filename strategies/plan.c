#include "strategies/plan.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"

/* The FLOPs of each unit (its attached layers included), per row. */
static int unit_costs(const tm_model *m, double *cost, int *unit)
{
    int n = tm_model_units(m, unit);
    for (int u = 0; u < n; u++) cost[u] = 0;
    for (int l = 0; l < m->n_layers; l++) cost[unit[l]] += m->layers[l].kind->flops(&m->layers[l], 1);
    return n;
}

/* first[] over units into first[] over layers: stage s starts at the first
 * layer whose unit is ufirst[s]. */
static void units_to_layers(const tm_model *m, const int *unit, int pp, const int *ufirst,
                            int *first)
{
    for (int s = 0; s < pp; s++) {
        int l = 0;
        while (l < m->n_layers && unit[l] < ufirst[s]) l++;
        first[s] = l;
    }
    first[pp] = m->n_layers;
}

int tm_stages_balance(const tm_model *m, int pp, int *first)
{
    double cost[TM_MAX_LAYERS];
    int unit[TM_MAX_LAYERS], ufirst[TM_MAX_LAYERS + 1];
    int n = unit_costs(m, cost, unit);
    if (pp < 1 || pp > n)
        return tm_error(TM_EINVAL, "--pp %d needs between 1 and %d stages (one per %s at most)",
                        pp, n, tm_model_unit_name(m));
    /* best[s][u]: the smallest possible largest-stage cost when the first u
     * units form s stages; cut[s][u] where the last of them starts. Ties
     * keep the earliest cut, so the split is deterministic. */
    static _Thread_local double best[TM_MAX_LAYERS + 1][TM_MAX_LAYERS + 1];
    static _Thread_local int cut[TM_MAX_LAYERS + 1][TM_MAX_LAYERS + 1];
    for (int u = 0; u <= n; u++) best[0][u] = u == 0 ? 0 : 1e300;
    for (int s = 1; s <= pp; s++) {
        for (int u = 0; u <= n; u++) {
            best[s][u] = 1e300;
            cut[s][u] = -1;
            double tail = 0;
            for (int j = u - 1; j >= s - 1; j--) {
                tail += cost[j];
                double worst = best[s - 1][j] > tail ? best[s - 1][j] : tail;
                if (worst < best[s][u] || (worst == best[s][u] && j < cut[s][u])) {
                    best[s][u] = worst;
                    cut[s][u] = j;
                }
            }
        }
    }
    ufirst[pp] = n;
    for (int s = pp, u = n; s >= 1; s--) {
        u = cut[s][u];
        ufirst[s - 1] = u;
    }
    units_to_layers(m, unit, pp, ufirst, first);
    return TM_OK;
}

int tm_stages_parse(const char *spec, const tm_model *m, int pp, int *first)
{
    double cost[TM_MAX_LAYERS];
    int unit[TM_MAX_LAYERS], ufirst[TM_MAX_LAYERS + 1];
    int n = unit_costs(m, cost, unit);
    const char *what = m->layers[0].attach == TM_ATTACH_NONE ? "layer" : "block";
    const char *p = spec;
    int s = 0, total = 0;
    ufirst[0] = 0;
    while (*p != '\0') {
        char *end;
        long k = strtol(p, &end, 10);
        if (end == p || k < 1 || k > TM_MAX_LAYERS || (*end != ',' && *end != '\0'))
            return tm_error(TM_EINVAL, "--stages \"%s\": want positive %s counts like 2,1,1",
                            spec, what);
        if (s == pp)
            return tm_error(TM_EINVAL, "--stages \"%s\" lists more than the pipeline's %d stages "
                            "(--pp x --virtual-stages)", spec, pp);
        total += (int)k;
        ufirst[++s] = total > TM_MAX_LAYERS ? TM_MAX_LAYERS : total;
        p = *end == ',' ? end + 1 : end;
    }
    if (s != pp)
        return tm_error(TM_EINVAL, "--stages \"%s\" lists %d stages but the pipeline has %d "
                        "(--pp x --virtual-stages)", spec, s, pp);
    if (total != n)
        return tm_error(TM_EINVAL, "--stages \"%s\" adds up to %d %ss but the model has %d", spec,
                        total, what, n);
    units_to_layers(m, unit, pp, ufirst, first);
    return TM_OK;
}

int tm_stage_plan(const tm_model *m, int l0, int l1, int tp, int t, tm_layer_plan *out,
                  size_t *n_params)
{
    size_t off = 0;
    for (int l = l0; l < l1; l++) {
        tm_layer_plan *p = &out[l - l0];
        const tm_layer *ly = &m->layers[l];
        memset(p, 0, sizeof *p);
        p->model = m;
        p->layer = ly;
        p->tp = tp;
        p->t = t;
        TM_CHECK(ly->kind->plan(p, l > l0 ? &out[l - l0 - 1] : NULL, l + 1 == l1));
        p->own_off = off;
        for (int k = 0; k < ly->n_tensors; k++) {
            tm_shard *s = &p->shard[k];
            const tm_tensor *ten = &m->tensors[ly->tensor[k]];
            s->count = tm_shard_count(ten, s);
            /* A tensor an earlier layer of this stage uses (tied) shares
             * that layer's copy, cut the same way. */
            const tm_shard *earlier = NULL;
            for (int e = l0; e < l && earlier == NULL; e++)
                for (int j = 0; j < m->layers[e].n_tensors; j++)
                    if (m->layers[e].tensor[j] == ly->tensor[k]) earlier = &out[e - l0].shard[j];
            if (earlier != NULL) {
                if (earlier->dim != s->dim || earlier->lo != s->lo || earlier->len != s->len)
                    return tm_error(TM_EINVAL, "tied tensor %s is split differently by layers",
                                    ten->name);
                s->off = earlier->off;
                continue;
            }
            s->owned = 1;
            s->off = off;
            off += s->count;
        }
        p->own_len = off - p->own_off;
    }
    *n_params = off;
    return TM_OK;
}
