#include "runtime/arena.h"

#include "runtime/status.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* gcc says __SANITIZE_ADDRESS__, clang says __has_feature(address_sanitizer). */
#if defined(__SANITIZE_ADDRESS__)
#define TM__ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TM__ASAN 1
#endif
#endif

/* Under ASan every byte of the region that is not part of a live allocation
 * is poisoned, so a use-after-free or an overrun inside the arena is caught
 * even though the memory never goes back to malloc. */
#ifdef TM__ASAN
#include <sanitizer/asan_interface.h>
#define TM__POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define TM__UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#define TM__NO_ASAN __attribute__((no_sanitize_address))
#else
#define TM__POISON(p, n) ((void)(p), (void)(n))
#define TM__UNPOISON(p, n) ((void)(p), (void)(n))
#define TM__NO_ASAN
#endif

#define TM__SEG_INITIAL 64
#define TM__REPORT_MAX 512

/* One piece of the region: either a live block or free space. The segments
 * live on the host heap, not in the region (as a GPU caching allocator keeps
 * its block list on the host), so a stray write into device memory cannot
 * corrupt the allocator and every byte of the region is usable. */
typedef struct {
    size_t offset;    /* from the region start; a multiple of TM_ARENA_ALIGN */
    size_t size;      /* bytes covered; a multiple of TM_ARENA_ALIGN */
    size_t requested; /* bytes the caller asked for (live blocks only) */
    tm_tag tag;       /* what a live block is for */
    bool free;        /* true for free space */
} segment;

/* Invariants: seg[0..nseg) is sorted by offset and tiles [0, capacity)
 * without gaps, and no two neighbours are both free (frees coalesce). */
struct tm_arena {
    unsigned char *base;  /* the region, page-aligned */
    size_t mapped;        /* bytes mapped: capacity rounded up to a page */
    size_t page;          /* host page size, the prefault stride */
    size_t capacity;      /* bytes that can be handed out; ALIGN multiple */
    int device;           /* device id, for messages */
    segment *seg;         /* the block list, see the invariants above */
    size_t nseg;          /* segments in use */
    size_t seg_cap;       /* segments allocated */
    size_t in_use;        /* bytes in live blocks */
    size_t peak;          /* high-water mark of in_use */
    size_t live_blocks;   /* number of live blocks */
    size_t tag_in_use[TM_TAG_COUNT]; /* in_use split by tag */
    size_t tag_peak[TM_TAG_COUNT];   /* high-water mark per tag */
    char oom[TM__REPORT_MAX];        /* last failure report, "" if none */
};

const char *tm_tag_name(tm_tag tag)
{
    switch (tag) {
#define TM__TAG_STR(name, str) case TM_TAG_##name: return str;
        TM_TAG_MAP(TM__TAG_STR)
#undef TM__TAG_STR
    default: break;
    }
    return "?";
}

/* Formats a byte count the way CUDA's OOM message does ("12.00 MiB"), so
 * reports read at a glance; exact counts appear next to it where needed. */
const char *tm__human(char buf[TM__HUMAN_MAX], size_t bytes)
{
    static const char *const unit[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (bytes < 1024) {
        snprintf(buf, TM__HUMAN_MAX, "%zu B", bytes);
        return buf;
    }
    double v = (double)bytes / 1024.0;
    int u = 0;
    while (v >= 1024.0 && u < 5) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, TM__HUMAN_MAX, "%.2f %s", v, unit[u]);
    return buf;
}

static int capacity_error(int device, size_t capacity)
{
    return tm_error(TM_EINVAL, "device %d: arena capacity of %zu bytes is below the minimum of %d "
                    "bytes", device, capacity, TM_ARENA_ALIGN);
}

int tm_arena_create(tm_arena **out, size_t capacity, int device)
{
    char hbuf[TM__HUMAN_MAX];
    if (!out) return tm_error(TM_EINVAL, "tm_arena_create: out is NULL");
    *out = NULL;
    /* Rounding down keeps every block aligned and never exceeds the cap. */
    size_t usable = capacity / TM_ARENA_ALIGN * TM_ARENA_ALIGN;
    if (usable == 0) return capacity_error(device, capacity);
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    if (capacity > SIZE_MAX - (size_t)page)
        return tm_error(TM_EHOSTMEM, "device %d: cannot map a %s arena",
                        device, tm__human(hbuf, capacity));

    tm_arena *a = calloc(1, sizeof *a);
    if (!a) goto err_host;
    a->seg = malloc(TM__SEG_INITIAL * sizeof *a->seg);
    if (!a->seg) goto err_host;
    a->page = (size_t)page;
    a->mapped = (capacity + a->page - 1) / a->page * a->page;
    /* NORESERVE: the cap is a budget, not a commitment; the host backs pages
     * as they are touched (at the latest by tm_arena_prefault). */
    void *base = mmap(NULL, a->mapped, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        free(a->seg);
        free(a);
        return tm_error(TM_EHOSTMEM, "device %d: cannot map a %s arena: %s",
                        device, tm__human(hbuf, capacity), strerror(err));
    }
    a->base = base;
    a->capacity = usable;
    a->device = device;
    a->seg_cap = TM__SEG_INITIAL;
    a->nseg = 1;
    a->seg[0] = (segment){.offset = 0, .size = usable, .free = true};
    TM__POISON(a->base, a->mapped);
    *out = a;
    return TM_OK;

err_host:
    if (a) free(a->seg);
    free(a);
    return tm_error(TM_EHOSTMEM, "device %d: no host memory for an arena",
                    device);
}

void tm_arena_destroy(tm_arena *arena)
{
    if (!arena) return;
    /* The shadow would outlive the mapping and poison whatever the host maps
     * at these addresses next. */
    TM__UNPOISON(arena->base, arena->mapped);
    munmap(arena->base, arena->mapped);
    free(arena->seg);
    free(arena);
}

/* Not instrumented: the loop deliberately touches free (poisoned) bytes. */
TM__NO_ASAN void tm_arena_prefault(tm_arena *arena)
{
    if (!arena) return;
    /* Huge pages make the prefault cheap: for 64 MiB on the development VM,
     * touching 4 KiB pages took 170-320 ms and 2 MiB pages 3-6 ms, which
     * adds up with 64 devices. Advice only: without THP nothing changes.
     * An arena never prefaulted (a dry run's, which touches only the few
     * pages its copies write) keeps 4 KiB pages, so that each of those
     * touches does not clear 2 MiB. */
#ifdef MADV_HUGEPAGE
    madvise(arena->base, arena->mapped, MADV_HUGEPAGE);
#endif
    /* Writing back the byte just read faults each page in writable without
     * changing live blocks, so this is safe at any time; volatile keeps the
     * compiler from dropping the store as a no-op. */
    volatile unsigned char *p = arena->base;
    for (size_t off = 0; off < arena->mapped; off += arena->page)
        p[off] = p[off];
}

/* Opens a slot at index `at` (contents undefined); false if the host is out
 * of memory for the block list. */
static bool seg_insert(tm_arena *a, size_t at)
{
    if (a->nseg == a->seg_cap) {
        segment *grown = realloc(a->seg, 2 * a->seg_cap * sizeof *grown);
        if (!grown) return false;
        a->seg = grown;
        a->seg_cap *= 2;
    }
    memmove(&a->seg[at + 1], &a->seg[at], (a->nseg - at) * sizeof *a->seg);
    a->nseg++;
    return true;
}

static void seg_remove(tm_arena *a, size_t at)
{
    memmove(&a->seg[at], &a->seg[at + 1], (a->nseg - at - 1) * sizeof *a->seg);
    a->nseg--;
}

static size_t largest_free(const tm_arena *a)
{
    size_t best = 0;
    for (size_t i = 0; i < a->nseg; i++)
        if (a->seg[i].free && a->seg[i].size > best) best = a->seg[i].size;
    return best;
}

/* Best fit: the smallest free segment that holds `need` bytes, the lowest
 * address on ties; nseg if none does. Best fit leaves large free blocks
 * whole for large requests, which matters because activations of very
 * different sizes are freed in FIFO order while others stay live. */
static size_t best_fit(const tm_arena *a, size_t need)
{
    size_t best = a->nseg, best_size = SIZE_MAX;
    for (size_t i = 0; i < a->nseg; i++) {
        /* Whether a segment fits is a coin toss for the branch predictor,
         * so it becomes a mask (fit = size or SIZE_MAX) and the only branch
         * left is taken just when the best so far improves. */
        const segment *s = &a->seg[i];
        size_t ok = (size_t)0 - (size_t)(s->free & (s->size >= need));
        size_t fit = (s->size & ok) | ~ok;
        if (fit < best_size) {
            best = i;
            best_size = fit;
            if (fit == need) break;
        }
    }
    return best;
}

/* The out-of-memory report for `bytes` of `tag` asked of an arena of
 * `capacity` with `in_use` bytes live (tag_in_use of them by tag) and a
 * largest free block of `largest`. */
static void format_oom(char out[TM__REPORT_MAX], int device, size_t bytes, tm_tag tag,
                       size_t capacity, size_t in_use, size_t largest, const size_t *tag_in_use)
{
    char asked[TM__HUMAN_MAX], cap[TM__HUMAN_MAX], used[TM__HUMAN_MAX];
    char avail[TM__HUMAN_MAX], big[TM__HUMAN_MAX], t[TM__HUMAN_MAX];
    size_t n = (size_t)snprintf(
        out, TM__REPORT_MAX,
        "device %d: out of memory: tried to allocate %s (%zu bytes, tag %s); "
        "capacity %s, %s in use, %s free, largest free block %s\n  by tag:",
        device, tm__human(asked, bytes), bytes, tm_tag_name(tag), tm__human(cap, capacity),
        tm__human(used, in_use), tm__human(avail, capacity - in_use), tm__human(big, largest));
    for (int k = 0; k < TM_TAG_COUNT && n < TM__REPORT_MAX; k++)
        n += (size_t)snprintf(out + n, TM__REPORT_MAX - n, "%s %s %s", k ? "," : "",
                              tm_tag_name((tm_tag)k), tm__human(t, tag_in_use[k]));
}

static void record_oom(tm_arena *a, size_t bytes, tm_tag tag)
{
    format_oom(a->oom, a->device, bytes, tag, a->capacity, a->in_use, largest_free(a),
               a->tag_in_use);
    tm_error(TM_ENOMEM, "%s", a->oom);
}

/* A block's size in the arena: whole alignment units, at least one. The
 * caller has checked bytes <= capacity, so this cannot overflow. */
static size_t block_size(size_t bytes)
{
    return bytes ? (bytes + TM_ARENA_ALIGN - 1) / TM_ARENA_ALIGN * TM_ARENA_ALIGN : TM_ARENA_ALIGN;
}

size_t tm_arena_block_bytes(size_t bytes)
{
    return bytes > SIZE_MAX - TM_ARENA_ALIGN ? SIZE_MAX : block_size(bytes);
}

int tm_arena_fits(size_t capacity, int device, const size_t *bytes, const tm_tag *tags, int n)
{
    size_t usable = capacity / TM_ARENA_ALIGN * TM_ARENA_ALIGN, in_use = 0;
    size_t by_tag[TM_TAG_COUNT] = {0};
    if (usable == 0) return capacity_error(device, capacity);
    for (int i = 0; i < n; i++) {
        /* In a fresh arena blocks lie end to end (best fit has one free
         * block to choose from), so what is left is one free block. */
        size_t left = usable - in_use;
        if (bytes[i] > left || block_size(bytes[i]) > left) {
            char report[TM__REPORT_MAX];
            format_oom(report, device, bytes[i], tags[i], usable, in_use, left, by_tag);
            return tm_error(TM_ENOMEM, "%s", report);
        }
        in_use += block_size(bytes[i]);
        by_tag[tags[i]] += block_size(bytes[i]);
    }
    return TM_OK;
}

void *tm_arena_alloc(tm_arena *arena, size_t bytes, tm_tag tag)
{
    char hbuf[TM__HUMAN_MAX];
    if (!arena) {
        tm_error(TM_EINVAL, "tm_arena_alloc: arena is NULL");
        return NULL;
    }
    if ((unsigned)tag >= TM_TAG_COUNT) {
        tm_error(TM_EINVAL, "device %d: invalid allocation tag %d",
                 arena->device, (int)tag);
        return NULL;
    }
    /* A request above the capacity cannot fit; testing it first also keeps
     * the rounding below from overflowing near SIZE_MAX. */
    size_t need = 0, i = arena->nseg;
    if (bytes <= arena->capacity) {
        need = block_size(bytes);
        i = best_fit(arena, need);
    }
    if (i == arena->nseg) {
        record_oom(arena, bytes, tag);
        return NULL;
    }
    if (arena->seg[i].size > need) {
        if (!seg_insert(arena, i + 1)) {
            snprintf(arena->oom, sizeof arena->oom,
                     "device %d: no host memory for the arena's block list "
                     "while allocating %s (tag %s)",
                     arena->device, tm__human(hbuf, bytes), tm_tag_name(tag));
            tm_error(TM_EHOSTMEM, "%s", arena->oom);
            return NULL;
        }
        segment *s = &arena->seg[i];
        arena->seg[i + 1] = (segment){
            .offset = s->offset + need, .size = s->size - need, .free = true};
        s->size = need;
    }
    segment *s = &arena->seg[i];
    s->free = false;
    s->tag = tag;
    s->requested = bytes;
    arena->in_use += need;
    arena->live_blocks++;
    arena->tag_in_use[tag] += need;
    if (arena->in_use > arena->peak) arena->peak = arena->in_use;
    if (arena->tag_in_use[tag] > arena->tag_peak[tag])
        arena->tag_peak[tag] = arena->tag_in_use[tag];
    unsigned char *p = arena->base + s->offset;
    TM__UNPOISON(p, bytes);
    return p;
}

/* Misuse that can only be a bug: report it where the bug happened. */
static _Noreturn void bad_free(const tm_arena *a, const void *ptr,
                               const char *why)
{
    fprintf(stderr, "tinymesh: device %d: tm_arena_free(%p): %s\n",
            a ? a->device : -1, ptr, why);
    abort();
}

/* Index of the live block that starts at ptr; aborts if there is none. */
static size_t find_live(const tm_arena *a, const void *ptr)
{
    uintptr_t p = (uintptr_t)ptr, b = (uintptr_t)a->base;
    if (p < b || p - b >= a->capacity)
        bad_free(a, ptr, "pointer is not inside this arena");
    size_t off = p - b, lo = 0, hi = a->nseg;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (a->seg[mid].offset <= off)
            lo = mid;
        else
            hi = mid;
    }
    if (a->seg[lo].offset != off)
        bad_free(a, ptr, "pointer is inside a block, not its start");
    if (a->seg[lo].free) bad_free(a, ptr, "double free");
    return lo;
}

void tm_arena_free(tm_arena *arena, void *ptr)
{
    if (!ptr) return;
    if (!arena) bad_free(arena, ptr, "arena is NULL");
    size_t i = find_live(arena, ptr);
    segment *s = &arena->seg[i];
    arena->in_use -= s->size;
    arena->live_blocks--;
    arena->tag_in_use[s->tag] -= s->size;
    TM__POISON(arena->base + s->offset, s->size);
    s->free = true;
    if (i + 1 < arena->nseg && arena->seg[i + 1].free) {
        s->size += arena->seg[i + 1].size;
        seg_remove(arena, i + 1);
    }
    if (i > 0 && arena->seg[i - 1].free) {
        arena->seg[i - 1].size += arena->seg[i].size;
        seg_remove(arena, i);
    }
}

void tm_arena_stats_get(const tm_arena *arena, tm_arena_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!arena) return;
    out->capacity = arena->capacity;
    out->in_use = arena->in_use;
    out->peak = arena->peak;
    out->largest_free = largest_free(arena);
    out->live_blocks = arena->live_blocks;
    memcpy(out->tag_in_use, arena->tag_in_use, sizeof out->tag_in_use);
    memcpy(out->tag_peak, arena->tag_peak, sizeof out->tag_peak);
}

void tm_arena_reset_peak(tm_arena *arena)
{
    if (!arena) return;
    arena->peak = arena->in_use;
    memcpy(arena->tag_peak, arena->tag_in_use, sizeof arena->tag_peak);
}

const char *tm_arena_oom_report(const tm_arena *arena)
{
    return arena ? arena->oom : "";
}

int tm_parse_size(const char *text, size_t *out)
{
    if (!text || !out) return tm_error(TM_EINVAL, "tm_parse_size: NULL argument");
    const char *p = text;
    uint64_t whole = 0;
    if (*p < '0' || *p > '9') goto malformed;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (whole > (UINT64_MAX - d) / 10) goto too_large;
        whole = whole * 10 + d;
    }
    const char *frac = p, *frac_end = p;
    if (*p == '.') {
        frac = ++p;
        while (*p >= '0' && *p <= '9') p++;
        frac_end = p;
        if (frac == frac_end) goto malformed;
    }
    int shift = 0;
    switch (*p) {
    case 'K': case 'k': shift = 10; break;
    case 'M': case 'm': shift = 20; break;
    case 'G': case 'g': shift = 30; break;
    case 'T': case 't': shift = 40; break;
    default: break;
    }
    if (shift) p++;
    bool suffix_ok = *p == '\0' || strcmp(p, "B") == 0 ||
                     (shift && strcmp(p, "iB") == 0);
    /* A fraction of a byte means nothing, so fractions need a unit. */
    if (!suffix_ok || (frac != frac_end && !shift)) goto malformed;
    uint64_t unit = (uint64_t)1 << shift;
    if (whole > UINT64_MAX >> shift) goto too_large;
    /* floor(unit * 0.d1d2...dn) exactly, by Horner's rule from the last
     * digit: floor((d * unit + floor(r)) / 10) == floor((d * unit + r) / 10)
     * because d * unit is an integer, so no step loses anything and no
     * intermediate exceeds 10 * unit. */
    uint64_t part = 0;
    for (const char *q = frac_end; q > frac;) {
        q--;
        part = ((uint64_t)(*q - '0') * unit + part) / 10;
    }
    uint64_t bytes = whole << shift;
    if (part > UINT64_MAX - bytes || bytes + part > SIZE_MAX) goto too_large;
    *out = (size_t)(bytes + part);
    return TM_OK;

malformed:
    return tm_error(TM_EINVAL,
                    "malformed size \"%s\" (expected e.g. 4096, 512K, 64M, "
                    "1.5G)", text);
too_large:
    return tm_error(TM_EINVAL, "size \"%s\" is too large", text);
}
