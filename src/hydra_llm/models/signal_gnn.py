"""Signal GNN: ``du_i/dt = phi(u_i, a_i) + sum_j W_ij psi(u_j, a_j)``.

* ``W``: learnable connectivity, dense (N, N) with a fixed zero diagonal when the graph is unknown,
  or one weight per known edge when ``Observations.edge_index`` is given.
* ``phi`` (update) and ``psi`` (edge) MLPs take ``[u / xnorm, a]``; ``a_i`` are per-neuron
  embeddings of size ``embedding_dim`` that must discover the neuron types (types are never given).
* ``psi`` is evaluated once per neuron and frame and aggregated with a matrix product
  (:mod:`hydra_llm.models.layers`).

Loss per step, on a batch of ``batch_size`` random training frames (u, du/dt)::

    mean((pred - du/dt)^2)                              prediction (units of du/dt squared)
    + coeff_W_L1     * sum |W|                          sparsity of the learned weights
    + coeff_edge_diff * mean(relu(psi(u) - psi(u + d))) psi non-decreasing, d = 0.05 * xnorm,
                                                        on every (frame, neuron) of the batch
    + coeff_edge_norm * mean_j (psi(2 xnorm, a_j) - 1)^2 fixes the W <-> psi scale (gauge)
    + coeff_phi_zero  * mean_i phi(0, a_i)^2             phi(0) = 0, fixes the phi <-> psi offset

All terms are computed on every step with their full coefficients (no annealing). ``xnorm`` is the
standard deviation of the training activity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hydra_llm.code_edits.loader import strategy
from hydra_llm.models.frame_gnn import FrameGNN
from hydra_llm.models.layers import EdgeGraph, aggregate_dense, aggregate_edges
from hydra_llm.models.mlp import MLP
from hydra_llm.schemas import as_dict, plain, validate
from hydra_llm.schemas.models import SignalModel
from hydra_llm.schemas.training import SignalTraining
from hydra_llm.simulation.base import Observations
from hydra_llm.simulation.frames import FrameSampling, iterations_per_epoch

SIGNAL_LOSS = "hydra_llm.strategies.signal_loss"  # the editable loss (see its module)


def validate_training(training: Mapping[str, Any] | None) -> dict[str, Any]:
    """``training`` over the :class:`SignalTraining` defaults, checked; ValueError names the bad key."""
    return as_dict(SignalTraining, training)


class SignalGNN(FrameGNN):
    """The signal-regime GNN as a LightningModule (receives Observations only)."""

    # Lets a caller check cfg.training before simulating: get_class(target).check_training(training).
    check_training = staticmethod(validate_training)

    def __init__(
        self, observations: Observations, training: Mapping[str, Any] | None = None, **architecture: Any
    ) -> None:
        """Args:
        observations: the recorded data (activity and derivative (T, N); ``edge_index`` when known).
        training: training options (:class:`~hydra_llm.schemas.training.SignalTraining`).
        **architecture: :class:`~hydra_llm.schemas.models.SignalModel` keys; missing ones take its defaults.
        """
        super().__init__()
        if not isinstance(observations, Observations):
            raise TypeError(f"observations must be an Observations, got {type(observations).__name__}")
        arch = validate(SignalModel, architecture)
        if arch.w_layout == "edges" and observations.edge_index is None:
            raise ValueError("model.w_layout='edges' needs a known graph (simulation.structure_known=true)")
        self.training_cfg = validate_training(training)
        hparams = {k: v for k, v in plain(arch).items() if k not in ("_target_", "cpu_threads")}
        self.save_hyperparameters({**hparams, **self.training_cfg})
        n = observations.n_neurons
        self.n_neurons = n
        self.n_frames = observations.n_frames
        train = observations.activity[: observations.n_train_frames]
        # Scales of u and du/dt (a silent network would give 0: fall back to 1 instead of dividing by 0).
        self.xnorm = float(train.std()) or 1.0
        self.ynorm = float(observations.derivative[: observations.n_train_frames].std()) or 1.0

        generator = torch.Generator().manual_seed(int(self.training_cfg["seed"]))
        self.use_edges = arch.w_layout == "edges" or (
            arch.w_layout == "auto" and observations.edge_index is not None
        )
        if self.use_edges:
            self.graph = EdgeGraph(observations.edge_index, n)
            # W[e] is the weight of edge_index[:, e], in the graph's (target, source) order.
            self.register_buffer("edge_index", self.graph.edge_index)
            n_weights: tuple[int, ...] = (self.edge_index.shape[1],)
        else:
            self.register_buffer("offdiag", 1.0 - torch.eye(n))
            n_weights = (n, n)
        self.W = nn.Parameter(torch.randn(n_weights, generator=generator) * arch.w_init_std)
        self.a = nn.Parameter(torch.ones(n, arch.embedding_dim))
        n_in = 1 + arch.embedding_dim
        self.phi = MLP(n_in, 1, arch.hidden_dim_update, arch.n_layers_update, arch.activation)
        self.psi = MLP(n_in, 1, arch.hidden_dim, arch.n_layers, arch.activation)
        self.cpu_threads = arch.cpu_threads
        self._threads_before: int | None = None

    # ----------------------------------------------------------------- the learned functions

    def _features(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` (B, N) -> MLP inputs (B, N, 1 + emb) = [u / xnorm, a]."""
        a = self.a.expand(u.shape[0], -1, -1)
        return torch.cat([(u / self.xnorm).unsqueeze(-1), a], dim=-1)

    def phi_of(self, u: torch.Tensor) -> torch.Tensor:
        """phi(u_i, a_i) for ``u`` (B, N) -> (B, N), in units of du/dt."""
        return self.phi(self._features(u)).squeeze(-1) * self.ynorm

    def psi_of(self, u: torch.Tensor) -> torch.Tensor:
        """psi(u_j, a_j) for ``u`` (B, N) -> (B, N), dimensionless (normalised to 1 at 2 xnorm)."""
        return self.psi(self._features(u)).squeeze(-1)

    def learned_W(self) -> torch.Tensor:
        """The effective connectivity (N, N), target x source, zero where no edge is modelled."""
        if self.use_edges:
            dense = torch.zeros(self.n_neurons, self.n_neurons, dtype=self.W.dtype, device=self.W.device)
            return dense.index_put((self.edge_index[1], self.edge_index[0]), self.W)
        return self.W * self.offdiag

    def aggregate(self, psi: torch.Tensor) -> torch.Tensor:
        """sum_j W_ij psi_j for ``psi`` (B, N) -> (B, N)."""
        if self.use_edges:
            return aggregate_edges(psi, self.W, self.graph.to(psi.device))
        return aggregate_dense(psi, self.W * self.offdiag)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Predicted du/dt (B, N) for states ``u`` (B, N)."""
        return self.phi_of(u) + self.aggregate(self.psi_of(u))

    # ----------------------------------------------------------------- training

    @property
    def frame_sampling(self) -> FrameSampling:
        """Batch size and the iteration count per epoch, read by the DataModule."""
        batch_size = int(self.training_cfg["batch_size"])
        n_iter = iterations_per_epoch(
            self.n_frames, float(self.training_cfg["data_augmentation_loop"]), batch_size
        )
        return FrameSampling(
            batch_size=batch_size, batches_per_epoch=n_iter, seed=int(self.training_cfg["seed"])
        )

    def losses(self, u: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every loss term (already weighted) for a batch ``u``, ``target`` (B, N): the editable
        strategy ``hydra_llm.strategies.signal_loss``, or the code version this run was given."""
        return strategy(SIGNAL_LOSS).loss_terms(self, u, target)

    def loss_terms(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.losses(batch["activity"], batch["derivative"])

    def on_fit_start(self) -> None:
        # The per-step tensors are tiny: on a shared CPU, several intra-op threads cost more in
        # synchronisation than they save (measured: 9.3 min vs 2.6 min for the default run).
        if self.cpu_threads is not None and self.device.type == "cpu":
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(self.cpu_threads)

    def on_fit_end(self) -> None:
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with three parameter groups: W, the MLPs, the embeddings (each its own lr)."""
        cfg = self.training_cfg
        groups = [
            {"name": "W", "params": [self.W], "lr": float(cfg["learning_rate_W_start"])},
            {
                "name": "mlp",
                "params": [*self.phi.parameters(), *self.psi.parameters()],
                "lr": float(cfg["learning_rate_start"]),
            },
            {"name": "embedding", "params": [self.a], "lr": float(cfg["learning_rate_embedding_start"])},
        ]
        # fused: one kernel for all parameters, several times faster than the per-tensor loop on CPU.
        return torch.optim.Adam(groups, fused=True)
