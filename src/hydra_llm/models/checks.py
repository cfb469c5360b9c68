"""Checks of ``cfg.training`` values shared by the models; each error names the key and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def require_keys(training: Mapping[str, Any], keys: Iterable[str], model: str) -> None:
    missing = [k for k in keys if k not in training]
    if missing:
        raise ValueError(f"training.{missing[0]} is missing (the {model} needs {missing})")


def check_rates(training: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Learning rates: finite floats > 0."""
    for key in keys:
        value = float(training[key])
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"training.{key}={training[key]!r}: must be a finite float > 0")


def check_coefficients(training: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Regulariser weights: finite floats >= 0."""
    for key in keys:
        value = float(training[key])
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"training.{key}={training[key]!r}: must be a finite float >= 0")


def check_counts(training: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Counts (batch size, epochs, ...): integers >= 1."""
    for key in keys:
        if int(training[key]) < 1:
            raise ValueError(f"training.{key}={training[key]!r}: must be an integer >= 1")


def check_augmentation(training: Mapping[str, Any]) -> None:
    if not float(training["data_augmentation_loop"]) > 0:
        raise ValueError(
            f"training.data_augmentation_loop={training['data_augmentation_loop']!r}: must be > 0"
        )
