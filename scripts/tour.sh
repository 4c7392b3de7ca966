#!/bin/bash
# Checks docs/tour.md against the programs: builds (make -s), then runs every
# command of the tour from the repository root and compares what it prints
# with the output the tour shows.
#
# What counts as a command: inside a fenced block (a line opening with ```),
# a line starting with "$ " is a command; the lines after it, up to the next
# "$ " line or the closing fence, are its output (stdout and stderr together,
# as a terminal shows them; the programs flush stdout before they report an
# error on stderr, so the order is fixed). A command whose exit status is
# not 0 shows it as the last line of its output: "[exit status N]". Fenced
# blocks without "$ " lines are prose and are left alone. Each command runs
# alone under `bash -c`, stdin from /dev/null, LC_ALL=C; stdout is not a
# terminal, so build/train prints plain log lines, never its progress bar.
#
# Masking: training prints wall-clock throughput, which changes from run to
# run; everything else (losses, accuracies, modeled times, memory and
# traffic tables, timelines) is deterministic on one machine and must match
# exactly. Before comparing, both sides get these rewrites and no others:
#   1. a number directly before " samples/s" becomes "#", except the one
#      after "modeled time: " (the modeled figure);
#   2. a number directly before " GFLOP/s" becomes "#" (achieved rate);
#   3. in "wall # samples/s (step N ms)" the N becomes "#" (wall step time);
#   4. a number directly before " tokens/s" becomes "#" (the GPT's wall
#      throughput; its modeled figures are printed as samples/s).
# (The modeled figure of an epoch line, "(modeled N", has no "samples/s"
# after it and is compared as is.)
#
#   scripts/tour.sh            check: one line per command, "ok" or "DIFFERS"
#                              followed by a unified diff of the masked
#                              outputs (and the exit statuses when they
#                              differ); exit 1 if any command differs
#   scripts/tour.sh --update   run every command and write its output (and
#                              "[exit status N]" when N != 0) into the tour,
#                              replacing the old output; the file is written
#                              to a temporary file and renamed over the tour.
#                              Prints "same" or "changed" (masked, as above)
#                              per command. The prose quotes figures from the
#                              outputs: reread it where an output changed.
# Exit status: 0 all commands match (or the tour was updated), 1 some
# command differs (or --update could not write the tour), 2 bad usage, no
# tour, or the build failed.
set -u

usage="usage: scripts/tour.sh [--update]"
update=0
case $# in
0) ;;
1) case $1 in
   --update) update=1 ;;
   -h|--help) echo "$usage"; exit 0 ;;
   *) echo "tour: unknown argument $1 ($usage)" >&2; exit 2 ;;
   esac ;;
*) echo "tour: too many arguments ($usage)" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd) || exit 2
cd "$root" || exit 2
doc=docs/tour.md
[ -f "$doc" ] || { echo "tour: $doc not found" >&2; exit 2; }
export LC_ALL=C

work=$(mktemp -d /tmp/tm_tour.XXXXXX) || exit 2
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
if ! make -s >"$work/make.log" 2>&1; then
    echo "tour: make -s failed:" >&2
    cat "$work/make.log" >&2
    exit 2
fi

# The masking rules above, as sed expressions; "samples/@" marks the modeled
# figure while the wall-clock ones are masked.
mask() {
    sed -E -e 's|(modeled time: [0-9.]+) samples/s|\1 samples/@|g' \
           -e 's/(^|[^0-9.])[0-9]+(\.[0-9]+)? samples\/s/\1# samples\/s/g' \
           -e 's|samples/@|samples/s|g' \
           -e 's/(^|[^0-9.])[0-9]+(\.[0-9]+)? GFLOP\/s/\1# GFLOP\/s/g' \
           -e 's/wall # samples\/s \(step [0-9]+(\.[0-9]+)? ms\)/wall # samples\/s (step # ms)/g' \
           -e 's/(^|[^0-9.])[0-9]+(\.[0-9]+)? tokens\/s/\1# tokens\/s/g' \
           "$1"
}

status_re='^\[exit status ([0-9]+)\]$'
n=0 n_ok=0 n_bad=0
new="$work/tour.md"
: >"$new"

# Runs the pending command (cmd, its expected output in $work/expect), checks
# it or records its new output, and clears it.
cmd=""
finish() {
    [ -n "$cmd" ] || return 0
    n=$((n + 1))
    local want_status=0 got_status
    # The expected output's last line may carry the exit status.
    if [ -s "$work/expect" ]; then
        local last
        last=$(tail -n 1 "$work/expect")
        if [[ $last =~ $status_re ]]; then
            want_status=${BASH_REMATCH[1]}
            sed -i '$d' "$work/expect"
        fi
    fi
    bash -c "$cmd" </dev/null >"$work/raw" 2>&1
    got_status=$?
    # awk 1 ends the last line with a newline, as the tour's lines are.
    awk 1 "$work/raw" >"$work/got"
    mask "$work/expect" >"$work/expect.m"
    mask "$work/got" >"$work/got.m"
    local same=0
    cmp -s "$work/expect.m" "$work/got.m" && [ "$got_status" = "$want_status" ] && same=1
    if [ "$update" = 1 ]; then
        if grep -q -e '^\$ ' -e '^```' "$work/got"; then
            echo "tour: the output of \"$cmd\" has a line starting with \"\$ \" or \"\`\`\`\"," \
                 "which the tour cannot hold" >&2
            exit 1
        fi
        cat "$work/got" >>"$new"
        [ "$got_status" = 0 ] || echo "[exit status $got_status]" >>"$new"
        if [ "$same" = 1 ]; then
            echo "same     $cmd"
        else
            echo "changed  $cmd"
            [ "$got_status" = 0 ] || echo "         exit status $got_status"
        fi
    elif [ "$same" = 1 ]; then
        n_ok=$((n_ok + 1))
        echo "ok       $cmd"
    else
        n_bad=$((n_bad + 1))
        echo "DIFFERS  $cmd"
        [ "$got_status" = "$want_status" ] ||
            echo "         exit status $got_status, the tour shows $want_status"
        diff -u --label "tour (masked)" --label "this run (masked)" \
            "$work/expect.m" "$work/got.m" | sed 's/^/    /'
    fi
    cmd=""
}

in_fence=0
while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line == '```'* ]]; then
        [ "$in_fence" = 1 ] && finish
        in_fence=$((1 - in_fence))
        printf '%s\n' "$line" >>"$new"
    elif [ "$in_fence" = 1 ] && [[ $line == '$ '* ]]; then
        finish
        cmd=${line#'$ '}
        : >"$work/expect"
        printf '%s\n' "$line" >>"$new"
    elif [ -n "$cmd" ]; then
        printf '%s\n' "$line" >>"$work/expect"
    else
        printf '%s\n' "$line" >>"$new"
    fi
done <"$doc"
if [ "$in_fence" = 1 ]; then
    echo "tour: $doc ends inside a fenced block" >&2
    exit 2
fi

elapsed=$(($(date +%s) - start))
if [ "$update" = 1 ]; then
    tmp="$doc.tmp.$$"
    if ! cp "$new" "$tmp" || ! mv "$tmp" "$doc"; then
        rm -f "$tmp"
        echo "tour: cannot write $doc" >&2
        exit 1
    fi
    echo "tour: $n commands run, $doc updated in ${elapsed} s"
    exit 0
fi
echo "tour: $n commands, $n_ok ok, $n_bad differ, ${elapsed} s"
[ "$n_bad" = 0 ]
