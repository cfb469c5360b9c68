"""Registration of ``hydra/sweeper: llm_ucb`` and its proposers; a thin Sweeper.

Hydra imports this module on every app start, so it imports nothing heavy: the work lives in
``_impl.py`` (imported in ``setup``) and in ``hydra_llm.explore``.
"""

# No ``from __future__ import annotations`` here: Hydra's plugin scanner executes this module without
# registering it in sys.modules, and dataclasses cannot resolve string annotations in that case.
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import MISSING


@dataclass
class ObjectiveConf:
    """What the sweep optimises. A null field takes the regime's value (the task config's
    ``exploration.objective``, chosen by ``simulation=...``), else the built-in default
    (connectivity_R2, maximize, converged 0.9, partial 0.5)."""

    metric: Optional[str] = None  # noqa: UP045 (no PEP 604 here, see above)
    direction: Optional[str] = None  # noqa: UP045  # maximize | minimize | target
    target: Optional[float] = None  # noqa: UP045
    failure_reward: Optional[float] = None  # noqa: UP045  # null: 0.0 for maximize, -1.0 otherwise
    # classification thresholds (>= for maximize, <= for minimize, |v-target| <= for target)
    converged: Optional[float] = None  # noqa: UP045
    partial: Optional[float] = None  # noqa: UP045
    # Explicit [low, high] bands on the metric value; when set they replace converged / partial
    # (e.g. target 1.0 with an asymmetric partial band: converged_band [0.8, 1.2], partial_band [0.3, 3.0]).
    converged_band: Optional[list[float]] = None  # noqa: UP045
    partial_band: Optional[list[float]] = None  # noqa: UP045


@dataclass
class UCBConf:
    formula: str = "ucb1"  # ucb1: R + c*sqrt(ln N / (1 + visits)); puct: R + c*sqrt(N) / (1 + visits)
    c: float = 1.414
    replicate_reward: str = "mean"  # mean | lcb (mean - kappa*std/sqrt(runs))
    lcb_kappa: float = 1.0


@dataclass
class RulesProposerConf:
    _target_: str = "hydra_llm.explore.proposers.rules.RulesProposer"
    step_factor: float = 2.0
    probe_factor: float = 10.0
    n_steps: int = 8


@dataclass
class LLMProposerConf:
    _target_: str = "hydra_llm.explore.proposers.llm.LLMProposer"
    model: str = "gpt-4o-mini"
    base_url: Optional[str] = None  # noqa: UP045
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.2
    timeout: float = 120.0  # seconds per HTTP request
    deadline: float = 300.0  # seconds for one whole proposal call: retries, re-asks, slow bodies
    max_retries: int = 2
    vision: bool = False
    max_reasks: int = 1  # re-asks of an invalid reply within one call (the engine re-asks once more)
    structured_output: str = "auto"  # auto | json_schema | json_object | tool | text
    max_tokens: Optional[int] = None  # noqa: UP045
    record_dir: str = "${hydra.sweep.dir}/exploration/llm"
    memory_max_lines: int = 400  # working-memory cap told to (and enforced on) the model
    min_rule_evidence: int = 3  # completed nodes a learned rule must cite
    max_rules: int = 20  # learned rules kept in the protocol
    max_rules_chars: int = 4000  # characters of the learned-rules section


@dataclass
class AutoProposerConf(LLMProposerConf):
    """``llm`` when an endpoint is configured (the API key env var is set, or base_url), else ``rules``."""

    _target_: str = "hydra_llm.explore.proposers.auto.auto_proposer"


@dataclass
class CodeEditsConf:
    """The LLM rewrites marked regions of training code at block ends (off by default: it runs
    model-written code in the children; see the README's security note). Needs the llm proposer and
    a task config with a ``code`` node (``code.dir``, ``code.check``), like conf/train.yaml's."""

    enabled: bool = False
    # Dotted names of modules with `# region: <name>` ... `# endregion` blocks; empty: the regime's
    # (exploration.code.modules).
    modules: list[str] = field(default_factory=list)
    # Overrides that make the regime tiny for the smoke and blindness check of each new version;
    # empty: exploration.code.check_overrides.
    check_overrides: list[str] = field(default_factory=list)
    check_timeout_s: float = 600.0  # seconds for one check run (import, smoke, blindness)
    max_reasks: int = 2  # an edit that fails a check goes back to the LLM this many times, then is dropped
    max_repairs: int = 2  # repairs of a version that raises at run time before it is reverted
    max_edits: int = 2  # regions one block end may rewrite


@dataclass
class LLMUCBSweeperConf:
    _target_: str = "hydra_plugins.llm_ucb_sweeper.llm_ucb_sweeper.LLMUCBSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"proposer": "auto"}])
    proposer: Any = MISSING
    # The search space in Hydra's override grammar. Both empty (and no sweep on the command line): the
    # regime's space from the task config's `exploration` node (selected by simulation=...).
    params: dict[str, str] = field(default_factory=dict)  # within-block space
    block_params: dict[str, str] = field(default_factory=dict)  # simulation keys, only at block boundaries
    n_iterations: int = 12
    n_parallel: int = 4
    n_iter_block: int = 12
    slot_roles: list[str] = field(default_factory=lambda: ["exploit", "exploit", "replicate", "replicate"])
    objective: ObjectiveConf = field(default_factory=ObjectiveConf)
    ucb: UCBConf = field(default_factory=UCBConf)
    max_failure_rate: float = 0.8
    resume: bool = False
    seed: int = 0
    # Path of the protocol file (e.g. instructions/signal_landscape.md); null: exploration.protocol
    protocol: Optional[str] = None  # noqa: UP045
    memory_max_lines: int = 400
    seed_keys: dict[str, str] = field(
        default_factory=lambda: {"simulation": "simulation.seed", "training": "training.seed"}
    )
    simulation_seed: str = "slot"  # slot: one dataset per slot | iteration: iteration*1000+slot | fixed
    # Values fixed per slot (key -> one value per slot, n_parallel of them), forced on every child of the
    # slot like its seeds, never proposed, part of the replicate config hash. E.g.
    # {training.homeostasis_time_step: [4, 16, 32, 64]}.
    slot_params: dict[str, list[Any]] = field(default_factory=dict)
    tree_plot: bool = True
    code_edits: CodeEditsConf = field(default_factory=CodeEditsConf)


_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="llm_ucb", node=LLMUCBSweeperConf, provider="llm_ucb")
_store.store(group="hydra/sweeper/proposer", name="rules", node=RulesProposerConf, provider="llm_ucb")
_store.store(group="hydra/sweeper/proposer", name="llm", node=LLMProposerConf, provider="llm_ucb")
_store.store(group="hydra/sweeper/proposer", name="auto", node=AutoProposerConf, provider="llm_ucb")


class LLMUCBSweeper(Sweeper):
    """Explores the config space as a UCB tree; each batch is proposed by ``proposer``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs
        self._impl: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:  # noqa: D102
        from ._impl import LLMUCBSweeperImpl

        self._impl = LLMUCBSweeperImpl(self, **self.kwargs)
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self._impl.sweep(arguments)
