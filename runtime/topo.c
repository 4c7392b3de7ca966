#include "runtime/topo.h"

#include <errno.h>
#include <hwloc.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "runtime/status.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static hwloc_topology_t topology; /* NULL when hwloc failed */
static tm_topo_info info;

static void discover(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    info.cores = info.pus = n > 0 ? (int)n : 1;
    if (hwloc_topology_init(&topology) != 0) {
        topology = NULL;
        return;
    }
    if (hwloc_topology_load(topology) != 0) {
        hwloc_topology_destroy(topology);
        topology = NULL;
        return;
    }
    int cores = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE);
    int pus = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_PU);
    if (cores > 0) info.cores = cores;
    if (pus > 0) info.pus = pus;
    hwloc_obj_type_t levels[] = {HWLOC_OBJ_L3CACHE, HWLOC_OBJ_L2CACHE};
    for (size_t i = 0; i < sizeof levels / sizeof levels[0] && info.l3_bytes == 0; i++) {
        hwloc_obj_t c = hwloc_get_obj_by_type(topology, levels[i], 0);
        if (c != NULL && c->attr != NULL) info.l3_bytes = c->attr->cache.size;
    }
}

void tm_topo_get(tm_topo_info *out)
{
    pthread_once(&once, discover);
    *out = info;
}

int tm_topo_core_of(int device, int n_devices)
{
    tm_topo_info t;
    tm_topo_get(&t);
    if (n_devices <= t.cores) return device;
    return (int)((long)device * t.cores / n_devices);
}

int tm_topo_pin_self(int core)
{
    pthread_once(&once, discover);
    if (topology == NULL) return tm_error(TM_ESYS, "hwloc has no topology: cannot pin");
    hwloc_obj_t obj = hwloc_get_obj_by_type(topology, HWLOC_OBJ_CORE, (unsigned)core);
    if (obj == NULL) return tm_error(TM_EINVAL, "no core %d to pin to", core);
    if (hwloc_set_cpubind(topology, obj->cpuset, HWLOC_CPUBIND_THREAD) != 0)
        return tm_error(TM_ESYS, "hwloc_set_cpubind(core %d): %s", core, strerror(errno));
    return TM_OK;
}

size_t tm_host_available_memory(void)
{
    /* hwloc reports far less memory than this machine has; the kernel's own
     * estimate of what can be allocated without swapping is the one that
     * predicts the OOM killer. */
    FILE *f = fopen("/proc/meminfo", "r");
    if (f != NULL) {
        char line[256];
        unsigned long long kib;
        while (fgets(line, sizeof line, f) != NULL) {
            if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) {
                fclose(f);
                return (size_t)kib * 1024;
            }
        }
        fclose(f);
    }
    long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (size_t)pages * (size_t)size : 0;
}
