/* mpi_collectives: the Open MPI peer of bench/bench_collectives.c. Same rows
 * (op ranks bytes time_us algbw_GBps busbw_GBps wrong), same inputs and
 * checks, same timing: barrier, each rank times its own call, the slowest
 * rank's time per iteration, median over iterations. Built by `make
 * bench-peers` when mpicc exists; run with
 *   mpirun --allow-run-as-root --oversubscribe --mca btl self,vader -np N \
 *       build/mpi_collectives [--sizes LIST] [--iters N] [--ops LIST] [--csv] */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: mpirun -np N mpi_collectives [--sizes LIST] [--iters N] [--ops LIST] [--csv]\n"
    "MPI_Allreduce (MPI_FLOAT, MPI_SUM) and MPI_Allgather timed like\n"
    "build/bench_collectives (see its --help): same sizes, iteration counts,\n"
    "inputs, checks and columns.\n";

enum { OP_ALLREDUCE, OP_ALLGATHER, N_OPS, MAX_LIST = 32, MAX_ITERS = 10000 };
static const char *const op_names[N_OPS] = {"allreduce", "allgather"};

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

/* The inputs and checks of bench/bench_collectives.c, verbatim: small
 * integers a(i) * c(r) + b(r), exact in any summation order. */
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

static long check_allreduce(const float *out /* (count) */, size_t count, uint32_t seed, int n)
{
    int sum_b = 0, sum_c = 0;
    for (int r = 0; r < n; r++) {
        sum_b += term_b(seed, r);
        sum_c += term_c(seed, r);
    }
    long wrong = 0;
    for (size_t i = 0; i < count; i++)
        wrong += out[i] != (float)(term_a(seed, i) * sum_c + sum_b);
    return wrong;
}

static long check_allgather(const float *out /* (n, count) */, size_t count, uint32_t seed, int n)
{
    long wrong = 0;
    for (int r = 0; r < n; r++)
        for (size_t i = 0; i < count; i++) wrong += out[(size_t)r * count + i] != input(seed, r, i);
    return wrong;
}

static int iters_for(int iters, size_t bytes)
{
    size_t big = (size_t)16 << 20;
    if (bytes <= ((size_t)64 << 10)) return 5 * iters;
    if (bytes <= big) return iters;
    double scaled = (double)iters * (double)big / (double)bytes;
    return scaled < 3 ? 3 : (int)scaled;
}

/* Sizes like 4096, 4K, 64k, 1M, 16MiB (binary units, integers). */
static int parse_size(const char *t, size_t *out)
{
    char *end;
    unsigned long long v = strtoull(t, &end, 10);
    int shift = 0;
    if (end == t) return -1;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (shift && (strcmp(end, "B") == 0 || strcmp(end, "iB") == 0)) end += strlen(end);
    /* MPI counts are ints: at most 4 GiB (2^30 floats) per call. */
    if (*end != '\0' || v == 0 || v > (1ull << 32) >> shift) return -1;
    *out = (size_t)(v << shift);
    return 0;
}

typedef struct {
    size_t sizes[MAX_LIST];
    int n_sizes, ops[N_OPS], n_ops, iters, csv;
} options;

/* Returns -1 to go on, or the exit status (0 after --help, 2 on bad usage). */
static int parse_options(int argc, char **argv, options *o, int rank)
{
    for (int a = 1; a < argc; a++) {
        const char *flag = argv[a], *val = a + 1 < argc ? argv[a + 1] : NULL;
        char buf[1024], *save = NULL, *end;
        if (strcmp(flag, "--csv") == 0) {
            o->csv = 1;
            continue;
        }
        if (strcmp(flag, "--help") == 0) {
            if (rank == 0) fputs(usage, stdout);
            return 0;
        }
        if (strcmp(flag, "--sizes") != 0 && strcmp(flag, "--ops") != 0 &&
            strcmp(flag, "--iters") != 0) {
            if (rank == 0) fprintf(stderr, "mpi_collectives: bad option '%s' (try --help)\n", flag);
            return 2;
        }
        if (val == NULL) {
            if (rank == 0) fprintf(stderr, "mpi_collectives: %s needs a value\n", flag);
            return 2;
        }
        int ok = strlen(val) < sizeof buf && val[0] != '\0';
        if (ok && strcmp(flag, "--sizes") == 0) {
            strcpy(buf, val);
            o->n_sizes = 0;
            for (char *t = strtok_r(buf, ",", &save); ok && t; t = strtok_r(NULL, ",", &save))
                ok = o->n_sizes < MAX_LIST && parse_size(t, &o->sizes[o->n_sizes++]) == 0 &&
                     o->sizes[o->n_sizes - 1] >= sizeof(float);
        } else if (ok && strcmp(flag, "--ops") == 0) {
            strcpy(buf, val);
            o->n_ops = 0;
            for (char *t = strtok_r(buf, ",", &save); ok && t; t = strtok_r(NULL, ",", &save)) {
                int k = 0;
                while (k < N_OPS && strcmp(t, op_names[k]) != 0) k++;
                for (int j = 0; j < o->n_ops; j++) ok = ok && o->ops[j] != k;
                ok = ok && k < N_OPS;
                if (ok) o->ops[o->n_ops++] = k;
            }
        } else if (ok) {
            o->iters = (int)strtol(val, &end, 10);
            ok = *end == '\0' && o->iters >= 1 && o->iters <= MAX_ITERS;
        }
        if (!ok) {
            if (rank == 0) fprintf(stderr, "mpi_collectives: bad value for %s: '%s'\n", flag, val);
            return 2;
        }
        a++;
    }
    return -1;
}

static void call(int op, const float *send, float *recv, size_t count)
{
    if (op == OP_ALLREDUCE)
        MPI_Allreduce(send, recv, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    else
        MPI_Allgather(send, (int)count, MPI_FLOAT, recv, (int)count, MPI_FLOAT, MPI_COMM_WORLD);
}

/* The tinymesh benchmark's warm-up: at least `warmup` iterations and 20 ms
 * of rank 0's clock (first-touch page faults cost 20 us per page on this
 * VM); rank 0 decides, a one-float all-reduce tells everyone. */
static void warm_up(int op, const float *send, float *recv, size_t count, int warmup, int rank)
{
    double start = MPI_Wtime();
    for (int it = 1;; it++) {
        MPI_Barrier(MPI_COMM_WORLD);
        call(op, send, recv, count);
        float go = rank == 0 && (it < warmup || MPI_Wtime() - start < 0.02), sum;
        MPI_Allreduce(&go, &sum, 1, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (sum == 0.0f) return;
    }
}

/* Times one row; rank 0 prints it. Returns the wrong count (on rank 0). */
static long run_row(const options *o, int op, size_t size, uint32_t seed, float *send, float *recv,
                    double *times, int rank, int n)
{
    size_t floats = size / sizeof(float);
    size_t count = op == OP_ALLREDUCE ? floats : floats / (size_t)n;
    if (count == 0) count = 1;
    size_t out = op == OP_ALLREDUCE ? count : count * (size_t)n, bytes = out * sizeof(float);
    int iters = iters_for(o->iters, bytes), warmup = iters / 5 + 2;
    for (size_t i = 0; i < count; i++) send[i] = input(seed, rank, i);
    for (size_t i = 0; i < out; i++) recv[i] = NAN;
    warm_up(op, send, recv, count, warmup, rank);
    for (int it = 0; it < iters; it++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        call(op, send, recv, count);
        times[it] = MPI_Wtime() - t0;
    }
    long wrong = op == OP_ALLREDUCE ? check_allreduce(recv, count, seed, n)
                                    : check_allgather(recv, count, seed, n), total = 0;
    for (size_t i = 0; i < count; i++) wrong += send[i] != input(seed, rank, i);
    MPI_Reduce(&wrong, &total, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    /* An iteration lasts as long as its slowest rank. */
    MPI_Reduce(rank == 0 ? MPI_IN_PLACE : times, times, iters, MPI_DOUBLE, MPI_MAX, 0,
               MPI_COMM_WORLD);
    if (rank == 0) {
        double t = median(times, iters), algbw = (double)bytes / t * 1e-9;
        double f = (double)(n - 1) / n * (op == OP_ALLREDUCE ? 2.0 : 1.0);
        const char *fmt = o->csv ? "%s,%d,%zu,%.2f,%.3f,%.3f,%ld\n"
                                 : "%10s %7d %12zu %11.2f %11.3f %11.3f %6ld\n";
        printf(fmt, op_names[op], n, bytes, t * 1e6, algbw, algbw * f, total);
        fflush(stdout);
    }
    return total;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    options o = {.sizes = {(size_t)4 << 10, (size_t)64 << 10, (size_t)1 << 20, (size_t)16 << 20,
                           (size_t)64 << 20},
                 .n_sizes = 5,
                 .ops = {OP_ALLREDUCE, OP_ALLGATHER},
                 .n_ops = 2,
                 .iters = 20};
    int st = parse_options(argc, argv, &o, rank);
    if (st >= 0) {
        MPI_Finalize();
        return st;
    }
    size_t max = 0;
    for (int s = 0; s < o.n_sizes; s++) max = o.sizes[s] > max ? o.sizes[s] : max;
    max = (max / sizeof(float) + (size_t)n) * sizeof(float); /* room for count >= 1 */
    float *send = aligned_alloc(64, (max + 63) / 64 * 64);
    float *recv = aligned_alloc(64, (max + 63) / 64 * 64);
    double *times = malloc(sizeof(double) * 5 * MAX_ITERS);
    if (send == NULL || recv == NULL || times == NULL) {
        fprintf(stderr, "mpi_collectives: rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (rank == 0) {
        if (o.csv) {
            puts("op,devices,bytes,time_us,algbw_GBps,busbw_GBps,wrong");
        } else {
            char lib[MPI_MAX_LIBRARY_VERSION_STRING];
            int len;
            MPI_Get_library_version(lib, &len);
            lib[strcspn(lib, ",\n")] = '\0';
            printf("# %s, %d ranks; float32 sum, out of place; time = median over\n"
                   "# iterations of the slowest rank; GB/s = 1e9 bytes/s\n",
                   lib, n);
            printf("%10s %7s %12s %11s %11s %11s %6s\n", "op", "devices", "bytes", "time_us",
                   "algbw_GBps", "busbw_GBps", "wrong");
        }
    }
    long wrong = 0;
    uint32_t row = 0;
    for (int k = 0; k < o.n_ops; k++)
        for (int s = 0; s < o.n_sizes; s++) {
            row++;
            wrong += run_row(&o, o.ops[k], o.sizes[s], row * 7919u, send, recv, times, rank, n);
        }
    free(send);
    free(recv);
    free(times);
    MPI_Finalize();
    return rank == 0 && wrong != 0;
}
