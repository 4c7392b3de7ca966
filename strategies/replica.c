#include "strategies/replica.h"

#include <string.h>

#include "kernels/ops.h"
#include "runtime/status.h"

static int widest(const tm_mlp_config *cfg)
{
    int w = 0;
    for (int i = 0; i <= cfg->n_layers; i++)
        if (cfg->widths[i] > w) w = cfg->widths[i];
    return w;
}

int tm_replica_create(tm_replica *r, tm_device *dev, const tm_mlp_config *cfg, tm_optimizer opt,
                      double momentum)
{
    memset(r, 0, sizeof *r);
    r->cfg = *cfg;
    r->dev = dev;
    r->n_params = tm_mlp_param_count(cfg);
    size_t bytes = r->n_params * sizeof(float);
    r->params = tm_device_alloc(dev, bytes, TM_TAG_PARAM);
    if (r->params == NULL) return TM_ENOMEM;
    r->grads = tm_device_alloc(dev, bytes, TM_TAG_GRAD);
    if (r->grads == NULL) return TM_ENOMEM;
    r->n_opt_state = opt == TM_OPT_ADAMW ? 2 : momentum != 0.0;
    for (int i = 0; i < r->n_opt_state; i++) {
        r->opt_state[i] = tm_device_alloc(dev, bytes, TM_TAG_OPTIMIZER);
        if (r->opt_state[i] == NULL) return TM_ENOMEM;
        /* Optimizers initialise their state on step 1; zeros make a
         * checkpoint taken before any step well defined. */
        memset(r->opt_state[i], 0, bytes);
    }
    return TM_OK;
}

void tm_replica_destroy(tm_replica *r)
{
    if (r->dev == NULL) return;
    for (int i = 0; i < r->n_opt_state; i++) tm_device_free(r->dev, r->opt_state[i]);
    tm_device_free(r->dev, r->grads);
    tm_device_free(r->dev, r->params);
    memset(r, 0, sizeof *r);
}

size_t tm_replica_activation_bytes(const tm_mlp_config *cfg, int rows)
{
    size_t floats = 0;
    for (int l = 1; l <= cfg->n_layers; l++) floats += (size_t)rows * cfg->widths[l];
    if (cfg->act == TM_ACT_GELU) floats *= 2; /* pre-activations kept too */
    floats += 3 * (size_t)rows * widest(cfg); /* gradient ping-pong + GELU scratch */
    return floats * sizeof(float);
}

/* Activation buffers of one micro-batch, carved from one arena block. */
typedef struct {
    float *out[TM_MAX_LAYERS + 1]; /* out[l]: layer l-1's activated output */
    float *pre[TM_MAX_LAYERS + 1]; /* GELU only: layer l-1's pre-activation */
    float *grad[3];                /* (rows, widest) each */
    void *block;
} acts;

static int acts_alloc(tm_replica *r, int rows, acts *a)
{
    const tm_mlp_config *cfg = &r->cfg;
    memset(a, 0, sizeof *a);
    a->block = tm_device_alloc(r->dev, tm_replica_activation_bytes(cfg, rows), TM_TAG_ACTIVATION);
    if (a->block == NULL) return TM_ENOMEM;
    float *p = a->block;
    for (int l = 1; l <= cfg->n_layers; l++) {
        a->out[l] = p;
        p += (size_t)rows * cfg->widths[l];
        if (cfg->act == TM_ACT_GELU) {
            a->pre[l] = p;
            p += (size_t)rows * cfg->widths[l];
        }
    }
    for (int i = 0; i < 3; i++) {
        a->grad[i] = p;
        p += (size_t)rows * widest(cfg);
    }
    return TM_OK;
}

/* Forward through every layer; a->out[n_layers] holds the logits. */
static void forward(tm_replica *r, acts *a, const float *x, int rows)
{
    const tm_mlp_config *cfg = &r->cfg;
    a->out[0] = (float *)x;
    for (int l = 0; l < cfg->n_layers; l++) {
        int in = cfg->widths[l], out = cfg->widths[l + 1];
        const float *w = r->params + tm_mlp_weight_offset(cfg, l);
        const float *b = r->params + tm_mlp_bias_offset(cfg, l);
        if (l == cfg->n_layers - 1) {
            tm_linear_forward(a->out[l + 1], a->out[l], w, b, rows, in, out);
        } else if (cfg->act == TM_ACT_RELU) {
            tm_linear_relu_forward(a->out[l + 1], a->out[l], w, b, rows, in, out);
        } else {
            tm_linear_forward(a->pre[l + 1], a->out[l], w, b, rows, in, out);
            tm_gelu_forward(a->out[l + 1], a->pre[l + 1], (size_t)rows * out);
        }
    }
}

/* The first gradient buffer that is neither x nor y. */
static float *other(acts *a, const float *x, const float *y)
{
    for (int i = 0; i < 3; i++)
        if (a->grad[i] != x && a->grad[i] != y) return a->grad[i];
    return NULL;
}

int tm_replica_train_micro(tm_replica *r, const float *x, const int *labels, int rows,
                           float grad_scale, double *loss_sum)
{
    const tm_mlp_config *cfg = &r->cfg;
    int L = cfg->n_layers, classes = cfg->widths[L];
    acts a;
    TM_CHECK(acts_alloc(r, rows, &a));
    forward(r, &a, x, rows);
    float *d = a.grad[0];
    float mean = tm_softmax_xent_forward_backward(d, NULL, a.out[L], labels, rows, classes,
                                                  grad_scale);
    *loss_sum = (double)mean * rows;
    for (int l = L - 1; l >= 0; l--) {
        int in = cfg->widths[l], out = cfg->widths[l + 1];
        float *dw = r->grads + tm_mlp_weight_offset(cfg, l);
        float *db = r->grads + tm_mlp_bias_offset(cfg, l);
        const float *w = r->params + tm_mlp_weight_offset(cfg, l);
        float *dinp = l > 0 ? other(&a, d, NULL) : NULL;
        size_t n = (size_t)rows * in;
        if (dinp != NULL) memset(dinp, 0, n * sizeof(float));
        tm_linear_backward(dinp, dw, db, d, a.out[l], w, rows, in, out);
        if (l == 0) break;
        if (cfg->act == TM_ACT_RELU) {
            tm_relu_backward_inplace(dinp, a.out[l], n);
            d = dinp;
        } else {
            float *dpre = other(&a, d, dinp);
            memset(dpre, 0, n * sizeof(float));
            tm_gelu_backward(dpre, dinp, a.pre[l], n);
            d = dpre;
        }
    }
    tm_device_free(r->dev, a.block);
    return TM_OK;
}

int tm_replica_eval(tm_replica *r, const float *x, const int *labels, int rows, double *loss_sum,
                    int *correct)
{
    const tm_mlp_config *cfg = &r->cfg;
    int L = cfg->n_layers;
    /* Two ping-pong buffers (and a GELU pre-activation scratch) suffice
     * when nothing is kept for backward. */
    size_t w = (size_t)widest(cfg) * rows;
    float *buf = tm_device_alloc(r->dev, 3 * w * sizeof(float), TM_TAG_ACTIVATION);
    if (buf == NULL) return TM_ENOMEM;
    const float *in = x;
    for (int l = 0; l < L; l++) {
        float *out = buf + (l % 2) * w;
        const float *wt = r->params + tm_mlp_weight_offset(cfg, l);
        const float *b = r->params + tm_mlp_bias_offset(cfg, l);
        int IN = cfg->widths[l], OUT = cfg->widths[l + 1];
        if (l < L - 1 && cfg->act == TM_ACT_RELU) {
            tm_linear_relu_forward(out, in, wt, b, rows, IN, OUT);
        } else {
            float *lin = l < L - 1 ? buf + 2 * w : out;
            tm_linear_forward(lin, in, wt, b, rows, IN, OUT);
            if (l < L - 1) tm_gelu_forward(out, lin, (size_t)rows * OUT);
        }
        in = out;
    }
    *loss_sum = (double)tm_softmax_xent_forward_backward(NULL, NULL, in, labels, rows,
                                                         cfg->widths[L], 1.0f) * rows;
    *correct = tm_accuracy(in, labels, rows, cfg->widths[L]);
    tm_device_free(r->dev, buf);
    return TM_OK;
}
