#!/bin/sh
# plot_strategies.sh: draws what build/bench_strategies --csv measured.
#
# usage: bench/plot_strategies.sh CSV OUTDIR [PP [TP]]
#   build/bench_strategies --csv > strategies.csv
#   bench/plot_strategies.sh strategies.csv plots
# Writes into OUTDIR (created if needed), each as PNG and SVG:
#   strategies_throughput.{png,svg}  modeled samples/s of every configuration,
#       one bar each, best first, coloured by schedule (pp = 1: no pipeline;
#       interleaved-1f1b's virtual-stage rows share one colour)
#   strategies_bubble.{png,svg}      measured bubble fraction against the
#       micro-batch count, one line per schedule (and per virtual-stage
#       count), for one mesh: pipeline depth PP (default: the deepest
#       pipeline in the CSV) and tensor-parallel width TP (default: the
#       smallest with that PP), beside the theory for equal stages and
#       free messages: (p-1)/(m+p-1), zb-h1's and zb-h2's (p-1)/(3m+p-1)
#       (m >= p; the README's for fewer), and (p-1)/p for sequential
# PNG comes from gnuplot's pngcairo terminal, or its png terminal when it has
# no pngcairo. Each file is written under a temporary name and renamed, so a
# failed run leaves no partial plot. Without gnuplot (Debian package
# gnuplot-nox) it says so, writes nothing and exits 0.
# Exit status: 0 done (or gnuplot missing), 1 gnuplot failed, 2 bad usage.
set -eu

me=plot_strategies.sh
bad() { echo "$me: $1 (try --help)" >&2; exit 2; }
case "${1:-}" in --help | -h) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
if [ $# -lt 2 ] || [ $# -gt 4 ]; then bad "wants CSV OUTDIR [PP [TP]]"; fi
csv=$1 out=$2 want_pp=${3:-} want_tp=${4:-}
for v in "$want_pp" "$want_tp"; do
    case "$v" in *[!0-9]* | 0) bad "PP and TP are positive integers, not '$v'" ;; esac
done
[ -r "$csv" ] || bad "cannot read '$csv'"
# Columns: 1 dp, 2 pp, 3 tp, 4 schedule, 5 micro_batches, 6 sp, 7 modeled
# samples/s, 9 bubble (then optional zero and config columns).
header="dp,pp,tp,schedule,micro_batches,sp,modeled_samples_per_s,wall_samples_per_s,bubble,"
header="${header}comm_bytes_per_device,peak_bytes_per_device,fits"
case "$(head -n 1 "$csv")" in
"$header" | "$header,"*) ;;
*) bad "'$csv' does not start with bench_strategies --csv's header" ;;
esac
[ "$(wc -l < "$csv")" -ge 2 ] || bad "'$csv' has no rows"

if ! command -v gnuplot >/dev/null 2>&1; then
    echo "$me: gnuplot is not installed (apt-get install gnuplot-nox); no plots written" >&2
    exit 0
fi
terms=$(gnuplot -e 'set terminal' 2>&1 || true)
has_term() { printf '%s\n' "$terms" | grep -qw "$1"; }
if has_term pngcairo; then png=pngcairo; elif has_term png; then png=png; else png=; fi
has_term svg && svg=svg || svg=
[ -n "$png$svg" ] || { echo "$me: this gnuplot has neither a png nor an svg terminal" >&2; exit 1; }
[ -n "$png" ] || echo "$me: this gnuplot has no png terminal; SVG only" >&2
[ -n "$svg" ] || echo "$me: this gnuplot has no svg terminal; PNG only" >&2

mkdir -p "$out" || bad "cannot create '$out'"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# Bars, best first: rank, label, modeled samples/s, colour (0: pp = 1,
# 1..8: the schedule's index in tinymesh's order, without its " vN").
# Tab-separated because the labels hold spaces.
tail -n +2 "$csv" | sort -t, -k7,7gr -s | awk -F, -v OFS='\t' '
    BEGIN { split("sequential gpipe 1f1b grouped interleaved zb-h1 zb-h2 interleaved-1f1b", k, " ")
            for (i in k) colour[k[i]] = i }
    { label = sprintf("dp%s pp%s tp%s", $1, $2, $3)
      label = $2 == 1 ? label " m" $5 : label " " $4 " m" $5
      if ($6 == "yes" || $6 == 1) label = label " sp"
      base = $4; sub(/ v[0-9]+$/, "", base)
      print NR - 1, label, $7, $2 == 1 ? 0 : colour[base] }' > "$tmp/bars.dat"
n_bars=$(wc -l < "$tmp/bars.dat")
devices=$(awk -F, 'NR == 2 { print $1 * $2 * $3 }' "$csv")

# The bubble plot's mesh: the deepest pipeline measured (or PP), and the
# narrowest tensor parallelism with it (or TP).
pp=${want_pp:-$(awk -F, 'NR > 1 && $9 != "" && $2 > p { p = $2 } END { print p + 0 }' "$csv")}
tp=${want_tp:-$(awk -F, -v pp="$pp" 'NR > 1 && $2 == pp && $9 != "" && (t == 0 || $3 < t) {
    t = $3 } END { print t + 0 }' "$csv")}
# One colour per schedule, as in the bars (interleaved-1f1b's virtual-stage
# counts dashed); 1f1b and interleaved run the same lists here
# (strategies/schedule.h), so their lines coincide, as zb-h1's and zb-h2's
# do at equal times: the point shapes and sizes differ so that both stay
# visible. Where a micro-batch count has two rows (the GPT with sequence
# parallelism off and on) the first is drawn.
bubble_plot='' style=''
schedules=$(awk -F, -v pp="$pp" -v tp="$tp" 'NR > 1 && $2 == pp && $3 == tp && $9 != "" {
    print $4 }' "$csv" | sort -u | tr ' ' '_')
for s in $schedules; do
    case $s in
    sequential) style='lc rgb "#d62728" pt 7 ps 1.6' ;;
    gpipe) style='lc rgb "#1f77b4" pt 5 ps 1.3' ;;
    1f1b) style='lc rgb "#2ca02c" pt 9 ps 2.0' ;;
    grouped) style='lc rgb "#ff7f0e" pt 13 ps 1.4' ;;
    interleaved) style='lc rgb "#9467bd" pt 7 ps 0.7' ;;
    zb-h1) style='lc rgb "#8c564b" pt 11 ps 1.8' ;;
    zb-h2) style='lc rgb "#e377c2" pt 7 ps 0.8' ;;
    *) style='lc rgb "#17becf" dt 2 pt 6 ps 1.0' ;;
    esac
    name=$(printf '%s' "$s" | tr '_' ' ')
    awk -F, -v OFS='\t' -v pp="$pp" -v tp="$tp" -v s="$name" \
        'NR > 1 && $2 == pp && $3 == tp && $4 == s && $9 != "" && !seen[$5]++ { print $5, $9 }' \
        "$csv" | sort -n > "$tmp/bubble_$s.dat"
    [ -s "$tmp/bubble_$s.dat" ] || continue
    bubble_plot="$bubble_plot${bubble_plot:+, }'$tmp/bubble_$s.dat' using 1:2 with linespoints"
    bubble_plot="$bubble_plot lw 2 $style title '$name'"
done
if [ -z "$bubble_plot" ]; then
    what="no rows with pp $pp, tp $tp"
    [ "$tp" -gt 0 ] || what="no rows with pp $pp"
    [ "$pp" -gt 1 ] || what="no pipeline rows (pp > 1)"
    echo "$me: $what in '$csv'; no bubble plot" >&2
else
    dp=$((devices / pp / tp))
    m_lo=$(cat "$tmp"/bubble_*.dat | sort -n | head -n 1 | cut -f 1)
    m_hi=$(cat "$tmp"/bubble_*.dat | sort -n | tail -n 1 | cut -f 1)
    [ "$m_lo" -lt "$m_hi" ] || { m_lo=$((m_lo / 2 > 0 ? m_lo / 2 : 1)); m_hi=$((m_hi * 2)); }
fi

# render TERMINAL EXT: both plots in one terminal.
render() {
    term=$1 ext=$2
    width=$((n_bars * 14 + 160))
    [ "$width" -ge 900 ] || width=900
    gnuplot <<EOF
set datafile separator "\t"
set terminal $term size $width,640 font ",9"
set output "$tmp/throughput.$ext"
set title "modeled throughput per configuration, $devices devices, best first"
set ylabel "modeled samples/s"
set style fill solid 0.85 noborder
set xtics rotate by 90 right nomirror font ",7"
set xrange [-1:$n_bars]
set yrange [0:*]
set grid ytics
set key top right
set linetype 1 lc rgb "#7f7f7f"
set linetype 2 lc rgb "#d62728"
set linetype 3 lc rgb "#1f77b4"
set linetype 4 lc rgb "#2ca02c"
set linetype 5 lc rgb "#ff7f0e"
set linetype 6 lc rgb "#9467bd"
set linetype 7 lc rgb "#8c564b"
set linetype 8 lc rgb "#e377c2"
set linetype 9 lc rgb "#17becf"
plot "$tmp/bars.dat" using 1:3:(0.8):(column(4) + 1):xtic(2) with boxes lc variable notitle, \\
     keyentry with boxes lt 1 title "pp = 1 (no pipeline)", \\
     keyentry with boxes lt 2 title "sequential", \\
     keyentry with boxes lt 3 title "gpipe", \\
     keyentry with boxes lt 4 title "1f1b", \\
     keyentry with boxes lt 5 title "grouped", \\
     keyentry with boxes lt 6 title "interleaved", \\
     keyentry with boxes lt 7 title "zb-h1", \\
     keyentry with boxes lt 8 title "zb-h2", \\
     keyentry with boxes lt 9 title "interleaved-1f1b (v > 1)"
unset output
EOF
    [ -n "$bubble_plot" ] || return 0
    gnuplot <<EOF
set datafile separator "\t"
set terminal $term size 900,600 font ",10"
set output "$tmp/bubble.$ext"
set title "pipeline bubble, pp = $pp (dp $dp, tp $tp, $devices devices)"
set xlabel "micro-batches m (per replica)"
set ylabel "bubble fraction"
set logscale x 2
set xrange [$m_lo:$m_hi]
set yrange [0:1]
set grid
set key bottom left box opaque
set samples 200
p = $pp
plot $bubble_plot, \\
     (p - 1) / (x + p - 1) with lines dt 2 lw 2 lc rgb "black" \\
         title "theory (p-1)/(m+p-1): gpipe, 1f1b, grouped, interleaved", \\
     (x >= p ? (p - 1) / (3 * x + p - 1) : 1 - 3 * x / (2 * (x + p - 1) + 1)) \\
         with lines dt 4 lw 2 lc rgb "#8c564b" \\
         title "theory (p-1)/(3m+p-1), m >= p: zb-h1, zb-h2 (F = B = W)", \\
     (p - 1.0) / p with lines dt 3 lw 2 lc rgb "#555555" title "theory (p-1)/p: sequential"
unset output
EOF
}

# The temporary name is in OUTDIR, so that the last step is a rename within
# one file system.
written=
for ext in png svg; do
    if [ "$ext" = png ]; then term=$png; else term=$svg; fi
    [ -n "$term" ] || continue
    render "$term" "$ext" || { echo "$me: gnuplot failed ($term terminal)" >&2; exit 1; }
    for f in throughput bubble; do
        [ -f "$tmp/$f.$ext" ] || continue
        mv "$tmp/$f.$ext" "$out/strategies_$f.$ext.tmp"
        mv "$out/strategies_$f.$ext.tmp" "$out/strategies_$f.$ext"
        written="$written $out/strategies_$f.$ext"
    done
done
echo "wrote$written"
