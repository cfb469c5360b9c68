"""The metabolism regime: a bipartite metabolite-reaction network with mass-action kinetics and
per-type homeostasis.

True dynamics of metabolite ``i`` (concentration ``c_i``, arbitrary units; time in the regime's unit)::

    dc_i/dt = sum_j S_ij v_j  -  lambda_t(i) (c_i - b_t(i)(t))
    v_j     = k_j prod_{m in substrates(j)} c_m ** order_mj              (mass action)

``S = products - substrates`` is the net stoichiometry (N, R); ``order`` (N, R) holds the substrate
orders. Every reaction conserves the number of molecules (total substrate order equals total product
stoichiometry), so reactions only move mass around; homeostasis is the only exchange with the outside.

"Autocatalytic cycles" are cyclic chains ``m_0 -> m_1 -> ... -> m_0`` in which each step is
catalysed by its own product: ``m_i + m_{i+1} -> 2 m_{i+1}``. Overlapping cycles give sustained,
high-rank oscillations (a generalised rock-paper-scissors system) instead of a quick relaxation to
equilibrium. The remaining reactions are random molecule-conserving reactions of at most
``max_metabolites_per_reaction`` distinct metabolites.

Integration is explicit Euler at ``delta_t``. Measurement noise (``measurement_noise_level`` times each
metabolite's std) is added to the record; the derivative is estimated from the record
(:mod:`hydra_llm.simulation.recording`). With no measurement noise and ``smoothing_window: 1`` it is
the forward difference, so one-step targets are exact up to float32 rounding.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from hydra_llm.schemas import validate
from hydra_llm.schemas.simulation import MetabolismSimulation
from hydra_llm.simulation.base import GroundTruth, Observations, SimulationDataModule
from hydra_llm.simulation.frames import start_frame_loader
from hydra_llm.simulation.recording import add_measurement_noise, resolve_window, smooth_and_differentiate

log = logging.getLogger(__name__)

EPS_CONCENTRATION = 1e-8


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ValueError(f"simulation.{key}: {message}")


def build_reaction_network(
    n_metabolites: int,
    n_reactions: int,
    max_metabolites_per_reaction: int,
    cycle_fraction: float,
    cycle_length: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the network.

    Returns:
        order: (N, R) int64 substrate orders (>= 0).
        produced: (N, R) int64 product stoichiometries (>= 0). Net stoichiometry is ``produced - order``.
    """
    order = np.zeros((n_metabolites, n_reactions), dtype=np.int64)
    produced = np.zeros_like(order)

    n_cycles = int(round(cycle_fraction * n_reactions)) // cycle_length
    n_cycle_rxn = n_cycles * cycle_length
    if n_cycles:
        members = _distinct_pair_cycles(n_cycles, cycle_length, n_metabolites, rng)
        source = members.reshape(-1)
        target = np.roll(members, -1, axis=1).reshape(-1)
        rxn = np.arange(n_cycle_rxn)
        order[source, rxn] = 1
        order[target, rxn] = 1
        produced[target, rxn] = 2

    n_random = n_reactions - n_cycle_rxn
    if n_random:
        picks = np.argsort(rng.random((n_random, n_metabolites)), axis=1)[:, :max_metabolites_per_reaction]
        max_sub = max(1, max_metabolites_per_reaction // 2)
        n_sub = rng.integers(1, max_sub + 1, size=n_random)
        for r in range(n_random):  # one-off generation of a handful of reactions, not a hot path
            rxn = n_cycle_rxn + r
            subs = picks[r, : n_sub[r]]
            sub_order = rng.integers(1, 3, size=subs.size)
            total = int(sub_order.sum())
            n_prod = int(min(rng.integers(1, 3), total, max_metabolites_per_reaction - subs.size))
            prods = picks[r, subs.size : subs.size + n_prod]
            # split `total` molecules over the products, each getting at least one
            split = np.ones(n_prod, dtype=np.int64)
            extra = rng.multinomial(total - n_prod, np.full(n_prod, 1.0 / n_prod))
            order[subs, rxn] = sub_order
            produced[prods, rxn] = split + extra
    return order, produced


def _distinct_pair_cycles(
    n_cycles: int, cycle_length: int, n_metabolites: int, rng: np.random.Generator, max_tries: int = 1000
) -> np.ndarray:
    """(n_cycles, cycle_length) metabolite cycles in which no unordered pair of consecutive members
    appears twice. Two reactions on the same pair would have proportional rate laws and
    (anti-)parallel stoichiometry, so only a combination of their rate constants could be recovered."""
    used: set[tuple[int, int]] = set()
    cycles = np.empty((n_cycles, cycle_length), dtype=np.int64)
    for c in range(n_cycles):  # one-off generation; rejection keeps every pair unique
        for _ in range(max_tries):
            members = rng.choice(n_metabolites, size=cycle_length, replace=False)
            pairs = {
                tuple(sorted((int(a), int(b)))) for a, b in zip(members, np.roll(members, -1), strict=True)
            }
            if len(pairs) == cycle_length and not pairs & used:
                used |= pairs
                cycles[c] = members
                break
        else:
            raise ValueError(
                "simulation.n_reactions: cannot place that many cycle reactions on distinct metabolite "
                "pairs; lower n_reactions or cycle_fraction, or raise n_metabolites"
            )
    return cycles


def mass_action_rates(conc: torch.Tensor, order: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Reaction rates v (B, R) from concentrations (B, N), substrate orders (N, R) and rate constants (R,).

    Computed in log space: ``log v = log k + order^T log c``.
    """
    log_c = torch.log(conc.clamp_min(EPS_CONCENTRATION))
    return k * torch.exp(log_c @ order)


def flux_limit(rates: torch.Tensor, conc: torch.Tensor, order: torch.Tensor, dt: float) -> torch.Tensor:
    """Scale rates (B, R) so that no metabolite is consumed below zero within one step of ``dt``."""
    consumption = dt * rates @ order.T  # (B, N)
    ratio = torch.where(consumption > conc, conc / consumption.clamp_min(1e-30), torch.ones_like(conc))
    # per reaction, the tightest ratio over its substrates
    is_sub = order > 0  # (N, R)
    masked = torch.where(is_sub.unsqueeze(0), ratio.unsqueeze(-1), torch.ones(1, dtype=rates.dtype))
    return rates * masked.amin(dim=1)


def baseline_at(time: float, baseline: torch.Tensor, amplitude: float, period: float) -> torch.Tensor:
    """Homeostatic baseline per metabolite (N,) at ``time``: ``b (1 + A sin(2 pi t / P))``."""
    if amplitude == 0.0:
        return baseline
    return baseline * (1.0 + amplitude * math.sin(2.0 * math.pi * time / period))


class MetabolismDataModule(SimulationDataModule):
    """Simulate (or load from cache) the metabolic network; serve random start frames.

    Training frames are served as start indices (batches ``{"frame": (B,)}``); the model reads the frames
    (and the following ones for rollouts) from its own copy of the Observations. The attached module's
    ``frame_sampling`` and ``frame_window`` set the batch size, the batches per epoch and the window.
    """

    def __init__(self, cache_dir: str | Path | None = None, **options: Any) -> None:
        """Args:
        cache_dir: where simulated data is cached (None: no cache).
        **options: :class:`~hydra_llm.schemas.simulation.MetabolismSimulation` keys; missing ones take its
            defaults. Every value is checked here, before any simulation.
        """
        super().__init__()
        o = validate(MetabolismSimulation, options)
        self.n_metabolites = o.n_metabolites
        self.n_metabolite_types = o.n_metabolite_types
        self.n_reactions = o.n_reactions
        self.max_metabolites_per_reaction = o.max_metabolites_per_reaction
        self.cycle_fraction = o.cycle_fraction
        self.cycle_length = o.cycle_length
        self.log_k_min = o.log_k_min
        self.log_k_max = o.log_k_max
        self.concentration_min = o.concentration_min
        self.concentration_max = o.concentration_max
        self.n_frames = o.n_frames
        self.delta_t = o.delta_t
        self.train_fraction = o.train_fraction
        self.homeostatic_lambda_per_type = [float(v) for v in o.homeostatic_lambda_per_type]
        self.homeostatic_baseline_per_type = [float(v) for v in o.homeostatic_baseline_per_type]
        self.circadian_amplitude = o.circadian_amplitude
        self.circadian_period = o.circadian_period
        self.flux_limit = o.flux_limit
        self.stoichiometry_known = o.stoichiometry_known
        self.measurement_noise_level = o.measurement_noise_level
        self.smoothing_window = o.smoothing_window
        self.seed = o.seed
        self.cache_dir = cache_dir

    # ----------------------------------------------------------------- cache
    def cache_key_params(self) -> dict[str, Any]:
        keys = [
            "n_metabolites",
            "n_metabolite_types",
            "n_reactions",
            "max_metabolites_per_reaction",
            "cycle_fraction",
            "cycle_length",
            "log_k_min",
            "log_k_max",
            "concentration_min",
            "concentration_max",
            "n_frames",
            "delta_t",
            "train_fraction",
            "homeostatic_lambda_per_type",
            "homeostatic_baseline_per_type",
            "circadian_amplitude",
            "circadian_period",
            "flux_limit",
            "stoichiometry_known",
            "measurement_noise_level",
            "smoothing_window",
            "seed",
        ]
        return {"regime": "metabolism", "version": 1, **{k: getattr(self, k) for k in keys}}

    # ------------------------------------------------------------ simulation
    def simulate(self) -> tuple[Observations, GroundTruth]:
        rng = np.random.default_rng(self.seed)
        n, n_types = self.n_metabolites, self.n_metabolite_types
        order_np, produced_np = build_reaction_network(
            n,
            self.n_reactions,
            self.max_metabolites_per_reaction,
            self.cycle_fraction,
            self.cycle_length,
            rng,
        )
        types_np = rng.permutation(np.arange(n) % n_types)
        log_k_np = rng.uniform(self.log_k_min, self.log_k_max, size=self.n_reactions)
        c0_np = rng.uniform(self.concentration_min, self.concentration_max, size=n)

        f64 = torch.float64
        order = torch.as_tensor(order_np, dtype=f64)
        stoich = torch.as_tensor(produced_np - order_np, dtype=f64)
        types = torch.as_tensor(types_np, dtype=torch.int64)
        k = torch.as_tensor(10.0**log_k_np, dtype=f64)
        lam_t = torch.tensor(self.homeostatic_lambda_per_type, dtype=f64)
        base_t = torch.tensor(self.homeostatic_baseline_per_type, dtype=f64)
        lam, base = lam_t[types], base_t[types]

        traj = torch.empty(self.n_frames, n, dtype=f64)
        conc = torch.as_tensor(c0_np, dtype=f64).unsqueeze(0)
        dt = self.delta_t
        clamped_steps, added_mass = 0, 0.0
        for t in range(self.n_frames):  # time stepping is inherently sequential
            traj[t] = conc[0]
            rates = mass_action_rates(conc, order, k)
            if self.flux_limit:
                rates = flux_limit(rates, conc, order, dt)
            b = baseline_at(t * dt, base, self.circadian_amplitude, self.circadian_period)
            dcdt = rates @ stoich.T - lam * (conc - b)
            conc = conc + dt * dcdt
            below = conc < 0.0
            if bool(below.any()):
                clamped_steps += 1
                added_mass -= float(conc[below].sum())
            conc = conc.clamp_min(0.0)
        _check(
            bool(torch.isfinite(traj).all()),
            "delta_t",
            "the simulation diverged (non-finite concentrations); lower delta_t or log_k_max",
        )
        if clamped_steps:
            # with flux_limit on, only rounding takes a concentration below zero
            hint = "" if self.flux_limit else ". simulation.flux_limit=true keeps them"
            log.warning(
                "simulation: a concentration went below zero and was set to 0 on %d of %d steps, adding "
                "%.3g units of mass; that breaks the conservation laws that phase 2 reads%s",
                clamped_steps,
                self.n_frames,
                added_mass,
                hint,
            )

        record = add_measurement_noise(traj, self.measurement_noise_level, self.seed)
        window = resolve_window(record, self.smoothing_window)
        activity, derivative = smooth_and_differentiate(record, dt, window)
        activity = activity.to(torch.float32)
        # the last frame has no successor; keep it out of training
        n_train = max(2, min(self.n_frames - 1, int(self.train_fraction * self.n_frames)))
        extras: dict[str, torch.Tensor] = {}
        if self.stoichiometry_known:
            extras = {
                "stoichiometry": stoich.to(torch.float32),
                "substrate_order": order.to(torch.float32),
            }
        obs = Observations(
            activity=activity,
            derivative=derivative.to(torch.float32),
            dt=dt,
            n_train_frames=n_train,
            edge_index=None,
            extras=extras,
            smoothing_window=window,
        )
        gt = GroundTruth(
            tensors={
                "log_k": torch.as_tensor(log_k_np, dtype=torch.float32),
                "stoichiometry": stoich.to(torch.float32),
                "substrate_order": order.to(torch.float32),
                "types": types,
                "homeostatic_lambda": lam.to(torch.float32),
                "homeostatic_baseline": base.to(torch.float32),
                "homeostatic_lambda_per_type": lam_t.to(torch.float32),
                "homeostatic_baseline_per_type": base_t.to(torch.float32),
            },
            meta={
                "circadian_amplitude": self.circadian_amplitude,
                "circadian_period": self.circadian_period,
                "flux_limit": self.flux_limit,
                "observed": ["stoichiometry", "substrate_order"] if self.stoichiometry_known else [],
            },
        )
        log.info(
            "metabolism: %d metabolites, %d reactions, %d frames; activity range [%.3g, %.3g]",
            n,
            self.n_reactions,
            self.n_frames,
            float(activity.min()),
            float(activity.max()),
        )
        return obs, gt

    # ------------------------------------------------------------- Lightning hooks
    def train_dataloader(self) -> DataLoader:
        """Random start frames for the attached module (its ``frame_sampling`` and ``frame_window``)."""
        module = self.trainer.lightning_module
        return start_frame_loader(
            self.observations.n_train_frames, module.frame_sampling, module.frame_window
        )
