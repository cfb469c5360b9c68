"""Snap each neuron's embedding to its cluster's median during training (``training.embedding_snap_at``).

The original's training step of the same aim: neurons of one cell type share their dynamics, so at set
points of training it clusters the learned neurons, replaces each embedding a_i by its cluster's median
and fits f to the cluster-median function for a while. Here training simply goes on, with the
embeddings free again. The clusters are the evaluation's GMM on learned quantities only
(:func:`hydra_llm.evaluation.flyvis.cluster_features` of the headline read-out: a_i, tau_i, V_rest_i
and the statistics of the corrected W into and out of neuron i); the number of components is a
setting, never the number of true types.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch

log = logging.getLogger(__name__)


def cluster_medians(embedding: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """``embedding`` (N, D) with each row replaced by the element-wise median of its cluster's rows;
    ``labels`` (N,) integer cluster labels."""
    labels_t = torch.as_tensor(labels, device=embedding.device)
    snapped = embedding.clone()
    for label in torch.unique(labels_t):
        members = labels_t == label
        snapped[members] = embedding[members].median(dim=0).values
    return snapped


class EmbeddingSnap(pl.Callback):
    """After the optimiser steps at the fractions ``at`` of all training steps, set each a_i to its
    cluster's median (:func:`cluster_medians`); the clusters are a ``n_components`` GMM (seeded by
    ``seed``) on the module's learned features.

    Args:
        at: fractions of the run's steps in (0, 1], e.g. ``[0.5, 0.75]``.
        n_components: the GMM's components.
        seed: the GMM's random state.

    ``snaps`` records ``(global step, clusters found)`` for each snap made.
    """

    def __init__(self, at: Sequence[float], n_components: int, seed: int) -> None:
        self.at, self.n_components, self.seed = tuple(float(x) for x in at), int(n_components), int(seed)
        self.steps: set[int] = set()
        self.snaps: list[tuple[int, int]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self.steps = {max(1, round(fraction * pl_module.total_steps)) for fraction in self.at}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        # once a step: with gradient accumulation several batches end at one global step
        if trainer.global_step in self.steps - {step for step, _ in self.snaps}:
            self.snap(pl_module, trainer.global_step)

    @torch.no_grad()
    def snap(self, model, step: int) -> None:
        from hydra_llm.evaluation.flyvis import cluster_features, corrected_weights, gmm_labels

        observations = model.observations
        line = corrected_weights(model, observations, zero_drive=False)["line"]
        features = cluster_features(
            model.a.cpu(), line["W_star"], line["tau_hat"], line["V_rest_hat"], observations.edge_index
        )
        labels = gmm_labels(features, self.n_components, self.seed)
        model.a.copy_(cluster_medians(model.a.detach(), labels))
        n_clusters = len(np.unique(labels))
        self.snaps.append((step, n_clusters))
        log.info("embedding snap at step %d: %d clusters", step, n_clusters)
