"""One child of a batch: the :class:`~hydra_llm.explore.tree.Node` the engine launches (identity,
config and seeds; its result fields are filled from what comes back), the launcher's reply
(:class:`ChildOutcome`), its seeds and the metadata it reads about itself."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hydra_llm.explore.engine_config import EngineConfig
from hydra_llm.explore.tree import Node, Objective
from hydra_llm.printable import one_line


@dataclass(frozen=True)
class ChildOutcome:
    """What the launcher reports for one child. ``metrics`` may hold NaN (the engine marks the node
    failed); :func:`finished` turns it into the node's result."""

    status: Literal["completed", "failed"]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    output_dir: str = ""
    plots: tuple[str, ...] = ()
    # No record at all: the launcher crashed before this child finished (it may be the one that
    # crashed it, or a batch mate taken down with it). The engine re-runs such children alone.
    lost: bool = False


LaunchFn = Callable[[Sequence[Node]], Sequence[ChildOutcome]]
CheckFn = Callable[[Node], str | None]
# (block-level values, first iteration) -> why a block's first batch cannot start on them, or None
CheckBatchFn = Callable[[Mapping[str, Any], int], str | None]


def child_seeds(config: EngineConfig, node_id: int, slot: int) -> dict[str, int]:
    """The seeds of the child of ``slot`` at iteration ``node_id``: a new training seed per node; the
    simulation seed per slot, per iteration or fixed (``simulation_seed``)."""
    seeds = {"training": node_id * 1000 + slot + 500}
    if config.simulation_seed == "slot":
        seeds["simulation"] = config.seed * 1000 + slot
    elif config.simulation_seed == "iteration":
        seeds["simulation"] = node_id * 1000 + slot
    return {k: v for k, v in seeds.items() if k in config.seed_keys}


def seed_overrides(child: Node, seed_keys: Mapping[str, str]) -> dict[str, int]:
    """The child's seeds as config keys (``seed_keys``: seed name -> key)."""
    return {seed_keys[k]: v for k, v in child.seeds.items() if k in seed_keys}


def child_record(sweep_id: str, child: Node) -> dict[str, Any]:
    """The node metadata a child reads for itself (W&B config, tags): plain JSON, never an override."""
    return {
        "sweep_id": sweep_id,
        "node": child.id,
        "parent": child.parent,
        "block": child.block,
        "slot": child.slot,
        "job_num": child.job_num,
        "strategy": child.strategy,
        "hypothesis": child.hypothesis,
        "mutation": child.mutation_text,
        "seeds": dict(child.seeds),
        "code_version": child.code_version,
    }


def finished(child: Node, outcome: ChildOutcome, objective: Objective) -> Node:
    """The node a launched child becomes with its outcome: a completed child without a finite
    objective metric is a failed node; the reward follows the objective."""
    status, error = outcome.status, (one_line(outcome.error, 1000) if outcome.error else None)
    metrics = {k: float(v) for k, v in outcome.metrics.items()}
    value = metrics.get(objective.metric)
    if status == "completed" and value is None:
        status = "failed"
        error = f"objective metric {objective.metric} missing from the returned metrics ({sorted(metrics)})"
    elif status == "completed" and value is not None and not math.isfinite(value):
        status, error = "failed", f"objective metric {objective.metric} is {value}"
    reward = objective.reward(value) if status == "completed" and value is not None else objective.fail_reward
    return dataclasses.replace(
        child,
        status=status,
        metrics=metrics,
        reward=reward,
        output_dir=outcome.output_dir,
        error=error,
        plots=list(outcome.plots),
        classification=objective.classify(value) if status == "completed" else "failed",
    )
