#include "strategies/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "runtime/status.h"

int tm_model_begin(tm_model *m, const char *family, int max_tensors)
{
    memset(m, 0, sizeof *m);
    m->family = family;
    m->tensors = calloc((size_t)max_tensors, sizeof *m->tensors);
    if (m->tensors == NULL)
        return tm_error(TM_EHOSTMEM, "cannot allocate a table of %d tensors", max_tensors);
    m->loss = tm_loss_softmax_xent;
    return TM_OK;
}

int tm_model_tensor(tm_model *m, const char *name, int ndim, int rows, int cols, int groups,
                    int decay)
{
    tm_tensor *t = &m->tensors[m->n_tensors];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = rows;
    t->shape[1] = ndim == 2 ? cols : 1;
    t->groups = groups;
    t->decay = decay;
    t->layer = -1;
    return m->n_tensors++;
}

tm_layer *tm_model_layer(tm_model *m, const tm_layer_kind *kind, int in_width, int out_width,
                         const int *tensors, int n_tensors)
{
    tm_layer *l = &m->layers[m->n_layers];
    memset(l, 0, sizeof *l);
    l->kind = kind;
    l->index = m->n_layers++;
    l->in_width = in_width;
    l->out_width = out_width;
    l->n_tensors = n_tensors;
    memcpy(l->tensor, tensors, sizeof(int) * (size_t)n_tensors);
    return l;
}

int tm_model_finish(tm_model *m)
{
    size_t off = 0;
    for (int l = 0; l < m->n_layers; l++) {
        const tm_layer *ly = &m->layers[l];
        if (l > 0 && m->layers[l - 1].out_width != ly->in_width)
            return tm_error(TM_EINVAL, "layer %d takes %d inputs but layer %d gives %d", l,
                            ly->in_width, l - 1, m->layers[l - 1].out_width);
        for (int k = 0; k < ly->n_tensors; k++) {
            tm_tensor *t = &m->tensors[ly->tensor[k]];
            if (t->layer >= 0) continue; /* tied: stored by an earlier layer */
            t->layer = l;
            t->off = off;
            off += (size_t)t->shape[0] * (size_t)t->shape[1];
        }
    }
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].layer < 0)
            return tm_error(TM_EINVAL, "tensor %s belongs to no layer", m->tensors[i].name);
    m->n_params = off;
    return TM_OK;
}

void tm_model_destroy(tm_model *m)
{
    free(m->tensors);
    free(m->cfg);
    memset(m, 0, sizeof *m);
}

int tm_model_find(const tm_model *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return i;
    return -1;
}

int tm_model_units(const tm_model *m, int *unit)
{
    int n = 0;
    for (int l = 0; l < m->n_layers; l++)
        if (m->layers[l].attach == TM_ATTACH_NONE) unit[l] = n++;
    /* An attached layer takes the unit of its neighbour: forwards for
     * ATTACH_NEXT (the next unit layer), backwards for ATTACH_PREV. */
    for (int l = m->n_layers - 1, next = n - 1; l >= 0; l--) {
        if (m->layers[l].attach == TM_ATTACH_NONE) next = unit[l];
        else if (m->layers[l].attach == TM_ATTACH_NEXT) unit[l] = next;
    }
    for (int l = 0, prev = 0; l < m->n_layers; l++) {
        if (m->layers[l].attach == TM_ATTACH_NONE) prev = unit[l];
        else if (m->layers[l].attach == TM_ATTACH_PREV) unit[l] = prev;
    }
    return n;
}

const char *tm_model_unit_name(const tm_model *m)
{
    return m->layers[0].attach == TM_ATTACH_NONE ? "layer" : "block";
}

double tm_model_flops_per_sample(const tm_model *m)
{
    double f = 0;
    for (int l = 0; l < m->n_layers; l++)
        f += m->layers[l].kind->flops(&m->layers[l], m->rows_per_sample);
    return f;
}

int tm_loss_softmax_xent(const tm_layer_plan *last, const tm_layer_ctx *c, float *dlogits,
                         const float *logits, const int *targets, int rows, float grad_scale,
                         double *loss_sum, double *correct)
{
    (void)c;
    int classes = last->out_w;
    float mean = tm_softmax_xent_forward_backward(dlogits, NULL, logits, targets, rows, classes,
                                                  grad_scale);
    *loss_sum += (double)mean * rows;
    if (dlogits == NULL && correct != NULL) *correct += tm_accuracy(logits, targets, rows, classes);
    return TM_OK;
}
