"""Free text from a proposer (an LLM reply above all) as inert, bounded data.

Every text field of a :class:`ProposerReply` passes through :func:`clean_reply` before the engine
stores, logs or shows it: control characters go, one-line fields lose their line breaks, multi-line
fields cannot open a heading or a block separator of ``analysis.md``, and every field has a size cap.
Text never becomes a config override, an interpolation or a file name (the engine passes node
metadata to children as numbers and a JSON side file, see ``explore/children.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from hydra_llm.explore.proposers.base import Proposal, ProposerReply, SlotObservation
from hydra_llm.printable import CONTROL, clip, one_line

# Lines that would read as structure in analysis.md / sweep.log (a forged ``## Iter`` entry,
# a block separator, a block summary heading).
_STRUCTURE = re.compile(r"^(\s*)(#|---|===)")


@dataclass(frozen=True)
class TextLimits:
    """Caps on model-provided text, in characters (and lines for multi-line fields)."""

    label: int = 64  # strategy labels
    line: int = 500  # hypothesis, observation, user-input acknowledgement
    summary_chars: int = 4000  # block summary
    summary_lines: int = 60
    memory_chars: int = 40_000  # working memory (its line cap is hydra.sweeper.memory_max_lines)
    event: int = 2000  # one sweep.log line
    key: int = 200  # an override key
    value: int = 1000  # a string override value
    user_input: int = 4000  # the pending instructions of user_input.md that a batch reads


LIMITS = TextLimits()


def block_text(text: object, max_chars: int, max_lines: int) -> str:
    """Printable multi-line text: no control characters, no structural line starts, capped."""
    lines = []
    for raw in str(text if text is not None else "").splitlines():
        line = CONTROL.sub(" ", raw.replace("\t", "    ")).rstrip()
        lines.append(_STRUCTURE.sub(r"\1\\\2", line))
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], f"[{len(lines) - max_lines + 1} lines cut]"]
    return clip("\n".join(lines), max_chars)


def plain_text(text: object, max_chars: int) -> str:
    """Printable multi-line text (markdown structure allowed, e.g. the working memory), capped."""
    lines = [CONTROL.sub(" ", raw.replace("\t", "    ")).rstrip() for raw in str(text or "").splitlines()]
    return clip("\n".join(lines), max_chars)


def clean_reply(reply: ProposerReply, limits: TextLimits = LIMITS) -> ProposerReply:
    """A copy of ``reply`` whose free text is inert and bounded (see the module docstring)."""
    return replace(
        reply,
        observations=[
            SlotObservation(
                o.node_id,
                one_line(o.observation, limits.line),
                o.classification,
                one_line(o.strategy, limits.label),
            )
            for o in reply.observations
        ],
        proposals=[_clean_proposal(p, limits) for p in reply.proposals],
        memory=plain_text(reply.memory, limits.memory_chars),
        block_summary=None
        if reply.block_summary is None
        else block_text(reply.block_summary, limits.summary_chars, limits.summary_lines),
        next_simulation=None
        if reply.next_simulation is None
        else _clean_overrides(reply.next_simulation, limits),
        user_input_ack=None if reply.user_input_ack is None else one_line(reply.user_input_ack, limits.line),
    )


def _clean_proposal(proposal: Proposal, limits: TextLimits) -> Proposal:
    return Proposal(
        parent=proposal.parent,
        overrides=_clean_overrides(proposal.overrides or {}, limits),
        strategy=one_line(proposal.strategy, limits.label) or "exploit",
        hypothesis=one_line(proposal.hypothesis, limits.line),
    )


def _clean_overrides(overrides: dict, limits: TextLimits) -> dict:
    """Keys and string values kept verbatim when short and printable (validation then names them);
    otherwise their clipped ``repr``, which no search-space key or choice can equal."""
    out = {}
    for key, value in overrides.items():
        key_text = str(key)
        if len(key_text) > limits.key or CONTROL.search(key_text):
            key_text = clip(repr(key_text), limits.key)  # quoted: never a valid key
        if isinstance(value, str) and (len(value) > limits.value or CONTROL.search(value)):
            value = clip(repr(value), limits.value)
        out[key_text] = value
    return out
