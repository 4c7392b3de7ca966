/* Machine topology (hwloc, discovered once per process), thread pinning and
 * the host's available memory. Thread-safe: discovery runs once under
 * pthread_once; everything after is read-only. */
#ifndef TM_TOPO_H
#define TM_TOPO_H

#include <stddef.h>

typedef struct {
    int cores;           /* physical cores */
    int pus;             /* hardware threads */
    size_t l3_bytes;     /* largest last-level cache (0 if unknown) */
} tm_topo_info;

/* Fills *out; falls back to sysconf when hwloc cannot load a topology. */
void tm_topo_get(tm_topo_info *out);

/* Core that device `device` of `n_devices` runs on: consecutive ranks share
 * the closest cores (block placement, rank-major), the rule that puts a
 * tensor-parallel group (innermost mesh dimension) on one core or socket. */
int tm_topo_core_of(int device, int n_devices);

/* Binds the calling thread to core `core`. Returns TM_OK or TM_ESYS. */
int tm_topo_pin_self(int core);

/* Bytes the host can still give without swapping (MemAvailable). */
size_t tm_host_available_memory(void);

#endif
