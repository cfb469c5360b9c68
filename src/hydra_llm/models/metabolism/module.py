"""The metabolism GNN as a LightningModule: the network of :mod:`.network` trained in two phases.

* ``phase: 1`` fits the reactions (k, MLP_sub, optionally S) on one-step derivatives or ``time_step``
  rollouts. MLP_node and the embeddings train alongside at a low rate so the reactions are not bent to
  explain homeostasis. Two choices make phase 1 converge on a CPU budget: squared errors are divided by
  each metabolite's derivative variance (``loss_normalisation: per_metabolite``), so metabolites at low
  concentration still constrain g at small c; and every ``k_least_squares_every`` optimiser steps k is set
  to its least-squares optimum given MLP_sub (the prediction is linear in k), which removes the slow
  k <-> g direction.
* ``phase: 2`` loads a phase-1 checkpoint (``phase1_checkpoint``; when None, phase 1 is trained here, in
  its own ``fit``, with the ``phase1`` options and cached under ``phase1_cache_dir``, keyed by the data
  and those options), keeps its reactions frozen and fits MLP_node and the embeddings from scratch. Its
  loss is the editable strategy ``hydra_llm.strategies.metabolism_phase2``.
* Conservation laws: every reaction conserves the combinations ``w^T c`` with ``w^T S = 0`` (the left null
  space of the observed S), so ``w^T dc/dt`` is the homeostasis term alone and carries none of phase 1's
  reaction error. ``conservation_loss_weight`` trains on it by SGD; ``node_target_weight`` (with
  ``node_form: affine``) solves it exactly for a per-metabolite slope and offset and regresses
  ``MLP_node(a_i)`` on that solution. Slopes are identified this way; offsets only partly. Under
  measurement noise the derivative is too noisy for either; ``integrated_conservation_weight`` trains a
  free ``MLP_node(c, a)`` on the same laws integrated over windows of the record itself (no derivative),
  ``embedding_init: conserved_types`` places the embeddings by the partition of metabolites that fits
  those laws best (:mod:`.conserved_types`), and ``node_least_squares_every`` sets MLP_node's output layer
  to its least-squares optimum over the record (:func:`.least_squares.refit_node_output`).

The Trainer owns the loop: ``gradient_accumulation`` and ``gradient_clip_val`` are its
``accumulate_grad_batches`` and ``gradient_clip_val`` (:func:`trainer_settings`), the learning-rate
schedule is a ``LambdaLR`` stepped per optimiser step. After ``fit`` the module writes the Lightning
checkpoint ``metabolism_phase{1,2}.ckpt`` in the Trainer's ``default_root_dir``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from hydra_llm.code_edits.loader import strategy
from hydra_llm.files import atomic_write
from hydra_llm.models.lr_schedule import lr_factor
from hydra_llm.models.metabolism import least_squares, losses
from hydra_llm.models.metabolism.conserved_types import conserved_types
from hydra_llm.models.metabolism.network import REACTION_ARCH_KEYS, ReactionNetwork
from hydra_llm.models.metabolism.options import (
    amplification,
    check_training,
    trainer_settings,
    training_options,
)
from hydra_llm.simulation.base import Observations, config_hash
from hydra_llm.simulation.frames import FrameSampling, start_frame_loader

PHASE2_LOSS = "hydra_llm.strategies.metabolism_phase2"  # the editable phase-2 loss
CHECKPOINT_VERSION = 3  # 3: a Lightning checkpoint with a "metabolism" entry (see on_save_checkpoint)

log = logging.getLogger(__name__)


class MetabolismGNN(ReactionNetwork):
    """Reaction network model with homeostasis, trained by a Lightning Trainer (module docstring).

    Args:
        observations: the recorded data (see :class:`ReactionNetwork`).
        training: training options (``hydra_llm.schemas.training.MetabolismPhase{1,2}Training``); missing
            keys take the schema's defaults, unknown keys and bad values raise.
        **arch: the network's architecture (:class:`ReactionNetwork`'s arguments).
    """

    # Lets a caller check cfg.training before simulating: get_class(target).check_training(training).
    check_training = staticmethod(check_training)

    # the losses and least-squares steps, bound as methods (the phase-2 strategy calls some of them)
    regularisers = losses.regularisers
    phase1_losses = losses.phase1_losses
    embedding_aux_loss = losses.embedding_aux_loss
    refit_rate_constants = least_squares.refit_rate_constants
    refit_node_output = least_squares.refit_node_output
    affine_node_targets = least_squares.affine_node_targets

    def __init__(
        self, observations: Observations, training: Mapping[str, Any] | None = None, **arch: Any
    ) -> None:
        self.opts = training_options(training)
        super().__init__(observations, learnable_stoichiometry=not self.opts["freeze_stoichiometry"], **arch)
        # error weight per metabolite (N,): 1 / variance of its recorded derivative, or one global value
        train_dcdt = self.derivative[: self.n_train_frames]
        if self.opts["loss_normalisation"] == "per_metabolite":
            var = train_dcdt.var(0)
            var = var.clamp_min(1e-6 * float(var.max().clamp_min(1e-30)))
        else:
            var = train_dcdt.var().expand(self.n_metabolites).clone()
        self.register_buffer("error_weight", 1.0 / var.clamp_min(1e-30), persistent=False)
        self.final_loss = math.nan
        self.loss_history: list[float] = []
        self.total_steps = 1
        self._last_refit = 0
        self._rng = random.Random(int(self.opts["seed"]))
        if self.opts["phase"] == 2:
            if float(self.opts["node_target_weight"]) > 0 and self.node_form != "affine":
                raise ValueError("training.node_target_weight: needs model.node_form: affine")
            self._check_integrated_options()  # before phase 1, which may train first
            self._load_phase1(observations)
            self.residual_scale = self._residual_std()
            projected = self.derivative[: self.n_train_frames] @ self.conservation_basis
            self.conservation_scale = (
                float(projected.pow(2).mean().clamp_min(1e-30)) if projected.numel() else 1.0
            )
            if float(self.opts["node_target_weight"]) > 0:
                self.register_buffer("node_targets", self.affine_node_targets(), persistent=False)
            self.integrated_scale = self._integrated_scale()
            if self.opts["embedding_init"] == "conserved_types":
                self.place_embeddings_by_type()
            if int(self.opts["node_least_squares_every"]) > 0:
                self.refit_node_output()

    # ----------------------------------------------------------------------------- sampling
    def steps_per_epoch(self) -> int:
        """Mini-batches per epoch: ``n_train_frames * data_augmentation_loop * iterations_fraction //
        batch_size``, at least 1."""
        o = self.opts
        frames = self.n_train_frames * float(o["data_augmentation_loop"]) * float(o["iterations_fraction"])
        return max(1, int(frames / int(o["batch_size"])))

    def max_window(self) -> int:
        """The longest rollout (Euler steps) a batch may need after its start frame."""
        o = self.opts
        if o["phase"] == 1:
            return int(o["time_step"])
        window = int(o["homeostasis_time_step"])
        if o["multi_scale_rollout"]:
            window = max(window, *[int(v) for v in o["rollout_lengths"]])
        if float(o["integrated_conservation_weight"]) > 0:
            window = max(window, int(o["integrated_window"]))
        return window

    @property
    def frame_sampling(self) -> FrameSampling:
        return FrameSampling(int(self.opts["batch_size"]), self.steps_per_epoch(), int(self.opts["seed"]))

    @property
    def frame_window(self) -> int:
        """Recorded frames a batch reads from each start (the start and the rollout after it)."""
        return self.max_window() + 1

    def current_time_step(self) -> int:
        """The rollout length of this phase-2 batch (multi-scale draw, curriculum stage, or fixed)."""
        o = self.opts
        base = int(o["homeostasis_time_step"])
        if o["multi_scale_rollout"]:
            return self._rng.choice([int(v) for v in o["rollout_lengths"]])
        if o["rollout_curriculum"]:
            # longest rollouts first, then halves: T, T/2, T/4 in three equal stages
            stage = min(2, int(3 * self.optimiser_step / max(1, self.total_steps)))
            return max(1, base // (2**stage))
        return base

    @property
    def optimiser_step(self) -> int:
        """Optimiser steps taken so far in the current fit (0 outside one)."""
        return int(self.trainer.global_step) if self._trainer is not None else 0

    # ------------------------------------------------------------------------- optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """Adam groups with their own learning rates; a group at lr 0 is frozen (requires_grad off)."""
        groups = [
            ("k", [self.log_k], "learning_rate_k"),
            ("sub", list(self.MLP_sub.parameters()), "learning_rate_sub"),
            ("node", list(self.MLP_node.parameters()), "learning_rate_node"),
            ("embedding", [self.embedding], "learning_rate_embedding"),
        ]
        if isinstance(self.stoichiometry, torch.nn.Parameter):
            groups.append(("stoichiometry", [self.stoichiometry], "learning_rate_stoichiometry"))
        out = []
        for name, params, key in groups:
            lr = float(self.opts[key])
            for p in params:
                p.requires_grad_(lr > 0)
            if lr > 0:
                out.append({"params": params, "lr": lr, "name": name})
        if not out:
            raise ValueError("training.learning_rate_*: every learning rate is 0, nothing to train")
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.opts
        batches = self.steps_per_epoch() * int(self.trainer.max_epochs or o["n_epochs"])
        self.total_steps = max(1, batches // int(self.trainer.accumulate_grad_batches))
        optimizer = torch.optim.Adam(self.param_groups())
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(o["lr_schedule"], step, self.total_steps, o)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_fit_start(self) -> None:
        """The Trainer must run the loop these options describe (conf/trainer/cpu.yaml reads them)."""
        given = {
            "accumulate_grad_batches": self.trainer.accumulate_grad_batches,
            "gradient_clip_val": self.trainer.gradient_clip_val or None,
        }
        wanted = trainer_settings(self.opts)
        for key, value in given.items():
            if value != wanted[key]:
                raise ValueError(
                    f"trainer.{key}={value!r} but the training options ask for {wanted[key]!r} "
                    "(training.gradient_accumulation / training.gradient_clip_val; build the Trainer with "
                    "hydra_llm.models.metabolism.trainer_settings)"
                )

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.opts["phase"] == 1:
            terms = self.phase1_losses(batch["frame"])
        else:
            self.node_amplification = amplification(self.opts, self.optimiser_step, self.total_steps)
            terms = self.phase2_losses(batch["frame"])
        loss = sum(terms.values())
        self.loss_history.append(float(loss.detach()))
        self.final_loss = float(np.mean(self.loss_history[-50:]))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def phase2_losses(self, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        """The phase-2 loss terms of a batch of start frames (the editable strategy, or the code version
        this run was given)."""
        return strategy(PHASE2_LOSS).phase2_losses(self, starts)

    def exact_steps(self) -> list[tuple[str, Any]]:
        """(the option that sets how often, the least-squares step) of this phase."""
        steps = [("k_least_squares_every", self.refit_rate_constants)]
        if self.opts["phase"] == 2:
            steps.append(("node_least_squares_every", self.refit_node_output))
        return steps

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.optimiser_step  # counts optimiser steps, so it repeats across an accumulation window
        if step == 0 or step == self._last_refit:
            return
        for key, refit in self.exact_steps():
            every = int(self.opts[key])
            if every > 0 and step % every == 0:
                self._last_refit = step
                refit()

    def on_train_epoch_end(self) -> None:
        for key, refit in self.exact_steps():
            if int(self.opts[key]) > 0:
                refit()

    def on_train_end(self) -> None:
        path = Path(self.trainer.default_root_dir) / f"metabolism_phase{self.opts['phase']}.ckpt"
        atomic_write(path, self.trainer.save_checkpoint)  # never a partial file for phase 2 to load

    # ------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """What a phase-2 model needs to check a phase-1 checkpoint against its data and architecture."""
        checkpoint["metabolism"] = {
            "version": CHECKPOINT_VERSION,
            "phase": int(self.opts["phase"]),
            "arch": self.arch,
            "n_metabolites": self.n_metabolites,
            "n_reactions": self.n_reactions,
            "final_loss": self.final_loss,
        }

    @torch.no_grad()
    def place_embeddings_by_type(self) -> None:
        """Move each embedding to its type's centre (types from :func:`conserved_types` on the training
        record; centres evenly spaced on [-1, 1] in every dimension), keeping the small random spread."""
        n_types = int(self.opts["n_node_types"])
        t = self.n_train_frames
        labels, rates = conserved_types(
            self.activity[:t].double().cpu().numpy(),
            self.conservation_basis.double().cpu().numpy(),
            self.dt,
            n_types=n_types,
            seed=int(self.opts["seed"]),
        )
        centres = torch.linspace(-1.0, 1.0, n_types, device=self.embedding.device)
        labels_t = torch.as_tensor(labels, device=self.embedding.device)
        self.embedding.copy_(centres[labels_t].unsqueeze(1) + self.embedding - self.embedding.mean(0))
        log.info(
            "phase 2: embeddings placed by the conserved-type search (%s metabolites per type, rates %s)",
            np.bincount(labels, minlength=n_types).tolist(),
            np.array2string(rates, precision=4),
        )

    def _check_integrated_options(self) -> None:
        """The integrated-conservation options need conservation laws, a free MLP_node and a window
        shorter than the training record; one ``ValueError`` line naming the key otherwise."""
        o = self.opts
        window = int(o["integrated_window"])
        if float(o["integrated_conservation_weight"]) > 0 and window >= self.n_train_frames:
            raise ValueError(
                f"training.integrated_window={window}: must be below the {self.n_train_frames} "
                "training frames"
            )
        if int(o["node_least_squares_every"]) > 0 and self.node_form != "mlp":
            raise ValueError("training.node_least_squares_every: needs model.node_form: mlp")
        needs_laws = {
            "integrated_conservation_weight": float(o["integrated_conservation_weight"]) > 0,
            "embedding_init": o["embedding_init"] == "conserved_types",
            "node_least_squares_every": int(o["node_least_squares_every"]) > 0,
        }
        for key, used in needs_laws.items():
            if used and self.conservation_basis.shape[1] == 0:
                raise ValueError(
                    f"training.{key}={o[key]!r}: the observed stoichiometry conserves no combination of "
                    "concentrations, so there is nothing to integrate"
                )

    def _integrated_scale(self) -> float:
        """Mean square of the conserved combinations' change over ``integrated_window`` frames (training
        record): the integrated conservation loss is divided by it."""
        steps = int(self.opts["integrated_window"])
        combos = self.activity[: self.n_train_frames] @ self.conservation_basis
        if combos.shape[1] == 0 or len(combos) <= steps:
            return 1.0
        return float((combos[steps:] - combos[:-steps]).pow(2).mean().clamp_min(1e-30))

    def _residual_std(self) -> float:
        with torch.no_grad():
            train = self.activity[: self.n_train_frames]
            residual = self.derivative[: self.n_train_frames] - self.reaction_term(train)
        return float(residual.std().clamp_min(1e-12))

    def _load_phase1(self, observations: Observations) -> None:
        path = self.opts["phase1_checkpoint"]
        path = Path(path) if path is not None else self._phase1_from_cache(observations)
        if not path.exists():
            raise ValueError(f"training.phase1_checkpoint: file not found: {path}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        meta = checkpoint.get("metabolism") if isinstance(checkpoint, dict) else None
        if not meta or meta.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"training.phase1_checkpoint: {path} is not a metabolism phase-1 checkpoint")
        if (meta["n_metabolites"], meta["n_reactions"]) != (self.n_metabolites, self.n_reactions):
            raise ValueError(
                f"training.phase1_checkpoint: {path} has {meta['n_metabolites']} metabolites / "
                f"{meta['n_reactions']} reactions, the data has {self.n_metabolites} / {self.n_reactions}"
            )
        # only the reaction part is loaded, so only its architecture has to match
        theirs = {k: meta["arch"].get(k) for k in REACTION_ARCH_KEYS}
        ours = {k: self.arch[k] for k in REACTION_ARCH_KEYS}
        if theirs != ours:
            raise ValueError(
                f"training.phase1_checkpoint: reaction architecture differs: {theirs} vs model {ours}"
            )
        own = self.state_dict()
        # phase 2 keeps the reactions (and stoichiometry) and starts node/embedding afresh
        keep = {
            k: v
            for k, v in checkpoint["state_dict"].items()
            if k.startswith(("log_k", "MLP_sub", "stoichiometry")) and k in own
        }
        self.load_state_dict({**own, **keep})
        self.phase1_path = str(path)
        log.info("phase 2: reactions loaded from %s", path)

    def _phase1_from_cache(self, observations: Observations) -> Path:
        """Train phase 1 with the ``phase1`` options (its own fit), or reuse the cached one for this data."""
        from filelock import FileLock

        phase1 = {**self.opts["phase1"], "phase": 1}
        key = config_hash(
            {"data": _digest(observations), "phase1": phase1, "arch": self.arch, "format": CHECKPOINT_VERSION}
        )
        cache_dir = Path(self.opts["phase1_cache_dir"] or "outputs/cache")
        path = cache_dir / f"metabolism_phase1-{key}.ckpt"
        if path.exists():
            return path
        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):  # children sharing this data train phase 1 once
            if path.exists():
                return path
            log.info("phase 2: no phase-1 checkpoint given; training phase 1 first (cached at %s)", path)
            # a private RNG state so that producing phase 1 does not shift phase 2's own initialisation
            with torch.random.fork_rng(), tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
                torch.manual_seed(int(phase1["seed"]))
                model = MetabolismGNN(observations, training=phase1, **self.arch)
                fit_model(model, Path(tmp))
                os.replace(Path(tmp) / "metabolism_phase1.ckpt", path)
        return path


def fit_model(model: MetabolismGNN, out_dir: Path, **trainer_kwargs: Any) -> pl.Trainer:
    """Fit ``model`` on its own observations with a Trainer set from its options, without a datamodule
    (phase 1 inside phase 2, benchmarks, tests); the checkpoint lands in ``out_dir``."""
    kwargs = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(out_dir),
        **trainer_settings(model.opts),
        **trainer_kwargs,
    }
    trainer = pl.Trainer(**kwargs)
    loader = start_frame_loader(model.n_train_frames, model.frame_sampling, model.frame_window)
    trainer.fit(model, train_dataloaders=loader)
    return trainer


def _digest(observations: Observations) -> str:
    h = hashlib.sha256()
    h.update(observations.activity.numpy().tobytes())
    h.update(str(observations.dt).encode())
    return h.hexdigest()[:16]
