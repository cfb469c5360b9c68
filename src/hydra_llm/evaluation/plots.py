"""Figures written to ``<job>/plots/*.png`` (matplotlib, Agg backend, one figure per file)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


RASTER_MAX = (2000, 1000)  # frames, neurons shown in an activity raster


def plot_activity(
    activity: np.ndarray, dt: float, path: Path, n_traces: int = 8, split: int | None = None
) -> Path:
    """Raster of the activity (T, N) and a few traces; ``split`` marks the first held-out frame.

    The raster shows every k-th frame and neuron (at most ``RASTER_MAX`` of each), so a long record
    of many neurons costs a small copy, not several of its own size.
    """
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t_max = activity.shape[0] * dt
    steps = [-(-size // limit) for size, limit in zip(activity.shape, RASTER_MAX, strict=True)]
    raster = np.asarray(activity[:: steps[0], :: steps[1]])
    vmax = float(np.percentile(np.abs(raster), 99)) or 1.0
    ax0.imshow(
        raster.T,
        aspect="auto",
        cmap="RdBu_r",
        vmin=-vmax,
        vmax=vmax,
        extent=(0, t_max, activity.shape[1], 0),
    )
    ax0.set_ylabel("neuron")
    time = np.arange(activity.shape[0]) * dt
    for i in np.linspace(0, activity.shape[1] - 1, min(n_traces, activity.shape[1])).astype(int):
        ax1.plot(time, activity[:, i], lw=0.6)
    if split is not None:
        for ax in (ax0, ax1):
            ax.axvline(split * dt, color="k", ls="--", lw=1)
    ax1.set_xlabel("time")
    ax1.set_ylabel("u")
    return _save(fig, path)


def plot_scatter(true: np.ndarray, learned: np.ndarray, path: Path, label: str, title: str = "") -> Path:
    """Learned vs true values with the identity line."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true.ravel(), learned.ravel(), s=2, alpha=0.4)
    lo = float(min(true.min(), learned.min()))
    hi = float(max(true.max(), learned.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"learned {label}")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_functions(grid: np.ndarray, values: np.ndarray, types: np.ndarray, path: Path, name: str) -> Path:
    """Per-neuron curves ``values[:, i]`` over ``grid[:, i]`` (G, N), coloured by true type."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colours = plt.get_cmap("tab10")
    for k in np.unique(types):
        idx = np.flatnonzero(types == k)
        ax.plot(grid[:, idx], values[:, idx], color=colours(int(k) % 10), lw=0.5, alpha=0.5)
        ax.plot([], [], color=colours(int(k) % 10), label=f"type {int(k)}")
    ax.set_xlabel("u")
    ax.set_ylabel(name)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_embeddings(embeddings: np.ndarray, types: np.ndarray, path: Path) -> Path:
    """The first two embedding dimensions, coloured by true type."""
    fig, ax = plt.subplots(figsize=(5, 5))
    y = embeddings[:, 1] if embeddings.shape[1] > 1 else np.zeros(len(embeddings))
    scatter = ax.scatter(embeddings[:, 0], y, c=types, cmap="tab10", vmin=0, vmax=9, s=12)
    ax.legend(*scatter.legend_elements(), title="type", fontsize=8)
    ax.set_xlabel("a_0")
    ax.set_ylabel("a_1")
    return _save(fig, path)


def plot_rollout(true: np.ndarray, predicted: np.ndarray, dt: float, path: Path, n_traces: int = 6) -> Path:
    """Recorded vs rolled-out traces (T, N) for a few neurons."""
    fig, axes = plt.subplots(n_traces, 1, figsize=(8, 1.4 * n_traces), sharex=True)
    time = np.arange(true.shape[0]) * dt
    for ax, i in zip(
        np.atleast_1d(axes), np.linspace(0, true.shape[1] - 1, n_traces).astype(int), strict=False
    ):
        ax.plot(time, true[:, i], "k", lw=1, label="recorded")
        ax.plot(time, predicted[:, i], "r", lw=0.8, label="rollout")
        ax.set_ylabel(f"u_{i}", fontsize=8)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="upper right")
    np.atleast_1d(axes)[-1].set_xlabel("time since start of held-out window")
    return _save(fig, path)
