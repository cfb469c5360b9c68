"""The study protocol file and its one editable section (the learned rules).

A protocol (``instructions/<study>.md``) is markdown the proposer follows. Exactly one section may be
rewritten by the proposer at block ends: the lines between :data:`RULES_BEGIN` and :data:`RULES_END`.
Everything else is kept byte for byte. Inside the markers every line is a rule in a machine-read form

    - <one-line rule> [evidence: 12, 15, 31]

and a rule is accepted only if it cites at least ``min_evidence`` distinct *completed* nodes of the
tree (a principle needs several supporting runs, never one noisy run).
The section is capped in rules and characters so the protocol cannot grow without bound.

Entry points for the engine: :func:`load_protocol` at sweep start, :func:`edit_rules` at a block end
(returns the new text, accepted and refused rules, and a diff), :func:`snapshot_protocol` to write
``protocol/block_NNN.md`` and its ``.diff``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

RULES_BEGIN = "<!-- RULES:BEGIN -->"
RULES_END = "<!-- RULES:END -->"

_RULE_LINE = re.compile(r"^- (?P<text>\S.*?)\s+\[evidence:\s*(?P<ids>\d+(?:\s*,\s*\d+)*)\s*\]\s*$")


class ProtocolError(ValueError):
    """A protocol file without exactly one well-ordered pair of rule markers."""


@dataclass(frozen=True)
class Rule:
    """One learned rule: a single line of text and the node ids that support it."""

    text: str
    evidence: tuple[int, ...]

    def render(self) -> str:
        return f"- {self.text} [evidence: {', '.join(str(i) for i in self.evidence)}]"


@dataclass(frozen=True)
class RulesPolicy:
    """Limits on the editable section: evidence per rule, number of rules, characters."""

    min_evidence: int = 3
    max_rules: int = 20
    max_chars: int = 4000
    max_rule_chars: int = 300


@dataclass
class RulesEdit:
    """Result of :func:`edit_rules`. ``protocol`` is the full new text (unchanged if nothing accepted)."""

    protocol: str
    accepted: list[Rule]
    refused: list[tuple[str, str]] = field(default_factory=list)  # (line, reason)
    diff: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.diff)


def split_protocol(text: str) -> tuple[str, str, str]:
    """``(head, rules, tail)``: head ends right after the BEGIN marker line, tail starts at END.

    ``head + rules + tail == text``. Raises :class:`ProtocolError` unless each marker occurs once,
    BEGIN first, each on its own line.
    """
    for marker in (RULES_BEGIN, RULES_END):
        count = text.count(marker)
        if count != 1:
            raise ProtocolError(
                f"the protocol must contain the marker {marker!r} exactly once (found {count}); "
                f"the learned rules go between {RULES_BEGIN} and {RULES_END}, each on its own line"
            )
    begin = text.index(RULES_BEGIN)
    end = text.index(RULES_END)
    if end < begin:
        raise ProtocolError(f"{RULES_END!r} comes before {RULES_BEGIN!r} in the protocol")
    head_end = text.find("\n", begin)
    if head_end == -1 or head_end >= end:
        raise ProtocolError(f"{RULES_BEGIN!r} and {RULES_END!r} must be on separate lines")
    head_end += 1
    if end > 0 and text[end - 1] != "\n":
        raise ProtocolError(f"{RULES_END!r} must start its own line")
    return text[:head_end], text[head_end:end], text[end:]


def load_protocol(path: str | Path) -> str:
    """Read a protocol file and check its markers (raises :class:`ProtocolError` naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"protocol file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        split_protocol(text)
    except ProtocolError as err:
        raise ProtocolError(f"{path}: {err}") from None
    return text


def render_rules(rules: Iterable[Rule]) -> str:
    """The section text for ``rules`` (one line each, trailing newline; empty string for none)."""
    lines = [rule.render() for rule in rules]
    return "\n".join(lines) + "\n" if lines else ""


def parse_rules(section: str) -> tuple[list[Rule], list[tuple[str, str]]]:
    """Rules in a section, and ``(line, reason)`` for every non-blank line that is not a rule."""
    rules: list[Rule] = []
    bad: list[tuple[str, str]] = []
    for line in section.splitlines():
        if not line.strip():
            continue
        match = _RULE_LINE.match(line.strip())
        if match is None:
            bad.append((line, "not a rule line; expected '- <rule> [evidence: <node ids>]'"))
            continue
        ids = tuple(dict.fromkeys(int(i) for i in match.group("ids").split(",")))
        rules.append(Rule(match.group("text").strip(), ids))
    return rules, bad


def check_rule(rule: Rule, completed: Collection[int], policy: RulesPolicy) -> str | None:
    """Why ``rule`` is refused (text or evidence), or None. ``completed``: ids of completed nodes."""
    if RULES_BEGIN in rule.text or RULES_END in rule.text or "<!--" in rule.text:
        return "a rule may not contain protocol markers or HTML comments"
    if len(rule.text) > policy.max_rule_chars:
        return f"rule longer than {policy.max_rule_chars} characters"
    unknown = [i for i in rule.evidence if i not in completed]
    if unknown:
        return f"evidence cites nodes that do not exist or did not complete: {unknown}"
    if len(rule.evidence) < policy.min_evidence:
        return (
            f"cites {len(rule.evidence)} supporting node(s); at least {policy.min_evidence} distinct "
            "completed nodes are required (no rules from single runs)"
        )
    return None


def edit_rules(
    protocol: str,
    new_section: str,
    completed: Collection[int] | Mapping[int, object],
    policy: RulesPolicy | None = None,
) -> RulesEdit:
    """Replace the rules section of ``protocol`` by the acceptable rules of ``new_section``.

    Lines that are not rule lines, rules that fail :func:`check_rule`, duplicates, and rules beyond
    the count or character limits are refused (with a reason). Text outside the markers is never
    touched. ``completed`` holds the ids of completed nodes of the whole tree (all blocks).
    """
    policy = policy or RulesPolicy()
    head, old_section, tail = split_protocol(protocol)
    ids = set(completed.keys() if isinstance(completed, Mapping) else completed)
    candidates, refused = parse_rules(new_section)
    accepted: list[Rule] = []
    seen: set[str] = set()
    size = 0
    for rule in candidates:
        reason = check_rule(rule, ids, policy)
        if reason is None and rule.text.lower() in seen:
            reason = "duplicate of an earlier rule"
        if reason is None and len(accepted) >= policy.max_rules:
            reason = f"the rules section is limited to {policy.max_rules} rules"
        if reason is None and size + len(rule.render()) + 1 > policy.max_chars:
            reason = f"the rules section is limited to {policy.max_chars} characters"
        if reason is not None:
            refused.append((rule.render(), reason))
            continue
        accepted.append(rule)
        seen.add(rule.text.lower())
        size += len(rule.render()) + 1
    section = render_rules(accepted)
    new_protocol = head + section + tail
    diff = protocol_diff(protocol, new_protocol) if section != old_section else ""
    return RulesEdit(new_protocol if diff else protocol, accepted, refused, diff)


def validate_rules(
    new_section: str,
    completed: Collection[int] | Mapping[int, object],
    policy: RulesPolicy | None = None,
) -> list[str]:
    """Every problem of a proposed rules section as ``'<line>': <reason>`` (empty when acceptable).

    The all-or-nothing form of :func:`edit_rules`, for callers that refuse the whole edit on any
    problem. ``completed``: ids of the completed nodes of the whole tree (failed ones cannot support
    a rule).
    """
    policy = policy or RulesPolicy()
    placeholder = f"{RULES_BEGIN}\n{RULES_END}\n"
    edit = edit_rules(placeholder, new_section, completed, policy)
    return [f"{line.strip()[:120]!r}: {reason}" for line, reason in edit.refused]


def protocol_diff(old: str, new: str, name: str = "protocol.md") -> str:
    """A unified diff of two protocol versions ('' when equal)."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{name}", f"b/{name}"
    )
    return "".join(lines)


def snapshot_protocol(directory: str | Path, block: int, text: str, previous: str | None = None) -> Path:
    """Write ``block_NNN.md`` (and ``block_NNN.diff`` against ``previous``) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"block_{block:03d}.md"
    path.write_text(text, encoding="utf-8")
    if previous is not None:
        (directory / f"block_{block:03d}.diff").write_text(protocol_diff(previous, text), encoding="utf-8")
    return path
