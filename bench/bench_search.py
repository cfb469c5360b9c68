"""Equal-budget search: ``llm_ucb`` (offline rules proposer) against Hydra's Optuna sweeper (TPE, random).

Every method explores the same four training keys (quick_sweep's) on the same simulated dataset (the
preset's simulation seed, fixed for every run), with the same per-run budget, through
``python train.py -m``: the real ``llm_ucb`` plugin and the real ``hydra-optuna-sweeper`` plugin
(``pip install -e .[bench]``). Optuna's study starts with the default config enqueued as its first
trial (a study in a SQLite file, made and enqueued before the sweep loads it), so no method starts blind.

Per landscape:

0. the default config on 3 fresh training seeds: its run-to-run noise, and the threshold, fixed here
   before any search runs (default mean + max(2 std, 0.02));
1. per method and sweep seed, one sweep of ``--budget`` runs;
2. per sweep and checkpoint n (8, 16, 32): the config the method names best after its first n runs
   (llm_ucb: the best config judged on its replicate mean, as ``optimization_results.yaml`` names it;
   Optuna: its best trial) and its value as reported; at 16 and 32 that config is re-run on 3 fresh
   training seeds that no method saw: the score that counts.

Writes ``<out>/results.json``, ``<out>/table.md`` and ``<out>/best_so_far.png``. Sweeps run two at a
time, each child with one thread.

Usage::

    python bench/bench_search.py              # 3 landscapes x 3 methods x 3 sweep seeds, 32 runs
    python bench/bench_search.py --landscapes dale --seeds 1 --budget 8   # a quick look
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hydra_llm.explore import reports  # noqa: E402
from hydra_llm.explore.state import load_state  # noqa: E402
from hydra_llm.explore.tree import stats  # noqa: E402
from hydra_llm.schemas.training import SignalTraining  # noqa: E402

METRIC = "connectivity_R2"
SPACE = {
    "training.learning_rate_W_start": "tag(log, interval(1e-4, 1e-2))",
    "training.learning_rate_start": "tag(log, interval(1e-5, 1e-2))",
    "training.learning_rate_embedding_start": "tag(log, interval(1e-5, 1e-2))",
    "training.coeff_W_L1": "tag(log, interval(1e-6, 1e-3))",
}
DEFAULTS = {key: getattr(SignalTraining, key.split(".", 1)[1]) for key in SPACE}
# One run: 500 Adam steps of 8 frames on 50 neurons, ~5 s on one core.
COMMON = [
    "simulation.n_neurons=50",
    "simulation.n_frames=4000",
    "training.data_augmentation_loop=5",
    "logger=none",
    "evaluation.make_plots=false",
    "trainer.enable_progress_bar=false",
    "num_threads=1",
]
LANDSCAPES: dict[str, list[str]] = {
    "dale": ["simulation=signal_dale"],
    "low_rank": ["simulation=signal_low_rank"],
    "noisy": ["simulation=signal_chaotic", "simulation.noise_model_level=1.0"],
}
METHODS = ("llm_ucb", "tpe", "random")
CHECKPOINTS = (8, 16, 32)
RESCORED = (16, 32)  # checkpoints whose named config is re-run on fresh seeds
FRESH_SEEDS = (9_000_001, 9_000_002, 9_000_003)


@dataclass
class Sweep:
    """One sweep's runs in launch order and the config it names best after each checkpoint."""

    landscape: str
    method: str
    seed: int
    wall_s: float = 0.0
    values: list[float] = field(default_factory=list)  # the metric per run, NaN for a failed run
    picks: dict[int, dict[str, Any]] = field(default_factory=dict)  # n -> {config, reported, fresh}


# ------------------------------------------------------------------------------------------ running
def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}


def _space_args() -> list[str]:
    return [f"{key}={value}" for key, value in SPACE.items()]


def run_sweep(
    landscape: str, method: str, seed: int, budget: int, out: Path, llm_ucb_args: Sequence[str] = ()
) -> Sweep:
    folder = out / "sweeps" / landscape / method / str(seed)
    args = [*LANDSCAPES[landscape], *COMMON, f"hydra.sweep.dir={folder}", f"paths.cache_dir={out / 'cache'}"]
    if method == "llm_ucb":
        args += [
            "hydra/sweeper=llm_ucb",
            "hydra/sweeper/proposer=rules",
            f"hydra.sweeper.n_iterations={budget}",
            "hydra.sweeper.n_parallel=4",
            f"hydra.sweeper.seed={seed}",
            "hydra.sweeper.simulation_seed=fixed",
            "hydra.sweeper.tree_plot=false",
            f"hydra.sweeper.objective.metric={METRIC}",
            "hydra.sweeper.objective.direction=maximize",
            *llm_ucb_args,
        ]
    else:
        import optuna

        folder.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{folder / 'study.db'}"
        study = optuna.create_study(study_name="bench", storage=storage, direction="maximize")
        study.enqueue_trial(DEFAULTS)
        args += [
            "hydra/sweeper=optuna",
            f"hydra/sweeper/sampler={method}",
            f"hydra.sweeper.sampler.seed={seed}",
            f"hydra.sweeper.n_trials={budget}",
            "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.direction=maximize",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=bench",
            f"optimized_metric={METRIC}",
        ]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *args, *_space_args()],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    sweep = Sweep(landscape, method, seed, wall_s=time.perf_counter() - start)
    (folder / "sweep.out").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{landscape}/{method}/{seed} failed; see {folder / 'sweep.out'}")
    _read_sweep(sweep, folder, budget)
    return sweep


def _read_sweep(sweep: Sweep, folder: Path, budget: int) -> None:
    """Values in launch order and the config named best after each checkpoint."""
    if sweep.method == "llm_ucb":
        nodes = sorted(load_state(folder).nodes, key=lambda n: n.id)
        sweep.values = [
            n.metrics.get(METRIC, math.nan) if n.status == "completed" else math.nan for n in nodes
        ]
        for n in CHECKPOINTS:
            if n > len(nodes):
                continue
            best = reports.best_config(nodes[:n])
            if best is None:
                continue
            config = {**DEFAULTS, **{k: v for k, v in best.node.overrides.items() if k in SPACE}}
            sweep.picks[n] = {"config": config, "reported": best.mean(METRIC), "runs": len(best.runs)}
        return
    trials = []
    for job in sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        config = {k: float(v) for k, v in (o.split("=", 1) for o in overrides) if k in SPACE}
        metrics_file = job / "metrics.json"
        value = (
            json.loads(metrics_file.read_text()).get(METRIC, math.nan) if metrics_file.exists() else math.nan
        )
        trials.append((config, float(value)))
    sweep.values = [v for _, v in trials[:budget]]
    for n in CHECKPOINTS:
        done = [(c, v) for c, v in trials[:n] if math.isfinite(v)]
        if n <= len(trials) and done:
            config, value = max(done, key=lambda t: t[1])  # study.best_trial among the first n
            sweep.picks[n] = {"config": {**DEFAULTS, **config}, "reported": value, "runs": 1}


def _fresh_worker(jobs: Sequence[tuple[str, dict[str, Any], int, str]]) -> list[float]:
    """Run (landscape, config, training seed, cache dir) jobs in this process; the metric of each."""
    from hydra import compose, initialize_config_dir

    from hydra_llm.train import run

    values = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for landscape, config, seed, scratch in jobs:
            overrides = [
                *LANDSCAPES[landscape],
                *COMMON,
                *(f"{k}={v!r}" for k, v in config.items()),
                f"training.seed={seed}",
                f"paths.output_dir={scratch}",
                f"paths.cache_dir={Path(scratch).parents[2] / 'cache'}",
            ]
            cfg = compose(config_name="train", overrides=overrides)
            values.append(float(run(cfg).get(METRIC, math.nan)))
    return values


def fresh_scores(jobs: list[tuple[str, dict[str, Any], int]], out: Path) -> list[float]:
    """The metric of every (landscape, config, seed) job, in two worker processes."""
    shares = [list(range(0, len(jobs), 2)), list(range(1, len(jobs), 2))]
    payloads = [
        [(*jobs[i], str(out / "fresh" / f"worker{w}" / str(i))) for i in share]
        for w, share in enumerate(shares)
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_subprocess_fresh, payloads))
    merged = [math.nan] * len(jobs)
    for share, values in zip(shares, results, strict=True):
        for i, value in zip(share, values, strict=True):
            merged[i] = value
    return merged


def _subprocess_fresh(payload: list[tuple[str, dict[str, Any], int, str]]) -> list[float]:
    if not payload:
        return []
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_search as b; "
        "print(json.dumps(b._fresh_worker(json.loads(sys.stdin.read()))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "bench")],
        input=json.dumps(payload),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ report
def summarise(sweeps: list[Sweep], defaults: dict[str, dict[str, Any]], budget: int) -> str:
    lines = [
        f"Metric: {METRIC} (higher is better). Best after n runs: the config each method names best, "
        "as reported by the sweep / re-run on 3 fresh training seeds (mean ± std over sweep seeds).",
        "",
    ]
    for landscape, default in defaults.items():
        lines += [
            f"### {landscape}: `{' '.join(LANDSCAPES[landscape])}`",
            "",
            f"Default config on 3 fresh seeds: {default['mean']:.4f} ± {default['std']:.4f}; "
            f"threshold (fixed before the sweeps): {default['threshold']:.4f}",
            "",
            "| method | "
            + " | ".join(f"n={n} reported | n={n} fresh" for n in CHECKPOINTS if n <= budget)
            + " | runs to threshold | wall s / sweep |",
            "|---|" + "---|---|" * len([n for n in CHECKPOINTS if n <= budget]) + "---|---|",
        ]
        for method in METHODS:
            mine = [s for s in sweeps if s.landscape == landscape and s.method == method]
            if not mine:
                continue
            cells = []
            for n in (n for n in CHECKPOINTS if n <= budget):
                reported = stats(s.picks[n]["reported"] for s in mine if n in s.picks)
                fresh = stats(s.picks[n]["fresh"] for s in mine if "fresh" in s.picks.get(n, {}))
                cells.append(f"{reported.mean:.4f} ± {reported.std:.4f}")
                cells.append(f"{fresh.mean:.4f} ± {fresh.std:.4f}" if fresh.runs else "-")
            reach = [_runs_to(s.values, default["threshold"]) for s in mine]
            reach_text = ", ".join(
                str(r) if r else f">{len(s.values)}" for r, s in zip(reach, mine, strict=True)
            )
            wall = statistics.median(s.wall_s for s in mine)
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {reach_text} | {wall:.0f} |")
        lines.append("")
    return "\n".join(lines)


def _runs_to(values: Sequence[float], threshold: float) -> int | None:
    return next((i + 1 for i, v in enumerate(values) if math.isfinite(v) and v >= threshold), None)


def plot(sweeps: list[Sweep], defaults: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(defaults), figsize=(5 * len(defaults), 3.6), squeeze=False)
    colours = {"llm_ucb": "tab:blue", "tpe": "tab:orange", "random": "tab:grey"}
    for ax, (landscape, default) in zip(axes[0], defaults.items(), strict=True):
        for method in METHODS:
            for s in (s for s in sweeps if s.landscape == landscape and s.method == method):
                best, top = [], -math.inf
                for v in s.values:
                    top = max(top, v) if math.isfinite(v) else top
                    best.append(top)
                ax.plot(range(1, len(best) + 1), best, color=colours[method], alpha=0.6, lw=1)
                ns = sorted(n for n in s.picks if "fresh" in s.picks[n])
                ax.plot(ns, [s.picks[n]["fresh"] for n in ns], "o--", color=colours[method], ms=4, lw=0.8)
            ax.plot([], [], color=colours[method], label=method)
        ax.axhline(default["mean"], color="k", lw=0.8, ls=":", label="default (fresh seeds)")
        ax.set_title(landscape)
        ax.set_xlabel("runs")
        ax.set_ylabel(f"best {METRIC} (line: in-sweep; dots: fresh seeds)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--landscapes", default=",".join(LANDSCAPES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "bench_search" / time.strftime("%Y%m%d-%H%M%S")
    )
    parser.add_argument(
        "--llm-ucb-args",
        default="",
        help="extra overrides for the llm_ucb sweeps, space-separated "
        "(e.g. 'hydra.sweeper.slot_roles=[exploit,exploit,replicate,replicate]')",
    )
    args = parser.parse_args()
    landscapes = args.landscapes.split(",")
    methods = args.methods.split(",")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # 0. the default config's noise and the threshold, before any search
    default_runs = fresh_scores([(lc, DEFAULTS, s) for lc in landscapes for s in FRESH_SEEDS], out)
    defaults = {}
    for i, lc in enumerate(landscapes):
        s = stats(default_runs[3 * i : 3 * i + 3])
        defaults[lc] = {"mean": s.mean, "std": s.std, "threshold": s.mean + max(2 * s.std, 0.02)}
        print(f"[{time.perf_counter() - t0:6.0f}s] {lc}: default {s.mean:.4f} ± {s.std:.4f}", flush=True)

    # 1. the sweeps, two at a time
    todo = [(lc, m, seed) for lc in landscapes for m in methods for seed in range(args.seeds)]
    with ThreadPoolExecutor(2) as pool:
        extra = args.llm_ucb_args.split()
        sweeps = list(pool.map(lambda t: run_sweep(*t, args.budget, out, extra), todo))
    for s in sweeps:
        print(
            f"[{time.perf_counter() - t0:6.0f}s] {s.landscape}/{s.method}/{s.seed}: {s.wall_s:.0f} s",
            flush=True,
        )

    # 2. the named configs on fresh seeds (each distinct config once)
    unique: dict[str, tuple[str, dict[str, Any]]] = {}
    for s in sweeps:
        for pick in (s.picks[n] for n in RESCORED if n in s.picks):
            unique.setdefault(
                json.dumps([s.landscape, pick["config"]], sort_keys=True), (s.landscape, pick["config"])
            )
    keys = list(unique)
    jobs = [(*unique[k], seed) for k in keys for seed in FRESH_SEEDS]
    values = fresh_scores(jobs, out)
    score = {k: statistics.mean(values[3 * i : 3 * i + 3]) for i, k in enumerate(keys)}
    for s in sweeps:
        for pick in (s.picks[n] for n in RESCORED if n in s.picks):
            pick["fresh"] = score[json.dumps([s.landscape, pick["config"]], sort_keys=True)]

    table = summarise(sweeps, defaults, args.budget)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(
        json.dumps(
            {"defaults": defaults, "sweeps": [asdict(s) for s in sweeps], "args": vars(args)},
            default=str,
            indent=1,
        )
    )
    plot(sweeps, defaults, out / "best_so_far.png")
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s; {out}")


if __name__ == "__main__":
    main()
