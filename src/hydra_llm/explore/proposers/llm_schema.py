"""The reply the LLM must send (a pydantic model) and its conversion to a :class:`ProposerReply`.

Everything the sweeper needs is a field: per-slot readings, the next proposals, the new working
memory and, at a block end, the summary, the new learned-rules section (each rule with the node ids
that support it) and the next simulation overrides. Nothing is parsed out of free text.

Overrides are a list of ``{key, value}`` pairs rather than a free-form object because strict JSON
schema (OpenAI, vLLM, llama.cpp) cannot express objects with arbitrary keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hydra_llm.explore.proposers.base import (
    ExplorationView,
    Proposal,
    ProposerReply,
    SlotObservation,
)
from hydra_llm.explore.protocol import Rule, render_rules

Value = float | int | bool | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the strict schema still forbids them server-side


class OverrideItem(_Strict):
    key: str = Field(description="Config key exactly as listed in the search space, e.g. training.coeff_W_L1")
    value: Value = Field(
        description="One allowed value as the search space writes it (a list choice as a string, e.g. "
        '"[0.2,0.8]"); never a sweep'
    )


class SlotReading(_Strict):
    node_id: int = Field(description="Node id of a slot of the last batch")
    classification: Literal["converged", "partial", "failed"]
    strategy: str = Field(description="Strategy label the node was run with, or your corrected label")
    observation: str = Field(description="One line: what this result shows (cite metrics)")


class NextProposal(_Strict):
    slot: int = Field(description="Slot index 0..n_parallel-1; one proposal per slot")
    parent: int | None = Field(
        description="Node id to branch from (an existing node), or null for the block root"
    )
    overrides: list[OverrideItem] | None = Field(
        description="Mutation relative to the parent; null or [] re-runs the parent's config (replicate)"
    )
    strategy: str = Field(description="exploit, explore, failure-probe, robustness-test, replicate, ...")
    hypothesis: str = Field(description="One line: what this run tests and what result would refute it")


class RuleItem(_Strict):
    rule: str = Field(description="One line, a condition and an action")
    evidence: list[int] = Field(
        description="Ids of completed nodes that support the rule (at least the minimum)"
    )


class BlockSummary(_Strict):
    summary: str = Field(description="Block summary in the protocol's block-summary format")


class BlockEnd(BlockSummary):
    rules: list[RuleItem] = Field(description="The COMPLETE new learned-rules section (kept rules included)")
    rules_change: str = Field(
        description="What you changed in the rules and why, or 'No changes needed: <why>'"
    )
    next_simulation: list[OverrideItem] = Field(
        description="Block-level (simulation) overrides for the next block; [] keeps the current ones"
    )


class LLMReply(_Strict):
    observations: list[SlotReading] = Field(
        description="One entry per slot of the last batch ([] at sweep start)"
    )
    proposals: list[NextProposal] = Field(description="Exactly n_parallel proposals, one per slot")
    memory: str = Field(description="The complete new working memory (markdown, within the line limit)")
    user_input_ack: str | None = Field(
        default=None, description="If there were pending user instructions: how you acted on them; else null"
    )
    block_end: BlockEnd | None = Field(
        default=None, description="Required when the prompt says BLOCK END; else null"
    )


class FinalReply(LLMReply):
    """The final call's reply: the last batch's readings, the final memory and, when the sweep ends a
    block, that block's summary only (no block follows to take rules or a next simulation)."""

    block_end: BlockSummary | None = Field(  # type: ignore[assignment]
        default=None, description="The last block's summary when the prompt says BLOCK END; else null"
    )


def reply_model(view: ExplorationView) -> type[LLMReply]:
    """The reply schema of a call: :class:`FinalReply` for the final call (no slots), else LLMReply."""
    return FinalReply if view.n_parallel == 0 else LLMReply


def check_reply(reply: LLMReply, view: ExplorationView) -> list[str]:
    """Whole-reply consistency errors (slots, observed nodes, block end); per-key checks are the engine's."""
    errors: list[str] = []
    expected = [n.id for n in view.last_batch]
    got = [o.node_id for o in reply.observations]
    missing = sorted(set(expected) - set(got))
    unknown = sorted(set(got) - set(expected))
    if missing:
        errors.append(f"observations: missing node ids {missing}; give one observation per last-batch node")
    if unknown:
        errors.append(f"observations: node ids {unknown} are not in the last batch (expected {expected})")
    slots = [p.slot for p in reply.proposals]
    if view.n_parallel:
        errors += _slot_errors(slots, view.n_parallel)
    for proposal in reply.proposals:
        keys = [item.key for item in proposal.overrides or []]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            errors.append(f"proposals[slot={proposal.slot}].overrides: key(s) {dupes} given more than once")
    if view.is_block_end and reply.block_end is None:
        fields = (
            "summary" if isinstance(reply, FinalReply) else "summary, rules, rules_change, next_simulation"
        )
        errors.append(f"block_end: required at a BLOCK END ({fields})")
    return errors


def _slot_errors(slots: list[int], n: int) -> list[str]:
    """What is wrong with the proposals' slot numbers, said as the fix to make."""
    want = list(range(n))
    if sorted(slots) == want:
        return []
    contiguous = len(slots) > 1 and sorted(slots) == list(range(min(slots), max(slots) + 1))
    shown = f"{min(slots)}..{max(slots)}" if contiguous else str(slots)
    if len(slots) == n and sorted(slots) == [s + 1 for s in want]:
        fix = "subtract 1 from every slot (slots are numbered from 0)"
    elif len(slots) != n:
        fix = f"send exactly {n} proposals, one per slot"
    else:
        fix = "give each slot number once"
    return [f"proposals: slots must be 0..{n - 1}; you sent {shown}: {fix}"]


def to_proposer_reply(reply: LLMReply, view: ExplorationView, memory: str) -> ProposerReply:
    """The engine-facing reply. ``memory`` is the (already capped) new working memory."""
    observations = [
        SlotObservation(o.node_id, o.observation.strip(), o.classification, o.strategy.strip())
        for o in reply.observations
    ]
    proposals = [
        Proposal(
            parent=p.parent,
            overrides={item.key: item.value for item in p.overrides or []},
            strategy=p.strategy.strip() or "exploit",
            hypothesis=p.hypothesis.strip(),
        )
        for p in sorted(reply.proposals, key=lambda p: p.slot)
        if p.slot < view.n_parallel
    ]
    out = ProposerReply(observations, proposals, memory, user_input_ack=reply.user_input_ack)
    if view.is_block_end and reply.block_end is not None:
        end = reply.block_end
        out.block_summary = end.summary.strip()
        if isinstance(end, BlockEnd):
            out.block_summary += f"\n\nRules change: {end.rules_change.strip()}"
            out.protocol_rules = render_rules(Rule(r.rule.strip(), tuple(r.evidence)) for r in end.rules)
            out.next_simulation = {item.key: item.value for item in end.next_simulation}
    return out
