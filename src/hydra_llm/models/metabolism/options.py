"""The metabolism GNN's training options (typed in :mod:`hydra_llm.schemas.training`) and its schedules
(the learning-rate one is shared: :mod:`hydra_llm.models.lr_schedule`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra_llm.schemas import as_dict
from hydra_llm.schemas.training import MetabolismPhase1Training, MetabolismPhase2Training


def training_options(training: Mapping[str, Any] | None) -> dict[str, Any]:
    """``training`` over the defaults of its phase's schema, checked; a plain dict.

    Raises one ``ValueError`` line naming the key for an unknown key, a wrong type or a value out of range.
    """
    phase = (training or {}).get("phase", 1)
    if phase not in (1, 2):
        raise ValueError(f"training.phase={phase!r}: must be one of [1, 2]")
    return as_dict(MetabolismPhase1Training if phase == 1 else MetabolismPhase2Training, training)


def check_training(training: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`training_options`, and in phase 2 a ``phase1_checkpoint`` that is a file: what a run
    checks before it simulates (the checkpoint's contents are checked when phase 2 loads it)."""
    opts = training_options(training)
    path = opts.get("phase1_checkpoint")
    if path is not None and not Path(str(path)).is_file():
        raise FileNotFoundError(f"training.phase1_checkpoint: file not found: {path}")
    return opts


def trainer_settings(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The Trainer arguments these options set (``conf/trainer/cpu.yaml`` reads the same keys)."""
    return {
        "max_epochs": int(opts["n_epochs"]),
        "accumulate_grad_batches": int(opts["gradient_accumulation"]),
        "gradient_clip_val": float(opts["gradient_clip_val"]) or None,
    }


def amplification(opts: Mapping[str, Any], step: int, total: int) -> float:
    """Phase-2 node amplification at optimiser ``step`` of ``total``: ``amplification_factor`` decaying
    geometrically to 1 over the first ``amplification_decay_fraction`` of training (1 when off)."""
    amp = float(opts.get("amplification_factor", 1.0))
    if amp <= 1.0:
        return 1.0
    decay = float(opts["amplification_decay_fraction"])
    progress = min(1.0, step / max(1, total) / decay) if decay > 0 else 0.0
    return amp ** (1.0 - progress)
