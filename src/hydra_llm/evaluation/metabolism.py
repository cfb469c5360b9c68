"""Metabolism metrics and plots (names as in the seeds).

* ``rate_constants_R2``: slope-invariant R2 of the corrected learned log10 k against the true ones.
  The correction folds the substrate-function scale ``alpha = g(c=1, s=1)`` back into k (true alpha
  is 1 since 1**s = 1): ``log k + n_sub log alpha``. Also ``rate_constants_R2_identity``,
  ``rate_constants_slope``, ``rate_constants_R2_trimmed_oracle`` (without reactions off by more than
  ``outlier_threshold`` decades, untrimmed when more than half are off: a selection made with the
  answer, hence the suffix) and ``rate_constants_n_outliers``. Every other read-out uses the model only.
* Homeostasis: for every metabolite a straight line is fitted to MLP_node(c, a_i) on a concentration
  grid; slopes and offsets are averaged per true type t and compared with the truth (slope
  ``-lambda_t``, offset ``lambda_t * baseline_t``): ``MLP_node_slope_t``, ``MLP_node_gt_slope_t``,
  ``MLP_node_offset_t``, ``MLP_node_gt_offset_t``, ``slope_ratio_t``, ``offset_ratio_t`` and
  ``avg_slope_ratio`` (mean over types; the phase-2 objective, target 1). ``phase2_node_magnitude``
  is the mean |MLP_node| over the training recording.
* Embeddings: DBSCAN on the standardised embeddings, Hungarian matching to the true types
  (``embedding_cluster_acc``; DBSCAN noise points count as errors), ``embedding_n_clusters`` and
  ``embedding_silhouette`` (0 when fewer than two clusters are found). A second, label-free check that
  does not depend on DBSCAN's eps: k-means with k in 2..6 picked by the silhouette (the smallest k
  within 0.02 of the best): ``embedding_cluster_acc_kmeans``, ``embedding_n_clusters_kmeans``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hydra_llm.chunks import in_chunks  # noqa: E402
from hydra_llm.evaluation.metrics import cluster_accuracy, r2_identity, r2_slope  # noqa: E402
from hydra_llm.schemas import validate  # noqa: E402
from hydra_llm.schemas.evaluation import MetabolismEvaluation  # noqa: E402
from hydra_llm.simulation.base import GroundTruth, Observations  # noqa: E402


def rate_constant_metrics(
    learned_log_k: np.ndarray, true_log_k: np.ndarray, outlier_threshold: float = 0.3
) -> dict[str, float]:
    """R2 variants of learned vs true log10 k (both (R,))."""
    r2, slope = r2_slope(true_log_k, learned_log_k)
    outliers = np.abs(learned_log_k - true_log_k) > outlier_threshold
    n_out = int(outliers.sum())
    keep = ~outliers if n_out <= 0.5 * len(true_log_k) and (~outliers).sum() >= 2 else np.ones_like(outliers)
    trimmed, _ = r2_slope(true_log_k[keep], learned_log_k[keep])
    return {
        "rate_constants_R2": r2,
        "rate_constants_R2_identity": r2_identity(true_log_k, learned_log_k),
        "rate_constants_slope": slope,
        "rate_constants_R2_trimmed_oracle": trimmed,
        "rate_constants_n_outliers": float(n_out),
    }


def line_fits(grid: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Line fit of each column of ``values`` (G, N) over ``grid`` (G,): slopes (N,), offsets (N,)."""
    g = grid - grid.mean()
    slopes = (g @ (values - values.mean(0))) / float(g @ g)
    offsets = values.mean(0) - slopes * grid.mean()
    return slopes, offsets


def homeostasis_metrics(
    slopes: np.ndarray, offsets: np.ndarray, types: np.ndarray, lam_t: np.ndarray, base_t: np.ndarray
) -> dict[str, float]:
    """Per-type slope/offset ratios and their mean ``avg_slope_ratio``."""
    out: dict[str, float] = {}
    ratios = []
    for t in range(len(lam_t)):
        idx = types == t
        slope = float(slopes[idx].mean()) if idx.any() else math.nan
        offset = float(offsets[idx].mean()) if idx.any() else math.nan
        gt_slope, gt_offset = -float(lam_t[t]), float(lam_t[t] * base_t[t])
        out[f"MLP_node_slope_{t}"] = slope
        out[f"MLP_node_gt_slope_{t}"] = gt_slope
        out[f"MLP_node_offset_{t}"] = offset
        out[f"MLP_node_gt_offset_{t}"] = gt_offset
        out[f"slope_ratio_{t}"] = slope / gt_slope if gt_slope != 0 else math.nan
        out[f"offset_ratio_{t}"] = offset / gt_offset if gt_offset != 0 else math.nan
        ratios.append(out[f"slope_ratio_{t}"])
    out["avg_slope_ratio"] = float(np.mean(ratios))
    return out


def embedding_metrics(
    embedding: np.ndarray, types: np.ndarray, eps: float = 0.3, min_samples: int = 5
) -> tuple[dict[str, float], np.ndarray]:
    """DBSCAN clustering of standardised embeddings (N, d) against the true types; returns labels too."""
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import silhouette_score

    x = embedding - embedding.mean(0)
    scale = x.std(0)
    x = x / np.where(scale > 0, scale, 1.0)
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(x)
    # every noise point becomes its own singleton cluster, so it can never be matched for free
    noise = labels < 0
    scored = labels.copy()
    scored[noise] = labels.max() + 1 + np.arange(int(noise.sum()))
    n_clusters = int(len(set(labels[~noise].tolist())))
    silhouette = float(silhouette_score(x[~noise], labels[~noise])) if n_clusters >= 2 else 0.0
    return {
        "embedding_cluster_acc": cluster_accuracy(types, scored),
        "embedding_n_clusters": float(n_clusters),
        "embedding_silhouette": silhouette,
    }, labels


def kmeans_embedding_metrics(
    embedding: np.ndarray, types: np.ndarray, max_k: int = 6, tolerance: float = 0.02
) -> dict[str, float]:
    """k-means on the standardised embeddings (N, d), k in 2..max_k chosen without labels: the smallest
    k whose silhouette is within ``tolerance`` of the best."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = embedding - embedding.mean(0)
    scale = x.std(0)
    x = x / np.where(scale > 0, scale, 1.0)
    scored: list[tuple[float, np.ndarray]] = []
    for k in range(2, min(max_k, len(x) - 1) + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(x)
        if len(set(labels.tolist())) >= 2:
            scored.append((float(silhouette_score(x, labels)), labels))
    # parsimony: the smallest k within `tolerance` of the best silhouette (splitting a tight cluster
    # in two changes the silhouette by almost nothing)
    top = max((score for score, _ in scored), default=None)
    best = next(((sc, lab) for sc, lab in scored if sc >= top - tolerance), None) if top is not None else None
    if best is None:  # all embeddings identical: one cluster
        return {
            "embedding_cluster_acc_kmeans": cluster_accuracy(types, np.zeros_like(types)),
            "embedding_n_clusters_kmeans": 1.0,
        }
    return {
        "embedding_cluster_acc_kmeans": cluster_accuracy(types, best[1]),
        "embedding_n_clusters_kmeans": float(len(set(best[1].tolist()))),
    }


def evaluate(
    model: Any,
    observations: Observations,
    ground_truth: GroundTruth,
    out_dir: str | Path,
    **options: Any,
) -> dict[str, float]:
    """All metabolism metrics of a trained :class:`~hydra_llm.models.metabolism.MetabolismGNN`.

    ``options``: :class:`~hydra_llm.schemas.evaluation.MetabolismEvaluation` keys (the line-fit grid, the
    outlier threshold, DBSCAN's settings, ``make_plots``)."""
    o = validate(MetabolismEvaluation, options)
    out_dir = Path(out_dir)
    model = model.eval()
    types = ground_truth["types"].cpu().numpy()
    lam_t = ground_truth["homeostatic_lambda_per_type"].cpu().numpy()
    base_t = ground_truth["homeostatic_baseline_per_type"].cpu().numpy()
    true_log_k = ground_truth["log_k"].cpu().numpy().astype(np.float64)
    learned_log_k = model.corrected_log_k().cpu().numpy().astype(np.float64)

    metrics: dict[str, float] = {"alpha": model.alpha()}
    metrics.update(rate_constant_metrics(learned_log_k, true_log_k, o.outlier_threshold))

    grid = np.linspace(o.slope_c_min, o.slope_c_max, o.slope_n_points)
    n = model.n_metabolites
    with torch.no_grad():
        conc = torch.as_tensor(grid, dtype=torch.float32).unsqueeze(1).expand(-1, n)
        node_values = model.node_function(conc).cpu().numpy().astype(np.float64)  # (G, N)
        train = observations.activity[: observations.n_train_frames]
        metrics["phase2_node_magnitude"] = float(in_chunks(model.node_function, train).abs().mean())
        held = observations.activity[observations.n_train_frames : -1]
        if len(held) >= 2:
            pred = in_chunks(model, held).cpu().numpy()
            metrics["test_R2"] = r2_identity(observations.derivative[observations.n_train_frames : -1], pred)
    slopes, offsets = line_fits(grid, node_values)
    metrics.update(homeostasis_metrics(slopes, offsets, types, lam_t, base_t))

    embedding = model.embedding.detach().cpu().numpy().astype(np.float64)
    emb_metrics, labels = embedding_metrics(embedding, types, o.dbscan_eps, o.dbscan_min_samples)
    metrics.update(emb_metrics)
    metrics.update(kmeans_embedding_metrics(embedding, types))

    if "stoichiometry" in ground_truth and isinstance(model.stoichiometry, torch.nn.Parameter):
        true_s = ground_truth["stoichiometry"].cpu().numpy()
        metrics["stoichiometry_R2"] = r2_identity(true_s, model.stoichiometry.detach().cpu().numpy())

    if o.make_plots:
        plots = out_dir / "plots"
        plot_rate_constants(true_log_k, learned_log_k, metrics, plots / "rate_constants.png")
        plot_node_functions(grid, node_values, types, lam_t, base_t, metrics, plots / "MLP_node.png")
        plot_embedding(embedding, types, labels, metrics, plots / "embedding.png")
        if getattr(model, "loss_history", None):
            plot_loss(np.asarray(model.loss_history), plots / "loss.png")
    (out_dir / "metabolism_node_fits.json").write_text(
        json.dumps({"slopes": slopes.tolist(), "offsets": offsets.tolist()}, indent=1)
    )
    return metrics


# ------------------------------------------------------------------------------------------- plots
def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_rate_constants(true: np.ndarray, learned: np.ndarray, metrics: dict[str, float], path: Path) -> None:
    """Learned (corrected) vs true log10 k with the identity line."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, learned, s=6, alpha=0.6)
    lo, hi = float(min(true.min(), learned.min())), float(max(true.max(), learned.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true log10 k")
    ax.set_ylabel("learned log10 k (corrected)")
    ax.set_title(
        f"R2={metrics['rate_constants_R2']:.3f}  trimmed={metrics['rate_constants_R2_trimmed_oracle']:.3f}  "
        f"outliers={int(metrics['rate_constants_n_outliers'])}",
        fontsize=9,
    )
    _save(fig, path)


def plot_node_functions(
    grid: np.ndarray,
    values: np.ndarray,
    types: np.ndarray,
    lam_t: np.ndarray,
    base_t: np.ndarray,
    metrics: dict[str, float],
    path: Path,
) -> None:
    """MLP_node(c, a_i) per type (thin lines) against the true homeostasis lines (dashed)."""
    n_types = len(lam_t)
    fig, axes = plt.subplots(1, n_types, figsize=(4.5 * n_types, 4), squeeze=False)
    for t, ax in enumerate(axes[0]):
        idx = np.flatnonzero(types == t)
        ax.plot(grid, values[:, idx], color=f"C{t}", lw=0.5, alpha=0.5)
        ax.plot(grid, -lam_t[t] * (grid - base_t[t]), "k--", lw=1.5, label="truth")
        ax.set_title(f"type {t}: slope ratio {metrics.get(f'slope_ratio_{t}', math.nan):.2f}", fontsize=9)
        ax.set_xlabel("concentration")
        ax.set_ylabel("MLP_node")
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_embedding(
    embedding: np.ndarray, types: np.ndarray, labels: np.ndarray, metrics: dict[str, float], path: Path
) -> None:
    """First two embedding dimensions, coloured by true type, marked by DBSCAN cluster."""
    fig, ax = plt.subplots(figsize=(5, 5))
    y = embedding[:, 1] if embedding.shape[1] > 1 else np.zeros(len(embedding))
    for t in np.unique(types):
        idx = types == t
        ax.scatter(embedding[idx, 0], y[idx], s=14, color=f"C{int(t)}", label=f"type {int(t)}")
    noise = labels < 0
    ax.scatter(embedding[noise, 0], y[noise], s=40, facecolors="none", edgecolors="k", label="DBSCAN noise")
    ax.set_xlabel("a_0")
    ax.set_ylabel("a_1")
    ax.set_title(
        f"cluster acc {metrics['embedding_cluster_acc']:.2f}, "
        f"{int(metrics['embedding_n_clusters'])} clusters",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_loss(history: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(np.maximum(history, 1e-12), lw=0.5)
    ax.set_xlabel("mini-batch")
    ax.set_ylabel("training loss")
    _save(fig, path)
