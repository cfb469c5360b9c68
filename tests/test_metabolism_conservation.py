"""Phase 2 through the conservation laws of the stoichiometry: the left null space of S, the exact
least-squares node targets, the affine node term and their option errors, on a tiny network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from hydra_llm.evaluation.metabolism import evaluate, kmeans_embedding_metrics
from hydra_llm.models.metabolism import MetabolismGNN, conservation_basis, fit_model
from hydra_llm.simulation.metabolism import MetabolismDataModule
from hydra_llm.train import run
from tests.test_metabolism_config import TINY_OVERRIDES, _compose
from tests.test_metabolism_model import SMALL_ARCH, TINY_SIM, _phase1

TARGETS = {
    "phase": 2,
    "conservation_loss_weight": 1.0,
    "residual_supervision_weight": 0.0,
    "node_target_weight": 1.0,
    "node_target_offset_weight": 0.01,
    "lr_schedule": "warmup_decay",
    "data_augmentation_loop": 60,
    "batch_size": 8,
}
AFFINE_1D = {**SMALL_ARCH, "node_form": "affine", "embedding_dim": 1}


@pytest.fixture(scope="module")
def tiny_with_checkpoint(tmp_path_factory):
    dm = MetabolismDataModule(**TINY_SIM)
    dm.setup()
    obs = dm.observations
    out = tmp_path_factory.mktemp("p1")
    _phase1(obs, out, data_augmentation_loop=30)  # a rough phase 1: the targets must not need a good one
    path = out / "metabolism_phase1.ckpt"
    return obs, dm.ground_truth, path


def test_conservation_basis_is_the_orthonormal_left_null_space():
    gen = torch.Generator().manual_seed(0)
    S = torch.randint(-2, 3, (12, 7), generator=gen).float()
    S[-1] = -S[:-1].sum(0)  # molecule-conserving: every column sums to zero
    W = conservation_basis(S)
    rank = int(torch.linalg.matrix_rank(S))
    assert W.shape == (12, 12 - rank)
    torch.testing.assert_close(W.T @ S, torch.zeros(W.shape[1], 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(W.T @ W, torch.eye(W.shape[1]), atol=1e-5, rtol=0)
    ones = torch.ones(12) / 12**0.5
    assert float((W.T @ ones).norm()) == pytest.approx(1.0, abs=1e-5)  # total mass is conserved


def test_node_targets_recover_every_metabolite_slope_without_types(tiny_with_checkpoint):
    obs, gt, path = tiny_with_checkpoint
    model = MetabolismGNN(obs, training={**TARGETS, "phase1_checkpoint": str(path)}, **AFFINE_1D)
    slopes = model.node_targets[0, :, 0].numpy() / model.c_scale
    lam = gt["homeostatic_lambda"].numpy()
    # per metabolite, not only per type: the conserved combinations carry no reaction (phase-1) error
    np.testing.assert_allclose(-slopes, lam, rtol=0.05)


def test_conservation_targets_reach_the_phase2_target(tiny_with_checkpoint, tmp_path):
    obs, gt, path = tiny_with_checkpoint
    torch.manual_seed(0)
    model = MetabolismGNN(obs, training={**TARGETS, "phase1_checkpoint": str(path)}, **AFFINE_1D)
    reactions = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("log_k", "MLP_sub"))}
    fit_model(model, tmp_path)
    for key, value in reactions.items():
        assert torch.equal(model.state_dict()[key], value), key
    m = evaluate(model, obs, gt, tmp_path, slope_c_min=1.0, slope_c_max=9.0, make_plots=False)
    assert 0.8 <= m["slope_ratio_0"] <= 1.2 and 0.8 <= m["slope_ratio_1"] <= 1.2, m
    assert m["embedding_cluster_acc"] >= 0.95 and m["embedding_n_clusters"] == 2, m
    assert m["embedding_cluster_acc_kmeans"] >= 0.95 and m["embedding_n_clusters_kmeans"] == 2, m


def test_kmeans_check_picks_k_without_labels():
    rng = np.random.default_rng(0)
    types = np.repeat([0, 1, 2], 20)
    embedding = (types * 5.0 + rng.normal(0, 0.3, 60))[:, None]  # three tight 1-D groups
    m = kmeans_embedding_metrics(embedding, types)
    assert m == {"embedding_cluster_acc_kmeans": 1.0, "embedding_n_clusters_kmeans": 3.0}
    # the same points scored against two true types: at best 40 of 60 (one group is left unmatched)
    two = kmeans_embedding_metrics(embedding, np.repeat([0, 1, 1], 20))
    assert two["embedding_cluster_acc_kmeans"] == pytest.approx(40 / 60)
    one = kmeans_embedding_metrics(np.ones((10, 1)), np.repeat([0, 1], 5))
    assert one == {"embedding_cluster_acc_kmeans": 0.5, "embedding_n_clusters_kmeans": 1.0}


def test_conservation_loss_by_sgd_moves_the_node_term(tiny_with_checkpoint, tmp_path):
    obs, _, path = tiny_with_checkpoint
    training = {
        **TARGETS,
        "node_target_weight": 0.0,
        "data_augmentation_loop": 5,
        "phase1_checkpoint": str(path),
    }
    model = MetabolismGNN(obs, training=training, **SMALL_ARCH)
    fit_model(model, tmp_path)
    assert set(model.phase2_losses(torch.arange(4))) == {"conservation"}
    assert model.loss_history[-1] < model.loss_history[0]


def test_bad_node_options_name_the_key(tiny_with_checkpoint):
    obs, _, path = tiny_with_checkpoint
    with pytest.raises(ValueError, match=r"model.node_form.*allowed values"):
        MetabolismGNN(obs, training={"phase": 1}, node_form="quadratic")
    with pytest.raises(ValueError, match=r"training.node_target_weight.*affine"):
        MetabolismGNN(obs, training={**TARGETS, "phase1_checkpoint": str(path)}, **SMALL_ARCH)
    no_data = {**TARGETS, "conservation_loss_weight": 0.0, "node_target_weight": 0.0}
    with pytest.raises(ValueError, match=r"conservation_loss_weight"):
        MetabolismGNN(obs, training={**no_data, "phase1_checkpoint": str(path)}, **AFFINE_1D)


def test_task_function_runs_the_conservation_targets_from_the_configs(tmp_path):
    cfg = _compose(
        [
            *TINY_OVERRIDES,
            "training=metabolism_phase2_conservation",
            "training.phase1.data_augmentation_loop=20",
            "training.data_augmentation_loop=40",
            "model.node_form=affine",
            "model.embedding_dim=1",
            f"paths.cache_dir={tmp_path}/c",
        ]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "p2")
    metrics = run(cfg)
    saved = json.loads((tmp_path / "p2" / "metrics.json").read_text())
    assert saved["avg_slope_ratio"] == pytest.approx(metrics["avg_slope_ratio"])
    assert 0.8 <= metrics["slope_ratio_0"] <= 1.2 and 0.8 <= metrics["slope_ratio_1"] <= 1.2, metrics
    assert list((tmp_path / "c").glob("metabolism_phase1-*.ckpt"))  # phase 1 was trained and cached
    assert cfg.training.node_target_weight == 1.0 and cfg.training.residual_supervision_weight == 0.0
