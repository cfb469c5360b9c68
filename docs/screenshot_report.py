"""Write ``docs/report.png`` and ``docs/report_best.png``: a sweep's ``report.html`` in headless Chromium,
its best run's panel open, and its best-so-far chart.

The README's pictures come from a real sweep (the default one, with three times its nodes)::

    .venv/bin/python train.py -m experiment=quick_sweep hydra.sweeper.n_iterations=24 \\
        hydra.sweep.dir=outputs/sweeps/docs
    .venv/bin/python docs/screenshot_report.py outputs/sweeps/docs/exploration/report.html

Needs Playwright (installed by ``make test``) and Debian's ``chromium``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a sweep's exploration/report.html")
    parser.add_argument("--out", type=Path, default=DOCS, help=f"the folder to write to (default {DOCS})")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.report.resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']")
        best = page.evaluate("DATA.best.length ? DATA.best[DATA.best.length - 1].best_id : null")
        if best is not None:
            page.select_option("#block-select", "all")
            page.click(f'#tree g.node[data-id="{best}"] circle')
            page.wait_for_function("[...document.querySelectorAll('#panel img')].every(i => i.complete)")
        page.screenshot(path=str(args.out / "report.png"))
        page.click("#panel button.close")
        section = page.locator("section:has(#best-chart)").bounding_box()
        chart = page.locator("#best-chart").bounding_box()
        width = chart["x"] + chart["width"] + 16 - section["x"]  # the section, as wide as its chart
        clip = {**section, "width": width}
        page.screenshot(path=str(args.out / "report_best.png"), clip=clip, full_page=True)
        browser.close()
    print(f"wrote report.png and report_best.png in {args.out} (best run: node {best})")


if __name__ == "__main__":
    main()
