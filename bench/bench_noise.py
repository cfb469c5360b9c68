"""Recovery under measurement noise: one table per regime, noise level x seeds, each row with its command.

Every run is ``python train.py <regime> simulation.measurement_noise_level=L
simulation.smoothing_window=W simulation.seed=S training.seed=S logger=none`` in its own folder; the
table gives the mean and std over the seeds of each metric and the worst seed. A row's smoothing
window is the one given for its level (``--windows``: 1, the raw record, at level 0); for ``auto`` the
windows it chose, per seed, follow in brackets.

Usage::

    python bench/bench_noise.py                                      # signal, 4 levels x 3 seeds
    python bench/bench_noise.py --regime metabolism_phase1 --seeds 0 1 --levels 0 0.05 0.1
    python bench/bench_noise.py --regime signal --levels 0.1 --seeds 42 --extra simulation.n_frames=20000
    python bench/bench_noise.py --regime flyvis_extent1 --levels 0 0.05 0.1 --windows 1 1 1 --seeds 42 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGIMES = {
    "signal": {
        "overrides": [],
        "metrics": [
            "connectivity_R2",
            "connectivity_R2_identity",
            "tau_R2",
            "tau_relative_error",
            "cluster_accuracy",
            "test_pearson",
        ],
        "oracle": ["connectivity_R2_oracle", "tau_R2_oracle"],
    },
    "flyvis_extent1": {  # 443 neurons on the synthetic stimuli, a CPU-sized recording and budget
        "overrides": [
            "simulation=flyvis_synthetic",
            "simulation.connectome.extent=1",
            "simulation.n_frames=20000",
            "training.max_steps_per_epoch=5000",
        ],
        "metrics": ["connectivity_R2", "tau_R2", "V_rest_R2", "cluster_accuracy", "test_pearson"],
        "oracle": ["connectivity_R2_trimmed_oracle"],
    },
    "metabolism_phase1": {
        "overrides": ["simulation=metabolism_homeostasis"],
        "metrics": ["rate_constants_R2", "rate_constants_R2_trimmed_oracle", "rate_constants_R2_identity"],
        "oracle": [],
    },
    "metabolism_conservation": {
        "overrides": ["experiment=homeostasis_conservation"],
        "metrics": [
            "avg_slope_ratio",
            "slope_ratio_0",
            "slope_ratio_1",
            "embedding_cluster_acc",
            "rate_constants_R2",
        ],
        "oracle": [],
    },
}
DEFAULT_WINDOWS = {0.0: 1, 0.01: 21, 0.05: 41, 0.1: 61, 0.2: 101}


def command(regime: str, level: float, window: str, seed: int, extra: list[str], out: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        *REGIMES[regime]["overrides"],
        f"simulation.measurement_noise_level={level}",
        f"simulation.smoothing_window={window}",
        f"simulation.seed={seed}",
        f"training.seed={seed}",
        "logger=none",
        "num_threads=1",
        "trainer.enable_progress_bar=false",
        *extra,
        f"paths.output_dir={out}",
        f"paths.cache_dir={out.parent.parent / 'cache'}",
    ]


def run_one(cmd: list[str], out: Path) -> dict[str, float]:
    metrics_file = out / "metrics.json"
    if not metrics_file.is_file():
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(out / "run.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
        print(f"{out.relative_to(out.parents[2])}: {time.perf_counter() - start:.0f} s", flush=True)
    if not metrics_file.is_file():
        return {}
    return json.loads(metrics_file.read_text())


def cell(values: list[float]) -> str:
    if not values:
        return "failed"
    if any(math.isnan(v) for v in values):  # e.g. tau_R2 when every neuron has the same tau
        return "undefined"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (min {min(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=sorted(REGIMES), default="signal")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--windows", nargs="+", help="one smoothing window per level: frames, or auto")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_noise")
    args = parser.parse_args()
    windows = args.windows or [str(DEFAULT_WINDOWS.get(level, 61)) for level in args.levels]
    if len(windows) != len(args.levels):
        parser.error("--windows needs one value per level")

    tag = "_".join([args.regime, *[e.replace("=", "-").replace("/", "-") for e in args.extra]])
    jobs = []
    for level, window in zip(args.levels, windows, strict=True):
        for seed in args.seeds:
            out = args.out / tag / f"noise{level}_w{window}" / f"seed{seed}"
            cmd = command(args.regime, level, window, seed, args.extra, out)
            jobs.append((level, window, seed, cmd, out))
    os.environ.setdefault("WANDB_MODE", "offline")
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(job[3], job[4]), jobs))

    spec = REGIMES[args.regime]
    names = spec["metrics"] + spec["oracle"]
    lines = [
        f"| noise | window | {' | '.join(names)} | command (seed S) |",
        "|" + "---|" * (len(names) + 3),
    ]
    table = {}
    for level, window in zip(args.levels, windows, strict=True):
        rows = [r for (lv, w, _, _, _), r in zip(jobs, results, strict=True) if (lv, w) == (level, window)]
        cells = [cell([r[n] for r in rows if n in r]) for n in names]
        cmd = " ".join(
            ["python train.py", *spec["overrides"], f"simulation.measurement_noise_level={level}"]
            + ([f"simulation.smoothing_window={window}"] if window != "1" else [])
            + ["simulation.seed=S training.seed=S", *args.extra]
        )
        used = [str(int(r["smoothing_window"])) for r in rows if "smoothing_window" in r]
        shown = f"{window} ({' / '.join(used)})" if window == "auto" and used else window
        lines.append(f"| {level} | {shown} | {' | '.join(cells)} | `{cmd}` |")
        table[f"{level}/{window}"] = rows
    text = "\n".join(lines)
    (args.out / tag).mkdir(parents=True, exist_ok=True)
    (args.out / tag / "table.md").write_text(text + "\n")
    (args.out / tag / "results.json").write_text(json.dumps(table, indent=1))
    print(text)


if __name__ == "__main__":
    main()
