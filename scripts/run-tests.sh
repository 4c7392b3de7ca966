#!/bin/sh
# Runs the Criterion suites in BUILD (all, or the named ones), one test at a
# time (many tests wait on other threads), and ends with one summary line.
# Exits non-zero if any suite failed.
set -u
build=$1; shift
if [ $# -gt 0 ]; then
    bins=""; for s in "$@"; do bins="$bins $build/test_$s"; done
else
    bins=$(ls "$build"/test_* 2>/dev/null | grep -v '\.d$')
fi
# Suites that run the programs find them here.
export TM_BIN_DIR="$build"
passed=0; failed=0; bad=""
for b in $bins; do
    [ -x "$b" ] || { echo "missing test binary $b" >&2; failed=$((failed+1)); bad="$bad $b"; continue; }
    # Criterion judges each test by its assertions; a leak that
    # LeakSanitizer reports as the test's process exits fails the suite too.
    log=$(mktemp)
    "$b" --jobs=1 --short-filename >"$log" 2>&1
    rc=$?
    cat "$log"
    if grep -q "ERROR: LeakSanitizer" "$log"; then rc=1; echo "$(basename "$b"): memory leaked"; fi
    rm -f "$log"
    if [ "$rc" -eq 0 ]; then passed=$((passed+1)); else failed=$((failed+1)); bad="$bad $(basename "$b")"; fi
done
[ -n "$bad" ] && echo "failed suites:$bad"
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
