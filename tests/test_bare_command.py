"""The command users type first, `python train.py -m hydra/sweeper=llm_ucb simulation=<regime>`,
explores that regime's landscape: a non-empty search space and a protocol in the first prompt; a
regime whose data is missing stops before any child with one line; Hydra's basic sweeper still works."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from hydra_llm.preflight import PreflightError, check_accelerator, check_added_keys, check_trainer
from tests.fake_openai import FakeError, FakeOpenAIServer, prompt_section
from tests.test_sweeper_train_e2e import TINY_SIGNAL

ROOT = Path(__file__).resolve().parents[1]
REGIMES = {  # regime -> (a search-space key it must bring, a protocol heading, the objective metric)
    "signal_chaotic": ("training.learning_rate_W_start", "# Signal landscape", "connectivity_R2"),
    "signal_low_rank": ("training.coeff_W_L1", "# Signal landscape", "connectivity_R2"),
    "signal_dale": ("training.batch_size", "# Signal landscape", "connectivity_R2"),
    "signal_sparse": ("training.coeff_edge_diff", "# Signal landscape", "connectivity_R2"),
    "flyvis_synthetic": ("training.coeff_g_phi_diff", "# FlyVis landscape", "connectivity_R2"),
    "metabolism_homeostasis": ("training.learning_rate_k", "# Metabolic rate constants", "rate_constants_R2"),
}
# The flyvis default's first batch records 4 x 7.1 GB at once, refused where the disk has less free (the
# refusal is tested below); the prompt does not depend on the record's length.
FITS_ON_ANY_DISK = {"flyvis_synthetic": ("simulation.n_frames=4000",)}


def env(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HYDRA_LLM_CACHE=str(tmp_path / "cache"),
        WANDB_MODE="disabled",
        HYDRA_LLM_FAKE_KEY="sk-fake-bare-0123456789",
    )


def sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`train.py -m hydra/sweeper=llm_ucb` with ``overrides`` into ``tmp_path/sweep`` (must stop early)."""
    cmd = [sys.executable, "train.py", "-m", "hydra/sweeper=llm_ucb", *overrides]
    cmd.append(f"hydra.sweep.dir={tmp_path / 'sweep'}")
    return subprocess.run(cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=120)


def train(tmp_path: Path, *overrides: str, run_dir: Path | None = None) -> subprocess.CompletedProcess:
    """`train.py` with ``overrides`` and no logger, into ``run_dir`` (default ``tmp_path``)."""
    cmd = [sys.executable, "train.py", *overrides, "logger=none", f"hydra.run.dir={run_dir or tmp_path}"]
    return subprocess.run(cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=120)


def first_prompt(
    tmp_path: Path, *overrides: str, cwd: Path = ROOT
) -> tuple[str, dict, subprocess.Popen, str]:
    """Start the bare command with ``overrides`` from ``cwd``, stop it (SIGTERM) once its first prompt
    reached the server: (the prompt, the saved state, the process, its stderr)."""
    sweep_dir = tmp_path / "sweep"
    # the server holds the call, so the sweeper is still waiting for its first reply when it is stopped
    with FakeOpenAIServer(default=FakeError(503, "busy", delay=60)) as server:
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "hydra/sweeper=llm_ucb",
            *overrides,
            f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweeper.proposer.base_url={server.base_url}",
            "hydra.sweeper.proposer.api_key_env=HYDRA_LLM_FAKE_KEY",
            "hydra.sweeper.proposer.max_retries=0",
        ]
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 90
            while not server.requests and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if not server.requests:
                proc.kill()
                pytest.fail(f"no prompt reached the server (rc={proc.wait()}): {proc.stderr.read()[-3000:]}")
            proc.send_signal(signal.SIGTERM)  # the first prompt is what this test is about
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert not list(sweep_dir.glob("[0-9]*")), "no child may have started"
    state = json.loads((sweep_dir / "exploration" / "state.json").read_text())
    return server.requests[0].text(), state, proc, stderr


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_bare_command_explores_the_regime(tmp_path, regime):
    key, heading, metric = REGIMES[regime]
    prompt, state, proc, stderr = first_prompt(
        tmp_path, f"simulation={regime}", *FITS_ON_ANY_DISK.get(regime, ())
    )
    assert f"- {key}:" in prompt_section(prompt, "Search space"), prompt[-3000:]
    assert heading in prompt and "<!-- RULES:BEGIN -->" in prompt
    assert metric in prompt
    assert any(p["key"] == key for p in state["search_space"]["params"])
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]


def test_the_bare_command_finds_its_protocol_from_any_folder(tmp_path):
    """The regime's protocol path is relative: looked for under the folder the sweep starts from, then
    under the app's own folder, so `python /path/to/train.py -m ...` works from anywhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    prompt, _, proc, stderr = first_prompt(tmp_path, cwd=elsewhere)
    assert "# Signal landscape" in prompt and "<!-- RULES:BEGIN -->" in prompt
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]


def test_a_study_explores_the_regime_space_and_a_command_line_sweep_joins_it(tmp_path):
    """experiment=signal_landscape interpolates the regime's space into hydra.sweeper.params."""
    prompt, state, proc, stderr = first_prompt(
        tmp_path, "experiment=signal_landscape", "training.coeff_edge_norm=choice(0.5,1.0,2.0)"
    )
    keys = {p["key"] for p in state["search_space"]["params"]}
    assert {"training.learning_rate_W_start", "training.coeff_edge_diff", "training.coeff_edge_norm"} <= keys
    assert {p["key"] for p in state["search_space"]["block_params"]} >= {"simulation.Dale_law"}
    assert "# Signal landscape" in prompt
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]


def test_missing_data_stops_the_sweep_before_any_child_with_one_line(tmp_path):
    sweep_dir = tmp_path / "sweep"
    environment = {k: v for k, v in env(tmp_path).items() if k != "DATAVIS_ROOT"}
    cmd = [sys.executable, "train.py", "-m", "hydra/sweeper=llm_ucb", "simulation=flyvis_davis"]
    proc = subprocess.run(
        [*cmd, f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[llm_ucb] preflight: no DAVIS folder configured")
    assert "simulation.stimulus.davis_root" in lines[0] and "simulation=flyvis_natural" in lines[0]
    assert "python -m hydra_llm.simulation.flyvis.davis" in lines[0]  # the download helper
    assert not sweep_dir.exists()
    single = subprocess.run(
        [sys.executable, "train.py", "simulation=flyvis_davis", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert single.returncode == 1 and single.stderr.strip().startswith("error: no DAVIS folder configured")
    assert "Traceback" not in single.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "training.learning_rate_W_start=-1",
            "training.learning_rate_W_start=-1.0: must be a finite float > 0",
        ),
        ("simulation.n_neuron_types=0", "simulation.n_neuron_types"),
        ("evaluation.rollout_frames=1", "evaluation.rollout_frames=1: must be an integer >= 2"),
        (
            "hydra.sweeper.objective.metric=tau_r2",
            "hydra.sweeper.objective.metric=tau_r2: not a metric of this run (did you mean tau_R2?); "
            "allowed: connectivity_R2,",
        ),
        (
            "+trainer.max_step=5",
            "trainer.max_step: not an argument of Trainer; did you mean trainer.max_steps?",
        ),
        (  # the regime's objective, when the sweeper sets none: V_rest_R2 is flyvis's, not signal's
            "exploration.objective.metric=V_rest_R2",
            "exploration.objective.metric=V_rest_R2: not a metric of this run",
        ),
        (  # the proposer constructor's own check, as one line
            "hydra.sweeper.proposer.base_url=notaurl",
            "[llm_ucb] hydra.sweeper.proposer: llm.base_url='notaurl' must start with http:// or https://",
        ),
        (  # checked even when no key or base_url selects the LLM (they take effect once one is set)
            "hydra.sweeper.proposer.deadline=-1",
            "[llm_ucb] hydra.sweeper.proposer: llm.deadline=-1.0 must be a finite number > 0 seconds",
        ),
        (  # what the model is told about its memory must hold
            "hydra/sweeper/proposer=llm hydra.sweeper.proposer.base_url=http://127.0.0.1:9/v1 "
            "hydra.sweeper.memory_max_lines=50",
            "[llm_ucb] hydra.sweeper.proposer.memory_max_lines=400 is above hydra.sweeper.memory_max_lines=",
        ),
        (  # the sweep's own settings pass, and still nothing is written before the preflight
            "hydra/sweeper/proposer=llm hydra.sweeper.proposer.base_url=http://127.0.0.1:9/v1 "
            "hydra.sweeper.code_edits.enabled=true evaluation.rollout_frames=1",
            "evaluation.rollout_frames=1: must be an integer >= 2",
        ),
        (  # joblib refuses it only when the first batch starts
            "hydra/launcher=joblib hydra.launcher.n_jobs=0",
            "[llm_ucb] hydra.launcher.n_jobs=0: must be a nonzero integer (-1: one job per core)",
        ),
        (  # every value a search space allows at its edges is checked, as a child composes it
            '+hydra.sweeper.params={training.n_epochs:"choice(1,0)"}',
            "[llm_ucb] search space: training.n_epochs allows 0, which the run refuses: "
            "training.n_epochs=0: must be an integer >= 1; take it out of the key's choice or interval",
        ),
        (
            '+hydra.sweeper.params={training.learning_rate_W_start:"interval(0,0.01)"}',
            "[llm_ucb] search space: training.learning_rate_W_start allows 0.0, which the run refuses: "
            "training.learning_rate_W_start=0.0: must be a finite float > 0",
        ),
        pytest.param(
            "trainer=gpu",
            "trainer.accelerator=gpu: no GPU on this machine; use trainer=cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_bad_settings_stop_the_sweep_before_any_child(tmp_path, override, message):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(tmp_path, *override.split())
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not sweep_dir.exists()


@pytest.mark.parametrize(
    ("study", "scale"),
    [("flyvis_landscape", ["simulation.connectome.extent=1"]), ("homeostasis_phase2", [])],
)
def test_every_value_a_study_explores_passes_the_preflight(tmp_path, study, scale):
    """The studies' spaces pass the check of their edge values. flyvis_landscape changes the regime
    at block boundaries (a synthetic stimulus under flyvis_natural's out-of-distribution families
    would fail every child); homeostasis_phase2 allows residual_supervision_weight=0, which the root
    config refuses (no loss left) only while rollout_loss_weight, also explored, is 0: such a clash is
    left to the children. The sweep then stops at its (unknown) objective metric: the check after it.
    flyvis at extent 1, so that the room its records need at extent 8 (4 x 7.1 GB in the first batch,
    14.1 GB at 128,000 frames) is not what the test measures."""
    proc = sweep(tmp_path, f"experiment={study}", *scale, "hydra.sweeper.objective.metric=nope")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("[llm_ucb] hydra.sweeper.objective.metric=nope: not a metric of this run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_trainer_without_a_gpu_stops_a_run_before_it_simulates(tmp_path):
    proc = train(tmp_path, "trainer=gpu", run_dir=tmp_path / "run")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: trainer.accelerator=gpu: no GPU on this machine")
    assert not (tmp_path / "cache").exists()  # nothing simulated, nothing cached


def test_a_run_shows_its_own_lines_not_lightnings_tips(tmp_path):
    """A plain run's terminal: the data, the device, the fit and the metrics table, without Lightning's
    advertisements, its srun hint (SLURM is installed where the SLURM tests run) or its own
    deprecations."""
    proc = train(tmp_path, *TINY_SIGNAL, run_dir=tmp_path / "run")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    assert "GPU available: " in out and "metrics:" in out and "connectivity_R2" in out
    for chatter in ("💡 Tip", "srun", "LeafSpec"):
        assert chatter not in out, out[-3000:]


def test_a_misspelt_choice_is_one_line_before_hydra_composes(tmp_path):
    """A choice of a config group that is not one of its options (in a run or among a sweep's values)
    stops with one line naming the closest option and all of them; a group's options from a search
    path of the user's own are Hydra's to find."""
    simulations = (
        "flyvis_davis, flyvis_natural, flyvis_synthetic, metabolism_homeostasis, signal_chaotic, "
        "signal_dale, signal_low_rank, signal_noisy, signal_sparse"
    )
    run = train(tmp_path, "simulation=flyvis_natrual", run_dir=tmp_path / "run")
    hint = "(did you mean flyvis_natural?)"
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        f"error: simulation=flyvis_natrual: no such option {hint}; allowed: {simulations}"
    ], run.stderr[-2000:]
    swept = sweep(tmp_path, "model=signal_gnn,flyvis")
    models = "flyvis_gnn, metabolism_gnn, signal_gnn"
    assert swept.returncode == 1 and swept.stderr.strip().splitlines() == [
        f"error: model=flyvis: no such option (did you mean flyvis_gnn?); allowed: {models}"
    ], swept.stderr[-2000:]
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()

    own = tmp_path / "own" / "simulation"
    own.mkdir(parents=True)
    shutil.copy(ROOT / "conf" / "simulation" / "signal_dale.yaml", own / "my_regime.yaml")
    cmd = [
        sys.executable,
        "train.py",
        "--cfg",
        "job",
        f"hydra.searchpath=[file://{own.parent}]",
        "simulation=my_regime",
    ]
    shown = subprocess.run(cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "Dale_law: true" in shown.stdout, shown.stderr[-2000:]


@pytest.mark.parametrize(
    ("override", "line"),
    [
        (
            "training.learning_rate_W_strat=1e-3",
            "Could not override 'training.learning_rate_W_strat': Key 'learning_rate_W_strat' not in "
            "'SignalTraining'; did you mean training.learning_rate_W_start or training.learning_rate_start?",
        ),
        (
            "simulation.n_neurons=abc",
            "Error merging override simulation.n_neurons=abc: Value 'abc' of type 'str' could not be "
            "converted to Integer",
        ),
        (
            "trainingg.lr=3",
            "Could not override 'trainingg.lr': Key 'trainingg' is not in struct; did you mean training or "
            "trainer?",
        ),
        ("simulation.n_neurons=[1", "simulation.n_neurons=[1: no viable alternative at input '[1' See "),
        (
            "simulation=flyvis_natural simulation.extent=1",
            "Could not override 'simulation.extent': Key 'extent' not in 'FlyvisSimulation'; did you mean "
            "simulation.connectome.extent?",
        ),
        (
            "simulation=flyvis_natural simulation.connectome.n_frames=100",
            "Could not override 'simulation.connectome.n_frames': Key 'n_frames' not in 'ConnectomeOptions'; "
            "did you mean simulation.n_frames?",
        ),
        (
            "trainer.max_steps=40",
            "Could not override 'trainer.max_steps': Key 'max_steps' is not in struct; "
            "lightning.pytorch.Trainer takes it: add it with +trainer.max_steps=<value>",
        ),
        (
            "-m experiment=quick_sweep n_iterations=3",
            "Could not override 'n_iterations': Key 'n_iterations' is not in struct; did you mean "
            "hydra.sweeper.n_iterations?",
        ),
        (
            "-m hydra.sweeper.n_iterations=3",
            "Could not override 'hydra.sweeper.n_iterations': Key 'n_iterations' not in 'BasicSweeperConf'; "
            "hydra/sweeper=llm_ucb has it: add hydra/sweeper=llm_ucb to the command line",
        ),
        (
            "-m hydra.launcher.partition=gpu",
            "Could not override 'hydra.launcher.partition': Key 'partition' not in 'BasicLauncherConf'; "
            "hydra/launcher=slurm or hydra/launcher=submitit_slurm have it: add hydra/launcher=slurm to the "
            "command line",
        ),
        (
            "-m hydra.sweeper.n_iteration=3",
            "Could not override 'hydra.sweeper.n_iteration': Key 'n_iteration' not in 'BasicSweeperConf'; "
            "did you mean hydra.sweeper.n_iterations? hydra/sweeper=llm_ucb has it: add "
            "hydra/sweeper=llm_ucb to the command line",
        ),
        (
            "-m hydra/sweeper=llm_ucb hydra.sweeper.objective.metrc=x",
            "Could not override 'hydra.sweeper.objective.metrc': Key 'metrc' not in 'ObjectiveConf'; did you "
            "mean hydra.sweeper.objective.metric?",
        ),
        (
            "simulation=flyvis_natural extent=1",
            "Could not override 'extent': Key 'extent' is not in struct; did you mean "
            "simulation.connectome.extent?",
        ),
        (  # Hydra: "Error merging override ...: Unexpected type annotation: Set[str]"
            "-m hydra/sweeper=llm_ucb +hydra.sweeper.params={training.lr:tag(log,interval(1e-4,1e-2))}",
            "+hydra.sweeper.params={training.lr:tag(log,interval(1e-4,1e-2))}: "
            "tag(log,interval(0.0001,0.01)) is a sweep inside a value, which Hydra cannot merge; quote it "
            '(training.lr:"tag(log,interval(0.0001,0.01))"), or sweep the key itself '
            "(training.lr=tag(log,interval(0.0001,0.01)))",
        ),
    ],
)
def test_a_key_hydra_cannot_compose_is_one_line(tmp_path, override, line):
    """Hydra's five lines (the first advising ``+``, which the preflight would refuse) become one, with
    the closest keys of the key's group for a misspelt one (the same name at another depth of the
    group first, then the closest names), for an argument of the node's ``_target_`` the ``+`` that
    adds it, for a key (or a misspelt key) of another sweeper or launcher the choice that has it, and
    for a sweep inside a value the quotes it needs."""
    proc = train(tmp_path, *override.split(), run_dir=tmp_path / "run")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: {line}"), lines
    assert not (tmp_path / "run").exists()


def test_help_names_the_commands_and_shows_the_config_the_arguments_compose(tmp_path):
    """``--help`` opens with what the project does and its three commands, lists the config groups, and
    shows the config the other arguments compose; asking Hydra for two commands at once (``-m`` with
    ``--cfg``) is one line, where Hydra raised a ValueError with its traceback."""

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", *args]
        return subprocess.run(cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=120)

    shown = run("simulation=flyvis_natural", "--help")
    assert shown.returncode == 0, shown.stderr[-2000:]
    head = shown.stdout.split("== Config groups", 1)[0]
    assert head.startswith("hydra-llm: simulate a network")
    assert "a sweep:   python train.py -m hydra/sweeper=llm_ucb simulation=flyvis_natural" in head
    groups = shown.stdout.split("== Config groups (group=option) ==\n", 1)[1].split("\n\n", 1)[0]
    assert "\nsimulation: flyvis_davis, flyvis_natural, flyvis_synthetic, " in groups
    # the groups a user picks from, not the typed schemas under the regimes
    assert [line.split(":")[0] for line in groups.splitlines()] == [
        "evaluation",
        "experiment",
        "exploration",
        "logger",
        "model",
        "simulation",
        "trainer",
        "training",
    ]
    assert "\n    source: natural\n" in shown.stdout.split("== Config (override any key: key=value) ==")[1]
    assert shown.stdout.rstrip().endswith("Hydra's own flags: --hydra-help")
    both = run("-m", "--cfg", "job")
    lines = both.stderr.strip().splitlines()
    assert both.returncode == 1 and len(lines) == 1, both.stderr[-2000:]
    assert lines[0] == (
        "error: --multirun and --cfg: Hydra runs one of --run, --multirun, --cfg, --info, "
        "--shell-completion at a time"
    )


def test_an_error_of_the_run_itself_keeps_hydras_report(tmp_path):
    """Past composition the task's own exception is Hydra's to report (its traceback, trimmed); a
    HYDRA_FULL_ERROR the user set is left as it is."""
    app = tmp_path / "app.py"
    app.write_text(
        "import sys\nfrom pathlib import Path\nimport hydra\n"
        "from hydra_llm.cli import run_app, task_started\n\n"
        "@hydra.main(config_path=None, version_base='1.3')\n"
        "def main(cfg):\n    task_started()\n    raise RuntimeError('boom')\n\n"
        f"run_app(main, Path({str(ROOT / 'conf')!r}), sys.argv[1:])\n",
        encoding="utf-8",
    )
    cmd = [sys.executable, str(app), f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "RuntimeError: boom" in proc.stderr, proc.stderr[-2000:]
    assert "Set the environment variable HYDRA_FULL_ERROR=1" in proc.stderr
    assert "site-packages/hydra/" not in proc.stderr  # trimmed to the task's own frames
    full = subprocess.run(
        cmd,
        cwd=tmp_path,
        env={**env(tmp_path), "HYDRA_FULL_ERROR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        full.returncode == 1 and "site-packages/hydra/" in full.stderr and "RuntimeError: boom" in full.stderr
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evaluation.rollout_frames=1", "evaluation.rollout_frames=1: must be an integer >= 2"),
        ("model.hidden_dim=0", "model.hidden_dim=0: must be an integer >= 1"),
        ("simulation.noise_model_level=nan", "simulation.noise_model_level=nan: must be a finite number"),
        (
            "trainer.devices=0",
            "trainer: `Trainer(devices=0)` value is not a valid input using cpu accelerator.",
        ),
        (
            "paths.cache_dir=/dev/null/cache",
            "paths.cache_dir=/dev/null/cache: cannot be created (Not a directory); set paths.cache_dir (or "
            "$HYDRA_LLM_CACHE) to a writable folder",
        ),
        (
            "optimized_metric=connectivty_R2",
            "optimized_metric=connectivty_R2: not a metric of this run (did you mean connectivity_R2?)",
        ),
        (  # torch's threads are set after the preflight, which reads the value first
            "num_threads=abc",
            "num_threads='abc': must be an integer >= 1, or null (from the launcher: cores // n_jobs",
        ),
        (
            "evaluation.callbacks=[{_target_: hydra_llm.no_such_module.callback}]",
            "evaluation.callbacks.0._target_='hydra_llm.no_such_module.callback': cannot be imported (",
        ),
    ],
)
def test_a_bad_model_or_evaluation_setting_stops_a_run_before_it_simulates(tmp_path, override, message):
    """The model is built after the simulation and evaluation runs after training; their settings are
    checked before anything is simulated."""
    proc = train(tmp_path, override)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert not (tmp_path / "cache").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: must be an integer >= 1"),
        (["trainer.gradient_clip_val=nan"], "trainer.gradient_clip_val=nan: must be a number (0: no"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0: trains nothing; give at least 1 (it follows"),
        (["+trainer.max_steps=0"], "trainer.max_steps=0: trains nothing; give at least 1"),
        (["+trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0.0: trains nothing"),
        (["trainer.max_epochs=-1"], "trainer.max_epochs=-1: never ends without trainer.max_steps or"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs='abc': must be a whole number (or null)"),
        (["+trainer.max_steps=2.5"], "trainer.max_steps=2.5: must be a whole number (or null)"),
        (["logger=wandb", "logger.mode=foo"], "logger.mode='foo': must be 'online', 'offline'"),
    ],
)
def test_values_that_fail_only_after_the_simulation_are_checked_in_the_preflight(overrides, message):
    """Lightning's Trainer takes the first two and its loop fails on them at the first step; it also
    takes a loop that trains nothing (the run would evaluate an untrained model), never ends or has a
    length that is not a whole number (an assertion in the loop); the W&B logger refuses its mode when
    it starts its run, after the simulation."""
    from hydra_llm.preflight import check

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides)
    with pytest.raises(PreflightError, match="^" + re.escape(message)):
        check(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["simulation=flyvis_synthetic", "evaluation.cluster_starts=0"],
            "evaluation.cluster_starts=0: must be",
        ),
        (
            ["simulation=metabolism_homeostasis", "evaluation.slope_c_max=-1"],
            "evaluation.slope_c_max=-1.0: must be > slope_c_min (0.0)",
        ),
    ],
)
def test_each_regime_checks_its_evaluation_settings_in_the_preflight(overrides, message):
    """Ranges in the preflight; a wrong type already when Hydra composes the typed config."""
    from hydra.errors import ConfigCompositionException

    from hydra_llm.preflight import check

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides)
        with pytest.raises(ConfigCompositionException, match=r"evaluation\.cluster_seed=1\.5"):
            compose("train", [*overrides, "evaluation.cluster_seed=1.5"])
    with pytest.raises(PreflightError, match="^" + re.escape(message)):
        check(cfg)


def test_a_record_larger_than_the_free_space_stops_a_run_before_it_simulates(tmp_path):
    """Extent 8 over 10^8 frames records 11 TB into the cache; on a full disk the memory-mapped record
    would end the process without a Python error."""
    proc = train(tmp_path, "simulation=flyvis_natural", "simulation.n_frames=100000000")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert re.match(
        r"error: paths\.cache_dir=.*: the simulation records 10992\.9 GB there and [\d.]+ GB are free",
        lines[0],
    )
    assert not any((tmp_path / "cache").iterdir())  # nothing simulated


FILL_DISK = """
import sys
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose("train", ["simulation=flyvis_natural", "simulation.connectome.extent=1",
                            "simulation.n_frames=4000"])
datamodule = instantiate(cfg.simulation, cache_dir=sys.argv[2])
print(datamodule.record_bytes(), flush=True)
datamodule.prepare_data()
"""


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's notation, e.g. ``8m``) at ``folder``; skips without root."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_disk_that_fills_while_the_record_is_made_gives_an_error_not_a_sigbus(tmp_path):
    """The preflight checks the free space of one record; batch mates that simulate at once (or any
    other writer) can still fill the disk after it. On an 8 MB tmpfs, a 16 MB record (two 8 MB files
    written through memory maps) ended the process with SIGBUS and left its files; its disk is now
    reserved when each file is made, so the full disk is an OSError naming the folder and the record
    is removed."""
    with small_disk(tmp_path / "disk", "8m") as disk:
        proc = subprocess.run(
            [sys.executable, "-c", FILL_DISK, str(ROOT / "conf"), str(disk / "cache")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert int(proc.stdout.split()[0]) > 8 * 2**20  # the record does not fit
        assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])  # -7 was SIGBUS
        last = proc.stderr.strip().splitlines()[-1]
        error = r"OSError: \[Errno 28\] paths\.cache_dir=.*/disk/cache: no room for the record \(16 MB; No"
        assert re.match(error, last), last
        assert not [p for p in (disk / "cache").iterdir() if p.suffix != ".lock"]  # no half record left
        assert shutil.disk_usage(disk).used < 2**20


def test_a_torch_file_on_a_full_disk_is_an_error_that_names_the_folder(tmp_path):
    """torch.save on a full disk says only "unexpected pos 576 vs 534" (a RuntimeError); the data
    caches and checkpoints written through atomic_torch_save raise ENOSPC naming the folder instead,
    which a sweep reads as a full disk, and leave no partial file. A run stops with one line."""
    from hydra_llm.files import atomic_torch_save

    with small_disk(tmp_path / "disk", "100k") as disk:
        try:
            atomic_torch_save({"x": torch.zeros(100_000)}, disk / "big.pt")
        except OSError as err:
            code, message = err.errno, str(err)
        else:
            raise AssertionError("a 400 KB file was written on a 100 KB disk")
        gc.collect()  # torch's writer, held by the traceback, keeps the file open until collected
        assert code == errno.ENOSPC
        assert re.match(
            r"\[Errno 28\] .*/disk: no space left on device while writing big\.pt \(RuntimeError: ", message
        ), message
        assert list(disk.iterdir()) == []
        # A run whose data cache fills: one line, as for a bad setting.
        proc = train(tmp_path, f"paths.cache_dir={disk / 'cache'}", "+trainer.max_steps=5")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
        assert re.match(
            r"error: \[Errno 28\] .*/disk/cache: no space left on device while writing "
            r"SignalDataModule-\w+\.pt ",
            lines[0],
        ), lines[0]


def test_a_sweep_whose_first_batch_records_do_not_fit_together_stops_before_any_child(tmp_path):
    """With one simulation seed per slot each of the 4 children of a batch records its own 16 MB at
    once; on a 40 MB tmpfs one fits (the run's own preflight passes) and four do not. With one record
    for all slots (simulation_seed=fixed) the sweep passes the check and stops at the next one."""
    with small_disk(tmp_path / "disk", "40m") as disk:
        overrides = [
            "simulation=flyvis_natural",
            "simulation.connectome.extent=1",
            "simulation.n_frames=4000",
            f"paths.cache_dir={disk / 'cache'}",
            '+hydra.sweeper.params={training.learning_rate_W_start:"tag(log,interval(1e-4,1e-2))"}',
            "hydra.sweeper.objective.metric=nope",
        ]
        proc = sweep(tmp_path, *overrides)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
        assert re.match(
            r"\[llm_ucb\] preflight: the first batch's 4 children record 4 simulations at once in "
            r"paths\.cache_dir=.*/disk/cache \(64 MB, \d+ MB free; hydra\.sweeper\.simulation_seed=slot: "
            r"one record per slot\); free space, .* share one record with "
            r"hydra\.sweeper\.simulation_seed=fixed$",
            lines[0],
        ), lines[0]
        assert not (tmp_path / "sweep").exists()
        shared = sweep(tmp_path, *overrides, "hydra.sweeper.simulation_seed=fixed")
        assert "[llm_ucb] hydra.sweeper.objective.metric=nope: not a metric" in shared.stderr, shared.stderr


def test_a_block_whose_records_do_not_fit_together_keeps_the_simulation_in_force(tmp_path):
    """A block that changes the simulation is checked before its first batch, as the first batch is
    before the sweep starts. Block 1 records 2 x 75 KB (one record per slot) on a 1 MB tmpfs; block
    2 would record 2 x 563 KB at once (simulation.n_frames=2400): one fits, two do not. The proposer
    hears why, the block keeps the simulation in force and runs on its cached records; nothing is
    written for the refused simulation."""
    from tests.test_flyvis_train import FLYVIS_TINY

    with small_disk(tmp_path / "disk", "1m") as disk:
        cmd = [
            sys.executable,
            "train.py",
            "-m",
            "hydra/sweeper=llm_ucb",
            *FLYVIS_TINY,
            "logger=none",
            "trainer.enable_progress_bar=false",
            f"paths.cache_dir={disk / 'cache'}",
            "hydra/sweeper/proposer=rules",
            "hydra.sweeper.tree_plot=false",
            "hydra.sweeper.n_iterations=4",
            "hydra.sweeper.n_parallel=2",
            "hydra.sweeper.n_iter_block=2",
            '+hydra.sweeper.params={training.learning_rate_W_start:"tag(log,interval(1e-4,1e-2))"}',
            '+hydra.sweeper.block_params={simulation.n_frames:"choice(300,2400)"}',
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        state = json.loads((tmp_path / "sweep" / "exploration" / "state.json").read_text())
        assert [(n["block"], n["status"], n["simulation"]) for n in state["nodes"]] == [
            (1, "completed", {}),
            (1, "completed", {}),
            (2, "completed", {}),
            (2, "completed", {}),
        ]
        log = (tmp_path / "sweep" / "exploration" / "sweep.log").read_text()
        refusal = (
            r"next_simulation: the block's first batch's 2 children record 2 simulations at once in "
            r"paths\.cache_dir=.*/disk/cache \(1 MB, \d+ MB free; hydra\.sweeper\.simulation_seed=slot: "
            r"one record per slot\); free space, .* share one record with "
            r"hydra\.sweeper\.simulation_seed=fixed"
        )
        assert re.search(r"iter 3: rejected proposals: " + refusal, log), log[-3000:]
        assert re.search(r"block 2: keeps the simulation in force; the rules' " + refusal, log), log[-3000:]
        assert "block 2 starts at iteration 3; simulation: root config" in log
        assert len(list((disk / "cache").glob("*.pt"))) == 2  # block 1's two records, nothing more
        assert not list((disk / "cache").glob("*.rec/*.tmp"))


def test_optimized_metric_is_checked_against_the_regime_metrics_before_any_work():
    """Per-type names (metabolism's slope_ratio_<i>) take any type index; a user's own evaluation,
    whose metrics are known only once it ran, is not checked before it."""
    from hydra_llm.preflight import check_optimized_metric

    def composed(*overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("train", list(overrides))

    check_optimized_metric(composed("simulation=metabolism_homeostasis", "optimized_metric=slope_ratio_12"))
    with pytest.raises(
        ValueError, match=r"^optimized_metric=slope_ratio_x: .*\(did you mean slope_ratio_<i>\?\)"
    ):
        check_optimized_metric(
            composed("simulation=metabolism_homeostasis", "optimized_metric=slope_ratio_x")
        )
    with pytest.raises(ValueError, match=r"^optimized_metric=V_rest_R2: not a metric of this run"):
        check_optimized_metric(composed("optimized_metric=V_rest_R2"))  # flyvis's, not signal's
    check_optimized_metric(composed("simulation=flyvis_synthetic", "optimized_metric=V_rest_R2"))
    own = composed("optimized_metric=anything")
    own.evaluation._target_ = "my_lab.evaluate"
    check_optimized_metric(own)


@pytest.mark.parametrize(
    ("regime", "override", "message"),
    [
        ("signal_chaotic", "model.n_layers=0", "model.n_layers=0: must be an integer >= 1"),
        ("flyvis_synthetic", "model.w_init_scale=-1", "model.w_init_scale=-1.0: must be a finite float >= 0"),
        ("metabolism_homeostasis", "model.log_k_init=[1,0]", "model.log_k_init=[1.0, 0.0]: must be [low,"),
    ],
)
def test_each_regime_checks_its_model_settings_in_the_preflight(regime, override, message):
    from hydra_llm.preflight import check

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [f"simulation={regime}", override])
    with pytest.raises(PreflightError, match="^" + re.escape(message)):
        check(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (  # a seed numpy or Lightning refuses, in every regime's simulation and training
            ["simulation=flyvis_natural", "simulation.seed=-2"],
            "simulation.seed=-2: must be an integer in [0, 4294967295]",
        ),
        (
            ["simulation=flyvis_synthetic", "simulation.connectome.seed=4294967296"],
            "simulation.connectome.seed=4294967296: must be an integer in [0, 4294967295]",
        ),
        (["training.seed=-1"], "training.seed=-1: must be an integer in [0, 4294967295]"),
        (
            ["simulation=metabolism_homeostasis", "training.seed=-1"],
            "training.seed=-1: must be an integer in [0, 4294967295]",
        ),
        (
            ["simulation=flyvis_synthetic", "training.max_steps_per_epoch=0"],
            "training.max_steps_per_epoch=0: must be an integer >= 1, or null",
        ),
        (
            ["num_threads=0"],
            "num_threads=0: must be an integer >= 1, or null (from the launcher: "
            "cores // n_jobs under joblib, cpus_per_task under SLURM)",
        ),
        (  # the file is needed before the simulation; its contents are checked when phase 2 loads it
            [
                "simulation=metabolism_homeostasis",
                "training=metabolism_phase2",
                "training.phase1_checkpoint=/no.ckpt",
            ],
            "training.phase1_checkpoint: file not found: /no.ckpt",
        ),
    ],
)
def test_seeds_and_training_settings_used_after_the_preflight_are_checked_in_it(overrides, message):
    from hydra_llm.preflight import check

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides)
    with pytest.raises(PreflightError, match="^" + re.escape(message) + "$"):
        check(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "evaluation.callbacks.0.every_n_steps=0",
            "evaluation.callbacks.0.every_n_steps=0: must be an integer >= 1",
        ),
        (
            "evaluation.callbacks.0.max_records=0",
            "evaluation.callbacks.0.max_records=0: must be an integer >= 1, or null",
        ),
        ("evaluation.callbacks.0.every_n_steps=often", "evaluation.callbacks.0.every_n_steps='often': Value"),
        ("+evaluation.callbacks.0.every_n_step=5", "evaluation.callbacks.0: unknown keys ['every_n_step']"),
        (
            "evaluation.callbacks.0._target_=math.pi",
            "evaluation.callbacks.0._target_='math.pi': not callable",
        ),
        ("evaluation.callbacks=[5]", "evaluation.callbacks.0: must be a mapping with a _target_"),
        ("evaluation.callbacks.0.max_records=null", None),
    ],
)
def test_the_evaluation_callbacks_are_checked_in_the_preflight(override, message):
    """The entries of evaluation.callbacks are built only after the simulation; their targets and the
    options of a known one are checked before it."""
    from hydra_llm.preflight import check

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["simulation=flyvis_synthetic", override])
    if message is None:
        check(cfg)
        return
    with pytest.raises(PreflightError) as err:
        check(cfg)
    assert str(err.value).startswith(message), str(err.value)


def test_a_cluster_launcher_leaves_the_gpu_to_its_nodes():
    """The sweeper's machine need not have the GPU that hydra/launcher=slurm children train on."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        slurm = compose("train", ["trainer=gpu", "hydra/launcher=slurm"], return_hydra_config=True)
        local = compose("train", ["trainer=gpu"], return_hydra_config=True)
    check_accelerator(slurm)
    check_trainer(slurm)  # its arguments only: the Trainer would look for the GPU here
    if not torch.cuda.is_available():
        with pytest.raises(PreflightError, match=r"^trainer\.accelerator=gpu: "):
            check_accelerator(local)


def test_a_top_level_key_that_nothing_reads_is_refused(monkeypatch):
    """``+seed=3`` (Hydra's own advice for ``seed=3``) would otherwise train as if it were not there, and
    so would ``++seed=3``; a key added under a group, a group added with ``+``, or a key that is there set
    with ``++`` is left to its own checks."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        seed = compose("train", ["+seed=3"], return_hydra_config=True)
        nested = compose(
            "train", ["+optimizer.lr=0.1", "+trainer.precision=bf16-mixed"], return_hydra_config=True
        )
        fine = compose(
            "train", ["+trainer.precision=bf16-mixed", "++num_threads=1"], return_hydra_config=True
        )
        # ``++`` is told apart by composing without it, with Hydra's config loader (as in a run)
        forced = compose("train", ["++seed=3", "++num_threads=1"], return_hydra_config=True)
        with pytest.raises(ValueError, match=r"^\+\+seed=3: adds a top-level key 'seed' that nothing reads "):
            check_added_keys(forced)
        forced_fine = ["++num_threads=1", "++optimized_metric=tau_R2", "++resources.mem_gb=4"]
        check_added_keys(
            compose("train", ["experiment=flyvis_recovery", *forced_fine], return_hydra_config=True)
        )
    check_added_keys(forced)  # outside a Hydra app nothing composes: a ``++`` key is not refused
    with pytest.raises(ValueError) as err:
        check_added_keys(seed)  # the sweeper's config holds the hydra node
    assert str(err.value).startswith(
        "+seed=3: adds a top-level key 'seed' that nothing reads (the top-level keys: "
    )
    assert str(err.value).endswith("did you mean training.seed or simulation.seed?")
    assert "\n" not in str(err.value) and "optimized_metric" in str(err.value)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # restored after
    HydraConfig.instance().set_config(nested)  # a run's task function reads it from Hydra
    with open_dict(nested):
        del nested["hydra"]
    with pytest.raises(ValueError, match=r"^\+optimizer\.lr=0\.1: adds a top-level key 'optimizer' "):
        check_added_keys(nested)
    check_added_keys(fine)


def test_the_trainer_settings_are_checked_before_any_work():
    """The run's Trainer is built in the preflight (its constructor checks the values); on a cluster
    launcher, whose nodes the Trainer cannot see from here, the keys are still checked."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        typo = compose("train", ["+trainer.max_step=5", "hydra/launcher=slurm"], return_hydra_config=True)
        bad = compose("train", ["+trainer.precision=17"])
        fine = compose("train", ["+trainer.precision=bf16-mixed", "trainer.max_epochs=2"])
    with pytest.raises(
        ValueError,
        match=r"^trainer\.max_step: not an argument of Trainer; did you mean trainer\.max_steps\?$",
    ):
        check_trainer(typo)
    with pytest.raises(ValueError, match=r"^trainer: Precision 17 is invalid\. Allowed precision values: "):
        check_trainer(bad)
    check_trainer(fine)


def test_an_accelerator_lightning_lacks_or_this_machine_lacks_is_named_before_any_work():
    """A misspelt accelerator fails on every launcher; a TPU, like a GPU, only where the runs train here."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        typo = compose(
            "train", ["trainer.accelerator=cdua", "hydra/launcher=slurm"], return_hydra_config=True
        )
        tpu = compose("train", ["trainer.accelerator=tpu"], return_hydra_config=True)
        auto = compose("train", ["trainer.accelerator=auto"], return_hydra_config=True)
    with pytest.raises(PreflightError) as typo_error:
        check_accelerator(typo)
    assert str(typo_error.value) == (
        "trainer.accelerator=cdua: not an accelerator Lightning knows here; "
        "one of auto, cpu, cuda, gpu, mps, tpu"
    )
    with pytest.raises(
        PreflightError, match=r"^trainer\.accelerator=tpu: no TPU on this machine; use trainer=cpu"
    ):
        check_accelerator(tpu)
    check_accelerator(auto)  # Lightning picks what the machine has


def test_an_empty_search_space_is_an_error(tmp_path):
    proc = sweep(tmp_path, "~exploration.params", "~exploration.block_params")
    assert proc.returncode == 1 and "hydra.sweeper.params: the search space is empty" in proc.stderr


def test_the_basic_sweeper_ignores_the_regime_space(tmp_path):
    """`-m` with Hydra's own sweeper runs its grid, untouched by the regime's exploration node."""
    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "training.seed=1,2",
        f"hydra.sweep.dir={sweep_dir}",
        *TINY_SIGNAL,
        "training.data_augmentation_loop=1",
        "logger=none",
        "evaluation.make_plots=false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == ["0", "1"]
    assert not (sweep_dir / "exploration").exists()
