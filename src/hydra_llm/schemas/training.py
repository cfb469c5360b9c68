"""Typed training options: one dataclass per ``training`` option, the one place its defaults live.

Registered in Hydra's ConfigStore (``hydra_llm.schemas.store``) as the options ``training=default``
(signal), ``training=flyvis``, ``training=metabolism_phase1`` and ``training=metabolism_phase2``, so a
misspelt key or a value of the wrong type fails when Hydra composes the config. Ranges that a type
cannot express are checked in ``__post_init__`` (run by :func:`hydra_llm.schemas.validate`, which the
models and the preflight call). Importing this module is cheap (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from hydra_llm.schemas.ranges import at_least_one, fail, non_negative, positive, prefixed, seeds, within


class LRSchedule(StrEnum):
    """Learning-rate multiplier over optimiser steps (``hydra_llm.models.lr_schedule.lr_factor``)."""

    constant = "constant"
    warmup_decay = "warmup_decay"
    cosine_restarts = "cosine_restarts"


class EmbeddingInit(StrEnum):
    """Phase-2 embeddings at the start: random (all near 1), or placed by the partition of metabolites that
    fits the conserved combinations best (``hydra_llm.models.metabolism.conserved_types``)."""

    random = "random"
    conserved_types = "conserved_types"


# "global" is a keyword, hence the functional form; member names equal their values (OmegaConf maps by name).
LossNormalisation = StrEnum("LossNormalisation", {"per_metabolite": "per_metabolite", "global": "global"})
LossNormalisation.__doc__ = (
    "per_metabolite: squared errors / var(dc_i/dt) of each metabolite; global: / var(dc/dt) of all."
)


def check_lr_schedule(options: object) -> None:
    """The ``lr_*`` options of :class:`LRSchedule`: fractions in [0, 1], a restart period > 0."""
    for key in ("lr_warmup_fraction", "lr_final_ratio"):
        within(options, key, 0.0, 1.0, "must be in [0, 1]")
    positive(options, "lr_restart_fraction")


# ------------------------------------------------------------------------------------------- signal
@dataclass
class SignalTraining:
    """The signal GNN (``training=default``; tuned on signal_chaotic: 100 neurons, 4 types, 10k frames).

    Iterations per epoch: ``int(n_frames * data_augmentation_loop // batch_size * 0.2)``, e.g.
    10000 * 60 // 8 * 0.2 = 15000 Adam steps of 8 random training frames.
    """

    GROUP: ClassVar[str] = "training"
    n_epochs: int = 1
    batch_size: int = 8
    data_augmentation_loop: float = 60.0
    learning_rate_W_start: float = 4.0e-3  # W
    learning_rate_start: float = 2.0e-3  # MLPs phi and psi
    learning_rate_embedding_start: float = 5.0e-3  # embeddings a_i
    coeff_W_L1: float = 1.0e-5  # sum |W|
    coeff_edge_diff: float = 100.0  # psi non-decreasing: relu(psi(u) - psi(u + 0.05 xnorm)), batch mean
    coeff_edge_norm: float = 1.0  # (psi(2 xnorm) - 1)^2: fixes the W <-> psi scale
    coeff_phi_zero: float = 1.0  # phi(0)^2: fixes the phi <-> psi offset
    seed: int = 24

    def __post_init__(self) -> None:
        seeds(self, "seed")
        positive(self, *prefixed(self, "learning_rate"), "data_augmentation_loop")
        non_negative(self, *prefixed(self, "coeff_"))
        at_least_one(self, "n_epochs", "batch_size")


# ------------------------------------------------------------------------------------------- flyvis
@dataclass
class FlyvisTraining:
    """The flyvis GNN (``training=flyvis``).

    Steps per epoch: ``n_train_frames * data_augmentation_loop // batch_size * 0.2`` (capped by
    ``max_steps_per_epoch`` when set). The loss is a mean over frames x neurons of the squared error in
    units of std(dv/dt), so coefficients do not transfer from a loss that is an un-averaged L2 norm; the
    regularisers were set on extent-1 runs, the learning rates at extent 8 (``bench/bench_flyvis.py``,
    BENCHMARKS.md). The W penalties are per neuron (``sum|W| / n_neurons``), like the prediction term, so
    one coefficient holds at every extent.
    """

    GROUP: ClassVar[str] = "training"
    n_epochs: int = 1
    batch_size: int = 4
    data_augmentation_loop: float = 35.0
    max_steps_per_epoch: int | None = None
    seed: int = 43
    # a third of the extent-1 rates (3e-3, 3e-3, 2.325e-3): at extent 8 these lifted connectivity_R2 on
    # 3 of 3 seeds and removed a collapse of one (BENCHMARKS.md, "A third of the learning rates")
    learning_rate_W_start: float = 1.0e-3
    learning_rate_start: float = 1.0e-3
    learning_rate_embedding_start: float = 7.75e-4
    learning_rate_update_start: float | None = None  # f_theta; None = learning_rate_start
    coeff_W_L1: float = 4.0e-3  # x sum|W| / n_neurons (1e-5 x sum|W| at extent 1's 443 neurons)
    coeff_W_L2: float = 0.0  # x sum W^2 / n_neurons
    coeff_g_phi_diff: float = 750.0  # psi monotonicity
    coeff_g_phi_norm: float = 0.9  # psi(2 xnorm) = 2 xnorm
    # psi(0) = 0, where the simulator's relu starts: msg = 0, where f_theta is read out, is then the
    # point of zero synaptic drive (psi's offset is otherwise free and moves into f's); 0 = off
    coeff_g_phi_zero: float = 0.0
    # psi straight on v in [0, 2 xnorm], the simulator's relu: between 0 and a tonic neuron's recorded
    # range nothing else fixes psi's shape, and f is read out through it at msg = 0; 0 = off
    coeff_g_phi_straight: float = 0.0
    coeff_g_phi_weight_L1: float = 0.0
    coeff_g_phi_weight_L2: float = 0.0
    coeff_f_theta_weight_L1: float = 0.0
    coeff_f_theta_weight_L2: float = 0.0
    coeff_f_theta_msg_diff: float = 0.0
    # f's leak (its slope in v) the same at the recorded state and at msg = I = 0, where the original's
    # read-out takes it; at extent 8, 12,000 steps, it lifted connectivity_R2 on 3 of 3 seeds
    # (BENCHMARKS.md, "The read-out at the recorded state"); 0 = off
    coeff_f_theta_additivity: float = 1.0e-3
    regul_annealing_rate: float = 5.0  # anneal = 1 - exp(-rate * fractional epochs); 0 = off
    # every group's rate (in every alternate-training phase) x lr_factor(step) over all epochs' steps;
    # at extent 8 a half cosine to 5% helped one seed of three and not the others (BENCHMARKS.md)
    lr_schedule: LRSchedule = LRSchedule.constant
    lr_warmup_fraction: float = 0.0
    lr_final_ratio: float = 0.05
    lr_restart_fraction: float = 0.25
    # alternate training: W phase / V_rest phase cycles inside each epoch. At extent 8, noise 0.05,
    # neither a V_rest phase after 12,000 steps (2 seeds) nor two stages from the start (8 runs) took
    # V_rest_R2 above 0.23; two stages lifted connectivity_R2 on 8 of 8 runs there (0.957 to 0.9655 on
    # seed 3 at 24,000 steps; experiment=flyvis_recovery uses them), from 0.959 to 0.970 on 4 of 4
    # seeds at noise 0.5, and cost 0.088 at noise 0 (BENCHMARKS.md, "Two stages from the start" and
    # the parts after it)
    alternate_training: bool = False
    n_alternations: int = 4
    alternate_vrest_ratio: float = 0.5
    alternate_lr_ratio: float = 0.001  # inactive groups run at active lr x ratio unless set below
    alternate_lr_ratio_W_phase: float | None = None  # f_theta and a in the W phase; None = the above
    alternate_lr_W: float | None = None
    alternate_lr_edge: float | None = None
    alternate_lr_update: float | None = None
    alternate_lr_embedding: float | None = None
    # recurrent (rollout) training: unroll time_step Euler steps on the model's own predictions
    recurrent_training: bool = False
    time_step: int = 1
    noise_recurrent_level: float = 0.0
    # set each embedding to its cluster's median at these fractions of all steps (a GMM on learned
    # features: hydra_llm.models.embedding_snap); [] = off
    embedding_snap_at: list[float] = field(default_factory=list)
    embedding_snap_components: int = 100

    def __post_init__(self) -> None:
        seeds(self, "seed")
        positive(self, "learning_rate_W_start", "learning_rate_start", "learning_rate_embedding_start")
        positive(self, "data_augmentation_loop")
        non_negative(self, *prefixed(self, "coeff_"), "regul_annealing_rate", "noise_recurrent_level")
        at_least_one(
            self, "batch_size", "n_epochs", "n_alternations", "time_step", "embedding_snap_components"
        )
        check_lr_schedule(self)
        if not all(0.0 < float(x) <= 1.0 for x in self.embedding_snap_at):
            fail(
                self,
                "embedding_snap_at",
                list(self.embedding_snap_at),
                "fractions of the steps, each in (0, 1]",
            )
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            fail(self, "max_steps_per_epoch", self.max_steps_per_epoch, "must be an integer >= 1, or null")
        non_negative(self, "alternate_lr_ratio")
        if self.alternate_lr_ratio_W_phase is not None:
            non_negative(self, "alternate_lr_ratio_W_phase")
        if not 0.0 < self.alternate_vrest_ratio < 1.0:
            fail(self, "alternate_vrest_ratio", self.alternate_vrest_ratio, "must be in (0, 1)")


# --------------------------------------------------------------------------------------- metabolism
@dataclass
class MetabolismPhase1Training:
    """Phase 1 of the metabolism GNN (``training=metabolism_phase1``): fit the reactions (log k, MLP_sub)
    on one-step derivatives.

    MLP_node and the embeddings train alongside at a low rate so that the reactions are not bent to explain
    homeostasis; phase 2 starts them afresh (it keeps only log k, MLP_sub and S from phase 1).
    Mini-batches per epoch: ``n_train_frames * data_augmentation_loop * iterations_fraction // batch_size``.
    ``gradient_accumulation`` and ``gradient_clip_val`` are the Trainer's ``accumulate_grad_batches`` and
    ``gradient_clip_val`` (``conf/trainer/cpu.yaml`` reads them from here).
    """

    GROUP: ClassVar[str] = "training"
    phase: int = 1
    seed: int = 0
    n_epochs: int = 1
    batch_size: int = 8
    data_augmentation_loop: float = 100.0
    iterations_fraction: float = 0.2
    learning_rate_k: float = 5.0e-2
    learning_rate_sub: float = 5.0e-3
    learning_rate_node: float = 1.0e-3
    learning_rate_embedding: float = 1.0e-3
    learning_rate_stoichiometry: float = 1.0e-3
    freeze_stoichiometry: bool = True
    time_step: int = 1  # 1: derivative loss; > 1: Euler rollouts of that many steps
    coeff_MLP_sub_diff: float = 0.0  # g(c) must not decrease with c
    coeff_MLP_sub_norm: float = 1.0  # (g(1, 1) - 1)^2 removes the k <-> g scale ambiguity
    coeff_MLP_node_L1: float = 0.0
    coeff_k_floor: float = 0.0  # penalise log10 k below k_floor_threshold
    k_floor_threshold: float = -2.5
    coeff_S_L1: float = 0.0  # learnable stoichiometry only (freeze_stoichiometry: false)
    coeff_S_integer: float = 0.0
    coeff_mass_conservation: float = 0.0
    lr_schedule: LRSchedule = LRSchedule.warmup_decay
    lr_warmup_fraction: float = 0.05
    lr_final_ratio: float = 0.01
    lr_restart_fraction: float = 0.25
    gradient_clip_val: float = 1.0  # 0: off
    gradient_accumulation: int = 1
    k_least_squares_every: int = 500  # every N steps set k to its least-squares optimum given MLP_sub; 0: off
    k_least_squares_ridge: float = 1.0e-3  # relative ridge (towards the current k)
    loss_normalisation: LossNormalisation = LossNormalisation.per_metabolite

    PHASE: ClassVar[int] = 1

    def __post_init__(self) -> None:
        seeds(self, "seed")
        non_negative(self, *prefixed(self, "learning_rate", "coeff_"), "gradient_clip_val")
        positive(self, "data_augmentation_loop", "iterations_fraction")
        at_least_one(self, "batch_size", "n_epochs", "gradient_accumulation", "time_step")
        check_lr_schedule(self)
        if self.k_least_squares_every < 0:
            fail(self, "k_least_squares_every", self.k_least_squares_every, "must be >= 0 (0: off)")
        if self.phase != self.PHASE:
            option = f"metabolism_phase{self.PHASE}"
            fail(self, "phase", self.phase, f"must be {self.PHASE} for training={option}")


@dataclass
class MetabolismPhase2Training(MetabolismPhase1Training):
    """Phase 2 (``training=metabolism_phase2``): reactions frozen (log k, MLP_sub, S from a phase-1
    model); MLP_node and the embeddings learn homeostasis from the data alone.

    Where phase 1 comes from: ``phase1_checkpoint`` (the ``metabolism_phase1.ckpt`` a phase-1 run writes in
    its job folder). When None, phase 1 is trained first with the ``phase1`` block and cached in
    ``phase1_cache_dir``, keyed by the data and that block, so a sweep trains it once per dataset.
    """

    phase: int = 2
    phase1_checkpoint: str | None = None
    phase1_cache_dir: str | None = None  # None: outputs/cache (Hydra runs set it to paths.cache_dir)
    phase1: MetabolismPhase1Training | None = field(default_factory=MetabolismPhase1Training)
    learning_rate_k: float = 0.0  # frozen in phase 2
    learning_rate_sub: float = 0.0  # frozen in phase 2
    learning_rate_node: float = 1.0e-2
    learning_rate_embedding: float = 1.0e-2
    k_least_squares_every: int = 0
    homeostasis_time_step: int = 32  # rollout length (Euler steps); fixed per sweep slot in the study
    # --- phase-2 strategies, all options
    rollout_loss_weight: float = 0.0  # end-to-end rollout loss ||c_hat(t+T) - c(t+T)|| / (dt T)
    residual_supervision_weight: float = 1.0  # 1: MLP_node regresses dc/dt - frozen reaction term
    amplification_factor: float = 1.0  # 2: node output x factor, decaying geometrically to 1
    amplification_decay_fraction: float = 0.5
    coeff_embedding_aux: float = 0.0  # 3: contrastive embedding loss (learned response-curve similarity)
    embedding_aux_margin: float = 1.0
    embedding_aux_grid_points: int = 16
    embedding_aux_sigma_quantile: float = 0.1  # curve distance scale: this quantile of pairwise distances
    rollout_curriculum: bool = False  # 4: rollouts of T, then T/2, then T/4 (three equal stages)
    lr_schedule: LRSchedule = LRSchedule.constant  # 5
    lr_warmup_fraction: float = 0.1
    lr_final_ratio: float = 0.1
    multi_scale_rollout: bool = False  # 6: each mini-batch draws its rollout length from rollout_lengths
    rollout_lengths: list[int] = field(default_factory=lambda: [4, 16, 32, 64])
    separate_loss_components: bool = False  # 8: no gradient through the frozen reaction term in rollouts
    coeff_offset_penalty: float = 0.0  # penalise the per-metabolite mean node output over the batch
    # --- conservation laws (MetabolismGNN.affine_node_targets): reactions conserve every w^T c with
    # w^T S = 0 (S observed), so w^T dc/dt is homeostasis alone, free of phase-1 errors.
    conservation_loss_weight: float = 0.0  # weight of ||W^T (dc/dt - node)||^2 / its data variance
    node_target_weight: float = 0.0  # > 0: regress MLP_node(a) on the exact least-squares (slope, offset)
    node_target_offset_weight: float = 0.1  # relative weight of the weakly identified offsets
    node_target_ridge: float = 1.0e-11  # relative ridge of the least-squares solve
    # --- integrated conservation: w^T (c(t+L) - c(t)) = dt sum_{t<=s<t+L} w^T node(c(s)) on the record
    # itself (exact for Euler steps): no derivative, no reaction term, so measurement noise stays white
    integrated_conservation_weight: float = 0.0
    integrated_window: int = 256  # L, frames per window
    embedding_init: EmbeddingInit = EmbeddingInit.random
    n_node_types: int = 2  # types the conserved_types search partitions the metabolites into
    # every N steps (and at the start and end) set MLP_node's output layer to its least-squares optimum under
    # the integrated conservation equations over the whole record, given the hidden layers; 0: off
    node_least_squares_every: int = 0

    PHASE: ClassVar[int] = 2

    def __post_init__(self) -> None:
        super().__post_init__()  # the phase-1 block checked itself when it was built
        if self.phase1 is None and self.phase1_checkpoint is None:
            fail(self, "phase1_checkpoint", None, "phase 2 needs a phase-1 checkpoint or a `phase1` config")
        data_terms = (
            "rollout_loss_weight",
            "residual_supervision_weight",
            "conservation_loss_weight",
            "integrated_conservation_weight",
        )
        non_negative(self, *prefixed(self, "node_target"), *data_terms)
        at_least_one(self, "homeostasis_time_step", "embedding_aux_grid_points", "integrated_window")
        if self.node_least_squares_every < 0:
            fail(self, "node_least_squares_every", self.node_least_squares_every, "must be >= 0 (0: off)")
        if self.n_node_types < 2:
            fail(self, "n_node_types", self.n_node_types, "must be >= 2")
        if self.amplification_factor < 1.0:
            fail(self, "amplification_factor", self.amplification_factor, "must be >= 1")
        if not self.rollout_lengths or min(self.rollout_lengths) < 1:
            fail(self, "rollout_lengths", self.rollout_lengths, "needs positive lengths")
        if all(getattr(self, key) <= 0 for key in data_terms):
            rule = f"phase 2 needs one of {list(data_terms)} > 0"
            fail(self, "rollout_loss_weight", self.rollout_loss_weight, rule)
