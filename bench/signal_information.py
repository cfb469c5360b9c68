"""How much does a signal record say about W (and tau)? Least squares on the true form, per frame count.

    .venv/bin/python bench/signal_information.py --set n_neurons=1000 n_frames=20000 \
        measurement_noise_level=0.1 smoothing_window=auto [--seeds 42 1] [--frames 2000 4000 8000 16000]
        [--free-self]

For each network seed it simulates the preset (with whatever measurement noise and smoothing the
overrides give), then fits, from the first K training frames of what training sees (``activity`` and
``derivative``), the one unknown of the true dynamics that is linear:

    derivative_i + activity_i / tau_i - s_i tanh(activity_i) = g_i sum_j W_ij tanh(activity_j)

with the true tau, s and g. One least-squares solve over all neurons (the regressors tanh(u_j) are
shared), then ``connectivity_R2`` (slope fit, all N^2 entries, as the evaluation reports it) of the fit
against the true W. This is an ``_oracle`` reference: it borrows the answer's functional form and
per-neuron constants. It is not a bound (a model with a prior on W can read more), but where it reads
W exactly, a GNN far below it is limited by its training, not by the record.

``--free-self`` leaves the self term to the fit as well: per neuron, ``derivative_i`` on ``activity_i``
(coefficient ``-1/tau_i``), ``tanh(activity_i)`` (``s_i``) and every ``tanh(activity_j)`` (``g_i W_ij``),
with only g given. Each cell is then ``connectivity_R2 / tau_R2 / e``, where e is the median over
neurons of the fraction of ``activity_i``'s energy (sum of squares) that no combination of the
``tanh(activity_j)``, its own included, explains. The messages can mimic the rest of the decay term,
so the decay is read from that fraction alone: its error grows as 1/sqrt(e) under noise, and the loss
is about 1/e times flatter along it than it would be if the decay stood apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from hydra_llm.evaluation.metrics import r2_slope
from hydra_llm.simulation.base import GroundTruth

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def least_squares_W(activity: torch.Tensor, derivative: torch.Tensor, truth: GroundTruth) -> torch.Tensor:
    """W (N, N) fitted from ``activity`` and ``derivative`` (K, N) with the true tau, s and g (N,)."""
    u, du = activity.double(), derivative.double()
    tau, s, g = (truth[k].double() for k in ("tau", "s", "gain"))
    phi = torch.tanh(u)
    target = du + u / tau - s * phi  # (K, N) = g * phi @ W.T
    W_t = torch.linalg.lstsq(phi, target).solution  # (N, N): column i holds g_i W_i.
    return (W_t / g).T


def least_squares_free_self(
    activity: torch.Tensor, derivative: torch.Tensor, truth: GroundTruth
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W (N, N), tau (N,) and e (N,) fitted with the self term free and the true g (N,).

    Per neuron i: ``derivative_i ~ c_i activity_i + tanh(activity) @ w_i``. One least-squares solve of
    every ``activity_i`` and ``derivative_i`` on the shared ``tanh(activity)``, then the extra column
    ``activity_i`` by elimination (Frisch-Waugh), so all N fits cost about one.
    """
    u, du = activity.double(), derivative.double()
    phi = torch.tanh(u)
    n = u.shape[1]
    along = torch.linalg.lstsq(phi, torch.cat([u, du], dim=1)).solution  # (N, 2N)
    along_u, along_du = along[:, :n], along[:, n:]
    u_left = u - phi @ along_u  # the part of each u_i that no tanh(u_j) explains
    du_left = du - phi @ along_du
    left_energy = (u_left * u_left).sum(0)
    c = (u_left * du_left).sum(0) / left_energy
    w = along_du - along_u * c  # (N, N): column i holds g_i W_i, its diagonal s_i
    W = (w / truth["gain"].double()).T
    W.fill_diagonal_(0.0)
    return W, -1.0 / c, left_energy / (u * u).sum(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="signal_chaotic")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--frames", nargs="+", type=int, default=[2000, 4000, 8000, 16000])
    parser.add_argument("--set", nargs="*", default=[], help="simulation overrides, e.g. n_neurons=1000")
    parser.add_argument("--cache", default=None, help="the simulation cache folder (none: simulate)")
    parser.add_argument("--free-self", action="store_true", help="fit tau and s too (see the docstring)")
    args = parser.parse_args()
    extra = [o if o.startswith("simulation.") else f"simulation.{o}" for o in args.set]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        base = compose("train", overrides=[f"simulation={args.preset}", *extra])
    print(f"{args.preset} {' '.join(extra)}")
    width = 23 if args.free_self else 9
    print(f"{'seed':>5s} {'window':>6s} " + " ".join(f"{f'K={k}':>{width}s}" for k in args.frames))
    for seed in args.seeds:
        dm = instantiate(base.simulation, seed=seed, cache_dir=args.cache)
        obs, truth = dm.simulate()
        cells = []
        for k in args.frames:
            if k > obs.n_train_frames:
                cells.append(f"{'-':>{width}s}")
                continue
            if args.free_self:
                W_hat, tau_hat, unexplained = least_squares_free_self(
                    obs.activity[:k], obs.derivative[:k], truth
                )
                cell = (
                    f"{r2_slope(truth['W'], W_hat)[0]:.4f} / {r2_slope(truth['tau'], tau_hat)[0]:.4f}"
                    f" / {unexplained.median():.1e}"
                )
                cells.append(f"{cell:>{width}s}")
            else:
                W_hat = least_squares_W(obs.activity[:k], obs.derivative[:k], truth)
                cells.append(f"{r2_slope(truth['W'], W_hat)[0]:9.4f}")
        print(f"{seed:5d} {obs.smoothing_window:6d} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
