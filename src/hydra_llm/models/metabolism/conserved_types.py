"""Metabolite types read from the conservation laws of the observed stoichiometry, with no reaction model.

Reactions conserve every combination ``w^T c`` with ``w^T S = 0`` (S observed), so these combinations move
only by homeostasis, ``h_i = -lambda_i (c_i - b_i)``, whatever the reaction rates. Integrated in time
(left Riemann sums, exact for the regime's Euler steps) this is a linear regression on the *raw* record,
with no derivative and no phase-1 model::

    w_k^T c(t) = y0_k + t * gamma_k - sum_i w_ki lambda_i X_i(t),     X_i(t) = dt * sum_{s<t} c_i(s)

Measurement noise enters only as white noise on the left-hand side. Per law, an intercept ``y0_k`` and a
rate ``gamma_k`` (which holds the offsets ``lambda_i b_i``) are nuisance terms and are projected out.

With a free lambda per metabolite the regression is poorly conditioned (N unknowns, a few laws); with a
lambda per *type* it is well posed, and the partition is found by a local search over single moves and
swaps from several starts (:func:`conserved_types`). The search uses the affine form only to find the
partition; the phase-2 strategy that calls it (``training.embedding_init: conserved_types``) learns
``MLP_node(c, a)`` freely from embeddings placed by that partition.

All arrays are float64 numpy; shapes: c (T, N) concentrations, W (N, K) conservation basis.
"""

from __future__ import annotations

import numpy as np
import torch

from hydra_llm.models.metabolism.network import left_sums


def conserved_normal_equations(
    c: np.ndarray, W: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Normal equations of the integrated conservation regression for ``-lambda`` (one unknown per
    metabolite), with each law's intercept and rate projected out.

    Returns ``G = A^T A`` (N, N), ``r = A^T y`` (N,) and ``y^T y``. Built law by law, so memory is O(T N).
    """
    T, N = c.shape
    X = left_sums(torch.from_numpy(c), dt).numpy()
    q, _ = np.linalg.qr(np.stack([np.ones(T), np.arange(T) * dt], 1))  # (T, 2) nuisance, orthonormal
    X = X - q @ (q.T @ X)
    G, r, yy = np.zeros((N, N)), np.zeros(N), 0.0
    for k in range(W.shape[1]):
        a = -X * W[:, k]  # (T, N): the law's regressors of -lambda
        y = c @ W[:, k]
        y = y - q @ (q.T @ y)
        G += a.T @ a
        r += a.T @ y
        yy += float(y @ y)
    return G, r, yy


def ridge_rates(G: np.ndarray, r: np.ndarray, ridge: float) -> np.ndarray:
    """A free lambda per metabolite, shrunk towards the common mean by ``ridge`` (relative), (N,)."""
    n = len(r)
    shrink = ridge * float(G.diagonal().mean()) * (np.eye(n) - 1.0 / n)
    return np.linalg.solve(G + shrink, r)


def typed_fit(
    G: np.ndarray, r: np.ndarray, yy: float, labels: np.ndarray, n_types: int
) -> tuple[np.ndarray, float]:
    """Least-squares lambda per type for a partition ``labels`` (N,) in ``0 .. n_types - 1``:
    (lambda (n_types,), residual sum of squares)."""
    M = np.eye(n_types)[labels]  # (N, n_types)
    lhs, rhs = M.T @ G @ M, M.T @ r
    lam = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return lam, float(yy - rhs @ lam)


def local_search(
    G: np.ndarray, r: np.ndarray, yy: float, labels: np.ndarray, n_types: int, candidates: int = 15
) -> np.ndarray:
    """Take the best single move (one metabolite to another type) or swap (two metabolites of two types
    exchange types, among the ``candidates`` best single moves of each type) while the residual goes down."""
    n = len(labels)
    current = typed_fit(G, r, yy, labels, n_types)[1]
    for _ in range(10 * n):
        # best single move of each metabolite, and where it goes
        gain = np.full(n, np.inf)
        target = labels.copy()
        for i in range(n):
            for k in range(n_types):
                if k != labels[i]:
                    moved = labels.copy()
                    moved[i] = k
                    sse = typed_fit(G, r, yy, moved, n_types)[1]
                    if sse < gain[i]:
                        gain[i], target[i] = sse, k
        best = int(gain.argmin())
        moves = [(float(gain[best]), {best: int(target[best])})]
        tops = [
            np.flatnonzero(labels == k)[np.argsort(gain[labels == k])[:candidates]] for k in range(n_types)
        ]
        for a in range(n_types):
            for b in range(a + 1, n_types):
                for i in tops[a]:
                    for j in tops[b]:
                        swapped = labels.copy()
                        swapped[[i, j]] = [b, a]
                        moves.append((typed_fit(G, r, yy, swapped, n_types)[1], {int(i): b, int(j): a}))
        sse, move = min(moves, key=lambda m: m[0])
        if sse >= current * (1 - 1e-12):
            break
        labels = labels.copy()
        for i, k in move.items():
            labels[i] = k
        current = sse
    return labels


def quantile_split(values: np.ndarray, n_types: int) -> np.ndarray:
    """Labels (N,) that split ``values`` into ``n_types`` groups of equal size, lowest first."""
    ranks = np.argsort(np.argsort(values))
    return (ranks * n_types // len(values)).astype(int)


def conserved_types(
    c: np.ndarray,
    W: np.ndarray,
    dt: float,
    n_types: int = 2,
    restarts: int = 10,
    ridge: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The partition of metabolites into ``n_types`` homeostatic types that fits the conserved
    combinations best, and its rates.

    Starts: quantile splits of ridge fits (``ridge`` and 1e-4 .. 1e-2) and ``restarts`` random partitions,
    each improved by :func:`local_search`; the lowest residual wins. Types are numbered by increasing
    fitted lambda. Returns labels (N,) and lambda per type (n_types,).
    """
    if W.shape[1] == 0:
        raise ValueError(
            "training.embedding_init=conserved_types: the observed stoichiometry conserves nothing"
        )
    G, r, yy = conserved_normal_equations(c, W, dt)
    rng = np.random.default_rng(seed)
    starts = [quantile_split(ridge_rates(G, r, k), n_types) for k in (ridge, 1e-4, 1e-3, 1e-2)]
    starts += [rng.integers(0, n_types, len(r)) for _ in range(restarts)]
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for start in starts:
        labels = local_search(G, r, yy, start, n_types)
        lam, sse = typed_fit(G, r, yy, labels, n_types)
        if best is None or sse < best[0]:
            best = (sse, labels, lam)
    _, labels, lam = best
    order = np.argsort(lam)  # type 0 is the slowest
    return np.argsort(order)[labels], lam[order]
