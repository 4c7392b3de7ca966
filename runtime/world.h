/* The emulated cluster: N devices, one pthread each, launched SPMD-style on
 * one function; per-device arenas; first-error propagation and a watchdog.
 * Thread-safety: a world is driven by one host thread (create, run, destroy);
 * tm_device functions are called only by the device's own thread. */
#ifndef TM_WORLD_H
#define TM_WORLD_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/arena.h"
#include "runtime/clock.h"
#include "runtime/stop.h"

#define TM_MAX_DEVICES 1024

typedef struct tm_world tm_world;
typedef struct tm_device tm_device;
typedef struct tm_comm tm_comm;

typedef enum {
    TM_PIN_AUTO, /* the measured best: pinned, except a single device */
    TM_PIN_OFF,  /* leave placement to the OS scheduler */
    TM_PIN_ON,   /* pin consecutive ranks to the closest cores */
} tm_pin_policy;

typedef struct {
    int n_devices;       /* 1 .. TM_MAX_DEVICES */
    size_t mem_cap;      /* arena bytes per device */
    size_t ring_bytes;   /* ring capacity per link (power of two); 0: chosen
                            from the device count and the L3 size */
    tm_pin_policy pin;
    double watchdog_s;   /* seconds without progress on any link, while every
                            running device waits, before a deadlock is
                            declared; 0: default (30 s) */
    int prefault;        /* touch every arena page when a device starts */
    tm_clock_config clock; /* the modeled clock's device and link rates */
    tm_stop *stop;       /* the runs' stop agreement, or NULL: across
                            processes the world carries it between them
                            (tm_stop_span), for one run */
    int local;           /* this process's alone, even under mpirun (one
                            process's own work, as the sample train prints
                            after training); else split over the job's
                            processes */
} tm_world_config;

/* Defaults: 1 device, 64 MiB, automatic ring size, TM_PIN_AUTO, 30 s
 * watchdog, prefault on, the modeled clock's defaults. */
void tm_world_config_default(tm_world_config *cfg);

/* Creates the devices' arenas and the link table. Refuses (TM_EHOSTMEM) when
 * n_devices x mem_cap plus link memory would not fit the host's available
 * memory; TM_EINVAL for a bad config. The message says why.
 * Under mpirun (runtime/process.h) every process creates the world with the
 * same config, and each holds n_devices / P of them (TM_EINVAL when P does
 * not divide n_devices); emulated nodes default to the processes
 * (clock.devices_per_node = n_devices / P when 0). */
int tm_world_create(tm_world **out, const tm_world_config *cfg);
/* NULL is a no-op. Must not be called while tm_world_run is running. */
void tm_world_destroy(tm_world *world);

/* The SPMD body: runs once on every device thread. Returns TM_OK or a
 * status (with a message recorded by tm_error on that thread). */
typedef int (*tm_device_fn)(tm_device *dev, void *arg);

/* Starts one thread per device, runs fn on each, joins them. Returns TM_OK,
 * or the first failure: the failing device's status (others, woken from any
 * blocked send/recv/collective, return TM_EABORTED), or TM_EDEADLOCK from the
 * watchdog. May be called again after it returns.
 * Across processes every process calls it, runs fn on its own devices, and
 * all return together with the same status and message (which then names
 * the failing device's process); a world whose run failed cannot run
 * again. */
int tm_world_run(tm_world *world, tm_device_fn fn, void *arg);
/* "device 3: <message>" for the last failed run; "" after a clean run. */
const char *tm_world_error(const tm_world *world);
/* The device whose failure ended the last run; -1 if none (or watchdog). */
int tm_world_failed_device(const tm_world *world);

int tm_world_size(const tm_world *world);
/* The device's arena; NULL for a device of another process. */
tm_arena *tm_world_arena(tm_world *world, int device);
/* Across processes (runtime/process.h): the process that runs a device
 * (devices split in equal contiguous blocks), and whether it is this one.
 * With one process: 0 and 1. */
int tm_world_device_process(const tm_world *world, int device);
int tm_world_is_local(const tm_world *world, int device);
/* After a run, between runs: every process gets every device's element of
 * an array indexed by device id (elements of `stride` bytes at base, no
 * pointers in them), each from the process that ran the device. Called by
 * every process together; a no-op with one. TM_OK, TM_EHOSTMEM or
 * TM_ESYS. */
int tm_world_share(tm_world *world, void *base, size_t stride);
/* The same for host data: `bytes` at mine from every process, in process
 * order, into all (processes x bytes); with one process a copy. */
int tm_world_share_host(tm_world *world, const void *mine, size_t bytes, void *all);
/* Devices this process runs (all of them with one process). */
int tm_world_device_count_local(const tm_world *world);
/* Ring capacity in bytes chosen for this world's links. */
size_t tm_world_ring_bytes(const tm_world *world);
/* Whether device threads are pinned to cores in this world. */
int tm_world_pinned(const tm_world *world);

/* Traffic on one directed link (src -> dst), payload bytes only. */
typedef struct {
    int src, dst;
    uint64_t bytes;
    uint64_t messages;
} tm_link_stats;

/* Calls fn for every link that was created, in (src, dst) order. */
void tm_world_links(const tm_world *world,
                    void (*fn)(const tm_link_stats *stats, void *ctx),
                    void *ctx);
/* Host memory held by link rings (memory that belongs to no device). */
size_t tm_world_link_memory(const tm_world *world);

/* Device side (call from the device's own thread). */
int tm_device_id(const tm_device *dev);
int tm_device_count(const tm_device *dev);
tm_world *tm_device_world(tm_device *dev);
tm_arena *tm_device_arena(tm_device *dev);
/* The communicator of all devices, rank = device id, made anew for each
 * run (communicators do not survive an aborted run). */
tm_comm *tm_device_comm(tm_device *dev);
/* Allocates from the device's arena; on failure records the arena's OOM
 * report as the thread's error message (so `return TM_ENOMEM` reports it). */
void *tm_device_alloc(tm_device *dev, size_t bytes, tm_tag tag);
void tm_device_free(tm_device *dev, void *ptr);

/* For the runtime's own modules (comm, collectives). */
#include "runtime/link.h"
/* The link src -> dst (world ranks), created on first use. TM_OK, or
 * TM_EHOSTMEM with a message. Thread-safe. */
int tm__world_link(tm_world *world, int src, int dst, tm_link **out);
tm_waiter *tm__device_waiter(tm_device *dev);
/* The world's abort flag has been raised (some device failed). */
int tm__world_aborted(const tm_world *world);

#endif
