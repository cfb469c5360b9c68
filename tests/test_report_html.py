"""The HTML exploration report: robust on odd data, inert hostile text, and a real headless Chromium
drawing a 200-node sweep run through the engine (tree, panel, sortable table, best-so-far chart).

Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright (never a downloaded browser). Without
it the browser tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from hydra_llm.explore.protocol import RULES_BEGIN, RULES_END, protocol_diff
from hydra_llm.explore.report_html import write_report
from tests.test_explore_engine import ToyLauncher, make

OBJECTIVE = {"metric": "r2", "direction": "maximize", "target": None}
HOSTILE_STRATEGY = '<img src=x onerror="window.__pwned=1">'
HOSTILE_HYPOTHESIS = "</script><script>window.__pwned=2</script>"
HOSTILE_RULE = "</pre><script>x</script>"
HOSTILE_SUMMARY = "<script>window.__pwned=3</script> & \u2028 done"
N_NODES = 200
N_BLOCKS = 4
PLOT_EVERY = 23  # every 23rd completed node with a mutation gets plots in its job folder


def chromium_path() -> str | None:
    """Debian's Chromium, if installed."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _plot(path: Path, title: str, phase: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.4), dpi=60)
    xs = [i / 10 for i in range(120)]
    ax.plot(xs, [math.sin(x + phase) * math.exp(-x / 8) for x in xs])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_sweep(root: Path, n_nodes: int = N_NODES) -> Path:
    """A sweep folder of a real engine run (toy launcher, some failures, 4 blocks), with PNG plots in
    job folders, a plot outside the sweep folder, a protocol diff and hostile LLM text in state.json."""
    sweep = root / "sweep"
    launcher = ToyLauncher(fail_when=lambda child: child.node_id % 12 == 5)
    make(sweep, launcher=launcher, n_iterations=n_nodes, n_parallel=4, n_iter_block=n_nodes // N_BLOCKS).run()
    path = sweep / "exploration" / "state.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    mutated = [n for n in state["nodes"] if n["status"] == "completed" and n["mutation_text"]]
    for node in mutated[::PLOT_EVERY]:
        job = sweep / str(node["job_num"])
        (job / "plots").mkdir(parents=True, exist_ok=True)
        node["output_dir"] = str(job)
        node["plots"] = []
        for name, phase in (("activity", 0.0), ("loss", 1.5)):
            _plot(job / "plots" / f"{name}.png", f"{name} (node {node['id']})", phase + node["id"] / 10)
            node["plots"].append(str(job / "plots" / f"{name}.png"))
    outside = root / "outside.png"
    _plot(outside, "outside the sweep folder", 0.0)
    mutated[0]["plots"] += [str(outside), str(sweep / "missing.png"), str(sweep / "exploration" / "x.txt")]
    hostile = mutated[-2]
    hostile["strategy"] = HOSTILE_STRATEGY
    hostile["hypothesis"] = HOSTILE_HYPOTHESIS
    state["block_summaries"]["1"] += "\n" + HOSTILE_SUMMARY
    path.write_text(json.dumps(state, indent=1), encoding="utf-8")
    old = f"# Protocol\n{RULES_BEGIN}\n- old rule\n{RULES_END}\n"
    new = f"# Protocol\n{RULES_BEGIN}\n- prefer lr near 1e-3 (nodes 3, 7)\n- {HOSTILE_RULE}\n{RULES_END}\n"
    (sweep / "exploration" / "protocol" / "block_001.diff").write_text(
        protocol_diff(old, new), encoding="utf-8"
    )
    return sweep


def page_data(html: str) -> dict:
    """The JSON data embedded in a report."""
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)
    assert match is not None
    return json.loads(match.group(1))


# ------------------------------------------------------------------------------------ without a browser
def test_report_without_state_or_with_odd_data(tmp_path):
    path = write_report(tmp_path, OBJECTIVE, "empty")
    assert path == tmp_path / "exploration" / "report.html"
    data = page_data(path.read_text(encoding="utf-8"))
    assert (
        data["nodes"] == [] and data["blocks"] == [] and "no exploration/state.json yet" in data["warnings"]
    )

    nodes = [
        {
            "id": 1,
            "parent": None,
            "block": 1,
            "status": "completed",
            "metrics": {"r2": float("nan"), "x": "?"},
        },
        {"id": 2, "parent": 3, "block": 1, "status": "completed", "metrics": {"r2": 0.5}},  # later parent
        {"id": 3, "parent": 2, "block": 1, "status": "completed", "metrics": {"r2": float("inf")}},
        {"id": 4, "parent": 1, "block": 2, "status": "weird", "overrides": [1, 2], "plots": "/etc/x.png"},
        {"id": "five"},
        {"id": 2, "parent": None},  # a duplicate id
        "not a node",
        {
            "id": 6,
            "parent": 2,
            "block": 1,
            "status": "completed",
            "metrics": {"r2": 0.7},
            "mutation": {"a": 1},
        },
    ]
    state = {"nodes": nodes, "block_summaries": {"x": 1, "2": None, "7": "\ud800 lone"}, "iteration": None}
    (tmp_path / "exploration" / "state.json").write_text(json.dumps(state), encoding="utf-8")
    path = write_report(tmp_path, {"direction": "target"}, "odd \udc80")
    data = page_data(path.read_text(encoding="utf-8"))
    by_id = {n["id"]: n for n in data["nodes"]}
    assert sorted(by_id) == [1, 2, 3, 4, 6]
    assert by_id[1]["metrics"] == {"r2": "nan", "x": "?"} and by_id[1]["value"] is None
    assert by_id[2]["tree_parent"] is None and by_id[3]["tree_parent"] == 2  # no cycle
    assert by_id[4]["status"] == "failed" and by_id[4]["tree_parent"] is None and by_id[4]["plots"] == []
    assert by_id[6]["mutation_text"] == "a=1"
    assert [b["block"] for b in data["blocks"]] == [1, 2, 7]
    assert any("shown as maximize" in w for w in data["warnings"])

    (tmp_path / "exploration" / "state.json").write_text("{not json", encoding="utf-8")
    data = page_data(write_report(tmp_path, {}, "corrupt").read_text(encoding="utf-8"))
    assert data["nodes"] == [] and "unreadable" in data["warnings"][0]


def test_target_direction_scores_closeness(tmp_path):
    nodes = [
        {"id": i, "parent": None, "block": 1, "status": "completed", "metrics": {"loss": v}}
        for i, v in enumerate([3.0, 1.2, 0.5, 0.9, 1.05], start=1)
    ]
    (tmp_path / "exploration").mkdir()
    (tmp_path / "exploration" / "state.json").write_text(json.dumps({"nodes": nodes}), encoding="utf-8")
    objective = {"metric": "loss", "direction": "target", "target": 1.0}
    data = page_data(write_report(tmp_path, objective, "t").read_text(encoding="utf-8"))
    assert [p["best_id"] for p in data["best"]] == [1, 2, 2, 4, 5]
    assert [p["best"] for p in data["best"]] == [3.0, 1.2, 1.2, 0.9, 1.05]


def test_best_config_so_far_is_the_one_the_sweep_names(tmp_path):
    # the chart's second line follows the config the console, sweep.log and W&B name best (judged on its
    # replicates), read back from state.json as the engine wrote it
    from hydra_llm.explore.reports import best_so_far
    from hydra_llm.explore.tree import Node

    sweep = build_sweep(tmp_path, n_nodes=48)
    data = page_data(write_report(sweep, OBJECTIVE, "t").read_text(encoding="utf-8"))
    state = json.loads((sweep / "exploration" / "state.json").read_text(encoding="utf-8"))
    runs = [Node.from_dict(n) for n in state["nodes"]]
    expected = {run.id: best.stats("r2") for run, best in zip(runs, best_so_far(runs), strict=True)}
    points = data["best"]
    assert len(points) == sum(1 for n in runs if n.status == "completed")
    for point in points:
        group = expected[point["id"]]
        assert point["config"] == pytest.approx(group.mean) and point["config_runs"] == group.runs
    # replicates were run, and a config's mean is not its best run's value
    assert max(p["config_runs"] for p in points) >= 2
    assert any(p["config"] != pytest.approx(p["best"]) for p in points)
    assert "_run" not in data["nodes"][0] and "_hash" not in data["nodes"][0]


def test_the_node_table_follows_the_regimes_headline_whatever_the_objective(tmp_path):
    """A flyvis sweep (which also returns the signal headline) judged on connectivity_R2: the table
    shows the objective, then the rest of the flyvis headline in its order."""
    from hydra_llm.schemas.evaluation import FlyvisEvaluation

    sweep = build_sweep(tmp_path, n_nodes=8)
    path = sweep / "exploration" / "state.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    for node in state["nodes"]:
        node["metrics"] = {name: 0.5 for name in FlyvisEvaluation.METRICS}
    path.write_text(json.dumps(state), encoding="utf-8")
    objective = {"metric": "connectivity_R2", "direction": "maximize", "target": None}
    data = page_data(write_report(sweep, objective, "t").read_text(encoding="utf-8"))
    assert data["table_metrics"] == list(FlyvisEvaluation.HEADLINE)
    assert data["metric_groups"][0] == [
        "headline (read from what the model learned)",
        list(FlyvisEvaluation.HEADLINE),
    ]


def test_hostile_text_cannot_leave_the_data_script(tmp_path):
    sweep = build_sweep(tmp_path, n_nodes=24)
    html = write_report(sweep, OBJECTIVE, "</title><script>alert(1)</script>").read_text(encoding="utf-8")
    assert "window.__pwned" not in html.split('id="data">', 1)[0]  # only inside the JSON data...
    data_text = html.split('id="data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data_text and ">" not in data_text and "\u2028" not in data_text  # ...escaped
    assert "\\u003c/script\\u003e" in data_text
    assert "<title>&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt;</title>" in html
    data = page_data(html)
    assert data["blocks"][0]["summary"].endswith(HOSTILE_SUMMARY)
    plots = [p for n in data["nodes"] for p in n["plots"]]
    assert plots and all(re.fullmatch(r"\.\./\d+/plots/(activity|loss)\.png", p) for p in plots)


# ------------------------------------------------------------------------------------ headless Chromium
@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        message = "Chromium not found at /usr/bin/chromium (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if os.environ.get("CI"):
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sweep = build_sweep(tmp_path_factory.mktemp("report"))
    return write_report(sweep, OBJECTIVE, "Toy sweep: 200 nodes")


@pytest.fixture
def page(browser, report):
    """The report opened from its file:// URL; console and page errors are checked after the test."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(report.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    yield page
    assert errors == []
    page.close()


def state_nodes(report: Path) -> list[dict]:
    return json.loads((report.parent / "state.json").read_text(encoding="utf-8"))["nodes"]


def test_tree_draws_every_node_and_folds(page, report):
    nodes = state_nodes(report)
    assert len(nodes) == N_NODES
    last_block = [n for n in nodes if n["block"] == N_BLOCKS]
    assert page.locator("#tree g.node").count() == len(last_block)  # the latest block is shown first
    assert page.locator("#tree g.vnode").count() == 1  # its root
    page.select_option("#block-select", "all")
    assert page.locator("#tree g.node").count() == N_NODES
    assert page.locator("#tree g.vnode").count() == N_BLOCKS + 1  # the block roots and the sweep
    failed = [n["id"] for n in nodes if n["status"] == "failed"]
    assert failed and page.locator("#tree g.node.failed").count() == len(failed)
    assert page.locator("#tree g.node.failed path.cross").count() == len(failed)
    assert page.locator("#failed-list button").count() == len(failed)
    assert page.locator("#failed-list").inner_text().startswith(f"Failed nodes ({len(failed)}): ")

    page.select_option("#block-select", "1")
    counts = {n["id"]: sum(1 for m in nodes if m["parent"] == n["id"]) for n in nodes if n["block"] == 1}
    parent = max(counts, key=lambda i: (counts[i], -i))
    before = page.locator("#tree g.node").count()
    # open the panel first: its opening narrows the tree, which re-fits it, and a double-click whose
    # first click opens the panel could have its second click land where the node was
    page.click(f'#tree g.node[data-id="{parent}"] circle')
    assert page.locator("#panel").is_visible()
    page.dblclick(f'#tree g.node[data-id="{parent}"] circle')
    folded = page.locator("#tree g.node").count()
    assert folded <= before - counts[parent]
    page.click(f'#tree g.node[data-id="{parent}"] .toggle rect')
    assert page.locator("#tree g.node").count() == before

    transform = page.get_attribute("#tree > g", "transform")
    page.mouse.move(400, 300)
    page.mouse.wheel(0, -300)
    page.wait_for_function(f"document.querySelector('#tree > g').getAttribute('transform') !== {transform!r}")


def test_node_panel_shows_details_plots_and_inert_hostile_text(page, report):
    nodes = state_nodes(report)
    with_plots = [n for n in nodes if n["plots"] and n["block"] == N_BLOCKS]
    node = with_plots[0]
    page.click(f'#tree g.node[data-id="{node["id"]}"] circle')
    panel = page.locator("#panel")
    assert panel.is_visible()
    text = panel.inner_text()
    assert f"Node {node['id']}" in text and node["mutation_text"] in text
    assert f"{node['metrics']['r2']:.4g}" in text
    assert node["strategy"] in text and str(node["job_num"]) in text
    changed = panel.locator("tr.changed")
    assert changed.count() >= 1 and list(node["mutation"])[0] in changed.first.inner_text()
    images = panel.locator("img")
    assert images.count() == 2
    assert images.first.get_attribute("src") == f"../{node['job_num']}/plots/activity.png"
    page.wait_for_function("[...document.querySelectorAll('#panel img')].every(i => i.naturalWidth > 0)")

    # a key the parent does not override shows the block root's value (the search space's default)
    by_id = {n["id"]: n for n in nodes}
    defaults = {"training.lr": "0.01", "training.width": "4"}  # tests.test_explore_engine.DEFAULTS

    def fresh_keys(n: dict) -> list[str]:
        before = by_id[n["parent"]]["overrides"] if n["parent"] in by_id else {}
        return [k for k in n["overrides"] if k not in before]

    fresh = next(n for n in nodes if n["block"] == N_BLOCKS and fresh_keys(n))
    page.click(f'#tree g.node[data-id="{fresh["id"]}"] circle')
    for key in fresh_keys(fresh):
        row = panel.locator("tr", has_text=key).first.inner_text().split("\t")
        assert row[1] == f"{defaults[key]} (root)", row

    hostile = next(n for n in nodes if n["strategy"] == HOSTILE_STRATEGY)
    page.select_option("#block-select", str(hostile["block"]))
    page.click(f'#tree g.node[data-id="{hostile["id"]}"] circle')
    text = panel.inner_text()
    assert HOSTILE_STRATEGY in text and HOSTILE_HYPOTHESIS in text
    assert HOSTILE_STRATEGY in page.locator(f'#nodes-table tr[data-id="{hostile["id"]}"]').inner_text()
    assert HOSTILE_SUMMARY.split(" &")[0] in page.locator("#blocks").inner_text()
    assert HOSTILE_RULE in page.locator("#blocks pre span.add").all_inner_texts()[-1]
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.scripts.length") == 3 and page.locator("img[src='x']").count() == 0


def test_table_sorts_by_metric_and_best_so_far_is_drawn(page, report):
    nodes = state_nodes(report)
    assert page.locator("#nodes-table tbody tr").count() == N_NODES
    headers = page.locator("#nodes-table th").all_inner_texts()
    column = [h.split(" ")[0] for h in headers].index("r2")

    def metric_column() -> list[float | None]:
        cells = page.locator(f"#nodes-table tbody tr td:nth-child({column + 1})").all_inner_texts()
        return [float(c) if c not in ("–", "nan") else None for c in cells]

    page.click('#nodes-table th[data-col="metric:r2"]')
    values = metric_column()
    present = [v for v in values if v is not None]
    assert len(present) == sum(1 for n in nodes if n["status"] == "completed")
    assert values[: len(present)] == present and present == sorted(present)  # missing values last
    page.click('#nodes-table th[data-col="metric:r2"]')
    present = [v for v in metric_column() if v is not None]
    assert present == sorted(present, reverse=True)
    page.click('#nodes-table th[data-col="id"]')
    ids = [int(t) for t in page.locator("#nodes-table tbody tr td:nth-child(1)").all_inner_texts()]
    assert ids == sorted(n["id"] for n in nodes)

    page.click('#nodes-table tr[data-id="2"]')  # a block 1 node while the latest block is drawn
    assert page.input_value("#block-select") == "1" and "Node 2" in page.inner_text("#panel h2")
    assert page.locator('#tree g.node.selected[data-id="2"]').count() == 1

    assert page.inner_text("#best-title").startswith("Best so far: r2 (")
    for line in ("best-line", "config-line"):
        path = page.get_attribute(f"#best-chart path.{line}", "d")
        assert path and path.startswith("M") and path.count("L") > 10, line
    legend = page.locator("#best-chart .legend text").all_text_contents()
    assert legend[0] == "best single run"
    assert re.fullmatch(r"best config: mean over its (1 run|\d+ runs)", legend[1])
    assert page.locator("#best-chart circle.point").count() == sum(
        1 for n in nodes if n["status"] == "completed"
    )
    assert page.locator("#replicates tbody tr").count() >= 1


def test_a_short_signal_sweep_counts_whole_nodes_and_shows_the_headline_first(browser, tmp_path):
    """On 8 nodes the best-so-far chart's axis marks node ids, not fractions of one; with a regime's
    metrics the node table shows the objective and the regime's headline, and the panel groups the
    metrics as a run's own table does (headline, other read-outs, oracle, run); a sweep without a
    failed node says so."""
    from hydra_llm.schemas.evaluation import RUN_METRICS, SignalEvaluation

    sweep = build_sweep(tmp_path, n_nodes=8)
    path = sweep / "exploration" / "state.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    names = (*SignalEvaluation.METRICS, *RUN_METRICS)
    for node in state["nodes"]:
        score = node["metrics"].get("r2", 0.5)  # the failed node (5) completes too
        node["status"], node["metrics"] = (
            "completed",
            {name: score - i / 1000 for i, name in enumerate(names)},
        )
    path.write_text(json.dumps(state), encoding="utf-8")
    objective = {"metric": "tau_R2", "direction": "maximize", "target": None}
    report = write_report(sweep, objective, "Toy sweep: 8 nodes, the signal regime's metrics")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(report.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    labels = page.locator("#best-chart > g:first-of-type .tick text").all_text_contents()
    assert len(labels) >= 4 and all(label.isdigit() for label in labels), labels
    assert [int(label) for label in labels] == sorted({int(label) for label in labels})
    assert int(labels[0]) >= 1 and int(labels[-1]) <= 8
    assert page.locator("#failed-list").inner_text() == "Failed nodes: none"

    headers = [h.split(" ")[0] for h in page.locator("#nodes-table th").all_inner_texts()]
    assert headers[5:] == ["tau_R2", "connectivity_R2", "cluster_accuracy", "test_R2", "test_pearson"]
    done = next(n for n in state["nodes"] if n["status"] == "completed")
    page.click(f'#nodes-table tr[data-id="{done["id"]}"]')
    rows = page.locator("#panel h3:text-is('Metrics') + table tr").all_inner_texts()
    titles = [r for r in rows if "\t" not in r]
    keys = [r.split("\t")[0] for r in rows if "\t" in r]
    page.close()
    assert titles == [
        "headline (read from what the model learned)",
        "other read-outs",
        "oracle (borrow from the ground truth)",
        "run",
    ]
    assert rows[0] == titles[0] and keys[:5] == list(SignalEvaluation.HEADLINE)
    oracle = [k for k in keys if k.endswith("_oracle")]
    assert oracle == sorted(oracle) and keys[-len(RUN_METRICS) - len(oracle) : -len(RUN_METRICS)] == oracle
    assert keys[-len(RUN_METRICS) :] == list(RUN_METRICS) and len(keys) == len(names)
