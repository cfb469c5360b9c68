"""One end-to-end sweep of the real train.py on a tiny signal regime (2 batches x 2 slots)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# A signal regime small enough for a child to train in seconds (later overrides win).
TINY_SIGNAL = [
    "simulation.n_neurons=16",
    "simulation.n_frames=600",
    "simulation.burn_in_frames=50",
    "training.data_augmentation_loop=2",
    "trainer.enable_progress_bar=false",
]


def tiny_sweep(tmp_path: Path, *overrides: str, wandb_mode: str = "disabled") -> subprocess.CompletedProcess:
    """`train.py -m` with the rules proposer, 2 batches x 2 slots of TINY_SIGNAL, into tmp_path/sweep."""
    env = dict(
        os.environ, OMP_NUM_THREADS="1", HYDRA_LLM_CACHE=str(tmp_path / "cache"), WANDB_MODE=wandb_mode
    )
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/sweeper=llm_ucb",
        "hydra/sweeper/proposer=rules",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.sweeper.n_iterations=4",
        "hydra.sweeper.n_parallel=2",
        "hydra.sweeper.slot_roles=[exploit,replicate]",
        *TINY_SIGNAL,
        *overrides,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_train_py_sweep_tiny_signal(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = tiny_sweep(
        tmp_path,
        "hydra.sweeper.protocol=instructions/signal_landscape.md",
        '+hydra.sweeper.params={training.learning_rate_W_start:"tag(log,interval(1e-4,1e-2))",'
        'training.coeff_W_L1:"tag(log,interval(1e-6,1e-3))"}',
        # a list-valued block choice (one gain per type), taken at the second block
        "hydra.sweeper.n_iter_block=2",
        '+hydra.sweeper.block_params={simulation.gain:"choice(10.0,[8.0,12.0,10.0,10.0])"}',
        "logger=none",
        "evaluation.make_plots=false",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = json.loads((sweep_dir / "exploration" / "state.json").read_text())
    nodes = state["nodes"]
    assert [n["id"] for n in nodes] == [1, 2, 3, 4] and [len(b) for b in state["batches"]] == [2, 2]
    gains = [
        yaml.safe_load((Path(n["output_dir"]) / ".hydra" / "config.yaml").read_text())["simulation"]["gain"]
        for n in nodes
    ]
    assert gains == [10.0, 10.0, [8.0, 12.0, 10.0, 10.0], [8.0, 12.0, 10.0, 10.0]]
    assert all(n["status"] == "completed" for n in nodes), [n["error"] for n in nodes]
    assert all(
        0.0 <= n["metrics"]["connectivity_R2"] <= 1.0 or n["metrics"]["connectivity_R2"] < 0 for n in nodes
    )
    for node in nodes:
        metrics = json.loads((Path(node["output_dir"]) / "metrics.json").read_text())
        assert metrics["connectivity_R2"] == node["metrics"]["connectivity_R2"]
        child = yaml.safe_load((Path(node["output_dir"]) / ".hydra" / "config.yaml").read_text())
        assert (
            child["sweep_node"]["node"] == node["id"]
            and child["training"]["seed"] == node["seeds"]["training"]
        )
        assert child["simulation"]["seed"] == node["seeds"]["simulation"]
    assert (sweep_dir / "exploration" / "protocol.md").read_text().startswith("# Signal landscape")
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_node"] in {1, 2, 3, 4} and results["best_output_dir"].startswith(str(sweep_dir))
    assert "proposer: rules" in (sweep_dir / "exploration" / "sweep.log").read_text().splitlines()[0]
