"""Typed model options: one dataclass per ``model`` option (the architecture), the one place its defaults
live. Each model class validates its keyword arguments against its schema, so ``instantiate`` from the
config and a direct call in Python get the same defaults and the same one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from hydra_llm.schemas.ranges import at_least_one, fail, non_negative, ordered_pair


class Activation(StrEnum):
    """Hidden-layer nonlinearity of an MLP (``hydra_llm.models.mlp.ACTIVATIONS``)."""

    relu = "relu"
    tanh = "tanh"
    silu = "silu"
    softplus = "softplus"


class WLayout(StrEnum):
    """auto: dense N x N when the graph is unknown, one weight per edge when known."""

    auto = "auto"
    dense = "dense"
    edges = "edges"


class WInitMode(StrEnum):
    """zeros | randn | randn_scaled (std = w_init_scale / sqrt(n_edges))."""

    zeros = "zeros"
    randn = "randn"
    randn_scaled = "randn_scaled"


class MessageAggregation(StrEnum):
    """node: g_phi once per neuron, then a gather and an index_add; sparse: g_phi once per neuron, then
    torch-geometric ``propagate`` with a CSR product (the speed baseline); edge: per-edge MessagePassing
    (the reference)."""

    node = "node"
    sparse = "sparse"
    edge = "edge"


class UpdateForm(StrEnum):
    """joint: f_theta(v, a, msg, I) is one MLP; separable: f_theta = leak(v, a) + drive(msg, I, a), two
    MLPs, so f's slope in v is the same at every message (the line read-out's at msg = 0 included);
    affine: separable with ``drive = g(a) msg + k(a) I``, so f at msg = 0 is the straight continuation
    of f over the recorded messages."""

    joint = "joint"
    separable = "separable"
    affine = "affine"


class NodeForm(StrEnum):
    """mlp: MLP_node(c, a) free in both; affine: MLP_node(a) gives a slope and an offset in c."""

    mlp = "mlp"
    affine = "affine"


class ReactionAggregation(StrEnum):
    """mul: product over substrates (a sum of logs); add: sum over substrates."""

    mul = "mul"
    add = "add"


class SubstrateInput(StrEnum):
    """log: MLP_sub reads log c (a power law is a line); linear: reads c."""

    log = "log"
    linear = "linear"


@dataclass
class SignalModel:
    """``model=signal_gnn``: ``du_i/dt = phi(u_i, a_i) + sum_j W_ij psi(u_j, a_j)``; MLP input sizes derive
    from ``embedding_dim``."""

    GROUP: ClassVar[str] = "model"
    _target_: str = "hydra_llm.models.signal_gnn.SignalGNN"
    embedding_dim: int = 2
    hidden_dim: int = 64  # psi (edge MLP)
    n_layers: int = 3
    hidden_dim_update: int = 64  # phi (update MLP)
    n_layers_update: int = 3
    activation: Activation = Activation.relu
    w_layout: WLayout = WLayout.auto
    w_init_std: float = 0.0
    # torch intra-op threads during fit on CPU (None: torch's default); small tensors run best on 1
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        at_least_one(self, "embedding_dim", "hidden_dim", "n_layers", "hidden_dim_update", "n_layers_update")
        non_negative(self, "w_init_std")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            fail(self, "cpu_threads", self.cpu_threads, "must be >= 1 or null")


@dataclass
class FlyvisModel:
    """``model=flyvis_gnn``: ``msg_i = sum_e W_e g_phi(v_j, a_j)^2``; ``dv_i/dt = f_theta(v_i, a_i, msg_i,
    I_i)``. MLP input sizes derive from ``embedding_dim``."""

    GROUP: ClassVar[str] = "model"
    _target_: str = "hydra_llm.models.flyvis_gnn.FlyvisGNN"
    embedding_dim: int = 2
    hidden_dim: int = 80  # g_phi
    n_layers: int = 3
    hidden_dim_update: int = 80  # f_theta (each of its two MLPs when separable)
    n_layers_update: int = 3
    update_form: UpdateForm = UpdateForm.joint
    activation: Activation = Activation.relu
    g_phi_positive: bool = True  # square g_phi (messages >= 0 before W)
    w_init_mode: WInitMode = WInitMode.randn_scaled
    w_init_scale: float = 1.0
    aggregation: MessageAggregation = MessageAggregation.node
    # False: W is held at 0 on self-loops (edge j -> j), and f_theta absorbs them. While relu(v_j) is linear
    # over the record, a self-loop's weight cannot be told from the neuron's leak. At extent 8 holding them
    # lifted one seed (0.935 -> 0.953) and not another (0.947 -> 0.944): BENCHMARKS.md, "Autapses"
    learn_autapses: bool = True

    def __post_init__(self) -> None:
        at_least_one(self, "embedding_dim", "hidden_dim", "n_layers", "hidden_dim_update", "n_layers_update")
        non_negative(self, "w_init_scale")


@dataclass
class MetabolismModel:
    """``model=metabolism_gnn``: ``dc_i/dt = MLP_node(c_i, a_i) + sum_j S_ij k_j aggr_m g(c_m, order_mj)``."""

    GROUP: ClassVar[str] = "model"
    _target_: str = "hydra_llm.models.metabolism.MetabolismGNN"
    hidden_dim_sub: int = 64
    n_layers_sub: int = 4
    hidden_dim_node: int = 32
    n_layers_node: int = 2
    embedding_dim: int = 2
    node_form: NodeForm = NodeForm.mlp
    aggr_type: ReactionAggregation = ReactionAggregation.mul
    substrate_input: SubstrateInput = SubstrateInput.log
    activation: Activation = Activation.tanh  # MLP_node
    activation_sub: Activation = Activation.silu  # MLP_sub
    log_k_init: list[float] = field(default_factory=lambda: [-2.5, -0.5])  # log10 k ~ U[low, high] at init

    def __post_init__(self) -> None:
        at_least_one(
            self, "hidden_dim_sub", "n_layers_sub", "hidden_dim_node", "n_layers_node", "embedding_dim"
        )
        ordered_pair(self, "log_k_init")


MODELS: dict[str, type] = {schema._target_: schema for schema in (SignalModel, FlyvisModel, MetabolismModel)}
