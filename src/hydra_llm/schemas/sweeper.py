"""The schema of ``hydra/sweeper=llm_ucb`` and its proposers: the one declaration of every setting,
its type and its default.

The plugin (``hydra_plugins.llm_ucb_sweeper``) registers these dataclasses in Hydra's ConfigStore, so a
misspelt key, a value of the wrong type or a choice outside its enum fails when Hydra composes the
config. The engine takes its defaults and choices from here too (``EngineConfig``, the proposers'
constructors). It imports nothing heavy and no Hydra, so the plugin stays import-light and the engine
Hydra-free; both depend on it, it on neither.

Enums are StrEnums whose member names equal their values: YAML and overrides name the value, and a
member compares equal to its string.
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING


class SimulationSeed(StrEnum):
    """A child's simulation seed: one dataset per slot, a new one per iteration, or the config's."""

    slot = "slot"
    iteration = "iteration"
    fixed = "fixed"


# "failure-probe" is no identifier, hence the functional form (member names equal their values).
SlotRole = StrEnum("SlotRole", {role: role for role in ("exploit", "explore", "failure-probe", "replicate")})
SlotRole.__doc__ = "What the rules proposer does in a slot (the LLM proposer reads it as a hint)."


class UCBFormula(StrEnum):
    """ucb1: R + c*sqrt(ln N / (1 + visits)); puct: R + c*sqrt(N) / (1 + visits)."""

    ucb1 = "ucb1"
    puct = "puct"


class ReplicateReward(StrEnum):
    """The R of a replicate group: its mean, or its lower bound mean - kappa*std/sqrt(runs)."""

    mean = "mean"
    lcb = "lcb"


class StructuredOutput(StrEnum):
    """How the LLM is asked for a structured reply; ``auto`` steps down the ladder as needed."""

    auto = "auto"
    json_schema = "json_schema"
    json_object = "json_object"
    tool = "tool"
    text = "text"


@dataclass
class ObjectiveConf:
    """What the sweep optimises. A null field takes the regime's value (the task config's
    ``exploration.objective``, chosen by ``simulation=...``), else the built-in default
    (connectivity_R2, maximize, converged 0.9, partial 0.5)."""

    metric: str | None = None
    # maximize | minimize | target. A string, not an enum: the regime's value fills a null here, and
    # the objective checks the merged value once.
    direction: str | None = None
    target: float | None = None
    failure_reward: float | None = None  # null: 0.0 for maximize, -1.0 otherwise
    # classification thresholds (>= for maximize, <= for minimize, |v-target| <= for target)
    converged: float | None = None
    partial: float | None = None
    # Explicit [low, high] bands on the metric value; when set they replace converged / partial
    # (e.g. target 1.0 with an asymmetric partial band: converged_band [0.8, 1.2], partial_band [0.3, 3.0]).
    converged_band: list[float] | None = None
    partial_band: list[float] | None = None


@dataclass
class UCBConf:
    """How a node's UCB score is computed over its block (``ucb_scores``)."""

    formula: UCBFormula = UCBFormula.ucb1
    c: float = 1.414
    replicate_reward: ReplicateReward = ReplicateReward.mean
    lcb_kappa: float = 1.0


@dataclass
class RulesProposerConf:
    """``hydra/sweeper/proposer=rules``: the offline proposer (``RulesProposer``'s arguments)."""

    _target_: str = "hydra_llm.explore.proposers.rules.RulesProposer"
    step_factor: float = 3.0
    probe_factor: float = 10.0
    n_steps: int = 8


@dataclass
class LLMProposerConf:
    """``hydra/sweeper/proposer=llm``: ``LLMProposer``'s arguments, one field each."""

    _target_: str = "hydra_llm.explore.proposers.llm.LLMProposer"
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.2
    timeout: float = 120.0  # seconds per HTTP request
    deadline: float = 300.0  # seconds for one whole proposal call: retries, re-asks, slow bodies
    max_retries: int = 2
    vision: bool = False
    max_reasks: int = 1  # re-asks of an invalid reply within one call (the engine re-asks once more)
    structured_output: StructuredOutput = StructuredOutput.auto
    max_tokens: int | None = None
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
    """``hydra/sweeper=llm_ucb``: the search space, the budget, the objective and the tree's settings."""

    _target_: str = "hydra_plugins.llm_ucb_sweeper.llm_ucb_sweeper.LLMUCBSweeper"
    # Hydra builds the sweeper without its proposer: the sweep builds that once, after the preflight, and
    # turns a bad proposer setting into one line
    _recursive_: bool = False
    defaults: list[Any] = field(default_factory=lambda: [{"proposer": "auto"}])
    proposer: Any = MISSING
    # The search space in Hydra's override grammar. Both empty (and no sweep on the command line): the
    # regime's space from the task config's `exploration` node (selected by simulation=...).
    params: dict[str, str] = field(default_factory=dict)  # within-block space
    block_params: dict[str, str] = field(default_factory=dict)  # simulation keys, only at block boundaries
    n_iterations: int = 12
    n_parallel: int = 4
    n_iter_block: int = 12
    slot_roles: list[SlotRole] = field(
        default_factory=lambda: [SlotRole.exploit, SlotRole.exploit, SlotRole.exploit, SlotRole.replicate]
    )
    objective: ObjectiveConf = field(default_factory=ObjectiveConf)
    ucb: UCBConf = field(default_factory=UCBConf)
    max_failure_rate: float = 0.8
    resume: bool = False
    seed: int = 0
    # Path of the protocol file (e.g. instructions/signal_landscape.md); null: exploration.protocol
    protocol: str | None = None
    memory_max_lines: int = 400
    # Seed name -> the config key the sweeper sets (an empty mapping: the sweeper sets no seeds).
    seed_keys: dict[str, str] = field(
        default_factory=lambda: {"simulation": "simulation.seed", "training": "training.seed"}
    )
    simulation_seed: SimulationSeed = SimulationSeed.slot
    # Values fixed per slot (key -> one value per slot, n_parallel of them), forced on every child of the
    # slot like its seeds, never proposed, part of the replicate config hash. E.g.
    # {training.homeostasis_time_step: [4, 16, 32, 64]}.
    slot_params: dict[str, list[Any]] = field(default_factory=dict)
    tree_plot: bool = True
    code_edits: CodeEditsConf = field(default_factory=CodeEditsConf)
