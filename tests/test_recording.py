"""Measurement noise and the derivative estimated from the record, in every regime."""

from __future__ import annotations

import math

import pytest
import torch

from hydra_llm.simulation import recording
from hydra_llm.simulation.flyvis import FlyvisDataModule
from hydra_llm.simulation.metabolism import MetabolismDataModule
from hydra_llm.simulation.recording import (
    NOISE_FLOOR,
    WINDOW_GRID,
    add_measurement_noise,
    choose_window,
    measurement_noise_estimate,
    smooth_and_differentiate,
)
from hydra_llm.simulation.signal import SignalDataModule
from tests.test_blindness import FLYVIS_TINY

SIGNAL = dict(n_neurons=20, n_neuron_types=2, n_frames=2000, burn_in_frames=100, seed=4)
METABOLISM = dict(n_metabolites=12, n_reactions=10, n_frames=300)
FLYVIS = dict(
    connectome={"source": "file", "path": str(FLYVIS_TINY), "extent": 1},
    parameters={"mode": "random_trained_like"},
    n_frames=120,
    n_ood_frames=20,
    noise_model_level=0.0,
)
REGIMES = {"signal": (SignalDataModule, SIGNAL), "metabolism": (MetabolismDataModule, METABOLISM)}
REGIMES["flyvis"] = (FlyvisDataModule, FLYVIS)


def observations(regime: str, **options):
    cls, base = REGIMES[regime]
    dm = cls(**{**base, **options})
    dm.setup()
    return dm.observations, dm.release_ground_truth()


def test_measurement_noise_has_the_asked_std_per_variable_and_its_own_stream():
    record = torch.randn(20_000, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1], dtype=torch.float64)
    noisy = add_measurement_noise(record, 0.1, seed=0)
    ratio = (noisy - record).std(0) / record.std(0)
    assert torch.allclose(ratio, torch.full((3,), 0.1, dtype=torch.float64), rtol=0.03)
    assert torch.equal(noisy, add_measurement_noise(record, 0.1, seed=0))
    assert add_measurement_noise(record, 0.0, seed=0) is record
    in_place = record.clone()
    assert add_measurement_noise(in_place, 0.1, seed=0, inplace=True) is in_place
    assert torch.equal(in_place, noisy)


def test_measurement_noise_drawn_in_chunks_is_one_draw_of_the_whole_record():
    """The noise is drawn 1,024 frames at a time (no (T, N) temporary on a long flyvis record); it must
    be the stream a single draw gives, so that records, caches and published tables do not change."""
    record = torch.randn(2_500, 7)
    std = record.double().std(0).float()
    gen = torch.Generator().manual_seed(3 + 7919)
    one_draw = record + torch.randn(record.shape, generator=gen) * (std * 0.2)
    assert torch.equal(add_measurement_noise(record, 0.2, seed=3), one_draw)


@pytest.mark.parametrize("window", [1, 21])
def test_smoothing_into_given_arrays_gives_the_same_values_without_a_copy(window):
    """``out=(record, derivative)`` (how flyvis records 13,741 neurons x 64,000 frames) writes the smoothed
    activity over the record and the derivative into the given array, with the values of the plain call."""
    record = torch.cumsum(torch.randn(300, 5000, generator=torch.Generator().manual_seed(0)), 0)
    activity, derivative = smooth_and_differentiate(record, 0.02, window)
    into = record.clone()
    given = torch.empty_like(into)
    out = smooth_and_differentiate(into, 0.02, window, out=(into, given))
    assert out[0] is into and out[1] is given
    assert torch.equal(into, activity) and torch.equal(given, derivative)


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_every_regime_records_with_measurement_noise_on_the_same_trajectory(regime):
    clean, truth = observations(regime)
    noisy, noisy_truth = observations(regime, measurement_noise_level=0.2)
    for key in truth.tensors:  # the network and the simulated trajectory do not change with the noise
        assert torch.equal(truth[key], noisy_truth[key]), key
    ratio = (noisy.activity - clean.activity).std(0) / clean.activity.std(0)
    moving = clean.activity.std(0) > 1e-6
    assert 0.15 < float(ratio[moving].median()) < 0.25
    train = noisy.activity[: noisy.n_train_frames]  # flyvis appends a second recording after it
    forward = (train[1:] - train[:-1]) / noisy.dt  # float32 here, float64 when recorded
    derivative = noisy.derivative[: noisy.n_train_frames - 1]
    assert torch.allclose(derivative, forward, rtol=1e-3, atol=1e-3 * float(forward.abs().max()))


@pytest.mark.parametrize("regime", sorted(REGIMES))
@pytest.mark.parametrize(
    "key, value", [("smoothing_window", 4), ("smoothing_window", 3), ("measurement_noise_level", -0.1)]
)
def test_bad_recording_keys_fail_before_simulating(regime, key, value):
    cls, base = REGIMES[regime]
    with pytest.raises(ValueError, match=rf"^simulation\.{key}={value}: must be"):
        cls(**{**base, key: value})


@pytest.mark.parametrize("regime", ["signal", "metabolism"])
def test_auto_smoothing_is_accepted_where_the_dynamics_are_slow_and_refused_by_flyvis(regime):
    cls, base = REGIMES[regime]
    cls(**{**base, "smoothing_window": "auto"})
    with pytest.raises(ValueError, match=r"^simulation\.smoothing_window='smooth': must be 1, .* or 'auto'$"):
        cls(**{**base, "smoothing_window": "smooth"})
    flyvis_cls, flyvis = REGIMES["flyvis"]
    with pytest.raises(ValueError, match=r"^simulation\.smoothing_window='auto': .*this regime's are not\)$"):
        flyvis_cls(**{**flyvis, "smoothing_window": "auto"})


@pytest.mark.parametrize("process_noise", [0.0, 1.0])
def test_the_measurement_noise_is_estimated_from_the_record_alone(process_noise):
    """The default signal network's record with and without process noise: the estimate finds the
    measurement noise that was added (in units of each neuron's std) and none when there is none."""
    dm = SignalDataModule(n_frames=6000, noise_model_level=process_noise, seed=42)
    dm.setup()
    clean = dm.observations.activity.double()
    assert measurement_noise_estimate(clean) < NOISE_FLOOR
    for level in (0.02, 0.1, 0.2):
        estimate = measurement_noise_estimate(add_measurement_noise(clean, level, seed=42))
        assert estimate == pytest.approx(level, rel=0.1)


def test_auto_window_is_near_the_best_for_the_derivative_and_keeps_noise_free_records_raw():
    """On the default signal network, the window chosen from the noisy record alone gives a derivative
    error within 1.2x of the best window of the grid (judged against the noise-free record's forward
    difference, which is exact for the Euler-integrated, noise-free dynamics)."""
    dm = SignalDataModule(n_frames=6000, noise_model_level=0.0, seed=42)
    dm.setup()
    clean, dt = dm.observations.activity.double(), dm.observations.dt
    truth = dm.observations.derivative.double()[:-1]
    assert choose_window(clean) == 1
    for level in (0.05, 0.2):
        noisy = add_measurement_noise(clean, level, seed=42)
        error = {
            w: float(((smooth_and_differentiate(noisy, dt, w)[1][:-1] - truth) ** 2).mean())
            for w in WINDOW_GRID
        }
        chosen = choose_window(noisy)
        assert chosen % 2 == 1 and chosen > 5
        chosen_error = float(((smooth_and_differentiate(noisy, dt, chosen)[1][:-1] - truth) ** 2).mean())
        assert chosen_error <= 1.2 * min(error.values()), (level, chosen, chosen_error, error)
        auto_activity, auto_derivative = smooth_and_differentiate(noisy, dt, "auto")
        assert torch.equal(auto_derivative, smooth_and_differentiate(noisy, dt, chosen)[1])


@pytest.mark.parametrize("regime", ["signal", "metabolism"])
def test_the_auto_window_is_stored_with_the_record_and_read_from_the_cache(regime, tmp_path, monkeypatch):
    """The window ``auto`` chose is part of the Observations, so a run that loads the cache reports the
    window its data was smoothed with without choosing it again."""
    options = dict(measurement_noise_level=0.1, smoothing_window="auto", cache_dir=str(tmp_path))
    first, _ = observations(regime, **options)
    assert first.smoothing_window % 2 == 1 and first.smoothing_window >= 5

    def never(record):
        raise AssertionError("the window was chosen again instead of read from the cache")

    monkeypatch.setattr(recording, "choose_window", never)
    again, _ = observations(regime, **options)
    assert again.smoothing_window == first.smoothing_window
    assert torch.equal(again.derivative, first.derivative)
    fixed, _ = observations(regime, measurement_noise_level=0.1, smoothing_window=first.smoothing_window)
    assert torch.equal(fixed.derivative, first.derivative)
    assert observations("flyvis", smoothing_window=5)[0].smoothing_window == 5


def test_savitzky_golay_beats_the_forward_difference_under_measurement_noise():
    """A sum of sines sampled at dt 0.01 with noise of 0.1 of its std: the forward difference drowns
    the derivative and is biased towards -1/dt on the noisy input; the cubic fit is neither."""
    dt, t = 0.01, torch.arange(4000, dtype=torch.float64) * 0.01
    clean = torch.stack([torch.sin(t) + 0.5 * torch.sin(2.3 * t), torch.cos(0.7 * t)], dim=1)
    truth = torch.stack([torch.cos(t) + 1.15 * torch.cos(2.3 * t), -0.7 * torch.sin(0.7 * t)], dim=1)
    noisy = add_measurement_noise(clean, 0.1, seed=1)
    noise = noisy - clean

    raw, forward = smooth_and_differentiate(noisy, dt, 1)
    smooth, savgol = smooth_and_differentiate(noisy, dt, 61)
    assert raw is noisy
    error = {"forward": forward - truth, "savgol": savgol - truth}
    assert float(error["forward"].std() / truth.std()) > 5.0
    assert float(error["savgol"].std() / truth.std()) < 0.2
    assert float((smooth - clean).std() / clean.std()) < 0.03
    # regression of the derivative's error on the input's noise: -1/dt for the forward difference
    bias = {k: float((e[:-1] * noise[:-1]).mean() / noise.var()) for k, e in error.items()}
    assert bias["forward"] == pytest.approx(-1 / dt, rel=0.1)
    assert abs(bias["savgol"]) < 1.0


def test_signal_training_data_under_measurement_noise_is_smoothed_from_the_record_only():
    clean, _ = observations("signal")
    noisy, _ = observations("signal", measurement_noise_level=0.1, smoothing_window=61)
    raw, _ = observations("signal", measurement_noise_level=0.1)
    assert noisy.activity.shape == clean.activity.shape and noisy.derivative.shape == clean.derivative.shape
    # what training sees is the smoothed record: far closer to the clean activity than the raw record
    err_smooth = float((noisy.activity - clean.activity).std())
    err_raw = float((raw.activity - clean.activity).std())
    assert err_smooth < err_raw / 3
    assert math.isfinite(float(noisy.derivative.abs().max()))


def test_the_noisy_preset_records_with_noise_and_smooths(tmp_path):
    from hydra.utils import get_class

    from tests.test_train_run import compose_quiet

    sim = compose_quiet(tmp_path, "simulation=signal_noisy").simulation
    assert (sim.measurement_noise_level, sim.smoothing_window, sim.n_frames) == (0.1, "auto", 20000)
    assert get_class(sim._target_) is SignalDataModule
