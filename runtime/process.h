/* The processes of a job: one, or the P processes that `mpirun -np P`
 * starts, over which a world's devices are split in contiguous blocks.
 * Without mpirun nothing here touches MPI (it is not even initialised), so
 * a program runs exactly as a plain process. Thread-safety: tm_process_init
 * is called once, by the main thread, before any world exists; the rest is
 * read-only after it. */
#ifndef TM_PROCESS_H
#define TM_PROCESS_H

/* Under mpirun (Open MPI's launcher sets OMPI_COMM_WORLD_SIZE), initialises
 * MPI and arranges for MPI_Finalize at exit; otherwise does nothing.
 * Idempotent. TM_OK, or TM_ESYS with a message when MPI cannot start or
 * does not grant the thread level the runtime needs. */
int tm_process_init(void);
/* This process's rank and the job's process count: 0 and 1 without
 * mpirun. Valid after tm_process_init. */
int tm_process_rank(void);
int tm_process_count(void);
/* The job's output is process `rank`'s alone: every other one sends its
 * stdout and stderr to /dev/null (and back, should a later call name it).
 * Programs call it with the process that reports the run: the processes
 * run the same command, so their usage errors are the same, and a failure
 * in any of them reaches that one (tm_world_run). No-op with one
 * process. */
void tm_process_output(int rank);
/* A program that calls MPI itself (bench_collectives' Open MPI rows)
 * does so between these two: meanwhile the runtime makes no MPI call. */
void tm_process_mpi_begin(void);
void tm_process_mpi_end(void);
/* Which transport links between processes use: "shm" (MPI-3 shared-memory
 * windows, processes of one host) and "mpi" (MPI point-to-point, between
 * hosts) chosen per pair, or "mpi" everywhere when the environment says
 * TM_TRANSPORT=mpi. */
const char *tm_process_transport(void);

#endif
