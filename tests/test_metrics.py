"""Generic metrics on hand-checkable numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hydra_llm.chunks import in_chunks
from hydra_llm.evaluation.flyvis import gmm_fit
from hydra_llm.evaluation.metrics import (
    cluster_accuracy,
    euler_rollout,
    fisher_mean,
    kmeans_labels,
    median_relative_error,
    pearson_per_column,
    r2_identity,
    r2_slope,
    r2_temporal,
)


def test_r2_slope_is_scale_and_offset_invariant_identity_is_not():
    true = np.array([0.0, 1.0, 2.0, 3.0])
    r2, slope = r2_slope(true, 2 * true + 1)
    assert r2 == pytest.approx(1.0) and slope == pytest.approx(2.0)
    # identity: residual sum (true + 1)^2 = 1 + 4 + 9 + 16 = 30, SS_tot = 5 -> 1 - 6 = -5.
    assert r2_identity(true, 2 * true + 1) == pytest.approx(-5.0)
    assert r2_identity(true, true) == pytest.approx(1.0)


def test_r2_values_by_hand():
    true, learned = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0, 4.0])
    assert r2_identity(true, learned) == pytest.approx(1 - 1 / 5)
    r2, slope = r2_slope(true, learned)
    assert r2 == pytest.approx(np.corrcoef(true, learned)[0, 1] ** 2)
    assert slope == pytest.approx(np.polyfit(true, learned, 1)[0])
    assert r2_slope(torch.tensor(true), torch.tensor(learned))[0] == pytest.approx(r2)


def test_r2_degenerate_and_bad_input():
    assert np.isnan(r2_slope([1.0, 1.0, 1.0], [0.0, 1.0, 2.0])[0])
    assert r2_slope([0.0, 1.0, 2.0], [3.0, 3.0, 3.0]) == (0.0, 0.0)
    assert np.isnan(r2_identity([1.0, 1.0], [0.0, 1.0]))
    assert np.isnan(r2_identity([0.0, 1.0], [np.nan, 1.0]))
    with pytest.raises(ValueError, match="same size"):
        r2_slope([1.0, 2.0, 3.0], [1.0, 2.0])
    assert median_relative_error([2.0, 2.0, 2.0], [2.2, 1.0, 2.0]) == pytest.approx(0.1)
    assert np.isnan(median_relative_error([0.0, 1.0], [0.0, 1.0]))
    with pytest.raises(ValueError, match="at least 2"):
        r2_identity([1.0], [1.0])


def test_temporal_r2_does_not_reward_a_frozen_prediction():
    t = np.linspace(0, 1, 20)[:, None]
    true = np.hstack([t, 10 + t, -5 + 2 * t])
    frozen = np.repeat(true[:1], 20, axis=0)
    assert r2_identity(true, frozen) > 0.9  # the spread between columns dominates a pooled R2
    # Each column drifts away from its frozen start: the error exceeds the temporal variance.
    assert r2_temporal(true, frozen) < 0
    assert r2_temporal(true, true) == 1.0
    assert r2_temporal(true, true + 0.1) == pytest.approx(
        1 - 0.01 * 60 / (((true - true.mean(0)) ** 2).sum())
    )
    with pytest.raises(ValueError, match="same shape"):
        r2_temporal(true, true[:, :2])


def test_cluster_accuracy_uses_the_best_one_to_one_matching():
    true = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert cluster_accuracy(true, np.array([5, 5, 5, 7, 7, 7, 1, 1, 1])) == 1.0
    assert cluster_accuracy(true, np.array([5, 5, 7, 7, 7, 7, 1, 1, 1])) == pytest.approx(8 / 9)
    # Two true types merged into one cluster: only one of them can be matched.
    assert cluster_accuracy(true, np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])) == pytest.approx(6 / 9)
    # More clusters than types: items of the unmatched cluster are errors.
    assert cluster_accuracy(true, np.array([0, 0, 3, 1, 1, 1, 2, 2, 2])) == pytest.approx(8 / 9)
    with pytest.raises(ValueError):
        cluster_accuracy(true, true[:3])


def test_kmeans_finds_separated_blobs_in_any_label_order():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    types = np.repeat([2, 0, 1], 20)
    features = centres[types] + 0.3 * rng.standard_normal((60, 2))
    labels = kmeans_labels(features, 3, seed=0)
    assert cluster_accuracy(types, labels) == 1.0


def test_gmm_keeps_the_likeliest_of_its_starts():
    """The flyvis evaluation's GMM: separated blobs are found from one start, and over many
    overlapping blobs ten starts keep one whose likelihood bound is at least the first start's."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    types = np.repeat([2, 0, 1], 20)
    labels, bound = gmm_fit(centres[types] + 0.3 * rng.standard_normal((60, 2)), 3, seed=0)
    assert cluster_accuracy(types, labels) == 1.0 and np.isfinite(bound)
    crowded = rng.uniform(0, 10, (12, 2))[np.repeat(np.arange(12), 25)] + rng.standard_normal((300, 2))
    bounds = [gmm_fit(crowded, 12, seed)[1] for seed in range(4)]
    assert len(set(bounds)) > 1  # the start matters on these data
    assert all(gmm_fit(crowded, 12, seed, n_init=10)[1] >= bounds[seed] - 1e-12 for seed in range(4))


def test_pearson_and_fisher_pooling():
    t = np.linspace(0, 1, 50)
    true = np.stack([t, t, t], axis=1)
    pred = np.stack([2 * t + 3, -t, np.ones_like(t)], axis=1)
    r = pearson_per_column(true, pred)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(-1.0) and np.isnan(r[2])
    assert fisher_mean([0.5, 0.5]) == pytest.approx(0.5)
    assert fisher_mean([0.2, 0.8]) == pytest.approx(np.tanh((np.arctanh(0.2) + np.arctanh(0.8)) / 2))
    assert np.isnan(fisher_mean([np.nan]))


def test_euler_rollout_of_exponential_decay():
    dt = 0.1
    out = euler_rollout(lambda u: -u, torch.tensor([1.0, 2.0], dtype=torch.float64), 5, dt)
    expected = torch.tensor([(1 - dt) ** k for k in range(5)], dtype=torch.float64)
    assert torch.allclose(out[:, 0], expected) and torch.allclose(out[:, 1], 2 * expected)
    blown = euler_rollout(lambda u: 1e6 * u, torch.tensor([1.0]), 4, 1.0, clamp=10.0)
    assert blown.abs().max() == 10.0


def test_in_chunks_gives_one_call_s_result_over_uneven_chunks():
    gen = torch.Generator().manual_seed(0)
    x, W = torch.randn(103, 7, generator=gen), torch.randn(7, 7, generator=gen)
    sizes = []

    def per_frame(v: torch.Tensor) -> torch.Tensor:
        sizes.append(len(v))
        return torch.tanh(v) @ W.T - v

    out = in_chunks(per_frame, x, chunk=70)  # 70 values = 10 frames of 7 neurons
    assert sizes == [10] * 10 + [3]
    assert torch.allclose(out, torch.tanh(x) @ W.T - x, atol=1e-6)
    assert in_chunks(per_frame, x, chunk=1).shape == (103, 7)  # never fewer than one frame a call


class ExactSignalModel(torch.nn.Module):
    """The true signal ODE written in the model interface, in another gauge: psi_j = c_j tanh and
    W = g W / c, with c = ``scale`` (a float, or one value per source neuron).

    Evaluating it must give perfect scores: this checks the W read-out, the tau read-out, the
    clustering and the rollout end to end, independently of any training.
    """

    def __init__(self, truth, scale: float | torch.Tensor = 3.0):
        super().__init__()
        self.tau, self.s, self.g, self.W = truth["tau"], truth["s"], truth["gain"], truth["W"]
        self.a = torch.nn.functional.one_hot(truth["types"]).float()
        self.scale = torch.as_tensor(scale, dtype=torch.float32)

    def phi_of(self, u):
        return -u / self.tau + self.s * torch.tanh(u)

    def psi_of(self, u):
        return self.scale * torch.tanh(u)

    def learned_W(self):
        return self.g[:, None] * self.W / self.scale

    def forward(self, u):
        return self.phi_of(u) + self.psi_of(u) @ self.learned_W().T


def test_signal_evaluation_of_the_exact_model_is_perfect(tmp_path):
    from hydra_llm.evaluation.signal import evaluate
    from hydra_llm.simulation.signal import SignalDataModule

    dm = SignalDataModule(
        n_neurons=40,
        n_neuron_types=4,
        n_frames=400,
        burn_in_frames=100,
        connectivity_filling_factor=0.5,
        seed=5,
    )
    dm.setup("fit")
    metrics = evaluate(
        ExactSignalModel(dm.ground_truth),
        dm.observations,
        dm.ground_truth,
        tmp_path,
        rollout_frames=50,
        make_plots=False,
    )
    for key in (
        "connectivity_R2",
        "connectivity_R2_identity",
        "connectivity_R2_edges",
        "connectivity_R2_identity_edges",
        "tau_R2",
        "tau_R2_identity",
        "s_R2",
        "cluster_accuracy",
    ):
        assert metrics[key] == pytest.approx(1.0, abs=1e-4), key
    assert metrics["connectivity_slope"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["test_R2"] > 0.999 and metrics["test_pearson"] > 0.999
    assert metrics["test_one_step_R2"] > 0.999
    assert all(isinstance(v, float) for v in metrics.values())
    assert not (tmp_path / "plots").exists()


def test_signal_evaluation_writes_plots_and_rejects_bad_rollout(tmp_path):
    from hydra_llm.evaluation.signal import evaluate
    from hydra_llm.simulation.signal import SignalDataModule

    dm = SignalDataModule(n_neurons=20, n_neuron_types=2, n_frames=100, burn_in_frames=10, seed=5)
    dm.setup("fit")
    model = ExactSignalModel(dm.ground_truth)
    with pytest.raises(ValueError, match="evaluation.rollout_frames=1"):
        evaluate(model, dm.observations, dm.ground_truth, tmp_path, rollout_frames=1)
    evaluate(model, dm.observations, dm.ground_truth, tmp_path, rollout_frames=10)
    names = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert {
        "activity.png",
        "connectivity.png",
        "phi_per_type.png",
        "psi_per_type.png",
        "embeddings.png",
        "rollout.png",
        "tau.png",
    } <= names
