"""The sweep's settings (``hydra.sweeper.*`` minus the search space and the proposer) and the errors
that stop a sweep.

Their defaults and choices are the sweeper schema's (:mod:`hydra_llm.schemas.sweeper`,
which imports nothing of Hydra or of this package): through Hydra they arrive typed and checked, and
a config built here directly is coerced and checked against the same schema.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from hydra_llm.explore.tree import Objective
from hydra_llm.schemas.ranges import SEED_MAX
from hydra_llm.schemas.sweeper import (
    LLMUCBSweeperConf,
    ReplicateReward,
    SimulationSeed,
    SlotRole,
    UCBFormula,
)

_SCHEMA = LLMUCBSweeperConf()  # the schema's defaults
# hydra.sweeper.ucb.<key> -> the EngineConfig field
_UCB_FIELDS = {
    "formula": "ucb_formula",
    "c": "ucb_c",
    "replicate_reward": "replicate_reward",
    "lcb_kappa": "lcb_kappa",
}
_Choice = TypeVar("_Choice", bound=StrEnum)


class SweepConfigError(ValueError):
    """Bad sweeper configuration, raised before any child runs."""


class SweepFailedError(RuntimeError):
    """The sweep stopped because too many children failed (the state is saved; resume after fixing)."""


class SweepOutOfSpace(SweepFailedError):
    """A disk the sweep writes to is full (the sweep folder, a job folder, the data cache): the sweep
    stops with the batch in flight left to the resume, instead of recording failures that are the
    disk's, not the config's."""


@dataclass(frozen=True)
class EngineConfig:
    """Sweep settings (``hydra.sweeper.*`` minus the search space and the proposer; ``ucb.*`` as
    ``ucb_formula``, ``ucb_c``, ``replicate_reward`` and ``lcb_kappa``).

    ``slot_params`` maps a config key to one value per slot (``n_parallel`` values): every child of
    slot ``s`` gets ``values[s]``, forced like its seeds but part of its config (and replicate hash);
    a proposal may never set such a key. ``max_reasks`` is the engine's own (re-asks of a proposer
    whose proposals were invalid), not a sweeper setting.
    """

    n_iterations: int = _SCHEMA.n_iterations
    n_parallel: int = _SCHEMA.n_parallel
    n_iter_block: int = _SCHEMA.n_iter_block
    slot_roles: tuple[SlotRole, ...] = tuple(_SCHEMA.slot_roles)
    objective: Objective = field(default_factory=Objective)
    ucb_formula: UCBFormula = _SCHEMA.ucb.formula
    ucb_c: float = _SCHEMA.ucb.c
    replicate_reward: ReplicateReward = _SCHEMA.ucb.replicate_reward
    lcb_kappa: float = _SCHEMA.ucb.lcb_kappa
    max_failure_rate: float = _SCHEMA.max_failure_rate
    seed: int = _SCHEMA.seed
    memory_max_lines: int = _SCHEMA.memory_max_lines
    seed_keys: Mapping[str, str] = field(default_factory=lambda: dict(_SCHEMA.seed_keys))
    simulation_seed: SimulationSeed = _SCHEMA.simulation_seed
    tree_plot: bool = _SCHEMA.tree_plot
    max_reasks: int = 1
    slot_params: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # key -> one value per slot

    def __post_init__(self) -> None:
        """The choices as their enums (a config built in Python may give plain strings)."""
        set_field = object.__setattr__  # the dataclass is frozen
        roles = tuple(self.slot_roles)
        try:
            set_field(self, "slot_roles", tuple(SlotRole(role) for role in roles))
        except ValueError:
            raise SweepConfigError(
                f"hydra.sweeper.slot_roles: {list(roles)!r}; allowed roles: {', '.join(SlotRole)}"
            ) from None
        set_field(self, "simulation_seed", _choice(SimulationSeed, "simulation_seed", self.simulation_seed))
        set_field(self, "ucb_formula", _choice(UCBFormula, "ucb.formula", self.ucb_formula))
        set_field(
            self, "replicate_reward", _choice(ReplicateReward, "ucb.replicate_reward", self.replicate_reward)
        )

    @classmethod
    def from_settings(
        cls, settings: LLMUCBSweeperConf | Mapping[str, Any], objective: Mapping[str, Any] | None = None
    ) -> EngineConfig:
        """Build from ``hydra.sweeper.*`` (the typed schema, or a mapping of some of its keys: one left
        out keeps its default, keys that are no engine setting are ignored); checked.

        ``objective`` stands for the settings' objective fields when the caller completed them (the
        sweeper fills null fields from the regime); a null field keeps the built-in objective's value.
        """
        given = _fields(settings)
        ucb = _fields(given.get("ucb"))
        wanted = {f.name for f in dataclasses.fields(cls)} - {"objective"}
        values = {name: value for name, value in given.items() if name in wanted}
        values.update({_UCB_FIELDS[name]: value for name, value in ucb.items() if name in _UCB_FIELDS})
        fields_ = _fields(given.get("objective")) if objective is None else dict(objective)
        try:  # a null objective field keeps the default
            built = Objective(**{k: v for k, v in fields_.items() if v is not None})
        except (TypeError, ValueError) as err:
            raise SweepConfigError(f"hydra.sweeper.objective: {err}") from err
        config = cls(objective=built, **values)
        config.check()
        return config

    def check(self) -> None:
        """Raise :class:`SweepConfigError` naming the key and what is allowed (what the schema's types
        cannot say: ranges, seed names, slot values; the choices are checked when it is built)."""
        for key in ("n_iterations", "n_parallel", "n_iter_block", "memory_max_lines"):
            if int(getattr(self, key)) < 1:
                raise SweepConfigError(
                    f"hydra.sweeper.{key}: {getattr(self, key)!r}; allowed: an integer >= 1"
                )
        if not self.slot_roles:
            raise SweepConfigError(f"hydra.sweeper.slot_roles: []; allowed roles: {', '.join(SlotRole)}")
        for key, value in (("ucb.c", self.ucb_c), ("ucb.lcb_kappa", self.lcb_kappa)):
            if not (math.isfinite(float(value)) and float(value) >= 0):  # < 0 would shun the unvisited
                raise SweepConfigError(f"hydra.sweeper.{key}: {value!r}; allowed: a finite float >= 0")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise SweepConfigError(
                f"hydra.sweeper.max_failure_rate: {self.max_failure_rate!r}; allowed: 0 to 1"
            )
        top = (SEED_MAX - 999) // 1000  # a child's simulation seed is seed x 1000 + its slot
        if not 0 <= self.seed <= top:
            raise SweepConfigError(f"hydra.sweeper.seed: {self.seed!r}; allowed: an integer in [0, {top}]")
        unknown = set(self.seed_keys) - {"simulation", "training"}
        if unknown:
            raise SweepConfigError(
                f"hydra.sweeper.seed_keys: {sorted(unknown)}; allowed: simulation, training"
            )
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


def _choice(enum: type[_Choice], key: str, value: Any) -> _Choice:
    """``value`` as a member of ``enum``, or a :class:`SweepConfigError` naming ``key`` and the choices."""
    try:
        return enum(value)
    except ValueError:
        raise SweepConfigError(f"hydra.sweeper.{key}: {value!r}; allowed: {', '.join(enum)}") from None


def _fields(settings: Any) -> dict[str, Any]:
    """A settings node as a dict: a schema dataclass's fields, or a mapping's items (None: none)."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        return dict(vars(settings))
    return dict(settings or {})
