#!/bin/sh
# compare_dp.sh: data-parallel training throughput on two devices. Three runs
# per round, in alternation: tinymesh with dp=2 (build/train --dp 2, global
# batch 256, 128 per device), tinymesh on one device (batch 128), and PyTorch
# DistributedDataParallel with gloo, 2 processes x 1 thread, 128 per process
# (bench/peers/torch_ddp.py). Same MLP, same data, ReLU, plain SGD lr 0.05
# (no momentum, no weight decay, constant rate), unnormalised pixels in
# [0,1]. This machine has slow phases in which every side slows down, hence
# the rounds; each row gives the median samples/s of each side, the speed-up
# of dp=2 over one device (median of the per-round ratios) and dp=2 over DDP
# (ratio of the medians, and median of the per-round ratios). Loss (mean of
# the last 20 steps, median over rounds) and test accuracy show that dp=2 and
# DDP did the same work.
#
# usage: bench/peers/compare_dp.sh [--rounds R] [--model M]... [--steps N]
#   --rounds R   rounds of (ours dp=2, ours one device, DDP) per model (5)
#   --model M    layer widths, e.g. 784,256,128,10; repeatable
#                (784,256,128,10 and 784,1024,1024,1024,10)
#   --steps N    timed steps per run (default per model: about 135 GFLOP of
#                one-device training, between 20 and 400: 400 and 60 for
#                the defaults); dp=2 and DDP do twice the samples per step
# Runs from the repository root whatever the current directory; brings
# build/train up to date with make first. When /usr/bin/python3 (or
# $TORCH_PYTHON) cannot import torch (Debian package python3-torch), says so
# and compares ours with itself only.
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
        sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
        exit 0 ;;
    *) echo "compare_dp.sh: bad option '$1' (try --help)" >&2; exit 2 ;;
    esac
done
bad() { echo "compare_dp.sh: $1" >&2; exit 2; }
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
torch=1
if ! "$PY" -c 'import torch, torch.distributed as d; assert d.is_gloo_available()' \
    >/dev/null 2>&1; then
    echo "compare_dp.sh: PyTorch DDP skipped: $PY cannot import torch with gloo" \
         "(apt-get install python3-torch); comparing ours with itself only" >&2
    torch=0
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
        echo "compare_dp.sh: cannot build $ours_bin" >&2
        exit 1
    fi
    echo "compare_dp.sh: warning: make $ours_bin failed; measuring the existing binary" >&2
fi
# One thread per device or process. torch_ddp.py sets these itself too, and
# ours keeps OpenBLAS (a backend of tm_sgemm) to one thread per device in
# tm_gemm_thread_init.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

rows="$tmp/rows"
: >"$rows"

# Timed steps for a model: --steps, or about 135 GFLOP of training at batch
# 128 (6 FLOP per weight per sample) clamped to [20, 400], as compare_train.sh.
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

# run_ours MODEL STEPS ROUND DP: build/train with DP replicas of 128 samples
# each; appends "model,impl,round,samples_s,acc,loss" (impl dp2 or 1dev) to
# $rows and prints it to stderr; fails if the run failed.
run_ours() {
    batch=$((128 * $4))
    per_epoch=$((60000 / batch))
    epochs=$((($2 + per_epoch - 1) / per_epoch))
    impl=dp$4
    if [ "$4" -eq 1 ]; then impl=1dev; fi
    "$ours_bin" --dp "$4" --batch "$batch" --micro-batches 1 --model "$1" --activation relu \
        --optimizer sgd --momentum 0 --weight-decay 0 --lr 0.05 --lr-schedule constant \
        --normalize none --epochs "$epochs" --steps "$2" --metrics "$tmp/metrics" \
        >"$tmp/out" 2>&1 || {
        echo "compare_dp.sh: build/train --dp $4 failed:" >&2; cat "$tmp/out" >&2; return 1; }
    res=$(parse_result "$tmp/out")
    loss=$(awk -F'"loss":' 'NF > 1 { split($2, v, ","); l[++n] = v[1] }
        END { k = n < 20 ? n : 20; for (i = n - k + 1; i <= n; i++) s += l[i]
              if (k) printf "%.4f", s / k }' "$tmp/metrics")
    if [ -z "$res" ] || [ -z "$loss" ]; then
        echo "compare_dp.sh: no result in build/train's output:" >&2
        cat "$tmp/out" >&2
        return 1
    fi
    echo "$1,$impl,$3,$res,$loss" | tee -a "$rows" >&2
}
# A time limit, because a distributed run that goes wrong can hang rather
# than fail; timeout signals the whole process group, the ranks included.
run_ddp() {
    timeout 600 "$PY" bench/peers/torch_ddp.py --procs 2 --batch 128 --model "$1" --steps "$2" \
        >"$tmp/out" 2>&1 || {
        echo "compare_dp.sh: torch_ddp.py failed:" >&2; cat "$tmp/out" >&2; return 1; }
    res=$(parse_result "$tmp/out")
    loss=$(sed -n 's/^loss \([0-9.naif]*\) .*/\1/p' "$tmp/out")
    if [ -z "$res" ] || [ -z "$loss" ]; then
        echo "compare_dp.sh: no result in torch_ddp.py's output:" >&2
        cat "$tmp/out" >&2
        return 1
    fi
    echo "$1,ddp,$3,$res,$loss" | tee -a "$rows" >&2
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "# model,impl,round,samples_s,test_acc_pct,loss (live; table at the end)" >&2
r=1
while [ "$r" -le "$rounds" ]; do
    for m in $models; do
        n=$(steps_for "$m")
        run_ours "$m" "$n" "$r" 2
        run_ours "$m" "$n" "$r" 1
        if [ "$torch" -eq 1 ]; then run_ddp "$m" "$n" "$r"; fi
    done
    r=$((r + 1))
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "data-parallel training on 2 devices: ReLU MLP, SGD lr 0.05 (no momentum, no weight decay),"
echo "128 samples per device or process per step; medians over $rounds alternating rounds"
echo "(ours dp=2, ours one device, torch DDP gloo 2 procs x 1 thread, ...)."
echo "load average (1, 5, 15 min): $load_before before, $load_after after"
for m in $models; do echo "$m $(steps_for "$m")"; done | awk -v rows="$rows" -v torch="$torch" '
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
# Median over rounds of impl a / impl b in the same round.
function pair(m, a, b,    r, k, pr) {
    k = 0
    for (r = 1; r <= maxr; r++)
        if ((m, a, r) in sps && (m, b, r) in sps) pr[++k] = sps[m, a, r] / sps[m, b, r]
    return median(pr, k)
}
function verdict(x, t) { return x >= t ? "met" : "NOT met" }
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
    # The targets of the issue: dp=2 over one device, dp=2 over DDP.
    own["784,256,128,10"] = 1.7
    ddp["784,256,128,10"] = 1.6
    ddp["784,1024,1024,1024,10"] = 1.3
}
{ steps[$1] = $2; order[++nm] = $1 }
END {
    printf "%-22s %5s %9s %9s %8s | %9s %8s %8s | %14s %14s\n", "model", "steps", "dp2/s",
           "1dev/s", "speed-up", "DDP/s", "dp2/DDP", "pair", "dp2 loss/acc", "DDP loss/acc"
    for (i = 1; i <= nm; i++) {
        m = order[i]
        d2 = med(m ",dp2,sps"); d1 = med(m ",1dev,sps")
        up[m] = pair(m, "dp2", "1dev")
        printf "%-22s %5d %9.0f %9.0f %7.3fx | ", m, steps[m], d2, d1, up[m]
        if (torch) {
            t = med(m ",ddp,sps"); vs[m] = d2 / t
            printf "%9.0f %7.3fx %7.3fx | %6.4f %5.2f%% %6.4f %5.2f%%\n", t, vs[m],
                   pair(m, "dp2", "ddp"), med(m ",dp2,loss"), med(m ",dp2,acc"),
                   med(m ",ddp,loss"), med(m ",ddp,acc")
        } else {
            printf "%9s %8s %8s | %6.4f %5.2f%% %14s\n", "skipped", "-", "-",
                   med(m ",dp2,loss"), med(m ",dp2,acc"), "-"
        }
    }
    printf "speed-up: median over rounds of dp2 / 1dev of the same round; dp2/DDP: median\n"
    printf "dp2 / median DDP; pair: median over rounds of dp2 / DDP of the same round;\n"
    printf "loss: mean of the last 20 steps; acc: test accuracy after training\n"
    printf "targets: speed-up >= 1.7x (784,256,128,10); dp2/DDP >= 1.6x (784,256,128,10),\n"
    printf "         >= 1.3x (784,1024,1024,1024,10)\n"
    for (i = 1; i <= nm; i++) {
        m = order[i]
        if (m in own)
            printf "  %-22s speed-up %.3fx >= %.1fx: %s\n", m, up[m], own[m],
                   verdict(up[m], own[m])
        if (m in ddp && torch)
            printf "  %-22s dp2/DDP  %.3fx >= %.1fx: %s\n", m, vs[m], ddp[m],
                   verdict(vs[m], ddp[m])
        if (m in ddp && !torch)
            printf "  %-22s dp2/DDP  not measured (no torch)\n", m
    }
}'
exit 0
