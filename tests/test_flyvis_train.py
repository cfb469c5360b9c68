"""`python train.py simulation=flyvis_synthetic` end to end on the tiny connectome (composed in-process)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from hydra_llm.schemas.evaluation import FlyvisEvaluation
from hydra_llm.simulation.frames import iterations_per_epoch
from hydra_llm.train import run
from tests.test_train_run import check_declared

ROOT = Path(__file__).parents[1]
TINY = Path(__file__).parent / "data" / "flyvis_tiny_connectome.json"


# the tiny connectome, 300 frames and 30 steps: a run in seconds
FLYVIS_TINY = [
    "simulation=flyvis_synthetic",
    "simulation.connectome.source=file",
    f"simulation.connectome.path={TINY}",
    "simulation.connectome.extent=1",
    "simulation.parameters.mode=random_trained_like",
    "simulation.n_frames=300",
    "simulation.n_ood_frames=50",
    "training.max_steps_per_epoch=30",
    "evaluation.rollout_frames=40",
    "evaluation.cluster_n_components=5",
    "evaluation.callbacks.0.every_n_steps=10",
]


def compose_flyvis(tmp_path: Path, *extra: str):
    overrides = [
        *FLYVIS_TINY,
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"paths.output_dir={tmp_path / 'job'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_simulation_config_selects_the_flyvis_model_training_and_evaluation(tmp_path):
    cfg = compose_flyvis(tmp_path)
    assert cfg.model._target_.endswith("FlyvisGNN")
    assert cfg.evaluation._target_ == "hydra_llm.evaluation.flyvis.evaluate"
    assert "coeff_g_phi_diff" in cfg.training
    assert cfg.simulation.connectome.extent == 1


def test_train_run_writes_metrics_plots_and_r2_log(tmp_path):
    metrics = run(compose_flyvis(tmp_path))
    job = tmp_path / "job"
    stored = json.loads((job / "metrics.json").read_text())
    for key in (
        "connectivity_R2",
        "tau_R2",
        "V_rest_R2",
        "cluster_accuracy",
        "test_R2",
        "test_pearson",
        "test_pearson_ood",
        "final_loss",
        "training_time_min",
    ):
        assert key in metrics and key in stored
    check_declared(metrics, FlyvisEvaluation._target_)
    assert (job / "plots" / "W_scatter.png").is_file()
    log = job / "connectivity_r2.log"
    if log.is_file():  # written when train.run passes evaluation.callbacks to the Trainer
        assert log.read_text().splitlines()[0] == "epoch,iteration,connectivity_r2,phase"
    assert len(list((tmp_path / "cache").glob("FlyvisDataModule-*.pt"))) == 1


def test_davis_without_folder_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv("DATAVIS_ROOT", raising=False)
    cfg = compose_flyvis(tmp_path, "simulation=flyvis_davis")
    with pytest.raises(Exception, match="JPEGImages/480p.*flyvis_synthetic") as info:
        run(cfg)
    assert isinstance(info.value, FileNotFoundError) or isinstance(info.value.__cause__, FileNotFoundError)


def test_the_recovery_experiment_bundles_the_measured_settings_and_runs_end_to_end(tmp_path):
    """``experiment=flyvis_recovery``: the settings of BENCHMARKS.md's best flyvis runs (extent 8, natural
    images under a per-clip illuminant, noise 0.05, affine f with psi(0) = 0, 24,000 steps of batch 4 in
    two stages); the same experiment on the tiny connectome trains with that model and training, W and
    psi at 0.1 of their rates after the first 40% of the steps."""
    import torch

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=flyvis_recovery", "logger=none"])
    sim = cfg.simulation
    assert (sim.connectome.extent, sim.n_frames, sim.noise_model_level) == (8, 64_000, 0.05)
    assert sim.parameters.mode == "trained" and sim.stimulus.source == "natural"
    assert list(sim.stimulus.luminance) == [0.2, 0.8]
    assert cfg.model._target_.endswith("FlyvisGNN") and cfg.model.update_form == "affine"
    assert (cfg.training.coeff_g_phi_zero, cfg.training.max_steps_per_epoch) == (1.0, 24_000)
    assert cfg.training.batch_size == 4 and cfg.trainer.accelerator == "cpu"
    training = cfg.training
    assert training.alternate_training and training.n_alternations == 1
    assert (training.alternate_vrest_ratio, training.alternate_lr_ratio) == (0.6, 0.1)
    assert training.alternate_lr_ratio_W_phase == 1.0  # f_theta and a keep their rates in stage one
    n_train = sim.n_frames - round(sim.test_fraction * sim.n_frames)  # the cap binds at batch 32 too
    assert iterations_per_epoch(n_train, training.data_augmentation_loop, 32) >= 48_000

    tiny = [o for o in FLYVIS_TINY if not o.startswith("simulation=")]
    log_every_6 = "evaluation.callbacks.0.every_n_steps=6"
    metrics = run(compose_flyvis(tmp_path, "experiment=flyvis_recovery", *tiny, log_every_6))
    assert all(math.isfinite(metrics[k]) for k in ("connectivity_R2", "tau_R2", "V_rest_R2"))
    (checkpoint,) = (tmp_path / "job" / "checkpoints").glob("*.ckpt")
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["update_form"] == "affine" and hparams["training"]["coeff_g_phi_zero"] == 1.0
    assert hparams["training"]["max_steps_per_epoch"] == 30  # the tiny cap wins over the experiment's
    log = (tmp_path / "job" / "connectivity_r2.log").read_text().split()[1:]
    assert [row.split(",")[-1] for row in log] == ["W", "W", "V_rest", "V_rest", "V_rest"]
