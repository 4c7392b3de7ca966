/* The blocked GEMM: BLIS's five loops around a register-blocked micro-kernel,
 * with packed panels of A and B, per-thread packing workspace, and the table
 * of block sizes per instruction set. */
#include "kernels/gemm_internal.h"

#include "kernels/isa.h"

#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <threads.h>

/* The generic set packs sliver by sliver. */
static void pack_a_generic_4(int trans, int m_cur, int k, const float *a,
                             ptrdiff_t lda, float *dst)
{
    ptrdiff_t rs = trans ? 1 : lda;
    for (int i = 0; i < m_cur; i += 4)
        tm__gemm_pack_a_generic(4, trans, m_cur - i < 4 ? m_cur - i : 4, k,
                                a + i * rs, lda, dst + (size_t)i * k);
}

static void pack_b_generic_8(int trans, int n_cur, int k, const float *b,
                             ptrdiff_t ldb, float *dst)
{
    ptrdiff_t cs = trans ? ldb : 1;
    for (int j = 0; j < n_cur; j += 8)
        tm__gemm_pack_b_generic(8, trans, n_cur - j < 8 ? n_cur - j : 8, k,
                                b + j * cs, ldb, dst + (size_t)j * k);
}

/* The block-size table, one row per kernel set. kc keeps a B sliver
 * (kc x nr) and an A sliver (mr x kc) in the 48 KiB L1 together; mc x kc is
 * the A block that stays in the 1 MiB L2 while every B sliver streams past
 * it; kc x nc is the B panel, meant for L3. On the AMD Zen 5 this was tuned
 * on, the AVX2 set ran within noise of its best anywhere in mc 96..288,
 * kc 256..512, nc 1024..4096; the row is the middle of that plateau. */
const tm__gemm_kernels tm__gemm_kernels_generic = {
    .isa = "generic", .mr = 4, .nr = 8, .mc = 128, .kc = 256, .nc = 2048,
    .ukr = tm__ukr_generic_4x8, .pack_a = pack_a_generic_4,
    .pack_b = pack_b_generic_8, .skinny = NULL, .unpacked = NULL,
};

const tm__gemm_kernels tm__gemm_kernels_avx2 = {
    .isa = "avx2", .mr = 6, .nr = 16, .mc = 192, .kc = 384, .nc = 2048,
    .ukr = tm__ukr_avx2_6x16, .pack_a = tm__pack_a_avx2_6,
    .pack_b = tm__pack_b_avx2_16, .skinny = tm__gemm_skinny_avx2,
    .unpacked = tm__gemm_unpacked_avx2,
};

/* The AVX-512 row was set from the caches of a Zen 4/5 core (48 KiB L1,
 * 1 MiB L2), not tuned by measurement: a 256 x 32 B sliver (32 KiB) and a
 * 12 x 256 A sliver (12 KiB) share the L1, the 240 x 256 A block (240 KiB)
 * sits in a quarter of the L2. The skinny shapes keep the AVX2 paths (an
 * AVX-512 CPU runs them as they are); the unpacked-A shortcut is off, since
 * it feeds the 6x16 kernel. */
const tm__gemm_kernels tm__gemm_kernels_avx512 = {
    .isa = "avx512", .mr = 12, .nr = 32, .mc = 240, .kc = 256, .nc = 2048,
    .ukr = tm__ukr_avx512_12x32, .pack_a = tm__pack_a_avx2_12,
    .pack_b = tm__pack_b_avx2_32, .skinny = tm__gemm_skinny_avx2,
    .unpacked = NULL,
};

const tm__gemm_kernels *tm__gemm_kernels_for(int isa)
{
    switch (isa) {
    case TM_ISA_AVX512_BF16:
    case TM_ISA_AVX512: return &tm__gemm_kernels_avx512;
    case TM_ISA_AVX2: return &tm__gemm_kernels_avx2;
    default: return &tm__gemm_kernels_generic;
    }
}

/* The active set is chosen once per process (isa.c), so every call on
 * every thread takes the same path (bitwise reproducible). */
const tm__gemm_kernels *tm__gemm_kernels_active(void)
{
    return tm__gemm_kernels_for(tm_isa_active());
}

void tm__gemm_pack_a_generic(int mr, int trans, int m_r, int k, const float *a,
                             ptrdiff_t lda, float *dst)
{
    ptrdiff_t rs = trans ? 1 : lda, cs = trans ? lda : 1;
    for (int p = 0; p < k; p++) {
        for (int i = 0; i < m_r; i++) dst[p * mr + i] = a[i * rs + p * cs];
        for (int i = m_r; i < mr; i++) dst[p * mr + i] = 0.0f;
    }
}

void tm__gemm_pack_b_generic(int nr, int trans, int n_r, int k, const float *b,
                             ptrdiff_t ldb, float *dst)
{
    ptrdiff_t rs = trans ? 1 : ldb, cs = trans ? ldb : 1;
    for (int p = 0; p < k; p++) {
        for (int j = 0; j < n_r; j++) dst[p * nr + j] = b[p * rs + j * cs];
        for (int j = n_r; j < nr; j++) dst[p * nr + j] = 0.0f;
    }
}

/* The workspace pointer is thread-local for speed; the tss key only exists
 * so that the buffer is freed when its thread exits (device threads come and
 * go with every world). */
static _Thread_local float *ws_buf;
static _Thread_local size_t ws_cap;
static tss_t ws_key;
static int ws_key_ok;
/* pthread_once rather than C11 call_once: ThreadSanitizer sees the order
 * pthread_once makes, not the one glibc's call_once does. */
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;

static void ws_key_create(void) { ws_key_ok = tss_create(&ws_key, free) == thrd_success; }

float *tm__gemm_workspace(size_t floats)
{
    if (floats <= ws_cap) return ws_buf;
    pthread_once(&ws_once, ws_key_create);
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    float *buf = aligned_alloc(64, bytes);
    if (buf == NULL) return NULL;
    free(ws_buf);
    ws_buf = buf;
    ws_cap = bytes / sizeof(float);
    if (ws_key_ok) tss_set(ws_key, buf);
    return buf;
}

/* Packing between the blocks leaves this much room: the AVX2 packers store
 * whole vectors that may run a few floats past a sliver's end. */
enum { PACK_SLACK = 64 };

size_t tm__gemm_workspace_floats(int mc, int nc, int kc, size_t *b_floats)
{
    *b_floats = ((size_t)nc * kc + PACK_SLACK + 15) / 16 * 16;
    return *b_floats + (size_t)mc * kc + PACK_SLACK;
}

void tm__gemm_workspace_warm(const tm__gemm_kernels *ks)
{
    size_t b_floats, floats = tm__gemm_workspace_floats(ks->mc, ks->nc, ks->kc, &b_floats);
    float *ws = tm__gemm_workspace(floats);
    if (ws != NULL) memset(ws, 0, floats * sizeof(float));
}

/* k = 784 with kc = 384 becomes 262 + 262 + 260 rather than 384 + 384 +
 * 16, whose thin last panel would pay a full C update for a few
 * multiply-adds. */
int tm__gemm_block_size(int len, int max, int unit)
{
    int blocks = (len + max - 1) / max;
    int size = (len + blocks - 1) / blocks;
    return (size + unit - 1) / unit * unit;
}

static int min_int(int x, int y) { return x < y ? x : y; }

void tm__gemm_blocked(const tm__gemm_kernels *ks, int transa, int transb, int m,
                      int n, int k, float alpha, const float *a, ptrdiff_t lda,
                      const float *b, ptrdiff_t ldb, float beta, float *c,
                      ptrdiff_t ldc)
{
    if (ks->skinny != NULL &&
        ks->skinny(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == 0)
        return;
    const int mr = ks->mr, nr = ks->nr;
    /* A row-major A of at most one block is read in place: its rows are
     * contiguous along k already, and packing it would cost as much as it
     * saves (m = 128: the batch of an MLP layer). */
    const int direct_a = ks->unpacked != NULL && !transa && m <= ks->mc;
    const int kc = tm__gemm_block_size(k, ks->kc, 1);
    const int mc = tm__gemm_block_size(m, ks->mc, mr);
    const int nc = tm__gemm_block_size(n, ks->nc, nr);
    size_t b_floats, floats = tm__gemm_workspace_floats(mc, nc, kc, &b_floats);
    float *ws = tm__gemm_workspace(floats);
    if (ws == NULL) {
        /* Out of host memory: still give the right answer, slowly. */
        tm__gemm_ref(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    /* B first: b_floats is a multiple of 16, so the A block stays aligned. */
    float *bp = ws, *ap = ws + b_floats;
    /* Element (row, col) of op(A) and op(B), however they are stored. */
    ptrdiff_t a_rs = transa ? 1 : lda, a_cs = transa ? lda : 1;
    ptrdiff_t b_rs = transb ? 1 : ldb, b_cs = transb ? ldb : 1;

    for (int jc = 0; jc < n; jc += nc) {
        int ncur = min_int(nc, n - jc);
        for (int pc = 0; pc < k; pc += kc) {
            int kcur = min_int(kc, k - pc);
            /* beta applies once, on the first k panel; later panels add. */
            float beta_p = pc == 0 ? beta : 1.0f;
            ks->pack_b(transb, ncur, kcur, b + pc * b_rs + jc * b_cs, ldb, bp);
            if (direct_a) {
                /* A packed B sliver is itself a row-major (kcur, nr) matrix. */
                for (int jr = 0; jr < ncur; jr += nr)
                    ks->unpacked(0, m, min_int(nr, ncur - jr), kcur, alpha, a + pc, lda,
                                 bp + (size_t)jr * kcur, nr, beta_p, c + jc + jr, ldc);
                continue;
            }
            for (int ic = 0; ic < m; ic += mc) {
                int mcur = min_int(mc, m - ic);
                ks->pack_a(transa, mcur, kcur, a + ic * a_rs + pc * a_cs, lda, ap);
                for (int jr = 0; jr < ncur; jr += nr)
                    for (int ir = 0; ir < mcur; ir += mr)
                        ks->ukr(kcur, ap + (size_t)ir * kcur, bp + (size_t)jr * kcur,
                                alpha, beta_p, c + (ic + ir) * ldc + jc + jr, ldc,
                                min_int(mr, mcur - ir), min_int(nr, ncur - jr));
            }
        }
    }
}
