"""Typed evaluation options: one dataclass per ``evaluation`` option, the one place its defaults live.

Registered in Hydra's ConfigStore (``hydra_llm.schemas.store``) as ``evaluation=signal|flyvis|metabolism``.
Each regime's ``evaluate(model, observations, ground_truth, out_dir, **options)`` validates its keyword
arguments against its schema, and the preflight validates ``cfg.evaluation`` the same way before anything
is simulated, so a bad value fails in a second, not after hours of training. Importing this module is
cheap (no torch).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from hydra_llm.printable import did_you_mean
from hydra_llm.schemas.ranges import at_least_one, fail, positive


def check_rollout(options: Any) -> None:
    if options.rollout_frames < 2:
        fail(options, "rollout_frames", options.rollout_frames, "must be an integer >= 2")


@dataclass
class SignalEvaluation:
    """``evaluation=signal`` (``hydra_llm.evaluation.signal.evaluate``)."""

    GROUP: ClassVar[str] = "evaluation"
    METRICS: ClassVar[tuple[str, ...]] = (
        "connectivity_R2", "connectivity_R2_identity", "connectivity_slope",
        "connectivity_R2_edges", "connectivity_R2_identity_edges", "connectivity_slope_edges",
        "tau_R2", "tau_R2_identity", "tau_slope", "tau_relative_error", "s_R2",
        "cluster_accuracy", "cluster_accuracy_embedding",
        "test_R2", "test_pearson", "test_one_step_R2",
        "connectivity_R2_oracle", "connectivity_R2_identity_oracle", "tau_R2_oracle",
    )  # fmt: skip
    HEADLINE: ClassVar[tuple[str, ...]] = (
        "connectivity_R2",
        "tau_R2",
        "cluster_accuracy",
        "test_R2",
        "test_pearson",
    )
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
    METRICS: ClassVar[tuple[str, ...]] = (
        "connectivity_R2", "connectivity_R2_identity", "connectivity_slope", "connectivity_R2_raw",
        "connectivity_R2_visible", "visible_edge_fraction", "readout_agreement",
        "connectivity_R2_trimmed_oracle", "connectivity_R2_identity_trimmed_oracle",
        "connectivity_outlier_fraction",
        "tau_R2", "tau_R2_identity", "tau_slope", "tau_clipped_fraction",
        "V_rest_R2", "V_rest_R2_identity", "V_rest_slope",
        "V_rest_zero_drive_R2", "V_rest_zero_drive_R2_identity", "V_rest_zero_drive_slope",
        "cluster_accuracy", "cluster_accuracy_median", "cluster_accuracy_min", "cluster_accuracy_max",
        "connectivity_R2_local", "connectivity_R2_identity_local", "connectivity_slope_local",
        "tau_R2_local", "tau_R2_identity_local", "tau_slope_local", "tau_clipped_fraction_local",
        "V_rest_R2_local", "V_rest_R2_identity_local", "V_rest_slope_local",
        "V_rest_zero_drive_R2_local", "V_rest_zero_drive_R2_identity_local",
        "V_rest_zero_drive_slope_local", "cluster_accuracy_local",
        "test_R2", "test_pearson", "test_R2_ood", "test_pearson_ood", "degeneracy_gap",
    )  # fmt: skip
    HEADLINE: ClassVar[tuple[str, ...]] = (
        "connectivity_R2", "tau_R2", "V_rest_R2", "cluster_accuracy", "test_R2", "test_pearson",
    )  # fmt: skip
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
    METRICS: ClassVar[tuple[str, ...]] = (
        "rate_constants_R2", "rate_constants_R2_identity", "rate_constants_slope",
        "rate_constants_R2_trimmed_oracle", "rate_constants_n_outliers", "alpha",
        "avg_slope_ratio", "slope_ratio_<i>", "offset_ratio_<i>",
        "MLP_node_slope_<i>", "MLP_node_offset_<i>", "MLP_node_gt_slope_<i>", "MLP_node_gt_offset_<i>",
        "phase2_node_magnitude", "test_R2", "stoichiometry_R2",
        "embedding_cluster_acc", "embedding_n_clusters", "embedding_silhouette",
        "embedding_cluster_acc_kmeans", "embedding_n_clusters_kmeans",
    )  # fmt: skip
    HEADLINE: ClassVar[tuple[str, ...]] = (
        "rate_constants_R2",
        "avg_slope_ratio",
        "embedding_cluster_acc",
        "test_R2",
    )
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

# what train.run adds to the metrics of every regime
RUN_METRICS: tuple[str, ...] = ("final_loss", "training_time_min", "smoothing_window")


def metric_names(target: str) -> tuple[str, ...] | None:
    """The metrics a run with the evaluation ``target`` returns (``<i>`` in a name stands for a type
    index: ``slope_ratio_<i>`` is ``slope_ratio_0``, ``slope_ratio_1``, ...); None for an evaluation
    without a schema here (a user's own), whose metrics are known only once it ran."""
    schema = EVALUATIONS.get(target)
    return None if schema is None else (*schema.METRICS, *RUN_METRICS)


def headline_names(target: str) -> tuple[str, ...]:
    """The metrics a run with the evaluation ``target`` is judged by (its schema's ``HEADLINE``, read
    from what the model learned), in the order a reader looks for them; none for a user's own."""
    schema = EVALUATIONS.get(target)
    return () if schema is None else schema.HEADLINE


def headline_of(returned: Collection[str]) -> tuple[str, ...]:
    """The headline metrics of the regime that returned the metrics ``returned``: the longest schema
    ``HEADLINE`` that ``returned`` holds in full (a flyvis run also returns the signal headline), in its
    order; for a user's own evaluation, which matches none, every schema's headline metric it returns."""
    held = [s.HEADLINE for s in EVALUATIONS.values() if all(m in returned for m in s.HEADLINE)]
    if held:
        return max(held, key=len)
    every = dict.fromkeys(m for s in EVALUATIONS.values() for m in s.HEADLINE)
    return tuple(m for m in every if m in returned)


def metric_groups(names: Iterable[str], headline: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``names`` in the groups a reader looks for them in, each under its title, empty ones left out:
    the ``headline`` metrics in their order, the other read-outs and those that borrow from the ground
    truth (``_oracle``), each sorted, and the run's own figures (``RUN_METRICS``, in its order)."""
    names = set(names)
    first = [k for k in headline if k in names]
    run = [k for k in RUN_METRICS if k in names]
    rest = sorted(names - set(first) - set(run))
    groups = [
        ("headline (read from what the model learned)", first),
        ("other read-outs", [k for k in rest if not k.endswith("_oracle")]),
        ("oracle (borrow from the ground truth)", [k for k in rest if k.endswith("_oracle")]),
        ("run", run),
    ]
    return [(title, keys) for title, keys in groups if keys]


def reading_order(names: Collection[str]) -> list[str]:
    """``names`` as :func:`metric_groups` orders them under the headline of the regime that returned
    them (:func:`headline_of`): its headline first, ``_oracle`` ones after the other read-outs."""
    return [k for _, keys in metric_groups(names, headline_of(names)) for k in keys]


def is_metric(name: str, names: Iterable[str]) -> bool:
    """Whether ``name`` is one of ``names`` (see :func:`metric_names` for ``<i>``)."""
    return any(re.fullmatch(re.escape(n).replace("<i>", r"\d+"), name) for n in names)


def unknown_metric(key: str, name: str, names: Iterable[str]) -> str:
    """The one-line error for ``key=name`` that is not one of ``names``, with the closest name."""
    names = list(names)
    hint = did_you_mean(difflib.get_close_matches(name, names, n=1), brackets=True)
    return f"{key}={name}: not a metric of this run{hint}; allowed: {', '.join(names)}"
