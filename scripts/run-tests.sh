#!/bin/sh
# Runs the Criterion suites in BUILD (all, or the named ones), one test at a
# time (many tests wait on other threads), then the suites across processes
# (mpi_*) under mpirun with 2 and 4 processes, each over shared-memory rings
# and over MPI point-to-point links; ends with one summary line. Exits
# non-zero if any suite failed.
set -u
build=$1; shift
if [ $# -gt 0 ]; then
    bins=""; for s in "$@"; do
        if [ -f "tests/$s.sh" ]; then bins="$bins tests/$s.sh"
        else case $s in mpi_*) bins="$bins $build/$s" ;; *) bins="$bins $build/test_$s" ;; esac
        fi
    done
else
    bins="$(ls "$build"/test_* "$build"/mpi_* 2>/dev/null | grep -v '\.d$') $(ls tests/mpi_*.sh)"
fi
# Suites that run the programs find them here.
export TM_BIN_DIR="$build"
passed=0; failed=0; bad=""
# One run of a suite: its output, then whether it passed. Criterion judges
# each test by its assertions; a leak that LeakSanitizer reports as the
# test's process exits fails the suite too.
run() {
    name=$1; shift
    log=$(mktemp)
    "$@" >"$log" 2>&1
    rc=$?
    cat "$log"
    if grep -q "ERROR: LeakSanitizer" "$log"; then rc=1; echo "$name: memory leaked"; fi
    rm -f "$log"
    if [ "$rc" -eq 0 ]; then passed=$((passed+1)); else failed=$((failed+1)); bad="$bad $name"; fi
}
# mpirun's options: as root (CI is), more processes than cores, and MPI's
# own blocking waits yield the core (4 processes share 2 cores here; the
# runtime's waits sleep anyway). The whole run is bounded: a hang fails it.
mpirun_opts="--oversubscribe --allow-run-as-root --mca mpi_yield_when_idle 1"
# Under AddressSanitizer the suites across processes run without
# LeakSanitizer (ASan's and UBSan's other checks stay on; tests/mpi_train.sh
# does the same): Open MPI keeps
# allocations to the end in plugins it unloads at MPI_Finalize, whose
# stacks LeakSanitizer can no longer read, so no suppression can name
# them. The same code paths' leaks are checked by the in-process suites.
mpirun_opts="$mpirun_opts -x ASAN_OPTIONS=detect_leaks=0"
# Under ThreadSanitizer, Open MPI's own lock-order inversion is suppressed
# (tests/tsan-shim/openmpi.supp says which, and why).
mpirun_opts="$mpirun_opts -x TSAN_OPTIONS=suppressions=$(pwd)/tests/tsan-shim/openmpi.supp"
for b in $bins; do
    [ -x "$b" ] || { echo "missing test binary $b" >&2; failed=$((failed+1)); bad="$bad $b"; continue; }
    case $(basename "$b") in
    mpi_*.sh) run "$(basename "$b" .sh)" "$b" "$build" ;;
    mpi_*)
        for np in 2 4; do
            for t in shm mpi; do
                echo "== $(basename "$b"): $np processes, $t links"
                run "$(basename "$b")/np$np/$t" timeout 1800 \
                    mpirun $mpirun_opts -x TM_TRANSPORT=$t -np $np "$b"
            done
        done ;;
    *) run "$(basename "$b")" "$b" --jobs=1 --short-filename ;;
    esac
done
[ -n "$bad" ] && echo "failed suites:$bad"
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
