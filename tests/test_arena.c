/* Suite `arena`: the capped per-device allocator. The fuzz tests check every
 * invariant after every step; the OOM tests pin the report's contents. */
#include "runtime/arena.h"
#include "runtime/status.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
#include <sanitizer/asan_interface.h>
#endif

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define MAX_LIVE 256

static size_t rounded(size_t bytes)
{
    return bytes ? (bytes + TM_ARENA_ALIGN - 1) / TM_ARENA_ALIGN * TM_ARENA_ALIGN
                 : TM_ARENA_ALIGN;
}

static uint64_t next_rand(uint64_t *state) /* splitmix64 */
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* In an empty arena the only block of the full capacity is the whole region,
 * so its address is the region start whatever the fit policy; NULL if the
 * arena is broken. */
static unsigned char *region_start(tm_arena *a)
{
    tm_arena_stats st;
    tm_arena_stats_get(a, &st);
    unsigned char *p = tm_arena_alloc(a, st.capacity, TM_TAG_WORKSPACE);
    tm_arena_free(a, p);
    return p;
}

/* Violations found in a loop (possibly on another thread): a count and the
 * first message, asserted once by the test so a run stays readable. */
typedef struct {
    long errors;
    char first[256];
} checker;

static void check(checker *ck, int ok, const char *fmt, ...)
{
    if (ok) return;
    if (ck->errors++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ck->first, sizeof ck->first, fmt, ap);
        va_end(ap);
    }
}

typedef struct {
    unsigned char *p; /* the block */
    size_t bytes;     /* bytes asked for */
    tm_tag tag;       /* its tag */
    uint8_t seed;     /* fill pattern */
} live_block;

static void fill(live_block *b)
{
    for (size_t i = 0; i < b->bytes; i++) b->p[i] = (uint8_t)(b->seed + i * 31);
}

static size_t pattern_errors(const live_block *b)
{
    size_t bad = 0;
    for (size_t i = 0; i < b->bytes; i++)
        bad += b->p[i] != (uint8_t)(b->seed + i * 31);
    return bad;
}

/* The world as the test knows it, compared with the arena after each step. */
typedef struct {
    tm_arena *arena;
    unsigned char *base; /* region start */
    size_t capacity;
    live_block live[MAX_LIVE];
    int n;
    size_t prev_peak, prev_tag_peak[TM_TAG_COUNT];
    checker ck;
} model;

static void model_init(model *m, tm_arena *a)
{
    memset(m, 0, sizeof *m);
    m->arena = a;
    m->base = region_start(a);
    check(&m->ck, m->base != NULL, "a full-capacity block must fit an empty arena");
    tm_arena_stats st;
    tm_arena_stats_get(a, &st);
    m->capacity = st.capacity;
}

static void model_check(model *m, long step)
{
    tm_arena_stats st;
    tm_arena_stats_get(m->arena, &st);
    size_t sum = 0, tag_sum[TM_TAG_COUNT] = {0};
    for (int i = 0; i < m->n; i++) {
        sum += rounded(m->live[i].bytes);
        tag_sum[m->live[i].tag] += rounded(m->live[i].bytes);
    }
    checker *ck = &m->ck;
    check(ck, st.in_use == sum, "step %ld: in_use %zu, expected %zu", step, st.in_use, sum);
    check(ck, st.live_blocks == (size_t)m->n, "step %ld: live_blocks %zu, expected %d",
          step, st.live_blocks, m->n);
    check(ck, st.peak >= st.in_use && st.peak >= m->prev_peak,
          "step %ld: peak %zu (was %zu) with in_use %zu", step, st.peak, m->prev_peak, st.in_use);
    check(ck, st.largest_free <= st.capacity - st.in_use,
          "step %ld: largest_free %zu but only %zu free", step, st.largest_free,
          st.capacity - st.in_use);
    for (int t = 0; t < TM_TAG_COUNT; t++) {
        check(ck, st.tag_in_use[t] == tag_sum[t], "step %ld: tag %s in_use %zu, expected %zu",
              step, tm_tag_name((tm_tag)t), st.tag_in_use[t], tag_sum[t]);
        check(ck, st.tag_peak[t] >= st.tag_in_use[t] && st.tag_peak[t] >= m->prev_tag_peak[t],
              "step %ld: tag %s peak %zu (was %zu)", step, tm_tag_name((tm_tag)t),
              st.tag_peak[t], m->prev_tag_peak[t]);
        m->prev_tag_peak[t] = st.tag_peak[t];
    }
    m->prev_peak = st.peak;
}

/* Allocates and checks the result against the arena's own largest_free:
 * a request must succeed exactly when its rounded size fits a free block. */
static void model_alloc(model *m, size_t bytes, tm_tag tag, long step)
{
    tm_arena_stats before;
    tm_arena_stats_get(m->arena, &before);
    unsigned char *p = tm_arena_alloc(m->arena, bytes, tag);
    size_t need = rounded(bytes);
    checker *ck = &m->ck;
    if (!p) {
        check(ck, need > before.largest_free, "step %ld: %zu bytes failed, largest free %zu",
              step, bytes, before.largest_free);
        check(ck, strstr(tm_arena_oom_report(m->arena), "out of memory") != NULL,
              "step %ld: no OOM report", step);
        return;
    }
    check(ck, need <= before.largest_free, "step %ld: %zu bytes fit but largest free was %zu",
          step, bytes, before.largest_free);
    check(ck, (uintptr_t)p % TM_ARENA_ALIGN == 0, "step %ld: %p misaligned", step, (void *)p);
    check(ck, p >= m->base && p + need <= m->base + m->capacity,
          "step %ld: block %p+%zu outside the region", step, (void *)p, need);
    for (int i = 0; i < m->n; i++) {
        const live_block *o = &m->live[i];
        check(ck, p + need <= o->p || o->p + rounded(o->bytes) <= p,
              "step %ld: block %p+%zu overlaps %p+%zu", step, (void *)p, need,
              (void *)o->p, rounded(o->bytes));
    }
    live_block *b = &m->live[m->n++];
    *b = (live_block){p, bytes, tag, (uint8_t)step};
    fill(b);
}

static void model_free(model *m, int i, long step)
{
    size_t bad = pattern_errors(&m->live[i]);
    check(&m->ck, bad == 0, "step %ld: %zu bytes of a %zu-byte block were overwritten",
          step, bad, m->live[i].bytes);
    tm_arena_free(m->arena, m->live[i].p);
    m->live[i] = m->live[--m->n];
}

static size_t random_size(uint64_t *rng, size_t capacity)
{
    uint64_t r = next_rand(rng), kind = r % 100;
    r >>= 8;
    if (kind < 5) return 0;
    if (kind < 50) return 1 + r % 256;
    if (kind < 85) return 257 + r % (16 * KiB);
    if (kind < 97) return 16 * KiB + r % (128 * KiB);
    return 128 * KiB + r % capacity;
}

static long fuzz(tm_arena *a, uint64_t seed, long steps, model *m)
{
    uint64_t rng = seed;
    model_init(m, a);
    long fails = 0;
    for (long s = 0; s < steps; s++) {
        int do_alloc = m->n == 0 || (m->n < MAX_LIVE && next_rand(&rng) % 2);
        if (do_alloc) {
            int had = m->n;
            model_alloc(m, random_size(&rng, m->capacity),
                        (tm_tag)(next_rand(&rng) % TM_TAG_COUNT), s);
            fails += m->n == had;
        } else {
            model_free(m, (int)(next_rand(&rng) % (uint64_t)m->n), s);
        }
        model_check(m, s);
    }
    while (m->n > 0) {
        model_free(m, (int)(next_rand(&rng) % (uint64_t)m->n), steps);
        model_check(m, steps);
    }
    return fails;
}

static void expect_in(const char *report, const char *part)
{
    cr_expect(strstr(report, part) != NULL, "missing \"%s\" in:\n%s", part, report);
}

static void expect_empty(tm_arena *a)
{
    tm_arena_stats st;
    tm_arena_stats_get(a, &st);
    cr_expect_eq(st.in_use, 0);
    cr_expect_eq(st.live_blocks, 0);
    cr_expect_eq(st.largest_free, st.capacity, "free space must coalesce into one block");
    for (int t = 0; t < TM_TAG_COUNT; t++) cr_expect_eq(st.tag_in_use[t], 0, "tag %d", t);
}

Test(arena, fuzz_random_free_order)
{
    static const uint64_t seeds[] = {1, 42, 20240611};
    for (size_t k = 0; k < sizeof seeds / sizeof *seeds; k++) {
        tm_arena *a;
        cr_assert_eq(tm_arena_create(&a, 2 * MiB + 100, 0), TM_OK);
        model m;
        long fails = fuzz(a, seeds[k], 4000, &m);
        cr_expect_eq(m.ck.errors, 0, "seed %llu: %ld violations; first: %s",
                     (unsigned long long)seeds[k], m.ck.errors, m.ck.first);
        /* The size mix must exercise both outcomes to mean anything. */
        cr_expect(fails > 0 && fails < 2000, "seed %llu: %ld failed allocations",
                  (unsigned long long)seeds[k], fails);
        expect_empty(a);
        tm_arena_destroy(a);
    }
}

/* The pipeline's pattern: long-lived parameters, activations freed in the
 * order they were made (FIFO) while new ones of other sizes arrive. */
Test(arena, fifo_free_order)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, 4 * MiB, 1), TM_OK);
    model m;
    model_init(&m, a);
    model_alloc(&m, 700 * KiB, TM_TAG_PARAM, 0);
    model_alloc(&m, 700 * KiB, TM_TAG_GRAD, 0);
    static const size_t layer[] = {96 * KiB, 200 * KiB, 33 * KiB, 150 * KiB, 7};
    live_block queue[8];
    int head = 0, count = 0;
    for (long s = 1; s <= 2000; s++) {
        if (count == 8) { /* free the oldest activation */
            for (int i = 0; i < m.n; i++)
                if (m.live[i].p == queue[head].p) {
                    model_free(&m, i, s);
                    break;
                }
            head = (head + 1) % 8;
            count--;
        }
        int had = m.n;
        model_alloc(&m, layer[s % 5] + (size_t)(s % 3) * 64, TM_TAG_ACTIVATION, s);
        cr_expect_eq(m.n, had + 1, "step %ld: FIFO activation did not fit", s);
        if (m.n == had) break;
        queue[(head + count++) % 8] = m.live[m.n - 1];
        model_check(&m, s);
    }
    cr_expect_eq(m.ck.errors, 0, "%ld violations; first: %s", m.ck.errors, m.ck.first);
    while (m.n > 0) model_free(&m, 0, 0);
    expect_empty(a);
    tm_arena_destroy(a);
}

Test(arena, every_block_aligned_and_zero_bytes_unique)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, 4 * MiB, 0), TM_OK);
    void *p[300];
    for (size_t i = 0; i < 300; i++) {
        p[i] = tm_arena_alloc(a, i % 3 ? i * 7 + 1 : 0, TM_TAG_WORKSPACE);
        cr_assert_not_null(p[i], "block %zu", i);
        cr_expect_eq((uintptr_t)p[i] % TM_ARENA_ALIGN, 0, "block %zu at %p", i, p[i]);
        for (size_t j = 0; j < i; j++) cr_expect_neq(p[i], p[j], "blocks %zu and %zu", i, j);
    }
    for (size_t i = 0; i < 300; i += 2) tm_arena_free(a, p[i]);
    for (int i = 299; i > 0; i -= 2) tm_arena_free(a, p[i]);
    expect_empty(a);
    tm_arena_destroy(a);
}

Test(arena, create_rejects_bad_arguments)
{
    tm_arena *a = (tm_arena *)&a;
    cr_expect_eq(tm_arena_create(&a, 0, 5), TM_EINVAL);
    cr_expect_null(a);
    cr_expect(strstr(tm_error_message(), "device 5") != NULL, "%s", tm_error_message());
    cr_expect_eq(tm_arena_create(&a, TM_ARENA_ALIGN - 1, 5), TM_EINVAL);
    cr_expect_eq(tm_arena_create(NULL, MiB, 5), TM_EINVAL);
    cr_expect_eq(tm_arena_create(&a, (size_t)1 << 60, 6), TM_EHOSTMEM);
    cr_expect_null(a);
    cr_expect(strstr(tm_error_message(), "device 6") != NULL, "%s", tm_error_message());
    cr_expect_eq(tm_arena_create(&a, SIZE_MAX, 6), TM_EHOSTMEM);
    tm_arena_destroy(NULL);
}

Test(arena, capacity_rounds_down_and_fits_exactly)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, 1000, 0), TM_OK);
    tm_arena_stats st;
    tm_arena_stats_get(a, &st);
    cr_expect_eq(st.capacity, 960);
    cr_expect_eq(st.largest_free, 960);
    void *all = tm_arena_alloc(a, 960, TM_TAG_PARAM);
    cr_expect_not_null(all);
    cr_expect_null(tm_arena_alloc(a, 0, TM_TAG_PARAM), "a 0-byte block still needs room");
    cr_expect_null(tm_arena_alloc(a, 100, TM_TAG_GRAD));
    expect_in(tm_arena_oom_report(a), "tried to allocate 100 B (100 bytes, tag grad)");
    expect_in(tm_arena_oom_report(a), "largest free block 0 B");
    tm_arena_free(a, all);
    tm_arena_free(a, NULL);
    cr_expect_null(tm_arena_alloc(a, 961, TM_TAG_PARAM));
    cr_expect_null(tm_arena_alloc(a, SIZE_MAX, TM_TAG_PARAM));
    cr_expect(strstr(tm_arena_oom_report(a), "16.00 EiB") != NULL, "%s", tm_arena_oom_report(a));
    expect_empty(a);
    tm_arena_destroy(a);
}

Test(arena, stats_by_tag_and_reset_peak)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, MiB, 0), TM_OK);
    void *w = tm_arena_alloc(a, 1000, TM_TAG_PARAM);        /* 1024 */
    void *g = tm_arena_alloc(a, 1000, TM_TAG_GRAD);         /* 1024 */
    void *x = tm_arena_alloc(a, 10 * KiB, TM_TAG_ACTIVATION);
    void *y = tm_arena_alloc(a, 1, TM_TAG_ACTIVATION);      /* 64 */
    cr_assert(w && g && x && y);
    tm_arena_free(a, x);
    tm_arena_stats st;
    tm_arena_stats_get(a, &st);
    cr_expect_eq(st.in_use, 2112);
    cr_expect_eq(st.peak, 2112 + 10 * KiB);
    cr_expect_eq(st.tag_in_use[TM_TAG_PARAM], 1024);
    cr_expect_eq(st.tag_in_use[TM_TAG_GRAD], 1024);
    cr_expect_eq(st.tag_in_use[TM_TAG_ACTIVATION], 64);
    cr_expect_eq(st.tag_peak[TM_TAG_ACTIVATION], 10 * KiB + 64);
    cr_expect_eq(st.tag_in_use[TM_TAG_OPTIMIZER] + st.tag_in_use[TM_TAG_COMM] +
                     st.tag_peak[TM_TAG_WORKSPACE], 0);
    cr_expect_eq(st.live_blocks, 3);
    tm_arena_reset_peak(a);
    tm_arena_stats_get(a, &st);
    cr_expect_eq(st.peak, 2112);
    cr_expect_eq(st.tag_peak[TM_TAG_ACTIVATION], 64);
    cr_expect_eq(st.tag_peak[TM_TAG_PARAM], 1024);
    tm_arena_free(a, w);
    tm_arena_free(a, g);
    tm_arena_free(a, y);
    tm_arena_stats_get(a, &st);
    cr_expect_eq(st.peak, 2112, "peaks survive frees");
    expect_empty(a);
    tm_arena_destroy(a);
}

Test(arena, invalid_tag_fails_without_oom_report)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, MiB, 2), TM_OK);
    cr_expect_null(tm_arena_alloc(a, 64, TM_TAG_COUNT));
    cr_expect_null(tm_arena_alloc(a, 64, (tm_tag)-1));
    cr_expect(strstr(tm_error_message(), "invalid allocation tag") != NULL, "%s",
              tm_error_message());
    cr_expect_str_empty(tm_arena_oom_report(a));
    cr_expect_null(tm_arena_alloc(NULL, 64, TM_TAG_PARAM));
    expect_empty(a);
    tm_arena_destroy(a);
}

Test(arena, tag_names)
{
    static const char *const want[] = {"param", "grad", "optimizer", "activation", "comm",
                                       "workspace", "bf16", "host"};
    cr_assert_eq(TM_TAG_COUNT, 8);
    for (int t = 0; t < TM_TAG_COUNT; t++) cr_expect_str_eq(tm_tag_name((tm_tag)t), want[t]);
    cr_expect_str_eq(tm_tag_name(TM_TAG_COUNT), "?");
    cr_expect_str_eq(tm_tag_name((tm_tag)-3), "?");
}

/* The layout param 40M | (freed 1.5M) | grad 10M | activation 10.5M | 2M:
 * 60.5M in use, 3.5M free in two pieces, the largest 2M. */
Test(arena, oom_report_contents)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, 64 * MiB, 3), TM_OK);
    cr_expect_str_empty(tm_arena_oom_report(a), "no failure yet");
    void *w = tm_arena_alloc(a, 40 * MiB, TM_TAG_PARAM);
    void *tmp = tm_arena_alloc(a, 3 * MiB / 2, TM_TAG_ACTIVATION);
    void *g = tm_arena_alloc(a, 10 * MiB, TM_TAG_GRAD);
    void *x = tm_arena_alloc(a, 21 * MiB / 2, TM_TAG_ACTIVATION);
    cr_assert(w && tmp && g && x);
    tm_arena_free(a, tmp);
    tm_arena_stats before, after;
    tm_arena_stats_get(a, &before);

    tm_error_clear();
    cr_expect_null(tm_arena_alloc(a, 12 * MiB, TM_TAG_ACTIVATION));
    const char *r = tm_arena_oom_report(a);
    static const char *const parts[] = {
        "device 3:", "out of memory", "tried to allocate 12.00 MiB", "12582912 bytes",
        "tag activation", "capacity 64.00 MiB", "60.50 MiB in use", "3.50 MiB free",
        "largest free block 2.00 MiB", "param 40.00 MiB", "grad 10.00 MiB", "optimizer 0 B",
        "activation 10.50 MiB", "comm 0 B", "workspace 0 B"};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) expect_in(r, parts[i]);
    cr_expect_str_eq(tm_error_message(), r, "the thread's error message is the report");

    tm_arena_stats_get(a, &after);
    cr_expect_eq(memcmp(&before, &after, sizeof before), 0, "a failed allocation changes nothing");
    void *fits = tm_arena_alloc(a, 2 * MiB, TM_TAG_COMM);
    cr_expect_not_null(fits, "the arena stays usable after an OOM");
    cr_expect_str_eq(tm_arena_oom_report(a), r, "the report stays until the next failure");
    tm_arena_free(a, fits);
    tm_arena_free(a, w);
    tm_arena_free(a, g);
    tm_arena_free(a, x);
    expect_empty(a);
    tm_arena_destroy(a);
}

/* Half the arena free in total, but in 64 KiB holes: 128 KiB must fail. */
Test(arena, oom_from_fragmentation)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, MiB, 7), TM_OK);
    void *p[16];
    for (int i = 0; i < 16; i++) cr_assert_not_null(p[i] = tm_arena_alloc(a, 64 * KiB, TM_TAG_OPTIMIZER));
    for (int i = 0; i < 16; i += 2) tm_arena_free(a, p[i]);
    cr_expect_null(tm_arena_alloc(a, 128 * KiB, TM_TAG_WORKSPACE));
    const char *r = tm_arena_oom_report(a);
    static const char *const parts[] = {
        "device 7:", "tried to allocate 128.00 KiB", "131072 bytes", "tag workspace",
        "capacity 1.00 MiB", "512.00 KiB in use", "512.00 KiB free",
        "largest free block 64.00 KiB", "optimizer 512.00 KiB", "param 0 B", "grad 0 B",
        "activation 0 B", "comm 0 B", "workspace 0 B"};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) expect_in(r, parts[i]);
    void *q = tm_arena_alloc(a, 64 * KiB, TM_TAG_WORKSPACE);
    cr_expect_not_null(q, "a hole of exactly the right size is used");
    tm_arena_free(a, q);
    for (int i = 1; i < 16; i += 2) tm_arena_free(a, p[i]);
    expect_empty(a);
    tm_arena_destroy(a);
}

/* Holes of 128 KiB (low address) and 64 KiB (high): best fit puts 64 KiB in
 * the small hole, so 128 KiB still fits afterwards (first fit would not). */
Test(arena, best_fit_keeps_large_holes)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, 512 * KiB, 0), TM_OK);
    void *big = tm_arena_alloc(a, 128 * KiB, TM_TAG_ACTIVATION);
    void *keep1 = tm_arena_alloc(a, 192 * KiB, TM_TAG_PARAM);
    void *small = tm_arena_alloc(a, 64 * KiB, TM_TAG_ACTIVATION);
    void *keep2 = tm_arena_alloc(a, 128 * KiB, TM_TAG_PARAM);
    cr_assert(big && keep1 && small && keep2);
    tm_arena_free(a, big);
    tm_arena_free(a, small);
    void *x = tm_arena_alloc(a, 64 * KiB, TM_TAG_ACTIVATION);
    void *y = tm_arena_alloc(a, 128 * KiB, TM_TAG_ACTIVATION);
    cr_expect_not_null(x);
    cr_expect_not_null(y, "the 64 KiB block must not have split the 128 KiB hole");
    tm_arena_free(a, x);
    tm_arena_free(a, y);
    tm_arena_free(a, keep1);
    tm_arena_free(a, keep2);
    expect_empty(a);
    tm_arena_destroy(a);
}

/* Pages actually backed by the host in [p, p + bytes); p page-aligned. */
static size_t resident_pages(unsigned char *p, size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), n = (bytes + page - 1) / page, count = 0;
    unsigned char *vec = malloc(n);
    cr_assert_not_null(vec);
    cr_assert_eq(mincore(p, bytes, vec), 0);
    for (size_t i = 0; i < n; i++) count += vec[i] & 1;
    free(vec);
    return count;
}

Test(arena, prefault_backs_every_page_and_keeps_contents)
{
    size_t cap = 8 * MiB, page = (size_t)sysconf(_SC_PAGESIZE);
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, cap, 0), TM_OK);
    unsigned char *base = region_start(a);
    cr_assert_not_null(base, "a full-capacity block must fit an empty arena");
    cr_expect_eq(resident_pages(base, cap), 0, "creation must not touch the region");
    live_block b = {tm_arena_alloc(a, 3 * page + 5, TM_TAG_PARAM), 3 * page + 5, TM_TAG_PARAM, 9};
    cr_assert_not_null(b.p);
    fill(&b);
    tm_arena_prefault(a);
    cr_expect_eq(resident_pages(base, cap), cap / page);
    cr_expect_eq(pattern_errors(&b), 0, "prefault must not change live blocks");
    tm_arena_free(a, b.p);
    tm_arena_prefault(NULL);
    tm_arena_destroy(a);
}

/* Frees that can only be bugs abort (the one abort in the allocator). */
Test(arena, double_free_aborts, .signal = SIGABRT)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, MiB, 0), TM_OK);
    void *p = tm_arena_alloc(a, 100, TM_TAG_PARAM);
    void *q = tm_arena_alloc(a, 100, TM_TAG_PARAM);
    (void)q;
    tm_arena_free(a, p);
    tm_arena_free(a, p);
}

Test(arena, interior_pointer_free_aborts, .signal = SIGABRT)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, MiB, 0), TM_OK);
    unsigned char *p = tm_arena_alloc(a, 1000, TM_TAG_PARAM);
    tm_arena_free(a, p + TM_ARENA_ALIGN);
}

Test(arena, foreign_pointer_free_aborts, .signal = SIGABRT)
{
    tm_arena *a, *b;
    cr_assert_eq(tm_arena_create(&a, MiB, 0), TM_OK);
    cr_assert_eq(tm_arena_create(&b, MiB, 1), TM_OK);
    tm_arena_free(a, tm_arena_alloc(b, 64, TM_TAG_PARAM));
}

#ifdef TEST_ASAN
Test(arena, asan_poisons_everything_but_live_bytes)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, MiB, 0), TM_OK);
    unsigned char *p = tm_arena_alloc(a, 100, TM_TAG_ACTIVATION);
    unsigned char *z = tm_arena_alloc(a, 0, TM_TAG_ACTIVATION);
    cr_expect_eq(__asan_region_is_poisoned(p, 100), NULL, "the 100 bytes asked for are usable");
    cr_expect(__asan_address_is_poisoned(p + 100), "the rest of the block is not");
    cr_expect(__asan_address_is_poisoned(z), "a 0-byte block has no usable byte");
    cr_expect(__asan_address_is_poisoned(z + TM_ARENA_ALIGN), "free space is poisoned");
    tm_arena_free(a, p);
    cr_expect_eq(__asan_region_is_poisoned(p, 100), p, "a freed block is poisoned");
    tm_arena_free(a, z);
    tm_arena_destroy(a);
}

/* The real thing: a write into a freed block kills the process (ASan exits
 * with status 1). Its report goes to /dev/null to keep the log clean. */
Test(arena, asan_catches_use_after_free, .exit_code = 1)
{
    tm_arena *a;
    cr_assert_eq(tm_arena_create(&a, MiB, 0), TM_OK);
    volatile unsigned char *p = tm_arena_alloc(a, 256, TM_TAG_ACTIVATION);
    tm_arena_free(a, (void *)p);
    int null = open("/dev/null", O_WRONLY);
    cr_assert(null >= 0);
    dup2(null, STDERR_FILENO);
    p[17] = 1;
}
#else
Test(arena, asan_poisons_everything_but_live_bytes)
{
    cr_skip_test("built without AddressSanitizer (run make asan)");
}
#endif

Test(arena, parse_size_accepts)
{
    static const struct {
        const char *text;
        size_t want;
    } ok[] = {{"0", 0},           {"4096", 4096},        {"512K", 512 * KiB},
              {"64M", 64 * MiB},  {"64MiB", 64 * MiB},   {"64MB", 64 * MiB},
              {"64m", 64 * MiB},  {"1G", 1024 * MiB},    {"2T", (size_t)2 << 40},
              {"100B", 100},      {"1.5G", 1536 * MiB},  {"0.5K", 512},
              {"1.1M", 1153433},  {"0.13K", 133},       {"0.0001K", 0},        {"007K", 7 * KiB},
              {"18446744073709551615", SIZE_MAX}, {"16777215.999999999T", SIZE_MAX - 1099}};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        size_t got = 12345;
        cr_expect_eq(tm_parse_size(ok[i].text, &got), 0, "\"%s\": %s", ok[i].text,
                     tm_error_message());
        cr_expect_eq(got, ok[i].want, "\"%s\" -> %zu, want %zu", ok[i].text, got, ok[i].want);
    }
}

Test(arena, parse_size_rejects)
{
    static const char *const bad[] = {
        "",     "-1",   "12Q",  "0x10", " 64M", "64M ", "64 M", "M",    ".5G",  "1.G",
        "1.5",  "1.5B", "64KK", "64Mi", "64Bi", "64b",  "+64",  "1e6",  "64iB", "1,5G",
        "18446744073709551616", "16777216T", "99999999999999999999999K"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t got = 12345;
        tm_error_clear();
        cr_expect_eq(tm_parse_size(bad[i], &got), -1, "\"%s\" accepted as %zu", bad[i], got);
        cr_expect_eq(got, 12345, "\"%s\" wrote the output", bad[i]);
        cr_expect(strstr(tm_error_message(), "size \"") != NULL, "\"%s\": message \"%s\"", bad[i],
                  tm_error_message());
    }
    size_t got;
    cr_expect_eq(tm_parse_size(NULL, &got), -1);
    cr_expect_eq(tm_parse_size("1K", NULL), -1);
}

/* One arena per device thread, used concurrently: nothing may be shared
 * between arenas (the TSan run checks), and each thread's OOM message names
 * its own device. */
typedef struct {
    int device;
    model m;
    char message[512];
} device_run;

static void *device_main(void *arg)
{
    device_run *run = arg;
    tm_arena *a;
    if (tm_arena_create(&a, MiB, run->device) != TM_OK) {
        snprintf(run->message, sizeof run->message, "create failed");
        return NULL;
    }
    tm_arena_prefault(a);
    fuzz(a, (uint64_t)run->device * 7919, 1500, &run->m);
    tm_arena_alloc(a, 2 * MiB, TM_TAG_COMM);
    snprintf(run->message, sizeof run->message, "%s", tm_error_message());
    tm_arena_destroy(a);
    return NULL;
}

Test(arena, one_arena_per_thread, .timeout = 60)
{
    enum { N = 4 };
    static device_run run[N];
    pthread_t th[N];
    for (int d = 0; d < N; d++) {
        run[d].device = d + 10;
        cr_assert_eq(pthread_create(&th[d], NULL, device_main, &run[d]), 0);
    }
    for (int d = 0; d < N; d++) pthread_join(th[d], NULL);
    for (int d = 0; d < N; d++) {
        char want[48];
        snprintf(want, sizeof want, "device %d: out of memory", d + 10);
        cr_expect_eq(run[d].m.ck.errors, 0, "device %d: %ld violations; first: %s", d + 10,
                     run[d].m.ck.errors, run[d].m.ck.first);
        cr_expect(strstr(run[d].message, want) != NULL, "device %d got \"%s\"", d + 10,
                  run[d].message);
    }
}

/* tm_arena_fits answers, without reserving memory, what a fresh arena
 * would: the same verdict and, when a block does not fit, the same report. */
Test(arena, fits_says_what_a_fresh_arena_would)
{
    const size_t caps[] = {4096, 1000, (size_t)1 << 20};
    const size_t sizes[][4] = {{1000, 1000, 1000, 1000},
                               {1, 0, 63, 64},
                               {500000, 500000, 100, 1},
                               {2000, 2000, 100, 1}}; /* the third finds the arena full */
    const tm_tag tags[4] = {TM_TAG_PARAM, TM_TAG_GRAD, TM_TAG_OPTIMIZER, TM_TAG_OPTIMIZER};
    int failures = 0;
    for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++)
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            tm_arena *a;
            cr_assert_eq(tm_arena_create(&a, caps[c], 3), TM_OK);
            int want = TM_OK;
            for (int i = 0; i < 4 && want == TM_OK; i++)
                if (tm_arena_alloc(a, sizes[k][i], tags[i]) == NULL) want = TM_ENOMEM;
            char real[2048];
            snprintf(real, sizeof real, "%s", tm_arena_oom_report(a));
            tm_arena_destroy(a);
            failures += want != TM_OK;
            int got = tm_arena_fits(caps[c], 3, sizes[k], tags, 4);
            cr_expect_eq(got, want, "capacity %zu, case %zu", caps[c], k);
            if (want != TM_OK)
                cr_expect_str_eq(tm_error_message(), real, "capacity %zu, case %zu", caps[c], k);
        }
    cr_expect_geq(failures, 3, "only %d cases compared reports", failures);
    /* A cap no host could map is answered all the same, at once. */
    size_t huge[2] = {(size_t)3 << 40, (size_t)3 << 40};
    cr_expect_eq(tm_arena_fits((size_t)4 << 40, 0, huge, tags, 2), TM_ENOMEM);
    cr_expect(strstr(tm_error_message(), "tried to allocate 3.00 TiB") != NULL, "%s",
              tm_error_message());
    cr_expect_eq(tm_arena_fits(10, 0, huge, tags, 0), TM_EINVAL);
}
