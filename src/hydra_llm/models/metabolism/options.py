"""The metabolism GNN's training options (typed in :mod:`hydra_llm.schemas.training`) and its schedules."""

from __future__ import annotations

import math
from collections.abc import Mapping
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


def trainer_settings(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The Trainer arguments these options set (``conf/trainer/cpu.yaml`` reads the same keys)."""
    return {
        "max_epochs": int(opts["n_epochs"]),
        "accumulate_grad_batches": int(opts["gradient_accumulation"]),
        "gradient_clip_val": float(opts["gradient_clip_val"]) or None,
    }


def lr_factor(schedule: str, step: int, total: int, opts: Mapping[str, Any]) -> float:
    """Multiplier of every base learning rate at optimiser ``step`` of ``total``."""
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


def amplification(opts: Mapping[str, Any], step: int, total: int) -> float:
    """Phase-2 node amplification at optimiser ``step`` of ``total``: ``amplification_factor`` decaying
    geometrically to 1 over the first ``amplification_decay_fraction`` of training (1 when off)."""
    amp = float(opts.get("amplification_factor", 1.0))
    if amp <= 1.0:
        return 1.0
    decay = float(opts["amplification_decay_fraction"])
    progress = min(1.0, step / max(1, total) / decay) if decay > 0 else 0.0
    return amp ** (1.0 - progress)
