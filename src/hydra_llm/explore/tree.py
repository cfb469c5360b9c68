"""The exploration tree: nodes, rewards, replicate groups and UCB scores.

A node is one child run. Its ``overrides`` are its training config relative to the block root and
``simulation`` the block-level overrides in force; replicates (same config, other seeds) share a
``config_hash``. UCB scores are computed over the nodes of one block only: the tree restarts at the
root at every block boundary.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hydra_llm.schemas.sweeper import ReplicateReward, UCBConf, UCBFormula

Direction = Literal["maximize", "minimize", "target"]


@dataclass(frozen=True)
class Objective:
    """What the sweep optimises and how a run is classified.

    ``converged`` / ``partial`` are thresholds on the metric: ``>=`` for maximize, ``<=`` for minimize,
    and tolerances on ``|value - target|`` for target. ``converged_band`` / ``partial_band``
    (``(low, high)`` on the metric value, bounds included) replace the matching threshold when set,
    e.g. an asymmetric band around a target. ``failure_reward`` is the reward of a failed node
    (default 0.0 for maximize, -1.0 otherwise: set it for your metric's scale).
    """

    metric: str = "connectivity_R2"
    direction: Direction = "maximize"
    target: float | None = None
    failure_reward: float | None = None
    converged: float = 0.9
    partial: float = 0.5
    converged_band: tuple[float, float] | None = None
    partial_band: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize", "target"):
            raise ValueError(
                f"objective.direction: {self.direction!r} is not allowed; allowed: maximize, minimize, target"
            )
        if self.direction == "target" and self.target is None:
            raise ValueError("objective.target: required when objective.direction=target (e.g. 1.0)")
        for name in ("target", "failure_reward", "converged", "partial"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):
                raise ValueError(f"objective.{name}: {value!r} is not allowed; allowed: a finite number")
        for name in ("converged_band", "partial_band"):
            object.__setattr__(self, name, _band(name, getattr(self, name)))
        inner, outer = self.converged_band, self.partial_band
        if inner is not None and outer is not None and not outer[0] <= inner[0] <= inner[1] <= outer[1]:
            raise ValueError(
                f"objective.partial_band: {list(outer)} must contain objective.converged_band {list(inner)}"
            )

    @property
    def fail_reward(self) -> float:
        if self.failure_reward is not None:
            return float(self.failure_reward)
        return 0.0 if self.direction == "maximize" else -1.0

    def reward(self, value: float) -> float:
        """Higher is better, whatever the direction."""
        if self.direction == "maximize":
            return float(value)
        if self.direction == "minimize":
            return -float(value)
        assert self.target is not None
        return -abs(float(value) - float(self.target))

    def classify(self, value: float | None) -> str:
        """``converged`` / ``partial`` / ``failed`` for a metric value (None or NaN is failed)."""
        if value is None or not math.isfinite(value):
            return "failed"
        if self.direction == "maximize":
            passes = [value >= self.converged, value >= self.partial]
        elif self.direction == "minimize":
            passes = [value <= self.converged, value <= self.partial]
        else:
            assert self.target is not None
            gap = abs(value - self.target)
            passes = [gap <= self.converged, gap <= self.partial]
        for i, band in enumerate((self.converged_band, self.partial_band)):
            if band is not None:
                passes[i] = band[0] <= value <= band[1]
        return "converged" if passes[0] else "partial" if passes[1] else "failed"

    def describe_classes(self) -> str:
        """The classification rule in words, e.g. ``converged: 0.8 <= v <= 1.2; partial: ...``."""
        sign = {"maximize": ">=", "minimize": "<="}.get(self.direction)
        parts = []
        for name, band, threshold in (
            ("converged", self.converged_band, self.converged),
            ("partial", self.partial_band, self.partial),
        ):
            if band is not None:
                parts.append(f"{name}: {band[0]:g} <= {self.metric} <= {band[1]:g}")
            elif sign is not None:
                parts.append(f"{name}: {self.metric} {sign} {threshold:g}")
            else:
                parts.append(f"{name}: |{self.metric} - {self.target:g}| <= {threshold:g}")
        return "; ".join(parts) + "; failed: otherwise, NaN or a crashed run"


@dataclass
class Node:
    """One child run in the exploration tree. ``iteration`` equals ``id`` (``## Iter N`` in analysis.md)."""

    id: int
    parent: int | None
    block: int
    slot: int
    strategy: str
    overrides: dict[str, Any]  # training config relative to the block root (cumulative)
    mutation: dict[str, Any]  # the change relative to the parent ({} for a replicate / baseline)
    simulation: dict[str, Any]  # block-level overrides in force
    seeds: dict[str, int]
    job_num: int
    status: Literal["completed", "failed"] = "completed"
    metrics: dict[str, float] = field(default_factory=dict)
    reward: float = 0.0
    output_dir: str = ""
    error: str | None = None
    plots: list[str] = field(default_factory=list)
    hypothesis: str = ""
    observation: str = ""
    classification: str = ""
    mutation_text: str = ""
    code_version: int = 0  # the code version it trained with (0: the installed code)

    @property
    def node_id(self) -> int:
        """``id``, under the name the launcher, the proposer's view and its replies use."""
        return self.id

    @property
    def config(self) -> dict[str, Any]:
        """Its whole config relative to the block root: block-level values and training overrides."""
        return {**self.simulation, **self.overrides}

    @property
    def config_hash(self) -> str:
        return config_hash(self.overrides, self.simulation, self.code_version)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Node:
        return cls(**dict(data))


def config_hash(overrides: Mapping[str, Any], simulation: Mapping[str, Any], code_version: int = 0) -> str:
    """A short stable id of a configuration (seeds and sweep metadata are never part of it; runs of
    other code versions are other configurations)."""
    record: dict[str, Any] = {"o": dict(overrides), "s": dict(simulation)}
    if code_version:
        record["c"] = int(code_version)
    payload = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:8]


def _band(name: str, value: Any) -> tuple[float, float] | None:
    """``value`` as a ``(low, high)`` pair of finite floats, or None (raises naming ``name``)."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"objective.{name}: {value!r} is not allowed; allowed: null or [low, high] (two numbers)"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"objective.{name}: {[low, high]} is not allowed; allowed: finite low <= high")
    return (low, high)


def descendant_counts(nodes: Sequence[Node]) -> dict[int, int]:
    """Number of descendants of each node among ``nodes`` (children always have larger ids)."""
    counts = {n.id: 0 for n in nodes}
    parent_of = {n.id: n.parent for n in nodes}
    for node in sorted(nodes, key=lambda n: n.id, reverse=True):
        parent = parent_of[node.id]
        if parent in counts:
            counts[parent] += counts[node.id] + 1
    return counts


@dataclass(frozen=True)
class GroupStats:
    """Replicate statistics of one config group for one metric (std with ddof=1; 0 for one run)."""

    runs: int
    mean: float
    std: float

    @property
    def cv(self) -> float:
        return abs(self.std / self.mean) if self.mean not in (0.0,) and math.isfinite(self.mean) else math.nan


def stats(values: Iterable[float]) -> GroupStats:
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return GroupStats(0, math.nan, math.nan)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return GroupStats(n, mean, std)


def group_rewards(nodes: Sequence[Node]) -> dict[str, list[float]]:
    """Rewards of every config group among ``nodes`` (failed runs count with their failure reward)."""
    groups: dict[str, list[float]] = {}
    for node in nodes:
        groups.setdefault(node.config_hash, []).append(node.reward)
    return groups


@dataclass(frozen=True)
class UCBScore:
    """A node's UCB score (a row of the proposer's UCB table); the node's own fields read through it."""

    node: Node
    ucb: float
    visits: int
    reward: float  # the R used: group mean (or LCB) of the node's config group, not the node's own

    @property
    def node_id(self) -> int:
        return self.node.id

    @property
    def parent(self) -> int | None:
        return self.node.parent

    @property
    def strategy(self) -> str:
        return self.node.strategy

    @property
    def status(self) -> str:
        return self.node.status

    @property
    def metrics(self) -> Mapping[str, float]:
        return self.node.metrics

    @property
    def overrides(self) -> Mapping[str, Any]:
        """The node's training overrides relative to the block root (without block-level values)."""
        return self.node.overrides

    @property
    def mutation_text(self) -> str:
        return self.node.mutation_text


def ucb_scores(
    nodes: Sequence[Node],
    formula: str = UCBConf.formula,
    c: float = UCBConf.c,
    replicate_reward: str = UCBConf.replicate_reward,
    lcb_kappa: float = UCBConf.lcb_kappa,
) -> list[UCBScore]:
    """UCB of every node of one block, sorted by UCB descending (ties: lower id first).

    visits = 1 + descendants within ``nodes``; N_total = len(nodes);
    ucb1: R + c*sqrt(ln N_total / (1 + visits)); puct: R + c*sqrt(N_total) / (1 + visits).
    R is the mean reward of the node's replicate group, or mean - kappa*std/sqrt(runs) for ``lcb``.
    """
    if formula not in tuple(UCBFormula):
        raise ValueError(f"ucb.formula: {formula!r} is not allowed; allowed: {', '.join(UCBFormula)}")
    if replicate_reward not in tuple(ReplicateReward):
        raise ValueError(
            f"ucb.replicate_reward: {replicate_reward!r} is not allowed; "
            f"allowed: {', '.join(ReplicateReward)}"
        )
    if not nodes:
        return []
    n_total = len(nodes)
    counts = descendant_counts(nodes)
    group_r: dict[str, float] = {}
    for key, rewards in group_rewards(nodes).items():
        s = stats(rewards)
        group_r[key] = s.mean - (lcb_kappa * s.std / math.sqrt(s.runs) if replicate_reward == "lcb" else 0.0)
    scores = []
    for node in nodes:
        visits = 1 + counts[node.id]
        r = group_r[node.config_hash]
        if formula == "ucb1":
            bonus = c * math.sqrt(math.log(n_total) / (1 + visits))
        else:
            bonus = c * math.sqrt(n_total) / (1 + visits)
        scores.append(UCBScore(node, r + bonus, visits, r))
    scores.sort(key=lambda s: (-s.ucb, s.node_id))
    return scores


def describe_mutation(
    mutation: Mapping[str, Any], parent_config: Mapping[str, Any], defaults: Mapping[str, Any]
) -> str:
    """``key: old -> new`` for each mutated key (old from the parent, else the root default)."""
    parts = []
    for key, new in mutation.items():
        old = parent_config.get(key, defaults.get(key))
        parts.append(f"{key}: {_short(old)} -> {_short(new)}")
    return "; ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
