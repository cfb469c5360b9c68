"""Metabolism regime benchmark: phase-1 rate constants and phase-2 homeostasis, per seed and strategy.

    python bench/bench_metabolism.py                       # 4 seeds, every phase-2 strategy (long)
    python bench/bench_metabolism.py --seeds 0 --strategies residual --quick
    python bench/bench_metabolism.py --reuse-phase1 --strategies conservation_targets   # the answer, ~1 min
    python bench/bench_metabolism.py --strategies integrated --phase1-aug 2 --phase2-aug 2 \
        --extra n_frames=23040 flux_limit=true measurement_noise_level=0.01 --out outputs/bench_noise_p2

For each simulation seed it trains phase 1 with the metabolism_phase1 training defaults (the default
network of conf/simulation/metabolism_homeostasis.yaml), then phase 2 from that phase-1 model with every
strategy (overrides of the metabolism_phase2 training defaults and of the model), and prints one table row
per (seed, strategy) and, per strategy, whether the issue's target is met on at least 3 of 4 seeds.
Rollout strategies unroll ``homeostasis_time_step`` Euler steps per mini-batch, so they get their own,
smaller budget (``--rollout-aug``). It also
times the vectorised reaction term against a per-reaction loop (median of repeats, same run).
Prints the machine load with every timing.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hydra_llm.evaluation.metabolism import evaluate  # noqa: E402
from hydra_llm.models.metabolism import MetabolismGNN, fit_model, training_options  # noqa: E402
from hydra_llm.simulation.metabolism import MetabolismDataModule  # noqa: E402

# phase-2 strategies: (overrides of the metabolism_phase2 training defaults, model overrides)
ROLLOUT = {"residual_supervision_weight": 0.0, "rollout_loss_weight": 1.0}
# data terms only through the conservation laws of S (w^T S = 0), node term affine in c, 1-D embedding
CONSERVATION = {"conservation_loss_weight": 1.0, "residual_supervision_weight": 0.0}
TARGETS = {**CONSERVATION, "node_target_weight": 1.0, "node_target_offset_weight": 0.01}
AFFINE_1D = {"node_form": "affine", "embedding_dim": 1}
# conf/training/metabolism_phase2_integrated.yaml, its budget aside (--phase2-aug)
INTEGRATED = yaml.safe_load((REPO / "conf" / "training" / "metabolism_phase2_integrated.yaml").read_text())
INTEGRATED = {k: v for k, v in INTEGRATED.items() if k not in ("defaults", "data_augmentation_loop")}
STRATEGIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "residual": ({}, {}),  # S1 alone: the preset
    "residual+embedding_aux": ({"coeff_embedding_aux": 0.1}, {}),  # S1 + S3
    "rollout_only": (ROLLOUT, {}),  # the seeds' baseline: rollouts, no residual
    "amplification": ({**ROLLOUT, "amplification_factor": 50.0}, {}),  # S2
    "curriculum": ({**ROLLOUT, "rollout_curriculum": True}, {}),  # S4
    "warmup": ({**ROLLOUT, "lr_schedule": "warmup_decay", "learning_rate_node": 0.05}, {}),  # S5
    "multi_scale": ({**ROLLOUT, "multi_scale_rollout": True}, {}),  # S6
    "accumulation": ({**ROLLOUT, "gradient_accumulation": 4}, {}),  # S7
    "separate": ({**ROLLOUT, "separate_loss_components": True}, {}),  # S8
    "conservation_sgd": (CONSERVATION, {}),  # conservation loss by SGD, free MLP_node
    "conservation_sgd_affine": (CONSERVATION, AFFINE_1D),
    "conservation_targets": ({**TARGETS, "lr_schedule": "warmup_decay"}, AFFINE_1D),  # the phase-2 answer
    # free MLP_node(c, a) on the integrated conservation equations (training=metabolism_phase2_integrated)
    "integrated": (INTEGRATED, {}),
    # and without each of its parts: the type search, the exact output layer, SGD of the hidden layers
    "integrated_random_init": ({**INTEGRATED, "embedding_init": "random"}, {}),
    "integrated_sgd_only": ({**INTEGRATED, "node_least_squares_every": 0}, {}),
    "integrated_frozen_hidden": ({**INTEGRATED, "learning_rate_node": 0.0}, {}),
}
# strategies whose every step unrolls homeostasis_time_step Euler steps (much slower per step)
ROLLOUT_STRATEGIES = {
    name for name, (over, _) in STRATEGIES.items() if over.get("rollout_loss_weight", 0) > 0
}
SLOPE_BAND = (0.8, 1.2)
# least embedding_cluster_acc of the phase-2 target: on a noise-free record, and under 1% measurement noise
CLUSTER_TARGETS = {"noise-free": 0.95, "under noise": 0.9}


def meets_target(m: dict[str, float], cluster_acc: float) -> bool:
    """The phase-2 target: both slope ratios in [0.8, 1.2] and embedding_cluster_acc >= ``cluster_acc``."""
    low, high = SLOPE_BAND
    ratios = [m["slope_ratio_0"], m["slope_ratio_1"], m["avg_slope_ratio"]]
    return all(low <= r <= high for r in ratios) and m["embedding_cluster_acc"] >= cluster_acc


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def time_reaction_term(model: MetabolismGNN, conc: torch.Tensor, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of the vectorised reaction term and of a per-reaction loop computing the same."""
    order = model.edge_order
    S = model.stoichiometry.detach()

    def loop() -> torch.Tensor:
        out = torch.zeros_like(conc)
        for j in range(model.n_reactions):
            mask = model.edge_rxn == j
            g = model.substrate_function(conc[:, model.edge_met[mask]], order[mask].expand(len(conc), -1))
            out += (10.0 ** model.log_k[j] * g.prod(1)).unsqueeze(1) * S[:, j]
        return out

    def measure(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return measure(lambda: model.reaction_term(conc)), measure(loop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument(
        "--rollout-aug",
        type=float,
        default=2,
        help="phase-2 data_augmentation_loop of the rollout strategies (each step unrolls T Euler steps)",
    )
    parser.add_argument(
        "--reuse-phase1", action="store_true", help="load <out>/seed<s>/metabolism_phase1.ckpt when present"
    )
    parser.add_argument(
        "--train-seed", type=int, default=None, help="phase-2 training seed (model init, batches)"
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the phase-1 and phase-2 budgets")
    parser.add_argument("--phase1-aug", type=float, default=None, help="phase-1 data_augmentation_loop")
    parser.add_argument("--phase2-aug", type=float, default=None, help="phase-2 data_augmentation_loop")
    parser.add_argument(
        "--extra", nargs="*", default=[], help="simulation keys, e.g. n_frames=23040 flux_limit=true"
    )
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_metabolism"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one table row per fit, no banners

    # the regime's defaults (hydra_llm.schemas.simulation.MetabolismSimulation) and --extra over them
    sim_cfg: dict[str, Any] = {k: yaml.safe_load(v) for k, v in (e.split("=", 1) for e in args.extra)}
    model_cfg: dict[str, Any] = {}  # the metabolism_gnn defaults (hydra_llm.schemas.models.MetabolismModel)
    phase1 = training_options({})
    phase2 = training_options({"phase": 2})
    for key in ("phase1", "phase1_cache_dir"):  # every phase-2 run loads this bench's phase-1 checkpoint
        phase2.pop(key)
    if args.quick:
        phase1["data_augmentation_loop"] = phase1["data_augmentation_loop"] / 10
        phase2["data_augmentation_loop"] = phase2["data_augmentation_loop"] / 10
    if args.train_seed is not None:
        phase2["seed"] = args.train_seed
    if args.phase1_aug is not None:
        phase1["data_augmentation_loop"] = args.phase1_aug
    if args.phase2_aug is not None:
        phase2["data_augmentation_loop"] = args.phase2_aug
    out = Path(args.out)
    print(f"# bench_metabolism  {' '.join(sys.argv[1:])}  threads={args.threads}  {load()}")

    print("\n## phase 1 (rate constants)")
    print(
        "| seed | steps | rate_constants_R2 | trimmed_R2 | outliers | R2_identity | alpha | minutes | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    checkpoints: dict[int, Path] = {}
    data: dict[int, Any] = {}
    for seed in args.seeds:
        dm = MetabolismDataModule(**{**sim_cfg, "seed": seed}, cache_dir=out / "cache")
        dm.setup()
        obs, gt = dm.observations, dm.ground_truth
        data[seed] = (obs, gt)
        checkpoints[seed] = out / f"seed{seed}" / "metabolism_phase1.ckpt"
        torch.manual_seed(phase1["seed"])
        model = MetabolismGNN(obs, training=phase1, **model_cfg)
        steps = model.steps_per_epoch() * int(phase1["n_epochs"])
        start = time.perf_counter()
        if args.reuse_phase1 and checkpoints[seed].exists():
            state = torch.load(checkpoints[seed], weights_only=False)["state_dict"]
            model.load_state_dict(state)
            steps_note = f"{steps} (reused)"
        else:
            fit_model(model, checkpoints[seed].parent)
            steps_note = str(steps)
        minutes = (time.perf_counter() - start) / 60
        m = evaluate(model, obs, gt, out / f"seed{seed}" / "phase1", make_plots=True)
        print(
            f"| {seed} | {steps_note} | {m['rate_constants_R2']:.3f} | "
            f"{m['rate_constants_R2_trimmed_oracle']:.3f} | "
            f"{int(m['rate_constants_n_outliers'])} | {m['rate_constants_R2_identity']:.3f} | "
            f"{m['alpha']:.3f} | {minutes:.2f} | {load()} |",
            flush=True,
        )

    obs, _ = data[args.seeds[0]]
    timing_model = MetabolismGNN(obs, training=phase1, **model_cfg)
    fast, slow = time_reaction_term(timing_model, obs.activity[:8])
    print(
        f"\nreaction term, batch 8: vectorised {fast * 1e3:.2f} ms, per-reaction loop {slow * 1e3:.2f} ms, "
        f"ratio {slow / fast:.1f}x (median of 5; {load()})"
    )

    print("\n## phase 2 (homeostasis; reactions frozen)")
    print(
        "| seed | strategy | steps | avg_slope_ratio | slope_ratio_0 | slope_ratio_1 | offset_ratio_0 | "
        "offset_ratio_1 | embedding_cluster_acc | n_clusters | silhouette | kmeans_acc (k) | minutes | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in args.strategies}
    for seed in args.seeds:
        obs, gt = data[seed]
        for name in args.strategies:
            train_over, model_over = STRATEGIES[name]
            aug = args.rollout_aug if name in ROLLOUT_STRATEGIES else phase2["data_augmentation_loop"]
            training = {**phase2, **train_over, "data_augmentation_loop": aug}
            training["phase1_checkpoint"] = str(checkpoints[seed])
            torch.manual_seed(training["seed"])
            model = MetabolismGNN(obs, training=training, **{**model_cfg, **model_over})
            steps = model.steps_per_epoch() * int(training["n_epochs"])
            start = time.perf_counter()
            fit_model(model, out / f"seed{seed}" / name)
            minutes = (time.perf_counter() - start) / 60
            m = evaluate(model, obs, gt, out / f"seed{seed}" / name, make_plots=True)
            results[name].append(m)
            print(
                f"| {seed} | {name} | {steps} | {m['avg_slope_ratio']:.3f} | {m['slope_ratio_0']:.3f} | "
                f"{m['slope_ratio_1']:.3f} | {m['offset_ratio_0']:.3f} | {m['offset_ratio_1']:.3f} | "
                f"{m['embedding_cluster_acc']:.2f} | {int(m['embedding_n_clusters'])} | "
                f"{m['embedding_silhouette']:.2f} | {m['embedding_cluster_acc_kmeans']:.2f} "
                f"({int(m['embedding_n_clusters_kmeans'])}) | {minutes:.2f} | {load()} |",
                flush=True,
            )

    for label, cluster_acc in CLUSTER_TARGETS.items():
        print(
            f"\n## target {label} (both slope ratios in [0.8, 1.2], embedding_cluster_acc >= {cluster_acc}) "
            "per strategy"
        )
        for name, runs in results.items():
            hits = sum(meets_target(m, cluster_acc) for m in runs)
            verdict = "MET" if hits >= min(3, len(runs)) else "not met"
            print(f"- {name}: {hits}/{len(runs)} seeds -> {verdict} (at least 3 of 4)")


if __name__ == "__main__":
    main()
