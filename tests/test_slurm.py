"""Sweeps on a real single-node SLURM cluster (slurmctld, slurmd, slurmdbd, munge, MariaDB on this host).

The fixture installs the Debian packages when they are missing (root only), starts the daemons from
``tests/slurm/cluster.sh`` in a temporary folder, and stops them by their pid files afterwards.
Children go through Hydra's submitit launcher, one job array per batch.
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
TOY = ROOT / "tests" / "apps" / "toy" / "toy_app.py"

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    if os.geteuid() != 0 and not shutil.which("slurmctld"):
        pytest.skip("installing SLURM needs root")
    subprocess.run(["bash", str(CLUSTER), "install"], check=True, timeout=900)
    folder = tmp_path_factory.mktemp("slurm")
    # munge listens on its default socket: one test cluster per host at a time.
    with open("/tmp/hydra-llm-slurm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            subprocess.run(["bash", str(CLUSTER), "start", str(folder)], check=True, timeout=180)
            yield {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "PYTHONPATH": str(ROOT)}
        finally:
            subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], check=False, timeout=60)


def sweep(env, script, sweep_dir, *overrides, timeout=900):
    cmd = [
        sys.executable,
        str(script),
        "-m",
        "hydra/sweeper=llm_ucb",
        "hydra/sweeper/proposer=rules",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads((Path(sweep_dir) / "exploration" / "state.json").read_text())


def test_children_killed_by_slurm_are_failed_nodes_and_the_sweep_goes_on(slurm_env, tmp_path):
    """Batch 1: job 1 exits hard; batch 2: job 3 runs past its 1-minute time limit.

    Their batch mates still count (their results are read back from the sweep folder), and the two
    failed nodes carry SLURM's reason.
    """
    state = sweep(
        slurm_env,
        TOY,
        tmp_path,
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=5",
        "hydra.sweeper.objective.metric=score",
        "hydra.sweeper.tree_plot=false",
        "hydra.sweeper.n_iterations=4",
        "hydra.sweeper.n_parallel=2",
        '+hydra.sweeper.params={training.lr:"tag(log,interval(1e-5,1e-1))",training.width:"range(1,17)"}',
        "behaviour.exit_at_job=1",
        "behaviour.sleep_at_job=3",
        "behaviour.sleep_at_job_s=300",
    )
    nodes = {n["job_num"]: n for n in state["nodes"]}
    assert sorted(nodes) == [0, 1, 2, 3]
    assert [nodes[j]["status"] for j in (0, 2)] == ["completed", "completed"]
    assert all(0.0 < nodes[j]["metrics"]["score"] < 1.0 for j in (0, 2))
    assert nodes[1]["status"] == "failed" and "exit code 3" in nodes[1]["error"]
    # SLURM's time limit: submitit's handler reports "timed-out" when it runs before the kill
    # (signal_delay_s), the job's state TIMEOUT when the kill comes first (seen on a loaded 2-core machine)
    assert nodes[3]["status"] == "failed"
    assert nodes[3]["error"].startswith("time limit reached (hydra.launcher.timeout_min=1): ")
    assert "timed-out" in nodes[3]["error"] or "(state: TIMEOUT)" in nodes[3]["error"]
    # every child ran as a SLURM job (submitit folders keyed by the SLURM job id)
    assert len(list((tmp_path / ".submitit").glob("*_*/*_submitted.pkl"))) == 4


def test_train_py_sweep_on_slurm_with_the_preset(slurm_env, tmp_path):
    """The real task through the `slurm` launcher preset: 2 batches x 2 children of a tiny regime."""
    state = sweep(
        slurm_env,
        ROOT / "train.py",
        tmp_path,
        "hydra/launcher=slurm",
        "resources.timeout_min=10",
        "resources.cpus_per_task=1",
        "resources.mem_gb=2",
        "hydra.sweeper.n_iterations=4",
        "hydra.sweeper.n_parallel=2",
        "hydra.sweeper.tree_plot=false",
        '+hydra.sweeper.params={training.learning_rate_W_start:"tag(log,interval(1e-4,1e-2))"}',
        "logger=csv",
        "simulation.n_neurons=12",
        "simulation.n_neuron_types=2",
        "simulation.n_frames=400",
        "simulation.burn_in_frames=50",
        "training.data_augmentation_loop=2",
        "training.batch_size=4",
        "evaluation.rollout_frames=40",
    )
    assert [n["status"] for n in state["nodes"]] == ["completed"] * 4, [
        n.get("error") for n in state["nodes"]
    ]
    for node in state["nodes"]:
        assert node["metrics"]["training_time_min"] > 0
        assert -1.0 <= node["metrics"]["connectivity_R2"] <= 1.0
        job = tmp_path / str(node["job_num"])
        assert json.loads((job / "metrics.json").read_text())["connectivity_R2"] == pytest.approx(
            node["metrics"]["connectivity_R2"]
        )
    assert (tmp_path / "optimization_results.yaml").is_file()


def test_sweeper_restarted_mid_batch_resumes_with_the_submitit_folders_intact(slurm_env, tmp_path):
    """Kill the sweeper while batch 2 runs on SLURM, then resume: batch 1 is kept, batch 2's job numbers
    are never reused, and the first run's submitit folders stay where they were."""
    args = [
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.timeout_min=2",
        "hydra.launcher.signal_delay_s=5",  # submitit's default (120 s) would signal a 2-minute job at once
        "hydra.sweeper.objective.metric=score",
        "hydra.sweeper.tree_plot=false",
        "hydra.sweeper.n_iterations=4",
        "hydra.sweeper.n_parallel=2",
        '+hydra.sweeper.params={training.lr:"tag(log,interval(1e-5,1e-1))"}',
        "behaviour.sleep_at_job=2",
        "behaviour.sleep_at_job_s=20",
    ]
    cmd = [
        sys.executable,
        str(TOY),
        "-m",
        "hydra/sweeper=llm_ucb",
        "hydra/sweeper/proposer=rules",
        f"hydra.sweep.dir={tmp_path}",
        *args,
    ]
    sweeper = subprocess.Popen(
        cmd, cwd=ROOT, env=slurm_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob(".submitit/*_*/*_submitted.pkl"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)  # batch 1 done, batch 2 (job 2 sleeps 20 s) submitted
    sweeper.send_signal(signal.SIGKILL)
    sweeper.wait(timeout=30)
    first_run = sorted(p.name for p in tmp_path.glob(".submitit/*_*") if p.is_dir())
    assert len(first_run) == 4

    # the same settings (a resume refuses changed ones); job 2 is not re-run: batch 2 gets new job numbers
    state = sweep(slurm_env, TOY, tmp_path, *args, "hydra.sweeper.resume=true")
    jobs = [n["job_num"] for n in state["nodes"]]
    assert jobs == [0, 1, 4, 5]  # batch 2's jobs (2, 3) were consumed by the killed run, never reused
    assert all(n["status"] == "completed" for n in state["nodes"])
    assert set(first_run) < {p.name for p in tmp_path.glob(".submitit/*_*") if p.is_dir()}
