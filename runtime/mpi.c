/* The job's processes under mpirun, and the two transports between them
 * (runtime/transport.h): rings in MPI-3 shared-memory windows for processes
 * of one host, and point-to-point links moved by MPI sends and receives.
 *
 * Thread level: the runtime asks for MPI_THREAD_SERIALIZED and makes every
 * MPI call under one mutex (mpi_lock). Who makes them: a device makes its
 * own, on its thread, whenever it publishes bytes on a point-to-point link,
 * frees space on one, or waits awake for one (tm_link_proxy's kick): if
 * the mutex is free it moves what every point-to-point link of its world
 * can move, so a message leaves and arrives with no hand-off to another
 * thread. Per process one progress thread (NCCL's proxy) takes what the
 * devices leave: sends still in flight, links whose device sleeps, and
 * the failures and stop words between processes. The host thread makes
 * the few collective calls (a world's creation, the end of a run) under
 * the same mutex. Not MPI_THREAD_MULTIPLE with every device calling MPI at
 * will: the devices only ever poll, and one poller at a time (trylock)
 * moves everyone's bytes, while MPI_THREAD_MULTIPLE would add MPI's own
 * locks to every call; nor a progress thread that owns every call: its
 * two hand-offs per message (device to thread, thread to device) cost
 * more than the message (README, "Several processes", has the figures).
 *
 * Lock ordering: worlds_lock, then mpi_lock, then the lock of a run's stop
 * agreement (runtime/stop.c: another process's word is handed to it under
 * mpi_lock; its words out are queued without a lock). */
#include "runtime/process.h"

#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

#include "runtime/status.h"
#include "runtime/transport.h"

/* Sends in flight per point-to-point link: enough that a ring's worth of
 * chunks streams without waiting for each to complete. */
#define MAX_INFLIGHT 4
/* Published bytes up to SPLIT_BELOW go in MPI messages of at most
 * P.eager bytes, larger spans whole. Open MPI's shared-memory transport
 * (ob1 over vader here) sends a message of up to its eager limit, its own
 * header included, at once, and a larger one by rendezvous. Its default
 * limit, 4 KiB, put a 4 KiB message with our 32-byte header just over:
 * a 4 KiB all-reduce took 9.6 us whole against 5.1 us as 4000 + 128
 * bytes, and two messages still cost more than Open MPI's own all-reduce
 * (one). So the runtime raises that limit to EAGER_LIMIT for the job
 * before MPI starts, unless the user set it (OMPI_MCA_btl_vader_eager_limit),
 * and cuts pieces EAGER_MARGIN below whatever the limit is (half of a limit
 * under twice the margin): at 8 KiB the all-reduce took 0.96x Open MPI's
 * (median of 6 jobs' ratios) against 1.23x in 4000-byte pieces. From 1 MiB
 * on, the rendezvous's single copy wins (16 MiB: 9.4 against 13.2 ms in
 * pieces). An MCA parameter file's value for the limit is overridden (the
 * environment wins over it). */
#define EAGER_LIMIT "8192"
#define EAGER_MARGIN ((size_t)96)
#define SPLIT_BELOW ((size_t)64 << 10)
/* Polls without progress, each followed by sched_yield, before the
 * progress thread sleeps between polls. */
#define HOT_POLLS 4000
/* Sleep between polls while a device waits on a point-to-point link, and
 * when nothing waits (only failures from other processes can arrive). */
#define WAITING_SLEEP_NS 50000L
#define IDLE_SLEEP_NS 2000000L
#define MESSAGE_BYTES 1024

/* A failure, as it travels between processes. */
typedef struct {
    int32_t origin;  /* 1: the failure started in the sending process */
    int32_t who;     /* failing device, or -2 for the watchdog */
    int32_t status;
    int32_t pad;
    char message[MESSAGE_BYTES];
} failure_msg;

/* One process's end of a point-to-point link: the ring a local device
 * uses, and the MPI requests that fill or drain it. Stream positions are
 * the ring's own byte counts, the same at both ends; every message lies
 * within one `chunk`-aligned block of the stream, so the receiver can
 * always post a receive of the rest of the block it is in (the ring's
 * capacity is a multiple of chunk: the block never wraps). */
typedef struct half {
    tm_link *ring;
    int send;            /* 1: a local device produces, we send */
    int peer, tag;       /* remote process, message tag */
    MPI_Comm comm;       /* the world's data communicator */
    size_t chunk;
    uint64_t sent;       /* send: stream position handed to MPI */
    MPI_Request req[MAX_INFLIGHT];
    size_t len[MAX_INFLIGHT];
    int first, count;    /* send: requests in flight, oldest first */
    int posted;          /* recv: a receive is posted at the ring's tail */
    struct half *next;
} half;

struct tm_mpi_world {
    tm_world *w;
    int n, per;                /* devices; devices per process */
    size_t ring, slot;         /* ring bytes; bytes per shared link */
    MPI_Comm data, ctl, host;  /* point-to-point data, failures, host calls */
    MPI_Win win;
    int have_win;
    uint8_t **seg;             /* [process] its window segment, NULL when
                                  not on this host */
    _Atomic(half *) halves;    /* pushed by device threads, read under
                                  mpi_lock */
    tm_link_proxy proxy;       /* what the halves' device ends call */
    failure_msg ctl_in;
    MPI_Request ctl_req;
    failure_msg abort_out;
    atomic_int abort_state;    /* 0 none, 1 written, 2 sending */
    MPI_Request *abort_reqs;   /* (processes) */
    tm_stop_word stop_in;      /* the stop agreement's words (tag 1) */
    MPI_Request stop_req;
    tm_stop_word stop_out;
    atomic_int stop_state;     /* 0 none, 1 written, 2 sending */
    MPI_Request *stop_reqs;    /* (processes) */
    struct tm_mpi_world *next;
};

static struct {
    int init, mpi, rank, size;
    int *host;                 /* [process] the lowest process of its host */
    int force_mpi;
    size_t eager;              /* bytes per piece of a small span */
    pthread_mutex_t mpi_lock;
    pthread_mutex_t worlds_lock;
    tm_mpi_world *worlds;
    pthread_t thread;
    int running;
    atomic_int stop;
    tm_doorbell bell;
} P = {.rank = 0, .size = 1,
       .mpi_lock = PTHREAD_MUTEX_INITIALIZER,
       .worlds_lock = PTHREAD_MUTEX_INITIALIZER};

int tm_process_rank(void) { return P.rank; }
int tm_process_count(void) { return P.size; }
const char *tm_process_transport(void) { return P.force_mpi ? "mpi" : "shm"; }

void tm_process_mpi_begin(void) { pthread_mutex_lock(&P.mpi_lock); }
void tm_process_mpi_end(void) { pthread_mutex_unlock(&P.mpi_lock); }

void tm_process_output(int rank)
{
    static int saved_out = -1, saved_err = -1;
    if (P.size == 1) return;
    fflush(stdout);
    fflush(stderr);
    if (saved_out < 0) {
        saved_out = dup(STDOUT_FILENO);
        saved_err = dup(STDERR_FILENO);
    }
    int fd = rank == P.rank ? -1 : open("/dev/null", O_WRONLY);
    dup2(fd >= 0 ? fd : saved_out, STDOUT_FILENO);
    dup2(fd >= 0 ? fd : saved_err, STDERR_FILENO);
    if (fd >= 0) close(fd);
}

void tm__process_host_slot(int *index, int *count)
{
    *index = 0;
    *count = 0;
    for (int p = 0; p < P.size; p++) {
        if (P.size > 1 && P.host[p] != P.host[P.rank]) continue;
        if (p < P.rank) ++*index;
        ++*count;
    }
}

static void sleep_ns(long ns)
{
    struct timespec t = {0, ns};
    nanosleep(&t, NULL);
}

/* ---------------------------------------------------------------------- */
/* The progress thread. */

/* A send leaves the progress thread work (busy) only when it cannot finish
 * without this process's help: a message larger than P.eager goes by
 * rendezvous, which moves as both ends progress, while a smaller one is in
 * the receiver's hands once MPI_Isend returns (ob1 over shared memory; over
 * TCP unless the socket is full, when the thread's next idle sweep, within
 * IDLE_SLEEP_NS, pushes it), and what is left (freeing its ring bytes) the
 * next sweep of any thread does. Waking the progress thread for those made
 * it take a core from a device waiting for the reply (2 processes x 1
 * device on 2 cores): it was the slow one of the point-to-point path's two
 * speeds. Busy too: published bytes not yet handed to MPI (all
 * MAX_INFLIGHT sends were in flight), and a device asleep for ring space:
 * nobody else moves them. */
static int poll_send(half *h, int *busy)
{
    int moved = 0;
    while (h->count > 0) {
        int done = 0;
        MPI_Test(&h->req[h->first], &done, MPI_STATUS_IGNORE);
        if (!done) break;
        /* The bytes are MPI's no more: the device may overwrite them. */
        tm__link_engine_release(h->ring, h->len[h->first]);
        h->first = (h->first + 1) % MAX_INFLIGHT;
        h->count--;
        moved = 1;
    }
    while (h->count < MAX_INFLIGHT) {
        const uint8_t *p;
        size_t n = tm__link_peek(h->ring, h->sent, &p);
        size_t edge = h->chunk - (size_t)(h->sent % h->chunk);
        if (n > edge) n = edge;
        if (n > P.eager && n < SPLIT_BELOW) n = P.eager;
        if (n == 0) break;
        int slot = (h->first + h->count) % MAX_INFLIGHT;
        MPI_Isend(p, (int)n, MPI_BYTE, h->peer, h->tag, h->comm, &h->req[slot]);
        h->len[slot] = n;
        h->count++;
        h->sent += n;
        moved = 1;
    }
    for (int i = 0; i < h->count; i++)
        if (h->len[(h->first + i) % MAX_INFLIGHT] > P.eager) *busy = 1;
    if (tm__link_published(h->ring) > h->sent) *busy = 1;
    if (h->count > 0 && tm__link_producer_waiting(h->ring)) *busy = 1;
    return moved;
}

static int poll_recv(half *h, int *busy)
{
    int moved = 0;
    if (h->posted) {
        int done = 0, count = 0;
        MPI_Status st;
        MPI_Test(&h->req[0], &done, &st);
        if (!done) {
            if (tm__link_consumer_waiting(h->ring)) *busy = 1;
            return 0;
        }
        MPI_Get_count(&st, MPI_BYTE, &count);
        tm__link_engine_commit(h->ring, (size_t)count);
        h->posted = 0;
        moved = 1;
    }
    uint64_t pos = tm__link_published(h->ring);
    size_t want = h->chunk - (size_t)(pos % h->chunk), got;
    uint8_t *p;
    /* min 0: never waits, so no waiter is needed. */
    tm__link_write_acquire(h->ring, NULL, 0, want, &p, &got);
    if (got < want) return moved;
    MPI_Irecv(p, (int)want, MPI_BYTE, h->peer, h->tag, h->comm, &h->req[0]);
    h->posted = 1;
    return 1;
}

/* A report written for the other processes (*state 1: the bytes at buf,
 * of `tag` on the control communicator) leaves for every one of them,
 * once. 1 if it left now. */
static int tell_all(tm_mpi_world *m, atomic_int *state, void *buf, int bytes, int tag,
                    MPI_Request *reqs)
{
    int expected = 1;
    if (!atomic_compare_exchange_strong(state, &expected, 2)) return 0;
    for (int p = 0; p < P.size; p++)
        if (p != P.rank) MPI_Isend(buf, bytes, MPI_BYTE, p, tag, m->ctl, &reqs[p]);
    return 1;
}

/* One sweep over a world's links, and (control) over the failures and
 * stop words between processes, which devices leave to the progress
 * thread: they are rare, and a device's sweep is on its message's path. */
static int poll_world(tm_mpi_world *m, int *busy, int control)
{
    int moved = 0;
    for (half *h = atomic_load_explicit(&m->halves, memory_order_acquire); h != NULL;
         h = h->next)
        moved |= h->send ? poll_send(h, busy) : poll_recv(h, busy);
    if (!control) return moved;
    int done = 0;
    MPI_Test(&m->ctl_req, &done, MPI_STATUS_IGNORE);
    if (done) {
        m->ctl_in.message[MESSAGE_BYTES - 1] = '\0';
        tm__world_fail_remote(m->w, m->ctl_in.who, m->ctl_in.status, m->ctl_in.message);
        MPI_Irecv(&m->ctl_in, sizeof m->ctl_in, MPI_BYTE, MPI_ANY_SOURCE, 0, m->ctl, &m->ctl_req);
        moved = 1;
    }
    moved |= tell_all(m, &m->abort_state, &m->abort_out, sizeof m->abort_out, 0, m->abort_reqs);
    /* The stop agreement: another's word (which may make us tell ours,
     * sent just below), then ours. */
    MPI_Test(&m->stop_req, &done, MPI_STATUS_IGNORE);
    if (done) {
        m->stop_in.why[sizeof m->stop_in.why - 1] = '\0';
        tm__world_stop_heard(m->w, &m->stop_in);
        MPI_Irecv(&m->stop_in, sizeof m->stop_in, MPI_BYTE, MPI_ANY_SOURCE, 1, m->ctl,
                  &m->stop_req);
        moved = 1;
    }
    moved |= tell_all(m, &m->stop_state, &m->stop_out, sizeof m->stop_out, 1, m->stop_reqs);
    return moved;
}

/* A device's turn at the engine (tm_link_proxy.kick): moves what its
 * world's point-to-point links can move now, on the device's thread, unless
 * another thread is at it. A device that is not waiting leaves what stays
 * in flight, or a sweep it could not make, to the progress thread (the
 * bell); a waiting one comes back itself, and rings when it sleeps. */
static void kick(void *ctx, int waiting)
{
    tm_mpi_world *m = ctx;
    if (pthread_mutex_trylock(&P.mpi_lock) != 0) {
        if (!waiting) tm__doorbell_ring(&P.bell);
        return;
    }
    int busy = 0;
    poll_world(m, &busy, 0);
    pthread_mutex_unlock(&P.mpi_lock);
    if (busy && !waiting) tm__doorbell_ring(&P.bell);
}

static void *progress_main(void *arg)
{
    (void)arg;
    /* Its sleeps are short on purpose: the default 50 us slack would
     * double them. */
    prctl(PR_SET_TIMERSLACK, 1000UL);
    unsigned last = atomic_load(&P.bell.word);
    int idle = 0;
    while (!atomic_load(&P.stop)) {
        unsigned seen = atomic_load(&P.bell.word);
        int busy = 0, moved = seen != last;
        last = seen;
        pthread_mutex_lock(&P.worlds_lock);
        pthread_mutex_lock(&P.mpi_lock);
        for (tm_mpi_world *m = P.worlds; m != NULL; m = m->next) moved |= poll_world(m, &busy, 1);
        pthread_mutex_unlock(&P.mpi_lock);
        pthread_mutex_unlock(&P.worlds_lock);
        if (moved) {
            idle = 0;
            continue;
        }
        /* Devices awake move their own bytes (kick): the thread has only
         * what they leave it, sends in flight and links whose device
         * sleeps. While there are such, it polls hot for a while (a reply
         * is usually microseconds away), then sleeps briefly between polls;
         * with none it sleeps until a device rings. */
        if (!busy) {
            idle = 0;
            tm__doorbell_wait(&P.bell, seen, IDLE_SLEEP_NS);
        } else if (++idle < HOT_POLLS) {
            sched_yield();
        } else {
            tm__doorbell_wait(&P.bell, seen, WAITING_SLEEP_NS);
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------------- */
/* Start and end of the process. */

static void finish(void)
{
    if (P.running) {
        atomic_store(&P.stop, 1);
        tm__doorbell_ring(&P.bell);
        pthread_join(P.thread, NULL);
        P.running = 0;
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
    free(P.host);
    P.host = NULL;
}

int tm_process_init(void)
{
    if (P.init) return TM_OK;
    P.init = 1;
    if (getenv("OMPI_COMM_WORLD_SIZE") == NULL) return TM_OK;
    setenv("OMPI_MCA_btl_vader_eager_limit", EAGER_LIMIT, 0);
    const char *set = getenv("OMPI_MCA_btl_vader_eager_limit");
    long limit = strtol(set != NULL ? set : EAGER_LIMIT, NULL, 0);
    P.eager = limit > 2 * (long)EAGER_MARGIN ? (size_t)limit - EAGER_MARGIN
                                             : (size_t)(limit > 1 ? limit / 2 : 1);
    int provided = 0;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
        return tm_error(TM_ESYS, "MPI_Init_thread failed");
    P.mpi = 1;
    atexit(finish);
    if (provided < MPI_THREAD_SERIALIZED)
        return tm_error(TM_ESYS, "the MPI library grants thread level %d, and tinymesh needs "
                        "MPI_THREAD_SERIALIZED", provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &P.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P.size);
    const char *t = getenv("TM_TRANSPORT");
    P.force_mpi = t != NULL && strcmp(t, "mpi") == 0;
    /* Which processes share a host: the lowest world rank of each
     * shared-memory group names it. */
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int leader = P.rank;
    MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, node);
    MPI_Comm_free(&node);
    P.host = malloc(sizeof *P.host * (size_t)P.size);
    if (P.host == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the process table");
    MPI_Allgather(&leader, 1, MPI_INT, P.host, 1, MPI_INT, MPI_COMM_WORLD);
    if (P.size > 1) {
        if (pthread_create(&P.thread, NULL, progress_main, NULL) != 0)
            return tm_error(TM_ESYS, "cannot start the MPI progress thread");
        P.running = 1;
    }
    return TM_OK;
}

/* ---------------------------------------------------------------------- */
/* Host-side collectives: nonblocking, waited for with yields and sleeps,
 * so that a process whose devices still compute gets the cores. */

static int wait_request(MPI_Request *r)
{
    for (int i = 0;; i++) {
        int done = 0;
        pthread_mutex_lock(&P.mpi_lock);
        int rc = MPI_Test(r, &done, MPI_STATUS_IGNORE);
        pthread_mutex_unlock(&P.mpi_lock);
        if (rc != MPI_SUCCESS) return tm_error(TM_ESYS, "an MPI request failed");
        if (done) return TM_OK;
        if (i < 1000) sched_yield();
        else sleep_ns(WAITING_SLEEP_NS);
    }
}

int tm__mpi_allgather(tm_mpi_world *m, const void *mine, size_t bytes, void *all)
{
    MPI_Request r;
    pthread_mutex_lock(&P.mpi_lock);
    MPI_Iallgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, m->host, &r);
    pthread_mutex_unlock(&P.mpi_lock);
    return wait_request(&r);
}

int tm__mpi_allgatherv(tm_mpi_world *m, const void *mine, size_t bytes, void **out,
                       size_t *counts)
{
    *out = NULL;
    int *cnt = malloc(sizeof *cnt * (size_t)P.size), *disp = malloc(sizeof *disp * (size_t)P.size);
    int me = (int)bytes;
    int st = cnt == NULL || disp == NULL ? tm_error(TM_EHOSTMEM, "cannot allocate a gather")
                                         : tm__mpi_allgather(m, &me, sizeof me, cnt);
    size_t total = 0;
    for (int p = 0; st == TM_OK && p < P.size; p++) {
        disp[p] = (int)total;
        counts[p] = (size_t)cnt[p];
        total += (size_t)cnt[p];
    }
    char *all = st == TM_OK ? malloc(total ? total : 1) : NULL;
    if (st == TM_OK && all == NULL) st = tm_error(TM_EHOSTMEM, "cannot allocate a gather");
    if (st == TM_OK) {
        MPI_Request r;
        pthread_mutex_lock(&P.mpi_lock);
        MPI_Iallgatherv(mine, me, MPI_BYTE, all, cnt, disp, MPI_BYTE, m->host, &r);
        pthread_mutex_unlock(&P.mpi_lock);
        st = wait_request(&r);
    }
    free(cnt);
    free(disp);
    if (st != TM_OK) {
        free(all);
        return st;
    }
    *out = all;
    return TM_OK;
}

/* ---------------------------------------------------------------------- */
/* Worlds and their transports. */

static int process_of(const tm_mpi_world *m, int device) { return device / m->per; }

/* The shared link src -> dst: in the segment of dst's process, slot
 * (dst's local index, src). */
static uint8_t *shared_slot(tm_mpi_world *m, int src, int dst)
{
    int q = process_of(m, dst);
    size_t i = (size_t)(dst - q * m->per) * (size_t)m->n + (size_t)src;
    return m->seg[q] + i * m->slot;
}

static int shm_connect(tm_world *w, int src, int dst, tm_link **out)
{
    tm_mpi_world *m = tm__world_mpi(w);
    uint8_t *mem = shared_slot(m, src, dst);
    TM_CHECK(tm__link_attach(out, mem, m->ring, src, dst));
    /* Fault the pages in now, reading only (the other end may already
     * write): a first touch costs 10-20 us a page here, which the first
     * messages would otherwise pay. Shared memory is never the zero page,
     * so a read fault maps the page itself. */
    for (size_t o = 0; o < m->slot; o += 4096) (void)*(volatile uint8_t *)(mem + o);
    return TM_OK;
}

static void shm_disconnect(tm_world *w, tm_link *l)
{
    (void)w;
    tm__link_destroy(l);
}

static int mpi_connect(tm_world *w, int src, int dst, tm_link **out)
{
    tm_mpi_world *m = tm__world_mpi(w);
    half *h = calloc(1, sizeof *h);
    if (h == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate link %d->%d", src, dst);
    int st = tm__link_create(&h->ring, m->ring, src, dst);
    if (st != TM_OK) {
        free(h);
        return st;
    }
    h->send = process_of(m, src) == P.rank;
    h->peer = process_of(m, h->send ? dst : src);
    h->tag = src * m->n + dst;
    h->comm = m->data;
    h->chunk = m->ring / 4;
    tm__link_set_proxy(h->ring, &m->proxy);
    /* Release: the progress thread sees the half whole. */
    h->next = atomic_load_explicit(&m->halves, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&m->halves, &h->next, h, memory_order_release,
                                                  memory_order_relaxed)) {
    }
    tm__doorbell_ring(&P.bell);
    *out = h->ring;
    return TM_OK;
}

/* The half is freed with its world (tm__mpi_world_destroy), after the
 * progress thread has let go of it. */
static void mpi_disconnect(tm_world *w, tm_link *l)
{
    (void)w;
    (void)l;
}

static const tm_transport transport_shm = {"shm", shm_connect, shm_disconnect};
static const tm_transport transport_mpi = {"mpi", mpi_connect, mpi_disconnect};

const tm_transport *tm__mpi_transport(tm_mpi_world *m, int src, int dst)
{
    int a = process_of(m, src), b = process_of(m, dst);
    if (!P.force_mpi && m->have_win && P.host[a] == P.host[b]) return &transport_shm;
    return &transport_mpi;
}

int tm__mpi_world_create(tm_world *w, int n, size_t ring, tm_mpi_world **out)
{
    *out = NULL;
    tm_mpi_world *m = calloc(1, sizeof *m);
    if (m == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the world's MPI state");
    m->w = w;
    m->proxy = (tm_link_proxy){kick, m, &P.bell};
    m->n = n;
    m->per = n / P.size;
    m->ring = ring;
    m->slot = TM_LINK_CTRL_BYTES + ring;
    m->seg = calloc((size_t)P.size, sizeof *m->seg);
    m->abort_reqs = malloc(sizeof *m->abort_reqs * (size_t)P.size);
    m->stop_reqs = malloc(sizeof *m->stop_reqs * (size_t)P.size);
    if (m->seg == NULL || m->abort_reqs == NULL || m->stop_reqs == NULL) {
        free(m->seg);
        free(m->abort_reqs);
        free(m->stop_reqs);
        free(m);
        return tm_error(TM_EHOSTMEM, "cannot allocate the world's MPI state");
    }
    for (int p = 0; p < P.size; p++) m->abort_reqs[p] = m->stop_reqs[p] = MPI_REQUEST_NULL;
    pthread_mutex_lock(&P.mpi_lock);
    MPI_Comm_dup(MPI_COMM_WORLD, &m->data);
    MPI_Comm_dup(MPI_COMM_WORLD, &m->ctl);
    MPI_Comm_dup(MPI_COMM_WORLD, &m->host);
    /* One window per host; each process's segment holds the rings of the
     * links into its devices from every device (those from its own are
     * never touched, and untouched shared pages take no memory). */
    int same_host = 0;
    for (int p = 0; p < P.size; p++) same_host += p != P.rank && P.host[p] == P.host[P.rank];
    int any = same_host > 0 && !P.force_mpi;
    MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    int st = TM_OK;
    if (any) {
        MPI_Comm node;
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
        MPI_Info info;
        MPI_Info_create(&info);
        MPI_Info_set(info, "alloc_shared_noncontig", "true");
        void *base = NULL;
        /* A page more, to start the slots on a page: Open MPI places a
         * segment past a header of its own. The page offset of shared
         * memory is the same in every process that maps it, so each finds
         * the same first slot. */
        MPI_Aint bytes = (MPI_Aint)((size_t)m->per * (size_t)n * m->slot + 4096);
        int rc = MPI_Win_allocate_shared(bytes, 1, info, node, &base, &m->win);
        MPI_Info_free(&info);
        if (rc != MPI_SUCCESS) {
            st = tm_error(TM_EHOSTMEM, "cannot allocate a %llu-byte shared-memory window for "
                          "the links between processes", (unsigned long long)bytes);
        } else {
            m->have_win = 1;
            MPI_Group g_node, g_world;
            MPI_Comm_group(node, &g_node);
            MPI_Comm_group(MPI_COMM_WORLD, &g_world);
            int nn;
            MPI_Comm_size(node, &nn);
            for (int q = 0; q < nn; q++) {
                int wr;
                MPI_Group_translate_ranks(g_node, 1, &q, g_world, &wr);
                MPI_Aint size;
                int disp;
                void *ptr;
                MPI_Win_shared_query(m->win, q, &size, &disp, &ptr);
                m->seg[wr] = (uint8_t *)(((uintptr_t)ptr + 4095) & ~(uintptr_t)4095);
            }
            MPI_Group_free(&g_node);
            MPI_Group_free(&g_world);
        }
        MPI_Comm_free(&node);
    }
    MPI_Irecv(&m->ctl_in, sizeof m->ctl_in, MPI_BYTE, MPI_ANY_SOURCE, 0, m->ctl, &m->ctl_req);
    MPI_Irecv(&m->stop_in, sizeof m->stop_in, MPI_BYTE, MPI_ANY_SOURCE, 1, m->ctl, &m->stop_req);
    pthread_mutex_unlock(&P.mpi_lock);
    if (st != TM_OK) {
        tm__mpi_world_destroy(m);
        return st;
    }
    pthread_mutex_lock(&P.worlds_lock);
    m->next = P.worlds;
    P.worlds = m;
    pthread_mutex_unlock(&P.worlds_lock);
    *out = m;
    return TM_OK;
}

static void drop(MPI_Request *r)
{
    if (*r == MPI_REQUEST_NULL) return;
    int done = 0;
    MPI_Test(r, &done, MPI_STATUS_IGNORE);
    if (done) return;
    MPI_Cancel(r);
    MPI_Request_free(r);
}

void tm__mpi_world_destroy(tm_mpi_world *m)
{
    if (m == NULL) return;
    pthread_mutex_lock(&P.worlds_lock);
    for (tm_mpi_world **p = &P.worlds; *p != NULL; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            break;
        }
    pthread_mutex_unlock(&P.worlds_lock);
    pthread_mutex_lock(&P.mpi_lock);
    /* Every process destroys the world together: what is still posted
     * (the next receives, a failure report no one read) is abandoned. */
    half *h = atomic_load(&m->halves);
    while (h != NULL) {
        half *next = h->next;
        if (h->send)
            for (int i = 0; i < h->count; i++) drop(&h->req[(h->first + i) % MAX_INFLIGHT]);
        else if (h->posted)
            drop(&h->req[0]);
        tm__link_destroy(h->ring);
        free(h);
        h = next;
    }
    drop(&m->ctl_req);
    drop(&m->stop_req);
    for (int p = 0; p < P.size; p++) {
        drop(&m->abort_reqs[p]);
        drop(&m->stop_reqs[p]);
    }
    MPI_Barrier(m->host);
    if (m->have_win) MPI_Win_free(&m->win);
    MPI_Comm_free(&m->data);
    MPI_Comm_free(&m->ctl);
    MPI_Comm_free(&m->host);
    pthread_mutex_unlock(&P.mpi_lock);
    free(m->seg);
    free(m->abort_reqs);
    free(m->stop_reqs);
    free(m);
}

void tm__mpi_abort(tm_mpi_world *m, int who, int status, const char *message)
{
    /* 3 while the report is written: only the first failure writes it. */
    int expected = 0;
    if (!atomic_compare_exchange_strong(&m->abort_state, &expected, 3)) return;
    m->abort_out.origin = 1;
    m->abort_out.who = who;
    m->abort_out.status = status;
    snprintf(m->abort_out.message, sizeof m->abort_out.message, "%s", message);
    /* Written before the state says so: the progress thread reads it
     * after its compare-exchange of the state. */
    atomic_store(&m->abort_state, 1);
    tm__doorbell_ring(&P.bell);
}

void tm__mpi_stop_tell(tm_mpi_world *m, const tm_stop_word *word)
{
    m->stop_out = *word;
    /* Written before the state says so, as tm__mpi_abort's report. */
    atomic_store(&m->stop_state, 1);
    tm__doorbell_ring(&P.bell);
}
