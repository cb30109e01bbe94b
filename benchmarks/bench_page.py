"""Open time and pan/zoom frame times of the graph page in headless Chromium, on synthetic graphs (no model).

    python benchmarks/bench_page.py [--edges 50000 300000] [--chromium /usr/bin/chromium]

Prints, per graph size: the time from navigation to a drawn graph (first open: the server compresses the file;
second open: its compressed copy is cached), the page's own share (parse, typed arrays, layout, first draw),
and frame intervals while the view pans and zooms on every animation frame for two seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from graphgen import write_graph  # noqa: E402
from pagestub import CHROMIUM_ARGS, LiveServer, StubScope  # noqa: E402

ANIMATE = """async (ms) => {
  const M = window.mechscope, c = document.getElementById('graph').getBoundingClientRect();
  const times = []; let last = performance.now(); const t0 = last; let i = 0;
  await new Promise((done) => {
    const step = (t) => {
      times.push(t - last); last = t; i++;
      if (i % 40 < 20) M.zoomAt(c.width / 2, c.height / 2, i % 80 < 40 ? 1.03 : 0.97);
      else { M.state.view.x += (i % 80 < 40 ? 6 : -6); M.requestDraw('view'); }
      if (t - t0 < ms) requestAnimationFrame(step); else done();
    };
    requestAnimationFrame(step);
  });
  await new Promise((r) => setTimeout(r, 400));      // the settled redraw after the motion
  return { intervals: times.slice(1), draws: M.render.frameTimes.slice(-times.length) };
}"""


def bench(url: str, browser, name: str) -> None:
    for attempt in ("first open", "second open"):
        page = browser.new_page(viewport={"width": 1366, "height": 768}, bypass_csp=True)  # string waits need eval
        t0 = time.perf_counter()
        page.goto(f"{url}/?slug={name}")
        page.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=120_000)
        wall = time.perf_counter() - t0
        st = page.evaluate("[window.mechscope.state.openMs, window.mechscope.state.timing, window.mechscope.state.E]")
        print(
            f"  {attempt}: {wall:.2f} s from navigation; in the page {st[0] / 1000:.2f} s "
            f"(fetch+parse {st[1]['fetchParse']:.0f} ms, arrays {st[1]['prepare']:.0f} ms, layout+draw {st[1]['rest']:.0f} ms)"
        )
        if attempt == "second open":
            r = page.evaluate(ANIMATE, 2000)
            iv = sorted(r["intervals"])
            med, p95 = statistics.median(iv), iv[int(0.95 * (len(iv) - 1))]
            print(
                f"  pan/zoom: {len(iv)} frames in 2 s, {1000 / statistics.mean(iv):.1f} frames/s, interval median {med:.1f} ms, "
                f"95th pct {p95:.1f} ms; full redraw (settled) max {max(r['draws']):.0f} ms"
            )
        page.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=int, nargs="+", default=[50_000, 300_000])
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        for n in args.edges:
            write_graph(Path(tmp), f"bench-{n}", n, n_features=max(500, min(4000, n // 75)))
        with LiveServer(StubScope(Path(tmp))) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            for n in args.edges:
                size = (Path(tmp) / f"bench-{n}.json").stat().st_size / 1e6
                print(f"{n:,} edges ({size:.1f} MB JSON):")
                bench(url, browser, f"bench-{n}")
            browser.close()


if __name__ == "__main__":
    main()
