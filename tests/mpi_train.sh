#!/bin/sh
# Training across processes: every mesh of up to 8 devices that 2 or 4
# processes split evenly, with every pipeline schedule, trains the MLP (and
# the GPT: data parallel, and split over tp and pp with sequence
# parallelism and its tied embedding; and ZeRO's stages) to bitwise the same
# step losses and the same checkpoint bytes under `mpirun -np P` as in one
# process (the checkpoint gathered over the links; the GPT's closing sample
# the same); a device failing in the last process ends the job within 10 s,
# non-zero, with one message naming it; so do SIGTERM or SIGINT to one
# process, a process killed and a divergence; a mesh that P does not divide
# is bad usage (exit 2).
# Usage: tests/mpi_train.sh BUILD_DIR. Ends with "N passed, M failed".
set -u
bin=${1:-build}/train
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# As scripts/run-tests.sh: no LeakSanitizer under mpirun (Open MPI's
# unloaded plugins), every other sanitizer check on.
mpirun="timeout 300 mpirun --oversubscribe --allow-run-as-root --mca mpi_yield_when_idle 1 -x ASAN_OPTIONS=detect_leaks=0"
passed=0; failed=0
ok() { passed=$((passed+1)); }
bad() { failed=$((failed+1)); echo "FAIL: $*"; }
# The step lines without their modeled time (emulated nodes follow the
# processes, so modeled times differ by design).
losses() { grep '"type":"step"' "$1" | sed 's/,"modeled_step_s":[^,}]*//'; }

# One comparison: $1 processes, then train's flags.
same() {
    np=$1; shift
    "$bin" "$@" --metrics "$tmp/ref.json" --save "$tmp/ref.st" >"$tmp/ref.out" 2>&1 ||
        { bad "reference run failed: $* ($(tail -1 "$tmp/ref.out"))"; return; }
    $mpirun -np "$np" "$bin" "$@" --metrics "$tmp/mpi.json" --save "$tmp/mpi.st" \
        >"$tmp/mpi.out" 2>&1 ||
        { bad "np=$np failed: $* ($(grep train: "$tmp/mpi.out" | head -1))"; return; }
    if [ "$(losses "$tmp/ref.json")" != "$(losses "$tmp/mpi.json")" ]; then
        bad "np=$np: step losses differ: $*"
    elif ! cmp -s "$tmp/ref.st" "$tmp/mpi.st"; then
        bad "np=$np: checkpoints differ: $*"
    else
        ok
    fi
}

mlp="--dataset synthetic --samples 1024 --epochs 1 --steps 3 --batch 64"
for np in 2 4; do
    for mesh in "2 1 1" "1 2 1" "1 1 2" "2 2 1" "2 1 2" "1 2 2" "2 2 2" "4 1 1" "1 4 1" \
                "1 1 4" "4 2 1" "2 4 1" "1 2 4" "8 1 1" "1 8 1" "1 1 8"; do
        set -- $mesh
        [ $(( $1 * $2 * $3 % np )) -eq 0 ] || continue
        if [ "$2" -gt 1 ]; then
            # The MLP has 3 layers: 4 and 8 stages need more of them.
            model="--model 64,48,40,32,24,16,12,10,8"
            for s in sequential gpipe 1f1b grouped interleaved; do
                same "$np" $mlp $model --dp "$1" --pp "$2" --tp "$3" --micro-batches 4 \
                    --schedule "$s"
            done
        else
            same "$np" $mlp --model 64,32,16,8 --dp "$1" --pp 1 --tp "$3" --micro-batches 2
        fi
    done
    gpt="--model gpt --dataset synthetic --samples 256 --layers 2 --heads 2 --d-model 32
         --context 16 --batch 8 --steps 3 --sample-tokens 0"
    same "$np" $gpt --dp 4
    same "$np" $gpt --pp 2 --tp 2 --sequence-parallel --micro-batches 2
    same "$np" $gpt --dp 2 --pp 2 --tp 2 --micro-batches 2 --schedule gpipe
    # ZeRO: the shards' collectives and the checkpoint's gathers over dp
    # groups that cross processes.
    same "$np" $mlp --model 64,32,16,8 --dp 4 --zero 1 --micro-batches 2
    same "$np" $gpt --dp 4 --zero 3
    same "$np" $gpt --dp 2 --pp 2 --tp 2 --sequence-parallel --micro-batches 2 --zero 2
done

# The checkpoint crosses the links: with --save, stage 0 (process 0) sends
# what it stores to the reporting device (process 1) over link 0 -> 1, at
# least its first layer's 64 x 32 weights more than without.
link01() { grep '^0 -> 1 ' "$1" | awk '{ m = $6 == "MiB" ? 1048576 : $6 == "KiB" ? 1024 : 1;
                                       printf "%d\n", $5 * m }'; }
ckpt="$mlp --model 64,32,16,8 --pp 2 --micro-batches 2 --links"
$mpirun -np 2 "$bin" $ckpt >"$tmp/nosave.out" 2>&1
$mpirun -np 2 "$bin" $ckpt --save "$tmp/links.st" >"$tmp/save.out" 2>&1
without=$(link01 "$tmp/nosave.out"); with=$(link01 "$tmp/save.out")
if [ -n "$without" ] && [ -n "$with" ] && [ "$with" -ge $((without + 64 * 32 * 4)) ] &&
    [ -s "$tmp/links.st" ]
then ok; else bad "checkpoint over the links: 0 -> 1 carried ${without:-?} B without --save, ${with:-?} B with"; fi

# The GPT's closing sample, from the weights gathered into the reporting
# process: the same bytes as in one process.
sample="$gpt --pp 2 --tp 2 --micro-batches 2 --sample-tokens 24"
"$bin" $sample >"$tmp/sample1.out" 2>&1
$mpirun -np 2 "$bin" $sample >"$tmp/sample2.out" 2>&1
rc=$?
s1=$(grep -A1 '^sample (24 bytes' "$tmp/sample1.out"); s2=$(grep -A1 '^sample (24 bytes' "$tmp/sample2.out")
if [ "$rc" -eq 0 ] && [ -n "$s1" ] && [ "$s1" = "$s2" ]
then ok; else bad "sample across processes: exit $rc: $(tail -2 "$tmp/sample2.out")"; fi

# A failure in the last process: within 10 s, non-zero, one message.
start=$(date +%s)
$mpirun -np 2 "$bin" $mlp --dp 2 --pp 2 --micro-batches 2 --fail-device 3 --fail-step 2 \
    >"$tmp/fail.out" 2>&1
rc=$?
took=$(( $(date +%s) - start ))
n=$(grep -c "^train: device 3 (process 1): injected failure at step 2" "$tmp/fail.out")
if [ "$rc" -ne 0 ] && [ "$took" -le 10 ] && [ "$n" -eq 1 ]; then ok; else
    bad "failure: exit $rc after ${took}s, $n messages: $(cat "$tmp/fail.out")"; fi

# Runs in the background, for the stops below: each process writes its
# exit status to $tmp/rc.RANK; TM_TEST_JOB marks the job's processes.
start_job() {
    out=$1; shift
    rm -f "$tmp"/rc.* "$out"
    $mpirun -np 2 -x TM_TEST_JOB=$$ sh -c \
        '"$0" "$@"; rc=$?; echo $rc >"$TM_RC.$OMPI_COMM_WORLD_RANK"; exit $rc' \
        "$bin" "$@" >"$out" 2>&1 &
    job=$!
    start=$(date +%s)
}
# The pid of process $1's train.
rank_pid() {
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = train ] || continue
        env=$( { tr '\0' '\n' <"$d/environ"; } 2>/dev/null) || continue
        case "$env" in *"TM_TEST_JOB=$$"*) ;; *) continue ;; esac
        case "$env" in *"OMPI_COMM_WORLD_RANK=$1"*) echo "${d#/proc/}"; return ;; esac
    done
}
# Sends signal $2 to process $1 (or, when it cannot be found, ends the job).
signal_rank() {
    pid=$(rank_pid "$1")
    if [ -n "$pid" ]; then kill -"$2" "$pid"; else kill -TERM "$job"; fi
}
# Waits (up to 60 s) until the job's output shows $1.
wait_for_output() {
    i=0
    while ! grep -q "$1" "$out" 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
}
# Waits for the job; then took (seconds since start or since $1) and the
# processes' exit statuses in rcs ("-" for one that wrote none: once one
# process has exited non-zero, mpirun kills the others, and a process
# still finishing then dies with its shell).
finish_job() {
    wait "$job"
    rc=$?
    took=$(( $(date +%s) - ${1:-$start} ))
    rcs=""; for r in 0 1; do rcs="$rcs $(cat "$tmp/rc.$r" 2>/dev/null || echo -)"; done
}
export TM_RC="$tmp/rc"
long="--dataset synthetic --samples 1024 --model 64,32,16,8 --batch 64 --epochs 100000 --dp 2"

# A signal to one process: both stop after the same step, the checkpoint
# is written, and within 10 s the reporting process (0) ends as that signal
# says, with one message naming where it came, and so does the other; or
# mpirun ends one of them once the other has exited (under load process 1
# can exit first and process 0 be killed after its message and checkpoint,
# before it records its status).
# $1: signal, $2: its name, $3: process, $4: exit status.
signal_stops_both() {
    start_job "$tmp/sig.out" $long --save "$tmp/sig.st"
    wait_for_output "^step 100/"
    t0=$(date +%s)
    signal_rank "$3" "$1"
    finish_job "$t0"
    n=$(grep -c "^interrupted at step [0-9]* ($2 in process $3); checkpoint written to" \
        "$tmp/sig.out")
    if { [ "$rcs" = " $4 $4" ] || [ "$rcs" = " $4 -" ] || [ "$rcs" = " - $4" ]; } &&
        [ "$took" -le 10 ] && [ "$n" -eq 1 ] &&
        [ -s "$tmp/sig.st" ]
    then ok; else bad "$2 to process $3: exit $rc ($rcs) after ${took}s, $n messages: $(tail -5 "$tmp/sig.out")"; fi
    rm -f "$tmp/sig.st"
}
signal_stops_both TERM SIGTERM 1 143
signal_stops_both INT SIGINT 0 130

# A process killed outright: mpirun ends the others at once, non-zero,
# naming it (here its shell's exit status, 128 + 9).
start_job "$tmp/kill.out" $long
wait_for_output "^step 100/"
t0=$(date +%s)
signal_rank 1 KILL
finish_job "$t0"
if [ "$rc" -ne 0 ] && [ "$took" -le 10 ] && grep -q "Process name: \[\[[0-9]*,1\],1\]" "$tmp/kill.out" &&
    grep -q "Exit code: *137" "$tmp/kill.out"
then ok; else bad "SIGKILL to process 1: exit $rc ($rcs) after ${took}s: $(tail -5 "$tmp/kill.out")"; fi

# A divergence (the loss only the last stage, in the second process,
# computes): every process ends non-zero within 10 s, one message.
start_job "$tmp/nan.out" $mlp --model 32,64,64,8 --pp 2 --micro-batches 2 --lr-schedule constant \
    --lr 1e30 --steps 50
finish_job
n=$(grep -c "^train: training diverged at step [0-9]*: " "$tmp/nan.out")
if { [ "$rcs" = " 1 1" ] || [ "$rcs" = " - 1" ]; } && [ "$took" -le 10 ] && [ "$n" -eq 1 ]
then ok; else bad "divergence: exit $rc ($rcs) after ${took}s, $n messages: $(tail -5 "$tmp/nan.out")"; fi

# 3 devices over 2 processes: bad usage, named, exit 2 from every process.
$mpirun -np 2 "$bin" $mlp --dp 3 >"$tmp/usage.out" 2>&1
rc=$?
if [ "$rc" -eq 2 ] && grep -q "3 devices do not split evenly over 2 processes" "$tmp/usage.out"
then ok; else bad "uneven split: exit $rc: $(cat "$tmp/usage.out")"; fi

echo "mpi_train: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
