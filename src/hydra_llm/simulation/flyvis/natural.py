"""Natural images moved over the hex column lattice, offline: the photographs scikit-image ships in its
wheel (``skimage/data``, read as files; skimage is never imported), named in
:data:`~hydra_llm.schemas.simulation.NATURAL_IMAGES`.

A fly looking at a still scene sees it move when it turns: slow drifts broken by fast saccades. A clip
here is a sequence of fixations on one image, each a straight drift at a flyvis moving-edge speed (2.4 to
25 columns/s) in one of 12 directions for ``FIXATION_S`` seconds, joined by saccades that jump the gaze
``SACCADE_COLUMNS`` columns within ``SACCADE_S`` seconds. Each clip takes a random image of the split, a
random quarter turn and mirror flip, and a random starting point.

Per image: RGB -> luminance (0.299, 0.587, 0.114); blurred by a Gaussian of sigma
``pixels_per_column / 2`` (an ommatidium's acceptance); normalised to mean 0.5 and std ``contrast``
(clipped to [0, 1]), so that images of different exposure and texture drive the photoreceptors alike;
sampled bilinearly at every column centre, ``pixels_per_column`` pixels apart. The image is mirrored
at its borders, so a drift may run past its edge. Train and held-out recordings use disjoint images
(split by image, with the seed).

``luminance`` changes the illuminant from clip to clip: a clip's samples are multiplied by m / 0.5, m
drawn uniformly from the range, so its mean luminance is about m and its Weber contrast (std / mean) is
kept (up to the clipping to [0, 1]). Under one illuminant the tonic cells (R1-R6, Mi3, TmY9 and others:
above 0 and barely moving) hold a level set by the mean luminance; [0.2, 0.8] moves them 20-30% more
(BENCHMARKS.md, "A changing illuminant"). The default [0.5, 0.5] draws nothing, so older recordings
are unchanged.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from hydra_llm.simulation.flyvis.stimuli import DIRECTIONS_DEG, LUMA, SPEEDS, clip_sequence, column_positions
from hydra_llm.simulation.flyvis.stimuli import held_out_split as split_images  # noqa: F401 (by image)

FIXATION_S = (0.2, 1.0)  # duration of one drift
SACCADE_COLUMNS = (3.0, 15.0)  # gaze shift of one saccade
SACCADE_S = 0.04  # a saccade's duration


def image_dir() -> Path:
    """``skimage/data`` of the installed scikit-image wheel; a one-line error when it is missing."""
    spec = importlib.util.find_spec("skimage")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" if spec else None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(
            "simulation.stimulus.source=natural reads the photographs in scikit-image's wheel: "
            "pip install scikit-image (it is a dependency of hydra-llm), or use simulation=flyvis_synthetic"
        )
    return folder


@cache
def load_image(name: str, pixels_per_column: float, contrast: float) -> np.ndarray:
    """(H, W) float32 luminance of one image: blurred, normalised (see the module docstring)."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    with Image.open(image_dir() / name) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    lum = gaussian_filter(rgb @ LUMA, sigma=pixels_per_column / 2.0, mode="mirror")
    lum = (lum - lum.mean()) / max(float(lum.std()), 1e-6)
    return np.clip(0.5 + contrast * lum, 0.0, 1.0).astype(np.float32)


def mirror(x: np.ndarray, size: int) -> np.ndarray:
    """Coordinates folded into [0, size - 1] by mirroring at the borders."""
    period = 2 * (size - 1)
    x = np.mod(x, period)
    return np.where(x > size - 1, period - x, x)


def sample(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` (H, W) at (row, col) pixel positions of any equal shapes."""
    h, w = image.shape
    r, c = mirror(rows, h), mirror(cols, w)
    r0 = np.minimum(np.floor(r).astype(np.int64), h - 2)
    c0 = np.minimum(np.floor(c).astype(np.int64), w - 2)
    fr, fc = r - r0, c - c0
    top = image[r0, c0] * (1 - fc) + image[r0, c0 + 1] * fc
    bottom = image[r0 + 1, c0] * (1 - fc) + image[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def gaze_path(n: int, dt: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) gaze offset (x, y) in columns: drifts at moving-edge speeds joined by saccades."""
    steps = np.zeros((n, 2))
    t = 0
    while t < n:
        length = max(1, int(round(rng.uniform(*FIXATION_S) / dt)))
        theta = np.deg2rad(rng.choice(DIRECTIONS_DEG))
        velocity = rng.choice(SPEEDS) * np.array([np.cos(theta), np.sin(theta)])
        steps[t : t + length] = velocity * dt
        t += length
        saccade = max(1, int(round(SACCADE_S / dt)))
        angle = rng.uniform(0, 2 * np.pi)
        steps[t : t + saccade] = (
            rng.uniform(*SACCADE_COLUMNS) * np.array([np.cos(angle), np.sin(angle)]) / saccade
        )
        t += saccade
    return np.cumsum(steps, axis=0) - steps[0]


def natural_clip(
    pos: np.ndarray,
    image: np.ndarray,
    n: int,
    dt: float,
    pixels_per_column: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n, C) float32: the lattice's view of ``image`` (H, W) along a random gaze path; ``pos`` (C, 2)
    are the column positions (:func:`~hydra_llm.simulation.flyvis.stimuli.column_positions`)."""
    image = np.rot90(image, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        image = image[:, ::-1]
    start = rng.uniform(0, image.shape) / pixels_per_column  # (row, col) in columns
    gaze = gaze_path(n, dt, rng)
    rows = (start[0] - pos[None, :, 1] - gaze[:, None, 1]) * pixels_per_column
    cols = (start[1] + pos[None, :, 0] + gaze[:, None, 0]) * pixels_per_column
    return sample(np.ascontiguousarray(image), rows, cols).astype(np.float32)


def natural_sequence(
    columns: np.ndarray,
    n_frames: int,
    dt: float,
    images: Sequence[str],
    rng: np.random.Generator,
    clip_s: tuple[float, float] = (0.5, 2.0),
    pixels_per_column: float = 8.0,
    contrast: float = 0.2,
    blank_s: tuple[float, float] = (0.0, 0.0),
    luminance: tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """(n_frames, C) float32 in [0, 1]: clips of random images among ``images``, each after a grey lead
    of ``blank_s`` seconds (:func:`~hydra_llm.simulation.flyvis.stimuli.grey_lead`), concatenated; each
    clip's mean luminance drawn from ``luminance`` (see the module docstring)."""
    names, pos = list(images), column_positions(columns)
    low, high = (float(x) for x in luminance)

    def clip(n: int) -> np.ndarray:
        image = load_image(names[int(rng.integers(len(names)))], float(pixels_per_column), float(contrast))
        view = natural_clip(pos, image, n, dt, pixels_per_column, rng)
        if low == high == 0.5:
            return view
        gain = (rng.uniform(low, high) if high > low else low) / 0.5
        return np.clip(view * gain, 0.0, 1.0).astype(np.float32, copy=False)

    return clip_sequence(len(pos), n_frames, dt, rng, clip, clip_s, blank_s)
