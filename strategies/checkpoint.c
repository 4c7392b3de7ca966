#include "strategies/checkpoint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/status.h"
#include "strategies/safetensors.h"

#define NAME_LEN (TM_NAME_LEN + 48)

int tm_model_state_init(tm_model_state *m, const tm_model *model, const tm_optim_config *opt)
{
    memset(m, 0, sizeof *m);
    m->model = model;
    m->opt = opt->kind;
    m->n_params = model->n_params;
    m->n_opt_state = tm_optimizer_state_count(opt);
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
    for (int i = 0; i < TM_OPT_MAX_STATE; i++) free(m->opt_state[i]);
    memset(m, 0, sizeof *m);
}

/* The tensors of a model state in checkpoint order: each model tensor,
 * then its optimizer state. */
typedef struct {
    char name[NAME_LEN];
    uint64_t shape[2];
    int ndim;
    int is_param;
    float *data;
} entry;

static int entries(const tm_model_state *r, entry **out)
{
    const tm_model *m = r->model;
    int per = 1 + r->n_opt_state, n = m->n_tensors * per, k = 0;
    entry *e = calloc((size_t)n, sizeof *e);
    if (e == NULL) return -1;
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *t = &m->tensors[i];
        for (int s = 0; s <= r->n_opt_state; s++, k++) {
            float *base = s == 0 ? r->params : r->opt_state[s - 1];
            if (s == 0)
                snprintf(e[k].name, NAME_LEN, "%s", t->name);
            else
                snprintf(e[k].name, NAME_LEN, "optimizer.%s.%s", t->name,
                         tm_optimizer_state_name(r->opt, s - 1));
            e[k].shape[0] = (uint64_t)t->shape[0];
            e[k].shape[1] = (uint64_t)t->shape[1];
            e[k].ndim = t->ndim;
            e[k].is_param = s == 0;
            e[k].data = base + t->off;
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
    tm_model_meta model[TM_MODEL_META];
    int n_model = r->model->meta(r->model, model);
    char step[32], epoch[32], epoch_step[32], seed[32];
    snprintf(step, sizeof step, "%ld", pos->step);
    snprintf(epoch, sizeof epoch, "%d", pos->epoch);
    snprintf(epoch_step, sizeof epoch_step, "%ld", pos->epoch_step);
    snprintf(seed, sizeof seed, "%" PRIu64, pos->data_seed);
    tm_st_meta meta[8 + TM_MODEL_META + TM_DATA_META];
    int k = 0;
    meta[k++] = (tm_st_meta){"format", "tinymesh"};
    for (int i = 0; i < n_model; i++) meta[k++] = (tm_st_meta){model[i].key, model[i].value};
    meta[k++] = (tm_st_meta){"optimizer", tm_optimizer_name(r->opt)};
    meta[k++] = (tm_st_meta){"step", step};
    meta[k++] = (tm_st_meta){"epoch", epoch};
    meta[k++] = (tm_st_meta){"epoch_step", epoch_step};
    meta[k++] = (tm_st_meta){"data_seed", seed};
    for (int i = 0; i < r->n_data; i++) meta[k++] = (tm_st_meta){r->data[i].key, r->data[i].value};
    int st = tm_safetensors_write_to(out, t, n, meta, k);
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

/* The model description in our metadata must be the command's. */
static int check_model(const tm_st_file *f, const char *path, const tm_model *m)
{
    tm_model_meta want[TM_MODEL_META];
    int n = m->meta(m, want);
    for (int i = 0; i < n; i++) {
        const char *have = tm_st_meta_get(f, want[i].key);
        if (have != NULL && strcmp(have, want[i].value) != 0)
            return tm_error(TM_EINVAL, "%s: saved with %s %s, but the command's is %s", path,
                            want[i].key, have, want[i].value);
    }
    return TM_OK;
}

/* A resumed position belongs to its data: the same corpus. */
static int check_data(const tm_st_file *f, const char *path, const tm_model_state *r)
{
    for (int i = 0; i < r->n_data; i++) {
        const char *have = tm_st_meta_get(f, r->data[i].key);
        if (have != NULL && strcmp(have, r->data[i].value) != 0)
            return tm_error(TM_EINVAL,
                            "%s: was trained on other data (%s %s, now %s); --load-weights "
                            "starts a new run from its weights", path, r->data[i].key, have,
                            r->data[i].value);
    }
    return TM_OK;
}

/* The optimizer state in the file must be what the command's optimizer
 * keeps: its kind, and (SGD) momentum buffers exactly when momentum is on. */
static int check_optimizer(const tm_st_file *f, const char *path, const tm_model_state *r,
                           const char *saved)
{
    if (strcmp(saved, tm_optimizer_name(r->opt)) != 0)
        return tm_error(TM_EINVAL, "%s: holds %s optimizer state but training uses %s", path,
                        saved, tm_optimizer_name(r->opt));
    if (r->opt != TM_OPT_SGD) return TM_OK;
    char name[NAME_LEN];
    snprintf(name, sizeof name, "optimizer.%s.momentum_buffer", r->model->tensors[0].name);
    int has = tm_st_find(f, name) != NULL;
    if (has && r->n_opt_state == 0)
        return tm_error(TM_EINVAL, "%s: holds SGD momentum buffers but --momentum is 0", path);
    if (!has && r->n_opt_state > 0)
        return tm_error(TM_EINVAL, "%s: was trained with SGD without momentum (--momentum 0) but "
                        "the command's momentum is not 0", path);
    return TM_OK;
}

/* The model's own namespace: a file tensor starting like one of its names
 * (up to the first dot) is the model's, and must be known. */
static int in_namespace(const tm_model *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++) {
        const char *dot = strchr(m->tensors[i].name, '.');
        size_t len = dot ? (size_t)(dot - m->tensors[i].name) + 1 : strlen(m->tensors[i].name);
        if (strncmp(name, m->tensors[i].name, len) == 0) return 1;
    }
    return 0;
}

int tm_checkpoint_load(const char *path, tm_model_state *r, tm_load_mode mode, int *resumed)
{
    const tm_model *m = r->model;
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
    int has_state = mode == TM_LOAD_RESUME && saved_opt != NULL &&
                    tm_st_meta_get(f, "step") != NULL;
    st = check_model(f, path, m);
    if (st == TM_OK && has_state) st = check_optimizer(f, path, r, saved_opt);
    if (st == TM_OK && has_state) st = check_data(f, path, r);
    for (int i = 0; st == TM_OK && i < n; i++) {
        if (!e[i].is_param && !has_state) continue;
        if (tm_st_find(f, e[i].name) == NULL) {
            st = tm_error(TM_EINVAL, "%s: no tensor \"%s\" (needed by the model%s)", path,
                          e[i].name, e[i].is_param ? "" : "'s optimizer");
            break;
        }
        st = tm_st_read_f32(f, e[i].name, e[i].data, e[i].ndim, e[i].shape);
    }
    /* Tensors the model does not have mean the file is another model's. */
    for (int i = 0; st == TM_OK && i < tm_st_count(f); i++) {
        const char *name = tm_st_at(f, i)->name;
        if (!in_namespace(m, name) || (m->ignores != NULL && m->ignores(name))) continue;
        if (tm_model_find(m, name) < 0)
            st = tm_error(TM_EINVAL, "%s: tensor \"%s\" is not in a model of %d tensors (%d layers)",
                          path, name, m->n_tensors, m->n_layers);
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
