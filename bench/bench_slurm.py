"""Sweep overhead per batch on SLURM, beyond the children's own run time.

Runs the same sweep of the toy test app (children sleep ``--child-s`` seconds, so their own run time
is known) twice in one invocation: through Hydra's submitit_slurm launcher on a single-node cluster,
and through the basic launcher as the baseline (in process, children one after the other). The
basic sweep minus its children's sleeps is the sweeper's own cost; the SLURM overhead per batch is
what the SLURM sweep takes beyond that and beyond its children's own run time (one ``child-s`` per
batch, the children of a batch run side by side): submission, scheduling, job start-up (a fresh
Python per child), result polling. Medians over ``--repeat`` sweeps of each kind.

The cluster comes from $SLURM_CONF when set; otherwise tests/slurm/cluster.sh starts one in a
temporary folder (root only) and stops it afterwards.

Usage: python bench/bench_slurm.py [--batches 3] [--slots 2] [--child-s 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
TOY = ROOT / "tests" / "apps" / "toy" / "toy_app.py"


@contextlib.contextmanager
def cluster():
    if os.environ.get("SLURM_CONF"):
        yield os.environ["SLURM_CONF"]
        return
    subprocess.run(["bash", str(CLUSTER), "install"], check=True)
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["bash", str(CLUSTER), "start", folder], check=True, capture_output=True)
        try:
            yield str(Path(folder) / "slurm.conf")
        finally:
            subprocess.run(["bash", str(CLUSTER), "stop", folder], check=False)


def sweep_seconds(launcher: list[str], batches: int, slots: int, child_s: float, env: dict) -> float:
    with tempfile.TemporaryDirectory() as sweep_dir:
        cmd = [
            sys.executable,
            str(TOY),
            "-m",
            "hydra/sweeper=llm_ucb",
            "hydra/sweeper/proposer=rules",
            "hydra.sweeper.objective.metric=score",
            "hydra.sweeper.tree_plot=false",
            f"hydra.sweeper.n_iterations={batches * slots}",
            f"hydra.sweeper.n_parallel={slots}",
            '+hydra.sweeper.params={training.lr:"tag(log,interval(1e-5,1e-1))"}',
            f"behaviour.sleep={child_s}",
            f"hydra.sweep.dir={sweep_dir}",
            *launcher,
        ]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--child-s", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with cluster() as conf:
        env = {**os.environ, "SLURM_CONF": conf, "PYTHONPATH": str(ROOT)}
        slurm = ["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=5"]
        runs = {"basic": [], "slurm": []}
        for _ in range(args.repeat):
            runs["basic"].append(sweep_seconds([], args.batches, args.slots, args.child_s, env))
            runs["slurm"].append(sweep_seconds(slurm, args.batches, args.slots, args.child_s, env))
    basic, slurm_s = statistics.median(runs["basic"]), statistics.median(runs["slurm"])
    sweeper_own = basic - args.batches * args.slots * args.child_s
    overhead = (slurm_s - sweeper_own - args.batches * args.child_s) / args.batches
    print(f"sweep: {args.batches} batches x {args.slots} children, each child sleeps {args.child_s} s")
    print(f"{'launcher':<10}{'median wall s':>15}{'runs':>40}")
    for name, values in runs.items():
        print(f"{name:<10}{statistics.median(values):>15.2f}{str([round(v, 2) for v in values]):>40}")
    print(f"sweeper's own time (basic wall - children): {sweeper_own:.2f} s")
    print(f"SLURM overhead per batch beyond the children's run time: {overhead:.2f} s")


if __name__ == "__main__":
    main()
