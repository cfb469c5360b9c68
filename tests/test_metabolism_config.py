"""Hydra wiring of the metabolism regime: the regime picks its model/training/evaluation, phase 2 and the
study compose, the study's search space parses, and one tiny run writes every seed metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from hydra_llm.schemas.evaluation import MetabolismEvaluation
from hydra_llm.train import run
from tests.test_train_run import check_declared

REPO_DIR = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_DIR / "conf"

# a network small enough for a test: phase 1 and phase 2 in seconds
TINY_OVERRIDES = [
    "simulation=metabolism_homeostasis",
    "simulation.n_metabolites=16",
    "simulation.n_reactions=15",
    "simulation.n_frames=400",
    "simulation.homeostatic_lambda_per_type=[0.01,0.02]",
    "model.hidden_dim_sub=16",
    "model.n_layers_sub=3",
    "model.hidden_dim_node=16",
    "logger=none",
    "trainer.enable_progress_bar=false",
]
PHASE2_TINY = [
    "training.phase1.data_augmentation_loop=50",
    "training.data_augmentation_loop=4",
    "training.homeostasis_time_step=4",
]

SEED_METRICS = [
    "rate_constants_R2",
    "rate_constants_R2_trimmed_oracle",
    "rate_constants_n_outliers",
    "MLP_node_slope_0",
    "MLP_node_gt_slope_1",
    "slope_ratio_0",
    "slope_ratio_1",
    "offset_ratio_0",
    "offset_ratio_1",
    "avg_slope_ratio",
    "phase2_node_magnitude",
    "embedding_cluster_acc",
    "embedding_n_clusters",
    "embedding_silhouette",
    "final_loss",
    "training_time_min",
]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=False)


def test_regime_selects_its_model_training_and_evaluation():
    cfg = _compose(["simulation=metabolism_homeostasis"])
    assert cfg.simulation._target_.endswith("MetabolismDataModule")
    assert cfg.model._target_.endswith("MetabolismGNN")
    assert cfg.training.phase == 1
    assert cfg.evaluation._target_.endswith("metabolism.evaluate")
    assert cfg.simulation.n_reactions == 256 and cfg.simulation.n_frames == 2880
    # the command line still wins over the regime's choice
    phase2 = _compose(["simulation=metabolism_homeostasis", "training=metabolism_phase2"])
    assert phase2.training.phase == 2 and phase2.training.phase1.phase == 1
    assert phase2.training.phase1_cache_dir == phase2.paths.cache_dir


def test_training_options_are_typed_and_set_the_trainer_loop():
    cfg = _compose(["simulation=metabolism_homeostasis", "training=metabolism_phase2"])
    # the phase-2 schema's defaults, its nested phase-1 block, and the cache dir from paths
    assert cfg.training.lr_schedule == "constant" and cfg.training.phase1.lr_schedule == "warmup_decay"
    assert cfg.training.phase1_cache_dir == cfg.paths.cache_dir
    assert (cfg.trainer.accumulate_grad_batches, cfg.trainer.gradient_clip_val) == (1, 1.0)
    tuned = _compose(["simulation=metabolism_homeostasis", "training.gradient_accumulation=4"])
    assert tuned.trainer.accumulate_grad_batches == 4
    signal = _compose([])  # options without them leave Lightning's defaults
    assert (signal.trainer.accumulate_grad_batches, signal.trainer.gradient_clip_val) == (1, None)
    for bad in ("training.batch_sizes=4", "training.lr_schedule=step", "training.phase1.seeds=1"):
        with pytest.raises(Exception, match=bad.split("=")[0].split(".")[-1]):
            _compose(["simulation=metabolism_homeostasis", "training=metabolism_phase2", bad])


def test_study_composes_with_the_sweeper_and_its_space_parses():
    from hydra_llm.explore.space import _parser, _spec_from_override

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["experiment=homeostasis_phase2"], return_hydra_config=True
        )
    assert cfg.training.phase == 2 and cfg.training.homeostasis_time_step == 32
    assert cfg.model._target_.endswith("MetabolismGNN")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("LLMUCBSweeper")
    assert sweeper.objective.metric == "avg_slope_ratio"
    assert sweeper.objective.direction == "target" and sweeper.objective.target == 1.0
    assert "training.homeostasis_time_step" not in sweeper.params
    parser = _parser()
    specs = {}
    for key, value in sweeper.params.items():
        override = parser.parse_override(f"{key}={value}")
        specs[key] = _spec_from_override(key, override, False, None)
    assert specs["training.learning_rate_node"].log and specs["training.data_augmentation_loop"].kind == "int"
    assert specs["training.lr_schedule"].choices == ("constant", "warmup_decay", "cosine_restarts")
    assert (REPO_DIR / sweeper.protocol).exists()


def test_tiny_phase1_then_phase2_run_writes_every_seed_metric(tmp_path):
    cfg = _compose([*TINY_OVERRIDES, "training.data_augmentation_loop=50", f"paths.cache_dir={tmp_path}/c"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "p1")
    metrics = run(cfg)
    assert metrics["rate_constants_R2"] > 0.3
    checkpoint = tmp_path / "p1" / "metabolism_phase1.ckpt"
    assert checkpoint.exists()

    cfg2 = _compose(
        [
            *TINY_OVERRIDES,
            *PHASE2_TINY,
            "training=metabolism_phase2",
            f"training.phase1_checkpoint={checkpoint}",
            f"paths.cache_dir={tmp_path}/c",
        ]
    )
    with open_dict(cfg2):
        cfg2.paths.output_dir = str(tmp_path / "p2")
    metrics2 = run(cfg2)
    saved = json.loads((tmp_path / "p2" / "metrics.json").read_text())
    for name in SEED_METRICS:
        assert name in saved and math.isfinite(saved[name]), name
    check_declared(metrics2, MetabolismEvaluation._target_)
    # reactions were frozen: phase 2 reports the same rate constants as phase 1
    assert metrics2["rate_constants_R2"] == metrics["rate_constants_R2"]
    for plot in ("MLP_node.png", "rate_constants.png", "embedding.png"):
        assert (tmp_path / "p2" / "plots" / plot).exists()
