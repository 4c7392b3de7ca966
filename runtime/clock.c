#include "runtime/clock_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/status.h"
#include "runtime/world.h"

/* Measured on the development machine by build/bench_clock (README,
 * "Modeled time"): the GEMM-led kernel calls of the demo model's training
 * step run at about 90-100 GFLOP/s, its bandwidth-bound ones (bias, ReLU,
 * loss, and above all the SGD step over parameters, gradients and momentum)
 * move about 90-100 GB/s, and two devices exchange 1 MiB messages at about
 * 15 GB/s per direction with a one-way latency of about 0.6 us. */
#define DEFAULT_GFLOPS 90.0
#define DEFAULT_GBPS 90.0
#define DEFAULT_LINK_GBPS 15.0
#define DEFAULT_LINK_LAT_US 0.6

void tm_clock_config_default(tm_clock_config *cfg)
{
    cfg->device_gflops = DEFAULT_GFLOPS;
    cfg->device_gbps = DEFAULT_GBPS;
    cfg->link_gbps = DEFAULT_LINK_GBPS;
    cfg->link_latency_us = DEFAULT_LINK_LAT_US;
    cfg->devices_per_node = 0;
    cfg->inter_node_gbps = DEFAULT_LINK_GBPS / 10;
    cfg->inter_node_latency_us = DEFAULT_LINK_LAT_US * 10;
}

/* The flags: name, field, the range a value must fall in, and help. The
 * ranges keep every modeled time finite and meaningful: from a millionth
 * of today's device or link (1 MFLOP/s, 1 MB/s) to well past any real one
 * (10 PFLOP/s, 1 PB/s), and latencies from free to one second. Beyond
 * them times overflow to infinity or drown in rounding (a 1e-300 GFLOP/s
 * device took an infinite time for every kernel). */
static const struct {
    const char *name;
    size_t offset;
    double min, max;
    const char *help;
} flags[] = {
    {"device-gflops", offsetof(tm_clock_config, device_gflops), 1e-3, 1e7,
     "compute rate of a device, GFLOP/s"},
    {"device-gbps", offsetof(tm_clock_config, device_gbps), 1e-3, 1e6,
     "memory bandwidth of a device, GB/s"},
    {"link-gbps", offsetof(tm_clock_config, link_gbps), 1e-3, 1e6,
     "bandwidth of a link within a node, GB/s"},
    {"link-latency-us", offsetof(tm_clock_config, link_latency_us), 0, 1e6,
     "latency of a link within a node"},
    {"inter-node-gbps", offsetof(tm_clock_config, inter_node_gbps), 1e-3, 1e6,
     "bandwidth of a link between nodes, GB/s"},
    {"inter-node-latency-us", offsetof(tm_clock_config, inter_node_latency_us), 0, 1e6,
     "latency of a link between nodes"},
};
#define N_FLAGS (sizeof flags / sizeof flags[0])

static double field(const tm_clock_config *cfg, size_t i)
{
    return *(const double *)((const char *)cfg + flags[i].offset);
}

static int in_range(size_t i, double v) { return v >= flags[i].min && v <= flags[i].max; }

int tm_clock_config_check(const tm_clock_config *cfg)
{
    for (size_t i = 0; i < N_FLAGS; i++)
        if (!in_range(i, field(cfg, i)))
            return tm_error(TM_EINVAL, "--%s must be a number in %g..%g, not %g", flags[i].name,
                            flags[i].min, flags[i].max, field(cfg, i));
    if (cfg->devices_per_node < 0)
        return tm_error(TM_EINVAL, "--devices-per-node must not be negative");
    return TM_OK;
}

int tm_clock_config_flag(tm_clock_config *cfg, const char *name, const char *value)
{
    char *end;
    errno = 0;
    if (strcmp(name, "devices-per-node") == 0) {
        long x = strtol(value, &end, 10);
        if (*value == '\0' || *end != '\0' || errno != 0 || x < 0 || x > 1048576)
        {
            tm_error(TM_EINVAL, "--devices-per-node wants an integer in 0..1048576, not \"%s\"",
                     value);
            return -1;
        }
        cfg->devices_per_node = (int)x;
        return 1;
    }
    for (size_t i = 0; i < N_FLAGS; i++) {
        if (strcmp(name, flags[i].name) != 0) continue;
        double x = strtod(value, &end);
        if (*value == '\0' || *end != '\0' || errno != 0 || !in_range(i, x)) {
            tm_error(TM_EINVAL, "--%s wants a number in %g..%g, not \"%s\"", name, flags[i].min,
                     flags[i].max, value);
            return -1;
        }
        *(double *)((char *)cfg + flags[i].offset) = x;
        return 1;
    }
    return 0;
}

void tm_clock_config_usage(FILE *f, const tm_clock_config *d)
{
    for (size_t i = 0; i < N_FLAGS; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s X", flags[i].name);
        fprintf(f, "  %-21s %s, %g..%g (%g)\n", left, flags[i].help, flags[i].min,
                flags[i].max, field(d, i));
        if (strcmp(flags[i].name, "link-latency-us") == 0)
            fprintf(f, "  %-21s consecutive devices per emulated node; 0: one node (%d)\n",
                    "--devices-per-node N", d->devices_per_node);
    }
}

void tm_clock_link(const tm_clock_config *cfg, int src, int dst, size_t bytes, double *hold_s,
                   double *latency_s)
{
    int per = cfg->devices_per_node;
    int same = per == 0 || src / per == dst / per;
    double gbps = same ? cfg->link_gbps : cfg->inter_node_gbps;
    *hold_s = (double)bytes / (gbps * 1e9);
    *latency_s = 1e-6 * (same ? cfg->link_latency_us : cfg->inter_node_latency_us);
}

static double wall_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void tm__clock_init(tm_vclock *c, const tm_clock_config *cfg, int id, double wall0)
{
    tm_event *events = c->events;
    size_t cap = c->cap_events;
    char name[sizeof c->name];
    memcpy(name, c->name, sizeof name);
    memset(c, 0, sizeof *c);
    c->events = events;
    c->cap_events = cap;
    c->cfg = cfg;
    c->id = id;
    c->stage = c->mb = -1;
    c->wall0 = wall0;
    memcpy(c->name, name, sizeof name);
    if (c->name[0] == '\0') snprintf(c->name, sizeof c->name, "device %d", id);
}

void tm__clock_free(tm_vclock *c)
{
    free(c->events);
    c->events = NULL;
    c->n_events = c->cap_events = 0;
}

/* Appends an event. Without host memory for it the event is counted as
 * dropped (the trace writer then refuses to write an incomplete trace):
 * tracing never fails the run. */
static tm_event *push(tm_vclock *c)
{
    if (c->n_events == c->cap_events) {
        size_t cap = c->cap_events ? 2 * c->cap_events : 1024;
        tm_event *e = realloc(c->events, cap * sizeof *e);
        if (e == NULL) {
            c->dropped++;
            return NULL;
        }
        c->events = e;
        c->cap_events = cap;
    }
    tm_event *e = &c->events[c->n_events++];
    memset(e, 0, sizeof *e);
    return e;
}

static const char *phase_name(char phase)
{
    switch (phase) {
    case 'F': return "forward";
    case 'B': return "backward";
    case 'W': return "weight gradients";
    case 'O': return "optimizer";
    case 'E': return "evaluation";
    default: return "compute";
    }
}

static void compute_event(tm_vclock *c, double start, double end)
{
    double w = wall_now() - c->wall0;
    /* Extends the compute engine's last event when this kernel follows it
     * without a wait and with the same label, even if events of the other
     * engines were recorded in between (an overlapped gradient bucket). */
    tm_event *last = c->last_compute ? &c->events[c->last_compute - 1] : NULL;
    if (last != NULL && last->end == start && last->phase == c->phase &&
        last->stage == c->stage && last->mb == c->mb) {
        last->end = end;
        last->wall_end = w;
    } else {
        tm_event *e = push(c);
        if (e != NULL) {
            *e = (tm_event){start, end, c->wall_mark, w, 0, 0, phase_name(c->phase), "", c->phase,
                            TM_ENGINE_COMPUTE, c->stage, c->mb, 0};
            c->last_compute = c->n_events;
        }
    }
    c->wall_mark = w;
}

void tm_clock_charge(tm_device *dev, double flops, double bytes)
{
    tm_vclock *c = tm__device_clock(dev);
    double a = flops / (c->cfg->device_gflops * 1e9), b = bytes / (c->cfg->device_gbps * 1e9);
    double dt = a > b ? a : b, start = c->s.now;
    c->s.now += dt;
    c->s.compute += dt;
    if (c->recording) compute_event(c, start, c->s.now);
}

static void comm_event(tm_vclock *c, int engine, double start, double end, double wall_start,
                       const char *name, const char *comm, uint64_t bytes, uint64_t sent);

void tm_clock_host_copy(tm_device *dev, double bytes)
{
    tm_vclock *c = tm__device_clock(dev);
    double dt = bytes / (c->cfg->link_gbps * 1e9), start = c->s.now;
    c->s.now += dt;
    c->s.comm_wait += dt;
    if (c->recording) {
        size_t before = c->n_events;
        comm_event(c, TM_ENGINE_RECV, start, c->s.now, c->wall_mark, "host copy", "host",
                   (uint64_t)bytes, 0);
        if (c->n_events > before) c->events[c->n_events - 1].peer = -1;
    }
}

void tm_clock_async(tm_device *dev, int on) { tm__device_clock(dev)->async = on != 0; }

void tm_clock_sync(tm_device *dev)
{
    tm_vclock *c = tm__device_clock(dev);
    if (c->s.comm_now > c->s.now) {
        c->s.comm_wait += c->s.comm_now - c->s.now;
        c->s.now = c->s.comm_now;
    }
    if (c->recording) c->wall_mark = wall_now() - c->wall0;
}

void tm_clock_label(tm_device *dev, char phase, int stage, int mb)
{
    tm_vclock *c = tm__device_clock(dev);
    c->phase = phase;
    c->stage = stage;
    c->mb = mb;
    if (c->recording) c->wall_mark = wall_now() - c->wall0;
}

size_t tm_clock_event_count(tm_device *dev) { return tm__device_clock(dev)->n_events; }

void tm_clock_record(tm_device *dev, int on)
{
    tm_vclock *c = tm__device_clock(dev);
    c->recording = on != 0;
    c->last_compute = 0; /* never extend an event across a pause */
    if (on) c->wall_mark = wall_now() - c->wall0;
}

void tm_clock_set_name(tm_device *dev, const char *name)
{
    tm_vclock *c = tm__device_clock(dev);
    snprintf(c->name, sizeof c->name, "%s", name);
}

void tm_clock_stats_get(tm_device *dev, tm_clock_stats *out) { *out = tm__device_clock(dev)->s; }

double tm__clock_comm_begin(tm_vclock *c)
{
    if (c->recording) c->wall_mark = wall_now() - c->wall0;
    return c->s.comm_now > c->s.now ? c->s.comm_now : c->s.now;
}

double tm__clock_send(tm_vclock *c, tm_link *l, size_t bytes, double *t)
{
    double hold, lat, *vfree = tm__link_vfree(l);
    tm_clock_link(c->cfg, tm__link_src(l), tm__link_dst(l), bytes, &hold, &lat);
    double start = *t > *vfree ? *t : *vfree;
    *vfree = start + hold;
    *t = start + hold;
    c->s.comm_busy += hold;
    return start + hold + lat;
}

static void comm_event(tm_vclock *c, int engine, double start, double end, double wall_start,
                       const char *name, const char *comm, uint64_t bytes, uint64_t sent)
{
    double w = wall_now() - c->wall0;
    c->wall_mark = w;
    tm_event *e = push(c);
    if (e == NULL) return;
    *e = (tm_event){start, end, wall_start, w, bytes, sent, name, "", 0, (uint8_t)engine, -1, -1, 0};
    snprintf(e->comm, sizeof e->comm, "%s", comm);
}

void tm__clock_comm_end(tm_vclock *c, double start, double end, const char *name,
                        const char *comm, uint64_t bytes, uint64_t sent)
{
    c->s.comm_now = end;
    if (!c->async && end > c->s.now) {
        c->s.comm_wait += end - c->s.now;
        c->s.now = end;
    }
    if (c->recording) {
        double w0 = c->wall_mark;
        comm_event(c, TM_ENGINE_COLLECTIVE, start, end, w0, name, comm, bytes, sent);
    }
}

double tm__clock_send_begin(tm_vclock *c)
{
    if (c->recording) c->wall_mark = wall_now() - c->wall0;
    return c->s.p2p_now > c->s.now ? c->s.p2p_now : c->s.now;
}

void tm__clock_send_end(tm_vclock *c, double start, double end, const char *comm, uint64_t bytes)
{
    c->s.p2p_now = end;
    if (c->recording) {
        double w0 = c->wall_mark;
        comm_event(c, TM_ENGINE_SEND, start, end, w0, "send", comm, bytes, bytes);
    }
}

void tm__clock_recv(tm_vclock *c, int src, double arrival, const char *comm, uint64_t bytes)
{
    double hold, lat;
    tm_clock_link(c->cfg, src, c->id, bytes, &hold, &lat);
    if (arrival > c->s.now) {
        double wait = arrival - c->s.now, transfer = hold + lat;
        if (transfer > wait) transfer = wait;
        c->s.comm_wait += transfer;
        c->s.idle += wait - transfer;
        c->s.now = arrival;
    }
    if (c->recording) {
        /* The bytes come in over [arrival - hold, arrival]: one link carries
         * one message at a time, so a peer's track never overlaps itself. */
        size_t before = c->n_events;
        comm_event(c, TM_ENGINE_RECV, arrival - hold, arrival, c->wall_mark, "recv", comm, bytes,
                   0);
        if (c->n_events > before) c->events[c->n_events - 1].peer = src;
    }
}
