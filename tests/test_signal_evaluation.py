"""Signal evaluation helpers on synthetic inputs: clustering of the learned update functions."""

from __future__ import annotations

import numpy as np
import torch

from hydra_llm.evaluation.metrics import cluster_accuracy, kmeans_labels
from hydra_llm.evaluation.signal import profile_cluster_labels


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
