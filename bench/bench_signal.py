"""Signal regime throughput: simulation, training steps, and node-wise vs per-edge aggregation.

Usage::

    python bench/bench_signal.py              # N = 100 and N = 1000 (1M edges), 1 thread
    python bench/bench_signal.py --threads 2 --repeats 7

Prints a table of medians over ``--repeats`` runs. The aggregation rows compare, in the same run and
on the same inputs, ``msg = psi(u_j, a_j)`` evaluated once per neuron followed by a matrix product
(what the model does) against torch-geometric's per-edge ``MessagePassing`` (psi once per edge).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from hydra_llm.models.layers import EdgeMessagePassing
from hydra_llm.models.signal_gnn import SignalGNN
from hydra_llm.simulation.signal import SignalDataModule

TRAINING = dict(
    n_epochs=1,
    batch_size=8,
    data_augmentation_loop=1,
    learning_rate_W_start=2e-3,
    learning_rate_start=1e-3,
    learning_rate_embedding_start=3e-3,
    coeff_W_L1=1e-5,
    coeff_edge_diff=100.0,
    coeff_edge_norm=1.0,
    coeff_phi_zero=1.0,
    seed=0,
)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def simulation_rate(n: int, n_frames: int, repeats: int) -> float:
    """Recorded frames per second of :meth:`SignalDataModule.simulate` (burn-in not counted)."""

    def once():
        return SignalDataModule(n_neurons=n, n_frames=n_frames, burn_in_frames=0, seed=1).simulate()

    return n_frames / median_seconds(once, repeats, warmup=0)


def training_rate(model: SignalGNN, observations, n_steps: int, repeats: int) -> float:
    """Optimizer steps per second (loss with all regularisers, backward, fused Adam)."""
    optimizer = model.configure_optimizers()
    gen = torch.Generator().manual_seed(0)
    batch = int(TRAINING["batch_size"])

    def steps():
        for _ in range(n_steps):
            idx = torch.randint(0, observations.n_train_frames, (batch,), generator=gen)
            loss = torch.stack(
                list(model.losses(observations.activity[idx], observations.derivative[idx]).values())
            )
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()

    return n_steps / median_seconds(steps, repeats)


@torch.no_grad()
def aggregation_times(model: SignalGNN, u: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Seconds per forward of the node-wise aggregation and of the per-edge oracle; max abs difference."""
    n = model.n_neurons
    dense = model.learned_W()
    edges = (
        torch.stack(torch.nonzero(dense, as_tuple=True)[::-1])
        if model.use_edges
        else torch.stack(torch.nonzero(~torch.eye(n, dtype=torch.bool), as_tuple=True)[::-1])
    )
    weight = dense[edges[1], edges[0]]
    layer = EdgeMessagePassing(lambda feats: model.psi(feats))

    def node_wise():
        return model.aggregate(model.psi_of(u))

    def per_edge():
        return layer(model._features(u).permute(1, 0, 2), edges, weight).T

    diff = float((node_wise() - per_edge()).abs().max())
    return median_seconds(node_wise, repeats), median_seconds(per_edge, repeats), diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, threads {args.threads}, repeats {args.repeats}, load(1 min) {load:.2f}"
    )
    rows = []
    for n in args.sizes:
        n_frames = 2000 if n <= 200 else 500
        rows.append(
            (
                f"simulate N={n} ({n * (n - 1):,} edges)",
                f"{simulation_rate(n, n_frames, args.repeats):,.0f} frames/s",
            )
        )
        dm = SignalDataModule(n_neurons=n, n_frames=400, burn_in_frames=100, seed=1)
        dm.setup("fit")
        model = SignalGNN(dm.observations, TRAINING)
        with torch.no_grad():
            model.W.normal_(0, 1.0)
        n_steps = 200 if n <= 200 else 30
        rows.append(
            (
                f"train step N={n} dense W, batch 8",
                f"{training_rate(model, dm.observations, n_steps, args.repeats):,.1f} steps/s",
            )
        )
        u = dm.observations.activity[:1]
        node, edge, diff = aggregation_times(model, u, args.repeats)
        rows.append((f"aggregate N={n}, 1 frame: node-wise psi + matmul", f"{node * 1e3:,.3f} ms"))
        rows.append((f"aggregate N={n}, 1 frame: per-edge MessagePassing", f"{edge * 1e3:,.3f} ms"))
        rows.append((f"  speed-up node-wise vs per-edge (max |diff| {diff:.1e})", f"{edge / node:,.1f}x"))
        if n >= 1000:
            sparse = SignalDataModule(
                n_neurons=n,
                n_frames=400,
                burn_in_frames=100,
                seed=1,
                connectivity_filling_factor=0.1,
                structure_known=True,
            )
            sparse.setup("fit")
            model = SignalGNN(sparse.observations, TRAINING)
            with torch.no_grad():
                model.W.normal_(0, 1.0)
            n_edges = sparse.observations.edge_index.shape[1]
            rate = training_rate(model, sparse.observations, n_steps, args.repeats)
            rows.append((f"train step N={n} known edges ({n_edges:,}), batch 8", f"{rate:,.1f} steps/s"))
            node, edge, diff = aggregation_times(model, sparse.observations.activity[:1], args.repeats)
            rows.append(
                (f"aggregate N={n} {n_edges:,} known edges: node-wise sparse", f"{node * 1e3:,.3f} ms")
            )
            rows.append((f"aggregate N={n} {n_edges:,} known edges: per-edge MP", f"{edge * 1e3:,.3f} ms"))
            rows.append((f"  speed-up node-wise vs per-edge (max |diff| {diff:.1e})", f"{edge / node:,.1f}x"))
    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  result")
    print("-" * (width + 20))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
