"""The offline ``rules`` proposer: a fixed strategy per slot role, guided by the tree's own evidence,
deterministic for a given sweep seed.

Per slot role (default exploit, exploit, exploit, replicate):

- exploit: the parent is the best config (highest replicate mean) for the first exploit slot, the
  next highest-UCB nodes for the others, and one move is made from it:
  - *continue*: when the parent's own move gained over its parent's replicate mean, the same key in the
    same direction, with a 1.5x longer step (up to ``probe_factor``);
  - *combine* (first exploit slot): when a sibling of the best node gained by moving another key, that
    move applied on top of the best node;
  - otherwise the (key, direction) with the highest mean gain anywhere in the tree that the parent has
    not tried yet (untried moves count as no gain); once both directions of a key were tried from the
    parent, half steps become available. Steps are ``step_factor`` (x/÷) for log parameters, 1/``n_steps``
    of the range for linear ones and integers, another value for choices;
- failure-probe (first exploit slot after 3 consecutive converged nodes): an extreme step
  (x/÷ ``probe_factor``, or the range bound) to find where the config breaks;
- explore (second exploit slot after n_iter_block/4 consecutive converged nodes): the highest-UCB node
  outside the last n_iter_block/4 nodes, mutating the least-explored parameter;
- replicate (robustness-test): re-run the best config group with fewer than 3 runs (no mutation).

A move's gain is the child's reward minus its parent's replicate mean, so a replicated parent is judged
on its mean, not on one draw. At a block end it picks the next simulation regime from the block-level
space (one key at a time, cycling through the keys), and writes observations, memory and block summary
from templates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra_llm.explore.proposers.base import (
    ExplorationView,
    ParamSpec,
    Proposal,
    Proposer,
    ProposerReply,
    SlotObservation,
)
from hydra_llm.explore.tree import Node, Objective, UCBScore, config_hash
from hydra_llm.schemas.sweeper import RulesProposerConf

_MIN_REPLICATES = 3
_CONTINUE_STEP = 1.5  # a gaining move is continued with a step this much longer


@dataclass(frozen=True)
class _Move:
    """A node's single-key move: the key, its direction (+1/-1, or the chosen value of a choice), its
    length in steps, and the node's reward minus its parent's replicate mean."""

    key: str
    direction: Any
    scale: float
    gain: float


def objective_from_view(view: ExplorationView) -> Objective:
    keys = (
        "metric",
        "direction",
        "target",
        "failure_reward",
        "converged",
        "partial",
        "converged_band",
        "partial_band",
    )
    return Objective(**{k: view.objective[k] for k in keys if k in view.objective})


class RulesProposer(Proposer):
    """Deterministic proposer following a fixed parent-selection table per slot role."""

    name = "rules"

    def __init__(
        self,
        step_factor: float = RulesProposerConf.step_factor,
        probe_factor: float = RulesProposerConf.probe_factor,
        n_steps: int = RulesProposerConf.n_steps,
    ) -> None:
        for name, factor in (("step_factor", step_factor), ("probe_factor", probe_factor)):
            if not (math.isfinite(float(factor)) and float(factor) > 1.0):
                raise ValueError(f"rules proposer: {name}={factor!r} must be a finite number > 1")
        if n_steps < 1:
            raise ValueError("rules proposer: n_steps must be >= 1")
        self.step_factor = float(step_factor)
        self.probe_factor = float(probe_factor)
        self.n_steps = int(n_steps)

    # ------------------------------------------------------------------ proposals
    def propose(self, view: ExplorationView, feedback: list[str] | None = None) -> ProposerReply:
        objective = objective_from_view(view)
        rng = random.Random(view.sweep_seed * 1_000_003 + view.first_iteration)
        rows = [r for r in view.ucb_table if r.status == "completed"]  # a failed node is no parent
        by_id = sorted(view.ucb_table, key=lambda r: r.node_id)
        streak = _converged_streak(by_id, objective)
        window = max(1, view.n_iter_block // 4)
        proposals: list[Proposal] = []
        taken: set[tuple[Any, str]] = set()
        moved: set[tuple[str, str, Any, float]] = set()  # (parent config, key, direction, scale)
        replicated: set[str] = set()
        exploit_rank = 0
        for slot in range(view.n_parallel):
            role = view.slot_roles[slot % len(view.slot_roles)] if view.slot_roles else "exploit"
            if role == "replicate":
                proposals.append(self._replicate(rows, view, replicated, slot))
                continue
            strategy = role
            if role == "exploit":
                if exploit_rank == 0 and streak >= 3:
                    strategy = "failure-probe"
                elif exploit_rank == 1 and streak >= window:
                    strategy = "explore"
                rank = exploit_rank
                exploit_rank += 1
            else:
                rank = 0
            parent = self._parent(rows, by_id, strategy, rank, window)
            guided = self._guided(view, parent, rows, rng, taken, moved) if strategy == "exploit" else None
            proposals.append(guided or self._mutate(view, parent, strategy, rng, taken, by_id))
        observations = [self._observe(result, objective, view) for result in view.last_batch]
        reply = ProposerReply(
            observations=observations, proposals=proposals, memory=self._memory(view, objective)
        )
        if view.is_block_end:
            reply.block_summary = self._block_summary(view, objective)
            reply.next_simulation = self._next_simulation(view)
        if view.user_input.strip():
            reply.user_input_ack = "recorded; the rules proposer does not interpret free-text instructions"
        return reply

    def _parent(
        self, rows: Sequence[UCBScore], by_id: Sequence[UCBScore], strategy: str, rank: int, window: int
    ) -> UCBScore | None:
        if not rows:
            return None
        if strategy == "explore":
            recent = {r.node_id for r in by_id[-window:]}
            older = [r for r in rows if r.node_id not in recent]
            if older:
                return older[0]
        # The first exploit slot climbs from the best config (highest replicate mean), the others
        # branch from the UCB order.
        best = max(rows, key=lambda r: (r.reward, -r.node_id))
        ranked = [best, *(r for r in rows if r is not best)]
        return ranked[rank % len(ranked)]

    def _replicate(
        self, rows: Sequence[UCBScore], view: ExplorationView, replicated: set[str], slot: int
    ) -> Proposal:
        """Re-run the best config group that has fewer than 3 runs (else the best group).

        With per-slot values (``view.slot_params``) only nodes that ran with this slot's values can be
        replicated here (elsewhere the sweeper would change those values); the others when none did.
        """
        fixed = {key: values[slot] for key, values in view.slot_params.items() if slot < len(values)}
        same_slot = [r for r in rows if all(r.overrides.get(k) == v for k, v in fixed.items())]
        groups: dict[str, list[UCBScore]] = {}
        for row in sorted(same_slot or rows, key=lambda r: r.node_id):
            groups.setdefault(config_hash(row.overrides, view.current_simulation), []).append(row)
        ranked = sorted(groups.items(), key=lambda item: (-item[1][0].reward, item[1][0].node_id))
        candidates = [g for g in ranked if len(g[1]) < _MIN_REPLICATES and g[0] not in replicated]
        candidates = candidates or [g for g in ranked if g[0] not in replicated] or ranked
        if not candidates:
            return Proposal(
                parent=None, overrides={}, strategy="baseline", hypothesis="baseline of the block root"
            )
        key, members = candidates[0]
        replicated.add(key)
        node = members[0]
        return Proposal(
            parent=node.node_id,
            overrides={},
            strategy="robustness-test",
            hypothesis=f"re-run Node {node.node_id}'s config ({len(members)} run(s) so far) for its variance",
        )

    def _guided(
        self,
        view: ExplorationView,
        parent: UCBScore | None,
        rows: Sequence[UCBScore],
        rng: random.Random,
        taken: set[tuple[Any, str]],
        moved: set[tuple[str, str, Any, float]],
    ) -> Proposal | None:
        """The exploit move from ``parent`` that the tree's evidence favours (see the module docstring),
        or None when every move from it was tried (the caller then makes a random one-step move)."""
        specs = {s.key: s for s in view.search_space}
        if not specs:
            return None
        # Every node is evidence, a failed one too (its gain is the failure reward minus its parent's).
        by_id: dict[int | None, UCBScore] = {r.node_id: r for r in view.ucb_table}
        # The root config's runs (baselines, replicates of it) stand for the root as a parent.
        root = next((r for r in rows if not r.overrides), None)
        if root is not None:
            by_id[None] = root
        moves = {r.node_id: m for r in view.ucb_table if (m := self._move_of(r, by_id, specs)) is not None}
        gains: dict[tuple[str, Any], list[float]] = {}
        for move in moves.values():
            gains.setdefault((move.key, move.direction), []).append(move.gain)
        parent_id = parent.node_id if parent else None
        config = dict(parent.overrides) if parent else {}
        # A move made from any run of the parent's config counts as tried from the parent.
        here = config_hash(config, {})
        tried = {
            (m.key, m.direction, m.scale)
            for i, m in moves.items()
            if config_hash(by_id[by_id[i].parent].overrides, {}) == here
        }
        tried |= {(k, d, sc) for p, k, d, sc in moved if p == here}
        seen = {config_hash(r.overrides, {}) for r in view.ucb_table} | {h for p, h in taken if p == "config"}

        candidates: list[tuple[float, str, Any, float, str]] = []  # (score, key, direction, scale, why)
        own = moves.get(parent_id) if parent_id is not None else None
        if own is not None and own.gain > 0:
            limit = math.log(self.probe_factor) / math.log(self.step_factor)
            longer = _CONTINUE_STEP * own.scale
            scale = min(longer, limit) if specs[own.key].log else longer
            why = f"continue Node {parent_id}'s move ({own.gain:+.3g} over its parent)"
            candidates.append((1e6 + own.gain, own.key, own.direction, scale, why))
        for sibling in self._improving_siblings(parent, rows, moves):
            move = moves[sibling]
            why = f"combine: Node {sibling}'s move ({move.gain:+.3g}) on top of Node {parent_id}"
            candidates.append((1e6 + move.gain, move.key, move.direction, move.scale, why))
        for key, spec in specs.items():
            directions: list[Any] = (
                [c for c in spec.choices if c != config.get(key, spec.default)]
                if spec.kind == "choice"
                else [1, -1]
            )
            full_tried = all((key, d, 1.0) in tried for d in directions)
            for d in directions:
                evidence = gains.get((key, d), [])
                score = sum(evidence) / len(evidence) if evidence else 0.0
                why = f"mean gain {score:+.3g} over {len(evidence)} move(s)" if evidence else "not tried yet"
                candidates.append((score, key, d, 1.0, why))
                if full_tried and spec.kind != "choice":
                    candidates.append((score, key, d, 0.5, "half step: both full steps were tried here"))
        # deterministic tie-breaking through the sweep's rng
        order = sorted(candidates, key=lambda c: (-c[0], rng.random()))
        for _, key, direction, scale, why in order:
            if (key, direction, scale) in tried:
                continue
            spec = specs[key]
            current = config.get(key, spec.default)
            value = self._step(spec, current, direction, scale)
            if value is None:
                continue
            candidate = {
                k: v for k, v in {**config, key: value}.items() if v != _default(view.search_space, k)
            }
            digest = config_hash(candidate, {})
            if digest in seen:
                continue
            moved.add((here, key, direction, scale))
            taken.add(("config", digest))
            taken.add((parent_id, key))
            origin = f"Node {parent_id}" if parent_id is not None else "the block root"
            return Proposal(
                parent=parent_id,
                overrides={key: value},
                strategy="exploit",
                hypothesis=f"{key} {_fmt(current)} -> {_fmt(value)} from {origin}: {why}",
            )
        return None

    def _step(
        self, spec: ParamSpec, current: Any, direction: Any, scale: float = 1.0, extreme: bool = False
    ) -> Any:
        """``current`` moved in ``direction`` (+1/-1, or a choice's value): ``scale`` steps (x/÷
        ``step_factor`` on a log scale, 1/``n_steps`` of the range otherwise, at least 1 for integers),
        or with ``extreme`` a probe (x/÷ ``probe_factor``, or the range's bound); None when that leaves
        it unchanged (at a bound)."""
        if spec.kind == "choice":
            return direction if direction != current else None
        assert spec.low is not None and spec.high is not None
        low, high = spec.low, spec.high
        cur = _clip(float(current), low, high) if isinstance(current, int | float) else _middle(spec)
        if extreme and not spec.log:
            new = high if direction > 0 else low
        elif spec.log:
            factor = self.probe_factor if extreme else self.step_factor**scale
            new = cur * factor**direction
        else:
            new = cur + direction * scale * (high - low) / self.n_steps
        new = _clip(new, low, high)
        if spec.kind == "int":
            step = int(round(new))
            if step == int(round(cur)):
                step = int(_clip(int(round(cur)) + direction, low, high))
            return None if step == int(round(cur)) else step
        return None if math.isclose(new, cur, rel_tol=1e-9) else _round_sig(new)

    def _move_of(
        self, row: UCBScore, by_id: dict[int | None, UCBScore], specs: dict[str, ParamSpec]
    ) -> _Move | None:
        """A node's single-key move from its (completed) parent, with its gain over the parent's mean."""
        if row.parent not in by_id or len(row.node.mutation) != 1:
            return None
        ((key, value),) = row.node.mutation.items()
        spec = specs.get(key)
        parent = by_id[row.parent]
        if spec is None or parent.status != "completed":
            return None
        old = parent.overrides.get(key, spec.default)
        gain = row.node.reward - parent.reward
        if spec.kind == "choice":
            return _Move(key, value, 1.0, gain)
        try:
            old_f, new_f = float(old), float(value)
        except (TypeError, ValueError):
            return None
        if new_f == old_f:
            return None
        if spec.log and old_f > 0 and new_f > 0:
            scale = abs(math.log(new_f / old_f)) / math.log(self.step_factor)
        else:
            assert spec.low is not None and spec.high is not None
            scale = abs(new_f - old_f) / ((spec.high - spec.low) / self.n_steps)
        return _Move(key, 1 if new_f > old_f else -1, round(scale, 6), gain)

    @staticmethod
    def _improving_siblings(
        parent: UCBScore | None, rows: Sequence[UCBScore], moves: dict[int, _Move]
    ) -> list[int]:
        """Siblings of ``parent`` whose move gained, on a key ``parent``'s own move did not touch
        (only when ``parent``'s move gained too): candidates to combine with it."""
        if parent is None or parent.node_id not in moves or moves[parent.node_id].gain <= 0:
            return []
        own = moves[parent.node_id]
        return [
            r.node_id
            for r in rows
            if r.parent == parent.parent
            and r.node_id != parent.node_id
            and r.node_id in moves
            and moves[r.node_id].gain > 0
            and moves[r.node_id].key != own.key
        ]

    def _mutate(
        self,
        view: ExplorationView,
        parent: UCBScore | None,
        strategy: str,
        rng: random.Random,
        taken: set[tuple[Any, str]],
        by_id: Sequence[UCBScore],
    ) -> Proposal:
        parent_id = parent.node_id if parent else None
        config = dict(parent.overrides) if parent else {}
        specs = list(view.search_space)
        if not specs:
            return Proposal(
                parent=parent_id, overrides={}, strategy="robustness-test", hypothesis="empty search space"
            )
        # Never re-propose a configuration the block already ran (that is a replicate's job).
        seen = {config_hash(r.overrides, {}) for r in by_id} | {h for p, h in taken if p == "config"}
        for _ in range(2 * len(specs)):
            key = self._pick_key(specs, parent, strategy, rng, taken, by_id)
            spec = next(s for s in specs if s.key == key)
            current = config.get(key, spec.default)
            value = self.mutate_value(spec, current, rng, extreme=strategy == "failure-probe")
            candidate = {k: v for k, v in {**config, key: value}.items() if v != _default(specs, k)}
            taken.add((parent_id, key))
            if config_hash(candidate, {}) not in seen:
                break
        taken.add(("config", config_hash(candidate, {})))
        what = (
            "push to an extreme to find the failure boundary"
            if strategy == "failure-probe"
            else "one-step move"
        )
        return Proposal(
            parent=parent_id,
            overrides={key: value},
            strategy=strategy,
            hypothesis=f"{what}: {key} {_fmt(current)} -> {_fmt(value)} from "
            + (f"Node {parent_id}" if parent_id is not None else "the block root"),
        )

    def _pick_key(
        self,
        specs: Sequence[ParamSpec],
        parent: UCBScore | None,
        strategy: str,
        rng: random.Random,
        taken: set[tuple[Any, str]],
        by_id: Sequence[UCBScore],
    ) -> str:
        parent_id = parent.node_id if parent else None
        keys = [s.key for s in specs]
        rng.shuffle(keys)
        counts = {k: sum(1 for r in by_id if r.mutation_text.startswith(k + ":")) for k in keys}
        last_key = parent.mutation_text.split(":", 1)[0] if parent and parent.mutation_text else None
        free = [k for k in keys if (parent_id, k) not in taken] or keys
        if strategy == "explore":
            return min(free, key=lambda k: counts[k])
        fresh = [k for k in free if k != last_key] or free
        return fresh[0]

    def mutate_value(self, spec: ParamSpec, current: Any, rng: random.Random, extreme: bool = False) -> Any:
        """A new value for ``spec`` one step (or, ``extreme``, a probe) away from ``current``, in a
        random direction (the other one at a bound)."""
        if spec.kind == "choice":
            others = [c for c in spec.choices if c != current] or list(spec.choices)
            return others[-1] if extreme else rng.choice(others)
        first = 1 if rng.random() < 0.5 else -1
        for direction in (first, -first):
            new = self._step(spec, current, direction, extreme=extreme)
            if new is not None:
                return new
        return current  # a range of one value

    # ------------------------------------------------------------------ texts
    def _observe(self, result: Node, objective: Objective, view: ExplorationView) -> SlotObservation:
        metric = objective.metric
        if result.status == "failed":
            text = (
                f"failed: {result.error or 'no error summary'}; one failure is not evidence, keep exploring"
            )
            return SlotObservation(result.id, text, "failed", result.strategy)
        value = result.metrics.get(metric, math.nan)
        label = objective.classify(value)
        parent_row = next((r for r in view.ucb_table if r.node_id == result.parent), None)
        delta = ""
        if parent_row is not None and metric in parent_row.metrics:
            delta = f", {value - parent_row.metrics[metric]:+.3f} vs parent Node {result.parent}"
        change = ", ".join(f"{k}={_fmt(v)}" for k, v in result.config.items()) or "root config"
        text = f"{metric}={value:.4f} ({label}{delta}); config {change}"
        return SlotObservation(result.id, text, label, result.strategy)

    def _memory(self, view: ExplorationView, objective: Objective) -> str:
        metric = objective.metric
        rows = sorted(
            view.ucb_table, key=lambda r: -r.metrics.get(metric, -math.inf) if r.metrics else math.inf
        )
        best = rows[0] if rows and rows[0].metrics else None
        sim = (
            ", ".join(f"{k}={_fmt(v)}" for k, v in view.current_simulation.items())
            or "root simulation config"
        )
        lines = [
            "# Working memory (rules proposer)",
            "",
            "## Knowledge Base",
            f"- Objective: {objective.direction} {metric}"
            + (f" (target {objective.target})" if objective.target is not None else ""),
            "- Established principles: none (the rules proposer records results, infers no principles)",
            "",
            "## Variance Estimates",
            view.variance_table.strip() or "(no completed runs yet)",
            "",
            "## Current Block",
            f"- Block {view.block}, next iteration {view.first_iteration}/{view.n_iterations}, "
            f"position {view.iter_in_block}/{view.n_iter_block} in block"
            if view.n_parallel
            else f"- Sweep finished after {view.first_iteration - 1} iterations "
            f"(last block {view.block - 1})",
            f"- Simulation: {sim}",
        ]
        if best is not None:
            config = ", ".join(f"{k}={_fmt(v)}" for k, v in best.overrides.items()) or "root config"
            lines.append(
                f"- Best so far in block: Node {best.node_id} {metric}={best.metrics[metric]:.4f} ({config})"
            )
        lines += ["", "## Emerging Observations"]
        for result in view.last_batch:
            value = result.metrics.get(metric)
            shown = (
                f"{metric}={value:.4f}" if value is not None and result.status == "completed" else "failed"
            )
            lines.append(f"- Node {result.id} ({result.strategy}): {shown}")
        return "\n".join(lines) + "\n"

    def _block_summary(self, view: ExplorationView, objective: Objective) -> str:
        # The finished block's whole table when the engine gives it, else its last batch only.
        nodes: Sequence[UCBScore | Node] = view.finished_block or view.last_batch
        scope = f"block {view.block - 1}" if view.finished_block else "the last batch"
        metric = objective.metric
        done = [n for n in nodes if n.status == "completed" and metric in n.metrics]
        sim = (
            ", ".join(f"{k}={_fmt(v)}" for k, v in view.current_simulation.items())
            or "root simulation config"
        )
        if not done:
            return f"Simulation: {sim}\nNo completed runs in {scope}.\nNo protocol changes."
        best = max(done, key=lambda n: (objective.reward(n.metrics[metric]), -n.node_id))
        shown = best.config if isinstance(best, Node) else best.overrides  # a last-batch node: with its sim
        config = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()) or "root config"
        return (
            f"Simulation: {sim}\n"
            f"Best {metric} in {scope}: {best.metrics[metric]:.4f} at Node {best.node_id} ({config})\n"
            f"Converged: {'Yes' if objective.classify(best.metrics[metric]) == 'converged' else 'No'}\n"
            "Protocol: no changes (the rules proposer never edits the rules section)."
        )

    def _next_simulation(self, view: ExplorationView) -> dict[str, Any] | None:
        specs = list(view.block_search_space)
        if not specs:
            return None
        spec = specs[(view.block - 2) % len(specs)]
        nxt = dict(view.current_simulation)
        current = nxt.get(spec.key, spec.default)
        if spec.kind == "choice":
            choices = list(spec.choices)
            index = choices.index(current) if current in choices else -1
            nxt[spec.key] = choices[(index + 1) % len(choices)]
        else:
            nxt[spec.key] = self.mutate_value(spec, current, random.Random(view.sweep_seed + view.block))
        return nxt


def _default(specs: Sequence[ParamSpec], key: str) -> Any:
    return next((s.default for s in specs if s.key == key), None)


def _converged_streak(by_id: Sequence[UCBScore], objective: Objective) -> int:
    streak = 0
    for row in reversed(by_id):
        if row.status != "completed" or objective.classify(row.metrics.get(objective.metric)) != "converged":
            break
        streak += 1
    return streak


def _clip(x: float, low: float, high: float) -> float:
    return min(max(x, low), high)


def _middle(spec: ParamSpec) -> float:
    assert spec.low is not None and spec.high is not None
    return math.sqrt(spec.low * spec.high) if spec.log else (spec.low + spec.high) / 2


def _round_sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
