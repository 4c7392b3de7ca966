/* The element loops of the collectives' steps: sums and copies of float32
 * runs into up to two destinations at once (the outgoing ring and the
 * output), streaming where asked. Private to runtime/. Thread-safe: pure
 * functions of their arguments. */
#ifndef TM_REDUCE_H
#define TM_REDUCE_H

#include <stddef.h>

enum {
    TM_ST_DST_NT = 1,  /* non-temporal stores into the output */
    TM_ST_RING_NT = 2, /* non-temporal stores into the outgoing ring */
};

/* out and/or dst (either may be NULL) = (a + b) * scale; dst may be a or b
 * (accumulation). how: TM_ST_* flags, honoured where the CPU allows (the
 * caller fences streaming stores). */
void tm__reduce_floats(float *out, float *dst, const float *a, const float *b, size_t n,
                       float scale, int how);
/* out and/or dst = src. */
void tm__copy_floats(float *out, float *dst, const float *src, size_t n, int how);

#endif
