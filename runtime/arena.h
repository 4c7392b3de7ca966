/* A device's memory: one capped region, allocated once, with a real allocator
 * inside (free in any order), tagged allocations and an OOM report.
 * Not thread-safe: an arena belongs to one device thread at a time. */
#ifndef TM_ARENA_H
#define TM_ARENA_H

#include <stddef.h>

/* Every allocation says what it is for; stats and OOM reports go by tag.
 * host: what a device keeps in host memory (optimizer offload), allocated
 * from an arena of its own, never from the device's. */
#define TM_TAG_MAP(X)                                                          \
    X(PARAM, "param")                                                          \
    X(GRAD, "grad")                                                            \
    X(OPTIMIZER, "optimizer")                                                  \
    X(ACTIVATION, "activation")                                                \
    X(COMM, "comm")                                                            \
    X(WORKSPACE, "workspace")                                                  \
    X(BF16, "bf16")                                                            \
    X(HOST, "host")

typedef enum {
#define TM__TAG_ENUM(name, str) TM_TAG_##name,
    TM_TAG_MAP(TM__TAG_ENUM)
#undef TM__TAG_ENUM
    TM_TAG_COUNT
} tm_tag;

/* Alignment of every block returned by tm_arena_alloc. */
#define TM_ARENA_ALIGN 64

typedef struct tm_arena tm_arena;

typedef struct {
    size_t capacity;                /* bytes the arena may hand out */
    size_t in_use;                  /* bytes in live blocks (after rounding) */
    size_t peak;                    /* high-water mark of in_use */
    size_t largest_free;            /* largest block that could be allocated */
    size_t live_blocks;             /* number of live allocations */
    size_t tag_in_use[TM_TAG_COUNT];
    size_t tag_peak[TM_TAG_COUNT];  /* high-water mark per tag */
} tm_arena_stats;

/* Creates an arena of `capacity` bytes for device `device` (used in reports).
 * The region is reserved but not touched; see tm_arena_prefault. The usable
 * capacity is `capacity` rounded down to a multiple of TM_ARENA_ALIGN.
 * Returns TM_OK, TM_EINVAL (capacity below TM_ARENA_ALIGN) or TM_EHOSTMEM
 * (the host refused). */
int tm_arena_create(tm_arena **out, size_t capacity, int device);
/* Frees the region; NULL is a no-op. */
void tm_arena_destroy(tm_arena *arena);
/* Asks for huge pages, then touches every page so the first real use does
 * not pay page faults; call from the thread that will use the arena. */
void tm_arena_prefault(tm_arena *arena);

/* Returns a TM_ARENA_ALIGN-aligned block of at least `bytes` (0 allowed:
 * a unique non-NULL pointer), or NULL when it does not fit; then the OOM
 * report (tm_arena_oom_report) describes the failure. Never aborts. */
void *tm_arena_alloc(tm_arena *arena, size_t bytes, tm_tag tag);
/* Whether blocks of bytes[i] with tags[i], allocated in this order, fit a
 * fresh arena of `capacity` for `device`, decided without reserving any
 * memory: TM_OK, or TM_ENOMEM with the report tm_arena_alloc would record
 * for the first block that does not (the blocks before it in use);
 * TM_EINVAL as tm_arena_create for a capacity below TM_ARENA_ALIGN. */
int tm_arena_fits(size_t capacity, int device, const size_t *bytes, const tm_tag *tags, int n);
/* The bytes a block asked for with `bytes` takes in the arena, as in_use
 * and the peaks count it: whole TM_ARENA_ALIGN units, at least one. */
size_t tm_arena_block_bytes(size_t bytes);
/* Returns a block to the arena; NULL is a no-op. A pointer the arena did not
 * hand out (or a double free) is a bug and aborts. */
void tm_arena_free(tm_arena *arena, void *ptr);

void tm_arena_stats_get(const tm_arena *arena, tm_arena_stats *out);
/* Resets the peaks (overall and per tag) to the current usage. */
void tm_arena_reset_peak(tm_arena *arena);
/* The report of the last failed allocation, in the spirit of CUDA's OOM
 * message (device, bytes asked, capacity, in use, free, largest free block,
 * usage by tag); "" if none failed. Valid until the next failure. */
const char *tm_arena_oom_report(const tm_arena *arena);

/* "param", "grad", ... ; "?" for an invalid tag. */
const char *tm_tag_name(tm_tag tag);
/* Parses sizes like "64M", "1G", "4096", "512K", "1.5G" (binary units K, M,
 * G, T in either case, optional "B" or "iB" suffix; a decimal fraction needs
 * a unit and is rounded down to whole bytes); returns 0 and sets *out, or
 * -1 (TM_EINVAL, with a message) on a malformed or too large value. */
int tm_parse_size(const char *text, size_t *out);

/* For the runtime's own messages: "1.50 MiB", "512 B" (binary units). */
#define TM__HUMAN_MAX 24
const char *tm__human(char buf[TM__HUMAN_MAX], size_t bytes);

#endif
