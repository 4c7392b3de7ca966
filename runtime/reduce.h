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

/* The loops' implementations: the portable reference and the AVX2 one.
 * The two above run AVX2 where the CPU has it, unless the environment
 * variable TM_ISA says generic (as it does for the kernels, which the
 * runtime does not include). Every path gives bitwise the same results. */
typedef enum { TM__LOOPS_REF, TM__LOOPS_AVX2, TM__LOOPS_COUNT } tm__loops;
/* 1 when this CPU runs the path. */
int tm__loops_supported(tm__loops path);
void tm__reduce_floats_on(tm__loops path, float *out, float *dst, const float *a,
                          const float *b, size_t n, float scale, int how);
void tm__copy_floats_on(tm__loops path, float *out, float *dst, const float *src, size_t n,
                        int how);

#endif
