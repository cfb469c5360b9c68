"""The metabolism simulation: network structure, exact derivatives, conservation, cache and errors."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

from hydra_llm.simulation.frames import FrameSampling, start_frame_loader
from hydra_llm.simulation.metabolism import (
    MetabolismDataModule,
    build_reaction_network,
    flux_limit,
    mass_action_rates,
)

TINY = dict(n_metabolites=12, n_reactions=12, n_frames=200, delta_t=0.1, seed=3)


def _simulate(**kwargs):
    dm = MetabolismDataModule(**{**TINY, **kwargs})
    dm.setup()
    return dm.observations, dm.ground_truth


def test_network_structure_is_molecule_conserving_with_unique_cycle_pairs():
    rng = np.random.default_rng(0)
    order, produced = build_reaction_network(40, 60, 4, 0.9, 3, rng)
    assert order.shape == (40, 60) and (order >= 0).all() and (produced >= 0).all()
    # every reaction conserves the number of molecules and has a substrate
    np.testing.assert_array_equal(order.sum(0), produced.sum(0))
    assert (order.sum(0) >= 1).all()
    assert ((order > 0) | (produced > 0)).sum(0).max() <= 4
    # cycle reactions (the first 54): m + m' -> 2 m', each unordered pair used once
    pairs = {tuple(np.flatnonzero(order[:, j])) for j in range(54)}
    assert len(pairs) == 54
    net = produced - order
    assert sorted(net[:, 0][net[:, 0] != 0].tolist()) == [-1, 1]


def test_observations_hold_no_hidden_parameters_and_exact_derivatives():
    obs, gt = _simulate()
    assert obs.activity.shape == (200, 12) and obs.activity.dtype == torch.float32
    assert set(obs.extras) == {"stoichiometry", "substrate_order"}
    assert obs.edge_index is None and obs.external_input is None
    for key in ("types", "log_k", "homeostatic_lambda", "homeostatic_baseline"):
        assert key in gt
    # the recorded derivative is the finite difference of the recording
    fd = (obs.activity[1:].double() - obs.activity[:-1].double()) / obs.dt
    torch.testing.assert_close(obs.derivative[:-1].double(), fd, atol=2e-4, rtol=1e-4)
    # and equals the true right-hand side at each frame (explicit Euler)
    c = obs.activity[:-1].double()
    k = 10.0 ** gt["log_k"].double()
    rhs = mass_action_rates(c, gt["substrate_order"].double(), k) @ gt["stoichiometry"].double().T
    rhs = rhs - gt["homeostatic_lambda"].double() * (c - gt["homeostatic_baseline"].double())
    torch.testing.assert_close(obs.derivative[:-1].double(), rhs, atol=3e-4, rtol=1e-3)
    assert obs.n_train_frames == 160


def test_reactions_only_move_mass_homeostasis_exchanges_it():
    obs, _ = _simulate(homeostatic_lambda_per_type=[0.0, 0.0])
    total = obs.activity.double().sum(1)
    assert float((total - total[0]).abs().max()) < 1e-3 * float(total[0])
    obs_h, _ = _simulate(homeostatic_lambda_per_type=[0.5, 0.5], homeostatic_baseline_per_type=[1.0, 1.0])
    # strong homeostasis towards 1 pulls the mean concentration (initially ~5) down
    assert float(obs_h.activity[-1].mean()) < 0.5 * float(obs_h.activity[0].mean())


def test_types_are_balanced_and_the_seed_decides_everything():
    obs_a, gt_a = _simulate()
    obs_b, gt_b = _simulate()
    obs_c, _ = _simulate(seed=4)
    assert torch.equal(obs_a.activity, obs_b.activity) and torch.equal(gt_a["types"], gt_b["types"])
    assert not torch.equal(obs_a.activity, obs_c.activity)
    assert torch.bincount(gt_a["types"]).tolist() == [6, 6]
    assert float(gt_a["log_k"].min()) >= -2.0 and float(gt_a["log_k"].max()) <= -1.0


def test_cache_round_trip(tmp_path):
    first = MetabolismDataModule(**TINY, cache_dir=tmp_path)
    first.setup()
    files = list(tmp_path.glob("MetabolismDataModule-*.pt"))
    assert len(files) == 1
    second = MetabolismDataModule(**TINY, cache_dir=tmp_path)
    second.setup()
    assert torch.equal(first.observations.activity, second.observations.activity)
    assert torch.equal(first.ground_truth["types"], second.ground_truth["types"])
    other = MetabolismDataModule(**{**TINY, "delta_t": 0.05}, cache_dir=tmp_path)
    other.setup()
    assert len(list(tmp_path.glob("MetabolismDataModule-*.pt"))) == 2


def test_flux_limit_keeps_substrates_non_negative():
    order = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    conc = torch.tensor([[0.1, 5.0]])
    rates = torch.tensor([[10.0, 0.5]])
    limited = flux_limit(rates, conc, order, dt=0.1)
    consumed = 0.1 * limited @ order.T
    assert bool((consumed <= conc + 1e-6).all())
    assert float(limited[0, 0]) == pytest.approx(1.0)  # metabolite 0 allows 0.1 / (0.1 * 10)
    obs, _ = _simulate(flux_limit=True)
    assert float(obs.activity.min()) >= 0.0


def test_mass_added_by_the_clamp_at_zero_is_reported_and_flux_limit_adds_none(caplog):
    """Without homeostasis the total concentration is conserved; each clamp at 0 adds to it, and the
    warning states how much (the conservation laws phase 2 reads break, BENCHMARKS.md)."""
    no_homeostasis = dict(seed=0, n_frames=2000, homeostatic_lambda_per_type=[0.0, 0.0])
    with caplog.at_level(logging.WARNING, logger="hydra_llm.simulation.metabolism"):
        clamped = MetabolismDataModule(**no_homeostasis)
        clamped.setup()
    found = re.search(r"set to 0 on (\d+) of 2000 steps, adding (\S+) units of mass", caplog.text)
    assert found and int(found[1]) > 0 and "simulation.flux_limit=true" in caplog.text
    total = clamped.observations.activity.double().sum(1)
    assert float(total[-1] - total[0]) == pytest.approx(float(found[2]), rel=1e-2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hydra_llm.simulation.metabolism"):
        limited = MetabolismDataModule(**no_homeostasis, flux_limit=True)
        limited.setup()
    assert "set to 0" not in caplog.text
    total = limited.observations.activity.double().sum(1)
    assert float((total - total[0]).abs().max()) < 1e-4


def test_circadian_baseline_changes_the_data():
    base, _ = _simulate(homeostatic_lambda_per_type=[0.2, 0.2])
    wave, gt = _simulate(
        homeostatic_lambda_per_type=[0.2, 0.2], circadian_amplitude=0.5, circadian_period=5.0
    )
    assert not torch.allclose(base.activity, wave.activity)
    assert gt.meta["circadian_amplitude"] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"homeostatic_lambda_per_type": [0.1]}, "homeostatic_lambda_per_type"),
        ({"n_metabolite_types": 0}, "n_metabolite_types"),
        ({"log_k_min": 0.0, "log_k_max": -1.0}, "log_k_min"),
        ({"use_mass_action": False}, "use_mass_action"),
        ({"n_reactions": 500}, "n_reactions"),
    ],
)
def test_bad_input_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"simulation.{key}"):
        _simulate(**kwargs)


def test_dataloader_serves_reproducible_start_frames():
    dm = MetabolismDataModule(**TINY)
    dm.setup()
    n_train = dm.observations.n_train_frames
    sampling = FrameSampling(batch_size=4, batches_per_epoch=5, seed=1)
    first = torch.cat([b["frame"] for b in start_frame_loader(n_train, sampling, window=9)])
    again = torch.cat([b["frame"] for b in start_frame_loader(n_train, sampling, window=9)])
    assert first.shape == (20,) and torch.equal(first, again)
    assert int(first.max()) < n_train - 8
    with pytest.raises(ValueError, match="simulation.n_frames"):
        start_frame_loader(n_train, sampling, window=501)
