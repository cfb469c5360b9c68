"""The tree picture of one block: x = depth, y = leaf order (parents centred over their children).

Nodes are coloured by reward class (converged green, partial orange, failed red, as classified by the
objective's thresholds), labelled with node id, mutation, reward and UCB; the title names the block
and the simulation regime. matplotlib (Agg) is imported only when a picture is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra_llm.explore.tree import Node, UCBScore

COLOURS = {"converged": "#2ca02c", "partial": "#ff7f0e", "failed": "#d62728"}


def layout(nodes: Sequence[Node]) -> dict[int, tuple[float, float]]:
    """(depth, y) per node id; roots are nodes whose parent is not in ``nodes``."""
    ids = {n.id for n in nodes}
    children: dict[int | None, list[int]] = {}
    for node in sorted(nodes, key=lambda n: n.id):
        parent = node.parent if node.parent in ids else None
        children.setdefault(parent, []).append(node.id)
    positions: dict[int, tuple[float, float]] = {}
    next_leaf = [0.0]

    def place(node_id: int, depth: int) -> float:
        kids = children.get(node_id, [])
        if not kids:
            y = next_leaf[0]
            next_leaf[0] += 1.0
        else:
            ys = [place(kid, depth + 1) for kid in kids]
            y = (min(ys) + max(ys)) / 2
        positions[node_id] = (float(depth), y)
        return y

    for root in children.get(None, []):
        place(root, 1)
    return positions


def plot_tree(
    nodes: Sequence[Node],
    scores: Sequence[UCBScore],
    path: Path,
    title: str,
    metric: str,
    simulation: Mapping[str, Any],
) -> Path:
    """Draw the block's tree to ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_score = {s.node_id: s for s in scores}
    positions = layout(nodes)
    # Capped size: a picture of a 100-node block stays cheap to draw (and to look at).
    height = min(16.0, max(3.0, 0.55 * (max((y for _, y in positions.values()), default=0) + 2)))
    width = min(16.0, max(6.0, 2.2 * (max((x for x, _ in positions.values()), default=0) + 1)))
    dense = len(nodes) > 40  # many nodes: ids only, no per-node label text
    fig, ax = plt.subplots(figsize=(width, height), dpi=72)
    try:
        from matplotlib.collections import LineCollection

        ax.scatter([0], [0], s=120, c="#555555", marker="s")
        ax.annotate("root", (0, 0), xytext=(-4, 8), textcoords="offset points", fontsize=7)
        segments = []
        for node in nodes:
            parent = positions.get(node.parent) if node.parent is not None else None
            segments.append([parent or (0.0, 0.0), positions[node.id]])
        ax.add_collection(LineCollection(segments, colors="#444444", linewidths=0.8, zorder=1))
        xs = [positions[n.id][0] for n in nodes]
        ys = [positions[n.id][1] for n in nodes]
        colours = [COLOURS.get(n.classification, COLOURS["failed"]) for n in nodes]
        ax.scatter(xs, ys, s=260, c=colours, zorder=2, edgecolors="black", linewidths=0.5)
        for node in nodes:
            x, y = positions[node.id]
            ax.annotate(str(node.id), (x, y), ha="center", va="center", fontsize=7, zorder=3)
            if dense:
                continue
            score = by_score.get(node.id)
            value = node.metrics.get(metric)
            shown = f"{value:.3f}" if value is not None and node.status == "completed" else "fail"
            ucb = f"{score.ucb:.2f}" if score else "-"
            mutation = (node.mutation_text or ("root" if node.parent is None else "replicate"))[:40]
            ax.annotate(
                f"{mutation}\n{metric}={shown} UCB={ucb}",
                (x, y),
                xytext=(10, -4),
                textcoords="offset points",
                fontsize=6,
                va="top",
            )
        sim = ", ".join(f"{k}={v}" for k, v in simulation.items()) or "root simulation config"
        ax.set_title(f"{title}\nregime: {sim}", fontsize=9)
        handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in COLOURS.items()]
        ax.legend(handles=handles, loc="upper right", fontsize=7)
        ax.set_xlabel("depth")
        ax.set_yticks([])
        ax.margins(x=0.25, y=0.15)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
