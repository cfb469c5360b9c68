"""Flyvis GNN: ``msg_i = sum_e W_e g_phi(v_j, a_j)^2``, ``dv_i/dt = f_theta(v_i, a_i, msg_i, I_i)``.

* ``psi = g_phi^2`` (``g_phi_positive``; plain g_phi otherwise) is the message function below.
* ``W``: one learnable weight per known connectome edge (E,), aligned with ``Observations.edge_index``.
  With ``learn_autapses: false`` the self-loops' weights are held at 0 (``weights``) and f_theta takes
  their part: while relu(v_i) is linear over the record, ``w_ii relu(v_i)`` is a change of the leak.
* ``g_phi`` depends on the source neuron only, so it is evaluated once per (frame, neuron) and the sum
  over edges is a gather + ``index_add`` (``aggregation: node``). ``aggregation: sparse`` does the same
  node transform, then torch-geometric's ``propagate`` with a CSR product (the idiomatic layer, the
  speed baseline); ``aggregation: edge`` runs the textbook per-edge MessagePassing (one g_phi call
  per edge), the test oracle.
* ``update_form: separable`` makes ``f_theta = leak(v_i, a_i) + drive(msg_i, I_i, a_i)``
  (:class:`SeparableUpdate`): the line read-out's slope at msg = 0 is then f's slope at every message,
  and the additivity penalty, identically 0, is skipped. ``update_form: affine`` makes the drive
  ``g(a_i) msg_i + k(a_i) I_i`` (:class:`AffineDrive`): msg = 0, where the line read-out takes f, lies a
  median 2.7 std below a neuron's recorded messages at extent 8, and a free MLP's drive need not be
  straight over that gap, while the simulator's is.
* ``f_theta``'s output is multiplied by ``yscale`` (std of the recorded training derivative, an
  observable) so the MLP works at unit scale; voltages, messages and input enter unscaled.
* ``a_i``: per-neuron embeddings (N, embedding_dim), initialised to ones; cell types are never given.

Loss per step on a batch of training frames (B frames x N neurons)::

    mean(((pred - dv/dt) / yscale)^2)                        prediction (dimensionless)
    + anneal * (coeff_W_L1 sum|W| + coeff_W_L2 sum W^2) / N  per neuron; applied independently
    + anneal * coeff_{g_phi,f_theta}_weight_{L1,L2} * MLP weight norms
    + coeff_g_phi_diff    * mean relu(psi(v) - psi(v + d))   psi non-decreasing, d = 0.05 xnorm
    + coeff_g_phi_norm    * mean_j (psi(v*, a_j) - v*)^2      v* = 2 xnorm: fixes the W <-> psi gauge
    + coeff_g_phi_zero    * mean_j psi(0, a_j)^2              fixes psi's offset <-> f's offset gauge
    + coeff_g_phi_straight * mean_j ((psi(u+h) - 2 psi(u) + psi(u-h)) / h)^2
                                 psi straight on [0, 2 xnorm]: h = 0.25 xnorm, u_j drawn per step
    + coeff_f_theta_msg_diff * mean relu(f(m) - f(m + d_m))  f non-decreasing in the message
    + coeff_f_theta_additivity * mean((D f(m, I) - D f(0, 0)) / (0.05 yscale))^2
                                 D f(m, I) = f(v + d, m, I) - f(v, m, I): f's leak is the same at the
                                 recorded message and input as at msg = I = 0 (the line read-out's);
                                 on the batch's first frame only

Details that matter: every term but the additivity is computed on the whole batch (not the last
frame); the W penalties are divided by the number of neurons N, as the prediction term is a mean over
neurons, so their pull on each weight against the data's does not grow with the network (at extent 8
the plain sum, tuned at extent 1, held connectivity_R2 near 0.87; BENCHMARKS.md);
``anneal = 1 - exp(-regul_annealing_rate * progress)`` with progress in *fractional* epochs, so a
one-epoch run is not left without regularisers (rate 0 = no annealing); W_L2 is never gated by W_L1;
the monotonicity shift is additive (``1.05 v`` moves negative voltages the wrong way).

Training strategies: ``alternate_training`` splits each epoch into ``n_alternations`` cycles of a
W phase (W and g_phi at their learning rates, f_theta and a at ``alternate_lr_update`` /
``alternate_lr_embedding``) followed by a V_rest phase (``alternate_vrest_ratio`` of the cycle: f_theta
and a at theirs, W and g_phi at ``alternate_lr_W`` / ``alternate_lr_edge``); an unset alternate rate is
the active rate times ``alternate_lr_ratio`` (in the W phase ``alternate_lr_ratio_W_phase`` when set:
1.0 gives two stages where only W and g_phi slow down). ``lr_schedule`` multiplies every rate, in every
phase, by :func:`hydra_llm.models.lr_schedule.lr_factor` of the step. ``recurrent_training`` unrolls
``time_step`` Euler steps on the model's own predictions (with the recorded input) and fits
v(k + time_step).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hydra_llm.models.embedding_snap import EmbeddingSnap
from hydra_llm.models.frame_gnn import FrameGNN
from hydra_llm.models.layers import EdgeMessagePassing, SparsePropagate
from hydra_llm.models.lr_schedule import lr_factor
from hydra_llm.models.mlp import MLP
from hydra_llm.schemas import as_dict, plain, validate
from hydra_llm.schemas.models import FlyvisModel
from hydra_llm.schemas.training import FlyvisTraining
from hydra_llm.simulation.base import IndexedInput, Observations
from hydra_llm.simulation.frames import FrameSampling, iterations_per_epoch

log = logging.getLogger(__name__)


def validate_training(training: Mapping[str, Any] | None) -> dict[str, Any]:
    """``training`` over the :class:`FlyvisTraining` defaults, checked; ValueError names the bad key."""
    return as_dict(FlyvisTraining, training)


def aggregate_source_messages(
    psi: torch.Tensor, weight: torch.Tensor, edge_index: torch.Tensor
) -> torch.Tensor:
    """``psi`` (B, N) per source neuron, ``weight`` (E,), ``edge_index`` (2, E) -> msg (B, N).

    A gather of psi at the sources and an ``index_add`` at the targets: O(B * E) multiply-adds. On
    CPU at extent 8 it is ~80x faster than a torch CSR product in the backward pass, whose weight
    gradient goes through a dense N x N mask (BENCHMARKS.md, fly visual system).
    """
    contributions = psi.index_select(1, edge_index[0]) * weight
    return torch.zeros_like(psi).index_add_(1, edge_index[1], contributions)


def neuron_features(
    a: torch.Tensor, before: Sequence[torch.Tensor], after: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """The input rows of a per-neuron MLP: the columns ``before`` (each (..., N)), the embedding ``a``
    (N, emb) broadcast over the leading dimensions, then the columns ``after`` -> (..., N, n + emb)."""
    shape = (before or after)[0].shape
    columns = [x.unsqueeze(-1) for x in before] + [a.expand(*shape, a.shape[-1])]
    return torch.cat(columns + [x.unsqueeze(-1) for x in after], dim=-1)


class JointUpdate(MLP):
    """``f_theta(v, a, msg, I)``: one MLP of the four (``model.update_form: joint``).

    Args:
        embedding_dim: size of the embedding a.
        hidden_dim, n_layers, activation: the MLP's (:class:`~hydra_llm.models.mlp.MLP`).

    Shapes:
        v, msg, I (..., N) and a (N, embedding_dim) -> (..., N); the MLP reads ``[v, a, msg, I]``.
    """

    def __init__(self, embedding_dim: int, hidden_dim: int, n_layers: int, activation: str) -> None:
        super().__init__(3 + embedding_dim, 1, hidden_dim, n_layers, activation)

    def forward(self, v: torch.Tensor, a: torch.Tensor, msg: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return super().forward(neuron_features(a, [v], [msg, inp])).squeeze(-1)


class DriveMLP(MLP):
    """``drive(a, msg, I)``: a free MLP of the three (``model.update_form: separable``).

    Shapes:
        a (N, embedding_dim), msg and I (..., N) -> (..., N); the MLP reads ``[a, msg, I]``.
    """

    def __init__(self, embedding_dim: int, hidden_dim: int, n_layers: int, activation: str) -> None:
        super().__init__(2 + embedding_dim, 1, hidden_dim, n_layers, activation)

    def forward(self, a: torch.Tensor, msg: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return super().forward(neuron_features(a, [], [msg, inp])).squeeze(-1)


class AffineDrive(nn.Module):
    """``drive = g(a) msg + k(a) I``: one MLP of the embedding gives each neuron's two gains
    (``model.update_form: affine``). The gains are computed once per neuron, not per frame.

    Args:
        embedding_dim: size of the embedding a.
        hidden_dim, n_layers, activation: the gains' MLP (:class:`~hydra_llm.models.mlp.MLP`).

    Shapes:
        a (N, embedding_dim), msg and I (..., N) -> (..., N).
    """

    def __init__(self, embedding_dim: int, hidden_dim: int, n_layers: int, activation: str) -> None:
        super().__init__()
        self.gains = MLP(embedding_dim, 2, hidden_dim, n_layers, activation)

    def forward(self, a: torch.Tensor, msg: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        g, k = self.gains(a).unbind(-1)
        return g * msg + k * inp


class SeparableUpdate(nn.Module):
    """``f_theta = leak(v, a) + drive(a, msg, I)``, so the slope of f in v does not depend on the
    message or the input (``model.update_form: separable``, or ``affine`` with an :class:`AffineDrive`).

    Args:
        embedding_dim: size of the embedding a.
        hidden_dim, n_layers, activation: each MLP's (:class:`~hydra_llm.models.mlp.MLP`).
        affine: the drive is linear in msg and I (:class:`AffineDrive`), else a :class:`DriveMLP`.

    Shapes:
        v, msg, I (..., N) and a (N, embedding_dim) -> (..., N), as :class:`JointUpdate`.
    """

    def __init__(
        self, embedding_dim: int, hidden_dim: int, n_layers: int, activation: str, affine: bool = False
    ) -> None:
        super().__init__()
        self.leak = MLP(1 + embedding_dim, 1, hidden_dim, n_layers, activation)
        self.drive = (AffineDrive if affine else DriveMLP)(embedding_dim, hidden_dim, n_layers, activation)

    def forward(self, v: torch.Tensor, a: torch.Tensor, msg: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return self.leak(neuron_features(a, [v])).squeeze(-1) + self.drive(a, msg, inp)


class FlyvisGNN(FrameGNN):
    """Learns W (E,), g_phi, f_theta and embeddings a (N, embedding_dim) from voltages (T, N)."""

    # Lets train.run check cfg.training before simulating.
    check_training = staticmethod(validate_training)
    log_every = 100

    def __init__(
        self, observations: Observations, training: Mapping[str, Any] | None = None, **architecture: Any
    ) -> None:
        """Args:
        observations: voltages and their derivative (T, N), ``edge_index`` (2, E), ``external_input``.
        training: training options (:class:`~hydra_llm.schemas.training.FlyvisTraining`).
        **architecture: :class:`~hydra_llm.schemas.models.FlyvisModel` keys; missing ones take its defaults.
        """
        super().__init__()
        if observations.edge_index is None or observations.external_input is None:
            raise ValueError(
                "the flyvis GNN needs Observations.edge_index and external_input (simulation=flyvis_*)"
            )
        arch = validate(FlyvisModel, architecture)
        self.training_cfg = validate_training(training)
        hparams = {k: v for k, v in plain(arch).items() if k != "_target_"}
        self.save_hyperparameters({**hparams, "training": self.training_cfg})
        self.observations = observations
        self.n_neurons = observations.n_neurons
        self.n_train_frames = observations.n_train_frames
        self.dt = float(observations.dt)
        self.aggregation = arch.aggregation
        self.g_phi_positive = arch.g_phi_positive
        train_v = observations.activity[: self.n_train_frames]
        train_dv = observations.derivative[: self.n_train_frames]
        self.xnorm = float(1.5 * train_v.std())
        self.yscale = float(train_dv.std()) or 1.0
        self.register_buffer("edge_index", observations.edge_index.long().clone(), persistent=False)
        n_edges = int(observations.edge_index.shape[1])

        emb = arch.embedding_dim
        self.a = nn.Parameter(torch.ones(self.n_neurons, emb))
        W = self._init_W(n_edges, arch.w_init_mode, arch.w_init_scale)
        # 1 on the edges whose weight is learned, 0 on self-loops without learn_autapses; W starts at 0
        # there and gets no gradient through the mask, so it stays exactly 0
        self_loop = observations.edge_index[0] == observations.edge_index[1]
        learned = torch.ones_like(self_loop) if arch.learn_autapses else ~self_loop
        self.register_buffer("weight_mask", learned.float(), persistent=False)
        self.W = nn.Parameter(W * self.weight_mask)
        self.g_phi = MLP(1 + emb, 1, arch.hidden_dim, arch.n_layers, arch.activation, out_init_std=0.1)
        update = (arch.hidden_dim_update, arch.n_layers_update, arch.activation)
        self.f_theta = (
            JointUpdate(emb, *update)
            if arch.update_form == "joint"
            else SeparableUpdate(emb, *update, affine=arch.update_form == "affine")
        )
        self.edge_oracle = EdgeMessagePassing(self._psi_features)
        # built only when used: it sorts the E edges into a CSR layout
        self.sparse_propagate = (
            SparsePropagate(self.edge_index, self.n_neurons) if self.aggregation == "sparse" else None
        )
        self.phase = "joint"
        self._data: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _init_W(n_edges: int, mode: str, scale: float) -> torch.Tensor:
        if mode == "zeros":
            return torch.zeros(n_edges)
        std = 1.0 if mode == "randn" else scale / math.sqrt(n_edges)
        return std * torch.randn(n_edges)

    # ----------------------------------------------------------------- learned functions
    def _psi_features(self, x: torch.Tensor) -> torch.Tensor:
        """Message function on features [..., (v, a...)] -> [..., 1]."""
        g = self.g_phi(x)
        return g * g if self.g_phi_positive else g

    def psi(self, v: torch.Tensor) -> torch.Tensor:
        """psi(v_j, a_j) for voltages (..., N) -> (..., N)."""
        return self._psi_features(neuron_features(self.a, [v])).squeeze(-1)

    def f(self, v: torch.Tensor, msg: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """f_theta(v_i, a_i, msg_i, I_i) for (..., N) tensors -> dv/dt (..., N)."""
        return self.yscale * self.f_theta(v, self.a, msg, inp)

    @property
    def weights(self) -> torch.Tensor:
        """(E,) the weights the messages use: W, masked to 0 where it is not learned (``learn_autapses``)."""
        return self.W * self.weight_mask

    def messages(self, v: torch.Tensor) -> torch.Tensor:
        """msg (B, N) for voltages (B, N), with the configured aggregation."""
        if self.aggregation == "node":
            return aggregate_source_messages(self.psi(v), self.weights, self.edge_index)
        if self.aggregation == "sparse":
            return self.sparse_propagate(self.psi(v).T, self.weights).T
        a = self.a.unsqueeze(1).expand(-1, v.shape[0], -1)
        x = torch.cat([v.T.unsqueeze(-1), a], dim=-1)  # (N, B, 1 + emb)
        return self.edge_oracle(x, self.edge_index, self.weights).T

    def forward(self, v: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """dv/dt (B, N) predicted from voltages and input (B, N)."""
        return self.f(v, self.messages(v), inp)

    @torch.no_grad()
    def rollout(
        self, v0: torch.Tensor, inputs: torch.Tensor | IndexedInput, clamp: float = 100.0
    ) -> torch.Tensor:
        """Euler-integrate the learned model from v0 (N,) under inputs (T, N) -> (T, N), row 0 = v0."""
        out = torch.empty(inputs.shape[0], v0.shape[-1], dtype=v0.dtype)
        v = v0.to(self.device)[None]
        for t in range(inputs.shape[0]):
            out[t] = v[0].cpu()
            v = torch.clamp(v + self.dt * self(v, inputs[t].to(self.device)[None]), -clamp, clamp)
            if not torch.isfinite(v).all():
                out[t + 1 :] = float("nan")
                break
        return out

    # ----------------------------------------------------------------- sampling and schedule
    @property
    def steps_per_epoch(self) -> int:
        cfg = self.training_cfg
        steps = iterations_per_epoch(
            self.n_train_frames, float(cfg["data_augmentation_loop"]), int(cfg["batch_size"])
        )
        cap = cfg.get("max_steps_per_epoch")
        return min(steps, int(cap)) if cap else steps

    def unreached_step_cap(self) -> str | None:
        """Why ``max_steps_per_epoch`` does not set the epoch's length, or None where it does (or is
        unset): a larger batch divides the steps that the frames allow, and the cap then never binds."""
        cfg = self.training_cfg
        cap = cfg.get("max_steps_per_epoch")
        if not cap or self.steps_per_epoch >= int(cap):
            return None
        return (
            f"training.max_steps_per_epoch={int(cap)} is not reached: {self.n_train_frames} training frames "
            f"x data_augmentation_loop {float(cfg['data_augmentation_loop']):g} // batch_size "
            f"{int(cfg['batch_size'])} x 0.2 give {self.steps_per_epoch} steps an epoch; raise "
            f"training.data_augmentation_loop to train {int(cap)}"
        )

    def on_fit_start(self) -> None:
        if (reason := self.unreached_step_cap()) is not None:
            log.warning(reason)

    @property
    def total_steps(self) -> int:
        """Optimiser steps over all epochs."""
        return self.steps_per_epoch * int(self.training_cfg["n_epochs"])

    @property
    def frame_window(self) -> int:
        """Frames needed after a sampled start (1 + time_step for rollout training)."""
        return int(self.training_cfg["time_step"]) + 1 if self.training_cfg["recurrent_training"] else 1

    @property
    def frame_sampling(self) -> FrameSampling:
        cfg = self.training_cfg
        return FrameSampling(int(cfg["batch_size"]), self.steps_per_epoch, int(cfg["seed"]))

    def anneal(self) -> float:
        rate = float(self.training_cfg["regul_annealing_rate"])
        if rate == 0:
            return 1.0
        progress = self.current_epoch + (self.global_step % self.steps_per_epoch) / self.steps_per_epoch
        return 1.0 - math.exp(-rate * max(progress, 1.0 / self.steps_per_epoch))

    def phase_at(self, step_in_epoch: int) -> str:
        """'joint' without alternate training, else 'W' or 'V_rest' for a step of the epoch."""
        cfg = self.training_cfg
        if not cfg["alternate_training"]:
            return "joint"
        cycle = self.steps_per_epoch / int(cfg["n_alternations"])
        position = (step_in_epoch % cycle) / cycle
        return "W" if position < 1.0 - float(cfg["alternate_vrest_ratio"]) else "V_rest"

    def phase_learning_rates(self, phase: str) -> dict[str, float]:
        """Learning rate of each parameter group in a phase."""
        cfg = self.training_cfg
        base = {
            "W": float(cfg["learning_rate_W_start"]),
            "g_phi": float(cfg["learning_rate_start"]),
            "f_theta": float(cfg["learning_rate_update_start"] or cfg["learning_rate_start"]),
            "embedding": float(cfg["learning_rate_embedding_start"]),
        }
        if phase == "joint":
            return base
        ratio = float(cfg["alternate_lr_ratio"])
        if phase == "W" and cfg["alternate_lr_ratio_W_phase"] is not None:
            ratio = float(cfg["alternate_lr_ratio_W_phase"])

        def slow(group: str, key: str) -> float:
            return float(cfg[key]) if cfg[key] is not None else base[group] * ratio

        if phase == "W":
            return {
                **base,
                "f_theta": slow("f_theta", "alternate_lr_update"),
                "embedding": slow("embedding", "alternate_lr_embedding"),
            }
        return {**base, "W": slow("W", "alternate_lr_W"), "g_phi": slow("g_phi", "alternate_lr_edge")}

    # ----------------------------------------------------------------- losses
    def _data_on_device(self) -> dict[str, torch.Tensor]:
        if self._data is None or self._data["activity"].device != self.device:
            obs = self.observations
            self._data = {
                "activity": obs.activity[: self.n_train_frames].to(self.device),
                "input": obs.external_input.to(self.device),  # rollouts index training frames only
            }
        return self._data

    def regularisers(self, v: torch.Tensor, psi_v: torch.Tensor | None, msg: torch.Tensor, inp: torch.Tensor):
        """Weighted regulariser terms for a batch of voltages, messages and input (B, N)."""
        cfg, anneal, terms = self.training_cfg, self.anneal(), {}
        if cfg["coeff_W_L1"] > 0:
            terms["W_L1"] = anneal * cfg["coeff_W_L1"] * self.W.abs().sum() / self.n_neurons
        if cfg["coeff_W_L2"] > 0:
            terms["W_L2"] = anneal * cfg["coeff_W_L2"] * (self.W**2).sum() / self.n_neurons
        for name, mlp in (("g_phi", self.g_phi), ("f_theta", self.f_theta)):
            weights = [p for n, p in mlp.named_parameters() if n.endswith("weight")]
            if cfg[f"coeff_{name}_weight_L1"] > 0:
                terms[f"{name}_weight_L1"] = (
                    anneal * cfg[f"coeff_{name}_weight_L1"] * sum(w.abs().sum() for w in weights)
                )
            if cfg[f"coeff_{name}_weight_L2"] > 0:
                terms[f"{name}_weight_L2"] = (
                    anneal * cfg[f"coeff_{name}_weight_L2"] * sum((w**2).sum() for w in weights)
                )
        if cfg["coeff_g_phi_diff"] > 0:
            psi_v = self.psi(v) if psi_v is None else psi_v
            terms["g_phi_diff"] = (
                cfg["coeff_g_phi_diff"] * torch.relu(psi_v - self.psi(v + 0.05 * self.xnorm)).mean()
            )
        if cfg["coeff_g_phi_norm"] > 0:
            anchor = torch.full((1, self.n_neurons), 2.0 * self.xnorm, device=v.device)
            terms["g_phi_norm"] = (
                cfg["coeff_g_phi_norm"] * ((self.psi(anchor) - 2.0 * self.xnorm) ** 2).mean()
            )
        if cfg["coeff_g_phi_zero"] > 0:
            at_zero = self.psi(torch.zeros((1, self.n_neurons), device=v.device))
            terms["g_phi_zero"] = cfg["coeff_g_phi_zero"] * (at_zero**2).mean()
        if cfg["coeff_g_phi_straight"] > 0:
            terms["g_phi_straight"] = cfg["coeff_g_phi_straight"] * self.psi_bend(v.device)
        if cfg["coeff_f_theta_msg_diff"] > 0:
            shift = 0.05 * (msg.detach().std() + 1e-6)
            diff = self.f(v, msg, inp) - self.f(v, msg + shift, inp)
            terms["f_theta_msg_diff"] = cfg["coeff_f_theta_msg_diff"] * torch.relu(diff / self.yscale).mean()
        if cfg["coeff_f_theta_additivity"] > 0 and not isinstance(self.f_theta, SeparableUpdate):
            # On one frame of the batch (its frames are drawn at random): over every frame the four
            # passes of f doubled the step at extent 8; on one frame the step costs 1.1-1.3x and
            # connectivity_R2 stayed within 0.004 on 3 seeds (BENCHMARKS.md).
            terms["f_theta_additivity"] = cfg["coeff_f_theta_additivity"] * self.leak_mismatch(
                v[:1], msg[:1], inp[:1]
            )
        return terms

    def psi_bend(self, device: torch.device) -> torch.Tensor:
        """Mean over neurons of psi's change of slope, ``((psi(u+h) - 2 psi(u) + psi(u-h)) / h)^2``,
        dimensionless, at one point u_j per neuron in [h, 2 xnorm - h] (h = 0.25 xnorm), drawn from
        the step number (the same points on a rerun): 0 where psi is straight on [0, 2 xnorm], as the
        simulator's relu is, including between 0 and the range a tonic neuron's record covers."""
        h = 0.25 * self.xnorm
        draw = torch.Generator().manual_seed(int(self.global_step))
        u = h + (2.0 * self.xnorm - 2.0 * h) * torch.rand(self.n_neurons, generator=draw).to(device)
        psi = self.psi(torch.stack([u - h, u, u + h]))
        return (((psi[2] - 2.0 * psi[1] + psi[0]) / h) ** 2).mean()

    def leak_mismatch(self, v: torch.Tensor, msg: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """Mean squared difference between f's rise over a voltage step d = 0.05 xnorm at the given
        message and input (B, N) and at msg = I = 0, in units of 0.05 yscale (the slope in units of
        yscale / xnorm): 0 where f is additive in v and (msg, I), as the true model is."""
        step, msg, zero = 0.05 * self.xnorm, msg.detach(), torch.zeros_like(v)
        at_record = self.f(v + step, msg, inp) - self.f(v, msg, inp)
        at_zero = self.f(v + step, zero, zero) - self.f(v, zero, zero)
        return (((at_record - at_zero) / (0.05 * self.yscale)) ** 2).mean()

    def one_step_losses(
        self, v: torch.Tensor, target: torch.Tensor, inp: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Prediction and regulariser terms on frames (B, N)."""
        psi_v = self.psi(v) if self.aggregation == "node" else None
        msg = (
            aggregate_source_messages(psi_v, self.weights, self.edge_index)
            if psi_v is not None
            else self.messages(v)
        )
        pred = self.f(v, msg, inp)
        terms = {"prediction": (((pred - target) / self.yscale) ** 2).mean()}
        return {**terms, **self.regularisers(v, psi_v, msg, inp)}

    def rollout_losses(self, start: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unroll ``time_step`` steps from recorded frames ``start`` (B,) and fit v(start + time_step)."""
        data, steps = self._data_on_device(), int(self.training_cfg["time_step"])
        noise = float(self.training_cfg["noise_recurrent_level"])
        v = data["activity"][start]
        v0, msg0, inp0 = v, None, data["input"][start]
        for s in range(steps):
            inp = data["input"][start + s]
            msg = self.messages(v)
            if s == 0:
                msg0 = msg
            v = v + self.dt * self.f(v, msg, inp)
            if noise > 0:
                v = v + noise * torch.randn_like(v)
        target = data["activity"][start + steps]
        terms = {"prediction": (((v - target) / (self.dt * steps * self.yscale)) ** 2).mean()}
        return {**terms, **self.regularisers(v0, None, msg0, inp0)}

    # ----------------------------------------------------------------- Lightning hooks
    def lr_multiplier(self) -> float:
        """The ``lr_schedule`` multiplier at this optimiser step, over all epochs' steps."""
        cfg = self.training_cfg
        return lr_factor(str(cfg["lr_schedule"]), self.global_step, self.total_steps, cfg)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.phase = self.phase_at(batch_idx)
        rates, factor = self.phase_learning_rates(self.phase), self.lr_multiplier()
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = rates[group["name"]] * factor

    def loss_terms(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.training_cfg["recurrent_training"]:
            return self.rollout_losses(batch["frame"].to(self.device))
        return self.one_step_losses(batch["activity"], batch["derivative"], batch["external_input"])

    def configure_callbacks(self) -> list:
        """An :class:`~hydra_llm.models.embedding_snap.EmbeddingSnap` if ``training.embedding_snap_at``."""
        cfg = self.training_cfg
        if not cfg["embedding_snap_at"]:
            return []
        return [EmbeddingSnap(cfg["embedding_snap_at"], cfg["embedding_snap_components"], cfg["seed"])]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with four named groups (W, g_phi, f_theta, embedding); phases rewrite their rates."""
        rates = self.phase_learning_rates("joint")
        groups = [
            {"name": "W", "params": [self.W], "lr": rates["W"]},
            {"name": "g_phi", "params": list(self.g_phi.parameters()), "lr": rates["g_phi"]},
            {"name": "f_theta", "params": list(self.f_theta.parameters()), "lr": rates["f_theta"]},
            {"name": "embedding", "params": [self.a], "lr": rates["embedding"]},
        ]
        return torch.optim.Adam(groups)
