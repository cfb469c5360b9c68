"""How good is ``simulation.smoothing_window=auto``? Records of the signal and metabolism regimes, with
measurement noise added at several levels; for each, the window ``auto`` picks from the noisy record
alone, against the window that is best for the derivative (judged against the noise-free record's
forward difference, which is exact for the Euler-integrated, noise-free dynamics), among 1 and odd
windows ~6% apart.

    python bench/bench_window.py
    python bench/bench_window.py --levels 0.01 0.1 --signal-seeds 42 --metabolism-seeds 0

Prints one markdown row per record and level: the estimated noise, the GCV window, the chosen window,
the derivative-best window, and the derivative's error at the chosen window over the best error.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.signal import savgol_coeffs, savgol_filter

from hydra_llm.simulation.metabolism import MetabolismDataModule
from hydra_llm.simulation.recording import (
    SAVGOL_ORDER,
    add_measurement_noise,
    choose_window,
    measurement_noise_estimate,
    smooth_and_differentiate,
)
from hydra_llm.simulation.signal import SignalDataModule


def gcv_window(noisy: torch.Tensor, windows: list[int]) -> int:
    """The GCV-best window on every column (``choose_window`` samples columns and a coarser grid)."""
    x = noisy.double().numpy()
    x = (x - x.mean(0)) / x.std(0)
    scores = {}
    for w in windows:
        residual = x - savgol_filter(x, w, SAVGOL_ORDER, axis=0, mode="interp")
        scores[w] = float(np.mean(residual**2)) / (1 - savgol_coeffs(w, SAVGOL_ORDER)[w // 2]) ** 2
    return min(scores, key=scores.__getitem__)


def rows(name: str, clean: torch.Tensor, dt: float, levels: list[float], max_window: int) -> None:
    truth = clean[1:] - clean[:-1]  # the noise-free forward difference, times dt
    longest = min(max_window, clean.shape[0])
    windows = sorted(
        {2 * int(2.5 * 1.06**k) + 1 for k in range(200) if 2 * int(2.5 * 1.06**k) + 1 <= longest}
    )
    for level in levels:
        noisy = add_measurement_noise(clean, level, seed=0)

        def error(w: int, noisy: torch.Tensor = noisy) -> float:
            derivative = smooth_and_differentiate(noisy, dt, w)[1][:-1] * dt
            return float(((derivative - truth) ** 2).mean())

        t0 = time.perf_counter()
        chosen = choose_window(noisy)
        choose_s = time.perf_counter() - t0
        errors = {w: error(w) for w in [1, *windows]}
        best = min(errors, key=errors.__getitem__)
        ratio = error(chosen) / errors[best] if errors[best] > 0 else float(chosen == best)
        print(
            f"| {name} | {level} | {measurement_noise_estimate(noisy):.4f} | {gcv_window(noisy, windows)} "
            f"| {chosen} | {best} | {ratio:.2f} | {choose_s:.1f} s |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.01, 0.05, 0.1, 0.2])
    parser.add_argument("--signal-seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--metabolism-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    columns = ["record", "noise", "estimated noise", "GCV window", "auto window", "derivative-best"]
    print("| " + " | ".join([*columns, "error ratio", "auto took"]) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in args.signal_seeds:
        dm = SignalDataModule(n_frames=10_000, seed=seed)
        dm.setup()
        obs = dm.observations
        rows(f"signal, seed {seed}", obs.activity.double(), obs.dt, args.levels, 301)
    for seed in args.metabolism_seeds:
        dm = MetabolismDataModule(seed=seed)
        dm.setup()
        obs = dm.observations
        rows(f"metabolism, seed {seed}", obs.activity.double(), obs.dt, args.levels, 101)


if __name__ == "__main__":
    main()
