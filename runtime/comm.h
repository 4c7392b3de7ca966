/* Communicators: ordered groups of devices (like MPI communicators), split by
 * color/key, and the (dp, pp, tp) mesh groups of a 3D-parallel run.
 * Thread-safety: a tm_comm handle belongs to one device thread. */
#ifndef TM_COMM_H
#define TM_COMM_H

#include <stdint.h>

#include "runtime/world.h"

/* Rank of the calling device in comm, and the group size. */
int tm_comm_rank(const tm_comm *comm);
int tm_comm_size(const tm_comm *comm);
/* World rank (device id) of group rank r. */
int tm_comm_device(const tm_comm *comm, int r);
const char *tm_comm_name(const tm_comm *comm);
tm_device *tm_comm_owner(const tm_comm *comm);

/* Builds a communicator from an explicit list of device ids that every
 * member passes identically (no communication). The caller must be in the
 * list. Returns TM_OK, TM_EINVAL or TM_EHOSTMEM. */
int tm_comm_create(tm_device *dev, const int *devices, int n, const char *name,
                   tm_comm **out);
/* Collective over parent, like MPI_Comm_split: devices with the same color
 * form a group ordered by (key, parent rank). color < 0 yields *out = NULL. */
int tm_comm_split(tm_comm *parent, int color, int key, tm_comm **out);
/* NULL is a no-op. The world communicator is owned by the device. */
void tm_comm_destroy(tm_comm *comm);

/* A device's place in a dp x pp x tp mesh: rank = (d * pp + p) * tp + t, so
 * a tensor-parallel group is consecutive ranks (closest cores). */
typedef struct {
    int dp, pp, tp;          /* mesh shape */
    int d, p, t;             /* this device's coordinates */
    tm_comm *dp_comm;        /* same (p, t), ordered by d */
    tm_comm *pp_comm;        /* same (d, t), ordered by p */
    tm_comm *tp_comm;        /* same (d, p), ordered by t */
} tm_mesh;

/* Requires dp * pp * tp == world size. */
int tm_mesh_create(tm_device *dev, int dp, int pp, int tp, tm_mesh *out);
void tm_mesh_destroy(tm_mesh *mesh);

#endif
