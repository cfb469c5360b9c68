"""The proposer interface shared by the offline ``rules`` proposer and the ``llm`` proposer.

The engine builds an :class:`ExplorationView` (everything a proposer may read), calls
:meth:`Proposer.propose`, validates every :class:`Proposal` against the search space, and on errors
calls ``propose`` again with ``feedback`` (the validation messages); proposals still invalid after
that are replaced slot by slot by the rules proposer. Nothing here is parsed out of free text.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from hydra_llm.explore.tree import Node, UCBScore

Classification = Literal["converged", "partial", "failed"]


@dataclass(frozen=True)
class ParamSpec:
    """One explorable config key, parsed from ``hydra.sweeper.params`` / ``block_params``.

    ``kind`` is ``float`` / ``int`` (with ``low``/``high``, ``log`` for log scale) or ``choice``
    (with ``choices``). ``block_level`` keys (simulation) may change only at block boundaries.
    """

    key: str
    kind: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    block_level: bool = False
    default: Any = None  # the key's value in the composed root config (None when absent)


@dataclass(frozen=True)
class ExplorationView:
    """Everything a proposer may read before proposing one batch.

    The nodes are the sweep's own records (``last_batch``, and each UCB row's ``node``): read them,
    never change them. A last-batch node's ``config`` is its whole config relative to the block
    root; a UCB row's ``overrides`` are its node's training overrides.
    """

    first_iteration: int  # iteration number (1-based) of the batch's first slot
    n_iterations: int  # total budget of the sweep
    block: int  # 1-based
    iter_in_block: int  # 1-based position of the batch's first slot within its block
    n_iter_block: int
    is_block_end: bool  # the batch about to be proposed follows a block end (simulation may change)
    n_parallel: int
    slot_roles: tuple[str, ...]
    ucb_table: tuple[UCBScore, ...]  # current block, sorted by UCB descending
    last_batch: tuple[Node, ...]  # the previous batch's nodes (empty at sweep start)
    search_space: tuple[ParamSpec, ...]
    block_search_space: tuple[ParamSpec, ...]
    current_simulation: dict[str, Any]  # block-level overrides in force for this block
    variance_table: str  # markdown
    memory: str
    protocol: str
    user_input: str  # pending human instructions ('' when none)
    objective: dict[str, Any]  # metric, direction, target
    sweep_seed: int
    # At a block end: the finished block's nodes (sorted by their final UCB), the evidence a learned
    # rule may cite; ``ucb_table`` is then the new, empty block. Empty otherwise.
    finished_block: tuple[UCBScore, ...] = ()
    # Keys the sweeper fixes per slot (``hydra.sweeper.slot_params``): key -> one value per slot.
    # They are part of every node's config and may never be proposed.
    slot_params: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # The code versions when the sweep edits code (hydra.sweeper.code_edits): which one runs, each
    # version's status and rationale. Children inherit their parent's version; '' when off.
    code: str = ""


@dataclass
class Proposal:
    """One child to launch. ``overrides`` empty means a replicate of ``parent`` (new seeds)."""

    parent: int | None  # node id, or None for the block root
    overrides: dict[str, Any]  # mutation relative to the parent's config
    strategy: str
    hypothesis: str = ""


@dataclass
class SlotObservation:
    """The proposer's reading of one finished slot (rendered into analysis.md)."""

    node_id: int
    observation: str
    classification: Classification
    strategy: str = ""


@dataclass
class ProposerReply:
    observations: list[SlotObservation]
    proposals: list[Proposal]
    memory: str
    # Only at block end:
    block_summary: str | None = None
    protocol_rules: str | None = None  # new rules section (text between the protocol's markers)
    next_simulation: dict[str, Any] | None = None  # block-level overrides for the next block
    user_input_ack: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. token usage, latency


class Proposer(ABC):
    """Proposes one batch. ``feedback`` holds validation errors of the previous attempt."""

    name: str = "proposer"

    @abstractmethod
    def propose(self, view: ExplorationView, feedback: list[str] | None = None) -> ProposerReply: ...
