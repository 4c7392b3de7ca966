/* How a run ends: the first failure (recorded once, told to every waiter
 * and, across processes, to the other processes), the deadlock watchdog,
 * and across processes the agreement on the outcome, the links' traffic
 * and the devices' modeled accounts. */
#include "runtime/world_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/process.h"
#include "runtime/status.h"
#include "runtime/transport.h"

#define WATCHDOG_TICK_MS 50

/* Inserts text at byte pos of the string in buf (cap bytes), cutting its
 * end when it no longer fits. */
static void insert_at(char *buf, size_t cap, size_t pos, const char *text)
{
    size_t t = strlen(text), n = strlen(buf);
    if (pos > n || pos + t >= cap) return;
    if (n + t >= cap) n = cap - t - 1;
    memmove(buf + pos + t, buf + pos, n - pos);
    memcpy(buf + pos, text, t);
    buf[n + t] = '\0';
}

/* Records the first failure and wakes every waiter. Later failures (devices
 * woken by the abort) are not recorded. A failure that starts here is told
 * to the other processes; one that comes from them (remote) arrives with
 * its message whole. */
static void fail_as(tm_world *w, int who, int status, const char *message, int remote)
{
    int expected = -1;
    /* Across processes another's failure arrives on the progress thread,
     * possibly while the host thread reads the run's end (agree). */
    pthread_mutex_lock(&w->fail_lock);
    if (!atomic_compare_exchange_strong(&w->failed, &expected, who)) {
        pthread_mutex_unlock(&w->fail_lock);
        return;
    }
    w->status = status;
    char prefix[32];
    snprintf(prefix, sizeof prefix, "device %d: ", who);
    if (remote)
        snprintf(w->error, sizeof w->error, "%s", message);
    else if (who >= 0 && strncmp(message, prefix, strlen(prefix)) == 0)
        snprintf(w->error, sizeof w->error, "%s", message); /* already names it (OOM report) */
    else if (who >= 0)
        snprintf(w->error, sizeof w->error, "%s%s", prefix,
                 message[0] ? message : tm_strerror(status));
    else
        snprintf(w->error, sizeof w->error, "%s", message);
    /* Across processes the message names the process too: "device 5
     * (process 1): ..." or "process 1: watchdog ...". */
    if (!remote && w->mpi != NULL) {
        char proc[48];
        snprintf(proc, sizeof proc, who >= 0 ? " (process %d)" : "process %d: ", tm_process_rank());
        insert_at(w->error, sizeof w->error, who >= 0 ? strlen(prefix) - 2 : 0, proc);
    }
    w->origin = !remote;
    pthread_mutex_unlock(&w->fail_lock);
    atomic_store(&w->abort, 1);
    if (!remote && w->mpi != NULL) tm__mpi_abort(w->mpi, who, status, w->error);
    for (size_t i = 0; i < (size_t)w->n * w->n; i++) {
        tm_link *l = atomic_load_explicit(&w->links[i], memory_order_acquire);
        if (l != NULL) tm__link_wake_all(l);
    }
}

void tm__world_fail(tm_world *w, int who, int status, const char *message)
{
    fail_as(w, who, status, message, 0);
}

void tm__world_fail_remote(tm_world *w, int who, int status, const char *message)
{
    fail_as(w, who, status, message, 1);
}

double tm__world_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t total_progress(tm_world *w)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < (size_t)w->n * w->n; i++) {
        tm_link *l = atomic_load_explicit(&w->links[i], memory_order_acquire);
        if (l != NULL) sum += tm__link_progress(l);
    }
    return sum;
}

/* 1 if every device still running is asleep on a link. */
static int all_blocked(tm_world *w)
{
    int running = 0;
    for (int i = w->lo; i < w->hi; i++) {
        tm_device *d = &w->devices[i];
        if (atomic_load(&d->done)) continue;
        running++;
        if (atomic_load(&d->waiter.blocked_on) == NULL) return 0;
    }
    return running > 0;
}

static void declare_deadlock(tm_world *w, double idle_s)
{
    char msg[sizeof w->error];
    int len = snprintf(msg, sizeof msg, "watchdog: no progress on any link for %.1f s:", idle_s);
    for (int i = w->lo; i < w->hi && len < (int)sizeof msg - 64; i++) {
        tm_device *d = &w->devices[i];
        tm_link *l = atomic_load(&d->waiter.blocked_on);
        if (atomic_load(&d->done))
            len += snprintf(msg + len, sizeof msg - len, " device %d finished;", i);
        else if (l != NULL && atomic_load(&d->waiter.blocked_for_space))
            len += snprintf(msg + len, sizeof msg - len, " device %d waits to send to device %d;",
                            i, tm__link_dst(l));
        else if (l != NULL)
            len += snprintf(msg + len, sizeof msg - len,
                            " device %d waits to receive from device %d;", i, tm__link_src(l));
    }
    if (len > 0 && msg[len - 1] == ';') msg[len - 1] = '\0';
    tm__world_fail(w, -2, TM_EDEADLOCK, msg);
}

/* The host thread's part of a run: wait for the devices, and meanwhile watch
 * for a deadlock. Progress is the links' byte counters, so a long start-up or
 * a long computation is never mistaken for one: only "everyone still running
 * is asleep on a link and no byte moved" for watchdog_s seconds counts.
 * Across processes each watches its own devices and the links they use
 * (whose counters move when the other process sends or reads): a process
 * whose devices all wait while another computes for longer than watchdog_s
 * is taken for a deadlock. */
void tm__world_watch(tm_world *w)
{
    int local = w->hi - w->lo;
    uint64_t last = total_progress(w);
    double since = tm__world_now();
    pthread_mutex_lock(&w->done_lock);
    while (w->n_done < local) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += WATCHDOG_TICK_MS * 1000000L;
        if (t.tv_nsec >= 1000000000L) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w->done_cond, &w->done_lock, &t);
        if (w->n_done == local || atomic_load(&w->abort)) continue;
        pthread_mutex_unlock(&w->done_lock);
        uint64_t p = total_progress(w);
        double now = tm__world_now();
        if (p != last || !all_blocked(w)) {
            last = p;
            since = now;
        } else if (now - since >= w->cfg.watchdog_s) {
            declare_deadlock(w, now - since);
        }
        pthread_mutex_lock(&w->done_lock);
    }
    pthread_mutex_unlock(&w->done_lock);
}

/* Every process gets every device's modeled accounts and recorded events,
 * so that traces, timelines and tables cover the whole world wherever
 * they are written. An event's name is a static string of this program,
 * whose address differs between processes (each maps the binary at its
 * own base): it travels as its distance from a string of ours, which is
 * the same in every copy of the binary. */
static const char name_anchor[] = "tinymesh";

typedef struct {
    int32_t id;
    uint32_t dropped;
    uint64_t n_events;
    tm_clock_stats s;
    char name[sizeof ((tm_vclock *)0)->name];
} clock_head;

static int share_clocks(tm_world *w)
{
    size_t bytes = 0;
    for (int i = w->lo; i < w->hi; i++)
        bytes += sizeof(clock_head) + w->devices[i].clock.n_events * sizeof(tm_event);
    char *mine = malloc(bytes ? bytes : 1), *p = mine;
    if (mine == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the devices' events");
    for (int i = w->lo; i < w->hi; i++) {
        const tm_vclock *c = &w->devices[i].clock;
        clock_head h = {i, (uint32_t)c->dropped, c->n_events, c->s, {0}};
        memcpy(h.name, c->name, sizeof h.name);
        memcpy(p, &h, sizeof h);
        p += sizeof h;
        for (size_t k = 0; k < c->n_events; k++) {
            tm_event e = c->events[k];
            e.name = (const char *)(uintptr_t)(e.name - name_anchor);
            memcpy(p, &e, sizeof e);
            p += sizeof e;
        }
    }
    void *all = NULL;
    size_t counts[TM_MAX_DEVICES], total = 0;
    int st = tm__mpi_allgatherv(w->mpi, mine, bytes, &all, counts);
    free(mine);
    if (st != TM_OK) return st;
    for (int q = 0; q < tm_process_count(); q++) total += counts[q];
    for (const char *r = all; r < (const char *)all + total;) {
        clock_head h;
        memcpy(&h, r, sizeof h);
        r += sizeof h;
        tm_vclock *c = &w->devices[h.id].clock;
        if (tm_world_is_local(w, h.id)) {
            r += h.n_events * sizeof(tm_event);
            continue;
        }
        tm_event *ev = realloc(c->events, sizeof *ev * (h.n_events ? h.n_events : 1));
        if (ev == NULL) {
            free(all);
            return tm_error(TM_EHOSTMEM, "cannot allocate device %d's events", h.id);
        }
        c->events = ev;
        c->cap_events = c->n_events = h.n_events;
        c->dropped = h.dropped;
        c->s = h.s;
        memcpy(c->name, h.name, sizeof c->name);
        for (size_t k = 0; k < h.n_events; k++) {
            memcpy(&ev[k], r, sizeof ev[k]);
            r += sizeof ev[k];
            ev[k].name = name_anchor + (intptr_t)(uintptr_t)ev[k].name;
        }
    }
    free(all);
    return TM_OK;
}

/* What a process tells the others at the end of a run. */
typedef struct {
    int32_t origin;  /* the first failure started here */
    int32_t who, status, n_links;
    char error[sizeof ((tm_world *)0)->error];
} run_end;

static void add_local_link(const tm_world *w, tm_link *l, tm_link_stats *out, int *n)
{
    if (!tm_world_is_local(w, tm__link_src(l))) return;
    out[(*n)++] = (tm_link_stats){tm__link_src(l), tm__link_dst(l), tm__link_bytes(l),
                                  tm__link_messages(l)};
}

/* Across processes, the run ends for all of them together: each says how
 * its devices ended and what its links carried. The first failure that
 * started in a process (the lowest such process wins a tie) becomes every
 * process's, so all return the same status and message. */
int tm__world_agree(tm_world *w)
{
    run_end mine;
    memset(&mine, 0, sizeof mine);
    pthread_mutex_lock(&w->fail_lock);
    mine.origin = atomic_load(&w->failed) != -1 && w->origin;
    mine.who = atomic_load(&w->failed);
    mine.status = w->status;
    memcpy(mine.error, w->error, sizeof mine.error);
    pthread_mutex_unlock(&w->fail_lock);
    int procs = tm_process_count();
    run_end *all = malloc(sizeof *all * (size_t)procs);
    tm_link_stats *links = malloc(sizeof *links * (size_t)w->n * (size_t)w->n);
    if (all == NULL || links == NULL) {
        free(all);
        free(links);
        return tm_error(TM_EHOSTMEM, "cannot allocate the end of a run");
    }
    int n = 0;
    for (size_t i = 0; i < (size_t)w->n * w->n; i++) {
        tm_link *l = atomic_load(&w->links[i]);
        if (l != NULL) add_local_link(w, l, links, &n);
    }
    int st = tm__mpi_allgather(w->mpi, &mine, sizeof mine, all);
    void *gathered = NULL;
    size_t counts[TM_MAX_DEVICES];
    if (st == TM_OK)
        st = tm__mpi_allgatherv(w->mpi, links, sizeof *links * (size_t)n, &gathered, counts);
    free(links);
    if (st == TM_OK) {
        free(w->all_links);
        w->all_links = gathered;
        w->n_all_links = 0;
        for (int p = 0; p < procs; p++) w->n_all_links += (int)(counts[p] / sizeof(tm_link_stats));
        pthread_mutex_lock(&w->fail_lock);
        for (int p = 0; p < procs; p++) {
            if (!all[p].origin) continue;
            atomic_store(&w->failed, all[p].who);
            w->status = all[p].status;
            memcpy(w->error, all[p].error, sizeof w->error);
            w->spoiled = 1;
            break;
        }
        pthread_mutex_unlock(&w->fail_lock);
    }
    free(all);
    pthread_mutex_lock(&w->fail_lock);
    int failed = w->status != TM_OK;
    pthread_mutex_unlock(&w->fail_lock);
    if (st == TM_OK && !failed) st = share_clocks(w);
    return st;
}
