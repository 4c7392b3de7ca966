#!/bin/sh
# Installs tinymesh's Debian dependencies, or says exactly how to.
#   scripts/deps.sh          the build, test and demo dependencies
#   scripts/deps.sh peers    also the benchmark peers (PyTorch, gnuplot)
#   scripts/deps.sh browser  also headless Chromium, its driver and Selenium, for
#                            the reports' browser check (CI runs it; make test
#                            skips that check without them)
# Exits 0 when everything needed is present, 1 otherwise.
set -u

core="libhwloc-dev libopenblas-dev libcriterion-dev zlib1g-dev pkg-config dataset-fashion-mnist fortunes openmpi-bin libopenmpi-dev"
peers="python3-torch gnuplot-nox"
browser="chromium chromium-driver python3-selenium"

missing=""
have_pc() { pkg-config --exists "$1" 2>/dev/null; }
have_pc hwloc     || missing="$missing libhwloc-dev"
have_pc openblas  || missing="$missing libopenblas-dev"
have_pc criterion || missing="$missing libcriterion-dev"
have_pc zlib      || missing="$missing zlib1g-dev"
have_pc ompi-c    || missing="$missing libopenmpi-dev"
command -v mpirun >/dev/null 2>&1 || missing="$missing openmpi-bin"
command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing="$missing dataset-fashion-mnist"
[ -f /usr/share/games/fortunes/fortunes ] || missing="$missing fortunes"
if [ "${1:-}" = peers ]; then
    /usr/bin/python3 -c 'import torch' >/dev/null 2>&1 || missing="$missing python3-torch"
    command -v gnuplot >/dev/null 2>&1 || missing="$missing gnuplot-nox"
fi
if [ "${1:-}" = browser ]; then
    [ -x /usr/bin/chromium ] || missing="$missing chromium"
    [ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
    /usr/bin/python3 -c 'import selenium' >/dev/null 2>&1 || missing="$missing python3-selenium"
fi
[ -z "$missing" ] && exit 0

want="$core"
[ "${1:-}" = peers ] && want="$core $peers"
[ "${1:-}" = browser ] && want="$core $browser"
if [ "$(id -u)" != 0 ]; then
    echo "tinymesh needs:$missing" >&2
    echo "run as root: apt-get update && apt-get install -y $want" >&2
    exit 1
fi
echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# An empty package list (fresh image) makes install fail; update first then.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
    apt-get update -qq || exit 1
fi
apt-get install -y -qq $want >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $want >/dev/null; } || exit 1
exit 0
