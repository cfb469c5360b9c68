"""Passive point neurons with graded synapses (the flyvis model), integrated with explicit Euler.

    dV_i/dt = (-V_i + V_rest_i + sum_j w_ij ReLU(V_j) + e_i(t)) / tau_eff_i

with ``tau_eff = max(tau, dt)`` when ``clamp_tau`` (flyvis's rule; most trained types have tau < dt)
or the raw tau otherwise. ``e_i(t)`` is the luminance of neuron i's column for the photoreceptor types
and 0 elsewhere. Process noise follows the convention of the GNN papers: ``noise_model_level * xi``
added to V after every step (not scaled by sqrt(dt)), so the recorded finite-difference derivative
carries ``noise/dt``. One step is a sparse CSR mat-vec over all edges; nothing loops over neurons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from hydra_llm.simulation.base import IndexedInput
from hydra_llm.simulation.flyvis.connectome import Connectome

GREY = 0.5


@dataclass(frozen=True)
class FlyvisODE:
    """The right-hand side of the model on one connectome; arrays float32, voltages shape (N,)."""

    W: sp.csr_matrix  # (N, N), row = target, column = source
    tau_eff: np.ndarray  # (N,) seconds
    V_rest: np.ndarray  # (N,)
    input_index: np.ndarray  # (K,) neurons receiving visual input
    input_column: np.ndarray  # (K,) their column index
    dt: float

    @classmethod
    def build(
        cls,
        connectome: Connectome,
        edge_weights: np.ndarray,
        tau: np.ndarray,
        V_rest: np.ndarray,
        dt: float,
        clamp_tau: bool = True,
    ) -> FlyvisODE:
        """From per-edge weights (E,) and per-neuron tau, V_rest (N,)."""
        n = connectome.n_neurons
        W = sp.csr_matrix(
            (edge_weights.astype(np.float32), (connectome.edge_tgt, connectome.edge_src)), shape=(n, n)
        )
        tau_eff = np.maximum(tau, dt) if clamp_tau else np.asarray(tau)
        if np.any(tau_eff <= 0):
            raise ValueError("tau must be > 0 when simulation.clamp_tau is false")
        inputs = np.flatnonzero(connectome.input_mask)
        return cls(
            W=W,
            tau_eff=tau_eff.astype(np.float32),
            V_rest=np.asarray(V_rest, dtype=np.float32),
            input_index=inputs,
            input_column=connectome.node_column[inputs],
            dt=float(dt),
        )

    @property
    def n_neurons(self) -> int:
        return int(self.W.shape[0])

    def input_movie(self, stimulus: np.ndarray) -> IndexedInput:
        """e(t) for a column movie (T, C), stored as the movie: (T, N) when indexed."""
        return IndexedInput(
            torch.from_numpy(np.ascontiguousarray(stimulus, dtype=np.float32)),
            torch.from_numpy(self.input_index).long(),
            torch.from_numpy(self.input_column).long(),
            self.n_neurons,
        )

    def rate(self, V: np.ndarray, column_luminance: np.ndarray) -> np.ndarray:
        """(N,) dV/dt at voltages V (N,) under one frame of column luminance (C,)."""
        drive = self.V_rest + self.W @ np.maximum(V, 0.0)
        drive[self.input_index] += column_luminance[self.input_column]
        return (drive - V) / self.tau_eff

    def steady_state(self, warmup_s: float, grey: float = GREY) -> np.ndarray:
        """(N,) voltages after ``warmup_s`` seconds of uniform grey input, starting at V_rest."""
        V = self.V_rest.copy()
        frame = np.full(int(self.input_column.max(initial=0)) + 1, grey, dtype=np.float32)
        for _ in range(int(round(warmup_s / self.dt))):
            V = V + self.dt * self.rate(V, frame)
        return V

    def run(
        self,
        stimulus: np.ndarray,
        V0: np.ndarray,
        noise_level: float = 0.0,
        rng: np.random.Generator | None = None,
        record: bool = True,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Integrate over a column movie (T, C); frame t of the result is V before step t.

        Returns (voltages (T, N) float32 or None when ``record`` is false, final V (N,)); the voltages
        are written into ``out`` (T, N) float32 when it is given (e.g. a slice of a longer record).
        """
        rng = rng if rng is not None else np.random.default_rng(0)
        stimulus = np.asarray(stimulus, dtype=np.float32)
        V = V0.astype(np.float32).copy()
        shape = (stimulus.shape[0], self.n_neurons)
        if out is not None and (out.shape != shape or out.dtype != np.float32):
            raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; needs {shape} float32")
        if out is None and record:
            out = np.empty(shape, dtype=np.float32)
        scale = self.dt / self.tau_eff
        rectified = np.empty_like(V)
        noise = np.empty_like(V)
        # in-place updates: one sparse mat-vec and no other temporaries per step
        for t in range(stimulus.shape[0]):
            if out is not None:
                out[t] = V
            np.maximum(V, 0.0, out=rectified)
            drive = self.W @ rectified
            drive += self.V_rest
            drive[self.input_index] += stimulus[t, self.input_column]
            drive -= V
            drive *= scale
            V += drive
            if noise_level > 0:
                rng.standard_normal(out=noise, dtype=np.float32)
                noise *= noise_level
                V += noise
        return out, V


def flicker_probe(
    ode: FlyvisODE, n_columns: int, n_steps: int, rng: np.random.Generator, noise_level: float = 0.0
) -> float:
    """Max |V| over 1 s of grey then ``n_steps`` of per-column uniform flicker with process noise
    (inf when it diverges)."""
    stim = rng.random((n_steps, n_columns), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        voltages, _ = ode.run(stim, ode.steady_state(1.0), noise_level, rng)
    peak = float(np.max(np.abs(voltages)))
    return peak if np.isfinite(peak) else float("inf")
