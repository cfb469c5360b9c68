"""Rendering of the sweep folder's text artefacts from structured state (nothing is parsed back).

- ``analysis.md``: one ``## Iter N:`` entry per node (config, metrics, reading);
- ``ucb_scores.txt``: ``Node N: UCB=..., parent=..., visits=..., R2=...`` sorted by UCB;
- ``variance.md``: replicate groups (runs, mean, std, CV per metric);
- ``optimization_results.yaml`` content: the best config (judged on its replicate mean), its runs, and
  its best run's job number and folder;
- ``user_input.md`` bookkeeping (pending instructions, acknowledgements).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra_llm.explore.space import format_value
from hydra_llm.explore.tree import GroupStats, Node, Objective, UCBScore, group_rewards, stats
from hydra_llm.schemas.evaluation import headline_of, reading_order

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
        metrics = ", ".join(f"{k}={_num(node.metrics[k])}" for k in reading_order(node.metrics)) or "(none)"
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
            if index + 1 < len(ordered):
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
    """variance.md: one row per config group (runs, failures, mean ± std and CV per metric), for the
    objective and the headline metrics of the regime the runs returned (:func:`headline_of`)."""
    returned = {m for n in nodes for m in n.metrics}
    present = [objective.metric] + [m for m in headline_of(returned) if m != objective.metric]
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
                cells += [f"{s.mean:.4f}" + (f" ± {s.std:.4f}" if s.runs > 1 else " (one run)"), cv]
        ids = ",".join(str(n.id) for n in members)
        failed = len(members) - len(done)
        row = [key, ids, str(len(members)), str(failed), *cells, render_config(members[0])]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class BestConfig:
    """The configuration a sweep names as its best, judged on its replicate group, never one run.

    ``score`` is the group's mean reward minus one standard error, the standard deviation being the
    run-to-run spread pooled over every group with two or more runs (a config run once is judged with
    that spread too, so a single lucky draw does not win). ``node`` is the group's best run (its folder
    and job are the ones to open); ``runs`` every run of the group.
    """

    node: Node
    runs: tuple[Node, ...]
    score: float
    pooled_std: float

    def mean(self, metric: str) -> float:
        """The mean of ``metric`` over the group's completed runs."""
        return self.stats(metric).mean

    def stats(self, metric: str) -> GroupStats:
        """The count, mean and standard deviation of ``metric`` over the group's completed runs."""
        return stats(n.metrics[metric] for n in self.runs if n.status == "completed" and metric in n.metrics)

    def summary(self, metric: str) -> str:
        """``metric`` as a reader should take it: mean +- standard deviation over replicates, and no
        spread for a config run once (unknown, not 0): ``0.947 +- 0.0083 (2 runs: nodes 4, 8)``,
        ``0.9587 (1 run: node 6)``, ``0.93 (1 of 2 runs completed: nodes 3, 9)``, and for completed runs
        without ``metric`` ``nan (0 of 1 runs with loss: node 2)``."""
        s = self.stats(metric)
        ids = [str(n.id) for n in self.runs]
        listed = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        spread = f" +- {_num(s.std)}" if s.runs > 1 else ""
        completed = sum(1 for n in self.runs if n.status == "completed")
        if s.runs < completed:
            count = f"{s.runs} of {len(ids)} runs with {metric}"
        elif s.runs < len(ids):
            count = f"{s.runs} of {len(ids)} runs completed"
        else:
            count = "1 run" if s.runs == 1 else f"{s.runs} runs"
        return f"{_num(s.mean)}{spread} ({count}: node{'s' if len(ids) > 1 else ''} {listed})"


def pooled_std(nodes: Sequence[Node]) -> float:
    """Run-to-run standard deviation of the reward, pooled over the replicate groups of ``nodes``
    (0 when no group has two runs)."""
    return _pooled(stats(rewards) for rewards in group_rewards(nodes).values())


def _pooled(groups: Iterable[GroupStats]) -> float:
    """The standard deviation pooled over ``groups`` with two or more runs (0 when none has)."""
    sum_sq, dof = 0.0, 0
    for s in groups:
        if s.runs > 1 and math.isfinite(s.std):
            sum_sq += (s.runs - 1) * s.std**2
            dof += s.runs - 1
    return math.sqrt(sum_sq / dof) if dof else 0.0


class _ReplicateGroups:
    """Nodes added in id order, grouped by config: :meth:`best` is :func:`best_config` of the nodes
    added so far, in one pass over the groups (the group a node joins is the only one recomputed)."""

    def __init__(self) -> None:
        self.members: dict[str, list[Node]] = {}
        self.rewards: dict[str, GroupStats] = {}
        self.completed: dict[str, int] = {}

    def add(self, node: Node) -> None:
        key = node.config_hash
        members = self.members.setdefault(key, [])
        members.append(node)
        self.rewards[key] = stats(n.reward for n in members)
        self.completed[key] = self.completed.get(key, 0) + (node.status == "completed")

    def best(self) -> BestConfig | None:
        sigma = _pooled(self.rewards.values())
        chosen, best_score = None, -math.inf
        for key, s in self.rewards.items():
            score = s.mean - sigma / math.sqrt(s.runs)
            if self.completed[key] and (chosen is None or score > best_score):
                chosen, best_score = key, score
        if chosen is None:
            return None
        members = self.members[chosen]
        top = max((n for n in members if n.status == "completed"), key=lambda n: (n.reward, -n.id))
        return BestConfig(top, tuple(members), best_score, sigma)


def best_config(nodes: Sequence[Node]) -> BestConfig | None:
    """The config group with the highest lower confidence bound of its mean reward (see
    :class:`BestConfig`); ties go to the group whose first run has the lower id."""
    groups = _ReplicateGroups()
    for node in sorted(nodes, key=lambda n: n.id):
        groups.add(node)
    return groups.best()


def best_so_far(nodes: Sequence[Node]) -> list[BestConfig | None]:
    """For each node in id order, :func:`best_config` among it and the nodes before it."""
    groups = _ReplicateGroups()
    best = []
    for node in sorted(nodes, key=lambda n: n.id):
        groups.add(node)
        best.append(groups.best())
    return best


def optimization_results(
    nodes: Sequence[Node], objective: Objective, fixed: Sequence[str], name: str
) -> dict[str, Any]:
    """Content of optimization_results.yaml: Hydra's ``best_params`` / ``best_value`` for the best
    config (:func:`best_config`, ``best_value`` its replicate mean), its runs, and its best run's job
    and folder."""
    best = best_config(nodes)
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
    node, metric = best.node, objective.metric
    values = [n.metrics.get(metric, math.nan) for n in best.runs if n.status == "completed"]
    s = stats(values)
    overrides = list(fixed) + [
        f"{k}={format_value(v)}" for k, v in {**node.simulation, **node.overrides}.items()
    ]
    result.update(
        {
            "best_node": node.id,
            "best_params": overrides,
            "best_value": float(s.mean),
            "judged_on": "replicate mean; the config with the highest mean reward - pooled std / sqrt(runs)",
            "best_config_replicates": {
                "runs": len(best.runs),
                "failed": len(best.runs) - s.runs,
                "mean": float(s.mean),
                "std": float(s.std) if s.runs > 1 else None,  # one run: unknown, not 0
                "lower_bound_reward": float(best.score),
                "pooled_run_std": float(best.pooled_std),
                "nodes": [n.id for n in best.runs],
                "values": [float(v) for v in values],
            },
            "best_run_value": float(node.metrics.get(metric, math.nan)),
            "best_reward": float(node.reward),
            "best_job_num": node.job_num,
            "best_output_dir": node.output_dir,
            "best_seeds": dict(node.seeds),
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
