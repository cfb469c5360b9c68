"""Learning-rate schedules shared by the models: a multiplier of every base rate per optimiser step.

The options (``lr_schedule``, ``lr_warmup_fraction``, ``lr_final_ratio``, ``lr_restart_fraction``) live in
each model's training schema (:mod:`hydra_llm.schemas.training`); the choices are
:class:`hydra_llm.schemas.training.LRSchedule`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def lr_factor(schedule: str, step: int, total: int, opts: Mapping[str, Any]) -> float:
    """Multiplier of every base learning rate at optimiser ``step`` of ``total``.

    * ``constant``: 1.
    * ``warmup_decay``: linear from ``1 / (warmup x total)`` to 1 over the first ``lr_warmup_fraction`` of
      the steps, then a half cosine down to ``lr_final_ratio`` at the last step.
    * ``cosine_restarts``: half cosines from 1 to ``lr_final_ratio``, each ``lr_restart_fraction`` of the
      steps long.
    """
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
