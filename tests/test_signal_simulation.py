"""The signal simulation: validation, connectivity families, dynamics, split, cache, batches."""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from hydra_llm.simulation.signal import SignalDataModule

SMALL = dict(n_neurons=30, n_neuron_types=2, n_frames=300, burn_in_frames=50, seed=3)


def make(**overrides) -> SignalDataModule:
    dm = SignalDataModule(**{**SMALL, **overrides})
    dm.setup("fit")
    return dm


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_neurons": 0}, "simulation.n_neurons=0: must be > 0"),
        (
            {"connectivity_filling_factor": 1.5},
            "simulation.connectivity_filling_factor=1.5: must be in (0, 1]",
        ),
        (
            {"connectivity_filling_factor": 0.0},
            "simulation.connectivity_filling_factor=0.0: must be in (0, 1]",
        ),
        ({"connectivity_type": "low_rank", "connectivity_rank": 31}, "simulation.connectivity_rank=31"),
        ({"connectivity_type": "low_rank", "connectivity_rank": 0}, "simulation.connectivity_rank=0"),
        ({"delta_t": 0.0}, "simulation.delta_t=0.0: must be > 0"),
        ({"delta_t": -0.01}, "simulation.delta_t=-0.01: must be > 0"),
        (
            {"connectivity_type": "Lorentz"},
            "simulation.connectivity_type='Lorentz': allowed values: [chaotic, low_rank]",
        ),
        ({"n_neuron_types": 5}, "simulation.neuron_type_params"),
        ({"gain": [1.0]}, "simulation.gain"),
        ({"noise_model_level": -1.0}, "simulation.noise_model_level=-1.0"),
    ],
)
def test_bad_input_is_rejected_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ValueError) as err:
        SignalDataModule(**{**SMALL, **overrides}, cache_dir=tmp_path)
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_shapes_split_and_no_types_in_observations():
    dm = make()
    obs, truth = dm.observations, dm.ground_truth
    assert obs.activity.shape == (300, 30) and obs.derivative.shape == (300, 30)
    assert obs.activity.dtype == torch.float32
    assert obs.n_train_frames == 240 and obs.dt == 0.01
    assert obs.edge_index is None and obs.external_input is None and len(obs.extras) == 0
    assert truth["types"].shape == (30,) and set(truth["types"].tolist()) == {0, 1}
    assert torch.isfinite(obs.activity).all()


def test_derivative_is_the_finite_difference_and_matches_the_ode_without_noise():
    dm = make()
    obs, truth = dm.observations, dm.ground_truth
    fd = (obs.activity[1:].double() - obs.activity[:-1].double()) / obs.dt
    assert torch.allclose(fd, obs.derivative[:-1].double(), atol=2e-3)
    u = obs.activity.double()
    W, tau, s, g = (truth[k].double() for k in ("W", "tau", "s", "gain"))
    rhs = -u / tau + s * torch.tanh(u) + g * torch.tanh(u) @ W.T
    assert torch.allclose(rhs, obs.derivative.double(), atol=1e-3, rtol=1e-4)


def test_process_noise_scales_with_sqrt_dt():
    dm = make(noise_model_level=0.5, n_frames=2000)
    obs, truth = dm.observations, dm.ground_truth
    u = obs.activity.double()
    W, tau, s, g = (truth[k].double() for k in ("W", "tau", "s", "gain"))
    rhs = -u / tau + s * torch.tanh(u) + g * torch.tanh(u) @ W.T
    residual = obs.derivative.double() - rhs  # = sigma * sqrt(dt) * xi / dt
    assert residual.std().item() == pytest.approx(0.5 / math.sqrt(0.01), rel=0.05)


def test_chaotic_connectivity_statistics():
    truth = make(n_neurons=200, n_frames=20).ground_truth
    W = truth["W"]
    assert torch.all(W.diagonal() == 0)
    off = W[~torch.eye(200, dtype=torch.bool)]
    assert off.var().item() * 200 == pytest.approx(1.0, rel=0.05)
    assert truth["edge_index"].shape == (2, 200 * 199)


def test_low_rank_connectivity_has_rank_r_off_the_diagonal():
    W = make(n_neurons=100, n_frames=20, connectivity_type="low_rank", connectivity_rank=5).ground_truth["W"]
    sv = torch.linalg.svdvals(W.double())
    # Rank 5 plus the removed diagonal (norm ~ sqrt(2 log N / N)): a clear gap after 5 values.
    assert sv[4] / sv[5] > 5.0
    assert torch.all(W.diagonal() == 0)


def test_dale_law_gives_one_sign_per_presynaptic_neuron():
    W = make(n_neurons=200, n_frames=20, Dale_law=True, Dale_law_factor=0.8).ground_truth["W"]
    pos = (W > 0).sum(0)
    neg = (W < 0).sum(0)
    assert torch.all((pos == 0) | (neg == 0))
    assert int((pos > 0).sum()) == 160  # exactly round(0.8 * 200) excitatory columns


def test_balanced_dale_has_no_mean_field_outlier():
    """A 50/50 split is exact, so the rank-one mean part of W (column signs) has eigenvalue ~0.

    With a Bernoulli split, an imbalance of k columns gives an outlier eigenvalue ~0.8 k / sqrt(N)
    that pins the network at a fixed point when multiplied by g = 10.
    """
    W = make(n_neurons=100, n_frames=20, Dale_law=True, Dale_law_factor=0.5).ground_truth["W"]
    signs = torch.sign(W.sum(0))
    assert int(signs.sum()) == 0
    mean_mode = torch.ones(100) / 10.0
    assert abs(float(mean_mode @ W @ mean_mode)) < 0.2


def test_filling_factor_and_known_structure():
    dm = make(n_neurons=100, n_frames=20, connectivity_filling_factor=0.3, structure_known=True)
    W, edges = dm.ground_truth["W"], dm.ground_truth["edge_index"]
    assert (W != 0).sum().item() == edges.shape[1]
    assert edges.shape[1] / (100 * 99) == pytest.approx(0.3, abs=0.02)
    assert torch.all(W[edges[1], edges[0]] != 0)
    assert torch.equal(dm.observations.edge_index, edges)
    hidden = make(n_neurons=100, n_frames=20, connectivity_filling_factor=0.3, structure_known=False)
    assert hidden.observations.edge_index is None


def test_cache_round_trip_and_key(tmp_path):
    first = SignalDataModule(**SMALL, cache_dir=tmp_path)
    first.prepare_data()
    files = list(tmp_path.glob("SignalDataModule-*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = SignalDataModule(**SMALL, cache_dir=tmp_path)
    second.prepare_data()
    second.setup("fit")
    assert files[0].stat().st_mtime_ns == stamp
    first.setup("fit")
    assert torch.equal(first.observations.activity, second.observations.activity)
    assert torch.equal(first.ground_truth["W"], second.ground_truth["W"])
    other = SignalDataModule(**{**SMALL, "seed": 4}, cache_dir=tmp_path)
    other.setup("fit")
    assert len(list(tmp_path.glob("SignalDataModule-*.pt"))) == 2
    assert not torch.equal(other.observations.activity, first.observations.activity)


def test_same_seed_same_data_different_seed_different_data():
    a, b, c = make(), make(), make(seed=4)
    assert torch.equal(a.observations.activity, b.observations.activity)
    assert not torch.equal(a.observations.activity, c.observations.activity)


def test_train_dataloader_serves_training_frames_only():
    dm = make()
    batches = list(dm.train_dataloader())
    assert len(batches) == dm.default_sampling.batches_per_epoch
    batch = batches[0]
    assert set(batch) == {"activity", "derivative", "frame"}
    assert batch["activity"].shape == (dm.default_sampling.batch_size, 30)
    frames = torch.cat([b["frame"] for b in batches])
    assert frames.max().item() < dm.observations.n_train_frames
    assert torch.equal(batch["activity"], dm.observations.activity[batch["frame"]])


class CountingDataModule(SignalDataModule):
    """Appends one line to ``<cache_dir>/simulated.txt`` per simulation."""

    def simulate(self):
        with open(Path(self.cache_dir) / "simulated.txt", "a") as handle:
            handle.write("x\n")
        time.sleep(0.5)  # long enough for the other process to meet the lock
        return super().simulate()


def _load_in_child(cache_dir: str) -> float:
    dm = CountingDataModule(**SMALL, cache_dir=cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    return float(dm.observations.activity.sum())


def test_children_sharing_a_cache_key_simulate_once(tmp_path):
    """Two processes with the same key: one simulates under the lock, the other loads its file."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        sums = list(pool.map(_load_in_child, [str(tmp_path)] * 2))
    assert sums[0] == sums[1]
    assert (tmp_path / "simulated.txt").read_text() == "x\n"
    assert len(list(tmp_path.glob("CountingDataModule-*.pt"))) == 1
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
