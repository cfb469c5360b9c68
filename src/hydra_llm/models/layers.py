"""Aggregation of source-only messages ``msg_i = sum_j W_ij psi(u_j, a_j)``.

Because ``psi`` depends only on the source neuron, it is evaluated once per neuron and per frame,
and the sum over edges is a (dense or sparse) matrix product. :class:`EdgeMessagePassing` computes
the same quantity the textbook way, one ``psi`` per edge with torch-geometric, and serves as the
test oracle; :class:`SparsePropagate` is torch-geometric's idiomatic sparse form, the speed baseline.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import spmm

# CSR products are what we rely on; torch flags them as beta on every first use.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def aggregate_dense(psi: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``psi`` (B, N) per source neuron, ``W`` (N, N) target x source -> messages (B, N)."""
    return psi @ W.T


class EdgeGraph:
    """A fixed edge list (2, E) (row 0 source, row 1 target) prepared for fast sparse products.

    Edges are kept sorted by (target, source): :attr:`edge_index` is that order, and per-edge
    weights passed to :func:`aggregate_edges` must follow it. Holds the CSR structure of the
    (target, source) matrix and of its transpose, so that the forward product and both gradients
    are sparse kernels or a single gather, with no sort or coalesce on the hot path.
    """

    def __init__(self, edge_index: torch.Tensor, n_nodes: int) -> None:
        source, target = edge_index[0].long(), edge_index[1].long()
        self.n_nodes = int(n_nodes)
        self.order = torch.argsort(target * n_nodes + source)  # edges sorted by (target, source)
        self.source = source[self.order]
        self.target = target[self.order]
        self.crow = _crow(self.target, n_nodes)
        self.flat = self.target * n_nodes + self.source  # position of each edge in the flat N x N matrix
        # For dense enough graphs the weight gradient is cheapest as a dense outer product sampled
        # at the edges; for sparse ones as a per-edge gather.
        self.outer_grad = n_nodes * n_nodes <= 16 * max(1, source.numel())
        self.t_order = torch.argsort(self.source * n_nodes + self.target)  # sorted -> by (source, target)
        self.t_crow = _crow(self.source[self.t_order], n_nodes)
        self.t_col = self.target[self.t_order]

    @property
    def edge_index(self) -> torch.Tensor:
        """(2, E) edges in the graph's order: row 0 source, row 1 target."""
        return torch.stack([self.source, self.target])

    def to(self, device: torch.device) -> EdgeGraph:
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self


def _crow(sorted_rows: torch.Tensor, n_nodes: int) -> torch.Tensor:
    counts = torch.bincount(sorted_rows, minlength=n_nodes)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


class _SparseAggregate(torch.autograd.Function):
    """msg (B, N) = psi (B, N) @ A^T for the CSR matrix A with values ``w_sorted`` (E,)."""

    @staticmethod
    def forward(ctx, w_sorted: torch.Tensor, psi: torch.Tensor, graph: EdgeGraph) -> torch.Tensor:
        n = graph.n_nodes
        matrix = torch.sparse_csr_tensor(graph.crow, graph.source, w_sorted, (n, n), check_invariants=False)
        ctx.save_for_backward(w_sorted, psi)
        ctx.graph = graph
        return (matrix @ psi.T).T

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        w_sorted, psi = ctx.saved_tensors
        graph, n = ctx.graph, ctx.graph.n_nodes
        grad_w = grad_psi = None
        if ctx.needs_input_grad[0]:
            if graph.outer_grad:
                grad_w = (grad_out.T @ psi).reshape(-1).index_select(0, graph.flat)
            else:
                grad_w = (grad_out.index_select(1, graph.target) * psi.index_select(1, graph.source)).sum(0)
        if ctx.needs_input_grad[1]:
            transposed = torch.sparse_csr_tensor(
                graph.t_crow, graph.t_col, w_sorted[graph.t_order], (n, n), check_invariants=False
            )
            grad_psi = (transposed @ grad_out.T).T
        return grad_w, grad_psi, None


def aggregate_edges(psi: torch.Tensor, weight: torch.Tensor, graph: EdgeGraph) -> torch.Tensor:
    """``psi`` (B, N), per-edge ``weight`` (E,) in ``graph.edge_index`` order -> messages (B, N).

    A CSR sparse-dense product; autograd reaches ``weight`` and ``psi``.
    """
    return _SparseAggregate.apply(weight, psi.contiguous(), graph)


class EdgeMessagePassing(MessagePassing):
    """Per-edge reference: ``msg_i = sum_{(j -> i)} w_e * psi(x_j)`` with ``psi`` called once per edge.

    ``x`` is (N, B, F): per node, per frame, the features ``[u_j, a_j]``; returns (N, B).
    """

    def __init__(self, psi: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__(aggr="add", node_dim=0)
        self.psi = psi

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.propagate(edge_index, x=x, weight=weight)

    def message(self, x_j: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight[:, None] * self.psi(x_j).squeeze(-1)


class SparsePropagate(MessagePassing):
    """The idiomatic torch-geometric form of ``msg_i = sum_{(j -> i)} w_e x_j``: ``propagate`` over a
    sparse (CSR) adjacency, fused into one sparse-dense product by ``message_and_aggregate``.

    The node transform (``psi`` once per neuron) happens before this layer. The CSR structure is
    sorted once; the adjacency is rebuilt from ``weight`` on every call so that autograd reaches it.

    Args:
        edge_index: (2, E) row 0 source, row 1 target.
        n_nodes: N.

    Shapes: ``forward(x (N, B), weight (E,))`` returns (N, B); ``weight`` follows ``edge_index``.
    """

    def __init__(self, edge_index: torch.Tensor, n_nodes: int) -> None:
        super().__init__(aggr="sum")
        graph = EdgeGraph(edge_index, n_nodes)
        self.n_nodes = graph.n_nodes
        self.register_buffer("order", graph.order, persistent=False)
        self.register_buffer("crow", graph.crow, persistent=False)
        self.register_buffer("col", graph.source, persistent=False)

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n = self.n_nodes
        adj_t = torch.sparse_csr_tensor(
            self.crow, self.col, weight[self.order], (n, n), check_invariants=False
        )
        return self.propagate(adj_t, x=x)

    def message_and_aggregate(self, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return spmm(adj_t, x, reduce=self.aggr)
