"""The exploration report: ``exploration/report.html``, one self-contained page for a browser.

Everything is read from the sweep folder (``exploration/state.json`` and the protocol diffs
``exploration/protocol/block_NNN.diff``) and the page works offline from a ``file://`` URL: d3 v7,
the CSS, the script and the data are inline; plots are linked by their path relative to
``exploration/`` (only PNG files inside the sweep folder). The page shows:

1. the exploration tree of one block or of all blocks (d3 tree layout, zoom and pan, collapsible
   subtrees): nodes coloured by the objective (higher is better whatever the direction: for a target,
   closeness to it), failed nodes outlined in red with a cross, and the list of failed nodes;
2. a side panel for a clicked node: identity, status, strategy, hypothesis, observation, error,
   mutation, its overrides against its parent's, simulation, metrics (in the groups of a run's own
   table: headline, other read-outs, oracle, run), seeds and plots;
3. a sortable table of all nodes (the objective and the regime's headline metrics);
4. the objective so far against node id: of the best single run, and the mean over its replicates of
   the config the sweep names best (:func:`hydra_llm.explore.reports.best_so_far`, as its console and
   W&B's ``best_so_far``);
5. the replicate table: configs with two or more completed runs (runs, mean, std, CV);
6. per block: the block summary and the protocol rules diff.

Every string in the state may come from an LLM: the data is embedded as JSON that cannot close its
``<script>`` element, the page inserts text only as text (never as HTML), and a Content Security
Policy allows only the page's own two scripts (by hash) and no network access.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hydra_llm.explore.reports import best_so_far
from hydra_llm.explore.tree import Node, config_hash, stats
from hydra_llm.files import atomic_write_text
from hydra_llm.schemas.evaluation import headline_of, metric_groups

REPORT_NAME = "report.html"
TEXT_LIMIT = 5000  # characters kept of one LLM text field of a node
BLOCK_TEXT_LIMIT = 50_000  # of a block summary or protocol diff
TABLE_METRICS = 3  # metrics shown in the node table besides the objective, where no headline is known
_DIRECTIONS = ("maximize", "minimize", "target")
# What must never appear raw inside <script>: it could end the element (or start an HTML comment);
# U+2028/2029 are escaped for older JS parsers.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def write_report(sweep_dir: Path, objective: Mapping[str, Any], title: str) -> Path:
    """Write ``exploration/report.html`` of ``sweep_dir`` (atomically) and return its path.

    ``objective`` has ``metric``, ``direction`` (maximize / minimize / target) and ``target``.
    Odd or missing data (no state yet, missing keys, NaN metrics) gives a sparser page, never an error.
    """
    sweep_dir = Path(sweep_dir)
    data = build_data(sweep_dir, objective, title)
    path = sweep_dir / "exploration" / REPORT_NAME
    atomic_write_text(path, render_page(data, title))
    return path


# ---------------------------------------------------------------------------------------------- data
def build_data(sweep_dir: Path, objective: Mapping[str, Any], title: str) -> dict[str, Any]:
    """The JSON data the page draws: header, nodes, blocks, replicate groups and the best-so-far curve."""
    exploration = Path(sweep_dir) / "exploration"
    warnings: list[str] = []
    state = _read_state(exploration / "state.json", warnings)
    obj = _objective(objective, warnings)
    nodes = _nodes(state.get("nodes"), obj, Path(sweep_dir), warnings)
    replicates = _replicates(nodes)
    best = _best_so_far(nodes, obj["metric"])
    metrics = {k for n in nodes for k in n["metrics"]}
    headline = headline_of(metrics)  # the regime's, judged on every metric the runs returned
    for node in nodes:
        del node["_hash"], node["_run"]
    return {
        "title": _text(title, 500),
        "sweep_id": _text(state.get("sweep_id"), 500),
        "proposer": _text(state.get("proposer"), 500),
        "iteration": _text(state.get("iteration"), 50),
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "objective": obj,
        "nodes": nodes,
        "table_metrics": _table_metrics(nodes, obj["metric"], headline),
        "metric_groups": metric_groups(metrics, headline),
        "root_values": _root_values(state.get("search_space")),
        "blocks": _blocks(nodes, state.get("block_summaries"), exploration / "protocol"),
        "code": _code_versions(state.get("code"), exploration / "code"),
        "replicates": replicates,
        "best": best,
        "warnings": warnings,
    }


def _read_state(path: Path, warnings: list[str]) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        warnings.append("no exploration/state.json yet")
        return {}
    except (OSError, ValueError) as err:
        warnings.append(f"exploration/state.json is unreadable: {type(err).__name__}: {_text(err, 300)}")
        return {}
    return state if isinstance(state, dict) else {}


def _objective(objective: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    objective = objective if isinstance(objective, Mapping) else {}
    metric = _text(objective.get("metric"), 200)
    direction = objective.get("direction")
    target = _finite(objective.get("target"))
    if direction not in _DIRECTIONS or (direction == "target" and target is None):
        warnings.append(f"objective direction {_text(direction, 50)!r} (target {target}): shown as maximize")
        direction = "maximize"
    return {"metric": metric, "direction": direction, "target": target}


def _score(value: float | None, obj: Mapping[str, Any]) -> float | None:
    """Higher is better: the value, its negative, or minus the distance to the target."""
    if value is None:
        return None
    if obj["direction"] == "minimize":
        return -value
    if obj["direction"] == "target":
        return -abs(value - obj["target"])
    return value


def _nodes(raw: Any, obj: Mapping[str, Any], sweep_dir: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """Node records for the page, sorted by id (records without an integer id are left out)."""
    nodes: dict[int, dict[str, Any]] = {}
    for item in raw if isinstance(raw, list) else []:
        item = item if isinstance(item, dict) else {}
        node_id = _int(item.get("id"))
        if node_id is None or node_id in nodes:
            warnings.append(f"a node record without a unique integer id was left out ({_text(item, 80)})")
            continue
        metrics = _dict(item.get("metrics"))
        status = "completed" if item.get("status") == "completed" else "failed"
        value = _finite(metrics.get(obj["metric"])) if status == "completed" else None
        score = _score(value, obj)
        overrides, simulation = _dict(item.get("overrides")), _dict(item.get("simulation"))
        code_version = _int(item.get("code_version")) or 0
        mutation_text = _text(item.get("mutation_text"), TEXT_LIMIT) or "; ".join(
            f"{k}={_value(v)}" for k, v in _dict(item.get("mutation")).items()
        )
        nodes[node_id] = {
            "id": node_id,
            "parent": _int(item.get("parent")),
            "block": _int(item.get("block")) or 0,
            "slot": _int(item.get("slot")),
            "job_num": _int(item.get("job_num")),
            "status": status,
            "strategy": _text(item.get("strategy"), 200),
            "classification": _text(item.get("classification"), 100),
            "hypothesis": _text(item.get("hypothesis"), TEXT_LIMIT),
            "observation": _text(item.get("observation"), TEXT_LIMIT),
            "error": _text(item.get("error"), TEXT_LIMIT),
            "mutation_text": mutation_text,
            "overrides": {k: _value(v) for k, v in overrides.items()},
            "simulation": {k: _value(v) for k, v in simulation.items()},
            "seeds": {k: _value(v) for k, v in _dict(item.get("seeds")).items()},
            "code_version": code_version,
            "metrics": {k: _metric(v) for k, v in metrics.items()},
            "output_dir": _text(item.get("output_dir"), 1000),
            "plots": _plots(item.get("plots"), sweep_dir),
            "value": value,
            "score": score,
            # for the replicate groups and the best config only (removed before the data goes to the page)
            "_hash": config_hash(overrides, simulation, code_version),
        }
        run = _as_run(nodes[node_id], overrides, simulation, item.get("reward"), obj["metric"])
        nodes[node_id]["_run"] = run
    for node in nodes.values():
        # The tree parent: an earlier node of the same block, else the block's root. Parents always
        # have smaller ids, which also rules out cycles in odd data.
        parent = nodes.get(node["parent"]) if node["parent"] is not None else None
        ok = parent is not None and parent["id"] < node["id"] and parent["block"] == node["block"]
        node["tree_parent"] = node["parent"] if ok else None
    return [nodes[i] for i in sorted(nodes)]


def _plots(raw: Any, sweep_dir: Path) -> list[str]:
    """URL paths relative to ``exploration/`` of the PNG files inside the sweep folder."""
    root = sweep_dir.resolve()
    out = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, str) or not item.lower().endswith(".png"):
            continue
        try:
            path = (root / item).resolve()
            usable = path.is_relative_to(root) and path.is_file()
        except (OSError, RuntimeError, ValueError):
            continue
        if usable:
            out.append(quote(Path(os.path.relpath(path, root / "exploration")).as_posix()))
    return out


def _table_metrics(nodes: list[dict[str, Any]], metric: str, headline: Sequence[str]) -> list[str]:
    """The objective metric, then the other ``headline`` metrics in their order; for a user's own
    evaluation, which has no headline, its most common metrics."""
    others = [k for k in headline if k != metric]
    if not others:
        counts = Counter(k for n in nodes for k in n["metrics"] if k != metric)
        others = sorted(counts, key=lambda k: (-counts[k], k))[:TABLE_METRICS]
    return [metric, *others]


def _root_values(space: Any) -> dict[str, str]:
    """The block root's value of each searched key (the search space's defaults), as the page shows
    values: what a node runs with where it overrides nothing."""
    params = _dict(space).get("params")
    specs = [*params, *(_dict(space).get("block_params") or [])] if isinstance(params, list) else []
    return {str(p["key"]): _value(p.get("default")) for p in specs if isinstance(p, dict) and "key" in p}


def _blocks(nodes: list[dict[str, Any]], summaries: Any, protocol_dir: Path) -> list[dict[str, Any]]:
    summaries = _dict(summaries)
    diffs: dict[int, str] = {}
    try:
        diff_files = sorted(protocol_dir.glob("block_*.diff"))
    except OSError:
        diff_files = []
    for path in diff_files:
        match = re.fullmatch(r"block_(\d+)\.diff", path.name)
        if match:
            try:
                diffs[int(match.group(1))] = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
    numbers = {n["block"] for n in nodes} | set(diffs)
    numbers |= {int(k) for k in summaries if re.fullmatch(r"\d{1,9}", k)}
    return [
        {
            "block": b,
            "summary": _text(summaries.get(str(b)), BLOCK_TEXT_LIMIT),
            "diff": _text(diffs.get(b), BLOCK_TEXT_LIMIT),
        }
        for b in sorted(numbers)
    ]


def _code_versions(code: Any, folder: Path) -> list[dict[str, Any]]:
    """The edited code versions (when the sweep edits code): status, rationale and diff of each."""
    out = []
    for item in _dict(code).get("versions") or []:
        number = _int(_dict(item).get("id"))
        if not number:
            continue
        try:
            diff = (folder / f"v{number:03d}" / "diff.patch").read_text(encoding="utf-8", errors="replace")
        except OSError:
            diff = ""
        out.append(
            {
                "id": number,
                "parent": _int(item.get("parent")) or 0,
                "status": _text(item.get("status"), 50),
                "block": _int(item.get("block")),
                "rationale": _text(item.get("rationale"), TEXT_LIMIT),
                "reason": _text(item.get("reason"), TEXT_LIMIT),
                "diff": _text(diff, BLOCK_TEXT_LIMIT),
            }
        )
    return out


def _replicates(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Config groups (same overrides and simulation) with at least two completed runs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        groups.setdefault(node["_hash"], []).append(node)
    out = []
    for key, members in groups.items():
        runs = [n for n in members if n["value"] is not None]
        if len(runs) < 2:
            continue
        s = stats(n["value"] for n in runs)
        first = members[0]
        config = ", ".join(f"{k}={v}" for k, v in {**first["simulation"], **first["overrides"]}.items())
        out.append(
            {
                "config": key,
                "text": config or "block root config",
                "nodes": [n["id"] for n in members],
                "runs": [n["id"] for n in runs],
                "mean": _finite(s.mean),
                "std": _finite(s.std),
                "cv": _finite(s.cv),
            }
        )
    return out


def _as_run(
    node: Mapping[str, Any], overrides: dict[str, Any], simulation: dict[str, Any], reward: Any, metric: str
) -> Node | None:
    """A page node as the sweep judges it (its config, status, objective value and reward: the state's
    own, else the page's score), for :func:`best_so_far`; None for a failed run without a reward."""
    reward = _finite(reward)
    reward = node["score"] if reward is None else reward
    if reward is None:
        return None
    return Node(
        id=node["id"], parent=None, block=0, slot=0, strategy="", overrides=overrides, mutation={},
        simulation=simulation, seeds={}, job_num=0, status=node["status"], reward=reward,
        metrics={} if node["value"] is None else {metric: node["value"]}, code_version=node["code_version"],
    )  # fmt: skip


def _best_so_far(nodes: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One point per completed node (id order): its value, the best single value up to it, and the
    mean ``metric`` of the best config up to it (judged on its replicates, as the sweep judges it) with
    its number of completed runs."""
    runs = [n["_run"] for n in nodes if n["_run"] is not None]
    configs = {run.id: best for run, best in zip(runs, best_so_far(runs), strict=True)}
    points: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for node in nodes:
        if node["score"] is None:
            continue
        if best is None or node["score"] > best["score"]:
            best = node
        point = {"id": node["id"], "value": node["value"], "best": best["value"], "best_id": best["id"]}
        config = configs.get(node["id"])
        group = config.stats(metric) if config is not None else None
        point["config"] = _finite(group.mean) if group is not None and group.runs else None
        point["config_runs"] = group.runs if group is not None else 0
        points.append(point)
    return points


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _metric(value: Any) -> float | str:
    """A finite number as is, anything else (NaN, inf, text) as text."""
    number = _finite(value)
    return number if number is not None else _text(value, 100)


def _value(value: Any) -> str:
    """A config value as the text the page shows."""
    if isinstance(value, str):
        return _text(value, 500)
    return _text(json.dumps(value, default=str), 500)


def _dict(value: Any) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _text(value: Any, limit: int) -> str:
    """``value`` as text of at most ``limit`` characters ('' for None)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------- page
def render_page(data: Mapping[str, Any], title: str) -> str:
    """The HTML page: the template with d3, the page script and the escaped JSON data inlined."""
    d3 = resources.files("hydra_llm.explore").joinpath("assets/d3.v7.min.js").read_text(encoding="utf-8")
    d3 = re.sub(r"</(script)", r"<\\/\1", d3, flags=re.IGNORECASE)
    # ASCII only: lone surrogates from odd JSON become escapes instead of failing the UTF-8 write
    payload = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    payload = re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_ESCAPES[m.group(0)], payload)
    csp = (
        "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
        f"script-src {_sha256(d3)} {_sha256(_SCRIPT)}; base-uri 'none'; form-action 'none'"
    )
    parts = {
        "TITLE": html.escape(_text(title, 500).encode("utf-8", "replace").decode("utf-8")),
        "CSP": html.escape(csp),
        "D3": d3,
        "SCRIPT": _SCRIPT,
        "DATA": payload,
    }
    # One pass, so that nothing inserted is searched for placeholders again.
    return re.sub(r"@@(TITLE|CSP|D3|SCRIPT|DATA)@@", lambda m: parts[m.group(1)], _PAGE)


def _sha256(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    return f"'sha256-{digest}'"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="@@CSP@@">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@@TITLE@@</title>
<style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header, main > section { padding: 8px 16px; }
header { background: #fff; border-bottom: 1px solid #ddd; }
h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 12px 0 6px; }
h3 { font-size: 13px; margin: 10px 0 4px; }
.meta span { margin-right: 14px; color: #555; } .warn { color: #a60; }
main { margin-right: 0; } body.panel-open main { margin-right: 440px; }
#tree-box { position: relative; background: #fff; border: 1px solid #ddd; height: 620px; }
#tree-box svg { width: 100%; height: 100%; display: block; cursor: grab; }
.controls { margin-bottom: 6px; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
.link { fill: none; stroke: #bbb; stroke-width: 1.2px; }
g.node circle.dot { stroke: #333; stroke-width: 0.8px; cursor: pointer; }
g.node.failed circle.dot { stroke: #d00; stroke-width: 2.5px; }
g.node .cross { stroke: #d00; stroke-width: 1.6px; pointer-events: none; }
g.node.selected circle.dot { stroke: #06f; stroke-width: 3px; }
g.node text, g.vnode text { font-size: 10px; fill: #333; cursor: pointer; }
g.vnode circle { fill: #fff; stroke: #888; stroke-dasharray: 2 2; }
g.vnode text { font-weight: bold; }
.toggle rect { fill: #fff; stroke: #666; cursor: pointer; }
.toggle text { font-size: 9px; pointer-events: none; }
#legend { font-size: 11px; color: #555; }
#failed-list button, .idlink { font: inherit; border: 1px solid #d00; background: #fff; color: #d00;
  border-radius: 3px; margin: 1px; padding: 0 4px; cursor: pointer; }
.idlink { border-color: #888; color: #036; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
#nodes-table th { cursor: pointer; user-select: none; background: #f0f0f0; }
#nodes-table tbody tr { cursor: pointer; } #nodes-table tbody tr:hover { background: #eef4ff; }
#nodes-table td.num, #replicates td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { color: #b00; }
.scroll { max-height: 420px; overflow: auto; display: inline-block; border: 1px solid #ddd; }
pre { background: #fff; border: 1px solid #ddd; padding: 6px; white-space: pre-wrap; word-break: break-word;
  margin: 4px 0; max-height: 360px; overflow: auto; }
pre .add { color: #080; } pre .del { color: #c00; } pre .hunk { color: #66a; }
#panel { position: fixed; top: 0; right: 0; width: 420px; height: 100%; overflow-y: auto; background: #fff;
  border-left: 2px solid #888; padding: 8px 12px; box-sizing: border-box; box-shadow: -2px 0 6px #0002; }
#panel[hidden] { display: none; }
#panel .close { float: right; cursor: pointer; }
#panel dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px; margin: 4px 0; }
#panel dt { color: #666; }
#panel dd, #panel .text { margin: 0; white-space: pre-wrap; word-break: break-word; }
#panel table { font-size: 12px; margin: 4px 0; } #panel tr.changed td { background: #fff4d0; }
#panel tr.group th { text-align: left; font-weight: normal; font-style: italic; color: #555; }
#panel img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
#best-chart .best-line { fill: none; stroke: #06c; stroke-width: 2px; }
#best-chart .config-line { fill: none; stroke: #393; stroke-width: 2px; stroke-dasharray: 6 3; }
#best-chart .legend { font-size: 11px; }
#best-chart .point { fill: #999; } #best-chart .target { stroke: #c60; stroke-dasharray: 4 3; }
#best-chart .block-line { stroke: #aaa; stroke-dasharray: 2 3; }
#best-chart .block-label { font-size: 10px; fill: #888; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div class="meta" id="meta"></div>
  <div class="warn" id="warnings"></div>
</header>
<main>
  <section id="tree-section">
    <h2>Exploration tree</h2>
    <div class="controls">
      <label>Block <select id="block-select"></select></label>
      <button id="fit">Fit</button>
      <span id="legend"></span>
    </div>
    <div id="tree-box"><svg id="tree"></svg></div>
    <p>Click a node for its details; double click it (or click its box) to fold its subtree;
      scroll to zoom, drag to pan.</p>
    <div id="failed-list"></div>
  </section>
  <section><h2>Nodes</h2>
    <div class="scroll"><table id="nodes-table"><thead></thead><tbody></tbody></table></div>
  </section>
  <section><h2 id="best-title">Best so far</h2><svg id="best-chart" width="760" height="280"></svg></section>
  <section><h2>Replicates (same config, two or more completed runs)</h2><div id="replicates"></div></section>
  <section><h2>Blocks</h2><div id="blocks"></div></section>
  <section id="code-section" hidden><h2>Code versions</h2><div id="code"></div></section>
</main>
<aside id="panel" hidden></aside>
<script type="application/json" id="data">@@DATA@@</script>
<script>@@D3@@</script>
<script>@@SCRIPT@@</script>
</body>
</html>
"""

# The page script. Data is only ever inserted with textContent / d3 .text() / attributes we compute.
_SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const NODES = DATA.nodes;
const BY_ID = new Map(NODES.map(n => [n.id, n]));
const METRIC = DATA.objective.metric;
const num = d3.format(".4~g");
const fmt = v => (v === null || v === undefined || v === "") ? "–"
  : (typeof v === "number" ? num(v) : String(v));
const scores = NODES.map(n => n.score).filter(s => s !== null);
const colour = d3.scaleSequential(d3.interpolateViridis).domain(scores.length ? d3.extent(scores) : [0, 1]);
const nodeFill = n => n.score === null ? "#ddd" : colour(n.score);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function kvTable(rows, head) {
  const t = el("table");
  if (head) { const tr = t.createTHead().insertRow(); head.forEach(h => tr.appendChild(el("th", h))); }
  const body = t.createTBody();
  rows.forEach(r => {
    const tr = body.insertRow();
    if (r.title) {  // a group's title across the row
      const th = el("th", r.title); th.colSpan = 2; tr.appendChild(th); tr.className = "group";
      return;
    }
    r.cells.forEach(c => tr.appendChild(el("td", fmt(c))));
    if (r.cls) tr.className = r.cls;
  });
  return t;
}

function idButton(id, cls) {
  const b = el("button", id, cls || "idlink");
  b.addEventListener("click", () => showPanel(BY_ID.get(id)));
  return b;
}

function header() {
  document.getElementById("title").textContent = DATA.title || "Exploration report";
  const meta = document.getElementById("meta");
  const failed = NODES.filter(n => n.status === "failed").length;
  const o = DATA.objective;
  const goal = o.direction === "target" ? "closest to " + fmt(o.target) : o.direction;
  [["sweep", DATA.sweep_id], ["proposer", DATA.proposer], ["iteration", DATA.iteration],
   ["nodes", NODES.length], ["failed", failed], ["objective", METRIC + " (" + goal + ")"],
   ["written", DATA.generated]].forEach(([k, v]) => meta.appendChild(el("span", k + ": " + fmt(v))));
  const w = document.getElementById("warnings");
  DATA.warnings.forEach(text => w.appendChild(el("div", text)));
}

// ------------------------------------------------------------------------------------------ tree
const svg = d3.select("#tree");
const view = svg.append("g");
const linkLayer = view.append("g");
const nodeLayer = view.append("g");
let userMoved = false;  // once the user zooms or pans, a resize (panel opened) no longer refits
const zoom = d3.zoom().scaleExtent([0.05, 8]).on("zoom", e => {
  view.attr("transform", e.transform);
  if (e.sourceEvent) userMoved = true;
});
svg.call(zoom).on("dblclick.zoom", null);
new ResizeObserver(() => { if (!userMoved) fitTree(); }).observe(svg.node());
let treeRoot = null;
let selectedId = null;

function hierarchyFor(choice) {
  const blocks = choice === "all" ? DATA.blocks.map(b => b.block) : [Number(choice)];
  const roots = blocks.map(b => {
    const root = {key: "root-" + b, label: "block " + b, children: []};
    const items = new Map();
    NODES.filter(n => n.block === b).forEach(n => items.set(n.id, {key: "n" + n.id, node: n, children: []}));
    items.forEach(item => (items.get(item.node.tree_parent) || root).children.push(item));
    return root;
  });
  const top = roots.length === 1 ? roots[0] : {key: "sweep", label: "sweep", children: roots};
  return d3.hierarchy(top, d => (d.children && d.children.length ? d.children : null));
}

function toggle(d) {
  if (d.children) { d._children = d.children; d.children = null; }
  else if (d._children) { d.children = d._children; d._children = null; }
  updateTree();
}

function updateTree() {
  d3.tree().nodeSize([18, 70])(treeRoot);
  const link = d3.linkHorizontal().x(d => d.y).y(d => d.x);
  linkLayer.selectAll("path").data(treeRoot.links(), d => d.target.data.key)
    .join("path").attr("class", "link").attr("d", link);
  nodeLayer.selectAll("g.node, g.vnode").data(treeRoot.descendants(), d => d.data.key)
    .join(enter => {
      const g = enter.append("g");
      g.attr("class", d => !d.data.node ? "vnode" : d.data.node.status === "failed" ? "node failed" : "node");
      g.filter(d => d.data.node).attr("data-id", d => d.data.node.id);
      g.append("circle").attr("class", "dot").attr("r", d => d.data.node ? 5.5 : 7)
        .attr("fill", d => d.data.node ? nodeFill(d.data.node) : null);
      g.filter(d => d.data.node && d.data.node.status === "failed").append("path")
        .attr("class", "cross").attr("d", "M-3.5,-3.5L3.5,3.5M-3.5,3.5L3.5,-3.5");
      g.append("text").attr("x", 8).attr("dy", "0.32em")
        .text(d => d.data.node ? d.data.node.id : d.data.label);
      g.append("title");
      const t = g.append("g").attr("class", "toggle").attr("transform", "translate(-16,0)");
      t.append("rect").attr("x", -5).attr("y", -5).attr("width", 10).attr("height", 10).attr("rx", 2);
      t.append("text").attr("text-anchor", "middle").attr("dy", "0.35em");
      t.on("click", (e, d) => { e.stopPropagation(); toggle(d); });
      g.filter(d => d.data.node).on("click", (e, d) => showPanel(d.data.node));
      g.on("dblclick", (e, d) => { e.stopPropagation(); toggle(d); });
      return g;
    })
    .attr("transform", d => "translate(" + d.y + "," + d.x + ")")
    .classed("selected", d => d.data.node && d.data.node.id === selectedId)
    .each(function (d) {
      const folded = !!d._children;
      const t = d3.select(this).select(".toggle").style("display", d.children || folded ? null : "none");
      t.select("text").text(folded ? "+" : "−");
      d3.select(this).select("title").text(d.data.node ? "node " + d.data.node.id + " · " +
        d.data.node.status + " · " + METRIC + " " + fmt(d.data.node.metrics[METRIC]) +
        (folded ? " · folded: " + d._children.length + " children" : "") : d.data.label);
    });
}

function fitTree() {
  const box = view.node().getBBox();
  const w = svg.node().clientWidth, h = svg.node().clientHeight;
  if (!box.width || !box.height || !w || !h) return;
  const k = Math.max(0.05, Math.min(1.6, 0.95 * Math.min(w / box.width, h / box.height)));
  svg.call(zoom.transform, d3.zoomIdentity
    .translate(w / 2 - k * (box.x + box.width / 2), h / 2 - k * (box.y + box.height / 2)).scale(k));
}

function drawTree() {
  treeRoot = hierarchyFor(document.getElementById("block-select").value);
  userMoved = false;
  updateTree();
  fitTree();
}

function treeControls() {
  const select = document.getElementById("block-select");
  DATA.blocks.forEach(b => {
    const count = NODES.filter(n => n.block === b.block).length;
    const opt = el("option", "block " + b.block + " (" + count + " nodes)");
    opt.value = String(b.block);
    select.appendChild(opt);
  });
  const all = el("option", "all blocks (" + NODES.length + " nodes)");
  all.value = "all";
  select.appendChild(all);
  const last = NODES.length ? NODES[NODES.length - 1].block : null;
  select.value = last === null ? "all" : String(last);
  select.addEventListener("change", drawTree);
  document.getElementById("fit").addEventListener("click", fitTree);
  const o = DATA.objective;
  const what = o.direction === "target" ? "closeness of " + METRIC + " to " + fmt(o.target) : METRIC +
    (o.direction === "minimize" ? " (lower is better)" : "");
  const [lo, hi] = colour.domain();
  const legend = document.getElementById("legend");
  legend.appendChild(el("span", "colour: " + what + "; worse "));
  const ramp = d3.select(legend).append("svg").attr("width", 120).attr("height", 10);
  d3.range(0, 1.0001, 0.1).forEach((t, i) => ramp.append("rect").attr("x", i * 11).attr("width", 11)
    .attr("height", 10).attr("fill", d3.interpolateViridis(t)));
  const shown = s => fmt(o.direction === "maximize" ? s : -s);  // back from scores to values / distances
  legend.appendChild(el("span", " better (" + shown(lo) + " … " + shown(hi) +
    (o.direction === "target" ? " from the target" : "") + "); grey: no value; red ring and cross: failed"));
  const failedBox = document.getElementById("failed-list");
  const failed = NODES.filter(n => n.status === "failed");
  const failedTitle = failed.length ? "Failed nodes (" + failed.length + "): " : "Failed nodes: none";
  failedBox.appendChild(el("span", failedTitle));
  failed.forEach(n => failedBox.appendChild(idButton(n.id, "failed-node")));
}

// ----------------------------------------------------------------------------------------- panel
function panelSection(panel, title, content) {
  panel.appendChild(el("h3", title));
  panel.appendChild(typeof content === "string" ? el("div", content || "–", "text") : content);
}

// a key a node does not override runs at the block root's value (the search space's default)
const rootValue = k => k in DATA.root_values ? DATA.root_values[k] + " (root)" : "(root)";

function showPanel(n) {
  if (!n) return;
  const select = document.getElementById("block-select");
  if (select.value !== "all" && Number(select.value) !== n.block) {  // show the node's block
    select.value = String(n.block);
    drawTree();
  }
  selectedId = n.id;
  nodeLayer.selectAll("g.node").classed("selected", d => d.data.node.id === n.id);
  const panel = document.getElementById("panel");
  panel.replaceChildren();
  const close = el("button", "close ✕", "close");
  close.addEventListener("click", () => {
    panel.hidden = true;
    document.body.classList.remove("panel-open");
  });
  panel.appendChild(close);
  panel.appendChild(el("h2", "Node " + n.id));
  const dl = el("dl");
  [["parent", n.parent === null ? "root" : n.parent], ["block", n.block], ["slot", n.slot],
   ["job", n.job_num], ["status", n.status], ["class", n.classification], ["strategy", n.strategy],
   [METRIC, n.metrics[METRIC]], ["folder", n.output_dir]].forEach(([k, v]) => {
    dl.appendChild(el("dt", k));
    dl.appendChild(el("dd", fmt(v)));
  });
  panel.appendChild(dl);
  if (n.parent !== null && BY_ID.has(n.parent)) {
    const p = el("div"); p.appendChild(el("span", "go to parent ")); p.appendChild(idButton(n.parent));
    panel.appendChild(p);
  }
  panelSection(panel, "Mutation", n.mutation_text ||
    (n.parent === null ? "none: block root config" : "none: re-run of the parent's config"));
  panelSection(panel, "Hypothesis", n.hypothesis);
  panelSection(panel, "Observation", n.observation);
  if (n.error) panelSection(panel, "Error", el("pre", n.error));
  const parent = BY_ID.get(n.parent);
  const before = parent ? parent.overrides : {};
  const keys = [...new Set([...Object.keys(before), ...Object.keys(n.overrides)])].sort();
  const rows = keys.map(k => ({cells: [k, before[k] ?? rootValue(k), n.overrides[k] ?? rootValue(k)],
    cls: before[k] === n.overrides[k] ? "" : "changed"}));
  panelSection(panel, "Overrides vs parent" + (parent ? " (node " + parent.id + ")" : " (block root)"),
    keys.length ? kvTable(rows, ["key", "parent", "node"]) : "root config");
  const kv = o => Object.keys(o).sort().map(k => ({cells: [k, o[k]]}));
  if (Object.keys(n.simulation).length) panelSection(panel, "Simulation", kvTable(kv(n.simulation)));
  const metricRows = DATA.metric_groups.flatMap(([title, keys]) => {
    const held = keys.filter(k => k in n.metrics);
    return held.length ? [{title: title}, ...held.map(k => ({cells: [k, n.metrics[k]]}))] : [];
  });
  panelSection(panel, "Metrics", metricRows.length ? kvTable(metricRows) : "none");
  panelSection(panel, "Seeds", Object.keys(n.seeds).length ? kvTable(kv(n.seeds)) : "none");
  if (DATA.code.length) panelSection(panel, "Code version", versionName(n.code_version) +
    (n.code_version ? " (diff under Code versions)" : " (the installed code)"));
  if (n.plots.length) {
    const box = el("div");
    n.plots.forEach(src => {
      const a = el("a"); a.href = src; a.target = "_blank"; a.rel = "noopener";
      const img = el("img"); img.src = src; img.alt = decodeURIComponent(src.split("/").pop());
      a.appendChild(img); box.appendChild(a);
    });
    panelSection(panel, "Plots", box);
  }
  panel.hidden = false;
  document.body.classList.add("panel-open");
}

// ----------------------------------------------------------------------------------------- table
const COLUMNS = [
  {key: "id", label: "id"}, {key: "block", label: "block"}, {key: "parent", label: "parent"},
  {key: "strategy", label: "strategy"}, {key: "status", label: "status"},
  ...DATA.table_metrics.map(m => ({key: "metric:" + m, label: m, metric: m})),
];
let sortKey = "id", sortAsc = true;
const cellValue = (n, c) => c.metric ? n.metrics[c.metric] : n[c.key];

function compareRows(a, b) {
  const c = COLUMNS.find(col => col.key === sortKey);
  const x = cellValue(a, c), y = cellValue(b, c);
  const missing = v => v === null || v === undefined || v === "" || (c.metric && typeof v !== "number");
  if (missing(x) || missing(y)) return missing(x) - missing(y) || a.id - b.id;  // missing last
  const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
  return (sortAsc ? order : -order) || a.id - b.id;
}

function renderTable() {
  const table = document.getElementById("nodes-table");
  const head = table.tHead; head.replaceChildren();
  const tr = head.insertRow();
  COLUMNS.forEach(c => {
    const th = el("th", c.label + (c.key === sortKey ? (sortAsc ? " ▲" : " ▼") : ""));
    th.dataset.col = c.key;
    th.addEventListener("click", () => {
      sortAsc = c.key === sortKey ? !sortAsc : true;
      sortKey = c.key;
      renderTable();
    });
    tr.appendChild(th);
  });
  const body = table.tBodies[0]; body.replaceChildren();
  [...NODES].sort(compareRows).forEach(n => {
    const row = body.insertRow();
    row.dataset.id = n.id;
    if (n.status === "failed") row.className = "failed";
    COLUMNS.forEach(c => {
      const v = cellValue(n, c);
      const text = c.key === "parent" && v === null ? "root" : fmt(v);
      row.appendChild(el("td", text, typeof v === "number" ? "num" : ""));
    });
    row.addEventListener("click", () => showPanel(n));
  });
}

// ------------------------------------------------------------------------------------ best so far
function bestChart() {
  const pts = DATA.best;
  const o = DATA.objective;
  document.getElementById("best-title").textContent = "Best so far: " + METRIC + " (" +
    (o.direction === "target" ? "closest to " + fmt(o.target) : o.direction) + ")";
  const chart = d3.select("#best-chart");
  if (!pts.length) { chart.append("text").attr("x", 20).attr("y", 30).text("no completed node yet"); return; }
  const W = +chart.attr("width"), H = +chart.attr("height"), m = {l: 56, r: 16, t: 10, b: 34};
  const ids = d3.extent(pts, p => p.id);
  const configs = pts.filter(p => p.config !== null);
  const vals = pts.map(p => p.value).concat(configs.map(p => p.config), o.target === null ? [] : [o.target]);
  const x = d3.scaleLinear().domain(ids[0] === ids[1] ? [ids[0] - 1, ids[1] + 1] : ids).range([m.l, W - m.r]);
  const y = d3.scaleLinear().domain(d3.extent(vals)).nice().range([H - m.b, m.t]);
  const idTicks = x.ticks(Math.min(10, ids[1] - ids[0] + 1)).filter(Number.isInteger);  // node ids only
  chart.append("g").attr("transform", "translate(0," + (H - m.b) + ")")
    .call(d3.axisBottom(x).tickValues(idTicks).tickFormat(d3.format("d")));
  chart.append("g").attr("transform", "translate(" + m.l + ",0)").call(d3.axisLeft(y).ticks(6));
  chart.append("text").attr("x", (W + m.l) / 2).attr("y", H - 2).attr("text-anchor", "middle")
    .text("node id");
  if (o.direction === "target") {
    chart.append("line").attr("class", "target").attr("x1", m.l).attr("x2", W - m.r)
      .attr("y1", y(o.target)).attr("y2", y(o.target));
  }
  DATA.blocks.slice(1).forEach(b => {
    const first = d3.min(NODES.filter(n => n.block === b.block), n => n.id);
    if (first === undefined || first < ids[0] || first > ids[1]) return;
    chart.append("line").attr("class", "block-line").attr("x1", x(first)).attr("x2", x(first))
      .attr("y1", m.t).attr("y2", H - m.b);
    chart.append("text").attr("class", "block-label").attr("x", x(first) + 3).attr("y", m.t + 10)
      .text("block " + b.block);
  });
  chart.append("g").selectAll("circle").data(pts).join("circle").attr("class", "point").attr("r", 2)
    .attr("cx", p => x(p.id)).attr("cy", p => y(p.value));
  chart.append("path").attr("class", "best-line").datum(pts)
    .attr("d", d3.line().x(p => x(p.id)).y(p => y(p.best)).curve(d3.curveStepAfter));
  // what the sweep names its best: a config judged on its replicates (the console's and W&B's line)
  chart.append("path").attr("class", "config-line").datum(configs)
    .attr("d", d3.line().x(p => x(p.id)).y(p => y(p.config)).curve(d3.curveStepAfter));
  const last = configs.length ? configs[configs.length - 1] : null;
  const legend = chart.append("g").attr("class", "legend")
    .attr("transform", "translate(" + (W - m.r - 300) + "," + (H - m.b - 30) + ")");
  [["best-line", "best single run"],
   ["config-line", "best config: mean over its " + (last ? last.config_runs + " " : "") +
     (last && last.config_runs === 1 ? "run" : "runs")]]
    .forEach(([cls, text], i) => {
      legend.append("line").attr("class", cls).attr("x1", 0).attr("x2", 24)
        .attr("y1", 14 * i).attr("y2", 14 * i);
      legend.append("text").attr("x", 30).attr("y", 14 * i + 4).text(text);
    });
}

// ------------------------------------------------------------------------------ replicates, blocks
function replicates() {
  const box = document.getElementById("replicates");
  if (!DATA.replicates.length) { box.appendChild(el("p", "no config has two completed runs yet")); return; }
  const t = el("table");
  const tr = t.createTHead().insertRow();
  ["config id", "runs (node ids)", "n", "mean " + METRIC, "std", "CV", "config"]
    .forEach(h => tr.appendChild(el("th", h)));
  const body = t.createTBody();
  DATA.replicates.forEach(g => {
    const row = body.insertRow();
    row.appendChild(el("td", g.config));
    const ids = el("td"); g.runs.forEach(id => ids.appendChild(idButton(id))); row.appendChild(ids);
    row.appendChild(el("td", g.runs.length, "num"));
    row.appendChild(el("td", fmt(g.mean), "num"));
    row.appendChild(el("td", fmt(g.std), "num"));
    row.appendChild(el("td", g.cv === null ? "–" : (100 * g.cv).toFixed(1) + "%", "num"));
    row.appendChild(el("td", g.text));
  });
  const scroll = el("div", null, "scroll");
  scroll.appendChild(t);
  box.appendChild(scroll);
}

function blocks() {
  const box = document.getElementById("blocks");
  DATA.blocks.forEach(b => {
    const members = NODES.filter(n => n.block === b.block);
    const ids = members.map(n => n.id);
    const span = ids.length ? "nodes " + d3.min(ids) + "–" + d3.max(ids) : "no nodes";
    box.appendChild(el("h3", "Block " + b.block + " (" + span + ", " +
      members.filter(n => n.status === "failed").length + " failed)"));
    box.appendChild(el("div", "Summary"));
    box.appendChild(el("pre", b.summary || "(none yet)"));
    box.appendChild(el("div", "Protocol rules diff"));
    box.appendChild(diffPre(b.diff));
  });
}

function diffPre(text) {
  const pre = el("pre");
  if (!text) pre.textContent = "(no change)";
  text.split("\n").filter((line, i, all) => line || i < all.length - 1).forEach(line => {
    const cls = line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add"
      : line.startsWith("-") && !line.startsWith("---") ? "del" : "";
    pre.appendChild(el("span", line + "\n", cls));
  });
  return pre;
}

function versionName(id) { return "v" + String(id).padStart(3, "0"); }

function codeVersions() {
  if (!DATA.code.length) return;
  document.getElementById("code-section").hidden = false;
  const box = document.getElementById("code");
  DATA.code.forEach(v => {
    const ran = NODES.filter(n => n.code_version === v.id).map(n => n.id);
    box.appendChild(el("h3", versionName(v.id) + " (" + v.status + ", edit of " + versionName(v.parent) +
      ", block " + v.block + "; " + (ran.length ? "nodes " + ran.join(", ") : "no runs") + ")"));
    box.appendChild(el("pre", v.rationale + (v.reason ? "\n[" + v.reason + "]" : "")));
    box.appendChild(diffPre(v.diff));
  });
}

header();
treeControls();
drawTree();
renderTable();
bestChart();
replicates();
blocks();
codeVersions();
document.body.dataset.ready = "1";
"""
