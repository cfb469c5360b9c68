"""Regime-independent metrics: R2 variants, clustering accuracy, rollouts and their correlation.

Two R2 conventions are reported side by side:

* :func:`r2_slope` -- fit ``learned = a * true + b`` by least squares and return
  ``1 - SS_res / SS_tot`` of that fit, i.e. the squared correlation. Blind to scale and offset, so
  the slope ``a`` is returned with it.
* :func:`r2_identity` -- agreement with the identity line, ``1 - sum (learned - true)^2 /
  sum (true - mean(true))^2``. Can be negative; equals the first only when slope 1 and offset 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

ArrayLike = np.ndarray | torch.Tensor


def _flat(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def _check_pair(true: ArrayLike, learned: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t, p = _flat(true), _flat(learned)
    if t.shape != p.shape:
        raise ValueError(f"true and learned must have the same size, got {t.size} and {p.size}")
    if t.size < 2:
        raise ValueError(f"need at least 2 values to compute an R2, got {t.size}")
    return t, p


def r2_slope(true: ArrayLike, learned: ArrayLike) -> tuple[float, float]:
    """Slope-invariant R2 and the slope of the fit ``learned = slope * true + offset``.

    A constant ``learned`` explains nothing: R2 0 and slope 0. NaN when ``true`` is constant (the
    R2 is undefined) or when the input is not finite.
    """
    t, p = _check_pair(true, learned)
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        return float("nan"), float("nan")
    t_c, p_c = t - t.mean(), p - p.mean()
    ss_t, ss_p = float(t_c @ t_c), float(p_c @ p_c)
    if ss_t == 0.0:
        return float("nan"), float("nan")
    if ss_p == 0.0:
        return 0.0, 0.0
    slope = float(t_c @ p_c) / ss_t
    residual = p_c - slope * t_c
    return 1.0 - float(residual @ residual) / ss_p, slope


def r2_identity(true: ArrayLike, learned: ArrayLike) -> float:
    """Identity-line R2 (Nash-Sutcliffe efficiency); NaN when ``true`` is constant or not finite."""
    t, p = _check_pair(true, learned)
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        return float("nan")
    ss_t = float(((t - t.mean()) ** 2).sum())
    if ss_t == 0.0:
        return float("nan")
    return 1.0 - float(((p - t) ** 2).sum()) / ss_t


def median_relative_error(true: ArrayLike, learned: ArrayLike) -> float:
    """``median_i |learned_i - true_i| / |true_i|``: defined where an R2 is not, when ``true`` is
    constant (one type shares one tau). NaN when ``true`` holds a zero or anything is not finite."""
    t, p = _check_pair(true, learned)
    if not (np.isfinite(t).all() and np.isfinite(p).all()) or (t == 0).any():
        return float("nan")
    return float(np.median(np.abs(p - t) / np.abs(t)))


def r2_temporal(true: ArrayLike, predicted: ArrayLike) -> float:
    """Identity R2 of traces (T, N) against each column's own temporal mean, pooled over columns.

    ``1 - sum (pred - true)^2 / sum (true - mean_t true)^2``: a prediction frozen at the initial
    state scores <= 0 however different the columns are from each other (a plain R2 over all
    entries would reward that spread).
    """
    t = true.detach().cpu().numpy() if isinstance(true, torch.Tensor) else np.asarray(true)
    p = predicted.detach().cpu().numpy() if isinstance(predicted, torch.Tensor) else np.asarray(predicted)
    t, p = t.astype(np.float64), p.astype(np.float64)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"need two (T, N) arrays of the same shape, got {t.shape} and {p.shape}")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        return float("nan")
    ss_t = float(((t - t.mean(axis=0)) ** 2).sum())
    if ss_t == 0.0:
        return float("nan")
    return 1.0 - float(((p - t) ** 2).sum()) / ss_t


def cluster_accuracy(true_labels: ArrayLike, predicted_labels: ArrayLike) -> float:
    """Fraction of items whose cluster maps to their true label under the best one-to-one matching.

    The matching (Hungarian method on the confusion matrix) pairs each cluster with at most one
    label; items of unmatched clusters count as errors. Labels are any integers.
    """
    t, p = _flat(true_labels).astype(np.int64), _flat(predicted_labels).astype(np.int64)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"label arrays must be non-empty and the same size, got {t.size} and {p.size}")
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    confusion = np.zeros((t_ids.size, p_ids.size), dtype=np.int64)
    np.add.at(confusion, (t_inv, p_inv), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return float(confusion[rows, cols].sum()) / t.size


def kmeans_labels(features: ArrayLike, n_clusters: int, seed: int = 0) -> np.ndarray:
    """K-means labels (n,) of ``features`` (n, d), each column standardised first."""
    from sklearn.cluster import KMeans

    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    scale = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    return KMeans(n_clusters=int(n_clusters), n_init=10, random_state=seed).fit_predict(x)


def pearson_per_column(true: ArrayLike, predicted: ArrayLike) -> np.ndarray:
    """Pearson r of each column of (T, N) arrays -> (N,); NaN for a constant column."""
    t = true.detach().cpu().numpy() if isinstance(true, torch.Tensor) else np.asarray(true)
    p = predicted.detach().cpu().numpy() if isinstance(predicted, torch.Tensor) else np.asarray(predicted)
    t, p = t.astype(np.float64), p.astype(np.float64)
    t_c, p_c = t - t.mean(axis=0), p - p.mean(axis=0)
    denom = np.sqrt((t_c**2).sum(axis=0) * (p_c**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (t_c * p_c).sum(axis=0) / denom, np.nan)


def fisher_mean(r: ArrayLike) -> float:
    """Mean of correlations pooled in Fisher-z space (tanh of the mean arctanh); NaNs skipped."""
    values = _flat(r)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    return float(np.tanh(np.mean(np.arctanh(np.clip(values, -0.999999, 0.999999)))))


@torch.no_grad()
def euler_rollout(
    derivative: Callable[[torch.Tensor], torch.Tensor],
    u0: torch.Tensor,
    n_steps: int,
    dt: float,
    clamp: float = 1e3,
) -> torch.Tensor:
    """Integrate ``du/dt = derivative(u)`` from ``u0`` (N,) with explicit Euler, no noise.

    Returns (n_steps, N) with row 0 = ``u0``. States are clamped to ``[-clamp, clamp]`` so that a
    diverging model yields a poor score instead of inf/NaN.
    """
    out = torch.empty(n_steps, u0.shape[-1], dtype=u0.dtype)
    u = u0.clone()
    for step in range(n_steps):
        out[step] = u
        u = torch.clamp(u + dt * derivative(u[None])[0], -clamp, clamp)
    return out
