"""Range checks that a type cannot express, for the schemas' ``__post_init__``; each error is one line
naming ``<group>.<key>`` (the group is the schema's ``GROUP``, e.g. ``training``) and what is allowed."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any


def fail(options: Any, key: str, value: Any, rule: str) -> None:
    raise ValueError(f"{options.GROUP}.{key}={value!r}: {rule}")


def positive(options: Any, *keys: str) -> None:
    """Learning rates and similar: finite floats > 0."""
    for key in keys:
        value = getattr(options, key)
        if not (float(value) > 0 and math.isfinite(float(value))):
            fail(options, key, value, "must be a finite float > 0")


def non_negative(options: Any, *keys: str) -> None:
    """Regulariser weights and similar: finite floats >= 0."""
    for key in keys:
        value = getattr(options, key)
        if not (float(value) >= 0 and math.isfinite(float(value))):
            fail(options, key, value, "must be a finite float >= 0")


def at_least_one(options: Any, *keys: str) -> None:
    """Counts (batch size, epochs, layers, steps): integers >= 1."""
    for key in keys:
        if int(getattr(options, key)) < 1:
            fail(options, key, getattr(options, key), "must be an integer >= 1")


SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed_everything's bound


def seeds(options: Any, *keys: str) -> None:
    """Random seeds: integers in [0, 2^32 - 1], the range numpy's generators and Lightning accept."""
    for key in keys:
        within(options, key, 0, SEED_MAX, f"must be an integer in [0, {SEED_MAX}]")


def within(options: Any, key: str, low: float, high: float, rule: str) -> None:
    """``low <= value <= high`` (``rule`` says so in the error, e.g. with the bound's own key)."""
    value = getattr(options, key)
    if not low <= value <= high:
        fail(options, key, value, rule)


def ordered_pair(options: Any, key: str) -> None:
    """A ``[low, high]`` list with ``low <= high``."""
    pair = getattr(options, key)
    if len(pair) != 2 or pair[0] > pair[1]:
        fail(options, key, pair, "must be [low, high] with low <= high")


def prefixed(options: Any, *prefixes: str) -> list[str]:
    """The field names of ``options`` that start with one of ``prefixes``."""
    return [f.name for f in fields(options) if f.name.startswith(prefixes)]
