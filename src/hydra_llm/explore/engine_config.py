"""The sweep's settings (``hydra.sweeper.*`` minus the search space and the proposer) and the errors
that stop a sweep."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra_llm.explore.proposers.rules import SLOT_ROLES
from hydra_llm.explore.tree import Objective, ucb_scores

SIMULATION_SEED_MODES = ("slot", "iteration", "fixed")


class SweepConfigError(ValueError):
    """Bad sweeper configuration, raised before any child runs."""


class SweepFailedError(RuntimeError):
    """The sweep stopped because too many children failed (the state is saved; resume after fixing)."""


@dataclass(frozen=True)
class EngineConfig:
    """Sweep settings (``hydra.sweeper.*`` minus the search space and the proposer).

    ``slot_params`` maps a config key to one value per slot (``n_parallel`` values): every child of
    slot ``s`` gets ``values[s]``, forced like its seeds but part of its config (and replicate hash);
    a proposal may never set such a key.
    """

    n_iterations: int = 12
    n_parallel: int = 4
    n_iter_block: int = 12
    slot_roles: tuple[str, ...] = ("exploit", "exploit", "replicate", "replicate")
    objective: Objective = field(default_factory=Objective)
    ucb_formula: str = "ucb1"
    ucb_c: float = 1.414
    replicate_reward: str = "mean"
    lcb_kappa: float = 1.0
    max_failure_rate: float = 0.8
    seed: int = 0
    memory_max_lines: int = 400
    seed_keys: Mapping[str, str] = field(
        default_factory=lambda: {"simulation": "simulation.seed", "training": "training.seed"}
    )
    simulation_seed: str = "slot"
    tree_plot: bool = True
    max_reasks: int = 1
    slot_params: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # key -> one value per slot

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> EngineConfig:
        """Build from plain ``hydra.sweeper.*`` settings (missing keys keep their defaults); checked."""
        s = settings
        given = {k: v for k, v in dict(s.get("objective") or {}).items() if v is not None}
        try:  # a null objective field keeps the default
            objective = Objective(**given)
        except (TypeError, ValueError) as err:
            raise SweepConfigError(f"hydra.sweeper.objective: {err}") from err
        ucb = dict(s.get("ucb") or {})
        default = cls()
        config = cls(
            n_iterations=int(s.get("n_iterations", default.n_iterations)),
            n_parallel=int(s.get("n_parallel", default.n_parallel)),
            n_iter_block=int(s.get("n_iter_block", default.n_iter_block)),
            slot_roles=tuple(s.get("slot_roles") or default.slot_roles),
            objective=objective,
            ucb_formula=str(ucb.get("formula", default.ucb_formula)),
            ucb_c=float(ucb.get("c", default.ucb_c)),
            replicate_reward=str(ucb.get("replicate_reward", default.replicate_reward)),
            lcb_kappa=float(ucb.get("lcb_kappa", default.lcb_kappa)),
            max_failure_rate=float(s.get("max_failure_rate", default.max_failure_rate)),
            seed=int(s.get("seed", default.seed)),
            memory_max_lines=int(s.get("memory_max_lines", default.memory_max_lines)),
            seed_keys=dict(default.seed_keys if s.get("seed_keys") is None else s["seed_keys"]),
            simulation_seed=str(s.get("simulation_seed", default.simulation_seed)),
            tree_plot=bool(s.get("tree_plot", default.tree_plot)),
            slot_params=dict(s.get("slot_params") or {}),
        )
        config.check()
        return config

    def check(self) -> None:
        """Raise :class:`SweepConfigError` naming the key and the allowed values."""
        for key in ("n_iterations", "n_parallel", "n_iter_block"):
            if int(getattr(self, key)) < 1:
                raise SweepConfigError(
                    f"hydra.sweeper.{key}: {getattr(self, key)!r}; allowed: an integer >= 1"
                )
        bad = [r for r in self.slot_roles if r not in SLOT_ROLES]
        if bad or not self.slot_roles:
            raise SweepConfigError(
                f"hydra.sweeper.slot_roles: {list(self.slot_roles)!r}; allowed roles: {', '.join(SLOT_ROLES)}"
            )
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise SweepConfigError(
                f"hydra.sweeper.max_failure_rate: {self.max_failure_rate!r}; allowed: 0 to 1"
            )
        if self.simulation_seed not in SIMULATION_SEED_MODES:
            raise SweepConfigError(
                f"hydra.sweeper.simulation_seed: {self.simulation_seed!r}; "
                f"allowed: {', '.join(SIMULATION_SEED_MODES)}"
            )
        unknown = set(self.seed_keys) - {"simulation", "training"}
        if unknown:
            raise SweepConfigError(
                f"hydra.sweeper.seed_keys: {sorted(unknown)}; allowed: simulation, training"
            )
        try:
            ucb_scores([], self.ucb_formula, self.ucb_c, self.replicate_reward)
        except ValueError as err:
            raise SweepConfigError(str(err)) from err
        self._check_slot_params()

    def _check_slot_params(self) -> None:
        managed = set(self.seed_keys.values())
        for key, values in self.slot_params.items():
            name = f"hydra.sweeper.slot_params.{key}"
            if key in managed or key.startswith(("hydra.", "sweep_node.")):
                raise SweepConfigError(
                    f"{name}: seeds, hydra.* and sweep_node.* are set by the sweeper; "
                    "allowed: any other key of the config"
                )
            if isinstance(values, str | bytes) or not isinstance(values, Sequence):
                raise SweepConfigError(
                    f"{name}: {values!r} is not a list; allowed: a list of n_parallel={self.n_parallel} "
                    "values, one per slot"
                )
            if len(values) != self.n_parallel:
                raise SweepConfigError(
                    f"{name}: {len(values)} value(s) {list(values)!r} for n_parallel={self.n_parallel}; "
                    f"allowed: a list of exactly {self.n_parallel} values, one per slot"
                )

    def slot_values(self, slot: int) -> dict[str, Any]:
        """The values ``slot_params`` fixes for ``slot`` (0-based)."""
        return {key: values[slot] for key, values in self.slot_params.items()}
