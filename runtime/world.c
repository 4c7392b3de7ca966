#include "runtime/world_internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/process.h"
#include "runtime/status.h"
#include "runtime/topo.h"
#include "runtime/transport.h"

#define DEFAULT_WATCHDOG_S 30.0

void tm_world_config_default(tm_world_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->n_devices = 1;
    cfg->mem_cap = (size_t)64 << 20;
    cfg->pin = TM_PIN_AUTO;
    cfg->prefault = 1;
    tm_clock_config_default(&cfg->clock);
}

/* Ring size by device count. The rule of thumb is that the rings of all
 * devices should share the last-level cache, but this VM's hwloc reports
 * the host's 508 MiB "L3", and measured here 1 MiB rings were the fastest
 * 8-device 16 MiB all-reduce (1.13 GB/s busbw, against 1.05 / 0.83 / 0.57
 * for 256 / 128 / 64 KiB), so the size is a table: 1 MiB up to 16 devices,
 * halving with each doubling beyond (64 KiB at 256 devices), at least
 * 16 KiB. */
static size_t default_ring_bytes(int n)
{
    size_t ring = (size_t)1 << 20;
    for (int k = 16; k < n && ring > (16 << 10); k *= 2) ring /= 2;
    return ring;
}

/* The stop agreement's words (runtime/stop.h) travel with the failures. */
static void tell_stop(void *ctx, const tm_stop_word *word)
{
    tm_world *w = ctx;
    tm__mpi_stop_tell(w->mpi, word);
}

void tm__world_stop_heard(tm_world *w, const tm_stop_word *word)
{
    if (w->cfg.stop != NULL) tm_stop_heard(w->cfg.stop, word);
}

int tm_world_create(tm_world **out, const tm_world_config *cfg_in)
{
    *out = NULL;
    tm_world_config local_cfg = *cfg_in;
    const tm_world_config *cfg = &local_cfg;
    if (cfg->n_devices < 1 || cfg->n_devices > TM_MAX_DEVICES)
        return tm_error(TM_EINVAL, "device count %d is outside 1..%d", cfg->n_devices,
                        TM_MAX_DEVICES);
    if (cfg->mem_cap == 0) return tm_error(TM_EINVAL, "device memory cap is 0");
    TM_CHECK(tm_process_init());
    int procs = cfg->local ? 1 : tm_process_count(), per = cfg->n_devices / procs;
    if (cfg->n_devices % procs != 0)
        return tm_error(TM_EINVAL, "%d devices do not split evenly over %d processes (each "
                        "process runs an equal block of devices)", cfg->n_devices, procs);
    /* Emulated nodes are the processes unless the configuration says
     * otherwise: links between processes are the slow ones. */
    if (procs > 1 && local_cfg.clock.devices_per_node == 0) local_cfg.clock.devices_per_node = per;
    TM_CHECK(tm_clock_config_check(&cfg->clock));
    size_t ring = cfg->ring_bytes ? cfg->ring_bytes : default_ring_bytes(cfg->n_devices);
    if (ring < 4 * TM_LINK_ALIGN || (ring & (ring - 1)) != 0)
        return tm_error(TM_EINVAL, "ring size %zu is not a power of two >= %d", ring,
                        4 * TM_LINK_ALIGN);

    /* Ring and tree collectives use O(n log n) links; count 2n log2(n) rings
     * as the expected link memory. */
    size_t n = (size_t)per, logn = 1;
    while (((size_t)1 << logn) < n) logn++;
    size_t rings = 2 * n * logn * ring;
    int too_big = cfg->mem_cap > (SIZE_MAX - rings) / n;
    size_t need = too_big ? SIZE_MAX : n * cfg->mem_cap + rings;
    size_t avail = tm_host_available_memory();
    if (too_big || (avail > 0 && need > avail / 10 * 9)) {
        /* The figures only: which flag sets each is the program's to say. */
        char cap[TM__HUMAN_MAX], ring_b[TM__HUMAN_MAX], rings_b[TM__HUMAN_MAX];
        char need_b[TM__HUMAN_MAX], avail_b[TM__HUMAN_MAX];
        return tm_error(TM_EHOSTMEM,
                        "%d device%s x %s of device memory + %s of link rings (%s each) need "
                        "%s of host memory, but %s is available (at most 90%% of it is used)",
                        per, per == 1 ? "" : "s",
                        tm__human(cap, cfg->mem_cap), tm__human(rings_b, rings),
                        tm__human(ring_b, ring),
                        too_big ? "more than the address space" : tm__human(need_b, need),
                        tm__human(avail_b, avail));
    }

    tm_world *w = calloc(1, sizeof *w);
    if (w == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the world");
    w->cfg = *cfg;
    if (w->cfg.watchdog_s <= 0) w->cfg.watchdog_s = DEFAULT_WATCHDOG_S;
    w->n = cfg->n_devices;
    w->lo = procs > 1 ? tm_process_rank() * per : 0;
    w->hi = w->lo + per;
    w->ring_bytes = ring;
    tm_topo_info t;
    tm_topo_get(&t);
    /* Measured here (README, Benchmarks): pinned beats unpinned for every
     * message size up to 1 MiB, by 1.2-1.9x at 8 and 16 devices on 2 cores,
     * and by far at 2 devices (unpinned, the guest packs both threads on one
     * vCPU); only 16 MiB all-reduces were faster unpinned. A single device
     * talks to no one: pinning it would only stop the scheduler from moving
     * it away from another busy process (two 1-device runs side by side
     * shared core 0 at half speed each). */
    w->pinned = cfg->pin == TM_PIN_ON || (cfg->pin == TM_PIN_AUTO && per > 1);
    /* Placement counts the devices of every process on this host, so that
     * processes side by side spread over the cores instead of sharing the
     * first ones. */
    int slot, slots;
    tm__process_host_slot(&slot, &slots);
    w->place0 = slot * per;
    w->placed = slots * per;
    atomic_init(&w->failed, -1);
    pthread_mutex_init(&w->link_lock, NULL);
    pthread_mutex_init(&w->fail_lock, NULL);
    pthread_mutex_init(&w->done_lock, NULL);
    pthread_cond_init(&w->done_cond, NULL);
    w->devices = calloc((size_t)w->n, sizeof *w->devices);
    w->links = calloc((size_t)w->n * (size_t)w->n, sizeof *w->links);
    if (w->devices == NULL || w->links == NULL) goto nomem;
    /* Every device of this host counts: processes side by side share the
     * cores. */
    int oversubscribed = w->placed > t.cores;
    for (int i = 0; i < w->n; i++) {
        w->devices[i].world = w;
        w->devices[i].id = i;
    }
    for (int i = w->lo; i < w->hi; i++) {
        tm_device *d = &w->devices[i];
        d->world = w;
        d->id = i;
        d->waiter.abort = &w->abort;
        /* Measured here: with devices <= cores, a short spin then yields
         * before sleeping (2-device 16 MiB all-reduce 7.9 ms, against 10.7
         * for a 4000-pause spin, which takes the CPU from the partner we
         * wait for on a VM whose vCPUs stall; no spin at all costs 82 us on
         * a 4 KiB all-reduce, since waking an idle vCPU is slow).
         * Oversubscribed, any pause spinning is ruinous and a few yields
         * before a futex sleep win. */
        d->waiter.spin = oversubscribed ? 0 : 200;
        d->waiter.yields = oversubscribed ? 4 : 16;
        int st = tm_arena_create(&d->arena, cfg->mem_cap, i);
        if (st != TM_OK) {
            tm_world_destroy(w);
            return st;
        }
    }
    if (procs > 1) {
        /* Spanned before the other processes can speak: their words arrive
         * once the world's MPI share exists. */
        if (cfg->stop != NULL)
            tm_stop_span(cfg->stop, procs, tm_process_rank(), tell_stop, w, &w->abort);
        int st = tm__mpi_world_create(w, w->n, ring, &w->mpi);
        if (st != TM_OK) {
            tm_world_destroy(w);
            return st;
        }
    }
    *out = w;
    return TM_OK;
nomem:
    tm_world_destroy(w);
    return tm_error(TM_EHOSTMEM, "cannot allocate the device table for %d devices", cfg->n_devices);
}

static int is_local(const tm_world *w, int id) { return id >= w->lo && id < w->hi; }

/* The transport between two devices, at least one of them ours. */
static const tm_transport *transport_of(tm_world *w, int src, int dst)
{
    if (is_local(w, src) && is_local(w, dst)) return &tm__transport_ring;
    return tm__mpi_transport(w->mpi, src, dst);
}

static int ring_connect(tm_world *w, int src, int dst, tm_link **out)
{
    return tm__link_create(out, w->ring_bytes, src, dst);
}

static void ring_disconnect(tm_world *w, tm_link *l)
{
    (void)w;
    tm__link_destroy(l);
}

const tm_transport tm__transport_ring = {"ring", ring_connect, ring_disconnect};

void tm_world_destroy(tm_world *w)
{
    if (w == NULL) return;
    if (w->devices != NULL) {
        for (int i = 0; i < w->n; i++) {
            tm_comm_destroy(w->devices[i].comm);
            tm__clock_free(&w->devices[i].clock);
            tm_arena_destroy(w->devices[i].arena);
        }
    }
    if (w->links != NULL) {
        for (size_t i = 0; i < (size_t)w->n * w->n; i++) {
            tm_link *l = atomic_load(&w->links[i]);
            if (l != NULL) transport_of(w, tm__link_src(l), tm__link_dst(l))->disconnect(w, l);
        }
    }
    tm__mpi_world_destroy(w->mpi);
    free(w->all_links);
    free(w->links);
    free(w->devices);
    pthread_mutex_destroy(&w->link_lock);
    pthread_mutex_destroy(&w->fail_lock);
    pthread_mutex_destroy(&w->done_lock);
    pthread_cond_destroy(&w->done_cond);
    free(w);
}

int tm__world_link(tm_world *w, int src, int dst, tm_link **out)
{
    _Atomic(tm_link *) *slot = &w->links[(size_t)src * w->n + dst];
    /* Acquire: pairs with the release below, so a link seen is fully built. */
    tm_link *l = atomic_load_explicit(slot, memory_order_acquire);
    if (l == NULL) {
        pthread_mutex_lock(&w->link_lock);
        l = atomic_load_explicit(slot, memory_order_relaxed);
        int st = TM_OK;
        if (l == NULL) st = transport_of(w, src, dst)->connect(w, src, dst, &l);
        if (st == TM_OK) {
            atomic_store_explicit(slot, l, memory_order_release);
            atomic_fetch_add(&w->link_memory, w->ring_bytes);
        }
        pthread_mutex_unlock(&w->link_lock);
        if (st != TM_OK) return st;
    }
    *out = l;
    return TM_OK;
}

static void *device_main(void *arg)
{
    tm_device *d = arg;
    tm_world *w = d->world;
    tm_error_clear();
    int st = TM_OK;
    if (w->pinned) st = tm_topo_pin_self(tm_topo_core_of(w->place0 + d->id - w->lo, w->placed));
    if (st == TM_OK && !d->prefaulted && w->cfg.prefault) {
        tm_arena_prefault(d->arena);
        d->prefaulted = 1;
    }
    /* A fresh world communicator per run: an aborted run leaves sequence
     * numbers that no longer agree between devices. */
    tm_comm_destroy(d->comm);
    d->comm = NULL;
    if (st == TM_OK) {
        int *ids = malloc(sizeof *ids * (size_t)w->n);
        if (ids == NULL) {
            st = tm_error(TM_EHOSTMEM, "cannot allocate the world communicator");
        } else {
            for (int i = 0; i < w->n; i++) ids[i] = i;
            st = tm_comm_create(d, ids, w->n, "world", &d->comm);
            free(ids);
        }
    }
    if (st == TM_OK) st = w->fn(d, w->arg);
    d->status = st;
    if (st != TM_OK && st != TM_EABORTED) tm__world_fail(w, d->id, st, tm_error_message());
    atomic_store(&d->done, 1);
    pthread_mutex_lock(&w->done_lock);
    w->n_done++;
    pthread_cond_signal(&w->done_cond);
    pthread_mutex_unlock(&w->done_lock);
    return NULL;
}

int tm_world_run(tm_world *w, tm_device_fn fn, void *arg)
{
    if (w->spoiled)
        return tm_error(TM_EINVAL, "this world's devices span processes and its last run "
                        "failed: it cannot run again");
    w->fn = fn;
    w->arg = arg;
    /* Modeled time starts at 0 on every device and link for each run. */
    double wall0 = tm__world_now();
    for (int i = 0; i < w->n; i++) {
        tm__clock_init(&w->devices[i].clock, &w->cfg.clock, i, wall0);
    }
    for (size_t i = 0; i < (size_t)w->n * w->n; i++) {
        tm_link *l = atomic_load(&w->links[i]);
        if (l != NULL) *tm__link_vfree(l) = 0;
    }
    w->n_done = 0;
    w->error[0] = '\0';
    w->status = TM_OK;
    w->origin = 0;
    atomic_store(&w->failed, -1);
    atomic_store(&w->abort, 0);
    /* Device threads start with the signals that end a process blocked
     * (they inherit the creator's mask), so a program's handlers for them
     * run on its host thread, where a handler that ends the process at once
     * can tidy up what the host thread was doing; on a device thread it
     * would race the host. A pipe that breaks under a device thread's write
     * then gives that write EPIPE instead of a signal. */
    sigset_t ending, old_mask;
    sigemptyset(&ending);
    int ending_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE};
    for (size_t i = 0; i < sizeof ending_signals / sizeof ending_signals[0]; i++)
        sigaddset(&ending, ending_signals[i]);
    pthread_sigmask(SIG_BLOCK, &ending, &old_mask);
    int started = w->lo;
    for (; started < w->hi; started++) {
        tm_device *d = &w->devices[started];
        atomic_store(&d->done, 0);
        if (pthread_create(&d->thread, NULL, device_main, d) != 0) break;
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    if (started < w->hi) {
        tm__world_fail(w, -2, TM_ESYS, "cannot start a thread for every device");
        pthread_mutex_lock(&w->done_lock);
        w->n_done += w->hi - started;
        pthread_mutex_unlock(&w->done_lock);
    }
    tm__world_watch(w);
    for (int i = w->lo; i < started; i++) pthread_join(w->devices[i].thread, NULL);
    if (w->mpi != NULL) {
        int st = tm__world_agree(w);
        if (st != TM_OK) return st;
        pthread_mutex_lock(&w->fail_lock);
        st = w->status;
        pthread_mutex_unlock(&w->fail_lock);
        return st;
    }
    if (atomic_load(&w->abort)) {
        /* Rings may hold half-sent messages: start the next run clean. */
        for (size_t i = 0; i < (size_t)w->n * w->n; i++) {
            tm_link *l = atomic_load(&w->links[i]);
            if (l != NULL) tm__link_reset(l);
        }
    }
    return w->status;
}

const char *tm_world_error(const tm_world *w) { return w->error; }
int tm_world_failed_device(const tm_world *w)
{
    int f = atomic_load(&w->failed);
    return f >= 0 ? f : -1;
}
int tm_world_size(const tm_world *w) { return w->n; }
tm_arena *tm_world_arena(tm_world *w, int device) { return w->devices[device].arena; }
int tm_world_device_process(const tm_world *w, int device) { return device / (w->hi - w->lo); }
int tm_world_is_local(const tm_world *w, int device) { return is_local(w, device); }
tm_mpi_world *tm__world_mpi(tm_world *w) { return w->mpi; }

int tm_world_device_count_local(const tm_world *w) { return w->hi - w->lo; }

int tm_world_share_host(tm_world *w, const void *mine, size_t bytes, void *all)
{
    if (w->mpi == NULL) {
        memcpy(all, mine, bytes);
        return TM_OK;
    }
    return tm__mpi_allgather(w->mpi, mine, bytes, all);
}

int tm_world_share(tm_world *w, void *base, size_t stride)
{
    if (w->mpi == NULL) return TM_OK;
    size_t per = (size_t)(w->hi - w->lo), counts[TM_MAX_DEVICES];
    void *all = NULL;
    TM_CHECK(tm__mpi_allgatherv(w->mpi, (char *)base + (size_t)w->lo * stride, per * stride,
                                &all, counts));
    memcpy(base, all, (size_t)w->n * stride);
    free(all);
    return TM_OK;
}
size_t tm_world_ring_bytes(const tm_world *w) { return w->ring_bytes; }
int tm_world_pinned(const tm_world *w) { return w->pinned; }
size_t tm_world_link_memory(const tm_world *w) { return atomic_load(&w->link_memory); }
int tm__world_aborted(const tm_world *w) { return atomic_load(&w->abort); }

void tm_world_links(const tm_world *w, void (*fn)(const tm_link_stats *, void *), void *ctx)
{
    if (w->mpi != NULL) {
        /* Gathered in (src, dst) order: processes hold contiguous blocks of
         * sources, each listed in order. */
        for (int i = 0; i < w->n_all_links; i++) fn(&w->all_links[i], ctx);
        return;
    }
    for (size_t i = 0; i < (size_t)w->n * w->n; i++) {
        tm_link *l = atomic_load(&w->links[i]);
        if (l == NULL) continue;
        tm_link_stats s = {tm__link_src(l), tm__link_dst(l), tm__link_bytes(l),
                           tm__link_messages(l)};
        fn(&s, ctx);
    }
}

int tm_device_id(const tm_device *d) { return d->id; }
int tm_device_count(const tm_device *d) { return d->world->n; }
tm_world *tm_device_world(tm_device *d) { return d->world; }
tm_arena *tm_device_arena(tm_device *d) { return d->arena; }
tm_comm *tm_device_comm(tm_device *d) { return d->comm; }
tm_waiter *tm__device_waiter(tm_device *d) { return &d->waiter; }
tm_vclock *tm__device_clock(tm_device *d) { return &d->clock; }
const tm_vclock *tm__world_clock(const tm_world *w, int id) { return &w->devices[id].clock; }

const tm_event *tm_world_events(const tm_world *w, int id, size_t *n)
{
    *n = w->devices[id].clock.n_events;
    return w->devices[id].clock.events;
}

void tm_world_clock_stats(const tm_world *w, int id, tm_clock_stats *out)
{
    *out = w->devices[id].clock.s;
}

void *tm_device_alloc(tm_device *d, size_t bytes, tm_tag tag)
{
    return tm_arena_alloc(d->arena, bytes, tag);
}

void tm_device_free(tm_device *d, void *ptr) { tm_arena_free(d->arena, ptr); }
