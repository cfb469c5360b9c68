"""`simulation=flyvis_natural`: photographs from scikit-image's wheel moved over the hex lattice, offline."""

from __future__ import annotations

import importlib.util
from functools import partial

import numpy as np
import pytest
import torch

from hydra_llm.schemas.simulation import NATURAL_IMAGES
from hydra_llm.simulation.flyvis import natural
from hydra_llm.simulation.flyvis.connectome import compile_connectome, load_spec
from hydra_llm.simulation.flyvis.dynamics import GREY
from hydra_llm.simulation.flyvis.stimuli import SPEEDS, synthetic_sequence
from tests.test_flyvis_simulation import datamodule, tiny

NATURAL = {"source": "natural", "ood_families": ["moving_edge", "grating"]}


def test_every_listed_image_ships_in_the_wheel_and_loads_normalised():
    folder = natural.image_dir()
    for name in NATURAL_IMAGES:
        image = natural.load_image(name, 8.0, 0.2)
        assert (folder / name).is_file() and image.ndim == 2 and min(image.shape) >= 256, name
        assert image.min() >= 0.0 and image.max() <= 1.0, name
        assert abs(float(image.mean()) - 0.5) < 0.05 and 0.1 < float(image.std()) < 0.25, name


def test_natural_movie_drifts_at_edge_speeds_and_is_seeded():
    columns = compile_connectome(load_spec(), 4).columns
    movie = natural.natural_sequence(columns, 400, 0.02, NATURAL_IMAGES, np.random.default_rng(0))
    again = natural.natural_sequence(columns, 400, 0.02, NATURAL_IMAGES, np.random.default_rng(0))
    other = natural.natural_sequence(columns, 400, 0.02, NATURAL_IMAGES, np.random.default_rng(1))
    assert movie.shape == (400, len(columns)) and movie.dtype == np.float32
    assert np.array_equal(movie, again) and not np.array_equal(movie, other)
    assert movie.min() >= 0.0 and movie.max() <= 1.0 and movie.std(axis=0).mean() > 0.05
    # the gaze moves between 2.4 and 25 columns/s while it drifts, and jumps in saccades
    path = natural.gaze_path(5000, 0.02, np.random.default_rng(0))
    speed = np.linalg.norm(np.diff(path, axis=0), axis=1) / 0.02
    drifting = speed < SPEEDS.max() + 1e-6
    assert np.allclose(np.sort(np.unique(np.round(speed[drifting], 6))), np.sort(SPEEDS), atol=1e-6)
    assert 0.02 < (~drifting).mean() < 0.2 and speed[~drifting].min() > SPEEDS.max()


def grey_runs(movie: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start frames and lengths of the runs of all-grey frames in a (T, C) movie."""
    grey = np.concatenate([[0], (movie == GREY).all(axis=1).astype(int), [0]])
    starts, ends = np.flatnonzero(np.diff(grey) == 1), np.flatnonzero(np.diff(grey) == -1)
    return starts, ends - starts


def test_a_grey_lead_before_every_clip_lets_the_neurons_relax(tmp_path):
    columns = compile_connectome(load_spec(), 4).columns
    natural_movie = partial(natural.natural_sequence, columns, 600, 0.02, NATURAL_IMAGES)
    plain = natural_movie(np.random.default_rng(0))
    assert np.array_equal(plain, natural_movie(np.random.default_rng(0), blank_s=(0, 0)))
    synthetic = partial(synthetic_sequence, columns, 600, 0.02, ["grating", "white_noise"])
    for movie in (
        natural_movie(np.random.default_rng(0), blank_s=(0.3, 0.3)),
        synthetic(np.random.default_rng(0), blank_s=(0.3, 0.3)),
    ):
        starts, lengths = grey_runs(movie)
        assert movie.shape == plain.shape and starts[0] == 0 and len(starts) >= 3
        assert np.all(lengths[:-1] == 15)  # 0.3 s at dt 0.02 (the last lead may be cut short)
    # through the recording: at the end of each 1 s grey lead the neurons have come to rest
    dm = datamodule(tmp_path, stimulus={**NATURAL, "blank_s": [1.0, 1.0]}, n_frames=1200)
    dm.setup()
    n_train = dm.observations.n_train_frames
    lum = dm.observations.external_input[:n_train, torch.from_numpy(np.flatnonzero(tiny().input_mask))]
    still = (lum == lum[:1]).all(dim=1).numpy()  # as the first frame, a lead's grey
    lead_ends = np.flatnonzero(still[:-1] & ~still[1:])
    speed = dm.observations.derivative[:n_train].abs().mean(dim=1).numpy()
    assert still.mean() > 0.2 and len(lead_ends) >= 3
    assert speed[lead_ends].max() < 1e-3 * np.median(speed[~still])  # 0.012 after a 0.1 s lead


def clip_frames(movie: np.ndarray) -> list[np.ndarray]:
    """The clips of a movie whose clips each follow a grey lead."""
    starts, lengths = grey_runs(movie)
    ends = [*starts[1:], len(movie)]
    return [movie[a:b] for a, b in zip(starts + lengths, ends, strict=True) if b - a > 10]


def test_the_illuminant_changes_from_clip_to_clip_and_keeps_the_weber_contrast():
    columns = compile_connectome(load_spec(), 4).columns
    natural_movie = partial(natural.natural_sequence, columns, 3000, 0.02, NATURAL_IMAGES, blank_s=(0.1, 0.1))
    plain = natural_movie(np.random.default_rng(0))
    assert np.array_equal(plain, natural_movie(np.random.default_rng(0), luminance=(0.5, 0.5)))
    # one illuminant: every clip is the same view at half the light; the grey leads stay grey
    dim = natural_movie(np.random.default_rng(0), luminance=(0.25, 0.25))
    lead = (plain == GREY).all(axis=1)
    assert np.array_equal(dim[~lead], plain[~lead] * 0.5) and np.all(dim[lead] == GREY)
    lit = natural_movie(np.random.default_rng(0), luminance=(0.2, 0.8))
    assert lit.shape == plain.shape and lit.dtype == np.float32 and lit.min() >= 0.0 and lit.max() <= 1.0
    spread, weber = {}, {}
    for name, movie in (("plain", plain), ("lit", lit)):
        clips = clip_frames(movie)
        assert len(clips) >= 20, name
        spread[name] = np.std([c.mean() for c in clips])
        weber[name] = np.median([c.std() / c.mean() for c in clips])
    assert spread["lit"] > 1.5 * spread["plain"] and spread["lit"] > 0.15  # U(0.2, 0.8) has std 0.17
    assert abs(weber["lit"] / weber["plain"] - 1.0) < 0.4  # 1.23 here: clip medians over other clips


def test_mirrored_sampling_is_continuous_past_the_image_border():
    image = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    rows, cols = np.full(5, 7.0), np.array([0.0, 29.0, 30.0, 58.0, -1.0])
    values = natural.sample(image, rows, cols)
    assert values[0] == image[7, 0] and values[1] == image[7, 29]
    assert values[2] == image[7, 28] and values[3] == image[7, 0] and values[4] == image[7, 1]


def test_flyvis_natural_holds_out_images_and_keeps_synthetic_families_out_of_distribution(tmp_path):
    train, test = natural.split_images(list(NATURAL_IMAGES), 0.2, seed=42)
    assert len(test) == 2 and not set(train) & set(test) and sorted(train + test) == sorted(NATURAL_IMAGES)
    dm = datamodule(tmp_path, stimulus=NATURAL, n_frames=300)
    dm.setup()
    obs = dm.observations
    photoreceptors = torch.from_numpy(np.flatnonzero(tiny().input_mask))
    lum = obs.external_input[:, photoreceptors]
    assert lum.shape == (300, len(photoreceptors)) and float(lum.std(0).mean()) > 0.05
    assert torch.isfinite(obs.activity).all() and float(obs.activity.std(0).max()) > 0.01
    assert "natural_files" in dm.cache_key_params()
    # the illuminant reaches the photoreceptors: half the light halves their training and held-out input
    half = datamodule(tmp_path, stimulus={**NATURAL, "luminance": [0.25, 0.25]}, n_frames=300)
    half.setup()
    assert half.cache_path(tmp_path) != dm.cache_path(tmp_path)
    assert torch.equal(half.observations.external_input[:, photoreceptors], 0.5 * lum)
    other = datamodule(
        tmp_path, stimulus={**NATURAL, "natural_images": ["grass.png", "gravel.png"]}, n_frames=300
    )
    assert other.cache_path(tmp_path) != dm.cache_path(tmp_path)


@pytest.mark.parametrize(
    ("stimulus", "message"),
    [
        ({"natural_images": ["lena.png", "grass.png"]}, r"natural_images=.*unknown images \['lena.png'\]"),
        ({"natural_images": ["grass.png"]}, r"natural_images=\[.grass.png.\]: fewer than 2 images"),
        ({"contrast": 0.0}, "contrast=0.0: must be a finite float > 0"),
        ({"luminance": [0.0, 0.5]}, r"luminance=\[0.0, 0.5\]: mean luminances must be in \(0, 1\]"),
        ({"luminance": [0.7, 0.3]}, r"luminance=\[0.7, 0.3\]: must be \[low, high\] with low <= high"),
        ({"held_out_fraction": 1.0}, r"held_out_fraction=1.0: must be in \(0, 1\)"),
        ({"blank_s": [0.5, 0.2]}, r"blank_s=\[0.5, 0.2\]: must be \[low, high\] with low <= high"),
        ({"blank_s": [-0.1, 0.2]}, r"blank_s=\[-0.1, 0.2\]: grey durations must be >= 0 s"),
        # a NaN passes every comparison, so no float reaches the range checks unless it is finite
        ({"luminance": [0.2, float("nan")]}, r"luminance.1=nan: must be a finite number"),
    ],
)
def test_bad_natural_settings_fail_before_simulating(stimulus, message):
    with pytest.raises(ValueError, match=f"simulation.stimulus.{message}"):
        datamodule(stimulus={**NATURAL, **stimulus})


def test_without_scikit_image_the_run_stops_with_one_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install scikit-image"):
        datamodule(stimulus=NATURAL)
