"""Typed evaluation options: one dataclass per ``evaluation`` option, the one place its defaults live.

Registered in Hydra's ConfigStore (``hydra_llm.schemas.store``) as ``evaluation=signal|flyvis|metabolism``.
Each regime's ``evaluate(model, observations, ground_truth, out_dir, **options)`` validates its keyword
arguments against its schema, and the preflight validates ``cfg.evaluation`` the same way before anything
is simulated, so a bad value fails in a second, not after hours of training. Importing this module is
cheap (no torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from hydra_llm.schemas.ranges import at_least_one, fail, positive


def check_rollout(options: Any) -> None:
    if options.rollout_frames < 2:
        fail(options, "rollout_frames", options.rollout_frames, "must be an integer >= 2")


@dataclass
class SignalEvaluation:
    """``evaluation=signal`` (``hydra_llm.evaluation.signal.evaluate``)."""

    GROUP: ClassVar[str] = "evaluation"
    _target_: str = "hydra_llm.evaluation.signal.evaluate"
    rollout_frames: int = 200  # rollout length from the first held-out frame (2 time units at dt 0.01)
    make_plots: bool = True
    cluster_seed: int = 0
    # Training callbacks built with ground truth (train.run passes them to the Trainer): partial targets
    # called with (observations, ground_truth, out_dir)
    callbacks: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_rollout(self)


@dataclass
class R2TrajectoryLog:
    """An ``evaluation.callbacks`` entry of ``evaluation=flyvis``: the R2 trajectory log
    ``<job>/connectivity_r2.log`` (columns epoch,iteration,connectivity_r2,phase), a record every
    ``every_n_steps`` steps and at most ``max_records`` records (null: no cap), spaced wider on long
    runs: each costs ~5 s at extent 8 on 2 cores (``hydra_llm.evaluation.flyvis.ConnectivityR2Log``)."""

    GROUP: ClassVar[str] = "evaluation.callbacks"
    _target_: str = "hydra_llm.evaluation.flyvis.r2_trajectory_callback"
    _partial_: bool = True
    every_n_steps: int = 200
    max_records: int | None = 100

    def __post_init__(self) -> None:
        at_least_one(self, "every_n_steps")
        if self.max_records is not None and self.max_records < 1:
            fail(self, "max_records", self.max_records, "must be an integer >= 1, or null")


# the evaluation.callbacks entries whose options the preflight checks, by target
CALLBACKS: dict[str, type] = {R2TrajectoryLog._target_: R2TrajectoryLog}


def r2_trajectory() -> list[Any]:
    """The default ``callbacks`` of ``evaluation=flyvis``: one :class:`R2TrajectoryLog`."""
    return [asdict(R2TrajectoryLog())]


@dataclass
class FlyvisEvaluation:
    """``evaluation=flyvis`` (``hydra_llm.evaluation.flyvis.evaluate``).

    ``cluster_accuracy`` is one GMM start with ``cluster_seed``, as the original clusters; the
    ``cluster_starts`` starts with seeds ``cluster_seed``, ``cluster_seed + 1``, ... give its spread
    (``cluster_accuracy_median``, ``_min``, ``_max``): one start costs ~6 s at extent 8 on 2 cores."""

    GROUP: ClassVar[str] = "evaluation"
    _target_: str = "hydra_llm.evaluation.flyvis.evaluate"
    rollout_frames: int = 500  # rollout length on held-out and out-of-distribution stimuli
    # |W* - w| above it: dropped from connectivity_R2_trimmed_oracle (as the original)
    outlier_threshold: float = 5.0
    cluster_n_components: int = 100  # GMM components (capped at the neuron count)
    cluster_seed: int = 42
    cluster_starts: int = 8
    make_plots: bool = True
    callbacks: list[Any] = field(default_factory=r2_trajectory)

    def __post_init__(self) -> None:
        check_rollout(self)
        positive(self, "outlier_threshold")
        at_least_one(self, "cluster_n_components", "cluster_starts")


@dataclass
class MetabolismEvaluation:
    """``evaluation=metabolism`` (``hydra_llm.evaluation.metabolism.evaluate``)."""

    GROUP: ClassVar[str] = "evaluation"
    _target_: str = "hydra_llm.evaluation.metabolism.evaluate"
    slope_c_min: float = 0.0  # MLP_node line fits over this concentration grid
    slope_c_max: float = 10.0
    slope_n_points: int = 50
    outlier_threshold: float = 0.3  # |learned - true| log10 k above this is an outlier (trimmed R2)
    dbscan_eps: float = 0.3  # on standardised embeddings
    dbscan_min_samples: int = 5
    make_plots: bool = True
    callbacks: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.slope_c_max > self.slope_c_min:
            fail(self, "slope_c_max", self.slope_c_max, f"must be > slope_c_min ({self.slope_c_min})")
        if self.slope_n_points < 2:
            fail(self, "slope_n_points", self.slope_n_points, "must be an integer >= 2")
        positive(self, "outlier_threshold", "dbscan_eps")
        at_least_one(self, "dbscan_min_samples")


EVALUATIONS: dict[str, type] = {
    schema._target_: schema for schema in (SignalEvaluation, FlyvisEvaluation, MetabolismEvaluation)
}
