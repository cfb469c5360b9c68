"""How rich are the signal presets' dynamics? Prints, per preset and network seed, the effective
dimension and the largest Lyapunov exponent of the simulated activity (no training).

    .venv/bin/python bench/signal_dynamics.py [--seeds 0 1 2 3 42] [--presets signal_dale ...]
                                              [--set gain=16.0 ...]

* ``PR``: participation ratio ``(sum l)^2 / sum l^2`` of the eigenvalues l of the covariance of
  tanh(u) over the training frames -- how many directions the GNN's message inputs explore.
* ``late_std``: mean over neurons of the std of u over the last 2000 frames (~0: a fixed point).
* ``lyap``: largest Lyapunov exponent (1/time unit): two trajectories 1e-8 apart, renormalised every
  100 steps over 2000 steps from the last recorded state. > 0.1: chaotic; ~0 or < 0: cycle or
  fixed point. The GNN needs the first two to be large to separate the columns of W.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def lyapunov(dm, W, tau, s, g, u0: torch.Tensor, blocks: int = 20, steps: int = 100) -> float:
    """Largest Lyapunov exponent (1/time) of the noise-free ODE from ``u0`` (N,)."""
    gen = torch.Generator().manual_seed(0)
    d0 = 1e-8
    v = torch.randn(u0.shape[0], generator=gen, dtype=torch.float64)
    a, b = u0.clone(), u0 + d0 * v / v.norm()
    log_growth = 0.0
    for _ in range(blocks):
        for _ in range(steps):
            a = a + dm.delta_t * (-a / tau + s * torch.tanh(a) + g * (W @ torch.tanh(a)))
            b = b + dm.delta_t * (-b / tau + s * torch.tanh(b) + g * (W @ torch.tanh(b)))
        dist = float((b - a).norm())
        log_growth += math.log(dist / d0)
        b = a + (b - a) * (d0 / dist)
    return log_growth / (blocks * steps * dm.delta_t)


def richness(preset: str, seed: int, extra: list[str]) -> dict[str, float]:
    """PR, late_std and lyap of one preset and network seed (noise-free, whatever the preset says)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"simulation={preset}", f"simulation.seed={seed}", *extra])
    dm = instantiate(cfg.simulation, cache_dir=None)
    obs, truth = dm.simulate()
    W = truth["W"].double()
    tau, s, g = (truth[k].double() for k in ("tau", "s", "gain"))
    activity = obs.activity.double()
    phi = torch.tanh(activity[: obs.n_train_frames])
    eig = torch.linalg.eigvalsh(torch.cov(phi.T)).clamp(min=0)
    return {
        "PR": float(eig.sum() ** 2 / (eig**2).sum()),
        "late_std": float(activity[-2000:].std(0).mean()),
        "lyap": lyapunov(dm, W, tau, s, g, activity[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["signal_chaotic", "signal_dale", "signal_low_rank"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 42])
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. simulation.gain=16.0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    extra = [o if o.startswith("simulation.") else f"simulation.{o}" for o in args.set]
    print(f"{'preset':18s} {'seed':>5s} {'PR':>6s} {'late_std':>9s} {'lyap':>7s}")
    for preset in args.presets:
        for seed in args.seeds:
            r = richness(preset, seed, extra)
            print(f"{preset:18s} {seed:5d} {r['PR']:6.1f} {r['late_std']:9.3f} {r['lyap']:7.3f}", flush=True)


if __name__ == "__main__":
    main()
