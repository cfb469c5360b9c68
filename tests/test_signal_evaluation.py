"""Signal evaluation on synthetic inputs: clustering of the learned update functions, and read-outs
that take nothing from the ground truth."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from hydra_llm.evaluation.metrics import cluster_accuracy, kmeans_labels
from hydra_llm.evaluation.signal import (
    corrected_W,
    evaluate,
    learned_link,
    profile_cluster_labels,
    read_out_phi,
)
from hydra_llm.simulation.signal import SignalDataModule
from tests.test_metrics import ExactSignalModel


def test_function_profiles_recover_a_type_split_across_two_embedding_patches():
    """Type 0 sits in two far-apart embedding patches that decode to the same phi.

    K-means on the embeddings spends a cluster on the split and merges types 2 and 3; on the phi
    curves (u in [-5, 5], phi = -u/tau + s tanh(u) of the four paper types) every type is found.
    """
    gen = torch.Generator().manual_seed(0)
    params = torch.tensor([[0.5, 1.0], [1.0, 2.0], [0.5, 2.0], [1.0, 1.0]])
    types = torch.arange(80) % 4
    u = torch.linspace(-5.0, 5.0, 50)
    tau, s = params[types, 0:1], params[types, 1:2]
    profiles = -u / tau + s * torch.tanh(u) + 0.05 * torch.randn(80, 50, generator=gen)

    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.02, 1.02]])
    embeddings = centres[types] + 0.01 * torch.randn(80, 2, generator=gen)
    split = (types == 0) & (torch.arange(80) % 8 == 0)
    embeddings[split] += torch.tensor([-3.0, -3.0])

    by_embedding = cluster_accuracy(types, kmeans_labels(embeddings, 4, seed=0))
    by_profile = cluster_accuracy(types, profile_cluster_labels(profiles, 4, seed=0))
    assert by_embedding <= 0.9
    assert by_profile == 1.0
    assert isinstance(profile_cluster_labels(profiles, 4), np.ndarray)


def test_isolated_neurons_do_not_claim_a_cluster_of_their_own():
    """Three neurons with wild curves: plain k-means gives them a cluster and merges two types;
    the trimmed fit ignores them for the centroids and still scores them (as errors or not)."""
    gen = torch.Generator().manual_seed(1)
    types = torch.arange(60) % 3
    u = torch.linspace(-5.0, 5.0, 40)
    slope = torch.tensor([-1.0, -1.3, -1.6])[types, None]
    profiles = slope * u + 0.05 * torch.randn(60, 40, generator=gen)
    profiles[:3] += 8.0 * torch.randn(3, 40, generator=gen)

    plain = cluster_accuracy(types, kmeans_labels(profiles, 3, seed=0))
    trimmed = cluster_accuracy(types, profile_cluster_labels(profiles, 3, seed=0))
    assert plain <= 0.75
    assert trimmed >= 57 / 60


def test_headline_readouts_take_nothing_from_the_ground_truth(tmp_path):
    """W* and tau come from the model alone (its link's slope at rest, its own link as the basis of the
    self term, a cap from the recording's length): the exact model in a random per-source gauge scores
    ~1, the same as in another gauge, and the functions that read them are never handed the truth."""
    dm = SignalDataModule(n_neurons=30, n_neuron_types=2, n_frames=600, burn_in_frames=100, seed=3)
    dm.setup()
    truth = dm.release_ground_truth()
    scores = []
    for seed in (0, 1):
        scale = 0.5 + 2.0 * torch.rand(30, generator=torch.Generator().manual_seed(seed))
        model = ExactSignalModel(truth, scale)
        scores.append(evaluate(model, dm.observations, truth, tmp_path, rollout_frames=50, make_plots=False))
    metrics = scores[0]
    assert metrics["connectivity_R2_identity"] > 0.9999 and abs(metrics["connectivity_slope"] - 1) < 1e-4
    assert metrics["tau_R2_identity"] > 0.999 and metrics["s_R2"] > 0.999
    assert scores[1]["connectivity_R2_identity"] == pytest.approx(
        metrics["connectivity_R2_identity"], abs=1e-5
    )
    for name in ("connectivity_R2", "connectivity_R2_identity", "tau_R2"):
        assert f"{name}_oracle" in metrics
    for fn in (corrected_W, learned_link, read_out_phi):
        assert "ground_truth" not in inspect.signature(fn).parameters


def test_a_single_type_reports_tau_by_its_relative_error(tmp_path):
    """One type: every neuron has the same tau, so tau_R2 is undefined (NaN) and the relative error
    says how well tau was read out; the exact model reads it to within 0.1%."""
    dm = SignalDataModule(n_neurons=20, n_neuron_types=1, n_frames=400, burn_in_frames=100, seed=2)
    dm.setup()
    truth = dm.release_ground_truth()
    metrics = evaluate(
        ExactSignalModel(truth), dm.observations, truth, tmp_path, rollout_frames=20, make_plots=False
    )
    assert np.isnan(metrics["tau_R2"])
    assert metrics["tau_relative_error"] < 1e-3
    assert metrics["cluster_accuracy"] == 1.0
