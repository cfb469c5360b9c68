"""Evaluation of a trained signal GNN against the hidden ground truth: the one place that documents
each read-out.

Every headline metric is read from what the model learned; the ground truth is only what it is
compared with. A read-out that borrows from the ground truth is reported under an ``_oracle`` suffix.

* ``connectivity_R2`` / ``connectivity_R2_identity`` / ``connectivity_slope``: W* (below) against
  the effective true weights ``g_i W_ij`` over all N^2 entries (slope-fitted R2, R2 to the identity
  line, fitted slope); the same with suffix ``_edges`` on the true edges only (the honest number for
  sparse W). The simulator's W and gain g enter the dynamics only as their product, so the product is
  what any read-out can recover.
* ``tau_R2`` (+ ``_identity``, ``_slope``), ``s_R2``: tau and s read out of the learned phi (below).
  ``tau_relative_error``: the median over neurons of ``|tau_hat - tau| / tau``, the number to read
  when every neuron has the same tau (one type), where an R2 is undefined (NaN).
* ``cluster_accuracy``: trimmed k-means (see :func:`profile_cluster_labels`) of the learned update
  functions phi_i sampled on the value grid, k = the true number of types, Hungarian matching to
  the true types. k comes from the ground truth: the metric asks whether the learned functions
  separate the true types, not how many types a blind reader would guess.
  ``cluster_accuracy_embedding``: plain k-means of the raw embeddings a_i (it misreads a type
  split over two embedding patches as two types).
* ``test_R2``, ``test_pearson``: an Euler rollout of the model (no noise) from the first held-out
  frame over ``rollout_frames`` frames vs the recording (R2 against each neuron's temporal mean,
  pooled; Pearson per neuron, Fisher-pooled); ``test_one_step_R2``: the predicted
  derivative on every held-out frame.
* ``connectivity_R2_oracle``, ``connectivity_R2_identity_oracle``, ``tau_R2_oracle``: the read-outs
  of :func:`oracle_metrics`, which use the true link (tanh), the true gain and the true tau range.

W*. The model learns ``W_learned_ij psi_j(u_j)``; the data fix this product only, so a per-source
scale can move between W and psi. W* is read in the gauge in which every learned link has unit slope
at rest: ``W*_ij = W_learned_ij c_j`` with ``c_j = psi_j'(0)`` (:func:`corrected_W`). The simulator's
link tanh has unit slope at rest, so W* is on the scale of ``g_i W_ij`` without using tanh or g.

tau and s. The read-out takes the self term of phi to have the shape of the population's learned link
L (the mean of ``psi_j / c_j``, :func:`learned_link`): fitting ``phi_i(u) ~ alpha_i u + beta_i L(u) +
gamma_i`` on the recorded range (see :func:`value_grid`) gives ``tau_i = -1/alpha_i`` and
``s_i = beta_i``. A flat or rising phi, or a time constant longer than the recording, reads as the
recording's duration. A plain linear fit would mix the link's slope into 1/tau.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hydra_llm.chunks import in_chunks
from hydra_llm.evaluation import plots
from hydra_llm.evaluation.metrics import (
    cluster_accuracy,
    euler_rollout,
    fisher_mean,
    kmeans_labels,
    median_relative_error,
    pearson_per_column,
    r2_identity,
    r2_slope,
    r2_temporal,
)
from hydra_llm.schemas import validate
from hydra_llm.schemas.evaluation import SignalEvaluation
from hydra_llm.simulation.base import GroundTruth, Observations

GRID_POINTS = 200


def value_grid(
    activity: torch.Tensor, n_neurons: int, low_q: float = 0.01, high_q: float = 0.99
) -> torch.Tensor:
    """Grid (GRID_POINTS, N) over the [low_q, high_q] quantiles of all recorded values (T, N).

    One common range for every neuron: a neuron that stays in one saturated branch of tanh has a
    range on which u, tanh(u) and 1 are nearly collinear, so per-neuron ranges give ill-posed fits.
    The learned functions are shared across neurons (through the embeddings), so they are trained
    on the population's range.
    """
    flat = activity.reshape(-1)
    if flat.numel() > 1_000_000:  # torch.quantile's input limit; a strided subsample is enough
        flat = flat[:: flat.numel() // 1_000_000 + 1]
    lo, hi = torch.quantile(flat, low_q), torch.quantile(flat, high_q)
    hi = torch.maximum(hi, lo + 1e-6)
    return (
        (lo + torch.linspace(0.0, 1.0, GRID_POINTS) * (hi - lo))[:, None].expand(-1, n_neurons).contiguous()
    )


def fit_basis(grid: torch.Tensor, values: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    """Per-column least squares ``values[:, i] ~ sum_k coef[k, i] basis[k][:, i]`` -> coef (K, N)."""
    design = torch.stack(basis, dim=-1).permute(1, 0, 2).double()  # (N, G, K)
    target = values.T.double().unsqueeze(-1)  # (N, G, 1)
    return torch.linalg.lstsq(design, target).solution.squeeze(-1).T


def rest_slope(fn, grid: torch.Tensor) -> torch.Tensor:
    """d fn / du (N,) at u = 0 (or the nearest end of ``grid`` (G, N) when 0 lies outside it): central
    differences over 0.2% and 0.1% of the grid's range, Richardson-extrapolated (error O(h^4), so
    float32 rounding, not the step, sets the precision); ``fn`` maps (B, N) values to (B, N)."""
    lo, hi = grid[0], grid[-1]
    h = 2e-3 * (hi - lo)
    rest = torch.zeros_like(lo).clamp(min=lo + h, max=hi - h)
    v = fn(torch.stack([rest - h, rest + h, rest - h / 2, rest + h / 2]))
    coarse, fine = (v[1] - v[0]) / (2 * h), (v[3] - v[2]) / h
    return (4 * fine - coarse) / 3


@torch.no_grad()
def corrected_W(model, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W* (N, N) and the per-source psi slope c (N,), from the model alone.

    The data fix ``W_ij psi_j`` only up to a per-source scale; W* is read in the gauge in which every
    learned link has unit slope at rest, ``W*_ij = W_learned_ij c_j`` with ``c_j = psi_j'(0)``.
    """
    slope = rest_slope(model.psi_of, grid)
    return model.learned_W().detach() * slope[None, :], slope


@torch.no_grad()
def learned_link(model, grid: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """The population's learned link (G,) on ``grid``: the mean over neurons of psi_j / c_j (unit slope
    at rest), so a read-out can use the link the model learned instead of the simulator's."""
    psi = model.psi_of(grid)
    safe = torch.where(slope.abs() > 1e-8, slope, torch.ones_like(slope))
    return (psi / safe[None, :]).mean(dim=1)


@torch.no_grad()
def read_out_phi(
    model, grid: torch.Tensor, link: torch.Tensor, tau_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """tau (N,) and s (N,) from the learned phi on ``grid`` (G, N), with ``link`` (G, N) the basis of
    the self-coupling term: ``phi_i ~ alpha_i u + beta_i link + gamma_i``, ``tau_i = -1/alpha_i``
    (a flat or rising phi, or a longer time, reads as ``tau_max``), ``s_i = beta_i``."""
    phi = model.phi_of(grid)
    coef = fit_basis(grid, phi, [grid, link, torch.ones_like(grid)])
    alpha, beta = coef[0], coef[1]
    tau = torch.where(alpha < 0, -1.0 / alpha.clamp(max=-1e-12), torch.full_like(alpha, float("inf")))
    return tau.clamp(max=float(tau_max)).float(), beta.float()


def oracle_metrics(model, grid: torch.Tensor, ground_truth: GroundTruth) -> dict[str, float]:
    """The read-outs that borrow from the ground truth, reported under ``_oracle`` only: W* with the
    true link (tanh) and gain, ``W_learned_ij c_j / g_i`` with ``psi_j ~ c_j tanh + d_j``, against the
    true W; tau with tanh as the self-coupling basis and clipped at 100 times the true maximum."""
    with torch.no_grad():
        coef = fit_basis(grid, model.psi_of(grid), [torch.tanh(grid), torch.ones_like(grid)])
        W_star = model.learned_W().detach() * coef[0].float()[None, :] / ground_truth["gain"][:, None]
    tau_true = ground_truth["tau"]
    tau_hat, _ = read_out_phi(model, grid, torch.tanh(grid), 100.0 * float(tau_true.max()))
    return {
        "connectivity_R2_oracle": r2_slope(ground_truth["W"], W_star)[0],
        "connectivity_R2_identity_oracle": r2_identity(ground_truth["W"], W_star),
        "tau_R2_oracle": r2_slope(tau_true, tau_hat)[0],
    }


def profile_cluster_labels(
    profiles: torch.Tensor, n_clusters: int, seed: int = 0, trim_fraction: float = 0.1, n_neighbours: int = 5
) -> np.ndarray:
    """Trimmed k-means labels (N,) of the learned update functions, ``profiles`` (N, G) = phi_i on the grid.

    Features: the functions, not the embeddings a_i. The embeddings are arbitrary coordinates of
    these functions, so one type can occupy two embedding patches that decode to the same phi, and
    k-means on the raw embeddings then splits that type and merges two others.
    Each grid point is standardised across neurons: the curves fan out at the ends of the range,
    where a few poorly constrained neurons would dominate a plain Euclidean distance, while the
    types differ in s only by an offset of a few units over the whole range.
    Trimming: the centroids are fitted without the ``trim_fraction`` most isolated neurons (largest
    distance to their ``n_neighbours``-th nearest neighbour), which otherwise claim a cluster of their
    own; every neuron is then assigned to its nearest centroid, so all of them are scored.
    """
    from sklearn.cluster import KMeans

    x = profiles.detach().cpu().double().numpy()
    scale = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    dist = torch.cdist(torch.from_numpy(x), torch.from_numpy(x))
    k = min(int(n_neighbours), len(x) - 1)
    isolation = dist.topk(k + 1, dim=1, largest=False).values[:, -1].numpy()
    keep = isolation <= np.quantile(isolation, 1.0 - float(trim_fraction))
    if keep.sum() < n_clusters:
        keep[:] = True
    model = KMeans(n_clusters=int(n_clusters), n_init=10, random_state=seed).fit(x[keep])
    return model.predict(x)


def connectivity_metrics(
    W_true: torch.Tensor, W_star: torch.Tensor, edge_index: torch.Tensor
) -> dict[str, float]:
    """Slope-fit and identity R2 of W* vs W on all N^2 entries and on the true edges."""
    edges = (edge_index[1], edge_index[0])
    r2_all, slope_all = r2_slope(W_true, W_star)
    r2_e, slope_e = r2_slope(W_true[edges], W_star[edges])
    return {
        "connectivity_R2": r2_all,
        "connectivity_R2_identity": r2_identity(W_true, W_star),
        "connectivity_slope": slope_all,
        "connectivity_R2_edges": r2_e,
        "connectivity_R2_identity_edges": r2_identity(W_true[edges], W_star[edges]),
        "connectivity_slope_edges": slope_e,
    }


@torch.no_grad()
def rollout_metrics(model, observations: Observations, rollout_frames: int) -> tuple[dict[str, float], dict]:
    """Rollout and one-step scores on the held-out frames, plus the arrays for the plot."""
    start = observations.n_train_frames
    n_steps = min(int(rollout_frames), observations.n_frames - start)
    recorded = observations.activity[start : start + n_steps]
    predicted = euler_rollout(model, recorded[0], n_steps, observations.dt)
    one_step = in_chunks(model, observations.activity[start:])
    metrics = {
        "test_R2": r2_temporal(recorded, predicted),
        "test_pearson": fisher_mean(pearson_per_column(recorded, predicted)),
        "test_one_step_R2": r2_identity(observations.derivative[start:], one_step),
    }
    return metrics, {"recorded": recorded.numpy(), "predicted": predicted.numpy()}


def evaluate(
    model,
    observations: Observations,
    ground_truth: GroundTruth,
    out_dir: str | Path,
    **options: Any,
) -> dict[str, float]:
    """All signal metrics as a dict of floats; figures in ``out_dir/plots`` when ``make_plots``.

    ``options``: :class:`~hydra_llm.schemas.evaluation.SignalEvaluation` keys (``rollout_frames``,
    ``make_plots``, ``cluster_seed``)."""
    o = validate(SignalEvaluation, options)
    model = model.cpu().eval()
    train_activity = observations.activity[: observations.n_train_frames]
    grid = value_grid(train_activity, observations.n_neurons)
    types = ground_truth["types"]
    n_types = int(ground_truth.meta.get("n_neuron_types", int(types.max()) + 1))

    W_star, slope = corrected_W(model, grid)
    W_true = ground_truth["gain"][:, None] * ground_truth["W"]  # what the dynamics determine: g_i W_ij
    metrics = connectivity_metrics(W_true, W_star, ground_truth["edge_index"])

    link = learned_link(model, grid, slope)[:, None].expand_as(grid)
    tau_hat, s_hat = read_out_phi(model, grid, link, tau_max=observations.n_frames * observations.dt)
    tau_true = ground_truth["tau"]
    metrics["tau_R2"], metrics["tau_slope"] = r2_slope(tau_true, tau_hat)
    metrics["tau_R2_identity"] = r2_identity(tau_true, tau_hat)
    metrics["tau_relative_error"] = median_relative_error(tau_true, tau_hat)
    metrics["s_R2"], _ = r2_slope(ground_truth["s"], s_hat)
    metrics.update(oracle_metrics(model, grid, ground_truth))

    embeddings = model.a.detach().cpu()
    with torch.no_grad():
        phi_profiles = model.phi_of(grid).T  # (N, G)
    if n_types > 1:
        metrics["cluster_accuracy"] = cluster_accuracy(
            types, profile_cluster_labels(phi_profiles, n_types, seed=o.cluster_seed)
        )
        metrics["cluster_accuracy_embedding"] = cluster_accuracy(
            types, kmeans_labels(embeddings, n_types, seed=o.cluster_seed)
        )
    else:
        metrics["cluster_accuracy"] = metrics["cluster_accuracy_embedding"] = 1.0

    test, arrays = rollout_metrics(model, observations, o.rollout_frames)
    metrics.update(test)

    if o.make_plots:
        folder = Path(out_dir) / "plots"
        with torch.no_grad():
            phi, psi = model.phi_of(grid), model.psi_of(grid)
        t_np = types.numpy()
        plots.plot_activity(
            observations.activity.numpy(),
            observations.dt,
            folder / "activity.png",
            split=observations.n_train_frames,
        )
        plots.plot_scatter(
            W_true.numpy(),
            W_star.numpy(),
            folder / "connectivity.png",
            "g W",
            f"R2={metrics['connectivity_R2']:.3f}  identity R2={metrics['connectivity_R2_identity']:.3f}",
        )
        plots.plot_scatter(
            tau_true.numpy(), tau_hat.numpy(), folder / "tau.png", "tau", f"R2={metrics['tau_R2']:.3f}"
        )
        plots.plot_functions(grid.numpy(), phi.numpy(), t_np, folder / "phi_per_type.png", "phi(u, a_i)")
        plots.plot_functions(grid.numpy(), psi.numpy(), t_np, folder / "psi_per_type.png", "psi(u, a_j)")
        plots.plot_embeddings(embeddings.numpy(), t_np, folder / "embeddings.png")
        plots.plot_rollout(arrays["recorded"], arrays["predicted"], observations.dt, folder / "rollout.png")
    return {key: float(value) for key, value in metrics.items()}
