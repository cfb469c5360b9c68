"""Flyvis regime benchmarks: simulation speed, node-wise vs per-edge training step, recovery.

    python bench/bench_flyvis.py sim        # frames/s of the Euler simulator at extent 8
    python bench/bench_flyvis.py step       # node-wise g_phi + index_add vs torch-geometric propagate
                                            # with a CSR product vs per-edge MessagePassing
    python bench/bench_flyvis.py batch      # the node-wise step against batch size (--step-batches),
                                            # deterministic algorithms off and on (trainer=gpu)
    python bench/bench_flyvis.py record     # one record of the R2 log (--step-form affine: the
                                            # experiment=flyvis_recovery model)
    python bench/bench_flyvis.py recovery   # simulate + train + evaluate on a CPU-sized budget
    python bench/bench_flyvis.py readout    # today's read-outs of the snapshots that
                                            # `recovery --rec-snapshots` saved (same --rec-* arguments)
    python bench/bench_flyvis.py errors     # where W*'s error lies in the last snapshot (reads the answer)
    python bench/bench_flyvis.py clusters   # which learned feature limits cluster_accuracy (reads the answer)
    python bench/bench_flyvis.py vrest      # how exactly W must be known for V_rest (reads the answer)
    python bench/bench_flyvis.py memory     # peak memory of `python train.py` and of a 4-slot sweep
    python bench/bench_flyvis.py all

Every timing is the median of ``--repeats`` runs; ratios compare variants measured in the same run.
Prints the machine load (``os.getloadavg``) next to each figure. Single-threaded by default
(``--threads``) because the project machine's 2 cores are shared.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import yaml

from hydra_llm.schemas import plain
from hydra_llm.schemas.models import FlyvisModel
from hydra_llm.schemas.simulation import FlyvisSimulation, StimulusOptions
from hydra_llm.schemas.training import FlyvisTraining


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def bench_sim(extent: int, frames: int, repeats: int, noise: float) -> None:
    """Simulation speed with the default ground truth (the trained model) and, in the same run, with a
    random trained-like draw (the default before the trained model was shipped)."""
    from hydra_llm.simulation.flyvis.connectome import compile_connectome, load_spec
    from hydra_llm.simulation.flyvis.dynamics import FlyvisODE
    from hydra_llm.simulation.flyvis.parameters import random_trained_like, trained
    from hydra_llm.simulation.flyvis.stimuli import synthetic_sequence

    t0 = time.perf_counter()
    c = compile_connectome(load_spec(), extent)
    compile_s = time.perf_counter() - t0
    print(f"[sim] extent {extent}: {c.n_neurons} neurons, {c.n_edges} edges; compile {compile_s:.2f} s")
    families = ["moving_edge", "moving_bar", "grating", "flash", "white_noise"]
    stim = synthetic_sequence(c.columns, frames, 0.02, families, np.random.default_rng(0))
    for name, p in (
        ("trained", trained(c)),
        ("random_trained_like", random_trained_like(c, seed=0, dt=0.02)),
    ):
        ode = FlyvisODE.build(c, p.edge_weights(c), p.neuron_tau(c), p.neuron_V_rest(c), 0.02)
        V0 = ode.steady_state(2.0)
        rates = []
        for r in range(repeats):
            t0 = time.perf_counter()
            ode.run(stim, V0, noise, np.random.default_rng(r))
            rates.append(frames / (time.perf_counter() - t0))
        rate = statistics.median(rates)
        print(
            f"[sim] {name}: {frames} frames x {repeats}, noise {noise}: median {rate:,.0f} frames/s "
            f"(64,000 frames in {64000 / rate:.0f} s; target 1,000 frames/s -> x{rate / 1000:.2f}); {load()}"
        )


def train_step(model, opt, v: torch.Tensor, inp: torch.Tensor, dv: torch.Tensor) -> None:
    opt.zero_grad()
    loss = ((model(v, inp) - dv) ** 2).mean()
    loss.backward()
    opt.step()


def random_observations(extent: int, n_frames: int, gen: torch.Generator):
    """``Observations`` on the connectome at ``extent`` with random voltages, derivative and input
    (n_frames, N): what a step or a read-out costs does not depend on the values."""
    from hydra_llm.simulation.base import Observations
    from hydra_llm.simulation.flyvis.connectome import compile_connectome, load_spec

    c = compile_connectome(load_spec(), extent)
    T, N = n_frames, c.n_neurons
    return Observations(
        activity=torch.randn(T, N, generator=gen),
        derivative=torch.randn(T, N, generator=gen),
        dt=0.02,
        n_train_frames=T,
        edge_index=torch.from_numpy(np.stack([c.edge_src, c.edge_tgt])).long(),
        external_input=torch.rand(T, N, generator=gen),
    )


def step_time(
    obs, batch: int, repeats: int, steps: int, device: str, form: str, aggregation: str = "node"
) -> float:
    """Median seconds of one training step (``train_step``: forward, backward, Adam) of a fresh FlyvisGNN
    on ``batch`` frames of ``obs``, over ``repeats`` timings of ``steps`` steps after one untimed step."""
    from hydra_llm.models.flyvis_gnn import FlyvisGNN

    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    torch.manual_seed(0)
    model = FlyvisGNN(obs, asdict(FlyvisTraining()), aggregation=aggregation, update_form=form).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    idx = torch.randint(0, obs.activity.shape[0], (batch,), generator=torch.Generator().manual_seed(batch))
    v, dv, inp = (x[idx].to(device) for x in (obs.activity, obs.derivative, obs.external_input))
    train_step(model, opt, v, inp, dv)  # the first step allocates (and warms up a GPU): not timed
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(model, opt, v, inp, dv)
        sync()
        samples.append((time.perf_counter() - t0) / steps)
    return statistics.median(samples)


def bench_step(
    extent: int, batch: int, repeats: int, steps: int, device: str = "cpu", form: str = "joint"
) -> None:
    obs = random_observations(extent, 64, torch.Generator().manual_seed(0))
    times = {}
    for aggregation in ("node", "sparse", "edge"):
        times[aggregation] = step_time(obs, batch, repeats, steps, device, form, aggregation)
        print(
            f"[step] extent {extent}, batch {batch}, aggregation={aggregation}, update_form={form}, "
            f"{device}: {1e3 * times[aggregation]:.2f} ms/step"
        )
    print(
        f"[step] node-wise gather/index_add vs propagate with a CSR product: "
        f"x{times['sparse'] / times['node']:.2f}; vs per-edge: x{times['edge'] / times['node']:.1f} "
        f"(same run); {load()}"
    )


def bench_batch(
    extent: int, batches: list[int], repeats: int, steps: int, device: str = "cpu", form: str = "joint"
) -> None:
    """The node-wise training step against batch size, with torch's deterministic algorithms off and on
    (``trainer=gpu`` turns them on: ``index_add`` then runs its deterministic CUDA kernel)."""
    obs = random_observations(extent, 64, torch.Generator().manual_seed(0))
    before = torch.are_deterministic_algorithms_enabled()
    try:
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic, warn_only=True)
            base = None
            for batch in batches:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "index_add has no deterministic ..." on some builds
                    seconds = step_time(obs, batch, repeats, steps, device, form)
                base = base or seconds
                print(
                    f"[batch] extent {extent}, update_form={form}, {device}, deterministic={deterministic}: "
                    f"batch {batch} {1e3 * seconds:.2f} ms/step (x{seconds / base:.2f} batch {batches[0]}'s)"
                )
    finally:
        torch.use_deterministic_algorithms(before)
    print(f"[batch] {load()}")


def bench_record(extent: int, repeats: int, form: str) -> None:
    """One record of the R2 log (``ConnectivityR2Log``: the line read-out of W*, without the
    zero-drive pass of f where the code has that option) on an untrained model at ``extent``, 2,000
    random frames; the median of ``repeats`` after one untimed record."""
    import inspect

    from hydra_llm.evaluation.flyvis import NeuronRange, corrected_weights
    from hydra_llm.models.flyvis_gnn import FlyvisGNN

    obs = random_observations(extent, 2000, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = FlyvisGNN(obs, asdict(FlyvisTraining()), update_form=form).eval()
    span = NeuronRange.of(obs.activity)
    light = "zero_drive" in inspect.signature(corrected_weights).parameters
    kwargs = {"zero_drive": False} if light else {}
    corrected_weights(model, obs, span, **kwargs)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        corrected_weights(model, obs, span, **kwargs)
        samples.append(time.perf_counter() - t0)
    runs = ", ".join(f"{x:.2f}" for x in samples)
    print(
        f"[record] extent {extent}, update_form={form}, zero-drive pass {'skipped' if light else 'run'}: "
        f"{statistics.median(samples):.2f} s (runs: {runs}); {load()}"
    )


def least_squares_ceiling(obs, gt, max_frames: int = 20_000) -> float:
    """Identifiability reference: per-neuron least squares of the recorded dv/dt on the true functional
    form [relu(v_j) for the known inputs j, v_i, I_i, 1], scaled by the true tau, over the first
    ``max_frames`` training frames; returns the R2 (with the same |error| > 5 outlier rule) of those
    weights. A diagnostic loop over neurons, not a hot path: it gathers each neuron's columns in
    float32 and never copies the whole record."""
    from hydra_llm.evaluation.metrics import r2_slope
    from hydra_llm.simulation.base import IndexedInput

    n = min(obs.n_train_frames, max_frames)
    v, d = obs.activity[:n], obs.derivative[:n]
    inputs = obs.external_input
    if isinstance(inputs, IndexedInput):
        channel = dict(zip(inputs.neuron.tolist(), inputs.channel.tolist(), strict=True))
        values = inputs.values[:n]

        def input_of(i: int) -> np.ndarray:
            return values[:, channel[i]].double().numpy() if i in channel else np.zeros(n)
    else:

        def input_of(i: int) -> np.ndarray:
            return inputs[:n, i].double().numpy()

    src, tgt = obs.edge_index.numpy()
    tau, true = gt["tau"].double().numpy(), gt["W"].double().numpy()
    order = np.argsort(tgt, kind="stable")
    bounds = np.searchsorted(tgt[order], np.arange(obs.n_neurons + 1))
    est = np.zeros(len(src))
    for i in range(obs.n_neurons):
        e = order[bounds[i] : bounds[i + 1]]
        sources = torch.from_numpy(src[e]).long()
        x = np.column_stack(
            [
                np.maximum(v.index_select(1, sources).double().numpy(), 0),
                v[:, i].double().numpy(),
                input_of(i),
                np.ones(n),
            ]
        )
        est[e] = np.linalg.lstsq(x, d[:, i].double().numpy(), rcond=None)[0][: len(e)] * tau[i]
    keep = np.abs(est - true) <= 5.0
    return r2_slope(true[keep], est[keep])[0]


class Snapshots(pl.Callback):
    """The model's state dict every ``every`` training steps and at the end of training, as
    ``<folder>/step_<global step>.pt``, so that a read-out can be studied along training afterwards.
    An earlier run's snapshots in ``folder`` are removed first: ``readout`` reads every file there."""

    def __init__(self, folder: Path, every: int) -> None:
        self.folder, self.every, self.saved_step = folder, every, -1
        for old in folder.glob("step_*.pt"):
            old.unlink()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.saved_step != trainer.global_step:  # the last step may already be saved
            self.save(trainer, pl_module)

    def save(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.state_dict(), self.folder / f"step_{trainer.global_step:06d}.pt")
        self.saved_step = trainer.global_step


RECOVERY_OUT = Path("outputs") / "bench_flyvis_recovery"
# What the read-out of a model gives (`readout` prints these per snapshot); `recovery` adds the W
# oracles and the rollouts.
READOUT_METRICS = (
    "connectivity_R2",
    "tau_R2",
    "V_rest_R2",
    "V_rest_zero_drive_R2",
    "cluster_accuracy",
    "connectivity_R2_local",
    "tau_R2_local",
    "V_rest_R2_local",
    "V_rest_zero_drive_R2_local",
    "cluster_accuracy_local",
    "tau_clipped_fraction",
    "tau_clipped_fraction_local",
    "readout_agreement",
)
RECOVERY_METRICS = (
    *READOUT_METRICS,
    "cluster_accuracy_median",
    "cluster_accuracy_min",
    "cluster_accuracy_max",
    "connectivity_slope",
    "connectivity_R2_identity",
    "connectivity_R2_trimmed_oracle",
    "connectivity_outlier_fraction",
    "test_pearson",
    "test_R2",
    "test_pearson_ood",
    "test_R2_ood",
)


def recovery_data(
    extent: int, frames: int, noise: float, seed: int, stimulus: str, options: dict | None = None
):
    """The recovery bench's data module, set up: ``flyvis_synthetic`` (the schema's defaults) or, for
    ``stimulus="natural"``, ``flyvis_natural``'s stimulus, at ``extent`` with ``frames`` frames;
    ``options``: ``simulation.stimulus`` keys (``--rec-stim``)."""
    from hydra_llm.simulation.flyvis import FlyvisDataModule

    sim = plain(FlyvisSimulation())
    sim.pop("_target_")
    sim.update({"n_frames": frames, "noise_model_level": noise, "seed": seed, "n_ood_frames": 500})
    sim["connectome"]["extent"] = extent
    if stimulus == "natural":  # conf/simulation/flyvis_natural.yaml
        sim["stimulus"].update(
            source="natural", ood_families=["moving_edge", "moving_bar", "grating", "flash"]
        )
    sim["stimulus"].update(options or {})
    dm = FlyvisDataModule(**sim)
    dm.setup()
    return dm


def recovery_training(steps: int, batch: int, overrides: dict | None = None) -> dict:
    """``training=flyvis`` with ``batch`` and ``overrides`` (``--rec-set``); ``steps`` caps the epoch
    (0: the whole data_augmentation_loop)."""
    base = {**asdict(FlyvisTraining()), "max_steps_per_epoch": steps or None, "batch_size": batch}
    return {**base, **(overrides or {})}


def key_value(schema: type, group: str):
    """A parser of ``KEY=VALUE`` (``--rec-set lr_schedule=warmup_decay``) into a key of ``schema`` and its
    YAML value."""

    def parse(text: str) -> tuple[str, object]:
        key, sep, value = text.partition("=")
        if not sep or key not in asdict(schema()):
            raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE with KEY a {group} option")
        return key, yaml.safe_load(value)

    return parse


@dataclass(frozen=True)
class RecoveryRun:
    """A recovery run's ``--rec-*`` arguments: ``readout``, ``errors`` and ``clusters`` repeat them to read
    its snapshots (the data are simulated again, identically)."""

    extent: int
    frames: int
    steps: int
    noise: float
    batch: int
    seed: int
    stimulus: str = "synthetic"
    out: Path = RECOVERY_OUT
    overrides: dict = field(default_factory=dict)  # training=flyvis options (--rec-set)
    architecture: dict = field(default_factory=dict)  # model=flyvis_gnn options (--rec-model)
    stimulus_options: dict = field(default_factory=dict)  # simulation.stimulus options (--rec-stim)

    def __str__(self) -> str:
        options = "".join(f", {key}={value}" for key, value in self.stimulus_options.items())
        return (
            f"extent {self.extent}, {self.stimulus} stimuli{options}, {self.frames} frames, "
            f"noise {self.noise}, seed {self.seed}"
        )

    def data(self):
        return recovery_data(
            self.extent, self.frames, self.noise, self.seed, self.stimulus, self.stimulus_options
        )

    def model(self, dm):
        """A FlyvisGNN of the run's options, seeded as the run was."""
        from hydra_llm.models.flyvis_gnn import FlyvisGNN

        training = recovery_training(self.steps, self.batch, self.overrides)
        pl.seed_everything(training["seed"], verbose=False)
        return FlyvisGNN(dm.observations, training, **self.architecture)


def bench_recovery(
    run: RecoveryRun, reference: bool = True, snapshots: bool = False, init: Path | None = None
) -> None:
    """Simulate, train and evaluate; ``init``: start from a snapshot's state dict (a continuation; the
    optimiser's state and the regulariser annealing start afresh)."""
    from hydra_llm.evaluation.flyvis import ConnectivityR2Log, evaluate
    from hydra_llm.models.embedding_snap import EmbeddingSnap

    if init is not None and not init.is_file():
        raise SystemExit(f"--rec-init={init}: no such snapshot (a step_*.pt that --rec-snapshots saved)")
    out = run.out
    t0 = time.perf_counter()
    dm = run.data()
    sim_s = time.perf_counter() - t0
    model = run.model(dm)
    if init is not None:
        model.load_state_dict(torch.load(init, map_location="cpu"))
        print(f"[recovery] continuing from {init}")
    steps = model.steps_per_epoch
    every = max(1, steps // 10)
    callbacks = [ConnectivityR2Log(dm.observations, dm.ground_truth, out, every_n_steps=every)]
    if snapshots:
        callbacks.append(Snapshots(out / "snapshots", every))
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate(model, dm.observations, dm.ground_truth, out, rollout_frames=500)
    eval_s = time.perf_counter() - t0
    print(
        f"[recovery] {run} ({dm.observations.n_neurons} neurons), {steps} steps x batch {run.batch} on "
        f"{device_name(trainer.strategy.root_device)}; simulate {sim_s:.0f} s, train {fit_s:.0f} s "
        f"({1e3 * fit_s / steps:.1f} ms/step), evaluate {eval_s:.0f} s; {load()}"
    )
    for group, options in (("training", run.overrides), ("model", run.architecture)):
        if options:
            print(f"[recovery] {group} overrides: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    for snap in (c for c in trainer.callbacks if isinstance(c, EmbeddingSnap)):
        print("[recovery] embedding snaps (step, clusters): " + ", ".join(map(str, snap.snaps)))
    for key in RECOVERY_METRICS:
        print(f"[recovery] {key} = {metrics[key]:.4f}")
    if reference:
        ceiling = least_squares_ceiling(dm.observations, dm.ground_truth)
        print(f"[recovery] reference: least squares on the true functional form, R2 = {ceiling:.4f}")
    print("[recovery] R2 trajectory (epoch,iteration,connectivity_r2,phase):")
    print((out / "connectivity_r2.log").read_text().strip())


def true_feature_clusters(dm) -> float:
    """The evaluation's GMM clustering on the ground truth's own features (reads the answer)."""
    from hydra_llm.evaluation.flyvis import cluster_features, gmm_cluster_accuracy

    gt, obs = dm.ground_truth, dm.observations
    empty = torch.zeros(obs.n_neurons, 0)
    features = cluster_features(empty, gt["W"], gt["tau"], gt["V_rest"], obs.edge_index)
    return gmm_cluster_accuracy(features, gt["types"].numpy(), n_components=100, seed=42)


def snapshot_paths(out: Path) -> list[Path]:
    """The snapshots that ``recovery --rec-snapshots --rec-out out`` saved, in step order."""
    paths = sorted((out / "snapshots").glob("step_*.pt"))
    if not paths:
        raise SystemExit(f"no snapshots in {out / 'snapshots'}: run `recovery --rec-snapshots` first")
    return paths


def last_snapshot(run: RecoveryRun, dm=None):
    """``(path, dm, model)``: the last snapshot of a ``recovery --rec-snapshots`` run, loaded into the
    run's model in eval mode, with the run's data (simulated again unless ``dm`` is given; the snapshot
    is looked for first, so a missing one fails before any simulation)."""
    path = snapshot_paths(run.out)[-1]
    dm = dm if dm is not None else run.data()
    model = run.model(dm)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return path, dm, model.eval()


def bench_readout(run: RecoveryRun) -> None:
    """The read-outs of every snapshot that ``recovery --rec-snapshots`` saved with the same arguments
    (the data are simulated again, identically), with today's evaluation code."""
    from hydra_llm.evaluation.flyvis import evaluate

    paths = snapshot_paths(run.out)
    dm = run.data()
    model = run.model(dm)
    print(f"[readout] {run}")
    print(
        "[readout] cluster_accuracy of the same GMM on the true tau, V_rest and W statistics (no embedding; "
        f"an oracle reference for what the clustering can reach): {true_feature_clusters(dm):.3f}"
    )
    print("| step | " + " | ".join(READOUT_METRICS) + " |")
    print("|" + "---|" * (len(READOUT_METRICS) + 1))
    for path in paths:
        model.load_state_dict(torch.load(path, map_location="cpu"))
        metrics = evaluate(
            model,
            dm.observations,
            dm.ground_truth,
            run.out,
            rollout_frames=2,
            cluster_starts=1,
            make_plots=False,
        )
        step = int(path.stem.split("_")[1])
        print(f"| {step} | " + " | ".join(f"{metrics[k]:.3f}" for k in READOUT_METRICS) + " |", flush=True)


def bench_errors(run: RecoveryRun, top: int = 12) -> None:
    """Where the error of W* lies in the last snapshot of a ``recovery --rec-snapshots`` run: oracle
    variants of ``connectivity_R2`` and the type pairs that carry the squared error. A diagnostic that
    reads the answer (every figure but the first two is an oracle)."""
    from hydra_llm.evaluation.flyvis import NeuronRange, corrected_weights, visible_edges
    from hydra_llm.evaluation.metrics import r2_slope

    path, dm, model = last_snapshot(run)
    obs, gt = dm.observations, dm.ground_truth
    span = NeuronRange.of(obs.activity[: obs.n_train_frames])
    line = corrected_weights(model, obs, span)["line"]
    src, tgt = obs.edge_index
    w, est, tau = gt["W"].double(), line["W_star"].double(), gt["tau"].double()
    types, names = gt["types"].long(), gt.meta["type_names"]
    visible = visible_edges(span, obs.edge_index)
    per_tau = est / line["tau_hat"].double()[tgt]
    num = torch.zeros(obs.n_neurons, dtype=torch.float64).index_add_(0, tgt, est * w)
    den = torch.zeros(obs.n_neurons, dtype=torch.float64).index_add_(0, tgt, est * est).clamp(min=1e-12)
    print(f"[errors] {path}: {run}")
    every, loop = torch.ones_like(visible), src == tgt
    for label, estimate, keep in (
        ("connectivity_R2 (every edge)", est, every),
        (f"on the visible edges ({float(visible.double().mean()):.4f} of them)", est, visible),
        ("oracle: W* = w on visible edges, 0 on the others (the stimulus's ceiling)", w * visible, every),
        ("oracle: the true tau in W* = W g slope_psi tau", per_tau * tau[tgt], every),
        ("oracle: one best scale per target neuron", est * (num / den)[tgt], every),
        (f"every edge but the {int(loop.sum())} self-loops", est, ~loop),
    ):
        r2 = r2_slope(w[keep], estimate[keep])[0]
        print(f"[errors] {label}: R2 = {r2:.4f}")
    err = (est - w) ** 2
    total = float(err.sum())
    same = types[src] == types[tgt]
    print(
        f"[errors] share of the squared error: self-loops {float(err[loop].sum()) / total:.3f}; "
        f"invisible edges {float(err[~visible].sum()) / total:.3f}, "
        f"visible same-type edges {float(err[visible & same].sum()) / total:.3f}, "
        f"other visible edges {float(err[visible & ~same].sum()) / total:.3f}"
    )
    n_types = len(names)
    pair = types[src] * n_types + types[tgt]
    share = torch.zeros(n_types * n_types, dtype=torch.float64).index_add_(0, pair, err) / total
    print(
        "| source -> target | edges | share of squared error | w mean (sd) | W* mean (sd) | visible | "
        "source relu(v) std (median) | target tau |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for p in share.argsort(descending=True)[:top].tolist():
        edges = pair == p
        a, b = divmod(p, n_types)
        print(
            f"| {names[a]} -> {names[b]} | {int(edges.sum())} | {float(share[p]):.3f} | "
            f"{float(w[edges].mean()):+.3f} ({float(w[edges].std()):.3f}) | "
            f"{float(est[edges].mean()):+.3f} ({float(est[edges].std()):.3f}) | "
            f"{float(visible[edges].double().mean()):.2f} | "
            f"{float(span.relu_std[src[edges]].median()):.3f} | "
            f"{float(tau[tgt[edges]].median()):.3f} |"
        )


CLUSTER_SETS = (
    "a",
    "tau",
    "V_rest",
    "W",
    "tau V_rest",
    "tau V_rest W",
    "a tau V_rest W",
)


def bench_clusters(run: RecoveryRun, gmm_seeds: int = 8) -> None:
    """What limits ``cluster_accuracy`` in the last snapshot of a ``recovery --rec-snapshots`` run: the
    evaluation's GMM on subsets of the headline read-out's features (a: the embedding; W: the mean and
    std of W* into and out of each neuron), on the true ones, and on the learned ones with one quantity
    replaced by the truth; then the headline features under GMM seeds 0 .. ``gmm_seeds`` - 1 and 42
    (the evaluation's), one start each, and under ten starts of which the GMM keeps the likeliest. A
    diagnostic that reads the answer (every row but the learned ones is an oracle); the original plots
    the same subsets."""
    from hydra_llm.evaluation.flyvis import (
        READOUTS,
        NeuronRange,
        cluster_features,
        corrected_weights,
        gmm_cluster_accuracy,
        gmm_fit,
        gmm_starts,
    )
    from hydra_llm.evaluation.metrics import cluster_accuracy

    path, dm, model = last_snapshot(run)
    obs, gt = dm.observations, dm.ground_truth
    readouts = corrected_weights(model, obs, NeuronRange.of(obs.activity[: obs.n_train_frames]))
    embedding = model.a.detach()

    def features(readout: str, v_rest: str = "V_rest_hat") -> np.ndarray:
        values = readouts[readout]
        return cluster_features(
            embedding, values["W_star"], values["tau_hat"], values[v_rest], obs.edge_index
        )

    learned = features("line")
    true = cluster_features(embedding, gt["W"], gt["tau"], gt["V_rest"], obs.edge_index)
    k = embedding.shape[1]
    columns = {"a": list(range(k)), "tau": [k], "V_rest": [k + 1], "W": list(range(k + 2, k + 6))}
    types = gt["types"].numpy()

    def accuracy(parts: list[tuple[np.ndarray, str]], seed: int = 42) -> float:
        x = np.concatenate([source[:, columns[name]] for source, name in parts], axis=1)
        return gmm_cluster_accuracy(x, types, n_components=100, seed=seed)

    print(f"[clusters] {path}: {run}")
    print("| features | learned | true (oracle) | learned, this one true (oracle) |")
    print("|---|---|---|---|")
    for names in CLUSTER_SETS:
        parts = names.split()
        truth = "-" if "a" in parts else f"{accuracy([(true, n) for n in parts]):.3f}"
        swaps = " / ".join(
            f"{n} {accuracy([(true if m == n else learned, m) for m in parts]):.3f}"
            for n in parts
            if n != "a"
        )
        own = accuracy([(learned, n) for n in parts])
        print(f"| {names} | {own:.3f} | {truth} | {swaps if len(parts) > 1 else '-'} |", flush=True)
    every = CLUSTER_SETS[-1].split()
    headline = np.concatenate([learned[:, columns[n]] for n in every], axis=1)
    seeds = [*range(gmm_seeds), 42]
    starts = gmm_starts(headline, types, 100, seeds)
    for seed, (acc, bound) in zip(seeds, starts, strict=True):
        print(f"[clusters] headline features, GMM seed {seed}, 1 start: {acc:.3f} (bound {bound:.4f})")
    spread = statistics.median(acc for acc, _ in starts[:gmm_seeds])
    print(f"[clusters] GMM seeds 0-{gmm_seeds - 1}, one start: median {spread:.3f}")
    for seed in range(3):
        labels, bound = gmm_fit(headline, 100, seed, n_init=10)  # the likeliest of ten starts
        acc = cluster_accuracy(types, labels)
        print(f"[clusters] headline features, GMM seed {seed}, 10 starts: {acc:.3f} (bound {bound:.4f})")
    for readout in READOUTS:
        for v_rest in ("V_rest_hat", "V_rest_zero_drive_hat"):
            if (readout, v_rest) == ("line", "V_rest_hat"):
                continue  # the table's last learned cell
            other = accuracy([(features(readout, v_rest), n) for n in every])
            print(
                f"[clusters] headline features from the {readout} read-out, V_rest from {v_rest}: {other:.3f}"
            )
    with_truth = [(learned, "a")] + [(true, n) for n in every[1:]]
    print(f"[clusters] learned embedding, true tau, V_rest and W (oracle): {accuracy(with_truth):.3f}")


def mean_input(inputs, n: int, chunk: int = 1024) -> torch.Tensor:
    """(N,) mean external input over the first ``n`` frames, a chunk of frames at a time."""
    total = torch.zeros(inputs.shape[1], dtype=torch.float64)
    for start in range(0, n, chunk):
        total += inputs[start : min(start + chunk, n)].double().sum(0)
    return total / n


def bench_vrest(run: RecoveryRun, repeats: int) -> None:
    """How exactly W must be known for V_rest to be read out: the balance of the record
    ``V_rest_i = mean_t(v_i + tau_i dv_i/dt - sum_j w_ij relu(v_j) - I_i)`` with the true tau and the
    true W (the record's ceiling), then with W plus independent per-edge noise scaled to a given
    connectivity R2 (median over ``repeats`` draws); and, where ``recovery --rec-snapshots`` saved
    snapshots, with the last one's W* and tau, and with the true w put on the edges from the most tonic
    sources (or at random). A diagnostic that reads the answer."""
    from hydra_llm.evaluation.metrics import r2_slope

    dm = run.data()
    obs, gt = dm.observations, dm.ground_truth
    n = obs.n_train_frames
    sums = torch.zeros(3, obs.n_neurons, dtype=torch.float64)  # v, relu(v), dv/dt
    for start in range(0, n, 1024):
        v = obs.activity[start : min(start + 1024, n)].double()
        dv = obs.derivative[start : min(start + 1024, n)].double()
        sums += torch.stack([v.sum(0), v.clamp(min=0).sum(0), dv.sum(0)])
    mean_v, relu_mean, mean_dv = sums / n
    input_mean = mean_input(obs.external_input, n)
    base = mean_v + gt["tau"].double() * mean_dv - input_mean
    src, tgt = obs.edge_index
    V, W = gt["V_rest"].double(), gt["W"].double()

    def drive(weights: torch.Tensor) -> torch.Tensor:
        return torch.zeros(obs.n_neurons, dtype=torch.float64).index_add_(0, tgt, weights * relu_mean[src])

    print(
        f"[vrest] {run} ({obs.n_neurons} neurons): V_rest std {float(V.std()):.3f}, "
        f"std of the mean synaptic drive {float(drive(W).std()):.3f}"
    )
    print(f"[vrest] true W: V_rest_R2 = {r2_slope(V, base - drive(W))[0]:.4f}")
    generator = torch.Generator().manual_seed(run.seed)
    for target in (0.9, 0.95, 0.98, 0.99, 0.995, 0.999):
        sd = float(W.std()) * ((1 - target) / target) ** 0.5
        r2s, conn = [], []
        for _ in range(repeats):
            noisy = W + sd * torch.randn(W.shape, generator=generator, dtype=torch.float64)
            conn.append(r2_slope(W, noisy)[0])
            r2s.append(r2_slope(V, base - drive(noisy))[0])
        print(
            f"[vrest] W with per-edge noise, connectivity_R2 {statistics.median(conn):.3f}: "
            f"V_rest_R2 = {statistics.median(r2s):.3f} (median of {repeats})"
        )
    if not list((run.out / "snapshots").glob("step_*.pt")):
        return
    from hydra_llm.evaluation.flyvis import NeuronRange, corrected_weights

    path, _, model = last_snapshot(run, dm)
    span = NeuronRange.of(obs.activity[:n])
    line = corrected_weights(model, obs, span)["line"]
    W_star, tau_hat, tau = line["W_star"].double(), line["tau_hat"].double(), gt["tau"].double()
    learned_base = mean_v + tau_hat * mean_dv - input_mean
    learned = learned_base - drive(W_star)
    print(
        f"[vrest] the balance with {path}'s W* and tau (learned quantities only; connectivity_R2 "
        f"{r2_slope(W, W_star)[0]:.3f}): V_rest_R2 = {r2_slope(V, learned)[0]:.3f}"
    )
    rescaled = W_star / tau_hat[tgt] * tau[tgt]  # W* = W g slope_psi tau with the true tau
    print(
        f"[vrest] the same with the true tau in W* and in the balance (oracle; connectivity_R2 "
        f"{r2_slope(W, rescaled)[0]:.3f}): V_rest_R2 = {r2_slope(V, base - drive(rescaled))[0]:.3f}"
    )
    for side, ends in (("target's incoming", tgt), ("source's outgoing", src)):
        scaled = rescaled * per_neuron_scale(rescaled, W, ends, obs.n_neurons)[ends]
        print(
            f"[vrest] the same, and each {side} W* scaled by its least-squares factor to the true w "
            f"(oracle; connectivity_R2 {r2_slope(W, scaled)[0]:.3f}): "
            f"V_rest_R2 = {r2_slope(V, base - drive(scaled))[0]:.3f}"
        )
    # A source that sits above 0 and barely moves sends a large mean drive, which V_rest must be told
    # from, through a weight that its small fluctuations fix poorly.
    tonic = (relu_mean / span.relu_std.double().clamp(min=1e-6))[src]
    shuffled = torch.rand(tonic.shape, generator=generator, dtype=torch.float64)
    print("[vrest] the balance with W* and tau learned, and the true w on a fraction of the edges (oracle):")
    print("| edges given the true w | most tonic sources first (mean / std of relu(v_j)) | at random |")
    print("|---|---|---|")
    for fraction in (0.05, 0.1, 0.2, 0.4):
        row = []
        for order in (tonic, shuffled):
            given = order.argsort(descending=True)[: int(fraction * len(order))]
            mixed = W_star.clone()
            mixed[given] = W[given]
            row.append(r2_slope(V, learned_base - drive(mixed))[0])
        print(f"| {fraction:.0%} | {row[0]:.3f} | {row[1]:.3f} |")


def per_neuron_scale(learned: torch.Tensor, true: torch.Tensor, ends: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) the factor r_k that best maps the learned weights (E,) at each neuron k onto the true ones,
    ``sum_e true_e learned_e / sum_e learned_e^2`` over the edges with ``ends[e] == k`` (1 where none)."""
    num = torch.zeros(n, dtype=learned.dtype).index_add_(0, ends, true * learned)
    den = torch.zeros(n, dtype=learned.dtype).index_add_(0, ends, learned * learned)
    return torch.where(den > 0, num / den.clamp(min=1e-30), torch.ones_like(num))


def _proc_kb(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """Fields of /proc/<pid>/status in kB (0 for a process that has gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            rows = dict(line.split(":", 1) for line in fh if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return dict.fromkeys(keys, 0)
    return {k: int(rows.get(k, "0 kB").split()[0]) for k in keys}


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                todo += [int(c) for c in task.read_text().split()]
    return out


def _system_used_kb() -> int:
    """MemTotal - MemAvailable: memory the system could not hand to a new process."""
    rows = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(rows["MemTotal"].split()[0]) - int(rows["MemAvailable"].split()[0])


def _watch(cmd: list[str], log_path: Path) -> dict[str, float]:
    """Run ``cmd``; every 0.2 s sum VmRSS and RssAnon over its process tree and read the system's
    used memory. Returns the peaks in GB (used: above the level before the start) and the wall time."""
    peaks = {"rss": 0, "anon": 0, "used": 0}
    base = _system_used_kb()
    t0 = time.perf_counter()
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            rows = [_proc_kb(p, ("VmRSS", "RssAnon")) for p in _tree(proc.pid)]
            peaks["rss"] = max(peaks["rss"], sum(r["VmRSS"] for r in rows))
            peaks["anon"] = max(peaks["anon"], sum(r["RssAnon"] for r in rows))
            peaks["used"] = max(peaks["used"], _system_used_kb() - base)
            time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"[memory] {' '.join(cmd)} failed ({proc.returncode}); see {log_path}")
    return {k: v / 1e6 for k, v in peaks.items()} | {"wall_s": time.perf_counter() - t0}


def bench_memory(extent: int, frames: int, steps: int, slots: int) -> None:
    """Peak memory of the real entry point at ``extent`` with ``frames`` frames (simulate + train
    ``steps`` steps + evaluate, fresh cache), alone and as a ``slots``-slot joblib sweep of seeds that
    share one simulation."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="bench_flyvis_memory_"))
    common = [
        "simulation=flyvis_synthetic",
        f"simulation.connectome.extent={extent}",
        f"simulation.n_frames={frames}",
        f"training.max_steps_per_epoch={steps}",
        "logger=none",
    ]
    python = [sys.executable, str(Path(__file__).resolve().parents[1] / "train.py")]
    single = _watch(
        python + common + [f"paths.cache_dir={work}/cache1", f"hydra.run.dir={work}/single"],
        work / "single.log",
    )
    print(
        f"[memory] one run, extent {extent}, {frames:,} frames, {steps} steps: "
        f"peak RSS {single['rss']:.2f} GB "
        f"(private {single['anon']:.2f} GB), system used +{single['used']:.2f} GB; {single['wall_s']:.0f} s; "
        f"{load()}"
    )
    if slots < 1:
        return
    seeds = ",".join(str(s) for s in range(1, slots + 1))
    sweep = _watch(
        python
        + ["-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={slots}", f"training.seed={seeds}"]
        + common
        + [f"paths.cache_dir={work}/cache{slots}", f"hydra.sweep.dir={work}/sweep"],
        work / "sweep.log",
    )
    print(
        f"[memory] {slots}-slot joblib sweep, same settings: summed RSS {sweep['rss']:.2f} GB "
        f"(private {sweep['anon']:.2f} GB), system used +{sweep['used']:.2f} GB; {sweep['wall_s']:.0f} s; "
        f"{load()}"
    )
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what",
        choices=[
            "sim",
            "step",
            "batch",
            "record",
            "recovery",
            "readout",
            "errors",
            "clusters",
            "vrest",
            "memory",
            "all",
        ],
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sim-extent", type=int, default=8)
    parser.add_argument("--sim-frames", type=int, default=4000)
    parser.add_argument("--step-extent", type=int, default=8)
    parser.add_argument("--step-batch", type=int, default=4)
    parser.add_argument("--step-batches", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--step-iters", type=int, default=3)
    parser.add_argument("--step-device", default="cpu", help="cpu, or cuda for a GPU's step time")
    parser.add_argument("--step-form", choices=["joint", "separable", "affine"], default="joint")
    parser.add_argument("--rec-extent", type=int, default=1)
    parser.add_argument("--rec-frames", type=int, default=20000)
    parser.add_argument(
        "--rec-steps", type=int, default=15000, help="0: the whole data_augmentation_loop (training=flyvis)"
    )
    parser.add_argument("--rec-batch", type=int, default=4)
    parser.add_argument("--rec-noise", type=float, default=0.05)
    parser.add_argument("--rec-stimulus", choices=["synthetic", "natural"], default="synthetic")
    parser.add_argument(
        "--rec-reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also fit the least-squares reference (about 25 min at extent 8)",
    )
    parser.add_argument(
        "--rec-snapshots",
        action="store_true",
        help="save the model's state dict at every R2 log point (<--rec-out>/snapshots)",
    )
    parser.add_argument(
        "--rec-out", type=Path, default=RECOVERY_OUT, help="folder of the run's logs, plots and snapshots"
    )
    options = (
        ("--rec-set", FlyvisTraining, "training=flyvis", "lr_schedule=constant"),
        ("--rec-model", FlyvisModel, "model=flyvis_gnn", "learn_autapses=false"),
        ("--rec-stim", StimulusOptions, "simulation.stimulus", "blank_s=[0.2,0.5]"),
    )
    for flag, schema, group, example in options:
        parser.add_argument(
            flag,
            type=key_value(schema, group),
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"a {group} option for recovery, readout, errors and clusters (repeatable): {example}",
        )
    parser.add_argument(
        "--rec-init",
        type=Path,
        help="recovery: start from this snapshot (a continuation; e.g. at lower --rec-set rates)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mem-extent", type=int, default=8)
    parser.add_argument("--mem-frames", type=int, default=64000)
    parser.add_argument("--mem-steps", type=int, default=200)
    parser.add_argument("--mem-slots", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.what in ("sim", "all"):
        bench_sim(args.sim_extent, args.sim_frames, args.repeats, 0.05)
    if args.what in ("step", "all"):
        bench_step(
            args.step_extent, args.step_batch, args.repeats, args.step_iters, args.step_device, args.step_form
        )
    if args.what == "batch":
        bench_batch(
            args.step_extent,
            args.step_batches,
            args.repeats,
            args.step_iters,
            args.step_device,
            args.step_form,
        )
    if args.what == "record":
        bench_record(args.step_extent, args.repeats, args.step_form)
    run = RecoveryRun(
        args.rec_extent,
        args.rec_frames,
        args.rec_steps,
        args.rec_noise,
        args.rec_batch,
        args.seed,
        args.rec_stimulus,
        args.rec_out,
        dict(args.rec_set),
        dict(args.rec_model),
        dict(args.rec_stim),
    )
    if args.what in ("recovery", "all"):
        bench_recovery(run, args.rec_reference, args.rec_snapshots, args.rec_init)
    if args.what == "readout":
        bench_readout(run)
    if args.what == "errors":
        bench_errors(run)
    if args.what == "clusters":
        bench_clusters(run)
    if args.what == "vrest":
        bench_vrest(run, args.repeats)
    if args.what in ("memory", "all"):
        bench_memory(args.mem_extent, args.mem_frames, args.mem_steps, args.mem_slots)


if __name__ == "__main__":
    main()
