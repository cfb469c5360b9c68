"""What W&B receives, so that runs compare: per child a tagged run with its evaluation metrics in the
summary and its plots as images; per sweep one ``job_type=sweep`` run in the same group with the node
table, the tree picture and the best-so-far curve, updated after every batch.

The sweep run is opened and closed around each update (same run id, ``resume="allow"``), so it never
is the active run while a child trains in the sweeper's own process (the basic launcher); offline,
each update is one segment under ``exploration/wandb/`` that ``wandb sync`` appends to the run.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]+")


def wandb_logger(cfg: Any) -> Any:
    """The task config's ``logger`` node when it builds Lightning's ``WandbLogger``, else None."""
    logger = cfg.get("logger") if cfg is not None else None
    if not logger or not str(logger.get("_target_", "")).endswith("WandbLogger"):
        return None
    return logger


def tag(name: str, value: Any) -> str:
    """A W&B tag ``name:value`` made of safe characters, at most 64 of them."""
    return _TAG_UNSAFE.sub("_", f"{name}:{value}")[:64]


def child_tags(regime: str | None, record: Mapping[str, Any] | None) -> list[str]:
    """Tags of a child run: its regime and, in a sweep, its strategy and block."""
    tags = [tag("regime", regime)] if regime else []
    if record:
        tags += [tag("strategy", record.get("strategy", "")), tag("block", record.get("block", ""))]
    return tags


def log_child_results(run: Any, metrics: Mapping[str, float], plots: Sequence[Path]) -> None:
    """Evaluation metrics into ``run.summary`` and each plot as a ``wandb.Image``."""
    import wandb

    run.summary.update({k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)})
    if plots:
        run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})


NODE_COLUMNS = ("node", "parent", "block", "slot", "job", "strategy", "status", "mutation", "objective")


def node_rows(nodes: Sequence[Mapping[str, Any]], metric: str) -> list[list[Any]]:
    """One table row per node (see ``NODE_COLUMNS``); failed nodes have no objective value."""
    rows = []
    for n in nodes:
        value = n.get("metrics", {}).get(metric) if n.get("status") == "completed" else None
        rows.append(
            [
                n.get("id"),
                n.get("parent"),
                n.get("block"),
                n.get("slot"),
                n.get("job_num"),
                n.get("strategy", ""),
                n.get("status", ""),
                n.get("mutation_text", ""),
                value if isinstance(value, float) and math.isfinite(value) else None,
            ]
        )
    return rows


class SweepRun:
    """The sweep-level W&B run (see the module docstring)."""

    def __init__(self, project: str, group: str, mode: str, folder: Path, config: Mapping[str, Any]) -> None:
        self.project, self.group, self.mode, self.folder = project, group, mode, Path(folder)
        self.config = dict(config)
        self._logged = 0  # best-so-far points already sent (online, a resumed run's summary says too)

    @property
    def run_id(self) -> str:
        """Stable per sweep group, so every update (and a resumed sweep) writes the same run."""
        return "sweep-" + hashlib.sha1(self.group.encode()).hexdigest()[:12]

    def update(
        self, nodes: Sequence[Mapping[str, Any]], metric: str, best: Sequence[float], tree_png: Path | None
    ) -> None:
        """Log the node table, the best-so-far curve (one value per node) and the tree picture."""
        import wandb

        self.folder.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=self.project,
            group=self.group,
            job_type="sweep",
            name=f"sweep {self.group}",
            id=self.run_id,
            resume="allow",
            mode=self.mode,
            dir=str(self.folder),
            config=self.config,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        try:
            start = max(self._logged, int(run.summary.get("nodes", 0) or 0))
            for index in range(start, len(best)):
                run.log({"best_so_far": best[index], "node": index + 1})
            self._logged = len(best)
            payload: dict[str, Any] = {
                "nodes_table": wandb.Table(columns=list(NODE_COLUMNS), data=node_rows(nodes, metric))
            }
            if tree_png is not None and tree_png.is_file():
                payload["tree"] = wandb.Image(str(tree_png))
            run.log(payload)
            run.summary.update({"nodes": len(nodes), "best": best[-1] if best else None})
        finally:
            run.finish()
