"""The prompt of the LLM proposer, built from an :class:`ExplorationView`.

Two messages: a system message (the role, the output contract and the hard constraints) and a user
message with the study protocol, the search space, the position in the sweep (with a
``>>> BLOCK END <<<`` marker), the working memory, the UCB table, the last batch per slot (status,
metrics, seeds, config diff vs parent, error summary, R2 trajectory when the child logged one), the
variance table and the pending user instructions. With ``vision`` the slots' plots follow as images.
Every part is bounded (:class:`PromptLimits`) so a long sweep cannot grow the prompt without limit.

The parts are ordered from the most to the least stable. The system message is the same for every call
of a sweep, and the protocol and the search space change only at a block end, so consecutive calls
share a long prefix: a server that caches prompt prefixes (llama.cpp, vLLM, OpenAI) reads only the
part that changed.
"""

from __future__ import annotations

import base64
import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra_llm.explore.proposers.base import ExplorationView, ParamSpec
from hydra_llm.explore.protocol import RulesPolicy
from hydra_llm.explore.space import format_value
from hydra_llm.explore.text import LIMITS
from hydra_llm.explore.tree import Node, UCBScore
from hydra_llm.schemas.evaluation import reading_order

BLOCK_END_MARKER = ">>> BLOCK END <<<"
START_MARKER = ">>> SWEEP START <<<"
FINAL_MARKER = ">>> SWEEP END <<<"
# A child may log its R2 during training here (CSV: a step column, an R2 column, optional phase).
TRAJECTORY_FILES = ("r2_trajectory.csv", "connectivity_r2.csv")


@dataclass(frozen=True)
class PromptLimits:
    """Size bounds of the prompt parts (lines or characters) and of the images sent with it."""

    memory_lines: int = 400
    protocol_chars: int = 24000
    ucb_rows: int = 40
    variance_lines: int = 60
    error_chars: int = 1500
    user_input_chars: int = LIMITS.user_input  # what the engine reads of user_input.md
    plots_per_slot: int = 2
    image_bytes: int = 2_000_000


def cap_lines(text: str, max_lines: int) -> str:
    """``text`` with at most ``max_lines`` lines: head and tail kept, the middle replaced by a marker."""
    lines = text.splitlines()
    if len(lines) <= max_lines:
        return text
    keep_head = max_lines // 2
    keep_tail = max_lines - keep_head - 1
    skipped = len(lines) - keep_head - keep_tail
    marker = f"[... {skipped} lines elided to keep within {max_lines} lines ...]"
    return "\n".join([*lines[:keep_head], marker, *lines[len(lines) - keep_tail :]]) + "\n"


def cap_chars(text: str, max_chars: int, keep: str = "tail") -> str:
    """``text`` cut to ``max_chars`` characters, keeping its head or its tail."""
    if len(text) <= max_chars:
        return text
    if keep == "head":
        return text[:max_chars] + f"\n[... {len(text) - max_chars} characters cut ...]"
    return f"[... {len(text) - max_chars} characters cut ...]\n" + text[-max_chars:]


def fmt(value: Any) -> str:
    """A compact rendering of numbers (4 significant digits) and other values."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(fmt(item) for item in value) + "]"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_overrides(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in overrides.items()) or "(block root config)"


def config_diff(
    child: Mapping[str, Any], parent: Mapping[str, Any] | None, roots: Mapping[str, Any] | None = None
) -> str:
    """``key: old -> new`` for every key that differs ('none (replicate)' when equal).

    A key absent from a config has its root value (``roots``, from the search space defaults).
    """
    if parent is None:
        return "unknown parent config; full overrides: " + format_overrides(child)
    roots = roots or {}
    keys = [k for k in child if parent.get(k, None) != child[k]]
    keys += [k for k in parent if k not in child]
    if not keys:
        return "none (replicate of the parent config)"

    def value(config: Mapping[str, Any], key: str) -> str:
        return fmt(config[key]) if key in config else fmt(roots.get(key, "root"))

    return ", ".join(f"{k}: {value(parent, k)} -> {value(child, k)}" for k in keys)


def read_trajectory(output_dir: str, metric: str = "") -> str | None:
    """Peak, final and trend of the R2 (or ``metric``) a child logged during training; None if none.

    The file is a CSV in the child's folder (:data:`TRAJECTORY_FILES`): a step column first, then a
    column named like ``*r2*`` or ``metric``, and optionally a ``phase`` column.
    """
    for name in TRAJECTORY_FILES:
        path = Path(output_dir) / name
        if not path.is_file():
            continue
        try:
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, csv.Error):
            return None
        if not rows:
            return None
        columns = list(rows[0])
        value_col = next((c for c in columns if c == metric or "r2" in c.lower()), None)
        if value_col is None:
            return None
        step_col = columns[0] if columns[0] != value_col else None
        phase_col = next((c for c in columns if c.lower() == "phase"), None)
        points = []
        for row in rows:
            try:
                points.append(
                    (row.get(step_col, "") if step_col else "", float(row[value_col]), row.get(phase_col))
                )
            except (TypeError, ValueError):
                continue
        if not points:
            return None
        peak = max(points, key=lambda p: p[1])
        final = points[-1][1]
        trend = "rising" if final >= peak[1] - 1e-9 else "decaying" if final < peak[1] - 0.02 else "stable"
        where = f" at step {peak[0]}" + (f" (phase {peak[2]})" if peak[2] else "")
        return f"peak={peak[1]:.4g}{where}, final={final:.4g}, trend={trend}, points={len(points)}"
    return None


def describe_spec(spec: ParamSpec) -> str:
    """One line of the search space: a choice's values exactly as a proposal must send them."""
    if spec.kind == "choice":
        allowed = "one of " + ", ".join(format_value(c) for c in spec.choices)
    else:
        allowed = f"{spec.kind} in [{fmt(spec.low)}, {fmt(spec.high)}]" + (" log scale" if spec.log else "")
    default = "" if spec.default is None else f" (root value {fmt(spec.default)})"
    return f"- {spec.key}: {allowed}{default}"


_SYSTEM = """\
You are the proposer of an exploration sweep that trains graph neural networks to recover the
hidden parameters of simulated networks. Each batch you read the results, keep a working memory,
and propose the next runs, one per slot, each with a one-line hypothesis.
Objective: {goal}. Follow the study protocol in the user message.{classes}

Reply with ONE JSON object with the fields observations, proposals, memory, user_input_ack,
block_end. Hard constraints (a violating proposal is rejected and replaced):
- observations: one entry per node of the last batch (none at the sweep start).
- proposals: exactly as many as the Position section asks for, one per slot, slots numbered
  from 0. parent is the id of an existing node listed in the UCB table or the last batch, or null
  for the block root.
- overrides: {{key, value}} pairs, ONE plain value per key, keys only from the search space,
  values inside the allowed range; null or [] means a replicate (same config, new seeds).
- never propose seeds, paths, dataset names or hydra.* keys: the sweeper sets those.
- block-level (simulation) keys only in block_end.next_simulation, and only at a BLOCK END.
- memory: the complete new working memory, at most {memory_lines} lines (longer is cut).
- block_end (only when the prompt says BLOCK END, else null): summary; the COMPLETE new list of
  learned rules, each citing >= {min_evidence} ids of completed nodes that support it (any
  completed node of the sweep, e.g. from the finished block's table; rules citing fewer are
  refused), at most {max_rules} rules of at most {max_rule_chars} characters;
  rules_change (what changed and why); next_simulation.
- keys fixed per slot (listed under the search space) are set by the sweeper: never propose them.
- user_input_ack: when there are pending user instructions, say how you acted on them.
"""


class PromptBuilder:
    """Builds the chat messages of one proposer call (see module docstring)."""

    def __init__(self, limits: PromptLimits | None = None, rules_policy: RulesPolicy | None = None) -> None:
        self.limits = limits or PromptLimits()
        self.rules_policy = rules_policy or RulesPolicy()

    def messages(self, view: ExplorationView, vision: bool = False) -> list[dict[str, Any]]:
        """``[system, user]``; the user content is a list of parts (text, then images) when ``vision``."""
        text = self.user_text(view)
        if not vision:
            return [{"role": "system", "content": self.system_text(view)}, {"role": "user", "content": text}]
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
        parts.extend(self.image_parts(view))
        return [{"role": "system", "content": self.system_text(view)}, {"role": "user", "content": parts}]

    # ------------------------------------------------------------------ system
    def system_text(self, view: ExplorationView) -> str:
        limits, policy = self.limits, self.rules_policy
        objective = view.objective
        goal = f"{objective.get('direction', 'maximize')} {objective.get('metric', '?')}"
        if objective.get("target") is not None:
            goal += f" (target {fmt(objective['target'])})"
        classes = f"\nClassification of a run: {objective['classes']}." if objective.get("classes") else ""
        return _SYSTEM.format(
            classes=classes,
            goal=goal,
            memory_lines=limits.memory_lines,
            min_evidence=policy.min_evidence,
            max_rules=policy.max_rules,
            max_rule_chars=policy.max_rule_chars,
        )

    # ------------------------------------------------------------------ user
    def user_text(self, view: ExplorationView) -> str:
        sections = [
            self._section(
                "Study protocol", cap_chars(view.protocol, self.limits.protocol_chars, keep="head")
            ),
            self._section("Search space", self._space(view)),
            self._position(view),
            self._section("Working memory", cap_lines(view.memory, self.limits.memory_lines) or "(empty)"),
            self._section("UCB table (current block)", self._ucb(view)),
            self._section("Last batch", self._last_batch(view)),
            self._section(
                "Variance table", cap_lines(view.variance_table, self.limits.variance_lines) or "(none yet)"
            ),
        ]
        if view.code:
            sections.append(
                self._section(
                    "Code versions (children run their parent's version; new roots the running one)",
                    cap_chars(view.code, self.limits.protocol_chars, keep="head"),
                )
            )
        if view.user_input.strip():
            pending = cap_chars(view.user_input.strip(), self.limits.user_input_chars, keep="head")
            sections.append(
                self._section("PENDING USER INSTRUCTIONS (acknowledge in user_input_ack)", pending)
            )
        return "\n\n".join(sections) + "\n"

    @staticmethod
    def _section(title: str, body: str) -> str:
        return f"## {title}\n{body.rstrip()}"

    def _position(self, view: ExplorationView) -> str:
        if view.n_parallel == 0:  # the final call closes the last block (its view is a block end)
            lines = [
                f"Iterations 1-{view.first_iteration - 1} / {view.n_iterations} are done; block "
                f"{view.block - 1} ends with the sweep",
                FINAL_MARKER + " The budget is spent: give observations and the final memory; proposals: []",
            ]
        else:
            lines = [
                f"Batch iterations {view.first_iteration}-{view.first_iteration + view.n_parallel - 1} / "
                f"{view.n_iterations}",
                f"Block info: block {view.block}, iteration {view.iter_in_block}/{view.n_iter_block} "
                "within block",
                f"PARALLEL MODE: analyze {len(view.last_batch)} results, propose the next {view.n_parallel} "
                "runs",
                "Slot roles: " + ", ".join(f"slot {i}={r}" for i, r in enumerate(view.slot_roles)),
            ]
        if not view.last_batch:
            lines.append(START_MARKER + " (no results yet: propose the first batch)")
        if view.is_block_end and view.n_parallel == 0:
            lines.append(
                f"{BLOCK_END_MARKER} Block {view.block - 1} is complete: fill block_end with its summary "
                "(no block follows, so the reply has no rules or next_simulation)."
            )
        elif view.is_block_end:
            lines.append(
                f"{BLOCK_END_MARKER} The previous block is complete: fill block_end (summary, rules, "
                "rules_change, next_simulation). The new block restarts the tree at the root "
                "(parent=null)."
            )
        if view.is_block_end and view.finished_block:
            lines += [
                "",
                f"### Finished block {view.block - 1} (final UCB table; rule evidence may cite any "
                "completed node listed here or in earlier blocks)",
                self._rows(view.finished_block, view),
            ]
        return "## Position\n" + "\n".join(lines)

    def _ucb(self, view: ExplorationView) -> str:
        if not view.ucb_table:
            return "(empty: this block has no nodes yet; use parent=null)"
        return self._rows(view.ucb_table, view)

    def _rows(self, table: tuple[UCBScore, ...], view: ExplorationView) -> str:
        """``Node N: UCB=...`` lines of a UCB table, best first, capped at ``limits.ucb_rows``."""
        metric = view.objective.get("metric", "reward")
        rows = []
        for row in table[: self.limits.ucb_rows]:
            value = row.metrics.get(metric, row.reward)
            parent = "root" if row.parent is None else row.parent
            rows.append(
                f"Node {row.node_id}: UCB={row.ucb:.3f}, parent={parent}, visits={row.visits}, "
                f"{metric}={fmt(value)}, status={row.status}, Mutation={row.mutation_text or 'none'}"
            )
        hidden = len(table) - self.limits.ucb_rows
        if hidden > 0:
            rows.append(f"[... {hidden} lower-UCB nodes not shown ...]")
        return "\n".join(rows)

    def _parent_overrides(self, result: Node, view: ExplorationView) -> Mapping[str, Any] | None:
        if result.parent is None:
            return {}
        for row in (*view.ucb_table, *view.finished_block):
            if row.node_id == result.parent:
                return row.overrides
        for other in view.last_batch:
            if other.id == result.parent:
                return other.config
        return None

    def _last_batch(self, view: ExplorationView) -> str:
        if not view.last_batch:
            return "(none: this is the first batch of the sweep)"
        blocks = [self._slot(result, view) for result in view.last_batch]
        return "\n\n".join(blocks)

    def _slot(self, result: Node, view: ExplorationView) -> str:
        parent = "root" if result.parent is None else result.parent
        lines = [
            f"### Slot {result.slot}: node {result.id} (parent {parent}), strategy {result.strategy}, "
            f"status {result.status.upper()}, job {result.job_num}",
            "Seeds: " + (", ".join(f"{k}={v}" for k, v in result.seeds.items()) or "n/a"),
            "Config diff vs parent: "
            + config_diff(result.config, self._parent_overrides(result, view), _roots(view)),
            "Config vs block root: " + format_overrides(result.config),
            "Metrics: "
            + (", ".join(f"{k}={fmt(result.metrics[k])}" for k in reading_order(result.metrics)) or "none"),
            f"Reward: {fmt(result.reward)}",
        ]
        metric = str(view.objective.get("metric", ""))
        trajectory = read_trajectory(result.output_dir, metric) if result.output_dir else None
        if trajectory:
            lines.append(f"R2 trajectory: {trajectory}")
        if result.status == "failed" or result.error:
            error = cap_chars((result.error or "no error message").strip(), self.limits.error_chars)
            lines.append("Error summary:\n" + error)
        if result.plots:
            lines.append(
                "Plots: " + ", ".join(Path(p).name for p in result.plots[: self.limits.plots_per_slot])
            )
        return "\n".join(lines)

    def _space(self, view: ExplorationView) -> str:
        lines = ["Within a block (training keys):"]
        lines += [describe_spec(s) for s in view.search_space] or ["(none)"]
        if view.block_search_space:
            when = "allowed NOW in block_end.next_simulation" if view.is_block_end else "NOT allowed now"
            lines.append(f"Block-level (simulation) keys, {when}:")
            lines += [describe_spec(s) for s in view.block_search_space]
        if view.slot_params:
            lines.append(
                "Fixed per slot by the sweeper (part of each node's config; NEVER propose these). A "
                "proposal in slot s runs with slot s's values: replicate a node in the slot it ran in:"
            )
            lines += [
                f"- {key}: " + ", ".join(f"slot {i}={fmt(v)}" for i, v in enumerate(values))
                for key, values in view.slot_params.items()
            ]
        lines.append("Current simulation overrides: " + format_overrides(view.current_simulation))
        return "\n".join(lines)

    # ------------------------------------------------------------------ images
    def image_parts(self, view: ExplorationView) -> list[dict[str, Any]]:
        """A caption and an ``image_url`` data URL per plot (PNG/JPEG/GIF/WebP, size-capped)."""
        parts: list[dict[str, Any]] = []
        for result in view.last_batch:
            for plot in result.plots[: self.limits.plots_per_slot]:
                path = Path(plot)
                if not path.is_absolute() and result.output_dir:
                    path = Path(result.output_dir) / path
                mime = _MIME.get(path.suffix.lower())
                if mime is None or not path.is_file() or path.stat().st_size > self.limits.image_bytes:
                    continue
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                caption = f"Plot of node {result.id} (slot {result.slot}): {path.name}"
                parts.append({"type": "text", "text": caption})
                parts.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}})
        return parts


def _roots(view: ExplorationView) -> dict[str, Any]:
    return {s.key: s.default for s in (*view.search_space, *view.block_search_space) if s.default is not None}


_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
