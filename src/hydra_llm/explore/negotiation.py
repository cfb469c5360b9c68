"""Asking the proposer for a batch and checking what it proposes.

Each slot's proposal is validated against the search space, the tree (a parent must be a completed
node of the block) and the sweeper's fixed keys, and the child it would launch is composed
(``check_child``). Invalid proposals go back to the proposer with the errors (``max_reasks`` times);
those still invalid, and every slot when the proposer fails, are proposed by the rules proposer. A
block end's ``next_simulation`` is checked the same way, and so is the block's first batch on it
(``check_batch``: e.g. its children's records must fit on the disk together); when the rules'
``next_simulation`` is refused too, the block keeps the simulation in force.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hydra_llm.explore.children import CheckBatchFn, CheckFn
from hydra_llm.explore.engine_config import SweepConfigError
from hydra_llm.explore.proposers.base import ExplorationView, Proposal, Proposer, ProposerReply
from hydra_llm.explore.space import SearchSpace, parse_value
from hydra_llm.explore.text import clean_reply
from hydra_llm.explore.tree import Node
from hydra_llm.printable import one_line

BuildChild = Callable[[Proposal, int, ExplorationView, dict[str, Any]], Node]


class Negotiator:
    """One batch's exchange with the proposer (see the module docstring).

    ``build_child`` turns a proposal into the child it would launch (for ``check_child``),
    ``check_batch`` tells why a block's first batch cannot start on a ``next_simulation``,
    ``current_simulation`` gives the block-level overrides in force, ``event`` logs one line.
    """

    def __init__(
        self,
        proposer: Proposer,
        rules: Proposer,
        space: SearchSpace,
        *,
        max_reasks: int,
        slot_params: Mapping[str, Sequence[Any]],
        check_child: CheckFn | None,
        build_child: BuildChild,
        current_simulation: Callable[[], Mapping[str, Any]],
        event: Callable[[str], Any],
        proposer_note: str,
        check_batch: CheckBatchFn | None = None,
    ) -> None:
        self.proposer = proposer
        self.rules = rules
        self.space = space
        self.max_reasks = max_reasks
        self.slot_params = slot_params
        self.check_child = check_child
        self.check_batch = check_batch
        self.build_child = build_child
        self.current_simulation = current_simulation
        self.event = event
        self.proposer_note = proposer_note
        # check_batch's answers within one ask: a re-ask that keeps the next simulation (for its
        # proposals' sake) is not checked again (it composes and checks every slot's config)
        self._refusals: dict[str, str | None] = {}

    def ask(self, view: ExplorationView) -> tuple[ProposerReply, list[Proposal], dict[str, Any]]:
        """The proposer's reply and one valid proposal per slot (re-ask, then rules fallback per slot)."""
        record: dict[str, Any] = {
            "iteration": view.first_iteration,
            "proposer": self.proposer_note,
            "calls": [],
        }
        reply: ProposerReply | None = None
        self._refusals = {}
        feedback: list[str] | None = None
        slot_errors: dict[int, list[str]] = {}
        reply_errors: list[str] = []
        for attempt in range(1 + self.max_reasks):
            try:
                reply = clean_reply(self.proposer.propose(view, feedback=feedback))
            except SweepConfigError:  # a setting the proposer cannot work with (a refused API key)
                raise
            except Exception as err:  # a proposer failure must never stop the sweep
                self.event(f"iter {view.first_iteration}: proposer raised {type(err).__name__}: {err}")
                record["calls"].append({"attempt": attempt, "error": f"{type(err).__name__}: {err}"})
                reply = None
                break
            record["calls"].append({"attempt": attempt, "extra": dict(reply.extra)})
            slot_errors, reply_errors = self.validate(reply, view)
            if not slot_errors and not reply_errors:
                break
            feedback = [
                one_line(e, 500)
                for e in reply_errors
                + [f"slot {s}: {e}" for s, errs in sorted(slot_errors.items()) for e in errs]
            ]
            self.event(f"iter {view.first_iteration}: rejected proposals: {'; '.join(feedback)}")
        fallback = self.rules.propose(view) if reply is None or slot_errors or reply_errors else None
        if reply is None:
            assert fallback is not None
            reply = fallback
            record["fallback"] = "all slots (proposer failed)"
        proposals = list(reply.proposals[: view.n_parallel])
        replaced = []
        for slot in range(view.n_parallel):
            if slot >= len(proposals) or slot in slot_errors:
                assert fallback is not None
                if slot >= len(proposals):
                    proposals.append(fallback.proposals[slot])
                else:
                    proposals[slot] = fallback.proposals[slot]
                replaced.append(slot)
        if replaced and reply is not fallback:
            self.event(f"iter {view.first_iteration}: slots {replaced} replaced by the rules proposer")
            record["fallback"] = f"slots {replaced}"
        if reply_errors and fallback is not None:
            reply.next_simulation = fallback.next_simulation
            record["fallback_next_simulation"] = True
            problem = self.batch_refusal(fallback, view)
            if problem:
                self.event(f"block {view.block}: keeps the simulation in force; the rules' {problem}")
                reply.next_simulation = None
                record["fallback_next_simulation"] = "refused"
        return reply, proposals, record

    def validate(self, reply: ProposerReply, view: ExplorationView) -> tuple[dict[int, list[str]], list[str]]:
        """Per-slot errors and reply-level errors (next_simulation)."""
        block_nodes = {r.node_id for r in view.ucb_table}
        failed = {r.node_id for r in view.ucb_table if r.status != "completed"}
        slot_errors: dict[int, list[str]] = {}
        if len(reply.proposals) < view.n_parallel:
            for slot in range(len(reply.proposals), view.n_parallel):
                slot_errors[slot] = [
                    f"missing proposal ({len(reply.proposals)} given, {view.n_parallel} needed)"
                ]
        simulation = self.next_simulation_of(reply, view)
        for slot, proposal in enumerate(reply.proposals[: view.n_parallel]):
            errors = []
            if proposal.parent is not None and proposal.parent not in block_nodes:
                allowed = ", ".join(str(i) for i in sorted(block_nodes)) or "none yet"
                errors.append(
                    f"parent {proposal.parent!r} is not a node of block {view.block}; "
                    f"allowed: root (null) or one of [{allowed}]"
                )
            elif proposal.parent in failed:
                allowed = ", ".join(str(i) for i in sorted(block_nodes - failed)) or "none yet"
                errors.append(
                    f"parent {proposal.parent} failed and cannot be branched from; "
                    f"allowed: root (null) or a completed node of block {view.block}: [{allowed}]"
                )
            overrides = dict(proposal.overrides or {})
            for key in [k for k in overrides if k in self.slot_params]:
                del overrides[key]
                values = ", ".join(f"slot {i}={v}" for i, v in enumerate(self.slot_params[key]))
                errors.append(
                    f"{key}: fixed per slot by hydra.sweeper.slot_params ({values}) and never proposed; "
                    "the sweeper sets it for every child of the slot"
                )
            # Block-level keys are one decision per block (next_simulation), never a slot's.
            errors += self.space.validate(overrides, allow_block=False)
            if not errors and self.check_child is not None:
                child = self.build_child(proposal, slot, view, simulation)
                problem = self.check_child(child)
                if problem:
                    errors.append(problem)
            if errors:
                slot_errors[slot] = errors
        reply_errors = []
        if reply.next_simulation and view.is_block_end:
            for key in reply.next_simulation:
                spec = self.space.spec(key)
                if spec is None or not spec.block_level:
                    allowed = ", ".join(s.key for s in self.space.block_params) or "(none declared)"
                    reply_errors.append(
                        f"next_simulation: {key} is not a block-level key; allowed: {allowed}"
                    )
            if not reply_errors:
                reply_errors += [
                    f"next_simulation: {e}"
                    for e in self.space.validate(reply.next_simulation, allow_block=True)
                ]
            if not reply_errors:
                reply_errors += [e for e in [self.batch_refusal(reply, view)] if e]
        return slot_errors, reply_errors

    def batch_refusal(self, reply: ProposerReply, view: ExplorationView) -> str | None:
        """Why the block's first batch cannot start on ``reply``'s valid ``next_simulation``
        (``check_batch``), as ``next_simulation: <reason>``; None when it can or nothing changes."""
        if self.check_batch is None or not (view.is_block_end and reply.next_simulation):
            return None
        simulation = self.next_simulation_of(reply, view)
        key = json.dumps(simulation, sort_keys=True, default=str)
        if key not in self._refusals:
            self._refusals[key] = self.check_batch(simulation, view.first_iteration)
        problem = self._refusals[key]
        return f"next_simulation: {one_line(problem, 500)}" if problem else None

    def next_simulation_of(self, reply: ProposerReply, view: ExplorationView) -> dict[str, Any]:
        if view.is_block_end and reply.next_simulation:
            try:
                return {k: parse_value(k, v) for k, v in reply.next_simulation.items()}
            except ValueError:
                return dict(self.current_simulation())
        return dict(self.current_simulation())
