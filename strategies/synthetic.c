#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gemm.h"
#include "runtime/status.h"
#include "strategies/idx.h"
#include "strategies/rng.h"

/* Uniform on [-sqrt 3, sqrt 3): mean 0, variance 1. */
static void fill_unit(float *x, size_t n, tm_rng *r)
{
    const float a = 1.7320508f;
    for (size_t i = 0; i < n; i++) x[i] = (2 * tm_rng_float(r) - 1) * a;
}

int tm_dataset_synthetic(tm_dataset *out, int n, int dim, int classes, uint64_t seed, int split)
{
    memset(out, 0, sizeof *out);
    if (n < 1 || dim < 1) return tm_error(TM_EINVAL, "synthetic data needs samples and inputs");
    if (classes < 2 || classes > TM_SYNTHETIC_MAX_CLASSES)
        return tm_error(TM_EINVAL, "synthetic data has 2 to %d classes, not %d",
                        TM_SYNTHETIC_MAX_CLASSES, classes);
    size_t nx = (size_t)n * dim, nw = (size_t)classes * dim, chunk = 4096;
    float *images = malloc(nx * sizeof(float)), *w = malloc(nw * sizeof(float));
    float *logits = malloc(chunk * (size_t)classes * sizeof(float));
    uint8_t *labels = malloc((size_t)n);
    if (images == NULL || w == NULL || logits == NULL || labels == NULL) {
        free(images);
        free(w);
        free(logits);
        free(labels);
        return tm_error(TM_EHOSTMEM, "cannot allocate %d synthetic samples of %d inputs", n, dim);
    }
    tm_rng r = tm_rng_seed(seed, 2000u + (uint64_t)split), rw = tm_rng_seed(seed, 1999u);
    fill_unit(images, nx, &r);
    fill_unit(w, nw, &rw);
    for (size_t i0 = 0; i0 < (size_t)n; i0 += chunk) {
        int rows = (int)((size_t)n - i0 < chunk ? (size_t)n - i0 : chunk);
        tm_sgemm('N', 'T', rows, classes, dim, 1.0f, images + i0 * dim, dim, w, dim, 0.0f, logits,
                 classes);
        for (int i = 0; i < rows; i++) {
            const float *l = logits + (size_t)i * classes;
            int best = 0;
            for (int c = 1; c < classes; c++)
                if (l[c] > l[best]) best = c;
            labels[i0 + i] = (uint8_t)best;
        }
    }
    free(w);
    free(logits);
    *out = (tm_dataset){images, labels, n, 1, dim, dim, classes};
    return TM_OK;
}
