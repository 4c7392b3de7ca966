#!/bin/sh
# compare_gpt.sh: single-device GPT training throughput, tinymesh
# (build/train --model gpt) against PyTorch on one thread
# (bench/peers/torch_gpt.py: nanoGPT's model, eager), the same model, batch,
# recipe (AdamW, clipping, warm-up and cosine) and windows of the fortunes
# corpus. The two run in alternation, ours then torch, for R rounds; each
# row gives the median training tokens/s of each side, the ratio of the
# medians and the median of the per-round ratios (above 1: tinymesh is
# faster), with the achieved GFLOP/s (6N + 12 L T C per token, nanoGPT's
# MFU count) and the last step's loss on both sides to show they did the
# same work. tokens/s is over the training steps only (no start-up, no
# evaluation) on both sides.
#
# usage: bench/peers/compare_gpt.sh [--rounds R] [--size default|shakespeare]...
#                                   [--steps N] [--torch-avx512]
#   --rounds R      rounds of (ours, torch) per size (3)
#   --size S        default: L=4 H=4 C=128 T=128 batch 32;
#                   shakespeare: nanoGPT's shakespeare-char size, L=6 H=6
#                   C=384 T=256, batch 8; repeatable (both)
#   --steps N       timed steps per run (default per size: 60 and 20)
#   --torch-avx512  run PyTorch with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
#                   unset, so that OpenBLAS picks its AVX-512 kernels where the
#                   CPU has them (the environment pins Haswell's)
# Runs from the repository root; brings build/train up to date with make
# first. Prints "skipped" and exits 0 when /usr/bin/python3 (or
# $TORCH_PYTHON) cannot import torch (Debian package python3-torch).
set -eu

rounds=3
sizes=
steps=
avx512=0
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds=${2:?--rounds wants a number}; shift 2 ;;
    --size) sizes="$sizes ${2:?--size wants default or shakespeare}"; shift 2 ;;
    --steps) steps=${2:?--steps wants a number}; shift 2 ;;
    --torch-avx512) avx512=1; shift ;;
    --help | -h)
        sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'
        exit 0 ;;
    *) echo "compare_gpt.sh: bad option '$1' (try --help)" >&2; exit 2 ;;
    esac
done
bad() { echo "compare_gpt.sh: $1" >&2; exit 2; }
case "$rounds" in '' | *[!0-9]* | 0) bad "--rounds wants a positive integer" ;; esac
case "$steps" in *[!0-9]* | 0) bad "--steps wants a positive integer" ;; esac
for s in $sizes; do
    case "$s" in default | shakespeare) ;; *) bad "--size is default or shakespeare, not '$s'" ;; esac
done
sizes=${sizes:-default shakespeare}

cd "$(dirname "$0")/../.."
PY=${TORCH_PYTHON:-/usr/bin/python3}
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
    echo "compare_gpt.sh: skipped: $PY cannot import torch (apt-get install python3-torch)"
    exit 0
fi
BUILD=${BUILD:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
ours_bin="$BUILD/train"
if ! make -s "$ours_bin" >"$tmp/make" 2>&1; then
    cat "$tmp/make" >&2
    echo "compare_gpt.sh: cannot build $ours_bin" >&2
    exit 1
fi
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# The flags of a size, shared by both sides.
flags_of() {
    case "$1" in
    default) echo "--layers 4 --heads 4 --d-model 128 --context 128 --batch 32" ;;
    shakespeare) echo "--layers 6 --heads 6 --d-model 384 --context 256 --batch 8" ;;
    esac
}
# Ours only: the device's memory (the larger size keeps about 600 MiB of
# activations; PyTorch has no cap).
cap_of() {
    case "$1" in default) echo 512M ;; shakespeare) echo 1G ;; esac
}
steps_of() {
    if [ -n "$steps" ]; then echo "$steps"; return; fi
    case "$1" in default) echo 60 ;; shakespeare) echo 20 ;; esac
}

# "val loss L ... after N steps; S tokens/s; G GFLOP/s" as "S,G".
parse_result() {
    sed -n 's/^val loss .* after [0-9]* steps; \([0-9.]*\) tokens\/s; \([0-9.]*\) GFLOP\/s$/\1,\2/p' "$1"
}

rows="$tmp/rows"
: >"$rows"

run_ours() {
    # shellcheck disable=SC2046
    "$ours_bin" --model gpt $(flags_of "$1") --steps "$2" --eval-sequences 8 \
        --sample-tokens 0 --mem-cap "$(cap_of "$1")" --metrics "$tmp/metrics" >"$tmp/out" 2>&1 || {
        echo "compare_gpt.sh: build/train failed:" >&2; cat "$tmp/out" >&2; return 1; }
    res=$(parse_result "$tmp/out")
    loss=$(sed -n 's/.*"type":"step".*"loss":\([0-9.e+-]*\).*/\1/p' "$tmp/metrics" | tail -1)
    # Our GFLOP/s counts the kernels' FLOPs (the masked half of attention
    # skipped); report nanoGPT's model FLOPs for both sides instead.
    [ -n "$res" ] && [ -n "$loss" ] || {
        echo "compare_gpt.sh: no result in build/train's output:" >&2; cat "$tmp/out" >&2; return 1; }
    echo "$1,ours,$3,${res%,*},$loss" | tee -a "$rows" >&2
}
run_torch() {
    # shellcheck disable=SC2046
    if [ "$avx512" = 1 ]; then
        env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PY" bench/peers/torch_gpt.py train \
            $(flags_of "$1") --steps "$2" --eval-sequences 8 --log-every 1 >"$tmp/out" 2>&1
    else
        "$PY" bench/peers/torch_gpt.py train $(flags_of "$1") --steps "$2" --eval-sequences 8 \
            --log-every 1 >"$tmp/out" 2>&1
    fi || { echo "compare_gpt.sh: torch_gpt.py failed:" >&2; cat "$tmp/out" >&2; return 1; }
    res=$(parse_result "$tmp/out")
    loss=$(sed -n 's/^step [0-9]* loss \([0-9.]*\) .*/\1/p' "$tmp/out" | tail -1)
    [ -n "$res" ] && [ -n "$loss" ] || {
        echo "compare_gpt.sh: no result in torch_gpt.py's output:" >&2; cat "$tmp/out" >&2; return 1; }
    echo "$1,torch,$3,${res%,*},$loss" | tee -a "$rows" >&2
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "# size,impl,round,tokens_s,last_loss (live; table at the end)" >&2
r=1
while [ "$r" -le "$rounds" ]; do
    for s in $sizes; do
        run_ours "$s" "$(steps_of "$s")" "$r"
        run_torch "$s" "$(steps_of "$s")" "$r"
    done
    r=$((r + 1))
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "single-device GPT training, one thread each, same model, batch, recipe and windows;"
echo "medians over $rounds alternating rounds (ours, torch, ...); PyTorch's OpenBLAS:" \
     "$([ "$avx512" = 1 ] && echo "its own choice of kernels (CORETYPE unset)" ||
        echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset, its own pick}")"
echo "load average (1, 5, 15 min): $load_before before, $load_after after"
for s in $sizes; do echo "$s $(steps_of "$s")"; done | awk -v rows="$rows" '
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
        split(line, f, ",")
        add(f[1] "," f[2] ",tps", f[4])
        add(f[1] "," f[2] ",loss", f[5])
        tps[f[1], f[2], f[3]] = f[4]
        if (f[3] > maxr) maxr = f[3]
    }
    # nanoGPT: 6 N + 12 L T C FLOPs per token, N the non-embedding
    # parameters plus the head (12 L C^2 + 256 C).
    fl["default"] = 6 * (12 * 4 * 128 * 128 + 256 * 128) + 12 * 4 * 128 * 128
    fl["shakespeare"] = 6 * (12 * 6 * 384 * 384 + 256 * 384) + 12 * 6 * 256 * 384
}
{ steps[$1] = $2; order[++ns] = $1 }
END {
    printf "%-12s %5s %10s %10s %8s %10s %9s %9s | %9s %9s\n", "size", "steps", "ours/s",
           "torch/s", "ratio", "pair-ratio", "ours GF/s", "torch GF/s", "ours loss",
           "torch loss"
    for (i = 1; i <= ns; i++) {
        s = order[i]; k = 0
        delete pr
        for (r = 1; r <= maxr; r++)
            if ((s, "torch", r) in tps && (s, "ours", r) in tps)
                pr[++k] = tps[s, "ours", r] / tps[s, "torch", r]
        o = med(s ",ours,tps"); t = med(s ",torch,tps")
        printf "%-12s %5d %10.0f %10.0f %7.3fx %9.3fx %9.1f %9.1f | %9.4f %9.4f\n",
               s, steps[s], o, t, o / t, median(pr, k), o * fl[s] * 1e-9, t * fl[s] * 1e-9,
               med(s ",ours,loss"), med(s ",torch,loss")
    }
    printf "tokens/s: training tokens over the training steps wall time; ratio: median ours /\n"
    printf "median torch; pair-ratio: median over rounds of ours / torch of the same round;\n"
    printf "GF/s: nanoGPT model FLOPs (6N + 12 L T C per token) at the median rate\n"
}'
exit 0
