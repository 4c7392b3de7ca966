#!/bin/sh
# compare_train.sh: single-device training throughput, tinymesh (build/train)
# against PyTorch on one thread (bench/peers/torch_mlp.py), same MLP, same
# data, ReLU, plain SGD lr 0.05 (no momentum, no weight decay, constant
# rate), batch 128, unnormalised pixels in [0,1]. The two run in alternation,
# ours then torch, for R rounds, because this machine has slow phases in which
# both sides slow down; each row gives the median samples/s of each side, the
# ratio of the medians, and the median of the per-round ratios (ours/torch,
# above 1: tinymesh is faster). Loss (mean of the last 20 steps, median over
# rounds) and test accuracy show that both sides did the same work.
#
# usage: bench/peers/compare_train.sh [--rounds R] [--model M]... [--steps N]
#   --rounds R   rounds of (ours, torch) per model (5)
#   --model M    layer widths, e.g. 784,256,128,10; repeatable
#                (784,256,128,10 and 784,1024,1024,1024,10)
#   --steps N    timed steps per run (default per model: about 135 GFLOP of
#                training, between 20 and 400: 400 and 60 for the defaults)
# Runs from the repository root whatever the current directory; brings
# build/train up to date with make first. Prints "skipped" and exits 0 when
# /usr/bin/python3 (or $TORCH_PYTHON) cannot import torch (Debian package
# python3-torch).
# TM_GEMM=openblas in the environment runs ours on OpenBLAS instead of its
# own GEMM: the gap that remains is then ours' overhead outside the GEMM.
set -eu

rounds=5
models=
steps=
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds=${2:?--rounds wants a number}; shift 2 ;;
    --model) models="$models ${2:?--model wants widths like 784,256,128,10}"; shift 2 ;;
    --steps) steps=${2:?--steps wants a number}; shift 2 ;;
    --help | -h)
        sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
        exit 0 ;;
    *) echo "compare_train.sh: bad option '$1' (try --help)" >&2; exit 2 ;;
    esac
done
bad() { echo "compare_train.sh: $1" >&2; exit 2; }
case "$rounds" in '' | *[!0-9]* | 0) bad "--rounds wants a positive integer" ;; esac
case "$steps" in *[!0-9]* | 0) bad "--steps wants a positive integer" ;; esac
for m in $models; do
    case "$m" in
    *[!0-9,]* | ,* | *, | *,,*) bad "--model wants comma-separated widths, not '$m'" ;;
    esac
done
models=${models:-784,256,128,10 784,1024,1024,1024,10}

cd "$(dirname "$0")/../.."
PY=${TORCH_PYTHON:-/usr/bin/python3}
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
    echo "compare_train.sh: skipped: $PY cannot import torch (apt-get install python3-torch)"
    exit 0
fi
BUILD=${BUILD:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
ours_bin="$BUILD/train"
# Always through make, so that a binary older than the library is relinked
# (a stale build/train would measure older kernels). If the tree does
# not build right now, an existing binary is still worth measuring.
if ! make -s "$ours_bin" >"$tmp/make" 2>&1; then
    if [ ! -x "$ours_bin" ]; then
        cat "$tmp/make" >&2
        echo "compare_train.sh: cannot build $ours_bin" >&2
        exit 1
    fi
    echo "compare_train.sh: warning: make $ours_bin failed; measuring the existing binary" >&2
fi
# One thread for both. torch_mlp.py sets these itself too, and ours keeps
# OpenBLAS (a backend of tm_sgemm) to one thread in tm_gemm_thread_init.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

rows="$tmp/rows"
: >"$rows"

# Timed steps for a model: --steps, or about 135 GFLOP of training
# (6 FLOP per weight per sample, batch 128) clamped to [20, 400].
steps_for() {
    if [ -n "$steps" ]; then echo "$steps"; return; fi
    echo "$1" | awk -F, '{ f = 0; for (i = 1; i < NF; i++) f += 6 * $i * $(i + 1)
        s = int(1.35e11 / (f * 128)); if (s < 20) s = 20; if (s > 400) s = 400; print s }'
}

# The samples/s and accuracy of a "test accuracy X% after N steps; S
# samples/s; ..." line, as "S,X", or nothing.
parse_result() {
    sed -n 's/^test accuracy \([0-9.]*\)% after [0-9]* steps; \([0-9.]*\) samples\/s;.*/\2,\1/p' \
        "$1"
}

# run_ours|run_torch MODEL STEPS ROUND: appends "model,impl,round,samples_s,
# acc,loss" to $rows and prints it to stderr; fails if the run failed.
run_ours() {
    per_epoch=$((60000 / 128))
    epochs=$((($2 + per_epoch - 1) / per_epoch))
    "$ours_bin" --model "$1" --activation relu --optimizer sgd --momentum 0 --weight-decay 0 \
        --lr 0.05 --lr-schedule constant --normalize none --batch 128 --epochs "$epochs" \
        --steps "$2" --metrics "$tmp/metrics" >"$tmp/out" 2>&1 || {
        echo "compare_train.sh: build/train failed:" >&2; cat "$tmp/out" >&2; return 1; }
    res=$(parse_result "$tmp/out")
    loss=$(awk -F'"loss":' 'NF > 1 { split($2, v, ","); l[++n] = v[1] }
        END { k = n < 20 ? n : 20; for (i = n - k + 1; i <= n; i++) s += l[i]
              if (k) printf "%.4f", s / k }' "$tmp/metrics")
    if [ -z "$res" ] || [ -z "$loss" ]; then
        echo "compare_train.sh: no result in build/train's output:" >&2
        cat "$tmp/out" >&2
        return 1
    fi
    echo "$1,ours,$3,$res,$loss" | tee -a "$rows" >&2
}
run_torch() {
    "$PY" bench/peers/torch_mlp.py --model "$1" --steps "$2" >"$tmp/out" 2>&1 || {
        echo "compare_train.sh: torch_mlp.py failed:" >&2; cat "$tmp/out" >&2; return 1; }
    res=$(parse_result "$tmp/out")
    loss=$(sed -n 's/^loss \([0-9.naif]*\) .*/\1/p' "$tmp/out")
    if [ -z "$res" ] || [ -z "$loss" ]; then
        echo "compare_train.sh: no result in torch_mlp.py's output:" >&2
        cat "$tmp/out" >&2
        return 1
    fi
    echo "$1,torch,$3,$res,$loss" | tee -a "$rows" >&2
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "# model,impl,round,samples_s,test_acc_pct,loss (live; table at the end)" >&2
r=1
while [ "$r" -le "$rounds" ]; do
    for m in $models; do
        n=$(steps_for "$m")
        run_ours "$m" "$n" "$r"
        run_torch "$m" "$n" "$r"
    done
    r=$((r + 1))
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "single-device training, one thread each: ReLU MLP, SGD lr 0.05 (no momentum, no weight"
echo "decay), batch 128; medians over $rounds alternating rounds (ours, torch, ours, torch, ...)."
echo "load average (1, 5, 15 min): $load_before before, $load_after after"
for m in $models; do echo "$m $(steps_for "$m")"; done | awk -v rows="$rows" '
function median(a, n,    i, j, t) {
    for (i = 2; i <= n; i++) {
        t = a[i]
        for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
        a[j + 1] = t
    }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function med(key,    i, a) {
    for (i = 1; i <= cnt[key]; i++) a[i] = val[key, i]
    return median(a, cnt[key])
}
function add(key, x) { val[key, ++cnt[key]] = x }
BEGIN {
    while ((getline line < rows) > 0) {
        # model widths, impl, round, samples/s, accuracy, loss: the model has
        # commas of its own, so count fields from the end.
        n = split(line, f, ",")
        model = f[1]; for (i = 2; i <= n - 5; i++) model = model "," f[i]
        impl = f[n - 4]; rnd = f[n - 3]
        add(model "," impl ",sps", f[n - 2])
        add(model "," impl ",acc", f[n - 1])
        add(model "," impl ",loss", f[n])
        sps[model, impl, rnd] = f[n - 2]
        if (rnd > maxr) maxr = rnd
    }
}
{ steps[$1] = $2; order[++nm] = $1 }
END {
    printf "%-22s %5s %10s %10s %8s %10s | %14s %14s\n", "model", "steps", "ours/s",
           "torch/s", "ratio", "pair-ratio", "ours loss/acc", "torch loss/acc"
    for (i = 1; i <= nm; i++) {
        m = order[i]; k = 0
        delete pr
        for (r = 1; r <= maxr; r++)
            if ((m, "torch", r) in sps && (m, "ours", r) in sps)
                pr[++k] = sps[m, "ours", r] / sps[m, "torch", r]
        o = med(m ",ours,sps"); t = med(m ",torch,sps")
        ratio[m] = o / t
        printf "%-22s %5d %10.0f %10.0f %7.3fx %9.3fx | %6.4f %5.2f%% %6.4f %5.2f%%\n",
               m, steps[m], o, t, o / t, median(pr, k),
               med(m ",ours,loss"), med(m ",ours,acc"), med(m ",torch,loss"), med(m ",torch,acc")
    }
    printf "ratio: median ours / median torch; pair-ratio: median over rounds of ours / torch\n"
    printf "of the same round; loss: mean of the last 20 steps; acc: test accuracy after training\n"
    printf "target: ours >= 1.05x PyTorch (ratio of medians) on each model\n"
    for (i = 1; i <= nm; i++)
        printf "  %-22s %.3fx: %s\n", order[i], ratio[order[i]],
               (ratio[order[i]] >= 1.05 ? "met" : "NOT met")
}'
exit 0
