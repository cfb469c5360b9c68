"""Signal regime (NeuralGraph's PDE_N2): N neurons of K types on a random connectome.

Dynamics of neuron ``i`` of type ``k = type(i)`` (time in the regime's unit, ``u`` dimensionless)::

    du_i/dt = -u_i / tau_k + s_k * tanh(u_i) + g_k * sum_j W_ij tanh(u_j)

integrated with explicit Euler at step ``delta_t``. Process noise: each step adds
``noise_model_level * sqrt(delta_t) * xi`` with ``xi ~ N(0, 1)`` per neuron, i.e.
``noise_model_level`` is the diffusion coefficient sigma of the SDE ``du = f(u) dt + sigma dB``, so
the noise does not change with ``delta_t``. (The original added ``level * xi`` per step, unscaled.)

Connectivity ``W`` (N, N), ``W_ij`` = weight from source ``j`` to target ``i``:

* ``chaotic``: ``W_ij ~ N(0, 1/N)``;
* ``low_rank``: ``W = U V / sqrt(r N)`` with ``U`` (N, r), ``V`` (r, N) standard normal;
* ``Dale_law``: magnitudes kept, exactly ``round(Dale_law_factor * N)`` presynaptic neurons
  (columns, chosen at random) excitatory, the rest inhibitory;
* ``connectivity_filling_factor`` f: each off-diagonal entry is kept with probability f;
* the diagonal is always zero. The true edge set (non-zero entries) is recorded in the ground truth.

The first ``burn_in_frames`` steps are simulated and discarded. ``n_frames + 1`` states are then
recorded, with measurement noise of ``measurement_noise_level`` times each neuron's std added to the
record (:mod:`hydra_llm.simulation.recording`). ``activity`` and the training target ``derivative``
hold the first ``n_frames``, both computed from the record. With ``smoothing_window: 1`` (the default)
they are the record and its forward difference ``(u[t+1] - u[t]) / delta_t``, which without
measurement noise equals ``f(u[t]) + noise/delta_t`` exactly; under measurement noise a
Savitzky-Golay window smooths both. Frames ``[0, n_train_frames)`` (the first ``1 - test_fraction``)
are for training; the rest are held out for the rollout test.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch

from hydra_llm.schemas import validate
from hydra_llm.schemas.simulation import SignalSimulation
from hydra_llm.simulation.base import GroundTruth, Observations, SimulationDataModule
from hydra_llm.simulation.frames import FrameSampling, frame_loader
from hydra_llm.simulation.recording import add_measurement_noise, resolve_window, smooth_and_differentiate

# CSR products are what we rely on; torch flags them as beta on every first use.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class SignalDataModule(SimulationDataModule):
    """Simulates (or loads from ``cache_dir``) the signal regime and serves training frames.

    All arguments are validated in the constructor, before any simulation. ``neuron_type_params``
    rows are ``[tau, s]``; the first ``n_neuron_types`` rows are used. ``gain`` is g, one float for
    all types or a list with one value per type.
    """

    def __init__(self, cache_dir: str | Path | None = None, **options: Any) -> None:
        """Args:
        cache_dir: where simulated data is cached (None: no cache).
        **options: :class:`~hydra_llm.schemas.simulation.SignalSimulation` keys; missing ones take its
            defaults. Every value is checked here, before any simulation.
        """
        super().__init__()
        o = validate(SignalSimulation, options)
        self.n_neurons = o.n_neurons
        self.n_neuron_types = o.n_neuron_types
        self.n_frames = o.n_frames
        self.delta_t = o.delta_t
        self.connectivity_type = str(o.connectivity_type)
        self.connectivity_filling_factor = o.connectivity_filling_factor
        self.connectivity_rank = o.connectivity_rank
        self.Dale_law = o.Dale_law
        self.Dale_law_factor = o.Dale_law_factor
        self.noise_model_level = o.noise_model_level
        self.measurement_noise_level = o.measurement_noise_level
        self.smoothing_window = o.smoothing_window
        self.gains = o.gains()[: self.n_neuron_types]
        self.type_params = [list(map(float, row)) for row in o.neuron_type_params[: self.n_neuron_types]]
        self.burn_in_frames = o.burn_in_frames
        self.test_fraction = o.test_fraction
        self.structure_known = o.structure_known
        self.seed = o.seed
        self.cache_dir = cache_dir
        self.default_sampling = FrameSampling(batch_size=8, batches_per_epoch=100, seed=self.seed)

    # ----------------------------------------------------------------- data generation

    def cache_key_params(self) -> dict[str, Any]:
        return {
            "regime": "signal",
            "version": 3,  # 2: Dale E/I split is exact (was Bernoulli); 3: measurement noise
            "n_neurons": self.n_neurons,
            "n_neuron_types": self.n_neuron_types,
            "n_frames": self.n_frames,
            "delta_t": self.delta_t,
            "connectivity_type": self.connectivity_type,
            "connectivity_filling_factor": self.connectivity_filling_factor,
            "connectivity_rank": self.connectivity_rank if self.connectivity_type == "low_rank" else None,
            "Dale_law": self.Dale_law,
            "Dale_law_factor": self.Dale_law_factor if self.Dale_law else None,
            "noise_model_level": self.noise_model_level,
            "measurement_noise_level": self.measurement_noise_level,
            "smoothing_window": self.smoothing_window,
            "gains": self.gains,
            "type_params": self.type_params,
            "burn_in_frames": self.burn_in_frames,
            "test_fraction": self.test_fraction,
            "structure_known": self.structure_known,
            "seed": self.seed,
        }

    def simulate(self) -> tuple[Observations, GroundTruth]:
        """Draw the network, integrate it, and split the result into Observations and GroundTruth."""
        gen = torch.Generator().manual_seed(self.seed)
        n = self.n_neurons
        types = torch.arange(n) % self.n_neuron_types
        types = types[torch.randperm(n, generator=gen)]
        params = torch.tensor(self.type_params, dtype=torch.float64)
        tau, s = params[types, 0], params[types, 1]
        g = torch.tensor(self.gains, dtype=torch.float64)[types]
        W = self.connectivity(gen)
        states = integrate(
            W, tau, s, g, self.delta_t, self.n_frames + 1, self.burn_in_frames, self.noise_model_level, gen
        )
        record = add_measurement_noise(states, self.measurement_noise_level, self.seed)
        window = resolve_window(record, self.smoothing_window)
        activity, derivative = smooth_and_differentiate(record, self.delta_t, window)
        edge_index = edge_index_of(W)
        n_train = int(round(self.n_frames * (1.0 - self.test_fraction)))
        observations = Observations(
            activity=activity[:-1].float().contiguous(),
            derivative=derivative[:-1].float().contiguous(),
            dt=self.delta_t,
            n_train_frames=n_train,
            edge_index=edge_index.clone() if self.structure_known else None,
            smoothing_window=window,
        )
        truth = GroundTruth(
            tensors={
                "W": W.float(),
                "tau": tau.float(),
                "s": s.float(),
                "gain": g.float(),
                "types": types.long(),
                "edge_index": edge_index,
            },
            meta={
                "regime": "signal",
                "n_neuron_types": self.n_neuron_types,
                "link": "tanh",
                "observed": ["edge_index"] if self.structure_known else [],
            },
        )
        return observations, truth

    def connectivity(self, gen: torch.Generator) -> torch.Tensor:
        """The true W (N, N) float64 with a zero diagonal, drawn from ``gen``."""
        n = self.n_neurons
        if self.connectivity_type == "chaotic":
            W = torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
        else:
            r = self.connectivity_rank
            U = torch.randn(n, r, generator=gen, dtype=torch.float64)
            V = torch.randn(r, n, generator=gen, dtype=torch.float64)
            W = U @ V / math.sqrt(r * n)
        if self.Dale_law:
            # Exactly round(f N) excitatory columns, as in the original (not a Bernoulli draw): |W|
            # has mean ~0.8/sqrt(N), so an E/I imbalance of k columns adds a rank-one outlier of
            # eigenvalue ~0.8 k/sqrt(N) * sign; at g = 10, 4 of 11 Bernoulli draws (seeds 0-9, 42)
            # froze at a fixed point, none of the exact splits did (measured 2026-11-21).
            n_exc = int(round(self.Dale_law_factor * n))
            excitatory = torch.zeros(n, dtype=torch.bool)
            excitatory[torch.randperm(n, generator=gen)[:n_exc]] = True
            W = W.abs() * torch.where(excitatory, 1.0, -1.0).to(W.dtype)[None, :]
        if self.connectivity_filling_factor < 1.0:
            W = W * (torch.rand(n, n, generator=gen, dtype=torch.float64) < self.connectivity_filling_factor)
        W.fill_diagonal_(0.0)
        return W

    # ----------------------------------------------------------------- Lightning hooks

    def train_dataloader(self):
        """Batches of training frames (Observations only): keys ``activity``, ``derivative``, ``frame``.

        The attached LightningModule's ``frame_sampling`` sets the batch size and iteration count.
        """
        sampling = self.default_sampling
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.lightning_module is not None:
            sampling = getattr(trainer.lightning_module, "frame_sampling", sampling)
        obs = self.observations
        return frame_loader(
            {"activity": obs.activity, "derivative": obs.derivative}, obs.n_train_frames, sampling
        )


def integrate(
    W: torch.Tensor,
    tau: torch.Tensor,
    s: torch.Tensor,
    g: torch.Tensor,
    dt: float,
    n_record: int,
    n_burn_in: int,
    noise_level: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Explicit Euler of the signal ODE; returns the ``n_record`` states after ``n_burn_in`` steps.

    Shapes: ``W`` (N, N); ``tau``, ``s``, ``g`` (N,). Returns (n_record, N) float64. A sparse W
    (filling factor below 1/4) is multiplied as CSR, a dense one as a dense matrix.
    """
    n = W.shape[0]
    density = float((W != 0).sum()) / max(1, n * n)
    W_op = W.to_sparse_csr() if density < 0.25 else W
    u = torch.randn(n, generator=gen, dtype=torch.float64)
    inv_tau = 1.0 / tau
    noise_std = noise_level * math.sqrt(dt)
    out = torch.empty(n_record, n, dtype=torch.float64)
    for step in range(n_burn_in + n_record):
        if step >= n_burn_in:
            out[step - n_burn_in] = u
        phi_u = torch.tanh(u)
        du = -u * inv_tau + s * phi_u + g * (W_op @ phi_u)
        u = u + dt * du
        if noise_std > 0:
            u = u + noise_std * torch.randn(n, generator=gen, dtype=torch.float64)
    return out


def edge_index_of(W: torch.Tensor) -> torch.Tensor:
    """(2, E) int64 edges of the non-zero entries of W: row 0 source ``j``, row 1 target ``i``."""
    target, source = torch.nonzero(W, as_tuple=True)
    return torch.stack([source, target]).long()
