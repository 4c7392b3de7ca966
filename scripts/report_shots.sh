#!/bin/sh
# Regenerates the README's pictures of the reports, in docs/: runs the
# commands below, checks every page in headless Chromium
# (scripts/report_check.py) and takes its screenshot there.
#   docs/report-train.png     build/train --report: the MLP showcase's 8 devices (make demo-mnist's mesh), 2 epochs
#   docs/report-64.png        build/train --report: 64 devices (dp 4 x pp 4 x tp 4)
#   docs/report-gpt.png       build/train --report: a small GPT on 2 replicas
#   docs/report-sweep.png     bench_strategies --report: the default sweep
#   docs/schedule-1f1b.svg    build/schedule --svg, and its .png
# Needs scripts/deps.sh browser (Chromium, its driver, Selenium).
# Prints the pages' sizes. Exit status: 0 written and checked, 1 a run or
# a check failed.
set -eu
cd "$(dirname "$0")/.."
make -s
tmp=$(mktemp -d /tmp/tm_shots.XXXXXX)
trap 'rm -rf "$tmp"' EXIT INT TERM
run() { echo "+ $*"; "$@" >"$tmp/out.log" 2>&1 || { cat "$tmp/out.log"; exit 1; }; }

run build/train --dp 2 --pp 2 --tp 2 --micro-batches 4 --epochs 2 \
    --report "$tmp/report-train.html" --metrics "$tmp/report-train.jsonl"
run build/train --dataset synthetic --samples 4096 --model 256,256,256,256,256 --batch 256 \
    --dp 4 --pp 4 --tp 4 --micro-batches 8 --steps 20 --mem-cap 8M \
    --report "$tmp/report-64.html" --metrics "$tmp/report-64.jsonl"
run build/train --model gpt --layers 2 --d-model 64 --context 64 --batch 16 --dp 2 \
    --steps 300 --eval-every 50 --eval-sequences 256 --sample-tokens 0 \
    --report "$tmp/report-gpt.html" --metrics "$tmp/report-gpt.jsonl"
echo "+ build/bench_strategies --csv --report ..."
build/bench_strategies --csv --report "$tmp/report-sweep.html" >"$tmp/report-sweep.csv"
run build/schedule --pp 4 --micro-batches 8 --svg docs/schedule-1f1b.svg
/usr/bin/python3 scripts/report_check.py --shots docs \
    "run:$tmp/report-train.html:$tmp/report-train.jsonl" \
    "run:$tmp/report-64.html:$tmp/report-64.jsonl" \
    "run:$tmp/report-gpt.html:$tmp/report-gpt.jsonl" \
    "sweep:$tmp/report-sweep.html:$tmp/report-sweep.csv" \
    "svg:docs/schedule-1f1b.svg:4"
echo "page sizes (bytes):"
wc -c "$tmp"/*.html | sed "s|$tmp/||"
