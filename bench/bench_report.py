"""The HTML exploration report on a 200-node sweep: write time, file size and load time in a browser.

The sweep folder is the one the report test builds (a real engine run with a toy launcher, 4 blocks,
some failures, PNG plots). Measured:

1. ``write_report``: median wall time of several calls (read state.json, build the data, write);
2. the size of ``exploration/report.html`` (d3 and the data inline);
3. the load in headless Chromium (Debian's ``/usr/bin/chromium`` via Playwright) from its file:// URL:
   navigation start to the tree drawn (the page's script done, read from ``performance.now()`` in the
   page), for the default view (the latest block) and then for drawing all blocks; median of runs,
   each in a fresh browser context.

4. ``best_so_far`` (the report's and W&B's curve of the config the sweep names best after each node)
   on 200 to 3,000 nodes over configs run one to a few times, against the per-prefix form it replaced
   (``best_config`` of every prefix, each pooling the spread anew), measured in the same run.
5. ``SweepState.to_dict`` (twice a batch: the snapshot before a batch and every save) on the same
   nodes, against ``asdict`` of the state followed by each node again (its form before 2026-11-30).

Usage: python bench/bench_report.py [--nodes 200] [--repeat 5] [--no-browser]
(``--no-browser``: parts 4 and 5 only.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra_llm.explore.report_html import write_report  # noqa: E402
from hydra_llm.explore.reports import BestConfig, best_so_far, pooled_std  # noqa: E402
from hydra_llm.explore.state import SweepState  # noqa: E402
from hydra_llm.explore.tree import Node, stats  # noqa: E402
from tests.test_explore_tree import node  # noqa: E402
from tests.test_report_html import OBJECTIVE, build_sweep, chromium_path  # noqa: E402

# Records when the page script marks itself done (it sets data-ready after drawing everything).
READY_PROBE = """
new MutationObserver((_, observer) => {
  if (document.body && document.body.dataset.ready) {
    window.__readyAt = performance.now();
    observer.disconnect();
  }
}).observe(document, {attributes: true, subtree: true, attributeFilter: ["data-ready"]});
"""


def bench_write(sweep: Path, repeat: int) -> tuple[float, int]:
    """(median s per write_report call, report size in bytes)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        path = write_report(sweep, OBJECTIVE, "bench")
        times.append(time.perf_counter() - t0)
    return statistics.median(times), path.stat().st_size


def bench_load(report: Path, repeat: int, n_nodes: int) -> tuple[float, float, float]:
    """Median ms: navigation start to the default tree drawn, the same seen from Python (goto until
    the nodes are in the DOM), and redrawing the tree with all blocks."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise SystemExit("Chromium not found: apt-get install -y chromium")
    ready, outside, all_blocks = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        for _ in range(repeat + 1):  # the first run warms the browser up and is not counted
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.add_init_script(READY_PROBE)
            t0 = time.perf_counter()
            page.goto(report.as_uri())
            page.wait_for_selector("#tree g.node")
            outside.append(1000 * (time.perf_counter() - t0))
            page.wait_for_function("window.__readyAt !== undefined")
            ready.append(page.evaluate("window.__readyAt"))
            all_blocks.append(
                page.evaluate(
                    """() => {
                      const select = document.getElementById("block-select");
                      const t0 = performance.now();
                      select.value = "all";
                      select.dispatchEvent(new Event("change"));
                      return [performance.now() - t0, document.querySelectorAll("#tree g.node").length];
                    }"""
                )
            )
            context.close()
        browser.close()
    assert all(count == n_nodes for _, count in all_blocks), all_blocks
    median = lambda values: statistics.median(values[1:])  # noqa: E731
    return median(ready), median(outside), median([ms for ms, _ in all_blocks])


def per_prefix_best(nodes: list[Node]) -> list[BestConfig | None]:
    """The baseline: the best config of every prefix computed from scratch (the form before the
    one-pass ``best_so_far``), quadratic in the nodes."""

    def best_config(prefix: list[Node]) -> BestConfig | None:
        if not any(n.status == "completed" for n in prefix):
            return None
        sigma, groups, best = pooled_std(prefix), {}, None
        for run in prefix:
            groups.setdefault(run.config_hash, []).append(run)
        for members in groups.values():
            completed = [n for n in members if n.status == "completed"]
            if completed:
                s = stats(n.reward for n in members)
                score = s.mean - sigma / s.runs**0.5
                if best is None or score > best.score:
                    top = max(completed, key=lambda n: (n.reward, -n.id))
                    best = BestConfig(top, tuple(members), score, sigma)
        return best

    return [best_config(nodes[: i + 1]) for i in range(len(nodes))]


def synthetic_nodes(n: int) -> list[Node]:
    """``n`` nodes, a config per ~1.5 nodes (most run once, some replicated), 10% failed."""
    import random

    rng = random.Random(n)
    nodes = []
    for i in range(1, n + 1):
        failed = rng.random() < 0.1
        status, reward = ("failed", -1.0) if failed else ("completed", rng.gauss(0.8, 0.05))
        nodes.append(node(i, None, reward, {"lr": rng.randrange(max(1, 2 * n // 3))}, status=status))
    return nodes


def timed(fn: Any, arg: Any, repeat: int) -> tuple[float, Any]:
    """(median s of ``repeat`` calls of ``fn(arg)``, its last result)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn(arg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def compare(label: str, new: float, old: float, baseline: str, repeat: int) -> None:
    ratio = f"x{old / new:.0f}; median of {repeat}"
    print(f"{label:<40} {1000 * new:8.1f} ms; {baseline} {1000 * old:8.1f} ms ({ratio})")


def bench_best_so_far(sizes: list[int], repeat: int) -> None:
    """Median ms of ``best_so_far`` and of :func:`per_prefix_best` on :func:`synthetic_nodes`; both
    must name the same configs."""
    for n in sizes:
        nodes = synthetic_nodes(n)
        new, result = timed(best_so_far, nodes, repeat)
        old, before = timed(per_prefix_best, nodes, repeat)
        assert [b.node.id if b else None for b in result] == [b.node.id if b else None for b in before]
        compare(f"best_so_far, {n} nodes", new, old, "per-prefix", repeat)


def bench_state_to_dict(sizes: list[int], repeat: int) -> None:
    """Median ms of ``SweepState.to_dict`` and of ``asdict`` then each node again on a state of
    :func:`synthetic_nodes`; both must give the same JSON."""
    from dataclasses import asdict

    def asdict_then_nodes(state: SweepState) -> dict[str, Any]:
        data = asdict(state)
        data["nodes"] = [n.to_dict() for n in state.nodes]
        return data

    for n in sizes:
        state = SweepState(sweep_id="bench", seed=0, proposer="rules", nodes=synthetic_nodes(n))
        new, result = timed(SweepState.to_dict, state, repeat)
        old, before = timed(asdict_then_nodes, state, repeat)
        assert json.dumps(result) == json.dumps(before)
        compare(f"SweepState.to_dict, {n} nodes", new, old, "asdict + nodes", repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true", help="parts 4 and 5 only")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}")
    bench_best_so_far([200, 1000, 3000], args.repeat)
    bench_state_to_dict([200, 800, 3000], args.repeat)
    if args.no_browser:
        return
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sweep = build_sweep(Path(tmp), args.nodes)
        print(f"sweep folder built: {args.nodes} nodes in {time.perf_counter() - t0:.1f} s")
        write_s, size = bench_write(sweep, args.repeat)
        print(f"{'write_report':<40} {1000 * write_s:8.1f} ms (median of {args.repeat})")
        d3 = resources.files("hydra_llm.explore").joinpath("assets/d3.v7.min.js").read_bytes()
        print(f"{'report.html size':<40} {size / 1024:8.1f} KB (of which d3: {len(d3) / 1024:.1f} KB)")
        report = sweep / "exploration" / "report.html"
        ready, outside, all_blocks = bench_load(report, args.repeat, args.nodes)
        label = "load: navigation start to tree drawn"
        print(f"{label:<40} {ready:8.1f} ms (latest block; median of {args.repeat})")
        print(f"{'load: goto() to nodes in DOM (Python)':<40} {outside:8.1f} ms")
        print(f"{'redraw the tree with all blocks':<40} {all_blocks:8.1f} ms ({args.nodes} nodes)")


if __name__ == "__main__":
    main()
