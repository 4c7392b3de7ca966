#include "runtime/comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/collectives.h"
#include "runtime/comm_internal.h"
#include "runtime/status.h"

/* FNV-1a: members derive the same id from the same inputs, no messages. */
static uint32_t fnv(uint32_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

int tm__comm_create_id(tm_device *dev, const int *devices, int n, const char *name,
                       uint32_t id, tm_comm **out)
{
    *out = NULL;
    int me = tm_device_id(dev), rank = -1, world = tm_device_count(dev);
    if (n < 1) return tm_error(TM_EINVAL, "communicator '%s' has %d devices", name, n);
    for (int i = 0; i < n; i++) {
        if (devices[i] < 0 || devices[i] >= world)
            return tm_error(TM_EINVAL, "communicator '%s': no device %d", name, devices[i]);
        for (int j = 0; j < i; j++)
            if (devices[j] == devices[i])
                return tm_error(TM_EINVAL, "communicator '%s' lists device %d twice", name,
                                devices[i]);
        if (devices[i] == me) rank = i;
    }
    if (rank < 0)
        return tm_error(TM_EINVAL, "device %d is not in communicator '%s'", me, name);
    tm_comm *c = calloc(1, sizeof *c);
    if (c == NULL) goto nomem;
    c->devices = malloc(sizeof *c->devices * (size_t)n);
    c->to = calloc((size_t)n, sizeof *c->to);
    c->from = calloc((size_t)n, sizeof *c->from);
    if (c->devices == NULL || c->to == NULL || c->from == NULL) goto nomem;
    memcpy(c->devices, devices, sizeof *devices * (size_t)n);
    c->dev = dev;
    c->world = tm_device_world(dev);
    c->waiter = tm__device_waiter(dev);
    c->rank = rank;
    c->size = n;
    c->id = id;
    snprintf(c->name, sizeof c->name, "%s", name);
    *out = c;
    return TM_OK;
nomem:
    tm_comm_destroy(c);
    return tm_error(TM_EHOSTMEM, "cannot allocate communicator '%s'", name);
}

int tm_comm_create(tm_device *dev, const int *devices, int n, const char *name, tm_comm **out)
{
    uint32_t id = fnv(2166136261u, name, strlen(name));
    id = fnv(id, devices, sizeof *devices * (size_t)(n > 0 ? n : 0));
    return tm__comm_create_id(dev, devices, n, name, id, out);
}

void tm_comm_destroy(tm_comm *c)
{
    if (c == NULL) return;
    if (c->scratch != NULL) tm_device_free(c->dev, c->scratch);
    free(c->devices);
    free(c->to);
    free(c->from);
    free(c);
}

int tm_comm_rank(const tm_comm *c) { return c->rank; }
int tm_comm_size(const tm_comm *c) { return c->size; }
int tm_comm_device(const tm_comm *c, int r) { return c->devices[r]; }
const char *tm_comm_name(const tm_comm *c) { return c->name; }
tm_device *tm_comm_owner(const tm_comm *c) { return c->dev; }

int tm__comm_to(tm_comm *c, int r, tm_link **out)
{
    if (c->to[r] == NULL)
        TM_CHECK(tm__world_link(c->world, c->devices[c->rank], c->devices[r], &c->to[r]));
    *out = c->to[r];
    return TM_OK;
}

int tm__comm_from(tm_comm *c, int r, tm_link **out)
{
    if (c->from[r] == NULL)
        TM_CHECK(tm__world_link(c->world, c->devices[r], c->devices[c->rank], &c->from[r]));
    *out = c->from[r];
    return TM_OK;
}

typedef struct {
    int32_t color, key;
} split_entry;

int tm_comm_split(tm_comm *parent, int color, int key, tm_comm **out)
{
    *out = NULL;
    int n = parent->size;
    split_entry *all = malloc(sizeof *all * (size_t)n);
    int *members = malloc(sizeof *members * (size_t)n);
    if (all == NULL || members == NULL) {
        free(all);
        free(members);
        return tm_error(TM_EHOSTMEM, "cannot allocate a split of '%s'", parent->name);
    }
    /* Eight bytes per rank travel as two floats' worth of raw bits: the
     * all-gather only copies, it never does arithmetic on them. */
    split_entry mine = {color, key};
    int st = tm_allgather(parent, (const float *)&mine, (float *)all, 2);
    uint32_t split_no = parent->splits++;
    if (st == TM_OK && color >= 0) {
        int m = 0;
        for (int r = 0; r < n; r++)
            if (all[r].color == color) members[m++] = r;
        /* Insertion sort by (key, parent rank): groups are small. */
        for (int i = 1; i < m; i++) {
            int v = members[i], j = i;
            while (j > 0 && (all[members[j - 1]].key > all[v].key ||
                             (all[members[j - 1]].key == all[v].key && members[j - 1] > v))) {
                members[j] = members[j - 1];
                j--;
            }
            members[j] = v;
        }
        for (int i = 0; i < m; i++) members[i] = parent->devices[members[i]];
        uint32_t id = fnv(parent->id, &split_no, sizeof split_no);
        id = fnv(id, &color, sizeof color);
        st = tm__comm_create_id(parent->dev, members, m, parent->name, id, out);
    }
    free(all);
    free(members);
    return st;
}

int tm_mesh_create(tm_device *dev, int dp, int pp, int tp, tm_mesh *out)
{
    memset(out, 0, sizeof *out);
    int n = tm_device_count(dev), me = tm_device_id(dev);
    if (dp < 1 || pp < 1 || tp < 1 || (long)dp * pp * tp != n)
        return tm_error(TM_EINVAL, "mesh dp=%d x pp=%d x tp=%d does not match %d devices", dp,
                        pp, tp, n);
    out->dp = dp;
    out->pp = pp;
    out->tp = tp;
    out->t = me % tp;
    out->p = me / tp % pp;
    out->d = me / (tp * pp);
    int max = dp > pp ? (dp > tp ? dp : tp) : (pp > tp ? pp : tp);
    int *ids = malloc(sizeof *ids * (size_t)max);
    if (ids == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate mesh groups");
    int st;
    for (int i = 0; i < dp; i++) ids[i] = (i * pp + out->p) * tp + out->t;
    st = tm_comm_create(dev, ids, dp, "dp", &out->dp_comm);
    for (int i = 0; st == TM_OK && i < pp; i++) ids[i] = (out->d * pp + i) * tp + out->t;
    if (st == TM_OK) st = tm_comm_create(dev, ids, pp, "pp", &out->pp_comm);
    for (int i = 0; st == TM_OK && i < tp; i++) ids[i] = (out->d * pp + out->p) * tp + i;
    if (st == TM_OK) st = tm_comm_create(dev, ids, tp, "tp", &out->tp_comm);
    free(ids);
    if (st != TM_OK) tm_mesh_destroy(out);
    return st;
}

void tm_mesh_destroy(tm_mesh *m)
{
    tm_comm_destroy(m->dp_comm);
    tm_comm_destroy(m->pp_comm);
    tm_comm_destroy(m->tp_comm);
    m->dp_comm = m->pp_comm = m->tp_comm = NULL;
}
