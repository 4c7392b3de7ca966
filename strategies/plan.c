#include "strategies/plan.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"

static double layer_cost(const tm_mlp_config *cfg, int l)
{
    return (double)cfg->widths[l] * cfg->widths[l + 1];
}

int tm_stages_balance(const tm_mlp_config *cfg, int pp, int *first)
{
    int n = cfg->n_layers;
    if (pp < 1 || pp > n)
        return tm_error(TM_EINVAL, "--pp %d needs between 1 and %d stages (one per layer at most)",
                        pp, n);
    /* best[s][l]: the smallest possible largest-stage cost when the first l
     * layers form s stages; cut[s][l] where the last of them starts. Ties
     * keep the earliest cut, so the split is deterministic. */
    double best[TM_MAX_LAYERS + 1][TM_MAX_LAYERS + 1];
    int cut[TM_MAX_LAYERS + 1][TM_MAX_LAYERS + 1];
    for (int l = 0; l <= n; l++) best[0][l] = l == 0 ? 0 : 1e300;
    for (int s = 1; s <= pp; s++) {
        for (int l = 0; l <= n; l++) {
            best[s][l] = 1e300;
            cut[s][l] = -1;
            double tail = 0;
            for (int j = l - 1; j >= s - 1; j--) {
                tail += layer_cost(cfg, j);
                double worst = best[s - 1][j] > tail ? best[s - 1][j] : tail;
                if (worst < best[s][l] || (worst == best[s][l] && j < cut[s][l])) {
                    best[s][l] = worst;
                    cut[s][l] = j;
                }
            }
        }
    }
    first[pp] = n;
    for (int s = pp, l = n; s >= 1; s--) {
        l = cut[s][l];
        first[s - 1] = l;
    }
    return TM_OK;
}

int tm_stages_parse(const char *spec, const tm_mlp_config *cfg, int pp, int *first)
{
    const char *p = spec;
    int s = 0, total = 0;
    first[0] = 0;
    while (*p != '\0') {
        char *end;
        long k = strtol(p, &end, 10);
        if (end == p || k < 1 || k > TM_MAX_LAYERS || (*end != ',' && *end != '\0'))
            return tm_error(TM_EINVAL, "--stages \"%s\": want positive layer counts like 2,1,1",
                            spec);
        if (s == pp)
            return tm_error(TM_EINVAL, "--stages \"%s\" lists more than --pp %d stages", spec, pp);
        total += (int)k;
        first[++s] = total > TM_MAX_LAYERS ? TM_MAX_LAYERS : total;
        p = *end == ',' ? end + 1 : end;
    }
    if (s != pp)
        return tm_error(TM_EINVAL, "--stages \"%s\" lists %d stages but --pp is %d", spec, s, pp);
    if (total != cfg->n_layers)
        return tm_error(TM_EINVAL, "--stages \"%s\" adds up to %d layers but the model has %d",
                        spec, total, cfg->n_layers);
    return TM_OK;
}

int tm_stage_plan(const tm_mlp_config *cfg, int l0, int l1, int tp, int t, tm_layer_plan *out,
                  size_t *n_params)
{
    size_t off = 0;
    for (int l = l0; l < l1; l++) {
        tm_layer_plan *p = &out[l - l0];
        memset(p, 0, sizeof *p);
        p->layer = l;
        p->in = p->in_local = cfg->widths[l];
        p->out = p->out_local = p->out_padded = cfg->widths[l + 1];
        p->activation = l < cfg->n_layers - 1;
        if (tp > 1) {
            if (l > l0 && out[l - l0 - 1].split == TM_SPLIT_COLUMN && !out[l - l0 - 1].gather) {
                /* The row half of a pair: its inputs are the column half's
                 * outputs, already split. */
                p->split = TM_SPLIT_ROW;
                p->in_local = p->in / tp;
                p->row0 = t * p->in_local;
            } else {
                p->split = TM_SPLIT_COLUMN;
                p->gather = l + 1 == l1; /* no partner left in this stage */
                if (!p->gather && p->out % tp != 0)
                    return tm_error(TM_EINVAL,
                                    "layer %d has %d outputs, which tp=%d does not divide (a "
                                    "column/row pair splits them evenly)", l, p->out, tp);
                p->out_padded = (p->out + tp - 1) / tp * tp;
                p->out_local = p->out_padded / tp;
                p->row0 = t * p->out_local;
            }
        }
        p->w_off = off;
        p->w_len = (size_t)p->out_local * p->in_local;
        p->b_off = off + p->w_len;
        p->b_len = (size_t)p->out_local;
        off = p->b_off + p->b_len;
    }
    *n_params = off;
    return TM_OK;
}
