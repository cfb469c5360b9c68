"""Flyvis metrics and plots: corrected W, tau / V_rest read out of f_theta, clustering, rollouts.

The GNN learns ``msg_i = sum_e W_e psi(v_j)`` and ``dv_i/dt = f(v_i, msg_i, I_i)``; the true model is
``(-v + V_rest + sum w relu(v_j) + I) / tau``. Read-outs, per neuron:

* self-decay slope s_i and offset c_i of f, two ways: the original's read-out, the line through
  f(v, msg=0, I=0) over [mu - 2 sigma, mu + 2 sigma], gives the headline ``connectivity_R2``,
  ``tau_R2``, ``V_rest_R2`` and ``cluster_accuracy`` (one GMM start on each neuron's embedding, tau,
  V_rest and the statistics of its corrected W, as the original clusters; ``cluster_accuracy_median``,
  ``_min`` and ``_max`` over ``cluster_starts`` starts give the spread that one start hides: 0.842-0.881
  over nine starts on one extent-8 run, BENCHMARKS.md); the local read-out, the least-squares
  fit ``f ~ s v + g msg + k I + c`` over states near the recorded ones (256 training frames), gives the
  same metrics with the suffix ``_local``. It does not extrapolate f to msg = 0, which lies a median
  2.7 std outside a neuron's recorded messages at extent 8 (BENCHMARKS.md, "The read-out at the
  recorded state"); where f is not additive in v and msg, the line's slope there is not the one the
  data fixed. A neuron whose local fit does not decay (s_i >= 0) takes the line's slope and offsets:
  at extent 8 a handful such neurons (6 of 13,741, all TmY15, on seed 42 at noise 0.05) sent their
  incoming W* to 50 times the others' and held ``connectivity_R2_local`` at 0.52 (0.956 with the line's
  decay there).
  tau_i = -1 / s_i clipped to [0, 1] s (1 where s_i >= 0: f does not decay), V_rest_i = c_i tau_i;
  ``tau_clipped_fraction`` (and ``_local``) is the fraction of neurons at that clip;
* ``psi(v_j) ~ slope_g_j relu(v_j) + b_j`` on [max(mu - 2 sigma, 0), mu + 2 sigma] (slope 1 for
  neurons that never rise above 0: their outgoing weights are invisible to the data);
* ``g_i = df/dmsg``, the slope g of the same fit;

so the weight in the units of the simulator is ``W*_e = W_e * g_i * slope_g_j * tau_i``, with W the
weights the messages use (``model.weights``: 0 on self-loops held out by ``learn_autapses: false``).
The original divides by s_i instead (``-W_e g_i slope_g_j / s_i``, and ``V_rest_i = -c_i / s_i``): the
same wherever tau_i needs no clip, but one neuron whose learned decay crosses zero then sends all its
incoming weights to hundreds (at extent 8, step 4,000 of ``bench/bench_flyvis.py recovery``, one neuron with
s_i = 0.004 took ``connectivity_R2`` from 0.83 to 0.10). With the clipped tau_i, which ``tau_R2``
reports anyway, W* and V_rest stay bounded and read nothing from the answer.

V_rest is f's offset where the synaptic drive is zero, and msg = 0 is that point only if psi(0) = 0.
Nothing pins psi there by default (``g_phi_norm`` fixes its value at 2 xnorm only;
``coeff_g_phi_zero`` pulls psi(0) to 0 when set), so a learned
``psi ~ slope_g relu(v) + b_j`` moves ``m_i = sum_j W_ij b_j`` out of f's offset at msg = 0.
``V_rest_zero_drive`` reads f's offset at msg = m_i instead (line and local read-outs alike), from the
learned W and psi only; ``V_rest_R2`` stays the original's.

``readout_agreement`` is the R2 between the two read-outs' W* (learned quantities only). They agree
where f is additive in v and msg; where they part, at least one is off. It tells, without the answer,
whether a run's ``_local`` metrics can be read (BENCHMARKS.md, "Longer on the GPU").

``connectivity_R2`` is the slope-invariant R2 of W* vs the true w on every edge; ``*_R2_identity`` is
agreement with the identity line. The original dropped the edges with |W* - w| > ``outlier_threshold``
first: a choice made with the answer, so that number is ``connectivity_R2_trimmed_oracle`` (and
``connectivity_R2_identity_trimmed_oracle``, ``connectivity_outlier_fraction``). Nothing else here
reads the ground truth: the read-outs above use the model and the recording only.

The R2 trajectory during training is a Lightning callback built here (it holds ground truth; the
model never sees it): :func:`r2_trajectory_callback`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from hydra_llm.evaluation.metrics import (
    cluster_accuracy,
    fisher_mean,
    pearson_per_column,
    r2_identity,
    r2_slope,
)
from hydra_llm.schemas import validate
from hydra_llm.schemas.evaluation import FlyvisEvaluation, R2TrajectoryLog
from hydra_llm.simulation.base import GroundTruth, IndexedInput, Observations

GRID_POINTS = 200
# read-out -> suffix of its metrics; the original's line read-out is the headline
READOUTS = {"line": "", "local": "_local"}


@dataclass(frozen=True)
class NeuronRange:
    """Per-neuron statistics (N,) of the training voltages that the read-outs span: ``mean`` and
    ``std`` of v, and ``relu_std``, the std of relu(v) (what a neuron sends)."""

    mean: torch.Tensor
    std: torch.Tensor
    relu_std: torch.Tensor

    @classmethod
    def of(cls, activity: torch.Tensor, chunk_frames: int = 512) -> NeuronRange:
        """From the training voltages (T, N), in float64 over chunks of frames: a long record costs
        no copy of its own size."""
        n = activity.shape[0]
        sums = torch.zeros(4, activity.shape[1], dtype=torch.float64)
        for start in range(0, n, chunk_frames):
            v = activity[start : start + chunk_frames].double()
            r = v.clamp(min=0)
            sums += torch.stack([v.sum(0), (v * v).sum(0), r.sum(0), (r * r).sum(0)])
        mean, relu_mean = sums[0] / n, sums[2] / n
        dof = max(n - 1, 1)
        var = ((sums[1] - n * mean**2) / dof).clamp(min=0)
        relu_var = ((sums[3] - n * relu_mean**2) / dof).clamp(min=0)
        return cls(mean.float(), var.sqrt().float(), relu_var.sqrt().float())

    def to(self, device: torch.device | str) -> NeuronRange:
        return NeuronRange(self.mean.to(device), self.std.to(device), self.relu_std.to(device))


def neuron_grid(span: NeuronRange, n_points: int = GRID_POINTS, floor: float | None = None) -> torch.Tensor:
    """(K, N) voltages spanning [mu - 2 sigma, mu + 2 sigma] per neuron (lower end clipped at ``floor``),
    at least 1e-3 wide."""
    lo, hi = span.mean - 2 * span.std, span.mean + 2 * span.std
    if floor is not None:
        lo = lo.clamp(min=floor)
    hi = torch.maximum(hi, lo + 1e-3)  # a neuron that never moves still gets a line fit
    steps = torch.linspace(0, 1, n_points, device=lo.device)[:, None]
    return lo[None] + steps * (hi - lo)[None]


def line_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column least-squares slope and offset of y (K, N) against x (K, N)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    slope = (xc * yc).sum(0) / (xc * xc).sum(0).clamp(min=1e-12)
    return slope, y.mean(0) - slope * x.mean(0)


def on_grid(fn: Callable[[torch.Tensor], torch.Tensor], grid: torch.Tensor, rows: int = 16) -> torch.Tensor:
    """``fn`` applied to a grid (K, N, ...) a few rows at a time: the MLPs' hidden layers then hold
    ``rows x N x hidden`` values, not ``K x N x hidden`` (0.7 GB per layer at extent 8)."""
    return torch.cat([fn(grid[start : start + rows]) for start in range(0, grid.shape[0], rows)])


@torch.no_grad()
def f_theta_line(
    model, span: NeuronRange, msg: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slope s_i and offset b_i (N,) of f(v, msg, I=0) over each neuron's voltage range; ``msg`` (N,)
    is held at each neuron's value (0 when not given)."""
    grid = neuron_grid(span)
    held = torch.zeros_like(grid[0]) if msg is None else msg

    def f_at_held_msg(v: torch.Tensor) -> torch.Tensor:
        return model.f(v, held.expand_as(v), torch.zeros_like(v))

    return line_fit(grid, on_grid(f_at_held_msg, grid))


@torch.no_grad()
def psi_line(model, span: NeuronRange) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) slope and offset of ``psi(v_j) ~ slope relu(v_j) + offset``: the line over the positive part
    of each neuron's range. A silent neuron (mu + sigma <= 0) gets slope 1 (its outgoing weights are
    invisible) and, as offset, psi at its mean voltage (<= 0): all it sends is offset."""
    grid = neuron_grid(span, floor=0.0)
    slope, offset = line_fit(grid, on_grid(model.psi, grid))
    silent = span.mean + span.std <= 0
    resting = model.psi(span.mean[None])[0]
    return torch.where(silent, torch.ones_like(slope), slope), torch.where(silent, resting, offset)


def zero_drive_messages(W: torch.Tensor, edge_index: torch.Tensor, psi_offset: torch.Tensor) -> torch.Tensor:
    """(N,) the learned message when no presynaptic neuron is driven (every relu(v_j) = 0): the sum of
    ``W_e psi_offset[src_e]`` (E,) into each target, for weights W (E,) and offsets (N,)."""
    src, tgt = edge_index
    return torch.zeros_like(psi_offset).index_add_(0, tgt, W * psi_offset[src])


def recorded_state_fit(
    model, observations: Observations, n_frames: int = 256, jitter: float = 0.25
) -> dict[str, torch.Tensor]:
    """Per neuron (N,), the least-squares fit ``f ~ s v + g msg + k I + c`` of the learned dynamics over
    states near the recorded ones: ``n_frames`` training frames, with v and msg moved by
    ``jitter`` x each neuron's std over those frames (at least 1e-3) so that the two vary independently
    even where the record moves them together (a fixed generator: the fit is deterministic). The
    messages are the model's own at the recorded voltages.

    Returns ``slope_v`` (s), ``slope_msg`` (g) and ``constant`` (c)."""
    n_train, device = observations.n_train_frames, model.W.device
    frames = torch.linspace(n_train // 10, max(n_train // 10, n_train - 2), n_frames).long()
    v = observations.activity[frames].to(device)
    inp = observations.external_input[frames].to(device).float()
    with torch.no_grad():
        msg = on_grid(model.messages, v)
        gen = torch.Generator().manual_seed(0)
        for x in (v, msg):
            x += jitter * x.std(0).clamp(min=1e-3) * torch.randn(x.shape, generator=gen).to(device)
        X = torch.stack([v, msg, inp], -1)  # (K, N, 3)
        y = on_grid(lambda x: model.f(x[..., 0], x[..., 1], x[..., 2]), X)
    X_mean, y_mean = X.mean(0), y.mean(0)
    Xc, yc = X - X_mean, y - y_mean
    # I is constant for the neurons that get no input: the ridge gives that column a slope of 0
    gram = torch.einsum("knp,knq->npq", Xc, Xc).double() + 1e-9 * torch.eye(
        3, dtype=torch.float64, device=device
    )
    coef = torch.linalg.solve(gram, torch.einsum("knp,kn->np", Xc, yc).double()[..., None])[..., 0].float()
    return {
        "slope_v": coef[:, 0],
        "slope_msg": coef[:, 1],
        "constant": y_mean - (coef * X_mean).sum(-1),
    }


def corrected_weights(
    model, observations: Observations, span: NeuronRange | None = None, zero_drive: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """Per read-out (``READOUTS``): W* (E,), tau_hat and V_rest_hat (N,) and the self-decay slope
    ``slope_f`` (N,) from the learned functions (see the module docstring).

    ``line``, the original's read-out: the self-decay slope s_i and offset of f come from the line through
    f(v, msg=0, I=0). ``local``: from the linear fit of f near the recorded states instead
    (:func:`recorded_state_fit`; msg = 0 is rarely visited by a real neuron, and the line extrapolates f
    there), except where that fit does not decay (the line's there). For the true model both give
    s = -1/tau and V_rest. g_i and psi's slope are shared by both; W* and V_rest use the clipped tau_hat.
    ``span``: the training voltages' :class:`NeuronRange`, computed here when not given. ``zero_drive``:
    also ``V_rest_zero_drive_hat`` (N,), which takes a second pass of f over the grid (a fifth of the
    time). The model may sit on any device; the read-outs come back on the CPU.
    """
    if span is None:
        span = NeuronRange.of(observations.activity[: observations.n_train_frames])
    W = model.weights.detach()
    span = span.to(W.device)
    edge_index = observations.edge_index.to(W.device)
    src, tgt = edge_index
    local = recorded_state_fit(model, observations)
    slope_g, offset_g = psi_line(model, span)
    msg_rest = zero_drive_messages(W, edge_index, offset_g)
    slope, offset = f_theta_line(model, span)
    line = (slope, offset, f_theta_line(model, span, msg_rest)[1] if zero_drive else offset)
    # a neuron whose local fit does not decay (s >= 0) has no time constant there: it takes the line's
    # slope and offsets
    decays = local["slope_v"] < 0
    local_fit = (local["slope_v"], local["constant"], local["constant"] + local["slope_msg"] * msg_rest)
    decay = {
        "line": line,
        "local": tuple(torch.where(decays, x, y) for x, y in zip(local_fit, line, strict=True)),
    }
    out = {}
    for name, (slope_f, offset_f, offset_rest) in decay.items():
        tau_hat = torch.where(slope_f < 0, -1.0 / slope_f, torch.ones_like(slope_f)).clamp(0.0, 1.0)
        W_star = W * local["slope_msg"][tgt] * slope_g[src] * tau_hat[tgt]
        values = {
            "W_star": finite(W_star),
            "tau_hat": tau_hat,
            "V_rest_hat": finite(offset_f * tau_hat),
            "slope_f": slope_f,
        }
        if zero_drive:
            values["V_rest_zero_drive_hat"] = finite(offset_rest * tau_hat)
        out[name] = {key: value.cpu() for key, value in values.items()}
    return out


def finite(x: torch.Tensor) -> torch.Tensor:
    """x with NaN and inf set to 0."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def connectivity_metrics(
    true_W: torch.Tensor, W_star: torch.Tensor, raw_W: torch.Tensor, outlier: float
) -> dict:
    """W* (E,) against the true w (E,) on every edge; the ``_trimmed_oracle`` scores drop the edges
    with ``|W* - w| > outlier`` first (a selection made with the answer, as the original did)."""
    r2, slope = r2_slope(true_W, W_star)
    keep = (W_star - true_W).abs() <= outlier
    if int(keep.sum()) < 2:
        keep = torch.ones_like(keep)
    return {
        "connectivity_R2": r2,
        "connectivity_slope": slope,
        "connectivity_R2_identity": r2_identity(true_W, W_star),
        "connectivity_R2_trimmed_oracle": r2_slope(true_W[keep], W_star[keep])[0],
        "connectivity_R2_identity_trimmed_oracle": r2_identity(true_W[keep], W_star[keep]),
        "connectivity_outlier_fraction": float(1.0 - keep.float().mean()),
        "connectivity_R2_raw": r2_slope(true_W, raw_W)[0],
    }


def visible_edges(span: NeuronRange, edge_index: torch.Tensor, min_std: float = 1e-3) -> torch.Tensor:
    """(E,) bool: edges whose source's rectified voltage varies in the training frames. The others
    carry a constant (often zero) message, so their weight cannot be read from the data."""
    return span.relu_std[edge_index[0]] > min_std


def cluster_features(
    embedding: torch.Tensor,
    W_star: torch.Tensor,
    tau: torch.Tensor,
    V_rest: torch.Tensor,
    edge_index: torch.Tensor,
) -> np.ndarray:
    """(N, emb + 6): the embedding (N, emb; emb may be 0), tau and V_rest (N,), and the mean and std of
    the weights W_star (E,) into and out of each neuron."""
    n = int(tau.shape[0])
    W_star = W_star.double()
    cols = [embedding.detach().double(), tau.double()[:, None], V_rest.double()[:, None]]
    for end in (edge_index[1], edge_index[0]):
        count = torch.bincount(end, minlength=n).double().clamp(min=1)
        mean = torch.zeros(n, dtype=torch.float64).index_add_(0, end, W_star) / count
        sq = torch.zeros(n, dtype=torch.float64).index_add_(0, end, W_star**2) / count
        cols += [mean[:, None], (sq - mean**2).clamp(min=0).sqrt()[:, None]]
    return torch.cat(cols, dim=1).numpy()


def gmm_fit(features: np.ndarray, n_components: int, seed: int, n_init: int = 1) -> tuple[np.ndarray, float]:
    """``(labels (N,), lower bound)`` of a GMM (full covariance, ``n_components`` capped at N) on the
    standardised ``features`` (N, F); with ``n_init`` > 1, of the start whose likelihood bound (per
    neuron) is highest."""
    from sklearn.mixture import GaussianMixture

    x = (features - features.mean(0)) / np.where(features.std(0) > 0, features.std(0), 1.0)
    k = max(1, min(int(n_components), len(x)))
    gmm = GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-4, n_init=n_init)
    return gmm.fit_predict(x), float(gmm.lower_bound_)


def gmm_labels(features: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """(N,) cluster labels of one GMM start (:func:`gmm_fit`)."""
    return gmm_fit(features, n_components, seed)[0]


def gmm_cluster_accuracy(features: np.ndarray, types: np.ndarray, n_components: int, seed: int) -> float:
    """:func:`gmm_labels` matched to the types by the Hungarian method."""
    return cluster_accuracy(types, gmm_labels(features, n_components, seed))


def gmm_starts(
    features: np.ndarray, types: np.ndarray, n_components: int, seeds: Iterable[int]
) -> list[tuple[float, float]]:
    """``(cluster accuracy, likelihood bound per neuron)`` of one GMM start (:func:`gmm_fit`) per seed,
    its labels matched to the ``types`` (N,) by the Hungarian method."""
    fits = (gmm_fit(features, n_components, seed) for seed in seeds)
    return [(cluster_accuracy(types, labels), bound) for labels, bound in fits]


def fluctuation_r2(true: torch.Tensor, pred: torch.Tensor) -> float:
    """R2 of a rollout (T, N) against each neuron's own temporal variation:
    ``1 - sum (pred - true)^2 / sum (true - mean_t true)^2``. Pooling the raw values instead would
    credit a frozen model with the between-neuron spread of resting levels."""
    t, p = true.double(), pred.double()
    ss = float(((t - t.mean(0)) ** 2).sum())
    return 1.0 - float(((p - t) ** 2).sum()) / ss if ss > 0 else float("nan")


def rollout_metrics(
    model, activity: torch.Tensor, inputs: torch.Tensor | IndexedInput, n_frames: int, prefix: str
) -> dict:
    """Free rollout over the first ``n_frames`` of a recording (T, N) and its input (T, N) from its
    first frame: per-neuron Pearson pooled in Fisher-z space, and :func:`fluctuation_r2`."""
    n = min(int(n_frames), activity.shape[0])
    true = activity[:n]
    pred = model.rollout(true[0], inputs[:n]).detach()
    if not torch.isfinite(pred).all():
        return {f"{prefix}_pearson": float("nan"), f"{prefix}_R2": float("nan")}, pred
    r = pearson_per_column(true, pred)
    return {f"{prefix}_pearson": fisher_mean(r), f"{prefix}_R2": fluctuation_r2(true, pred)}, pred


def evaluate(
    model,
    observations: Observations,
    ground_truth: GroundTruth,
    out_dir: str | Path,
    **options: Any,
) -> dict[str, float]:
    """All flyvis metrics as floats; figures in ``out_dir/plots`` when ``make_plots``.

    ``options``: :class:`~hydra_llm.schemas.evaluation.FlyvisEvaluation` keys (``rollout_frames``,
    ``outlier_threshold``, ``cluster_n_components``, ``cluster_seed``, ``cluster_starts``, ``make_plots``)."""
    o = validate(FlyvisEvaluation, options)
    model = model.cpu().eval()
    span = NeuronRange.of(observations.activity[: observations.n_train_frames])
    readouts = corrected_weights(model, observations, span)
    corrected = readouts["line"]
    true_W = ground_truth["W"].double()
    metrics = connectivity_metrics(
        true_W, corrected["W_star"].double(), model.weights.detach().double(), o.outlier_threshold
    )
    metrics["readout_agreement"] = r2_slope(corrected["W_star"], readouts["local"]["W_star"])[0]
    for readout, suffix in READOUTS.items():
        values = readouts[readout]
        pairs = [
            ("tau", ground_truth["tau"], values["tau_hat"]),
            ("V_rest", ground_truth["V_rest"], values["V_rest_hat"]),
            ("V_rest_zero_drive", ground_truth["V_rest"], values["V_rest_zero_drive_hat"]),
        ]
        if suffix:  # the headline's connectivity metrics come from connectivity_metrics above
            pairs.insert(0, ("connectivity", true_W, values["W_star"].double()))
        for name, truth, estimate in pairs:
            metrics[f"{name}_R2{suffix}"], metrics[f"{name}_slope{suffix}"] = r2_slope(truth, estimate)
            metrics[f"{name}_R2_identity{suffix}"] = r2_identity(truth, estimate)
        # the neurons where f, read this way, decays slower than 1 / s or not at all: their tau_hat
        # and incoming W* rest on the clip (learned quantities only)
        metrics[f"tau_clipped_fraction{suffix}"] = float((values["tau_hat"] >= 1.0).double().mean())
    visible = visible_edges(span, observations.edge_index)
    if int(visible.sum()) >= 2:
        metrics["connectivity_R2_visible"] = r2_slope(true_W[visible], corrected["W_star"].double()[visible])[
            0
        ]
        metrics["visible_edge_fraction"] = float(visible.double().mean())
    types = ground_truth["types"].numpy()
    for readout, suffix in READOUTS.items():
        values = readouts[readout]
        features = cluster_features(
            model.a, values["W_star"], values["tau_hat"], values["V_rest_hat"], observations.edge_index
        )
        n_starts = 1 if suffix else o.cluster_starts  # the spread over starts is the headline's only
        seeds = range(o.cluster_seed, o.cluster_seed + n_starts)
        starts = [acc for acc, _ in gmm_starts(features, types, o.cluster_n_components, seeds)]
        metrics[f"cluster_accuracy{suffix}"] = starts[0]
        if not suffix:
            metrics["cluster_accuracy_median"] = float(np.median(starts))
            metrics["cluster_accuracy_min"], metrics["cluster_accuracy_max"] = min(starts), max(starts)

    n_train = observations.n_train_frames
    test_frames = slice(n_train, n_train + o.rollout_frames)
    test, pred_test = rollout_metrics(
        model,
        observations.activity[test_frames],
        observations.external_input[test_frames],
        o.rollout_frames,
        "test",
    )
    metrics.update(test)
    if "ood_activity" in observations.extras:
        ood, _ = rollout_metrics(
            model,
            observations.extras["ood_activity"],
            observations.extras["ood_external_input"],
            o.rollout_frames,
            "ood",
        )
        metrics.update({"test_pearson_ood": ood["ood_pearson"], "test_R2_ood": ood["ood_R2"]})
    metrics["degeneracy_gap"] = metrics["test_pearson"] - metrics["connectivity_R2"]
    if o.make_plots:
        write_plots(Path(out_dir) / "plots", observations, ground_truth, corrected, model, pred_test, metrics)
    return {k: float(v) for k, v in metrics.items()}


def write_plots(plots: Path, obs, gt, corrected, model, pred_test: torch.Tensor, metrics: dict) -> None:
    from hydra_llm.evaluation.plots import plot_activity, plot_embeddings, plot_rollout, plot_scatter

    scatters = (
        ("W", "W_star", "W", "corrected W", "connectivity"),
        ("tau", "tau_hat", "tau (s)", "tau", "tau"),
        ("V_rest", "V_rest_hat", "V_rest", "V_rest", "V_rest"),
    )
    for truth, estimate, label, title, metric in scatters:
        plot_scatter(
            gt[truth].numpy(),
            corrected[estimate].numpy(),
            plots / f"{truth}_scatter.png",
            label,
            f"{title}: R2={metrics[f'{metric}_R2']:.3f} slope={metrics[f'{metric}_slope']:.2f}",
        )
    plot_embeddings(model.a.detach().numpy(), gt["types"].numpy(), plots / "embeddings.png")
    plot_activity(obs.activity.numpy(), obs.dt, plots / "activity.png", split=obs.n_train_frames)
    n = pred_test.shape[0]
    true = obs.activity[obs.n_train_frames : obs.n_train_frames + n].numpy()
    plot_rollout(true, np.nan_to_num(pred_test.numpy()), obs.dt, plots / "rollout_test.png")


class ConnectivityR2Log(pl.Callback):
    """Appends ``epoch,iteration,connectivity_r2,phase`` to ``<out_dir>/connectivity_r2.log`` every
    ``every_n_steps`` training steps and at the end of each epoch. It holds the ground truth; the model
    only exposes its learned functions and its current ``phase`` (W, V_rest or joint).

    ``max_records`` caps the rows of a long run: the interval grows to ``ceil(steps / max_records)``
    when that is longer. A record reads W out through the learned functions (not the zero-drive
    V_rest), 6.7 s at extent 8 on 2 CPU cores with the affine f (``bench/bench_flyvis.py record``):
    every 200 steps of the default training's 89,600 it would add 50 min (None: no cap).
    ``options``: :class:`~hydra_llm.schemas.evaluation.R2TrajectoryLog` keys.
    """

    holds_ground_truth = True  # evaluation code (hydra_llm.blindness does not count it as a leak)

    def __init__(
        self, observations: Observations, ground_truth: GroundTruth, out_dir: str | Path, **options: Any
    ) -> None:
        o = validate(R2TrajectoryLog, options)
        self.observations = observations
        self.true_W = ground_truth["W"].double()
        self.path = Path(out_dir) / "connectivity_r2.log"
        self.every_n_steps, self.max_records = o.every_n_steps, o.max_records
        self.every = self.every_n_steps
        self.rows: list[tuple[int, int, float, str]] = []
        self.range: NeuronRange | None = None  # of the training voltages, computed at the first record

    def on_fit_start(self, trainer, pl_module) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("epoch,iteration,connectivity_r2,phase\n")

    def on_train_start(self, trainer, pl_module) -> None:
        steps = trainer.estimated_stepping_batches
        if self.max_records is not None and math.isfinite(steps):
            self.every = max(self.every_n_steps, math.ceil(steps / int(self.max_records)))

    def record(self, trainer, pl_module) -> None:
        was_training = pl_module.training
        pl_module.eval()
        try:
            if self.range is None:
                obs = self.observations
                self.range = NeuronRange.of(obs.activity[: obs.n_train_frames])
            readouts = corrected_weights(pl_module, self.observations, self.range, zero_drive=False)
            W_star = readouts["line"]["W_star"].double()
            r2 = r2_slope(self.true_W, W_star)[0]
        finally:
            pl_module.train(was_training)
        row = (int(trainer.current_epoch), int(trainer.global_step), float(r2), str(pl_module.phase))
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(f"{row[0]},{row[1]},{row[2]:.6f},{row[3]}\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self.record(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.rows or self.rows[-1][1] != trainer.global_step:
            self.record(trainer, pl_module)


def r2_trajectory_callback(
    observations: Observations, ground_truth: GroundTruth, out_dir: str | Path, **options: Any
) -> ConnectivityR2Log:
    """The target of an ``evaluation.callbacks`` entry of ``evaluation=flyvis``
    (:class:`~hydra_llm.schemas.evaluation.R2TrajectoryLog`; called by train.run)."""
    return ConnectivityR2Log(observations, ground_truth, out_dir, **options)
