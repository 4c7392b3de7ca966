/* bench_collectives: tinymesh all-reduce, all-gather and reduce-scatter
 * timed nccl-tests style, next to the machine's single-thread memcpy bandwidth measured in the
 * same run. bench/peers/mpi_collectives.c prints the same rows for Open MPI;
 * bench/peers/compare_collectives.sh runs the two side by side. */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "runtime/collectives.h"
#include "runtime/process.h"
#include "runtime/status.h"

static const char usage[] =
    "usage: bench_collectives [--devices LIST] [--sizes LIST] [--iters N]\n"
    "         [--ops LIST] [--algo auto|ring|direct] [--pin auto|on|off]\n"
    "         [--ring-bytes SIZE] [--csv] [--help]\n"
    "Times float32 sum all-reduce, all-gather and reduce-scatter (out of place)\n"
    "on worlds of each device count, nccl-tests style: bytes is the all-reduce\n"
    "vector, the gathered all-gather result or the reduce-scatter input;\n"
    "time_us is the median over iterations of the slowest device's time (each\n"
    "iteration: barrier, then every device times its own call); busbw = algbw\n"
    "* 2(n-1)/n (all-reduce), (n-1)/n (all-gather, reduce-scatter).\n"
    "Every device checks its own output exactly; wrong counts bad elements and\n"
    "the exit status is 1 if any is wrong. A memcpy row (one thread, 64 MiB)\n"
    "gives the machine's copy bandwidth in the same run.\n"
    "  --devices LIST  device counts, e.g. 2,4,8 (default), 1..1024\n"
    "  --sizes LIST    message sizes in binary units (default 4K,64K,1M,16M,64M);\n"
    "                  all-gather and reduce-scatter sizes round down to a\n"
    "                  multiple of 4 * devices\n"
    "  --iters N       timed iterations (default 20): 5N for sizes <= 64 KiB,\n"
    "                  N up to 16 MiB, N*16MiB/size (at least 3) above;\n"
    "                  at least N/5 + 2 warm-up iterations and 20 ms are run\n"
    "                  first and not counted\n"
    "  --ops LIST      allreduce,allgather,reducescatter (default all three)\n"
    "  --algo A        all-reduce algorithm (default: TM_ALLREDUCE or auto)\n"
    "  --pin P         pin device threads to cores (default auto)\n"
    "  --ring-bytes S  ring capacity per link (default: chosen by the world)\n"
    "  --csv           print op,devices,bytes,time_us,algbw_GBps,busbw_GBps,wrong\n"
    "  --rounds R      run every device count's rows R times (default 1) and\n"
    "                  print each row's median over the rounds\n"
    "  --mpi           under mpirun: after each round, the same rows with Open\n"
    "                  MPI's MPI_Allreduce, MPI_Allgather and MPI_Reduce_scatter\n"
    "                  on the job's processes (rows mpi_allreduce, ...), timed\n"
    "                  the same way, so the two alternate in one job\n"
    "Under mpirun -np P the devices split over the P processes (each count\n"
    "must divide by P); process 0 prints.\n";

enum { OP_ALLREDUCE, OP_ALLGATHER, OP_REDUCESCATTER, N_OPS, MAX_LIST = 32, MAX_ITERS = 10000 };
static const char *const op_names[N_OPS] = {"allreduce", "allgather", "reducescatter"};

typedef struct {
    int devices[MAX_LIST], n_devices;
    size_t sizes[MAX_LIST];
    int n_sizes;
    int ops[N_OPS], n_ops;
    int iters, csv, rounds, mpi;
    tm_pin_policy pin;
    size_t ring_bytes;
} options;

/* One output row's bookkeeping. It lives in host memory and only the
 * benchmark reads it: each device writes its own slots, the host reads them
 * after the run. Device data never passes through it. */
typedef struct {
    int op;
    size_t bytes;   /* as reported: the all-reduce vector, the gathered
                       result, or the reduce-scatter input */
    size_t count;   /* floats each device sends (all-reduce, all-gather) or
                       receives (reduce-scatter) */
    uint32_t seed;
    int warmup, iters;
    double *times;  /* (iters, n): seconds, per iteration and device */
    long *wrong;    /* (n): wrong output elements, per device */
} row;

typedef struct {
    row *rows;
    int n_rows;
    size_t send_bytes, recv_bytes; /* the largest buffers any row needs */
} plan;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* --- inputs ------------------------------------------------------------
 * input(r, i) = a(i) * c(r) + b(r): small integers, so every partial sum is
 * exact in any order and the all-reduce result has the closed form
 * a(i) * sum c + sum b that each device checks without the others' data.
 * a(i) is hashed so that a misplaced segment does not line up by chance.
 * bench/peers/mpi_collectives.c uses the same functions. */

static int term_a(uint32_t seed, size_t i)
{
    uint32_t h = (uint32_t)i * 2654435761u + seed;
    h ^= h >> 15;
    return (int)(h % 17u) - 8;
}
static int term_b(uint32_t seed, int r) { return (int)(((uint32_t)r * 5u + seed) % 9u) - 4; }
static int term_c(uint32_t seed, int r) { return 1 + (int)(((uint32_t)r + seed) % 3u); }

static float input(uint32_t seed, int r, size_t i)
{
    return (float)(term_a(seed, i) * term_c(seed, r) + term_b(seed, r));
}

/* Wrong elements of an all-reduce sum over n ranks, whose elements from
 * `first` on are out[0..count). */
static long check_sum(const float *out /* (count) */, size_t first, size_t count, uint32_t seed,
                      int n)
{
    int sum_b = 0, sum_c = 0;
    for (int r = 0; r < n; r++) {
        sum_b += term_b(seed, r);
        sum_c += term_c(seed, r);
    }
    long wrong = 0;
    for (size_t i = 0; i < count; i++)
        wrong += out[i] != (float)(term_a(seed, first + i) * sum_c + sum_b);
    return wrong;
}

/* Wrong elements of an all-gather of count floats from each of n ranks. */
static long check_allgather(const float *out /* (n, count) */, size_t count, uint32_t seed, int n)
{
    long wrong = 0;
    for (int r = 0; r < n; r++)
        for (size_t i = 0; i < count; i++) wrong += out[(size_t)r * count + i] != input(seed, r, i);
    return wrong;
}

/* --- the device side ---------------------------------------------------- */

static int call(tm_comm *comm, const row *w, const float *send, float *recv)
{
    if (w->op == OP_ALLREDUCE) return tm_allreduce(comm, send, recv, w->count, TM_SUM);
    if (w->op == OP_REDUCESCATTER) return tm_reduce_scatter(comm, send, recv, w->count, TM_SUM);
    return tm_allgather(comm, send, recv, w->count);
}

/* Warm-up runs at least w->warmup iterations and at least WARM_S seconds of
 * device 0's clock, because first-use costs last longer than a few calls
 * here: ring pages are faulted in on first touch (20 us per 4 KiB page on
 * this VM), so until small messages have gone once around every 1 MiB ring
 * a 4 KiB all-reduce took 15-19 us instead of 1.5. Device 0 decides when to
 * stop; a one-float all-reduce of its decision tells everyone. */
#define WARM_S 0.02

static int warm_up(tm_comm *comm, const row *w, const float *send, float *recv, float *flag)
{
    double start = now();
    for (int it = 1;; it++) {
        TM_CHECK(tm_barrier(comm));
        TM_CHECK(call(comm, w, send, recv));
        flag[0] = tm_comm_rank(comm) == 0 && (it < w->warmup || now() - start < WARM_S);
        TM_CHECK(tm_allreduce(comm, flag, flag + 1, 1, TM_SUM));
        if (flag[1] == 0.0f) return TM_OK;
    }
}

/* Floats a device sends and receives in a row's collective. */
static size_t in_count(const row *w, int n)
{
    return w->op == OP_REDUCESCATTER ? w->count * (size_t)n : w->count;
}
static size_t out_count(const row *w, int n)
{
    return w->op == OP_ALLGATHER ? w->count * (size_t)n : w->count;
}

/* send: (count) or (n, count); recv: (count) or (n, count); flag: (2). */
static int run_row(tm_comm *comm, row *w, float *send, float *recv, float *flag)
{
    int n = tm_comm_size(comm), r = tm_comm_rank(comm);
    size_t in = in_count(w, n), out = out_count(w, n);
    for (size_t i = 0; i < in; i++) send[i] = input(w->seed, r, i);
    /* A poisoned output proves that the collective wrote every element. */
    for (size_t i = 0; i < out; i++) recv[i] = NAN;
    TM_CHECK(warm_up(comm, w, send, recv, flag));
    for (int it = 0; it < w->iters; it++) {
        TM_CHECK(tm_barrier(comm));
        double t0 = now();
        TM_CHECK(call(comm, w, send, recv));
        w->times[(size_t)it * (size_t)n + (size_t)r] = now() - t0;
    }
    /* Reduce-scatter: rank r holds block r of the sum. */
    long wrong = w->op == OP_ALLGATHER ? check_allgather(recv, w->count, w->seed, n)
                 : check_sum(recv, w->op == OP_REDUCESCATTER ? (size_t)r * w->count : 0,
                             w->count, w->seed, n);
    /* Out of place: the input must come back untouched. */
    for (size_t i = 0; i < in; i++) wrong += send[i] != input(w->seed, r, i);
    w->wrong[r] = wrong;
    return TM_OK;
}

static int device_main(tm_device *dev, void *arg)
{
    plan *p = arg;
    tm_comm *comm = tm_device_comm(dev);
    float *send = tm_device_alloc(dev, p->send_bytes, TM_TAG_WORKSPACE);
    float *recv = tm_device_alloc(dev, p->recv_bytes, TM_TAG_WORKSPACE);
    float *flag = tm_device_alloc(dev, 2 * sizeof(float), TM_TAG_WORKSPACE);
    if (send == NULL || recv == NULL || flag == NULL) return TM_ENOMEM;
    for (int i = 0; i < p->n_rows; i++) TM_CHECK(run_row(comm, &p->rows[i], send, recv, flag));
    tm_device_free(dev, flag);
    tm_device_free(dev, recv);
    tm_device_free(dev, send);
    return TM_OK;
}

/* --- the host side ------------------------------------------------------ */

static int iters_for(int iters, size_t bytes)
{
    size_t big = (size_t)16 << 20;
    if (bytes <= ((size_t)64 << 10)) return 5 * iters;
    if (bytes <= big) return iters;
    double scaled = (double)iters * (double)big / (double)bytes;
    return scaled < 3 ? 3 : (int)scaled;
}

static void print_row(const options *o, const char *op, int n, size_t bytes, double t_s,
                      double factor, long wrong)
{
    double algbw = (double)bytes / t_s * 1e-9;
    const char *fmt = o->csv ? "%s,%d,%zu,%.2f,%.3f,%.3f,%ld\n"
                             : "%17s %7d %12zu %11.2f %11.3f %11.3f %6ld\n";
    printf(fmt, op, n, bytes, t_s * 1e6, algbw, algbw * factor, wrong);
    fflush(stdout);
}

/* The machine's limit: one thread copying 64 MiB, median of 9. */
static int memcpy_row(const options *o)
{
    size_t bytes = (size_t)64 << 20;
    char *src = malloc(bytes), *dst = malloc(bytes);
    if (src == NULL || dst == NULL) {
        free(src);
        free(dst);
        fprintf(stderr, "bench_collectives: cannot allocate the memcpy buffers\n");
        return 1;
    }
    memset(src, 1, bytes);
    memset(dst, 0, bytes);
    double t[9];
    for (int i = 0; i < 9; i++) {
        double t0 = now();
        memcpy(dst, src, bytes);
        t[i] = now() - t0;
    }
    long wrong = memcmp(dst, src, bytes) != 0;
    free(src);
    free(dst);
    print_row(o, "memcpy", 1, bytes, median(t, 9), 1.0, wrong);
    return 0;
}

static void plan_rows(const options *o, int n, plan *p, row *rows)
{
    memset(p, 0, sizeof *p);
    p->rows = rows;
    for (int k = 0; k < o->n_ops; k++)
        for (int s = 0; s < o->n_sizes; s++) {
            row *w = &rows[p->n_rows++];
            w->op = o->ops[k];
            w->seed = (uint32_t)(p->n_rows * 7919);
            size_t floats = o->sizes[s] / sizeof(float);
            /* nccl-tests rounds the count down to what divides evenly. */
            w->count = w->op == OP_ALLREDUCE ? floats : floats / (size_t)n;
            if (w->count == 0) w->count = 1;
            size_t in = in_count(w, n) * sizeof(float), out = out_count(w, n) * sizeof(float);
            w->bytes = in > out ? in : out;
            w->iters = iters_for(o->iters, w->bytes);
            w->warmup = w->iters / 5 + 2;
            if (in > p->send_bytes) p->send_bytes = in;
            if (out > p->recv_bytes) p->recv_bytes = out;
        }
}

/* Runs every row on a world of n devices and prints them; returns the number
 * of wrong elements, or -1 on failure (message printed). */
static long bench_devices(const options *o, int n, int round, double *medians, long *bad)
{
    row rows[N_OPS * MAX_LIST];
    plan p;
    plan_rows(o, n, &p, rows);
    long wrong_total = -1;
    tm_world *world = NULL;
    for (int i = 0; i < p.n_rows; i++) {
        rows[i].times = calloc((size_t)rows[i].iters * (size_t)n, sizeof(double));
        rows[i].wrong = calloc((size_t)n, sizeof(long));
        if (rows[i].times == NULL || rows[i].wrong == NULL) {
            p.n_rows = i + 1;
            fprintf(stderr, "bench_collectives: out of host memory\n");
            goto out;
        }
    }
    /* Each arena holds exactly the largest buffers plus alignment slack, so
     * that hundreds of devices fit in host memory. */
    tm_world_config cfg;
    tm_world_config_default(&cfg);
    cfg.n_devices = n;
    cfg.mem_cap = p.send_bytes + p.recv_bytes + 6 * TM_ARENA_ALIGN;
    cfg.pin = o->pin;
    cfg.ring_bytes = o->ring_bytes;
    int st = tm_world_create(&world, &cfg);
    if (st != TM_OK) {
        /* Device memory here is the size of the messages; what this tool
         * lets the user lower is the rings and the device counts. */
        fprintf(stderr, "bench_collectives: %d devices: %s%s\n", n, tm_error_message(),
                st == TM_EHOSTMEM ? "; lower --ring-bytes, --devices or --sizes" : "");
        goto out;
    }
    if (tm_world_run(world, device_main, &p) != TM_OK) {
        fprintf(stderr, "bench_collectives: %d devices: %s\n", n, tm_world_error(world));
        goto out;
    }
    /* Across processes each wrote its devices' slots: the others' are 0, so
     * the slowest time is the largest and the wrong counts add. */
    for (int i = 0; i < p.n_rows && tm_world_device_count_local(world) < n; i++) {
        row *w = &rows[i];
        size_t k = (size_t)w->iters * (size_t)n, procs = (size_t)tm_process_count();
        double *t = malloc(sizeof *t * k * procs);
        long *bad_all = malloc(sizeof *bad_all * (size_t)n * procs);
        if (t == NULL || bad_all == NULL ||
            tm_world_share_host(world, w->times, sizeof *t * k, t) != TM_OK ||
            tm_world_share_host(world, w->wrong, sizeof *bad_all * (size_t)n, bad_all) != TM_OK) {
            free(t);
            free(bad_all);
            fprintf(stderr, "bench_collectives: cannot gather the processes' times\n");
            goto out;
        }
        for (size_t q = 1; q < procs; q++) {
            for (size_t x = 0; x < k; x++)
                if (t[q * k + x] > t[x]) t[x] = t[q * k + x];
            for (int r = 0; r < n; r++) bad_all[r] += bad_all[q * (size_t)n + (size_t)r];
        }
        memcpy(w->times, t, sizeof *t * k);
        memcpy(w->wrong, bad_all, sizeof *bad_all * (size_t)n);
        free(t);
        free(bad_all);
    }
    if (!o->csv && round == 0)
        printf("# %d devices: ring %zu bytes per link, %s\n", n, tm_world_ring_bytes(world),
               tm_world_pinned(world) ? "pinned" : "not pinned");
    wrong_total = 0;
    for (int i = 0; i < p.n_rows; i++) {
        row *w = &rows[i];
        long wrong = 0;
        for (int r = 0; r < n; r++) wrong += w->wrong[r];
        /* An iteration lasts as long as its slowest device. Written in
         * place: slot it lies in a row of times already reduced. */
        for (int it = 0; it < w->iters; it++) {
            double *t = w->times + (size_t)it * (size_t)n, worst = t[0];
            for (int r = 1; r < n; r++) worst = t[r] > worst ? t[r] : worst;
            w->times[it] = worst;
        }
        medians[i] = median(w->times, w->iters);
        bad[i] += wrong;
        wrong_total += wrong;
    }
out:
    tm_world_destroy(world);
    for (int i = 0; i < p.n_rows; i++) {
        free(rows[i].times);
        free(rows[i].wrong);
    }
    return wrong_total;
}

/* Open MPI's own collectives on the job's processes, row by row as
 * bench_devices times ours: per iteration a barrier, then every rank times
 * its call; the slowest rank's time, median over iterations. */
static int mpi_rows(const plan *p, double *medians)
{
    int procs = tm_process_count(), rank = tm_process_rank();
    tm_process_mpi_begin();
    int st = 0;
    int *counts = malloc(sizeof *counts * (size_t)procs);
    if (counts == NULL) st = 1;
    for (int i = 0; i < p->n_rows && st == 0; i++) {
        const row *w = &p->rows[i];
        /* The same vector sizes as the row's, over the processes. */
        row m = *w;
        if (m.op != OP_ALLREDUCE) m.count = w->bytes / sizeof(float) / (size_t)procs;
        size_t in = in_count(&m, procs), out = out_count(&m, procs);
        for (int q = 0; q < procs; q++) counts[q] = (int)m.count;
        float *send = malloc(sizeof(float) * (in ? in : 1));
        float *recv = malloc(sizeof(float) * (out ? out : 1));
        double *t = malloc(sizeof(double) * (size_t)w->iters);
        if (send == NULL || recv == NULL || t == NULL) st = 1;
        for (size_t k = 0; st == 0 && k < in; k++) send[k] = input(w->seed, rank, k);
        for (int it = -w->warmup; st == 0 && it < w->iters; it++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = now();
            if (w->op == OP_ALLREDUCE)
                MPI_Allreduce(send, recv, (int)in, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            else if (w->op == OP_REDUCESCATTER)
                MPI_Reduce_scatter(send, recv, counts, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            else
                MPI_Allgather(send, (int)in, MPI_FLOAT, recv, (int)in, MPI_FLOAT, MPI_COMM_WORLD);
            if (it >= 0) t[it] = now() - t0;
        }
        if (st == 0) {
            MPI_Allreduce(MPI_IN_PLACE, t, w->iters, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            medians[i] = median(t, w->iters);
        }
        free(send);
        free(recv);
        free(t);
    }
    free(counts);
    tm_process_mpi_end();
    if (st != 0) fprintf(stderr, "bench_collectives: out of host memory\n");
    return st;
}

/* --- options ------------------------------------------------------------ */

static int bad(const char *flag, const char *value, const char *want)
{
    fprintf(stderr, "bench_collectives: %s wants %s, got '%s'\n", flag, want, value);
    return 2;
}

/* Splits a comma-separated list into tokens, calling parse on each. */
static int each_item(const char *list, int (*parse)(const char *, options *), options *o)
{
    char buf[1024];
    if (strlen(list) >= sizeof buf || list[0] == '\0') return -1;
    strcpy(buf, list);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save))
        if (parse(t, o) != 0) return -1;
    return 0;
}

static int parse_device(const char *t, options *o)
{
    char *end;
    long v = strtol(t, &end, 10);
    if (*end != '\0' || end == t || v < 1 || v > TM_MAX_DEVICES || o->n_devices == MAX_LIST)
        return -1;
    o->devices[o->n_devices++] = (int)v;
    return 0;
}

static int parse_size_item(const char *t, options *o)
{
    size_t v;
    if (tm_parse_size(t, &v) != 0 || v < sizeof(float) || v > ((size_t)1 << 34) ||
        o->n_sizes == MAX_LIST)
        return -1;
    o->sizes[o->n_sizes++] = v;
    return 0;
}

static int parse_op(const char *t, options *o)
{
    for (int k = 0; k < N_OPS; k++)
        if (strcmp(t, op_names[k]) == 0) {
            for (int j = 0; j < o->n_ops; j++)
                if (o->ops[j] == k) return -1;
            o->ops[o->n_ops++] = k;
            return 0;
        }
    return -1;
}

/* Returns -1 to go on, or the exit status (0 after --help, 2 on bad usage). */
static int parse_options(int argc, char **argv, options *o)
{
    static const struct option opts[] = {
        {"devices", required_argument, NULL, 'd'}, {"sizes", required_argument, NULL, 's'},
        {"iters", required_argument, NULL, 'i'},   {"ops", required_argument, NULL, 'o'},
        {"algo", required_argument, NULL, 'a'},    {"pin", required_argument, NULL, 'p'},
        {"ring-bytes", required_argument, NULL, 'r'}, {"csv", no_argument, NULL, 'c'},
        {"rounds", required_argument, NULL, 'R'},  {"mpi", no_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    static const char *const pins[] = {"auto", "off", "on"};
    opterr = 0;
    for (int ch; (ch = getopt_long(argc, argv, ":", opts, NULL)) != -1;) {
        char *end;
        tm_allreduce_algo algo;
        switch (ch) {
        case 'd':
            o->n_devices = 0;
            if (each_item(optarg, parse_device, o) != 0)
                return bad("--devices", optarg, "a list of counts 1..1024");
            break;
        case 's':
            o->n_sizes = 0;
            if (each_item(optarg, parse_size_item, o) != 0)
                return bad("--sizes", optarg, "a list of sizes 4..16G like 4K,1M");
            break;
        case 'i':
            o->iters = (int)strtol(optarg, &end, 10);
            if (*end != '\0' || end == optarg || o->iters < 1 || o->iters > MAX_ITERS)
                return bad("--iters", optarg, "an integer 1..10000");
            break;
        case 'o':
            o->n_ops = 0;
            if (each_item(optarg, parse_op, o) != 0)
                return bad("--ops", optarg, "a list of allreduce, allgather, reducescatter");
            break;
        case 'a':
            if (tm_allreduce_algo_parse(optarg, &algo) != 0)
                return bad("--algo", optarg, "auto, ring or direct");
            tm_allreduce_set_algo(algo);
            break;
        case 'p': {
            int k = 0;
            while (k < 3 && strcmp(optarg, pins[k]) != 0) k++;
            if (k == 3) return bad("--pin", optarg, "auto, on or off");
            o->pin = (tm_pin_policy)k;
            break;
        }
        case 'r':
            if (tm_parse_size(optarg, &o->ring_bytes) != 0 || o->ring_bytes < 4096 ||
                (o->ring_bytes & (o->ring_bytes - 1)) != 0)
                return bad("--ring-bytes", optarg, "a power of two >= 4K");
            break;
        case 'c': o->csv = 1; break;
        case 'R':
            o->rounds = (int)strtol(optarg, &end, 10);
            if (*end != '\0' || end == optarg || o->rounds < 1 || o->rounds > 1000)
                return bad("--rounds", optarg, "an integer 1..1000");
            break;
        case 'm': o->mpi = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        case ':':
            fprintf(stderr, "bench_collectives: %s needs a value (try --help)\n", argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "bench_collectives: bad option '%s' (try --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "bench_collectives: unexpected argument '%s' (try --help)\n", argv[optind]);
        return 2;
    }
    return -1;
}

int main(int argc, char **argv)
{
    options o = {.devices = {2, 4, 8},
                 .n_devices = 3,
                 .sizes = {(size_t)4 << 10, (size_t)64 << 10, (size_t)1 << 20, (size_t)16 << 20,
                           (size_t)64 << 20},
                 .n_sizes = 5,
                 .ops = {OP_ALLREDUCE, OP_ALLGATHER, OP_REDUCESCATTER},
                 .n_ops = 3,
                 .iters = 20,
                 .rounds = 1,
                 .pin = TM_PIN_AUTO};
    if (tm_process_init() != TM_OK) {
        fprintf(stderr, "bench_collectives: %s\n", tm_error_message());
        return 1;
    }
    tm_process_output(0);
    int st = parse_options(argc, argv, &o);
    if (st >= 0) return st;
    if (o.mpi && tm_process_count() < 2) {
        fprintf(stderr, "bench_collectives: --mpi runs under mpirun with 2 or more processes\n");
        return 2;
    }

    if (o.csv) {
        puts("op,devices,bytes,time_us,algbw_GBps,busbw_GBps,wrong");
    } else {
        printf("# float32 sum, out of place; time = median over iterations of the slowest\n"
               "# device; GB/s = 1e9 bytes/s; all-reduce algorithm: %s\n",
               (const char *[]){"auto", "ring", "direct"}[tm_allreduce_get_algo()]);
        printf("%17s %7s %12s %11s %11s %11s %6s\n", "op", "devices", "bytes", "time_us",
               "algbw_GBps", "busbw_GBps", "wrong");
    }
    if (memcpy_row(&o) != 0) return 1;
    long wrong = 0;
    for (int d = 0; d < o.n_devices; d++) {
        int n = o.devices[d];
        row rows[N_OPS * MAX_LIST];
        plan p;
        plan_rows(&o, n, &p, rows);
        double *ours = malloc(sizeof(double) * (size_t)o.rounds * (size_t)p.n_rows);
        double *theirs = malloc(sizeof(double) * (size_t)o.rounds * (size_t)p.n_rows);
        double *col = malloc(sizeof(double) * (size_t)o.rounds);
        long *bad = calloc((size_t)p.n_rows, sizeof *bad);
        if (ours == NULL || theirs == NULL || col == NULL || bad == NULL) {
            fprintf(stderr, "bench_collectives: out of host memory\n");
            return 1;
        }
        /* Rounds alternate ours and Open MPI's, so that both see the same
         * machine (other processes' load drifts over seconds). */
        for (int r = 0; r < o.rounds; r++) {
            long w = bench_devices(&o, n, r, ours + (size_t)r * (size_t)p.n_rows, bad);
            if (w < 0) return 1;
            wrong += w;
            if (o.mpi && mpi_rows(&p, theirs + (size_t)r * (size_t)p.n_rows) != 0) return 1;
        }
        for (int i = 0; i < p.n_rows; i++) {
            double f = (double)(n - 1) / n * (rows[i].op == OP_ALLREDUCE ? 2.0 : 1.0);
            for (int r = 0; r < o.rounds; r++) col[r] = ours[(size_t)r * (size_t)p.n_rows + i];
            print_row(&o, op_names[rows[i].op], n, rows[i].bytes, median(col, o.rounds), f, bad[i]);
        }
        int procs = tm_process_count();
        for (int i = 0; o.mpi && i < p.n_rows; i++) {
            double f = (double)(procs - 1) / procs * (rows[i].op == OP_ALLREDUCE ? 2.0 : 1.0);
            for (int r = 0; r < o.rounds; r++) col[r] = theirs[(size_t)r * (size_t)p.n_rows + i];
            char name[32];
            snprintf(name, sizeof name, "mpi_%s", op_names[rows[i].op]);
            print_row(&o, name, procs, rows[i].bytes, median(col, o.rounds), f, 0);
        }
        free(ours);
        free(theirs);
        free(col);
        free(bad);
    }
    return wrong != 0;
}
