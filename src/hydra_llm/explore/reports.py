"""Rendering of the sweep folder's text artefacts from structured state (nothing is parsed back).

- ``analysis.md``: one ``## Iter N:`` entry per node (config, metrics, reading);
- ``ucb_scores.txt``: ``Node N: UCB=..., parent=..., visits=..., R2=...`` sorted by UCB;
- ``variance.md``: replicate groups (runs, mean, std, CV per metric);
- ``optimization_results.yaml`` content: the best node's overrides, value, job number and folder;
- ``user_input.md`` bookkeeping (pending instructions, acknowledgements).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hydra_llm.explore.space import format_value
from hydra_llm.explore.tree import Node, Objective, UCBScore, stats

VARIANCE_METRICS = ("tau_R2", "V_rest_R2", "cluster_accuracy", "test_R2")
_EXTRA_UCB_METRICS = (
    ("Pearson", "test_pearson"),
    ("Cluster", "cluster_accuracy"),
    ("Time", "training_time_min"),
)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def metric_label(metric: str) -> str:
    """The short name the seeds use for the objective in ucb_scores.txt."""
    return "R2" if metric.endswith("R2") else metric


def render_config(node: Node) -> str:
    parts = [f"{k}={_num(v)}" for k, v in node.overrides.items()]
    sim = [f"{k}={_num(v)}" for k, v in node.simulation.items()]
    text = ", ".join(parts) if parts else "root config"
    return text + (f" | simulation: {', '.join(sim)}" if sim else "")


def render_entry(node: Node, next_parent: int | None | str) -> str:
    """One ``## Iter N:`` entry of analysis.md."""
    classification = node.classification or ("failed" if node.status == "failed" else "pending")
    if node.status == "failed":
        metrics = f"FAILED: {node.error or 'no error summary'}"
    else:
        metrics = ", ".join(f"{k}={_num(v)}" for k, v in sorted(node.metrics.items())) or "(none)"
    if node.mutation:
        mutation = node.mutation_text
    elif node.parent is None:
        mutation = "[none] — block root config"
    else:
        mutation = f"[none] — robustness re-run of Node {node.parent}"
    seeds = ", ".join(f"{k}={v}" for k, v in node.seeds.items())
    lines = [
        f"## Iter {node.id}: {classification}",
        f"Node: id={node.id}, parent={'root' if node.parent is None else node.parent}",
        f"Mode/Strategy: {node.strategy}",
        f"Config: {render_config(node)}",
        f"Seeds: {seeds}; job={node.job_num}; folder={node.output_dir}",
        f"Metrics: {metrics}",
        f"Mutation: {mutation}",
        f"Parent rule: {node.hypothesis or '-'}",
        f"Observation: {node.observation or '-'}",
        f"Next: parent={'root' if next_parent is None else next_parent}",
    ]
    return "\n".join(lines) + "\n"


def render_analysis(
    nodes: Sequence[Node],
    next_parents: Mapping[str, int | None | str],
    block_summaries: Mapping[str, str],
    n_iter_block: int,
    header: str,
) -> str:
    """The whole analysis.md: entries in iteration order, block summaries after each block's last entry."""
    out = [header.rstrip() + "\n"]
    ordered = sorted(nodes, key=lambda n: n.id)
    for index, node in enumerate(ordered):
        out.append(render_entry(node, next_parents.get(str(node.id), "-")))
        is_last_of_block = index + 1 == len(ordered) or ordered[index + 1].block != node.block
        summary = block_summaries.get(str(node.block))
        if is_last_of_block and summary:
            first = (node.block - 1) * n_iter_block + 1
            out.append(
                f"## Simulation Block {node.block} Summary (iters {first}-{node.id})\n{summary.strip()}\n"
            )
            out.append("--- NEW SIMULATION BLOCK ---\n")
    return "\n".join(out)


def render_ucb(
    scores: Sequence[UCBScore],
    objective: Objective,
    block: int,
    formula: str,
    c: float,
) -> str:
    """ucb_scores.txt, one line per node, sorted by UCB descending."""
    label = metric_label(objective.metric)
    ids = [s.node_id for s in scores]
    span = f"iters {min(ids)}-{max(ids)}" if ids else "no iterations yet"
    lines = [
        f"=== UCB Scores (Simulation block {block}, {span}, N={len(scores)}, c={c}, formula={formula}) ==="
    ]
    for score in scores:
        node = score.node
        value = node.metrics.get(objective.metric, math.nan) if node.status == "completed" else math.nan
        parts = [
            f"Node {score.node_id}: UCB={score.ucb:.3f}",
            f"parent={'root' if score.parent is None else score.parent}",
            f"visits={score.visits}",
            f"{label}={_num(value)}",
        ]
        if objective.direction != "maximize":
            parts.append(f"reward={score.reward:.4g}")
        parts += [
            f"{name}={_num(node.metrics[key])}" for name, key in _EXTRA_UCB_METRICS if key in node.metrics
        ]
        parts.append(f"Mutation={node.mutation_text or ('[none]' if node.parent is not None else 'root')}")
        lines.append(", ".join(parts))
    return "\n".join(lines) + "\n"


def variance_groups(nodes: Sequence[Node]) -> dict[str, list[Node]]:
    groups: dict[str, list[Node]] = {}
    for node in sorted(nodes, key=lambda n: n.id):
        groups.setdefault(node.config_hash, []).append(node)
    return groups


def render_variance(nodes: Sequence[Node], objective: Objective) -> str:
    """variance.md: one row per config group (runs, failures, mean ± std and CV per metric)."""
    metrics = [objective.metric] + [m for m in VARIANCE_METRICS if m != objective.metric]
    present = [m for m in metrics if any(m in n.metrics for n in nodes)] or [objective.metric]
    head = (
        "| Config ID | Nodes | Runs | Failed | "
        + " | ".join(f"{m} (mean ± std) | CV" for m in present)
        + " | Config |"
    )
    sep = "|" + "---|" * (4 + 2 * len(present) + 1)
    rows = [head, sep]
    for key, members in variance_groups(nodes).items():
        done = [n for n in members if n.status == "completed"]
        cells = []
        for metric in present:
            s = stats(
                n.metrics[metric] for n in done if metric in n.metrics and math.isfinite(n.metrics[metric])
            )
            if s.runs == 0:
                cells += ["-", "-"]
            else:
                cv = "-" if s.runs < 2 or math.isnan(s.cv) else f"{100 * s.cv:.1f}%"
                cells += [f"{s.mean:.4f} ± {s.std:.4f}", cv]
        ids = ",".join(str(n.id) for n in members)
        failed = len(members) - len(done)
        row = [key, ids, str(len(members)), str(failed), *cells, render_config(members[0])]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows) + "\n"


def best_node(nodes: Sequence[Node]) -> Node | None:
    """The completed node with the highest reward (lowest id on ties)."""
    done = [n for n in nodes if n.status == "completed"]
    return max(done, key=lambda n: (n.reward, -n.id)) if done else None


def best_so_far(nodes: Sequence[Node]) -> list[Node | None]:
    """For each node in id order, the best completed node among it and the nodes before it
    (as :func:`best_node` picks: highest reward, lowest id on ties)."""
    out: list[Node | None] = []
    top: Node | None = None
    for node in sorted(nodes, key=lambda n: n.id):
        if node.status == "completed" and (top is None or node.reward > top.reward):
            top = node
        out.append(top)
    return out


def optimization_results(
    nodes: Sequence[Node], objective: Objective, fixed: Sequence[str], name: str
) -> dict[str, Any]:
    """Content of optimization_results.yaml (Hydra's convention plus the best node's job and folder)."""
    best = best_node(nodes)
    result: dict[str, Any] = {
        "name": name,
        "objective": {
            "metric": objective.metric,
            "direction": objective.direction,
            "target": objective.target,
        },
        "n_nodes": len(nodes),
        "n_failed": sum(1 for n in nodes if n.status == "failed"),
    }
    if best is None:
        result["best_node"] = None
        return result
    group = [n for n in nodes if n.config_hash == best.config_hash]
    s = stats(n.metrics.get(objective.metric, math.nan) for n in group if n.status == "completed")
    overrides = list(fixed) + [
        f"{k}={format_value(v)}" for k, v in {**best.simulation, **best.overrides}.items()
    ]
    result.update(
        {
            "best_node": best.id,
            "best_params": overrides,
            "best_value": float(best.metrics.get(objective.metric, math.nan)),
            "best_reward": float(best.reward),
            "best_job_num": best.job_num,
            "best_output_dir": best.output_dir,
            "best_seeds": dict(best.seeds),
            "best_config_replicates": {
                "runs": s.runs,
                "mean": s.mean,
                "std": s.std,
                "nodes": [n.id for n in group],
            },
        }
    )
    return result


PENDING_HEADER = "## Pending"
ACK_HEADER = "## Acknowledged"


def pending_user_input(text: str) -> str:
    """Instructions left in user_input.md: the ``## Pending`` section, or the whole file without one."""
    if PENDING_HEADER not in text:
        return text.split(ACK_HEADER, 1)[0].strip()
    after = text.split(PENDING_HEADER, 1)[1]
    return after.split(ACK_HEADER, 1)[0].strip()


def acknowledge_user_input(text: str, ack: str, label: str) -> str:
    """user_input.md with the pending text moved under ``## Acknowledged`` tagged ``[ACK label]``."""
    pending = pending_user_input(text)
    acknowledged = text.split(ACK_HEADER, 1)[1].strip() if ACK_HEADER in text else ""
    entry = f"- [ACK {label}] {pending.replace(chr(10), ' ')}\n  -> {ack.strip()}"
    body = "\n".join(x for x in (acknowledged, entry) if x)
    return f"# User input\n\n{PENDING_HEADER}\n\n\n{ACK_HEADER}\n{body}\n"
