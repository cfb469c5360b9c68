"""The metabolism GNN: learnable rate constants, a substrate MLP and a homeostasis MLP.

Predicted derivative of metabolite ``i`` (concentration units per time unit)::

    dc_i/dt = amp * MLP_node(c_i, a_i) + sum_j S_ij v_j
    v_j     = k_j * aggr_{m in substrates(j)} g(c_m, order_mj),   g = softplus(MLP_sub(c, order))

``aggr`` is ``mul`` (a product, computed as a sum of logs) or ``add``. ``k_j = 10 ** log_k_j`` are
free parameters, ``a_i`` per-metabolite embeddings, ``S`` the stoichiometry (frozen, or learnable with
its regularisers). The module only ever sees :class:`Observations`: the stoichiometry and substrate
orders come from ``observations.extras`` when the regime says they are known.

Training (manual optimisation, so strategies can shape every step):

* ``phase: 1`` fits the reactions (k, MLP_sub, optionally S) on one-step derivatives or ``time_step``
  rollouts. MLP_node and the embeddings train alongside at a low rate so the reactions are not bent to
  explain homeostasis. Two choices make phase 1 converge on a CPU budget: squared errors are divided by
  each metabolite's derivative variance (``loss_normalisation: per_metabolite``), so metabolites at low
  concentration still constrain g at small c; and every ``k_least_squares_every`` steps k is set to its
  least-squares optimum given MLP_sub (the prediction is linear in k), which removes the slow k <-> g
  direction.
* ``phase: 2`` loads a phase-1 model (``phase1_checkpoint``; when null, phase 1 is trained here with the
  ``phase1`` sub-config and cached under ``phase1_cache_dir``, keyed by the data and that config),
  keeps its reactions frozen and fits MLP_node and the embeddings from scratch. The phase-2 strategies
  are options; see ``conf/training/metabolism_phase2.yaml``.
* Conservation laws: every reaction conserves the combinations ``w^T c`` with ``w^T S = 0`` (the left
  null space of the observed S, several dimensions on the default network), so ``w^T dc/dt`` is the
  homeostasis term alone and carries none of phase 1's reaction error, which on the default network is
  ~3x the homeostatic signal per metabolite. ``conservation_loss_weight`` trains on it by SGD;
  ``node_target_weight`` (with ``node_form: affine``) solves it exactly for a per-metabolite slope and
  offset and regresses ``MLP_node(a_i)`` on that solution. Slopes are identified this way; offsets are
  only partly (the conserved combinations of them), so offset ratios stay off.

After ``fit`` the module writes ``metabolism_phase{1,2}.pt`` in the Trainer's ``default_root_dir``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hydra_llm.code_edits.loader import strategy
from hydra_llm.files import atomic_torch_save
from hydra_llm.models.mlp import MLP
from hydra_llm.simulation.base import Observations, config_hash

PHASE2_LOSS = "hydra_llm.strategies.metabolism_phase2"  # the editable phase-2 loss

log = logging.getLogger(__name__)

LN10 = math.log(10.0)
CHECKPOINT_VERSION = 2  # 2: the MLPs are models.mlp.MLP (parameters under .net)
LR_SCHEDULES = ("constant", "warmup_decay", "cosine_restarts")
AGGREGATIONS = ("mul", "add")
LOSS_NORMALISATIONS = ("global", "per_metabolite")
REACTION_ARCH_KEYS = ("hidden_dim_sub", "n_layers_sub", "activation_sub", "substrate_input", "aggr_type")
SUBSTRATE_INPUTS = ("log", "linear")
NODE_FORMS = ("mlp", "affine")
SUB_LOG_FLOOR = 1e-4  # concentrations below this count as this for the log-input substrate MLP


def _fail(key: str, message: str) -> None:
    raise ValueError(f"{key}: {message}")


# ----------------------------------------------------------------------------- training options
PHASE1_DEFAULTS: dict[str, Any] = {
    "phase": 1,
    "seed": 0,
    "n_epochs": 1,
    "batch_size": 8,
    "data_augmentation_loop": 100,
    "iterations_fraction": 0.2,
    "learning_rate_k": 5e-2,
    "learning_rate_sub": 5e-3,
    "learning_rate_node": 1e-3,
    "learning_rate_embedding": 1e-3,
    "learning_rate_stoichiometry": 1e-3,
    "freeze_stoichiometry": True,
    "time_step": 1,
    "coeff_MLP_sub_diff": 0.0,
    "coeff_MLP_sub_norm": 1.0,
    "coeff_MLP_node_L1": 0.0,
    "coeff_k_floor": 0.0,
    "k_floor_threshold": -2.5,
    "coeff_S_L1": 0.0,
    "coeff_S_integer": 0.0,
    "coeff_mass_conservation": 0.0,
    "lr_schedule": "warmup_decay",
    "lr_warmup_fraction": 0.05,
    "lr_final_ratio": 0.01,
    "lr_restart_fraction": 0.25,
    "gradient_clip_val": 1.0,
    "gradient_accumulation": 1,
    "k_least_squares_every": 500,
    "k_least_squares_ridge": 1e-3,
    "loss_normalisation": "per_metabolite",
}

PHASE2_DEFAULTS: dict[str, Any] = {
    **PHASE1_DEFAULTS,
    "phase": 2,
    "k_least_squares_every": 0,
    "learning_rate_k": 0.0,
    "learning_rate_sub": 0.0,
    "learning_rate_node": 1e-2,
    "learning_rate_embedding": 1e-2,
    "data_augmentation_loop": 100,
    "lr_schedule": "constant",
    "lr_warmup_fraction": 0.1,
    "lr_final_ratio": 0.1,
    "phase1_checkpoint": None,
    "phase1_cache_dir": None,
    "phase1": None,
    "homeostasis_time_step": 32,
    "rollout_loss_weight": 0.0,
    "residual_supervision_weight": 1.0,
    "amplification_factor": 1.0,
    "amplification_decay_fraction": 0.5,
    "coeff_embedding_aux": 0.0,
    "embedding_aux_margin": 1.0,
    "embedding_aux_grid_points": 16,
    "embedding_aux_sigma_quantile": 0.1,
    "rollout_curriculum": False,
    "multi_scale_rollout": False,
    "rollout_lengths": [4, 16, 32, 64],
    "separate_loss_components": False,
    "coeff_offset_penalty": 0.0,
    "conservation_loss_weight": 0.0,
    "node_target_weight": 0.0,
    "node_target_offset_weight": 0.1,
    "node_target_ridge": 1e-11,
}


def training_options(training: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``training`` over the defaults of its phase; unknown keys and bad values raise."""
    training = dict(training or {})
    phase = int(training.get("phase", 1))
    if phase not in (1, 2):
        _fail("training.phase", f"must be one of [1, 2], got {phase}")
    defaults = PHASE1_DEFAULTS if phase == 1 else PHASE2_DEFAULTS
    unknown = sorted(set(training) - set(defaults))
    if unknown:
        _fail("training", f"unknown keys {unknown}; allowed keys: {sorted(defaults)}")
    opts = {**defaults, **training}
    if opts["lr_schedule"] not in LR_SCHEDULES:
        _fail("training.lr_schedule", f"got {opts['lr_schedule']!r}; allowed values: {list(LR_SCHEDULES)}")
    if opts["loss_normalisation"] not in LOSS_NORMALISATIONS:
        _fail(
            "training.loss_normalisation",
            f"got {opts['loss_normalisation']!r}; allowed values: {list(LOSS_NORMALISATIONS)}",
        )
    for key in ("batch_size", "n_epochs", "gradient_accumulation", "time_step"):
        if int(opts[key]) < 1:
            _fail(f"training.{key}", f"must be >= 1, got {opts[key]}")
    if phase == 2:
        if int(opts["homeostasis_time_step"]) < 1:
            _fail("training.homeostasis_time_step", f"must be >= 1, got {opts['homeostasis_time_step']}")
        if float(opts["amplification_factor"]) < 1.0:
            _fail("training.amplification_factor", f"must be >= 1, got {opts['amplification_factor']}")
        if not opts["rollout_lengths"] or min(int(v) for v in opts["rollout_lengths"]) < 1:
            _fail("training.rollout_lengths", f"needs positive lengths, got {opts['rollout_lengths']}")
        data_terms = ("rollout_loss_weight", "residual_supervision_weight", "conservation_loss_weight")
        if all(float(opts[key]) <= 0 for key in data_terms):
            _fail(
                "training.rollout_loss_weight",
                f"phase 2 needs one of {list(data_terms)} > 0 (no data term)",
            )
        if opts["phase1_checkpoint"] is None and opts["phase1"] is None:
            _fail(
                "training.phase1_checkpoint", "phase 2 needs a phase-1 checkpoint path or a `phase1` config"
            )
    for key, value in opts.items():
        if key.startswith(("learning_rate", "coeff_")) and float(value) < 0:
            _fail(f"training.{key}", f"must be >= 0, got {value}")
    return opts


def lr_factor(schedule: str, step: int, total: int, opts: Mapping[str, Any]) -> float:
    """Multiplier of every base learning rate at ``step`` of ``total`` optimiser steps."""
    if schedule == "constant" or total <= 1:
        return 1.0
    frac = step / max(1, total - 1)
    final = float(opts["lr_final_ratio"])
    if schedule == "warmup_decay":
        warm = float(opts["lr_warmup_fraction"])
        if warm > 0 and frac < warm:
            return (step + 1) / max(1.0, warm * total)
        rest = (frac - warm) / max(1e-12, 1.0 - warm)
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, rest)))
    period = max(1e-6, float(opts["lr_restart_fraction"]))
    phase = (frac % period) / period
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * phase))


# ----------------------------------------------------------------------------------- the module
class MetabolismGNN(pl.LightningModule):
    """Reaction network model with homeostasis; see the module docstring for the equations.

    Args:
        observations: the recorded data (concentrations (T, N), derivatives (T, N), dt, and the known
            ``stoichiometry`` (N, R) and ``substrate_order`` (N, R) in ``extras``).
        training: plain dict of training options (``training_options`` lists them).
        hidden_dim_sub, n_layers_sub: MLP_sub width and number of linear layers.
        hidden_dim_node, n_layers_node: MLP_node width and number of linear layers.
        embedding_dim: size of the per-metabolite embedding a_i.
        node_form: ``mlp``: MLP_node(c, a) is a free function of both; ``affine``: MLP_node(a) gives a
            slope and an offset and the node term is ``slope(a) * c / c_scale + offset(a)`` (a homeostasis
            term with less freedom: linear in the metabolite's own concentration).
        aggr_type: ``mul`` (log-space product) or ``add``.
        log_k_init: (low, high) of the uniform initialisation of log10 k.
    """

    # Lets a caller check cfg.training before simulating: get_class(target).check_training(training).
    check_training = staticmethod(training_options)

    def __init__(
        self,
        observations: Observations,
        training: Mapping[str, Any] | None = None,
        hidden_dim_sub: int = 64,
        n_layers_sub: int = 4,
        hidden_dim_node: int = 32,
        n_layers_node: int = 2,
        embedding_dim: int = 2,
        node_form: str = "mlp",
        aggr_type: str = "mul",
        activation: str = "tanh",
        activation_sub: str = "silu",
        substrate_input: str = "log",
        log_k_init: tuple[float, float] | list[float] = (-3.0, 0.0),
    ) -> None:
        super().__init__()
        if substrate_input not in SUBSTRATE_INPUTS:
            _fail(
                "model.substrate_input", f"got {substrate_input!r}; allowed values: {list(SUBSTRATE_INPUTS)}"
            )
        if node_form not in NODE_FORMS:
            _fail("model.node_form", f"got {node_form!r}; allowed values: {list(NODE_FORMS)}")
        if aggr_type not in AGGREGATIONS:
            _fail("model.aggr_type", f"got {aggr_type!r}; allowed values: {list(AGGREGATIONS)}")
        extras = observations.extras
        missing = [k for k in ("stoichiometry", "substrate_order") if k not in extras]
        if missing:
            _fail(
                "simulation.stoichiometry_known",
                f"the metabolism model needs the observed {missing}; set stoichiometry_known: true",
            )
        self.opts = training_options(training)
        self.arch = {
            "hidden_dim_sub": int(hidden_dim_sub),
            "n_layers_sub": int(n_layers_sub),
            "hidden_dim_node": int(hidden_dim_node),
            "n_layers_node": int(n_layers_node),
            "embedding_dim": int(embedding_dim),
            "node_form": node_form,
            "aggr_type": aggr_type,
            "activation": activation,
            "activation_sub": activation_sub,
            "substrate_input": substrate_input,
            "log_k_init": [float(v) for v in log_k_init],
        }
        self.automatic_optimization = False
        self.aggr_type = aggr_type
        self.substrate_input = substrate_input
        self.log_c_scale = 3.0
        self.dt = float(observations.dt)
        self.n_train_frames = int(observations.n_train_frames)

        stoich = extras["stoichiometry"].float()
        order = extras["substrate_order"].float()
        n_met, n_rxn = stoich.shape
        met, rxn = torch.nonzero(order > 0, as_tuple=True)
        self.register_buffer("activity", observations.activity.float(), persistent=False)
        self.register_buffer("derivative", observations.derivative.float(), persistent=False)
        self.register_buffer("edge_met", met, persistent=False)
        self.register_buffer("edge_rxn", rxn, persistent=False)
        self.register_buffer("edge_order", order[met, rxn], persistent=False)
        # error weight per metabolite (N,): 1 / variance of its recorded derivative, or one global value.
        # Per metabolite, low-concentration metabolites (tiny derivatives) still constrain g at small c.
        train_dcdt = observations.derivative[: self.n_train_frames].float()
        if self.opts["loss_normalisation"] == "per_metabolite":
            var = train_dcdt.var(0)
            var = var.clamp_min(1e-6 * float(var.max().clamp_min(1e-30)))
        else:
            var = train_dcdt.var().expand(n_met).clone()
        self.register_buffer("error_weight", 1.0 / var.clamp_min(1e-30), persistent=False)
        # concentration scale for MLP inputs (a property of the recording, not a hidden parameter)
        self.c_scale = float(observations.activity[: self.n_train_frames].std().clamp_min(1e-6))
        self.n_metabolites, self.n_reactions = int(n_met), int(n_rxn)

        low, high = self.arch["log_k_init"]
        self.log_k = nn.Parameter(torch.empty(n_rxn).uniform_(low, high))
        self.MLP_sub = MLP(2, 1, hidden_dim_sub, n_layers_sub, activation_sub, out_init_std=None)
        self.node_form = node_form
        if node_form == "mlp":
            self.MLP_node = MLP(
                1 + embedding_dim, 1, hidden_dim_node, n_layers_node, activation, out_init_std=None
            )
        else:
            self.MLP_node = MLP(
                embedding_dim, 2, hidden_dim_node, n_layers_node, activation, out_init_std=None
            )
        # zero output layer only: the node term starts at 0 but its hidden layers still get gradient
        nn.init.zeros_(self.MLP_node.net[-1].weight)
        nn.init.zeros_(self.MLP_node.net[-1].bias)
        self.embedding = nn.Parameter(1.0 + 0.01 * torch.randn(n_met, embedding_dim))
        if self.opts["freeze_stoichiometry"]:
            self.register_buffer("stoichiometry", stoich)
        else:
            self.stoichiometry = nn.Parameter(stoich.clone())

        self.node_amplification = 1.0
        self.final_loss = math.nan
        self.loss_history: list[float] = []
        self._step = 0
        self._total_steps = 1
        self._rng = random.Random(int(self.opts["seed"]))
        # left null space of the observed S (N, n_laws): conserved combinations w^T c that reactions
        # cannot change, so w^T dc/dt is homeostasis alone, whatever the error of the learned reactions
        self.register_buffer("conservation_basis", conservation_basis(stoich), persistent=False)
        if self.opts["phase"] == 2:
            if float(self.opts["node_target_weight"]) > 0 and node_form != "affine":
                _fail(
                    "training.node_target_weight", "needs model.node_form: affine; allowed values: [affine]"
                )
            self._load_phase1(observations)
            self.residual_scale = self._residual_std()
            projected = self.derivative[: self.n_train_frames] @ self.conservation_basis
            self.conservation_scale = (
                float(projected.pow(2).mean().clamp_min(1e-30)) if projected.numel() else 1.0
            )
            if float(self.opts["node_target_weight"]) > 0:
                self.register_buffer("node_targets", self.affine_node_targets(), persistent=False)

    # ------------------------------------------------------------------------------- forward
    def log_substrate_function(self, conc: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """log g(c, s) for concentrations ``conc`` and orders ``order`` of the same shape."""
        if self.substrate_input == "log":
            # log-concentration input: a power law c**s is a straight line for the MLP
            x = torch.stack([torch.log(conc.clamp_min(SUB_LOG_FLOOR)) / self.log_c_scale, order], dim=-1)
            return self.MLP_sub(x).squeeze(-1)
        x = torch.stack([conc / self.c_scale, order], dim=-1)
        return torch.log(F.softplus(self.MLP_sub(x).squeeze(-1)).clamp_min(1e-12))

    def substrate_function(self, conc: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """g(c, s) > 0 for concentrations ``conc`` and orders ``order`` of the same shape."""
        return torch.exp(self.log_substrate_function(conc, order))

    def reaction_rates(self, conc: torch.Tensor) -> torch.Tensor:
        """Reaction rates v (B, R) from concentrations (B, N)."""
        log_g = self.log_substrate_function(conc[:, self.edge_met], self.edge_order.expand(conc.shape[0], -1))
        batch = conc.shape[0]
        if self.aggr_type == "mul":
            summed = torch.zeros(batch, self.n_reactions, dtype=conc.dtype, device=conc.device)
            summed = summed.index_add(1, self.edge_rxn, log_g)
            return torch.exp(LN10 * self.log_k + summed)
        summed = torch.zeros(batch, self.n_reactions, dtype=conc.dtype, device=conc.device)
        summed = summed.index_add(1, self.edge_rxn, torch.exp(log_g))
        return torch.exp(LN10 * self.log_k) * summed

    def reaction_term(self, conc: torch.Tensor) -> torch.Tensor:
        """sum_j S_ij v_j, (B, N)."""
        return self.reaction_rates(conc) @ self.stoichiometry.T

    def node_function(self, conc: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Raw MLP_node(c_i, a_i) (B, N) for concentrations (B, N); ``embedding`` (N, d) defaults to a."""
        emb = self.embedding if embedding is None else embedding
        if self.node_form == "affine":
            slope_offset = self.MLP_node(emb)  # (N, 2), per metabolite
            return slope_offset[:, 0] * (conc / self.c_scale) + slope_offset[:, 1]
        x = torch.cat([(conc / self.c_scale).unsqueeze(-1), emb.expand(conc.shape[0], -1, -1)], dim=-1)
        return self.MLP_node(x).squeeze(-1)

    def homeostasis_term(self, conc: torch.Tensor) -> torch.Tensor:
        """The node contribution to dc/dt, (B, N), including the current amplification factor."""
        return self.node_amplification * self.node_function(conc)

    def forward(self, conc: torch.Tensor) -> torch.Tensor:
        """Predicted dc/dt (B, N) for concentrations (B, N)."""
        return self.reaction_term(conc) + self.homeostasis_term(conc)

    def rollout(self, conc: torch.Tensor, n_steps: int, detach_reactions: bool = False) -> torch.Tensor:
        """Euler-unroll ``n_steps`` from ``conc`` (B, N); the states after each step, (n_steps, B, N)."""
        states = []
        for _ in range(n_steps):  # time stepping is sequential
            reaction = self.reaction_term(conc)
            if detach_reactions:
                reaction = reaction.detach()
            conc = conc + self.dt * (reaction + self.homeostasis_term(conc))
            states.append(conc)
        return torch.stack(states)

    # ---------------------------------------------------------------------------- read-outs
    def alpha(self) -> float:
        """Scale of the learned substrate function at c = 1, order 1 (1 for exact mass action)."""
        with torch.no_grad():
            one = torch.ones(1, device=self.log_k.device)
            return float(self.substrate_function(one, one))

    def corrected_log_k(self) -> torch.Tensor:
        """log10 k with the substrate scale folded back in (R,): ``log k + n_sub log alpha`` (mul),
        ``log k + log alpha`` (add)."""
        n_sub = torch.zeros(self.n_reactions, device=self.log_k.device).index_add(
            0, self.edge_rxn, torch.ones_like(self.edge_rxn, dtype=torch.float32)
        )
        factor = n_sub if self.aggr_type == "mul" else torch.ones_like(n_sub)
        return (self.log_k + factor * math.log10(max(self.alpha(), 1e-30))).detach()

    # ------------------------------------------------------------------------- optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """Adam groups with their own learning rates; a group at lr 0 is frozen (requires_grad off)."""
        groups = [
            ("k", [self.log_k], "learning_rate_k"),
            ("sub", list(self.MLP_sub.parameters()), "learning_rate_sub"),
            ("node", list(self.MLP_node.parameters()), "learning_rate_node"),
            ("embedding", [self.embedding], "learning_rate_embedding"),
        ]
        if isinstance(self.stoichiometry, nn.Parameter):
            groups.append(("stoichiometry", [self.stoichiometry], "learning_rate_stoichiometry"))
        out = []
        for name, params, key in groups:
            lr = float(self.opts[key])
            for p in params:
                p.requires_grad_(lr > 0)
            if lr > 0:
                out.append({"params": params, "lr": lr, "base_lr": lr, "name": name})
        if not out:
            _fail("training.learning_rate_*", "every learning rate is 0: nothing to train")
        return out

    def steps_per_epoch(self) -> int:
        o = self.opts
        frames = self.n_train_frames * float(o["data_augmentation_loop"]) * float(o["iterations_fraction"])
        return max(1, int(frames / int(o["batch_size"])))

    def max_window(self) -> int:
        o = self.opts
        if o["phase"] == 1:
            return int(o["time_step"])
        window = int(o["homeostasis_time_step"])
        if o["multi_scale_rollout"]:
            window = max(window, *[int(v) for v in o["rollout_lengths"]])
        return window

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.param_groups())

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "configure_sampling"):
            datamodule.configure_sampling(
                batch_size=int(self.opts["batch_size"]),
                steps_per_epoch=self.steps_per_epoch(),
                window=self.max_window(),
                seed=int(self.opts["seed"]),
            )

    def on_train_start(self) -> None:
        accum = int(self.opts["gradient_accumulation"])
        batches = self.steps_per_epoch() * int(self.opts["n_epochs"])
        self._total_steps = max(1, batches // accum)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        loss = self.optimisation_step(batch, optimizer, batch_idx)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_train_end(self) -> None:
        if self._trainer is not None and self.trainer.default_root_dir:
            path = Path(self.trainer.default_root_dir) / f"metabolism_phase{self.opts['phase']}.pt"
            self.save_phase_checkpoint(path)

    def optimisation_step(
        self, starts: torch.Tensor, optimizer: torch.optim.Optimizer, batch_idx: int
    ) -> torch.Tensor:
        """One mini-batch: loss, backward, and (every ``gradient_accumulation`` batches) an Adam step."""
        accum = int(self.opts["gradient_accumulation"])
        self._update_schedules()
        losses = self.phase1_losses(starts) if self.opts["phase"] == 1 else self.phase2_losses(starts)
        loss = sum(losses.values())
        scaled = loss / accum
        if self._trainer is not None:
            self.manual_backward(scaled)
        else:
            scaled.backward()
        if (batch_idx + 1) % accum == 0:
            clip = float(self.opts["gradient_clip_val"])
            if clip > 0:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self._step += 1
            every = int(self.opts["k_least_squares_every"])
            if every > 0 and self._step % every == 0:
                self.refit_rate_constants()
        value = float(loss.detach())
        self.loss_history.append(value)
        self.final_loss = float(np.mean(self.loss_history[-50:]))
        return loss.detach()

    def _update_schedules(self) -> None:
        """Learning-rate schedule and amplification decay, both per optimiser step."""
        o = self.opts
        factor = lr_factor(o["lr_schedule"], self._step, self._total_steps, o)
        if self._trainer is not None:
            optimizer = self.optimizers()
            groups = (
                optimizer.optimizer.param_groups
                if hasattr(optimizer, "optimizer")
                else optimizer.param_groups
            )
        else:
            groups = self._plain_optimizer.param_groups
        for group in groups:
            group["lr"] = group["base_lr"] * factor
        if o["phase"] == 2:
            amp = float(o["amplification_factor"])
            decay = float(o["amplification_decay_fraction"])
            frac = self._step / max(1, self._total_steps)
            if amp > 1.0:
                # geometric decay from amp to 1 over the first `decay` fraction of training
                progress = min(1.0, frac / decay) if decay > 0 else 0.0
                self.node_amplification = amp ** (1.0 - progress)
            else:
                self.node_amplification = 1.0

    def fit_steps(self, n_steps: int) -> None:
        """Train without a Lightning Trainer (used to produce a phase-1 model inside phase 2)."""
        self._plain_optimizer = torch.optim.Adam(self.param_groups())
        accum = int(self.opts["gradient_accumulation"])
        self._total_steps = max(1, n_steps // accum)
        gen = torch.Generator().manual_seed(int(self.opts["seed"]))
        n_valid = self.n_train_frames - self.max_window()
        if n_valid < 1:
            _fail("training.time_step", f"rollout of {self.max_window()} is longer than the training frames")
        for i in range(n_steps):
            starts = torch.randint(0, n_valid, (int(self.opts["batch_size"]),), generator=gen)
            self.optimisation_step(starts, self._plain_optimizer, i)

    def on_train_epoch_end(self) -> None:
        if int(self.opts["k_least_squares_every"]) > 0:
            self.refit_rate_constants()

    @torch.no_grad()
    def refit_rate_constants(self, chunk: int = 512) -> None:
        """Set k to its least-squares optimum given the current substrate function (variable projection).

        The prediction is linear in k: ``dc/dt - node = S diag(k) m(t)`` with ``m = v / k``, so over all
        training frames the normal equations are ``((S^T S) * (M^T M)) k = sum_t (S^T y_t) * m_t``
        (``*`` elementwise; M (T, R)). Solved with a small ridge towards the current k (so weakly
        identified reactions stay where they are) and kept above ``10 ** (k_floor_threshold - 1)``.
        This removes the slow k <-> substrate-shape direction that plain gradient descent crawls along.
        """
        n_rxn = self.n_reactions
        gram = torch.zeros(n_rxn, n_rxn, dtype=torch.float64, device=self.log_k.device)
        rhs = torch.zeros(n_rxn, dtype=torch.float64, device=self.log_k.device)
        k = torch.exp(LN10 * self.log_k.double())
        S = self.stoichiometry.detach().double()
        weight = self.error_weight.double().sqrt()
        S = weight.unsqueeze(1) * S  # weighted least squares, rows scaled like the training loss
        for start in range(0, self.n_train_frames, chunk):
            conc = self.activity[start : min(start + chunk, self.n_train_frames)]
            m = self.reaction_rates(conc).double() / k
            y = self.derivative[start : start + len(conc)].double() - self.homeostasis_term(conc).double()
            y = y * weight
            gram += m.T @ m
            rhs += ((y @ S) * m).sum(0)
        system = gram * (S.T @ S)
        ridge = float(self.opts["k_least_squares_ridge"]) * float(system.diagonal().mean())
        system += ridge * torch.eye(n_rxn, dtype=system.dtype, device=system.device)
        solution = torch.linalg.solve(system, rhs + ridge * k)
        floor = 10.0 ** (float(self.opts["k_floor_threshold"]) - 1.0)
        self.log_k.copy_(torch.log10(solution.clamp_min(floor)).float())

    # ------------------------------------------------------------------------------- losses
    def regularisers(self, conc: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.opts
        reg: dict[str, torch.Tensor] = {}
        if o["coeff_MLP_sub_diff"] > 0 or o["coeff_MLP_sub_norm"] > 0:
            c_e = conc[:, self.edge_met]
            s_e = self.edge_order.expand_as(c_e)
            if o["coeff_MLP_sub_diff"] > 0:
                # g must not decrease with concentration
                drop = F.relu(self.substrate_function(c_e, s_e) - self.substrate_function(1.05 * c_e, s_e))
                reg["sub_diff"] = o["coeff_MLP_sub_diff"] * drop.mean()
            if o["coeff_MLP_sub_norm"] > 0:
                one = torch.ones(1, device=conc.device)
                reg["sub_norm"] = (
                    o["coeff_MLP_sub_norm"] * (self.substrate_function(one, one) - 1.0).pow(2).sum()
                )
        if o["coeff_MLP_node_L1"] > 0:
            reg["node_L1"] = o["coeff_MLP_node_L1"] * self.node_function(conc).abs().mean()
        if o["coeff_k_floor"] > 0:
            reg["k_floor"] = o["coeff_k_floor"] * F.relu(o["k_floor_threshold"] - self.log_k).pow(2).sum()
        if isinstance(self.stoichiometry, nn.Parameter):
            S = self.stoichiometry
            if o["coeff_S_L1"] > 0:
                reg["S_L1"] = o["coeff_S_L1"] * S.abs().mean()
            if o["coeff_S_integer"] > 0:
                reg["S_integer"] = o["coeff_S_integer"] * torch.sin(math.pi * S).pow(2).mean()
            if o["coeff_mass_conservation"] > 0:
                reg["mass_conservation"] = o["coeff_mass_conservation"] * S.sum(0).pow(2).mean()
        return reg

    def window(self, starts: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Recorded states (n_steps + 1, B, N) from each start frame."""
        offsets = torch.arange(n_steps + 1, device=starts.device)
        return self.activity[starts.unsqueeze(0) + offsets.unsqueeze(1)]

    def phase1_losses(self, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Derivative loss (time_step 1) or rollout loss, scaled by the derivative variance."""
        steps = int(self.opts["time_step"])
        conc = self.activity[starts]
        if steps == 1:
            err = self(conc) - self.derivative[starts]
        else:
            window = self.window(starts, steps)
            err = (self.rollout(conc, steps)[-1] - window[-1]) / (self.dt * steps)
        loss = (err.pow(2) * self.error_weight).mean()
        return {"prediction": loss, **self.regularisers(conc)}

    def current_time_step(self) -> int:
        o = self.opts
        base = int(o["homeostasis_time_step"])
        if o["multi_scale_rollout"]:
            choices = [int(v) for v in o["rollout_lengths"]]
            return self._rng.choice(choices)
        if o["rollout_curriculum"]:
            # longest rollouts first, then halves: T, T/2, T/4 in three equal stages
            stage = min(2, int(3 * self._step / max(1, self._total_steps)))
            return max(1, base // (2**stage))
        return base

    def phase2_losses(self, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        """The phase-2 loss terms of a batch of start frames (the editable strategy
        ``hydra_llm.strategies.metabolism_phase2``, or the code version this run was given)."""
        return strategy(PHASE2_LOSS).phase2_losses(self, starts)

    @torch.no_grad()
    def affine_node_targets(self) -> torch.Tensor:
        """Exact minimiser of the phase-2 data terms over free per-metabolite affine node terms.

        With ``h_i(c) = theta_i c / c_scale + beta_i`` the conservation and residual losses are linear
        least squares in the 2N unknowns (theta, beta), solved here over all training frames (normal
        equations, a tiny relative ridge). Conservation rows (``w^T (dc/dt - h) = 0``) carry no phase-1
        error and pin the slopes; residual rows fill in what the conserved combinations leave free
        (most offsets). Returns (2, N, 2): targets [(theta, beta) per metabolite] and their scales.
        """
        o = self.opts
        n, t = self.n_metabolites, self.n_train_frames
        conc = self.activity[:t].double() / self.c_scale
        dcdt = self.derivative[:t].double()
        W = self.conservation_basis.double()
        gram = torch.zeros(2 * n, 2 * n, dtype=torch.float64, device=conc.device)
        rhs = torch.zeros(2 * n, dtype=torch.float64, device=conc.device)
        w_c = float(o["conservation_loss_weight"]) / self.conservation_scale
        if w_c > 0 and W.shape[1] > 0:
            # rows (t, k): [W_ik c_i(t), W_ik] . (theta, beta) = sum_i W_ik dc_i/dt(t)
            rows = torch.cat(
                [conc.unsqueeze(1) * W.T.unsqueeze(0), W.T.unsqueeze(0).expand(t, -1, -1)], dim=-1
            ).reshape(-1, 2 * n)
            gram += w_c * rows.T @ rows
            rhs += w_c * rows.T @ (dcdt @ W).reshape(-1)
        w_r = float(o["residual_supervision_weight"]) / self.residual_scale**2
        if w_r > 0:
            residual = torch.cat(
                [
                    dcdt[i : i + 512] - self.reaction_term(self.activity[i : min(i + 512, t)]).double()
                    for i in range(0, t, 512)
                ]
            )
            # per-metabolite rows [c_i(t), 1] . (theta_i, beta_i) = residual_i(t): a 2x2 block each
            idx = torch.arange(n, device=conc.device)
            gram[idx, idx] += w_r * conc.pow(2).sum(0)
            gram[idx, idx + n] += w_r * conc.sum(0)
            gram[idx + n, idx] += w_r * conc.sum(0)
            gram[idx + n, idx + n] += w_r * t
            rhs[:n] += w_r * (conc * residual).sum(0)
            rhs[n:] += w_r * residual.sum(0)
        ridge = float(o["node_target_ridge"]) * float(gram.diagonal().mean().clamp_min(1e-30))
        solution = torch.linalg.solve(gram + ridge * torch.eye(2 * n, dtype=gram.dtype), rhs)
        targets = torch.stack([solution[:n], solution[n:]], dim=1)  # (N, 2)
        scales = targets.std(0, keepdim=True).clamp_min(1e-12).expand(n, -1)
        return torch.stack([targets, scales]).float()

    def response_curves(self, n_points: int) -> torch.Tensor:
        """MLP_node(c, a_i) on a concentration grid spanning the training recording, (N, n_points)."""
        train = self.activity[: self.n_train_frames]
        grid = torch.linspace(float(train.min()), float(train.max()), n_points, device=train.device)
        return self.node_function(grid.unsqueeze(1).expand(-1, self.n_metabolites)).T

    def embedding_aux_loss(self) -> torch.Tensor:
        """Contrastive loss on the embeddings, weighted by how similar the *learned* response curves are
        (no labels). Pairs whose curves are closer than the ``embedding_aux_sigma_quantile`` quantile of
        all pairwise curve distances pull together; the others are pushed at least
        ``embedding_aux_margin`` apart (in units of the embedding spread)."""
        with torch.no_grad():
            curves = self.response_curves(int(self.opts["embedding_aux_grid_points"]))
            dist = torch.cdist(curves, curves)
            off_diagonal = dist[~torch.eye(len(dist), dtype=torch.bool, device=dist.device)]
            sigma = torch.quantile(off_diagonal, float(self.opts["embedding_aux_sigma_quantile"]))
            weight = torch.exp(-(dist / sigma.clamp_min(1e-12)).pow(2))
        emb = self.embedding
        spread = emb.detach().std(0).norm().clamp_min(1e-3)
        d_emb = torch.cdist(emb, emb) / spread
        margin = float(self.opts["embedding_aux_margin"])
        pull = weight * d_emb.pow(2)
        push = (1.0 - weight) * F.relu(margin - d_emb).pow(2)
        return (pull + push).mean()

    # --------------------------------------------------------------------------- phase 1 I/O
    def _residual_std(self) -> float:
        with torch.no_grad():
            train = self.activity[: self.n_train_frames]
            residual = self.derivative[: self.n_train_frames] - self.reaction_term(train)
        return float(residual.std().clamp_min(1e-12))

    def save_phase_checkpoint(self, path: str | Path) -> None:
        """Write the learned parameters with the architecture and sizes needed to check compatibility."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "version": CHECKPOINT_VERSION,
            "arch": self.arch,
            "n_metabolites": self.n_metabolites,
            "n_reactions": self.n_reactions,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "final_loss": self.final_loss,
        }
        atomic_torch_save(blob, path)

    def _load_phase1(self, observations: Observations) -> None:
        o = self.opts
        path = o["phase1_checkpoint"]
        if path is None:
            path = self._phase1_from_cache(observations)
        path = Path(path)
        if not path.exists():
            _fail("training.phase1_checkpoint", f"file not found: {path}")
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if blob.get("version") != CHECKPOINT_VERSION:
            _fail("training.phase1_checkpoint", f"{path} is not a metabolism phase-1 checkpoint")
        if (blob["n_metabolites"], blob["n_reactions"]) != (self.n_metabolites, self.n_reactions):
            _fail(
                "training.phase1_checkpoint",
                f"{path} has {blob['n_metabolites']} metabolites / {blob['n_reactions']} reactions, "
                f"the data has {self.n_metabolites} / {self.n_reactions}",
            )
        # only the reaction part is loaded, so only its architecture has to match
        theirs = {k: blob["arch"].get(k) for k in REACTION_ARCH_KEYS}
        ours = {k: self.arch[k] for k in REACTION_ARCH_KEYS}
        if theirs != ours:
            _fail("training.phase1_checkpoint", f"reaction architecture differs: {theirs} vs model {ours}")
        state = blob["state_dict"]
        own = self.state_dict()
        # phase 2 keeps the reactions (and stoichiometry) and starts node/embedding afresh
        keep = {
            k: v for k, v in state.items() if k.startswith(("log_k", "MLP_sub", "stoichiometry")) and k in own
        }
        self.load_state_dict({**own, **keep})
        self.phase1_path = str(path)
        log.info("phase 2: reactions loaded from %s", path)

    def _phase1_from_cache(self, observations: Observations) -> Path:
        """Train phase 1 with the ``phase1`` sub-config, or reuse the cached result for this data."""
        o = self.opts
        phase1 = dict(o["phase1"])
        phase1["phase"] = 1
        key = config_hash(
            {"data": _digest(observations), "phase1": phase1, "arch": self.arch, "format": CHECKPOINT_VERSION}
        )
        cache_dir = Path(o["phase1_cache_dir"] or "outputs/cache")
        path = cache_dir / f"metabolism_phase1-{key}.pt"
        if path.exists():
            return path
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):  # children sharing this data train phase 1 once
            if path.exists():
                return path
            log.info("phase 2: no phase-1 checkpoint given; training phase 1 first (cached at %s)", path)
            # a private RNG state so that producing phase 1 does not shift phase 2's own initialisation
            with torch.random.fork_rng():
                torch.manual_seed(int(phase1.get("seed", 0)))
                model = MetabolismGNN(observations, training=phase1, **_arch_kwargs(self.arch))
                model.fit_steps(model.steps_per_epoch() * int(phase1.get("n_epochs", 1)))
            model.save_phase_checkpoint(path)
        return path


def conservation_basis(stoichiometry: torch.Tensor, rtol: float = 1e-8) -> torch.Tensor:
    """Orthonormal basis (N, N - rank S) of the left null space of the stoichiometry S (N, R).

    Each column w satisfies w^T S = 0: the combination w^T c of concentrations is conserved by every
    reaction (the all-ones vector is one of them when reactions conserve molecules).
    """
    u, sv, _ = torch.linalg.svd(stoichiometry.double(), full_matrices=True)
    rank = int((sv > rtol * sv.max().clamp_min(1e-300)).sum()) if sv.numel() else 0
    return u[:, rank:].float().contiguous()


def _arch_kwargs(arch: Mapping[str, Any]) -> dict[str, Any]:
    return {**copy.deepcopy(dict(arch))}


def _digest(observations: Observations) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(observations.activity.numpy().tobytes())
    h.update(str(observations.dt).encode())
    return h.hexdigest()[:16]
