"""Typed simulation options of the signal and metabolism regimes: the one place their defaults live.

A regime's YAML (``conf/simulation/*.yaml``) puts its values over one of these (its defaults list names
``/schema/simulation/<regime>``), so a misspelt key or a value of the wrong type fails when Hydra
composes; the datamodule validates its keyword arguments against the same dataclass. The flyvis regime's
options are checked by its datamodule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from hydra_llm.schemas.ranges import at_least_one, fail, non_negative, positive


class ConnectivityType(StrEnum):
    """chaotic: W_ij ~ N(0, 1/N); low_rank: W = U V / sqrt(r N) of rank r = connectivity_rank."""

    chaotic = "chaotic"
    low_rank = "low_rank"


def _in(options: Any, key: str, low: float, high: float, rule: str) -> None:
    value = getattr(options, key)
    if not low <= value <= high:
        fail(options, key, value, rule)


@dataclass
class SignalSimulation:
    """``simulation=signal_*``: ``du_i/dt = -u_i / tau_k + s_k tanh(u_i) + g_k sum_j W_ij tanh(u_j)``.

    ``neuron_type_params`` rows are ``[tau, s]``; the first ``n_neuron_types`` rows are used. ``gain`` is g,
    one float for every type or a list with one value per type.
    """

    GROUP: ClassVar[str] = "simulation"
    _target_: str = "hydra_llm.simulation.signal.SignalDataModule"
    n_neurons: int = 100
    n_neuron_types: int = 4
    # one row [tau, s] per type (the paper's Fig. 2 table, tau in {0.5, 1}, s in {1, 2}), ordered so that
    # the first 2 or 3 rows already differ in both tau and s
    neuron_type_params: list[list[float]] = field(
        default_factory=lambda: [[0.5, 1.0], [1.0, 2.0], [0.5, 2.0], [1.0, 1.0]]
    )
    gain: Any = 10.0  # g for every type (a float) or a list, one per type
    n_frames: int = 10_000
    delta_t: float = 0.01
    burn_in_frames: int = 1000  # simulated, not recorded
    test_fraction: float = 0.2  # the last frames are held out for the rollout test
    connectivity_type: ConnectivityType = ConnectivityType.chaotic
    connectivity_filling_factor: float = 1.0  # fraction of off-diagonal entries kept, in (0, 1]
    connectivity_rank: int = 20  # used by low_rank only, in [1, n_neurons]
    Dale_law: bool = False
    Dale_law_factor: float = 0.5  # fraction of excitatory presynaptic neurons
    noise_model_level: float = 0.0  # process-noise sigma: each Euler step adds sigma * sqrt(dt) * N(0, 1)
    structure_known: bool = False  # true: the true edge set is observed and W is learned on it only
    seed: int = 42

    def __post_init__(self) -> None:
        if self.n_neurons < 1:
            fail(self, "n_neurons", self.n_neurons, "must be > 0")
        _in(self, "n_neuron_types", 1, self.n_neurons, f"must be in [1, n_neurons={self.n_neurons}]")
        if self.n_frames < 10:
            fail(self, "n_frames", self.n_frames, "must be >= 10")
        if not (self.delta_t > 0 and math.isfinite(self.delta_t)):
            fail(self, "delta_t", self.delta_t, "must be > 0")
        if not 0.0 < self.connectivity_filling_factor <= 1.0:
            fail(self, "connectivity_filling_factor", self.connectivity_filling_factor, "must be in (0, 1]")
        if self.connectivity_type == ConnectivityType.low_rank:
            _in(self, "connectivity_rank", 1, self.n_neurons, f"must be in [1, n_neurons={self.n_neurons}]")
        _in(self, "Dale_law_factor", 0.0, 1.0, "must be in [0, 1]")
        if self.noise_model_level < 0:
            fail(self, "noise_model_level", self.noise_model_level, "must be >= 0")
        if self.burn_in_frames < 0:
            fail(self, "burn_in_frames", self.burn_in_frames, "must be >= 0")
        if not 0.0 < self.test_fraction < 1.0:
            fail(self, "test_fraction", self.test_fraction, "must be in (0, 1)")
        rows = self.neuron_type_params
        if len(rows) < self.n_neuron_types or any(len(row) != 2 for row in rows):
            fail(
                self,
                "neuron_type_params",
                rows,
                f"must hold at least n_neuron_types={self.n_neuron_types} rows [tau, s]",
            )
        if any(row[0] <= 0 for row in rows):
            fail(self, "neuron_type_params", rows, "every tau must be > 0")
        if len(self.gains()) < self.n_neuron_types:
            fail(self, "gain", self.gain, f"must be a float or a list of >= {self.n_neuron_types} floats")

    def gains(self) -> list[float]:
        """g per type: ``gain`` repeated, or the list as given."""
        if isinstance(self.gain, int | float):
            return [float(self.gain)] * self.n_neuron_types
        return [float(g) for g in self.gain]


@dataclass
class MetabolismSimulation:
    """``simulation=metabolism_homeostasis``: ``dc_i/dt = sum_j S_ij k_j prod_m c_m^order_mj
    - lambda_t(i) (c_i - baseline_t(i))``, explicit Euler at ``delta_t``."""

    GROUP: ClassVar[str] = "simulation"
    _target_: str = "hydra_llm.simulation.metabolism.MetabolismDataModule"
    n_metabolites: int = 100
    n_metabolite_types: int = 2
    n_reactions: int = 256
    max_metabolites_per_reaction: int = 4
    cycle_fraction: float = 1.0  # fraction of reactions in autocatalytic cycles m_i + m_(i+1) -> 2 m_(i+1)
    cycle_length: int = 3
    use_mass_action: bool = True  # only mass action is implemented
    log_k_min: float = -2.0  # log10 k ~ U[log_k_min, log_k_max]
    log_k_max: float = -1.0
    concentration_min: float = 1.0  # initial concentrations ~ U[min, max]
    concentration_max: float = 9.0
    n_frames: int = 2880
    delta_t: float = 0.1
    train_fraction: float = 0.8  # the last frames are held out (test_R2)
    homeostatic_lambda_per_type: list[float] = field(default_factory=lambda: [0.001, 0.002])
    homeostatic_baseline_per_type: list[float] = field(default_factory=lambda: [4.0, 6.0])
    circadian_amplitude: float = 0.0  # baseline_t(t) = baseline_t (1 + A sin(2 pi t / period)); 0 = constant
    circadian_period: float = 240.0
    flux_limit: bool = False  # rescale rates so that no substrate goes below zero within one step
    stoichiometry_known: bool = True  # S and substrate orders are observed (the model needs them)
    seed: int = 0

    def __post_init__(self) -> None:
        n = self.n_metabolites
        if n < 2:
            fail(self, "n_metabolites", n, "must be >= 2")
        _in(self, "n_metabolite_types", 1, n, f"must be in [1, n_metabolites={n}]")
        at_least_one(self, "n_reactions")
        _in(self, "max_metabolites_per_reaction", 2, n, "must be in [2, n_metabolites]")
        _in(self, "cycle_fraction", 0.0, 1.0, "must be in [0, 1]")
        _in(self, "cycle_length", 2, n, "must be in [2, n_metabolites]")
        if not self.use_mass_action:
            fail(self, "use_mass_action", False, "only true is implemented (mass-action kinetics)")
        if self.log_k_min > self.log_k_max:
            fail(self, "log_k_min", self.log_k_min, f"must be <= log_k_max ({self.log_k_max})")
        if not 0.0 < self.concentration_min <= self.concentration_max:
            fail(self, "concentration_min", self.concentration_min, "need 0 < min <= concentration_max")
        if self.n_frames < 4:
            fail(self, "n_frames", self.n_frames, "must be >= 4")
        positive(self, "delta_t", "circadian_period")
        non_negative(self, "circadian_amplitude")
        if not 0.0 < self.train_fraction <= 1.0:
            fail(self, "train_fraction", self.train_fraction, "must be in (0, 1]")
        for key in ("homeostatic_lambda_per_type", "homeostatic_baseline_per_type"):
            if len(getattr(self, key)) != self.n_metabolite_types:
                fail(self, key, getattr(self, key), f"needs one value per type ({self.n_metabolite_types})")
