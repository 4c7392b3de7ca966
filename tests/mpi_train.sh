#!/bin/sh
# Training across processes: every mesh of up to 8 devices that 2 or 4
# processes split evenly, with every pipeline schedule, trains the MLP (and
# the GPT: data parallel, and split over tp and pp with sequence
# parallelism and its tied embedding; and ZeRO's stages) to bitwise the same
# step losses and the same checkpoint bytes under `mpirun -np P` as in one
# process; a device failing in the last process ends the job within 10 s,
# non-zero, with one message naming it; a mesh that P does not divide is bad
# usage (exit 2).
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

# A failure in the last process: within 10 s, non-zero, one message.
start=$(date +%s)
$mpirun -np 2 "$bin" $mlp --dp 2 --pp 2 --micro-batches 2 --fail-device 3 --fail-step 2 \
    >"$tmp/fail.out" 2>&1
rc=$?
took=$(( $(date +%s) - start ))
n=$(grep -c "^train: device 3 (process 1): injected failure at step 2" "$tmp/fail.out")
if [ "$rc" -ne 0 ] && [ "$took" -le 10 ] && [ "$n" -eq 1 ]; then ok; else
    bad "failure: exit $rc after ${took}s, $n messages: $(cat "$tmp/fail.out")"; fi

# 3 devices over 2 processes: bad usage, named, exit 2 from every process.
$mpirun -np 2 "$bin" $mlp --dp 3 >"$tmp/usage.out" 2>&1
rc=$?
if [ "$rc" -eq 2 ] && grep -q "3 devices do not split evenly over 2 processes" "$tmp/usage.out"
then ok; else bad "uneven split: exit $rc: $(cat "$tmp/usage.out")"; fi

echo "mpi_train: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
