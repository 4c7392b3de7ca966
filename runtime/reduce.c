#include "runtime/reduce.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* The element loops of every step. The portable ones are the reference and
 * the fallback; the library is built for baseline x86-64, where gcc -O2
 * leaves them scalar (addss), so x86 gets AVX2 versions chosen at run time.
 * Those load each operand once and store the value to both places a step
 * may write, the outgoing ring and the output. Measured here, against the
 * scalar loops that stored the output in a second pass over the ring: a
 * 2-device all-reduce 1.45x faster at 1 MiB and 1.39x at 16 MiB (cores
 * close together, see tm__link_stream); with the cores far apart, the
 * second pass alone, put back, made it 1.25x slower at 1 MiB and 1.33x at
 * 16 MiB, and the 8-device one (whose all-gather copies ring to ring and
 * output) 1.1x. */

/* out and/or dst = (a + b) * scale; dst may be a or b (accumulation). */
static void reduce_ref(float *out, float *dst, const float *a, const float *b, size_t n,
                       float scale)
{
    float *to = out != NULL ? out : dst;
    if (scale != 1.0f)
        for (size_t i = 0; i < n; i++) to[i] = (a[i] + b[i]) * scale;
    else
        for (size_t i = 0; i < n; i++) to[i] = a[i] + b[i];
    if (out != NULL && dst != NULL) memcpy(dst, out, n * sizeof *dst);
}

/* out and/or dst = src. */
static void copy_ref(float *out, float *dst, const float *src, size_t n)
{
    if (out != NULL) memcpy(out, src, n * sizeof *src);
    if (dst != NULL) memcpy(dst, src, n * sizeof *src);
}

#if defined(__x86_64__)
#define TM_AVX2 __attribute__((target("avx2")))

/* Eight floats to out[i] and dst[i], streaming where `how` says. */
TM_AVX2 static inline void put8(float *out, float *dst, size_t i, __m256 v, int how)
{
    if (out != NULL) {
        if (how & TM_ST_RING_NT)
            _mm256_stream_ps(out + i, v);
        else
            _mm256_storeu_ps(out + i, v);
    }
    if (dst != NULL) {
        if (how & TM_ST_DST_NT)
            _mm256_stream_ps(dst + i, v);
        else
            _mm256_storeu_ps(dst + i, v);
    }
}

/* Elements stored the plain way before the streamed target reaches the
 * 32-byte alignment streaming stores need (the ring first: its stores are
 * the ones a reader waits for). *how loses the streaming of a target that
 * is still misaligned then. */
static size_t align_head(const float *out, const float *dst, size_t n, int *how)
{
    if (out == NULL) *how &= ~TM_ST_RING_NT;
    if (dst == NULL) *how &= ~TM_ST_DST_NT;
    const float *lead = *how & TM_ST_RING_NT ? out : *how & TM_ST_DST_NT ? dst : NULL;
    if (lead == NULL) return 0;
    size_t h = ((32 - ((uintptr_t)lead & 31)) & 31) / sizeof(float);
    if (h > n) h = n;
    if ((*how & TM_ST_RING_NT) && ((uintptr_t)(out + h) & 31) != 0) *how &= ~TM_ST_RING_NT;
    if ((*how & TM_ST_DST_NT) && ((uintptr_t)(dst + h) & 31) != 0) *how &= ~TM_ST_DST_NT;
    return h;
}

TM_AVX2 static void reduce_avx2(float *out, float *dst, const float *a, const float *b, size_t n,
                                float scale, int how)
{
    size_t i = align_head(out, dst, n, &how);
    reduce_ref(out, dst, a, b, i, scale);
    const __m256 s = _mm256_set1_ps(scale);
    const int scaled = scale != 1.0f;
    for (; i + 16 <= n; i += 16) {
        __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        if (scaled) {
            v0 = _mm256_mul_ps(v0, s);
            v1 = _mm256_mul_ps(v1, s);
        }
        put8(out, dst, i, v0, how);
        put8(out, dst, i + 8, v1, how);
    }
    reduce_ref(out ? out + i : NULL, dst ? dst + i : NULL, a + i, b + i, n - i, scale);
}

TM_AVX2 static void copy_avx2(float *out, float *dst, const float *src, size_t n, int how)
{
    size_t i = align_head(out, dst, n, &how);
    if (how == 0 && (out == NULL || dst == NULL)) {
        /* One plain target: the C library's copy is as fast as any loop. */
        copy_ref(out, dst, src, n);
        return;
    }
    copy_ref(out, dst, src, i);
    for (; i + 16 <= n; i += 16) {
        __m256 v0 = _mm256_loadu_ps(src + i), v1 = _mm256_loadu_ps(src + i + 8);
        put8(out, dst, i, v0, how);
        put8(out, dst, i + 8, v1, how);
    }
    copy_ref(out ? out + i : NULL, dst ? dst + i : NULL, src + i, n - i);
}

#endif

int tm__loops_supported(tm__loops path)
{
#if defined(__x86_64__)
    if (path == TM__LOOPS_AVX2) return __builtin_cpu_supports("avx2");
#endif
    return path == TM__LOOPS_REF;
}

static tm__loops best_path = TM__LOOPS_REF;
/* pthread_once rather than C11 call_once: ThreadSanitizer sees the order
 * pthread_once makes, not the one glibc's call_once does. */
static pthread_once_t best_once = PTHREAD_ONCE_INIT;

static void pick_best(void)
{
    const char *isa = getenv("TM_ISA");
    if (tm__loops_supported(TM__LOOPS_AVX2) && !(isa != NULL && strcmp(isa, "generic") == 0))
        best_path = TM__LOOPS_AVX2;
}

void tm__reduce_floats_on(tm__loops path, float *out, float *dst, const float *a,
                          const float *b, size_t n, float scale, int how)
{
#if defined(__x86_64__)
    if (path == TM__LOOPS_AVX2) {
        reduce_avx2(out, dst, a, b, n, scale, how);
        return;
    }
#endif
    (void)path;
    (void)how;
    reduce_ref(out, dst, a, b, n, scale);
}

void tm__copy_floats_on(tm__loops path, float *out, float *dst, const float *src, size_t n,
                        int how)
{
#if defined(__x86_64__)
    if (path == TM__LOOPS_AVX2) {
        copy_avx2(out, dst, src, n, how);
        return;
    }
#endif
    (void)path;
    (void)how;
    copy_ref(out, dst, src, n);
}

void tm__reduce_floats(float *out, float *dst, const float *a, const float *b, size_t n,
                       float scale, int how)
{
    pthread_once(&best_once, pick_best);
    tm__reduce_floats_on(best_path, out, dst, a, b, n, scale, how);
}

void tm__copy_floats(float *out, float *dst, const float *src, size_t n, int how)
{
    pthread_once(&best_once, pick_best);
    tm__copy_floats_on(best_path, out, dst, src, n, how);
}
