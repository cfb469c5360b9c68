"""Synthetic visual stimuli rendered directly on the hex column lattice.

Every family returns a column movie of shape (T, C) float32 in [0, 1] (grey 0.5 is the background);
positions are in units of the column spacing (x = u + v/2, y = v * sqrt(3)/2). Speeds are in columns
(ommatidia) per second, durations in seconds, so clips are independent of dt.
:func:`synthetic_sequence` mixes random clips of the chosen families into one long movie; a family
left out of training (``ood_families``) gives the out-of-distribution test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from hydra_llm.simulation.flyvis.dynamics import GREY

T = TypeVar("T")

DIRECTIONS_DEG = np.arange(0, 360, 30)
LUMA = np.array([0.299, 0.587, 0.114])  # RGB -> luminance, for natural images and videos
SPEEDS = np.array([2.4, 4.8, 9.7, 13.0, 19.0, 25.0])  # columns/s, flyvis's moving-edge speeds


def held_out_split(sources: Sequence[T], test_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, test): the sources (images or videos) shuffled with ``seed``, ``test_fraction`` of them
    held out (at least one on each side), each side sorted."""
    order = np.random.default_rng(seed).permutation(len(sources))
    n_test = min(len(sources) - 1, max(1, int(round(test_fraction * len(sources)))))
    return sorted(sources[i] for i in order[n_test:]), sorted(sources[i] for i in order[:n_test])


def column_positions(columns: np.ndarray) -> np.ndarray:
    """(C, 2) cartesian (x, y) of hex columns (u, v), unit = column spacing."""
    u, v = columns[:, 0].astype(np.float64), columns[:, 1].astype(np.float64)
    return np.stack([u + v / 2.0, v * np.sqrt(3.0) / 2.0], axis=1)


def _projection(pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    theta = np.deg2rad(rng.choice(DIRECTIONS_DEG))
    return pos @ np.array([np.cos(theta), np.sin(theta)])


def _times(n: int, dt: float) -> np.ndarray:
    return (np.arange(n) * dt)[:, None]


def moving_edge(pos: np.ndarray, n: int, dt: float, rng: np.random.Generator) -> np.ndarray:
    """An ON or OFF edge sweeping across the lattice in one of 12 directions at a flyvis speed."""
    proj = _projection(pos, rng)
    front = proj.min() - 1.0 + rng.choice(SPEEDS) * _times(n, dt)
    polarity = rng.choice([-1.0, 1.0])
    return GREY + 0.5 * polarity * (proj[None, :] < front)


def moving_bar(pos: np.ndarray, n: int, dt: float, rng: np.random.Generator) -> np.ndarray:
    """An ON or OFF bar 1, 2 or 4 columns wide moving in one of 12 directions."""
    proj = _projection(pos, rng)
    width = rng.choice([1.0, 2.0, 4.0])
    centre = proj.min() - width + rng.choice(SPEEDS) * _times(n, dt)
    polarity = rng.choice([-1.0, 1.0])
    return GREY + 0.5 * polarity * (np.abs(proj[None, :] - centre) < width / 2)


def grating(pos: np.ndarray, n: int, dt: float, rng: np.random.Generator) -> np.ndarray:
    """A drifting sine grating: period 3-12 columns, 0.5-4 Hz, contrast 0.3-1."""
    proj = _projection(pos, rng)
    period, freq, contrast = rng.uniform(3, 12), rng.uniform(0.5, 4.0), rng.uniform(0.3, 1.0)
    phase = 2 * np.pi * (proj[None, :] / period - freq * _times(n, dt)) + rng.uniform(0, 2 * np.pi)
    return GREY + 0.5 * contrast * np.sin(phase)


def flash(pos: np.ndarray, n: int, dt: float, rng: np.random.Generator) -> np.ndarray:
    """Grey, then a full-field or local (radius 1-3 columns) ON/OFF flash, then grey."""
    t = _times(n, dt)[:, 0]
    onset = rng.uniform(0.1, 0.4) * t[-1]
    duration = rng.uniform(0.2, 0.5) * t[-1]
    on = (t >= onset) & (t < onset + duration)
    if rng.random() < 0.5:
        region = np.ones(len(pos), dtype=bool)
    else:
        centre = pos[rng.integers(len(pos))]
        region = np.linalg.norm(pos - centre, axis=1) <= rng.uniform(1.0, 3.0)
    polarity = rng.choice([-1.0, 1.0])
    return GREY + 0.5 * polarity * (on[:, None] & region[None, :])


def white_noise(pos: np.ndarray, n: int, dt: float, rng: np.random.Generator) -> np.ndarray:
    """Per-column flicker, uniform or binary, each value held 1-5 frames."""
    hold = int(rng.integers(1, 6))
    steps = -(-n // hold)
    values = rng.random((steps, len(pos)))
    if rng.random() < 0.5:
        values = (values > 0.5).astype(np.float64)
    return np.repeat(values, hold, axis=0)[:n]


def pink_noise(pos: np.ndarray, n: int, dt: float, rng: np.random.Generator) -> np.ndarray:
    """Spatiotemporal 1/f noise (natural-movie-like statistics), sampled at the columns."""
    half = int(np.ceil(np.abs(pos).max())) + 1
    size = 4 * half + 1  # grid spacing 0.5 column
    spec = rng.standard_normal((n, size, size)) + 1j * rng.standard_normal((n, size, size))
    ft = np.fft.fftfreq(n, d=dt)[:, None, None] / 4.0  # 4 Hz ~ 1 cycle/column in "naturalness"
    fs = np.fft.fftfreq(size, d=0.5)
    k = np.sqrt(ft**2 + fs[None, :, None] ** 2 + fs[None, None, :] ** 2)
    movie = np.real(np.fft.ifftn(spec / np.maximum(k, k[k > 0].min())))
    ix = np.clip(np.rint(pos[:, 0] / 0.5).astype(int) + 2 * half, 0, size - 1)
    iy = np.clip(np.rint(pos[:, 1] / 0.5).astype(int) + 2 * half, 0, size - 1)
    sampled = movie[:, ix, iy]
    sampled = (sampled - sampled.mean()) / (sampled.std() + 1e-12)
    return np.clip(GREY + rng.uniform(0.15, 0.3) * sampled, 0.0, 1.0)


def blank(pos: np.ndarray, n: int, dt: float, rng: np.random.Generator) -> np.ndarray:
    """Uniform grey: lets every neuron relax towards its resting state."""
    return np.full((n, len(pos)), GREY)


FAMILIES: dict[str, Callable[[np.ndarray, int, float, np.random.Generator], np.ndarray]] = {
    "moving_edge": moving_edge,
    "moving_bar": moving_bar,
    "grating": grating,
    "flash": flash,
    "white_noise": white_noise,
    "pink_noise": pink_noise,
    "blank": blank,
}


def grey_lead(n_columns: int, blank_s: Sequence[float], dt: float, rng: np.random.Generator) -> np.ndarray:
    """(k, C) uniform grey frames to put before a clip, k = round(U(blank_s) / dt): the neurons relax
    towards their resting state between clips. ``blank_s = (0, 0)`` gives none and draws nothing from
    ``rng``, so the sequence is the one without the option."""
    if max(blank_s) <= 0:
        return np.empty((0, n_columns), dtype=np.float32)
    k = int(round(rng.uniform(*blank_s) / dt))
    return np.full((k, n_columns), GREY, dtype=np.float32)


def clip_sequence(
    n_columns: int,
    n_frames: int,
    dt: float,
    rng: np.random.Generator,
    clip: Callable[[int], np.ndarray],
    clip_s: Sequence[float],
    blank_s: Sequence[float],
) -> np.ndarray:
    """(n_frames, C): clips of U(clip_s) seconds (at least 2 frames) drawn by ``clip(n) -> (n, C)``,
    each after a :func:`grey_lead` of ``blank_s`` seconds, concatenated and cut to ``n_frames``."""
    clips, total = [], 0
    while total < n_frames:
        lead = grey_lead(n_columns, blank_s, dt, rng)
        n = max(2, int(round(rng.uniform(*clip_s) / dt)))
        clips += [lead, clip(n)]
        total += len(lead) + n
    return np.concatenate(clips)[:n_frames]


def check_families(families: Sequence[str], key: str) -> list[str]:
    """Validate family names; raise naming ``key`` and the allowed values."""
    names = list(families)
    if not names:
        raise ValueError(f"{key} is empty; allowed values: {sorted(FAMILIES)}")
    bad = [f for f in names if f not in FAMILIES]
    if bad:
        raise ValueError(f"{key} has unknown families {bad}; allowed values: {sorted(FAMILIES)}")
    return names


def synthetic_sequence(
    columns: np.ndarray,
    n_frames: int,
    dt: float,
    families: Sequence[str],
    rng: np.random.Generator,
    clip_s: tuple[float, float] = (0.5, 2.0),
    blank_s: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """(n_frames, C) float32: random clips of the given families, each after a grey lead of ``blank_s``
    seconds (:func:`grey_lead`), concatenated."""
    names = check_families(families, "simulation.stimulus.families")
    pos = column_positions(columns)

    def clip(n: int) -> np.ndarray:
        return FAMILIES[names[int(rng.integers(len(names)))]](pos, n, dt, rng)

    movie = clip_sequence(len(pos), n_frames, dt, rng, clip, clip_s, blank_s)
    return np.clip(movie, 0.0, 1.0).astype(np.float32)
