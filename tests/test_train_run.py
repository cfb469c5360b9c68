"""A real ``run(cfg)`` on a tiny signal regime, composed through Hydra like ``python train.py``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from hydra_llm.schemas.evaluation import (
    RUN_METRICS,
    FlyvisEvaluation,
    MetabolismEvaluation,
    SignalEvaluation,
    headline_names,
    headline_of,
    is_metric,
    metric_names,
    reading_order,
)
from hydra_llm.train import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")
TINY = [
    "simulation.n_neurons=20",
    "simulation.n_neuron_types=2",
    "simulation.n_frames=400",
    "simulation.burn_in_frames=50",
    "training.data_augmentation_loop=2",
    "training.batch_size=4",
    "evaluation.rollout_frames=20",
    "trainer.enable_progress_bar=false",
]
SIGNAL_METRICS = {
    "connectivity_R2",
    "connectivity_R2_identity",
    "connectivity_R2_edges",
    "connectivity_R2_identity_edges",
    "tau_R2",
    "tau_R2_identity",
    "cluster_accuracy",
    "test_R2",
    "test_pearson",
    "final_loss",
    "training_time_min",
}


def compose_quiet(tmp_path: Path, *overrides: str):
    """``train`` with ``overrides``, no logger, no progress bar, its job and cache in ``tmp_path``."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *overrides,
                "logger=none",
                "trainer.enable_progress_bar=false",
                f"paths.output_dir={tmp_path / 'job'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
            ],
        )


def tiny_run(tmp_path: Path, *overrides: str) -> tuple[dict[str, float], Path]:
    out = tmp_path / "job"
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*TINY, f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
        )
    return run(cfg), out


def check_declared(metrics: dict[str, float], evaluation_target: str) -> None:
    """Every metric a run returned is one its evaluation declares (the names the preflight and the
    llm_ucb sweeper check an objective against)."""
    names = metric_names(evaluation_target)
    assert names is not None and [k for k in metrics if not is_metric(k, names)] == []


def check_job_folder(metrics: dict[str, float], out: Path) -> None:
    assert set(metrics) >= SIGNAL_METRICS
    check_declared(metrics, SignalEvaluation._target_)
    assert all(isinstance(v, float) for v in metrics.values())
    assert all(math.isfinite(metrics[k]) for k in SIGNAL_METRICS)
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {
        "activity.png",
        "connectivity.png",
        "phi_per_type.png",
        "psi_per_type.png",
        "embeddings.png",
    } <= plots
    assert 0.0 <= metrics["cluster_accuracy"] <= 1.0 and metrics["final_loss"] > 0
    assert metrics["smoothing_window"] >= 1  # the frames the record was smoothed over (1: raw)


def test_run_without_logger(tmp_path, caplog):
    with caplog.at_level("INFO", logger="hydra_llm.train"):
        metrics, out = tiny_run(tmp_path, "logger=none")
    check_job_folder(metrics, out)
    assert len(list((tmp_path / "cache").glob("SignalDataModule-*.pt"))) == 1
    # the terminal's table: the headline first, in its order, then the other read-outs, the oracle
    # ones and the run's own figures, every metric once
    table = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("metrics:"))
    rows = [line.split() for line in table.splitlines() if line.startswith("    ")]
    assert sorted(name for name, _ in rows) == sorted(metrics)
    titles = [line.strip() for line in table.splitlines() if line.startswith("  ") and line[2] != " "]
    assert [t for t in titles if not t.startswith(("metric", "-", "saved"))] == [
        "headline (read from what the model learned)",
        "other read-outs",
        "oracle (borrow from the ground truth)",
        "run",
    ]
    names = [name for name, _ in rows]
    assert names[:5] == list(SignalEvaluation.HEADLINE)
    oracle = [n for n in names if n.endswith("_oracle")]
    assert len(oracle) == 3 and names[-3 - len(oracle) : -3] == oracle
    assert names[-3:] == ["final_loss", "training_time_min", "smoothing_window"]
    assert all(float(value) == pytest.approx(metrics[name], rel=1e-3, abs=1e-12) for name, value in rows)


def test_each_regime_heads_its_table_with_metrics_it_returns():
    for schema in (SignalEvaluation, FlyvisEvaluation, MetabolismEvaluation):
        assert schema.HEADLINE and set(schema.HEADLINE) <= set(schema.METRICS), schema.__name__
        assert headline_names(schema._target_) == schema.HEADLINE
        assert not any(name.endswith("_oracle") for name in schema.HEADLINE)
    assert headline_names("my_lab.evaluate") == ()  # a user's own evaluation: no headline group


def test_the_metrics_a_run_returns_name_its_regimes_headline():
    # what variance.md shows of a sweep's runs, read from their metrics alone (the sweeper does not
    # know the evaluation): a flyvis run also returns the whole signal headline, and must still be read
    # as flyvis
    for schema in (SignalEvaluation, FlyvisEvaluation, MetabolismEvaluation):
        returned = {m.replace("<i>", "0") for m in (*schema.METRICS, *RUN_METRICS)}
        assert headline_of(returned) == schema.HEADLINE, schema.__name__
    # a user's own evaluation: the headline metrics of any regime that it returns, nothing else
    assert headline_of({"my_score", "test_R2", "tau_R2"}) == ("tau_R2", "test_R2")
    assert headline_of({"my_score"}) == ()


def test_reading_order_puts_the_headline_first_and_the_oracle_metrics_after_the_other_read_outs():
    """The one order of a run's metrics wherever a sweep lists them (analysis.md and the LLM's prompt:
    test_llm_proposer): the regime's headline in its order, the other read-outs, the ``_oracle`` ones,
    the run's own figures."""
    returned = {m.replace("<i>", "0"): 0.5 for m in (*FlyvisEvaluation.METRICS, *RUN_METRICS)}
    order = reading_order(returned)
    assert order[: len(FlyvisEvaluation.HEADLINE)] == list(FlyvisEvaluation.HEADLINE)
    oracle = [i for i, m in enumerate(order) if m.endswith("_oracle")]
    others = [i for i, m in enumerate(order) if m not in FlyvisEvaluation.HEADLINE and i not in oracle]
    assert oracle and max(i for i in others if order[i] not in RUN_METRICS) < min(oracle)
    assert order[-len(RUN_METRICS) :] == [m for m in RUN_METRICS if m in returned]
    assert reading_order({"my_score": 1, "b": 2, "a_oracle": 3}) == ["b", "my_score", "a_oracle"]


def test_run_with_csv_logger_and_known_sparse_graph(tmp_path):
    metrics, out = tiny_run(tmp_path, "logger=csv", "simulation=signal_sparse")
    check_job_folder(metrics, out)
    rows = (out / "csv" / "metrics.csv").read_text().splitlines()
    assert "eval/connectivity_R2" in rows[0]
    # With a known graph, W lives on the true edges only: the identity R2 on them is the honest number.
    assert metrics["connectivity_R2_edges"] >= 0.0


def test_run_with_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    metrics, out = tiny_run(tmp_path, "logger=wandb")
    check_job_folder(metrics, out)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_bad_simulation_value_fails_before_training(tmp_path):
    with pytest.raises(Exception, match=r"simulation.connectivity_filling_factor=1.5: must be in \(0, 1\]"):
        tiny_run(tmp_path, "logger=none", "simulation.connectivity_filling_factor=1.5")
    assert not (tmp_path / "job" / "metrics.json").exists()
    assert not (tmp_path / "cache").exists()


def test_the_thousand_neuron_experiment_sizes_its_record_and_reaches_the_model(tmp_path):
    """``experiment=signal_n1000``: 1,000 neurons on 100,000 frames, trained 30,000 steps with its own
    W step and penalty; the same experiment at a tiny size runs end to end with those settings."""
    import torch

    from hydra_llm.simulation.frames import iterations_per_epoch

    cfg = compose_quiet(tmp_path, "experiment=signal_n1000")
    assert (cfg.simulation.n_neurons, cfg.simulation.n_frames) == (1000, 100_000)
    assert cfg.simulation.n_neuron_types == 4 and cfg.simulation.connectivity_type == "chaotic"
    steps = iterations_per_epoch(100_000, cfg.training.data_augmentation_loop, cfg.training.batch_size)
    assert steps * cfg.training.n_epochs == 30_000

    metrics, out = tiny_run(tmp_path, "logger=none", "experiment=signal_n1000")
    check_job_folder(metrics, out)
    (checkpoint,) = (out / "checkpoints").glob("*.ckpt")
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert (hparams["learning_rate_W_start"], hparams["coeff_W_L1"]) == (1.0e-3, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "gates"),
    [
        # python train.py: 100 neurons, 4 types, 10k frames
        ([], {"connectivity_R2": 0.95, "tau_R2": 0.9, "cluster_accuracy": 0.95}),
        # the default network with measurement noise 0.1, window auto, 20k frames
        (
            ["simulation=signal_noisy"],
            {"connectivity_R2": 0.9, "connectivity_R2_identity": 0.9, "tau_R2": 0.9, "cluster_accuracy": 0.9},
        ),
    ],
    ids=["default", "signal_noisy"],
)
def test_full_run_reaches_the_issue_gates(tmp_path, overrides, gates):
    """A full-size run with its issue's gates, read out without ground truth."""
    metrics = run(compose_quiet(tmp_path, *overrides))
    for name, gate in gates.items():
        assert metrics[name] >= gate, name


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "training.learning_rate_W_start=-1",
            "training.learning_rate_W_start=-1.0: must be a finite float > 0",  # typed: -1 is the float -1.0
        ),
        ("training.batch_size=0", "training.batch_size=0: must be an integer >= 1"),
        ("simulation.connectivity_filling_factor=1.5", "simulation.connectivity_filling_factor=1.5"),
    ],
)
def test_bad_settings_fail_before_anything_is_simulated(tmp_path, override, message):
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("+", r"\+")):
        tiny_run(tmp_path, "logger=none", override)
    assert not any((tmp_path / "cache").glob("*"))  # nothing simulated, nothing cached


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], lambda cores: max(1, cores // 2)),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"], lambda cores: 1),
        (["hydra/launcher=slurm", "resources.cpus_per_task=3"], lambda cores: 3),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "num_threads=5"], lambda cores: 5),
        ([], lambda cores: None),
    ],
)
def test_children_take_their_share_of_the_cores(launcher, expected):
    import os

    from hydra.core.hydra_config import HydraConfig

    from hydra_llm.train import threads_for_child

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=launcher, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert threads_for_child(cfg.get("num_threads")) == expected(len(os.sched_getaffinity(0)))


def test_optimized_metric_returns_one_number_or_names_the_allowed_ones():
    from hydra_llm.train import optimized

    metrics = {"connectivity_R2": 0.91, "tau_R2": 0.5}
    assert optimized(metrics, None) is metrics
    assert optimized(metrics, "tau_R2") == 0.5
    with pytest.raises(
        ValueError, match="optimized_metric=R2: not a metric of this run; allowed: connectivity_R2, tau_R2"
    ):
        optimized(metrics, "R2")
