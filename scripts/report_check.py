#!/usr/bin/python3
"""Opens tinymesh's HTML reports in headless Chromium and checks them as a
reader would see them; optionally takes their screenshots.

usage: scripts/report_check.py [--shots DIR] ITEM...
  run:PAGE.html:METRICS.jsonl   a build/train --report page and the same
                                run's --metrics file
  sweep:PAGE.html:SWEEP.csv     a bench_strategies --report page and the
                                same sweep's --csv output
  svg:FILE.svg:LANES            a build/schedule --svg drawing of LANES stages
  --shots DIR                   also write a full-page PNG of each item into
                                DIR, named after it (run8.html -> run8.png)

Every item: no console message of level error (a script error included).
A run page: one timeline lane, one memory bar and one modeled-time bar per
device; one traffic matrix per mesh dimension that carried bytes, each of
the device count's size, and each link of the metrics in exactly one cell;
every number the page shows is either marked as one of the metrics' figures
and then equal to it (the value, and the text formatted as the page says)
or marked as something else (configuration, formula, axis, label, sum);
lane and bar labels do not overlap; hovering over a timeline box shows its
times. A sweep page: one row per CSV row, every number equal to the CSV's.
Uses Debian's chromium, chromium-driver and python3-selenium.
Exit status: 0 all checks passed, 1 a check failed, 2 bad usage, 3 the
browser or its driver could not be started.
"""
import csv
import json
import os
import re
import shutil
import sys
import tempfile

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


def fail_usage(msg):
    print("report_check: %s (see --help)" % msg, file=sys.stderr)
    sys.exit(2)


def fmt_bytes(v):
    units = ["B", "KiB", "MiB", "GiB"]
    u = 0
    while v >= 1024 and u < 3:
        v /= 1024
        u += 1
    return ("%.2f %s" if u else "%.0f %s") % (v, units[u])


def fmt(v, show):
    """The text the page shows for value v (strategies/svg.h, tm_svg_format)."""
    if v is None:
        return "n/a"
    if show == "b":
        return fmt_bytes(v)
    if show.startswith("ms"):
        return "%.*f" % (int(show[2:]), 1e3 * v)
    if show.startswith("p"):
        return "%.*f" % (int(show[1:]), 100 * v)
    return "%.*f" % (int(show[1:]), v)


def metric(records, path):
    """The figure a page's data-m path names in the metrics records."""
    parts = path.split("/")
    cands = [r for r in records if r.get("type") == parts[0]]
    rest = parts[1:]
    if rest and "=" in rest[0]:
        key, val = rest[0].split("=", 1)
        cands = [r for r in cands if key in r and float(r[key]) == float(val)]
        rest = rest[1:]
    if len(cands) != 1:
        raise KeyError("%s: %d records match" % (path, len(cands)))
    node = cands[0]
    for p in rest:
        node = node[int(p)] if isinstance(node, list) else node[p]
    return node


def csv_figure(rows, path):
    _, i, field = path.split("/")
    return float(rows[int(i)][field])


# In the page: every element marked with a figure, and every text that
# shows a digit outside any marked element.
JS_FIGURES = """
var out = [];
document.querySelectorAll('[data-m]').forEach(function (e) {
  out.push([e.getAttribute('data-m'), e.getAttribute('data-v'),
            e.getAttribute('data-f'), e.namespaceURI.indexOf('svg') < 0 ? e.textContent : null]);
});
return out;
"""
JS_UNMARKED = """
var bad = [], w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
while (w.nextNode()) {
  var t = w.currentNode, s = t.nodeValue;
  if (!/[0-9]/.test(s)) continue;
  var p = t.parentNode, ok = false;
  for (var q = p; q && q.getAttribute; q = q.parentNode) {
    var tag = q.tagName.toLowerCase();
    if (q.getAttribute('data-m') || q.getAttribute('data-nm') || q.id === 'tip' ||
        tag === 'script' || tag === 'style' || tag === 'title') { ok = true; break; }
  }
  if (!ok) bad.push(s.trim().slice(0, 80));
}
return bad;
"""
JS_LABELS = """
var r = [];
document.querySelectorAll(arguments[0]).forEach(function (g) {
  var t = g.querySelector('text'); if (!t) return;
  var b = t.getBoundingClientRect(); r.push([b.top, b.bottom, t.textContent]);
});
return r;
"""
JS_MATRICES = """
return Array.prototype.map.call(document.querySelectorAll('.matrix'), function (m) {
  var bg = m.querySelector('rect'), cells = m.querySelectorAll('rect[data-m]');
  return [m.getAttribute('data-dim'), +m.getAttribute('data-n'),
          +bg.getAttribute('width'), +bg.getAttribute('height'),
          Array.prototype.map.call(cells, function (c) {
            return [c.getAttribute('data-m'), +c.getAttribute('x'), +c.getAttribute('y'),
                    +c.getAttribute('width')]; })];
});
"""


class Checker:
    def __init__(self, driver):
        self.d = driver
        self.failures = 0

    def expect(self, ok, what):
        if not ok:
            self.failures += 1
            print("  FAIL: " + what)
        return ok

    def load(self, path):
        self.d.get("file://" + os.path.abspath(path))
        logs = self.d.get_log("browser")
        for e in logs:
            self.expect(e["level"] not in ("SEVERE",), "console: " + e["message"])
        return logs

    def count(self, selector):
        return self.d.execute_script("return document.querySelectorAll(arguments[0]).length",
                                     selector)

    def figures(self, lookup):
        figs = self.d.execute_script(JS_FIGURES)
        for path, file_text, show, text in figs:
            try:
                want = lookup(path)
            except (KeyError, IndexError, ValueError) as e:
                self.expect(False, "%s is not in the file: %s" % (path, e))
                continue
            got = None if file_text == "null" else float(file_text)
            self.expect(got == (None if want is None else float(want)),
                        "%s: the page holds %s, the file %s" % (path, file_text, want))
            if text is not None:
                self.expect(text == fmt(want if want is None else float(want), show),
                            "%s: the page shows %r, the file's %s as %s is %r"
                            % (path, text, want, show, fmt(want, show)))
        bad = self.d.execute_script(JS_UNMARKED)
        for s in bad:
            self.expect(False, "a number shown unmarked: %r" % s)
        return len(figs)

    def no_overlap(self, selector):
        boxes = sorted(self.d.execute_script(JS_LABELS, selector))
        for a, b in zip(boxes, boxes[1:]):
            self.expect(a[1] <= b[0] + 0.5, "labels %r and %r overlap" % (a[2], b[2]))

    def check_run(self, page, metrics):
        records = [json.loads(l) for l in open(metrics) if l.strip()]
        summary = [r for r in records if r["type"] == "summary"][-1]
        n = len(summary["devices"])
        self.load(page)
        self.expect(self.count("#timeline .lane") == n,
                    "%d timeline lanes for %d devices" % (self.count("#timeline .lane"), n))
        self.expect(self.count("#memory .bar") == n,
                    "%d memory bars for %d devices" % (self.count("#memory .bar"), n))
        self.expect(self.count("#modeled .bar") == n,
                    "%d modeled-time bars for %d devices" % (self.count("#modeled .bar"), n))
        if n > 24:
            folded = self.d.execute_script(
                "var f = document.querySelector('#timeline .fold');"
                "return f !== null && f.scrollHeight > f.clientHeight")
            self.expect(folded, "%d lanes are not folded into a scrolling view" % n)
        links = summary["links"]
        seen = []
        for dim, size, w, h, cells in self.d.execute_script(JS_MATRICES):
            self.expect(size == n, "the %s matrix is %d x %d for %d devices" % (dim, size, size, n))
            cell = cells[0][3] if cells else 0
            self.expect(abs(w - h) < 0.5 and abs(w - n * cell) <= 1,
                        "the %s matrix is %g x %g pixels, %d cells of %g" % (dim, w, h, n, cell))
            for path, x, y, _ in cells:
                k = int(path.split("/")[2])
                src, dst = links[k][0], links[k][1]
                self.expect(abs(x - 36 - dst * cell) < 0.2 and abs(y - 20 - src * cell) < 0.2,
                            "link %d -> %d is drawn in the wrong cell" % (src, dst))
                seen.append(k)
        self.expect(sorted(seen) == list(range(len(links))),
                    "%d links in the metrics, %d cells in the matrices" % (len(links), len(seen)))
        figs = self.figures(lambda path: metric(records, path))
        self.no_overlap("#timeline .lane")
        self.no_overlap("#memory .bar")
        self.hover("#timeline rect[data-tip]", " to ")
        return "%d devices, %d figures" % (n, figs)

    def hover(self, selector, needle):
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        boxes = self.d.find_elements(By.CSS_SELECTOR, selector)
        if not self.expect(boxes, "nothing to hover over (%s)" % selector):
            return
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", boxes[0])
        ActionChains(self.d).move_to_element(boxes[0]).perform()
        tip = self.d.execute_script("var t = document.getElementById('tip');"
                                    "return t.style.display === 'block' ? t.textContent : ''")
        self.expect(needle in tip, "hovering shows %r" % tip)
        self.d.execute_script("window.scrollTo(0, 0)")

    def check_sweep(self, page, csv_path):
        rows = list(csv.DictReader(open(csv_path)))
        self.load(page)
        bars = self.count("#throughput .bar")
        self.expect(bars == len(rows), "%d rows drawn for %d in the CSV" % (bars, len(rows)))
        figs = self.figures(lambda path: csv_figure(rows, path))
        self.no_overlap("#throughput .bar")
        return "%d configurations, %d figures" % (len(rows), figs)

    def check_svg(self, page, lanes):
        self.load(page)
        got = self.count(".lane")
        self.expect(got == lanes, "%d lanes drawn for %d stages" % (got, lanes))
        return "%d lanes" % got

    def shot(self, path, out):
        height = self.d.execute_script("return document.documentElement.scrollHeight")
        self.d.set_window_size(1240, min(height, 6000) + 120)
        self.d.save_screenshot(out)
        self.d.set_window_size(1240, 900)
        print("  screenshot " + out)


def start():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--hide-scrollbars", "--force-device-scale-factor=1"):
        o.add_argument(a)
    profile = tempfile.mkdtemp(prefix="tm_chromium_")
    o.add_argument("--user-data-dir=" + profile)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    o.binary_location = CHROMIUM
    try:
        d = webdriver.Chrome(service=Service(DRIVER), options=o)
    except Exception:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    d.set_window_size(1240, 900)
    return d, profile


def main(argv):
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return 0
    shots = None
    items = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--shots":
            if i + 1 == len(argv):
                fail_usage("--shots wants a directory")
            shots = argv[i + 1]
            i += 2
            continue
        kind, _, rest = a.partition(":")
        parts = rest.split(":")
        if kind not in ("run", "sweep", "svg") or len(parts) != 2:
            fail_usage("an item is run:PAGE:METRICS, sweep:PAGE:CSV or svg:FILE:LANES, not %r" % a)
        for p in parts[:1] + (parts[1:] if kind != "svg" else []):
            if not os.path.isfile(p):
                fail_usage("cannot read %s" % p)
        items.append((kind, parts[0], parts[1]))
        i += 1
    if not items:
        fail_usage("nothing to check")
    try:
        d, profile = start()
    except Exception as e:  # the driver's errors have no common base class
        print("report_check: cannot start Chromium: %s" % str(e).strip().splitlines()[0],
              file=sys.stderr)
        return 3
    c = Checker(d)
    try:
        for kind, page, other in items:
            before = c.failures
            print("%s %s" % (kind, page))
            if kind == "run":
                what = c.check_run(page, other)
            elif kind == "sweep":
                what = c.check_sweep(page, other)
            else:
                what = c.check_svg(page, int(other))
            print("  %s: %s" % ("ok" if c.failures == before else "FAILED", what))
            if shots:
                name = re.sub(r"\.(html|svg)$", "", os.path.basename(page)) + ".png"
                c.shot(page, os.path.join(shots, name))
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print("report_check: %d items checked, %d checks failed" % (len(items), c.failures))
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
