#include "strategies/checkpoint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/safetensors.h"

#define NAME_LEN 64

static const char *state_name(tm_optimizer opt, int i)
{
    if (opt == TM_OPT_ADAMW) return i == 0 ? "exp_avg" : "exp_avg_sq";
    return "momentum_buffer";
}

static const char *opt_name(tm_optimizer opt) { return opt == TM_OPT_ADAMW ? "adamw" : "sgd"; }

int tm_model_state_init(tm_model_state *m, const tm_mlp_config *cfg, tm_optimizer opt,
                        double momentum)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->opt = opt;
    m->n_params = tm_mlp_param_count(cfg);
    m->n_opt_state = opt == TM_OPT_ADAMW ? 2 : momentum != 0.0;
    m->params = calloc(m->n_params, sizeof(float));
    int ok = m->params != NULL;
    for (int i = 0; i < m->n_opt_state; i++) {
        m->opt_state[i] = calloc(m->n_params, sizeof(float));
        ok = ok && m->opt_state[i] != NULL;
    }
    if (ok) return TM_OK;
    size_t n = m->n_params; /* the free below clears it */
    tm_model_state_free(m);
    return tm_error(TM_EHOSTMEM, "cannot allocate %zu parameters (and the optimizer's state) in "
                    "host memory", n);
}

void tm_model_state_free(tm_model_state *m)
{
    free(m->params);
    for (int i = 0; i < 2; i++) free(m->opt_state[i]);
    memset(m, 0, sizeof *m);
}

/* The tensors of a model state in checkpoint order: per layer weight,
 * bias, then the optimizer state of each. */
typedef struct {
    char name[NAME_LEN];
    uint64_t shape[2];
    int ndim;
    float *data;
} entry;

static int entries(const tm_model_state *r, entry **out)
{
    const tm_mlp_config *cfg = &r->cfg;
    int per = 2 * (1 + r->n_opt_state), n = cfg->n_layers * per, k = 0;
    entry *e = calloc((size_t)n, sizeof *e);
    if (e == NULL) return -1;
    for (int l = 0; l < cfg->n_layers; l++) {
        size_t off[2] = {tm_mlp_weight_offset(cfg, l), tm_mlp_bias_offset(cfg, l)};
        for (int s = 0; s <= r->n_opt_state; s++) {
            float *base = s == 0 ? r->params : r->opt_state[s - 1];
            for (int t = 0; t < 2; t++, k++) {
                const char *what = t == 0 ? "weight" : "bias";
                if (s == 0)
                    snprintf(e[k].name, NAME_LEN, "layers.%d.%s", l, what);
                else
                    snprintf(e[k].name, NAME_LEN, "optimizer.layers.%d.%s.%s", l, what,
                             state_name(r->opt, s - 1));
                e[k].shape[0] = (uint64_t)cfg->widths[l + 1];
                e[k].shape[1] = (uint64_t)cfg->widths[l];
                e[k].ndim = t == 0 ? 2 : 1;
                e[k].data = base + off[t];
            }
        }
    }
    *out = e;
    return n;
}

int tm_checkpoint_save(tm_outfile *out, const tm_model_state *r)
{
    const char *path = tm_outfile_path(out);
    const tm_train_position *pos = &r->pos;
    entry *e;
    int n = entries(r, &e);
    if (n < 0) return tm_error(TM_EHOSTMEM, "%s: cannot allocate the tensor list", path);
    tm_st_tensor *t = calloc((size_t)n, sizeof *t);
    if (t == NULL) {
        free(e);
        return tm_error(TM_EHOSTMEM, "%s: cannot allocate the tensor list", path);
    }
    for (int i = 0; i < n; i++)
        t[i] = (tm_st_tensor){e[i].name, TM_ST_F32, e[i].ndim, e[i].shape, e[i].data};
    char model[256], step[32], epoch[32], epoch_step[32], seed[32];
    tm_mlp_format(&r->cfg, model, sizeof model);
    snprintf(step, sizeof step, "%ld", pos->step);
    snprintf(epoch, sizeof epoch, "%d", pos->epoch);
    snprintf(epoch_step, sizeof epoch_step, "%ld", pos->epoch_step);
    snprintf(seed, sizeof seed, "%" PRIu64, pos->data_seed);
    tm_st_meta meta[] = {
        {"format", "tinymesh"},
        {"model", model},
        {"activation", tm_activation_name(r->cfg.act)},
        {"optimizer", opt_name(r->opt)},
        {"step", step},
        {"epoch", epoch},
        {"epoch_step", epoch_step},
        {"data_seed", seed},
    };
    int st = tm_safetensors_write_to(out, t, n, meta, (int)(sizeof meta / sizeof meta[0]));
    free(t);
    free(e);
    return st;
}

static int meta_long(const tm_st_file *f, const char *path, const char *key, long long min,
                     long long *out)
{
    const char *v = tm_st_meta_get(f, key);
    char *end;
    if (v == NULL) return tm_error(TM_EFORMAT, "%s: __metadata__ lacks \"%s\"", path, key);
    long long x = strtoll(v, &end, 10);
    if (*v == '\0' || *end != '\0' || x < min)
        return tm_error(TM_EFORMAT, "%s: __metadata__ \"%s\" is not a valid count: \"%s\"", path,
                        key, v);
    *out = x;
    return TM_OK;
}

int tm_checkpoint_load(const char *path, tm_model_state *r, int *resumed)
{
    tm_optimizer opt = r->opt;
    tm_train_position *pos = &r->pos;
    *resumed = 0;
    tm_st_file *f;
    TM_CHECK(tm_safetensors_open(&f, path));
    entry *e;
    int n = entries(r, &e), st = TM_OK;
    if (n < 0) {
        tm_safetensors_close(f);
        return tm_error(TM_EHOSTMEM, "%s: cannot allocate the tensor list", path);
    }
    const char *saved_opt = tm_st_meta_get(f, "optimizer");
    int has_state = saved_opt != NULL && tm_st_meta_get(f, "step") != NULL;
    if (has_state && strcmp(saved_opt, opt_name(opt)) != 0)
        st = tm_error(TM_EINVAL, "%s: holds %s optimizer state but training uses %s", path,
                      saved_opt, opt_name(opt));
    int parameters = 2 * r->cfg.n_layers;
    for (int i = 0; st == TM_OK && i < n; i++) {
        int is_param = strncmp(e[i].name, "layers.", 7) == 0;
        if (!is_param && !has_state) continue;
        if (tm_st_find(f, e[i].name) == NULL) {
            st = tm_error(TM_EINVAL, "%s: no tensor \"%s\" (needed by the model%s)", path,
                          e[i].name, is_param ? "" : "'s optimizer");
            break;
        }
        st = tm_st_read_f32(f, e[i].name, e[i].data, e[i].ndim, e[i].shape);
    }
    /* Tensors the model does not have mean the file is another model's. */
    for (int i = 0; st == TM_OK && i < tm_st_count(f); i++) {
        const char *name = tm_st_at(f, i)->name;
        if (strncmp(name, "layers.", 7) != 0) continue;
        int known = 0;
        for (int j = 0; j < n && !known; j++) known = strcmp(e[j].name, name) == 0;
        if (!known)
            st = tm_error(TM_EINVAL, "%s: tensor \"%s\" is not in a model with %d layers (%d "
                          "parameter tensors)", path, name, r->cfg.n_layers, parameters);
    }
    if (st == TM_OK && has_state) {
        long long step, epoch, epoch_step, seed;
        st = meta_long(f, path, "step", 0, &step);
        if (st == TM_OK) st = meta_long(f, path, "epoch", 0, &epoch);
        if (st == TM_OK) st = meta_long(f, path, "epoch_step", 0, &epoch_step);
        if (st == TM_OK) st = meta_long(f, path, "data_seed", 0, &seed);
        if (st == TM_OK) {
            pos->step = (long)step;
            pos->epoch = (int)epoch;
            pos->epoch_step = (long)epoch_step;
            pos->data_seed = (uint64_t)seed;
            *resumed = 1;
        }
    }
    free(e);
    tm_safetensors_close(f);
    return st;
}
