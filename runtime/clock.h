/* The modeled (virtual) clock: what N real devices would take, computed
 * alongside the emulation. Each device has a compute engine and a
 * communication engine with clocks of their own (seconds from the start of
 * the run). Kernels charge the compute engine max(FLOPs / device rate,
 * bytes / device bandwidth). A message sent at engine time t on a link that
 * is free at f starts at s = max(t, f), holds the link (and the sender's
 * engine) for bytes / bandwidth, and arrives at s + bytes / bandwidth +
 * latency; receiving takes no engine time of its own (links are full
 * duplex). A device forwards a message once it has arrived whole (store and
 * forward, one step of an algorithm after the other), so a chain broadcast
 * costs (n-1) message times where the wall-clock one pipelines its pieces. A collective runs on the communication engine from the moment
 * the compute engine issues it; the compute engine waits for its end unless
 * the device is in asynchronous mode (data-parallel gradient buckets
 * overlapping the backward), and then waits in tm_clock_sync. A point-to-
 * point send (a pipeline's activations and gradients) goes out through a
 * copy engine of its own, as soon as the compute engine issues it and the
 * previous send is out, so it never queues behind a gradient all-reduce;
 * the compute engine does not wait for it.
 * Modeled times depend only on the program's order and the configuration,
 * never on the machine's timing: they are bitwise identical run to run.
 * Thread-safety: the device functions are called by the device's thread. */
#ifndef TM_CLOCK_H
#define TM_CLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/outfile.h"

typedef struct tm_device tm_device;

typedef struct {
    double device_gflops;        /* compute rate, GFLOP/s */
    double device_gbps;          /* device memory bandwidth, GB/s (1e9 B/s) */
    double link_gbps;            /* link between devices of one node */
    double link_latency_us;
    int devices_per_node;        /* consecutive device ids per emulated node;
                                    0: every device in one node */
    double inter_node_gbps;      /* link between devices of two nodes */
    double inter_node_latency_us;
} tm_clock_config;

/* Defaults measured on the development machine by build/bench_clock (see
 * README, "Modeled time"): the rate of the demo model's GEMM-led kernels,
 * the byte rate of its bandwidth-bound kernels, and a link's bandwidth and
 * latency between two devices; inter-node links 10x slower with 10x the
 * latency. */
void tm_clock_config_default(tm_clock_config *cfg);
/* TM_OK, or TM_EINVAL with a message naming the bad field and its range
 * (those of tm_clock_config_flag). */
int tm_clock_config_check(const tm_clock_config *cfg);
/* The configuration as command-line flags, for the programs that take them
 * (build/train, bench_strategies): name is the flag without its dashes
 * ("device-gflops", "device-gbps", "link-gbps", "link-latency-us",
 * "devices-per-node", "inter-node-gbps", "inter-node-latency-us"). Returns 1
 * when it set the field, 0 when name is not one of these, -1 with a
 * one-line message (tm_error) naming the range for a bad value: rates from
 * 0.001 to 1e7 GFLOP/s (1e6 GB/s for bandwidths), latencies 0 to 1e6 us
 * (ranges that keep modeled times finite and meaningful), devices-per-node
 * an integer in 0 .. 1048576. */
int tm_clock_config_flag(tm_clock_config *cfg, const char *name, const char *value);
/* Those flags' usage lines, with the values of `defaults`. */
void tm_clock_config_usage(FILE *f, const tm_clock_config *defaults);

/* Seconds a message of `bytes` holds the link src -> dst, and its latency. */
void tm_clock_link(const tm_clock_config *cfg, int src, int dst, size_t bytes,
                   double *hold_s, double *latency_s);

/* A device's modeled accounts, seconds since the start of the run. The
 * compute engine's time is split: now = compute + comm_wait + idle, where
 * comm_wait is time waiting for the device's own transfers (collectives,
 * the transfer part of a receive) and idle the time waiting for other
 * devices to produce what it receives. */
typedef struct {
    double now;        /* compute engine clock */
    double comm_now;   /* communication engine clock (collectives) */
    double p2p_now;    /* copy engine clock (point-to-point sends) */
    double compute;    /* kernels */
    double comm_wait;
    double idle;
    double comm_busy;  /* both engines sending (may overlap compute) */
} tm_clock_stats;

void tm_clock_stats_get(tm_device *dev, tm_clock_stats *out);

/* Advances the compute engine by one kernel's time. */
void tm_clock_charge(tm_device *dev, double flops, double bytes);
/* A copy of `bytes` from host memory into the device (a micro-batch staged
 * in): it crosses a link like an intra-node one (the host's link, PCIe on a
 * real accelerator), and the compute engine waits for it (as comm: a wait
 * for the device's own transfer). */
void tm_clock_host_copy(tm_device *dev, double bytes);
/* on != 0: collectives issued from now on run beside the compute engine,
 * which does not wait for them (until tm_clock_sync). */
void tm_clock_async(tm_device *dev, int on);
/* The compute engine waits for the communication engine to finish. */
void tm_clock_sync(tm_device *dev);

/* What the compute engine is doing, for the trace: phase 'F' (forward),
 * 'B' (backward), 'O' (optimizer), 'E' (evaluation) or 0 (other), with its
 * pipeline stage and micro-batch (-1 when none). */
void tm_clock_label(tm_device *dev, char phase, int stage, int mb);

/* Trace events, recorded while a device's recording is on. Compute events
 * are runs of kernels with one label and no waiting in between; comm events
 * are collectives on the communication engine, sends on the copy engine,
 * and receives: each message as its bytes come in, [arrival - transfer,
 * arrival], on the receiving side of its link (one track per peer; peer -1
 * is the host's link). */
enum { TM_ENGINE_COMPUTE, TM_ENGINE_COLLECTIVE, TM_ENGINE_SEND, TM_ENGINE_RECV, TM_ENGINES };

typedef struct {
    double start, end;           /* modeled seconds */
    double wall_start, wall_end; /* wall seconds since the run started */
    uint64_t bytes;              /* comm: the operation's bytes (nccl-tests' count:
                                    the all-reduce vector, the gathered result,
                                    a message) */
    uint64_t sent;               /* comm: payload bytes this device put on links */
    const char *name;            /* static string: "forward", "allreduce", ... */
    char comm[16];               /* comm: communicator name */
    char phase;                  /* compute: see tm_clock_label */
    uint8_t engine;
    int32_t stage, mb;
    int32_t peer;                /* recv: the sending device, -1 the host */
} tm_event;

/* Starts (on != 0) or stops recording on the calling device. */
void tm_clock_record(tm_device *dev, int on);
/* Events the calling device has recorded so far in this run: the index the
 * next one will have in tm_world_events. */
size_t tm_clock_event_count(tm_device *dev);
/* Names the device in traces (e.g. its mesh coordinates). */
void tm_clock_set_name(tm_device *dev, const char *name);

/* Host side, between runs (no device thread running). */
typedef struct tm_world tm_world;
/* Device `id`'s events of the last run, in recording order. */
const tm_event *tm_world_events(const tm_world *world, int id, size_t *n);
void tm_world_clock_stats(const tm_world *world, int id, tm_clock_stats *out);
/* Writes the last run's events as Chrome Trace Event JSON (Perfetto,
 * chrome://tracing) into out (runtime/outfile.h; the caller commits it, and
 * the commit reports write errors): one pid per device named by
 * tm_clock_set_name, one tid per engine, "X" events in microseconds of
 * modeled time, or of wall time with `wall`. TM_OK, TM_EIO with a message,
 * or TM_EHOSTMEM when a device lost events for want of host memory (nothing
 * is written then). */
int tm_world_trace_write(const tm_world *world, tm_outfile *out, int wall);

#endif
