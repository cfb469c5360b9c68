"""The metabolism GNN's parameters and equations (no training).

Predicted derivative of metabolite ``i`` (concentration units per time unit)::

    dc_i/dt = amp * MLP_node(c_i, a_i) + sum_j S_ij v_j
    v_j     = k_j * aggr_{m in substrates(j)} g(c_m, order_mj),   g = softplus(MLP_sub(c, order))

``aggr`` is ``mul`` (a product, computed as a sum of logs) or ``add``. ``k_j = 10 ** log_k_j`` are free
parameters, ``a_i`` per-metabolite embeddings, ``S`` the stoichiometry (frozen, or learnable). The module
only ever sees :class:`Observations`: the stoichiometry and substrate orders come from
``observations.extras`` when the regime says they are known.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from hydra_llm.models.mlp import MLP
from hydra_llm.schemas import plain, validate
from hydra_llm.schemas.models import MetabolismModel
from hydra_llm.simulation.base import Observations

LN10 = math.log(10.0)
REACTION_ARCH_KEYS = ("hidden_dim_sub", "n_layers_sub", "activation_sub", "substrate_input", "aggr_type")
SUB_LOG_FLOOR = 1e-4  # concentrations below this count as this for the log-input substrate MLP


class ReactionNetwork(pl.LightningModule):
    """Rate constants, substrate MLP, homeostasis MLP and embeddings, and the equations that use them.

    Args:
        observations: the recorded data (concentrations (T, N), derivatives (T, N), dt, and the known
            ``stoichiometry`` (N, R) and ``substrate_order`` (N, R) in ``extras``).
        learnable_stoichiometry: S a parameter (initialised at the observed S) instead of a buffer.
        **architecture: :class:`~hydra_llm.schemas.models.MetabolismModel` keys (MLP sizes, embedding size,
            ``node_form``, ``aggr_type``, activations, ``substrate_input``, ``log_k_init``); missing ones
            take its defaults.
    """

    def __init__(
        self, observations: Observations, learnable_stoichiometry: bool = False, **architecture: Any
    ) -> None:
        super().__init__()
        arch = validate(MetabolismModel, architecture)
        extras = observations.extras
        missing = [k for k in ("stoichiometry", "substrate_order") if k not in extras]
        if missing:
            raise ValueError(
                f"simulation.stoichiometry_known: the metabolism model needs the observed {missing}; "
                "set stoichiometry_known: true"
            )
        self.arch = {k: v for k, v in plain(arch).items() if k != "_target_"}
        self.aggr_type = arch.aggr_type
        self.substrate_input = arch.substrate_input
        self.node_form = arch.node_form
        self.log_c_scale = 3.0
        self.dt = float(observations.dt)
        self.n_train_frames = int(observations.n_train_frames)

        stoich = extras["stoichiometry"].float()
        order = extras["substrate_order"].float()
        n_met, n_rxn = stoich.shape
        met, rxn = torch.nonzero(order > 0, as_tuple=True)
        self.register_buffer("activity", observations.activity.float(), persistent=False)
        self.register_buffer("derivative", observations.derivative.float(), persistent=False)
        self.register_buffer("edge_met", met, persistent=False)
        self.register_buffer("edge_rxn", rxn, persistent=False)
        self.register_buffer("edge_order", order[met, rxn], persistent=False)
        # concentration scale for MLP inputs (a property of the recording, not a hidden parameter)
        self.c_scale = float(observations.activity[: self.n_train_frames].std().clamp_min(1e-6))
        self.n_metabolites, self.n_reactions = int(n_met), int(n_rxn)

        low, high = self.arch["log_k_init"]
        self.log_k = nn.Parameter(torch.empty(n_rxn).uniform_(low, high))
        self.MLP_sub = MLP(
            2, 1, arch.hidden_dim_sub, arch.n_layers_sub, arch.activation_sub, out_init_std=None
        )
        emb = arch.embedding_dim
        node_in, node_out = (1 + emb, 1) if arch.node_form == "mlp" else (emb, 2)
        self.MLP_node = MLP(
            node_in, node_out, arch.hidden_dim_node, arch.n_layers_node, arch.activation, out_init_std=None
        )
        # zero output layer only: the node term starts at 0 but its hidden layers still get gradient
        nn.init.zeros_(self.MLP_node.net[-1].weight)
        nn.init.zeros_(self.MLP_node.net[-1].bias)
        self.embedding = nn.Parameter(1.0 + 0.01 * torch.randn(n_met, emb))
        if learnable_stoichiometry:
            self.stoichiometry = nn.Parameter(stoich.clone())
        else:
            self.register_buffer("stoichiometry", stoich)
        self.node_amplification = 1.0
        # left null space of the observed S (N, n_laws): conserved combinations w^T c that reactions
        # cannot change, so w^T dc/dt is homeostasis alone, whatever the error of the learned reactions
        self.register_buffer("conservation_basis", conservation_basis(stoich), persistent=False)

    # ------------------------------------------------------------------------------- forward
    def log_substrate_function(self, conc: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """log g(c, s) for concentrations ``conc`` and orders ``order`` of the same shape."""
        if self.substrate_input == "log":
            # log-concentration input: a power law c**s is a straight line for the MLP
            x = torch.stack([torch.log(conc.clamp_min(SUB_LOG_FLOOR)) / self.log_c_scale, order], dim=-1)
            return self.MLP_sub(x).squeeze(-1)
        x = torch.stack([conc / self.c_scale, order], dim=-1)
        return torch.log(F.softplus(self.MLP_sub(x).squeeze(-1)).clamp_min(1e-12))

    def substrate_function(self, conc: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """g(c, s) > 0 for concentrations ``conc`` and orders ``order`` of the same shape."""
        return torch.exp(self.log_substrate_function(conc, order))

    def reaction_rates(self, conc: torch.Tensor) -> torch.Tensor:
        """Reaction rates v (B, R) from concentrations (B, N)."""
        log_g = self.log_substrate_function(conc[:, self.edge_met], self.edge_order.expand(conc.shape[0], -1))
        summed = torch.zeros(conc.shape[0], self.n_reactions, dtype=conc.dtype, device=conc.device)
        if self.aggr_type == "mul":
            return torch.exp(LN10 * self.log_k + summed.index_add(1, self.edge_rxn, log_g))
        return torch.exp(LN10 * self.log_k) * summed.index_add(1, self.edge_rxn, torch.exp(log_g))

    def reaction_term(self, conc: torch.Tensor) -> torch.Tensor:
        """sum_j S_ij v_j, (B, N)."""
        return self.reaction_rates(conc) @ self.stoichiometry.T

    def node_function(self, conc: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Raw MLP_node(c_i, a_i) (B, N) for concentrations (B, N); ``embedding`` (N, d) defaults to a."""
        emb = self.embedding if embedding is None else embedding
        if self.node_form == "affine":
            slope_offset = self.MLP_node(emb)  # (N, 2), per metabolite
            return slope_offset[:, 0] * (conc / self.c_scale) + slope_offset[:, 1]
        return self.MLP_node(self.node_inputs(conc, emb)).squeeze(-1)

    def node_inputs(self, conc: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The free MLP_node's inputs (B, N, 1 + d): each concentration over the recording's scale, then
        its metabolite's embedding (N, d)."""
        emb = embedding.expand(conc.shape[0], -1, -1)
        return torch.cat([(conc / self.c_scale).unsqueeze(-1), emb], dim=-1)

    def homeostasis_term(self, conc: torch.Tensor) -> torch.Tensor:
        """The node contribution to dc/dt, (B, N), including the current amplification factor."""
        return self.node_amplification * self.node_function(conc)

    def forward(self, conc: torch.Tensor) -> torch.Tensor:
        """Predicted dc/dt (B, N) for concentrations (B, N)."""
        return self.reaction_term(conc) + self.homeostasis_term(conc)

    def rollout(self, conc: torch.Tensor, n_steps: int, detach_reactions: bool = False) -> torch.Tensor:
        """Euler-unroll ``n_steps`` from ``conc`` (B, N); the states after each step, (n_steps, B, N)."""
        states = []
        for _ in range(n_steps):  # time stepping is sequential
            reaction = self.reaction_term(conc)
            if detach_reactions:
                reaction = reaction.detach()
            conc = conc + self.dt * (reaction + self.homeostasis_term(conc))
            states.append(conc)
        return torch.stack(states)

    def window(self, starts: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Recorded states (n_steps + 1, B, N) from each start frame."""
        offsets = torch.arange(n_steps + 1, device=starts.device)
        return self.activity[starts.unsqueeze(0) + offsets.unsqueeze(1)]

    # ---------------------------------------------------------------------------- read-outs
    def alpha(self) -> float:
        """Scale of the learned substrate function at c = 1, order 1 (1 for exact mass action)."""
        with torch.no_grad():
            one = torch.ones(1, device=self.log_k.device)
            return float(self.substrate_function(one, one))

    def corrected_log_k(self) -> torch.Tensor:
        """log10 k with the substrate scale folded back in (R,): ``log k + n_sub log alpha`` (mul),
        ``log k + log alpha`` (add)."""
        n_sub = torch.zeros(self.n_reactions, device=self.log_k.device).index_add(
            0, self.edge_rxn, torch.ones_like(self.edge_rxn, dtype=torch.float32)
        )
        factor = n_sub if self.aggr_type == "mul" else torch.ones_like(n_sub)
        return (self.log_k + factor * math.log10(max(self.alpha(), 1e-30))).detach()

    def response_curves(self, n_points: int) -> torch.Tensor:
        """MLP_node(c, a_i) on a concentration grid spanning the training recording, (N, n_points)."""
        train = self.activity[: self.n_train_frames]
        grid = torch.linspace(float(train.min()), float(train.max()), n_points, device=train.device)
        return self.node_function(grid.unsqueeze(1).expand(-1, self.n_metabolites)).T


def left_sums(rate: torch.Tensor, dt: float) -> torch.Tensor:
    """``dt * sum_{s<t} rate(s)`` along the first axis (frames), the same shape as ``rate``: the integral
    from frame 0 to frame t by left Riemann sums, exact for the regime's explicit Euler steps."""
    return torch.cat([torch.zeros_like(rate[:1]), dt * rate[:-1].cumsum(0)])


def conservation_basis(stoichiometry: torch.Tensor, rtol: float = 1e-8) -> torch.Tensor:
    """Orthonormal basis (N, N - rank S) of the left null space of the stoichiometry S (N, R).

    Each column w satisfies w^T S = 0: the combination w^T c of concentrations is conserved by every
    reaction (the all-ones vector is one of them when reactions conserve molecules).
    """
    u, sv, _ = torch.linalg.svd(stoichiometry.double(), full_matrices=True)
    rank = int((sv > rtol * sv.max().clamp_min(1e-300)).sum()) if sv.numel() else 0
    return u[:, rank:].float().contiguous()
