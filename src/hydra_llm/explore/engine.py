"""The batch loop of an exploration sweep, independent of Hydra.

select (UCB over the block) -> [block end: code review] -> propose -> validate (re-ask with the
errors, then the rules proposer per slot) -> persist (before launch: the batch's job numbers are
consumed) -> launch via a callable -> record -> persist the artefacts -> [repairs] -> block end
(summary, protocol rules, next simulation).

Beside it: :mod:`.engine_config` (settings and errors), :mod:`.negotiation` (asking and validating),
:mod:`.children` (a child's outcome, seeds and metadata), :mod:`.sweep_folder` (lock, job
numbers, records), :mod:`hydra_llm.code_edits` (code versions, when the sweep edits code).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra_llm.explore import reports
from hydra_llm.explore.children import (
    CheckBatchFn,
    CheckFn,
    ChildOutcome,
    LaunchFn,
    child_record,
    child_seeds,
    finished,
)
from hydra_llm.explore.engine_config import EngineConfig, SweepConfigError, SweepFailedError, SweepOutOfSpace
from hydra_llm.explore.negotiation import Negotiator
from hydra_llm.explore.proposers.base import (
    ExplorationView,
    Proposal,
    Proposer,
    ProposerReply,
)
from hydra_llm.explore.proposers.rules import RulesProposer
from hydra_llm.explore.space import SearchSpace, coerce, parse_value
from hydra_llm.explore.state import (
    SweepState,
    dump_state,
    load_state,
    save_state,
    state_path,
)
from hydra_llm.explore.sweep_folder import (
    SweepFolderBusy,
    SweepLock,
    first_free_job,
    set_aside,
    write_child_record,
)
from hydra_llm.explore.text import LIMITS, clean_reply
from hydra_llm.explore.tree import Node, UCBScore, describe_mutation, ucb_scores
from hydra_llm.files import atomic_write, atomic_write_text, is_out_of_space
from hydra_llm.printable import clip, error_line, one_line

if TYPE_CHECKING:
    from hydra_llm.code_edits.review import CodeEditor

log = logging.getLogger(__name__)

# What a resume must keep (n_iterations may change): the space and slot layout, the block length (the
# blocks the nodes fall in), the seeds the children draw from, and the objective (the nodes' rewards).
RESUME_KEEPS = (
    "params",
    "block_params",
    "fixed",
    "slot_params",
    "n_parallel",
    "n_iter_block",
    "seed",
    "simulation_seed",
    "objective",
)


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


class ExplorationEngine:
    """Runs (or resumes) one exploration sweep in ``sweep_dir``."""

    def __init__(
        self,
        config: EngineConfig,
        space: SearchSpace,
        proposer: Proposer,
        launch: LaunchFn,
        sweep_dir: str | Path,
        *,
        check_child: CheckFn | None = None,
        check_batch: CheckBatchFn | None = None,
        protocol: str = "",
        sweep_id: str = "sweep",
        name: str = "sweep",
        resume: bool = False,
        proposer_note: str = "",
        plot: bool | None = None,
        after_batch: Callable[[SweepState], None] | None = None,
        code_editor: CodeEditor | None = None,
    ) -> None:
        config.check()
        self.config = config
        self.space = space
        self.proposer = proposer
        self.rules = proposer if isinstance(proposer, RulesProposer) else RulesProposer()
        self.launch = launch
        self.check_child = check_child
        self.sweep_dir = Path(sweep_dir)
        self.exploration = self.sweep_dir / "exploration"
        self.name = name
        self.resume = resume
        self.proposer_note = proposer_note or getattr(proposer, "name", type(proposer).__name__)
        self.plot = config.tree_plot if plot is None else plot
        self.after_batch = after_batch  # e.g. the sweep-level W&B run; its failure never stops the sweep
        self.code_editor = code_editor  # hydra.sweeper.code_edits: the LLM rewrites marked code regions
        self.defaults = {s.key: s.default for s in (*space.params, *space.block_params)}
        self.negotiator = Negotiator(
            proposer,
            self.rules,
            space,
            max_reasks=config.max_reasks,
            slot_params=config.slot_params,
            check_child=check_child,
            check_batch=check_batch,
            build_child=self._child,
            current_simulation=lambda: self.state.current_simulation,
            event=lambda message: self._event(self.state, message),
            proposer_note=self.proposer_note,
        )
        self._check_slot_params()
        self.lock = SweepLock(self.sweep_dir)
        try:
            self.lock.acquire()
        except SweepFolderBusy as err:
            raise SweepConfigError(str(err)) from None
        try:
            self.state = self._start(sweep_id, protocol)
            self._attach_code_editor(code_editor)
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        """Release the sweep folder (also done at the end of :meth:`run`)."""
        self.lock.release()

    # ------------------------------------------------------------------ start / resume
    def _check_slot_params(self) -> None:
        """Slot keys are not explorable, and each slot's values compose (before anything runs)."""
        for key in self.config.slot_params:
            if self.space.spec(key) is not None:
                raise SweepConfigError(
                    f"hydra.sweeper.slot_params.{key}: also declared in params/block_params; "
                    "a key is either fixed per slot or explored, not both"
                )
        if not self.config.slot_params or self.check_child is None:
            return
        for slot in range(self.config.n_parallel):
            probe = Node(
                id=0,
                parent=None,
                block=1,
                slot=slot,
                strategy="slot-params-check",
                overrides=self.config.slot_values(slot),
                mutation={},
                simulation={},
                seeds={},
                job_num=-1,
            )
            problem = self.check_child(probe)
            if problem:
                raise SweepConfigError(f"hydra.sweeper.slot_params (slot {slot}): {problem}")

    def _space_record(self) -> dict[str, Any]:
        """The search space, the slot layout and the settings that give the nodes their meaning (the
        blocks they fall in, their seeds, their rewards) as plain JSON data: stored, and compared on
        resume (:data:`RESUME_KEEPS`)."""
        objective = self.config.objective
        record = {
            "params": [asdict(s) for s in self.space.params],
            "block_params": [asdict(s) for s in self.space.block_params],
            "fixed": list(self.space.fixed),
            "slot_params": {k: list(v) for k, v in self.config.slot_params.items()},
            "n_parallel": self.config.n_parallel,
            "n_iter_block": self.config.n_iter_block,
            "seed": self.config.seed,
            "simulation_seed": str(self.config.simulation_seed),
            "objective": {
                k: getattr(objective, k) for k in ("metric", "direction", "target", "failure_reward")
            },
        }
        return json.loads(json.dumps(record, default=str))

    def _load_for_resume(self) -> SweepState:
        """The saved state; a corrupt one is set aside (never overwritten) and the sweep stops."""
        path = state_path(self.sweep_dir)
        try:
            return load_state(self.sweep_dir)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            kept = set_aside(path, "corrupt")
            raise SweepConfigError(
                f"{path} is unreadable ({error_line(err, 240)}); it was kept as "
                f"{kept}. To continue, repair that file and move it back to {path.name}, or run again "
                "with hydra.sweeper.resume=true to start a new exploration in this folder (its job "
                "numbers continue after the existing job folders)"
            ) from None

    def _check_resume_settings(self, state: SweepState) -> None:
        """Refuse to resume with another search space, slot layout, block length, seed or objective
        (names each change)."""
        old, new = state.search_space, self._space_record()
        changes = []
        for key in RESUME_KEEPS:
            if key not in old:  # not recorded by older versions
                continue
            pairs = (
                [(f"{key}.{k}", old[key].get(k), v) for k, v in new[key].items()]
                if key == "objective"  # its fields one by one
                else [(key, old[key], new[key])]
            )
            changes += [f"{name}: {json.dumps(a)} -> {json.dumps(b)}" for name, a, b in pairs if a != b]
        if changes:
            raise SweepConfigError(
                "hydra.sweeper.resume: the settings differ from the sweep being resumed ("
                + clip("; ".join(changes), 1500)
                + "). Resume with the original settings, or start a new sweep with another "
                "hydra.sweep.dir (n_iterations may change)"
            )

    def _start(self, sweep_id: str, protocol: str) -> SweepState:
        path = state_path(self.sweep_dir)
        if path.exists():
            if not self.resume:
                raise SweepConfigError(
                    f"{path} exists: pass hydra.sweeper.resume=true to continue that sweep, "
                    "or choose another hydra.sweep.dir"
                )
            state = self._load_for_resume()
            self._check_resume_settings(state)
            old_folder = state.sweep_dir
            if moved := state.move_folder(self.sweep_dir):
                self._event(
                    state,
                    f"resume: the sweep folder was {old_folder}; the job folders and plots of "
                    f"{len(moved)} nodes are read from {state.sweep_dir}",
                )
            free = first_free_job(self.sweep_dir)
            if free > state.next_job_idx:
                self._event(
                    state,
                    f"resume: job folders up to {free - 1} exist beyond the saved next job "
                    f"{state.next_job_idx}; continuing at job {free}",
                )
                state.next_job_idx = free
            if state.in_flight:
                jobs = [c["job_num"] for c in state.in_flight]
                ids = [c.get("id", c.get("node_id")) for c in state.in_flight]  # older states: node_id
                self._event(
                    state,
                    f"resume: batch iters {min(ids)}-{max(ids)} (jobs {min(jobs)}-{max(jobs)}) "
                    "was in flight; "
                    "re-proposing it with new job numbers",
                )
                state.in_flight = []
            self._event(
                state,
                f"resumed at iteration {state.iteration + 1}, next job {state.next_job_idx}, "
                f"proposer: {self.proposer_note}",
            )
            return state
        if self.resume:
            log.warning("hydra.sweeper.resume=true but %s does not exist: starting a fresh sweep", path)
        state = SweepState(
            sweep_id=sweep_id, seed=self.config.seed, proposer=self.proposer_note, protocol=protocol
        )
        state.search_space = self._space_record()
        state.sweep_dir = os.path.abspath(self.sweep_dir)
        state.next_job_idx = first_free_job(self.sweep_dir)
        self._event(state, f"proposer: {self.proposer_note}")
        if state.next_job_idx:
            self._event(
                state,
                f"job folders up to {state.next_job_idx - 1} exist: new jobs start at {state.next_job_idx}",
            )
        self._event(
            state, f"sweep {sweep_id}: {self.config.n_iterations} iterations, {self.config.n_parallel} slots"
        )
        if protocol:
            atomic_write_text(self.exploration / "protocol" / "block_001.md", protocol)
        save_state(self.sweep_dir, state)
        return state

    def _event(self, state: SweepState, message: str, console: bool = True) -> None:
        """A line for the terminal (unless not ``console``) and ``sweep.log`` that is also kept in the
        state's events."""
        state.events.append(self._say(message, console))

    def _log_path(self) -> Path:
        self.exploration.mkdir(parents=True, exist_ok=True)
        return self.exploration / "sweep.log"

    # ------------------------------------------------------------------ loop
    def run(self) -> SweepState:
        """Run batches until ``n_iterations`` nodes exist; returns the final state."""
        try:
            while (size := self._batch_size()) > 0:
                self.run_batch(size)
            self._finish()
        except SweepConfigError as err:  # a setting a batch found wrong (the LLM endpoint refused the key)
            self._event(self.state, f"stopped: {err}", console=False)  # the error raised is the terminal's
            raise
        finally:
            self.close()
        return self.state

    def interrupted(self, signal_name: str) -> None:
        """Log a stop by signal (the state on disk is consistent at every moment)."""
        self._event(
            self.state,
            f"stopped by {signal_name} at iteration {self.state.iteration}; the batch in flight (if any) "
            f"is re-proposed on resume. Continue with hydra.sweeper.resume=true "
            f"(state: {state_path(self.sweep_dir)})",
        )

    def _batch_size(self) -> int:
        done = self.state.iteration
        left_in_block = self.config.n_iter_block - done % self.config.n_iter_block
        return max(0, min(self.config.n_parallel, self.config.n_iterations - done, left_in_block))

    def run_batch(self, size: int) -> list[Node]:
        """Propose, validate, launch and record one batch of ``size`` children."""
        started = time.monotonic()
        view = self.view(size)
        if self.code_editor is not None and view.is_block_end:
            self._code_review(view)
            view = self.view(size)
        snapshot = self.state.to_dict()
        reply, proposals = self._ask(view)
        self._apply_reply(reply, view, proposals)
        children = self._children(proposals, view)
        self.state.next_job_idx += len(children)
        self._save_in_flight(snapshot, children)
        outcomes = self._launch(children)
        if len(children) > 1 and any(o.lost for o in outcomes):
            children, outcomes = self._rerun_lost_alone(snapshot, children, outcomes)
        self._stop_if_out_of_space(children, outcomes)
        objective = self.config.objective
        nodes = [finished(c, o, objective) for c, o in zip(children, outcomes, strict=True)]
        self.state.nodes.extend(nodes)
        self.state.batches.append([n.id for n in nodes])
        self.state.iteration = max(n.id for n in nodes)
        self.persist()
        if self.code_editor is not None:  # repairs, after the batch's results are safe on disk
            self.code_editor.after_batch(nodes, view.block, self.state.current_simulation)
            save_state(self.sweep_dir, self.state)
        if self.after_batch is not None:
            try:
                self.after_batch(self.state)
            except Exception as err:
                self._event(self.state, f"after-batch hook failed: {type(err).__name__}: {err}")
        self._report_batch(nodes, time.monotonic() - started)
        self._check_failure_rate()
        return nodes

    def _say(self, message: str, console: bool = True) -> str:
        """A line for the terminal (unless not ``console``) and ``sweep.log`` (one printable line,
        capped); returns it."""
        message = one_line(message, LIMITS.event)
        if console:
            log.info("[llm_ucb] %s", message)
        with open(self._log_path(), "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        return message

    def _report_batch(self, nodes: Sequence[Node], seconds: float) -> None:
        """One line per node (parent, slot, strategy, mutation, objective, best so far), one per batch."""
        metric = self.config.objective.metric
        for node in nodes:  # the best config up to this node (this batch's nodes only)
            best = reports.best_config([n for n in self.state.nodes if n.id <= node.id])
            best_text = f"best {best.summary(metric)}" if best is not None else "best -"
            parent = "root" if node.parent is None else node.parent
            change = node.mutation_text or ("replicate" if node.parent is not None else "root config")
            result = (
                f"{metric}={_value(node.metrics.get(metric))}"
                if node.status == "completed"
                else f"FAILED: {clip(node.error or '', 120)}"
            )
            code = f", code v{node.code_version:03d}" if node.code_version else ""
            self._say(
                f"node {node.id} (parent {parent}, slot {node.slot}, {clip(node.strategy, 24)}, "
                f"job {node.job_num}{code}): {clip(change, 80)} -> {result} | {best_text}"
            )
        record = self.state.replies[-1] if self.state.replies else {}
        calls = record.get("calls") or [{}]
        extra = calls[-1].get("extra") or {}
        if extra.get("fallback"):  # the LLM proposer answered with the rules proposer
            fallback = f", rules for all slots ({clip(str(extra.get('fallback_reason', '')), 120)})"
        elif record.get("fallback"):  # the engine replaced invalid or missing proposals
            fallback = f", rules for {record['fallback']}"
        else:
            fallback = ""
        failed = sum(n.status == "failed" for n in nodes)
        self._say(
            f"batch iters {nodes[0].id}-{nodes[-1].id}: {len(nodes)} runs in {seconds:.1f} s, "
            f"{failed} failed, proposer {self.proposer_note.split(' ')[0]}{fallback}"
        )

    def _attach_code_editor(self, code_editor: CodeEditor | None) -> None:
        """Give the editor the state's code versions; a sweep that edited code resumes only with it."""
        if code_editor is None:
            if len(self.state.code.get("versions", [])) > 1:
                raise SweepConfigError(
                    "hydra.sweeper.code_edits.enabled=false, but the sweep being resumed has edited code "
                    "versions (exploration/code/); resume with hydra.sweeper.code_edits.enabled=true so "
                    "its nodes' children run their recorded versions"
                )
            return
        code_editor.say = lambda message: self._event(self.state, message)
        try:
            code_editor.attach(self.state.code)
        except ValueError as err:
            raise SweepConfigError(str(err)) from None
        save_state(self.sweep_dir, self.state)

    def _code_review(self, view: ExplorationView) -> None:
        """At a block end: verdicts on the code versions tried and new edits (saved before the batch)."""
        assert self.code_editor is not None
        objective = self.config.objective
        finished = [n for n in self.state.nodes if n.block == view.block - 1]
        self.code_editor.block_end(
            view.block - 1,
            finished,
            {"metric": objective.metric, "direction": objective.direction, "target": objective.target},
            self.state.current_simulation,
        )
        save_state(self.sweep_dir, self.state)

    def _save_in_flight(self, snapshot: dict[str, Any], children: Sequence[Node]) -> None:
        """The pre-launch state: the pre-reply state with the job numbers consumed, so a kill now
        resumes by re-proposing this batch, never by reusing its job numbers."""
        snapshot["in_flight"] = [c.to_dict() for c in children]
        snapshot["next_job_idx"] = self.state.next_job_idx
        atomic_write_text(state_path(self.sweep_dir), dump_state(snapshot))

    def _rerun_lost_alone(
        self, snapshot: dict[str, Any], children: list[Node], outcomes: list[ChildOutcome]
    ) -> tuple[list[Node], list[ChildOutcome]]:
        """After a launcher crash, run each child that left no result alone under a new job number:
        the child that crashed the launcher fails alone, its batch mates keep their results."""
        lost = [i for i, o in enumerate(outcomes) if o.lost]
        children, outcomes = list(children), list(outcomes)
        for i in lost:
            children[i] = dataclasses.replace(children[i], job_num=self.state.next_job_idx)
            self.state.next_job_idx += 1
        self._save_in_flight(snapshot, children)
        self._event(
            self.state,
            f"iters {children[0].node_id}-{children[-1].node_id}: the launcher crashed "
            f"({outcomes[lost[0]].error}); re-running nodes {[children[i].node_id for i in lost]} one at "
            f"a time as jobs {[children[i].job_num for i in lost]}, so a hard crash fails alone",
        )
        for i in lost:
            outcomes[i] = self._launch([children[i]])[0]
        return children, outcomes

    # ------------------------------------------------------------------ view
    def view(self, size: int) -> ExplorationView:
        """What the proposer reads before a batch of ``size``; ``size`` 0 is the final call, after the
        last batch, which closes the sweep's last block wherever in the block the budget ran out."""
        first = self.state.iteration + 1
        block = (first - 1) // self.config.n_iter_block + 1
        in_block = (first - 1) % self.config.n_iter_block + 1
        if size == 0 and first > 1 and in_block != 1:  # the end of the sweep ends its last block
            block, in_block = block + 1, 1
        is_block_end = in_block == 1 and first > 1
        last_ids = self.state.batches[-1] if self.state.batches else []
        last = tuple(n for n in self.state.nodes if n.id in set(last_ids))
        objective = self.config.objective
        return ExplorationView(
            first_iteration=first,
            n_iterations=self.config.n_iterations,
            block=block,
            iter_in_block=in_block,
            n_iter_block=self.config.n_iter_block,
            is_block_end=is_block_end,
            n_parallel=size,
            slot_roles=tuple(self.config.slot_roles[i % len(self.config.slot_roles)] for i in range(size)),
            ucb_table=self._ucb_rows(self._tree_nodes(block)),
            last_batch=last,
            search_space=self.space.params,
            block_search_space=self.space.block_params,
            current_simulation=dict(self.state.current_simulation),
            variance_table=reports.render_variance(self.state.nodes, objective) if self.state.nodes else "",
            memory=self.state.memory,
            protocol=self.state.protocol,
            user_input=self._pending_user_input(),
            objective={
                "metric": objective.metric,
                "direction": objective.direction,
                "target": objective.target,
                "failure_reward": objective.fail_reward,
                "converged": objective.converged,
                "partial": objective.partial,
                "converged_band": objective.converged_band,
                "partial_band": objective.partial_band,
                "classes": objective.describe_classes(),
            },
            sweep_seed=self.config.seed,
            finished_block=self._ucb_rows([n for n in self.state.nodes if n.block == block - 1])
            if is_block_end
            else (),
            slot_params={k: tuple(v) for k, v in self.config.slot_params.items()},
            code=self.code_editor.describe() if self.code_editor is not None else "",
        )

    def _tree_nodes(self, block: int) -> list[Node]:
        """The nodes a batch of ``block`` may branch from: the block's own, and, when the sweep has no
        block-level keys (its simulation never changes), those of the blocks before it too, so a block
        end does not send the search back to the root config."""
        if self.space.block_params:
            return [n for n in self.state.nodes if n.block == block]
        return [n for n in self.state.nodes if n.block <= block]

    def _ucb_rows(self, nodes: Sequence[Node]) -> tuple[UCBScore, ...]:
        """The UCB table of ``nodes`` (best first)."""
        c = self.config
        return tuple(ucb_scores(nodes, c.ucb_formula, c.ucb_c, c.replicate_reward, c.lcb_kappa))

    def _user_input(self) -> str | None:
        """``user_input.md`` as the user wrote it (bytes that are not UTF-8, e.g. from a Latin-1 editor,
        kept as they are for the rewrite), or None when there is none or it cannot be read."""
        path = self.sweep_dir / "user_input.md"
        try:
            return path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return None
        except OSError as err:  # a folder of that name, no permission: the sweep goes on without it
            self._event(self.state, f"user_input.md cannot be read ({error_line(err, 300)}); skipped")
            return None

    def _pending_user_input(self) -> str:
        """The pending instructions (see :func:`reports.pending_user_input`): bytes that are not UTF-8
        replaced (U+FFFD), at most ``LIMITS.user_input`` characters."""
        text = reports.pending_user_input(self._user_input() or "")
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return clip(text, LIMITS.user_input)

    # ------------------------------------------------------------------ propose + validate
    def _ask(self, view: ExplorationView) -> tuple[ProposerReply, list[Proposal]]:
        """The proposer's reply and one valid proposal per slot (see :mod:`.negotiation`)."""
        reply, proposals, record = self.negotiator.ask(view)
        self.state.replies.append(record)
        return reply, proposals

    # ------------------------------------------------------------------ apply reply
    def _apply_reply(self, reply: ProposerReply, view: ExplorationView, proposals: list[Proposal]) -> None:
        by_id = {n.id: n for n in self.state.nodes}
        for obs in reply.observations:
            node = by_id.get(obs.node_id)
            if node is not None and obs.node_id in set(self.state.batches[-1] if self.state.batches else []):
                node.observation = str(obs.observation)
        for node_id in self.state.batches[-1] if self.state.batches else []:
            self.state.next_parents[str(node_id)] = proposals[0].parent if proposals else "-"
        self._set_memory(reply.memory)
        if view.is_block_end:
            self._block_end(reply, view)
        text = self._user_input() if view.user_input else None
        if text is not None:
            ack = reply.user_input_ack or "received"
            label = f"batch_{view.first_iteration}-{view.first_iteration + view.n_parallel - 1}"
            text = reports.acknowledge_user_input(text, ack, label)
            path = self.sweep_dir / "user_input.md"  # the user's bytes go back as they came
            atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"))
            self.state.user_input_acks.append(f"[{label}] {view.user_input} -> {ack}")
        if reply.extra and self.state.replies:
            self.state.replies[-1]["extra"] = dict(reply.extra)

    def _set_memory(self, memory: str) -> None:
        lines = (memory or "").splitlines()
        cap = self.config.memory_max_lines
        if len(lines) > cap:
            lines = lines[: cap - 1] + [f"[memory truncated to {cap} lines by the sweeper]"]
        self.state.memory = "\n".join(lines) + ("\n" if lines else "")

    def _close_block(self, reply: ProposerReply, finished: int) -> None:
        """Keep the finished block's memory and the reply's summary of it."""
        if self.state.memory:
            atomic_write_text(self.exploration / "memory" / f"block_{finished:03d}.md", self.state.memory)
        self.state.block_summaries[str(finished)] = reply.block_summary or "(no block summary given)"

    def _block_end(self, reply: ProposerReply, view: ExplorationView) -> None:
        finished = view.block - 1
        self._close_block(reply, finished)
        if reply.protocol_rules:
            self._edit_protocol(reply.protocol_rules, finished)
        if reply.next_simulation is not None:
            self.state.current_simulation = {
                k: coerce(self.space.spec(k), parse_value(k, v))  # type: ignore[arg-type]
                for k, v in reply.next_simulation.items()
            }
        sim = ", ".join(f"{k}={v}" for k, v in self.state.current_simulation.items()) or "root config"
        self._event(
            self.state, f"block {view.block} starts at iteration {view.first_iteration}; simulation: {sim}"
        )
        if self.state.protocol:
            atomic_write_text(
                self.exploration / "protocol" / f"block_{view.block:03d}.md", self.state.protocol
            )

    def _edit_protocol(self, rules: str, block: int) -> None:
        """Replace the protocol's rules section (only between its markers); refused rules are logged."""
        from hydra_llm.explore.protocol import edit_rules

        # Evidence may cite any completed node of the sweep (every block), not only the view's table.
        completed = [n.id for n in self.state.nodes if n.status == "completed"]
        policy = getattr(self.proposer, "rules_policy", None)
        try:
            edit = edit_rules(self.state.protocol, rules, completed, policy)
        except ValueError as err:  # no (or malformed) rule markers in the protocol
            self._event(self.state, f"block {block}: protocol edit refused: {err}")
            return
        for line, reason in edit.refused:
            self._event(self.state, f"block {block}: protocol rule refused: {line.strip()[:120]!r}: {reason}")
        if edit.changed:
            self.state.protocol = edit.protocol
            atomic_write_text(self.exploration / "protocol" / f"block_{block:03d}.diff", edit.diff)
            self._event(self.state, f"block {block}: protocol rules replaced ({len(edit.accepted)} rules)")

    # ------------------------------------------------------------------ children
    def _children(self, proposals: Sequence[Proposal], view: ExplorationView) -> list[Node]:
        simulation = dict(self.state.current_simulation)
        return [self._child(p, slot, view, simulation) for slot, p in enumerate(proposals)]

    def _child(
        self, proposal: Proposal, slot: int, view: ExplorationView, simulation: dict[str, Any]
    ) -> Node:
        """The node ``proposal`` launches in ``slot``: its config, seeds and code version (its
        result fields are filled in when it comes back)."""
        parent = self.state.node(proposal.parent) if proposal.parent is not None else None
        base = dict(parent.overrides) if parent else {}
        sim = dict(parent.simulation) if parent else dict(simulation)
        before = {**sim, **base}
        mutation: dict[str, Any] = {}
        for key, raw in (proposal.overrides or {}).items():
            spec = self.space.spec(key)
            assert spec is not None
            value = coerce(spec, parse_value(key, raw))
            mutation[key] = value
            target = sim if spec.block_level else base
            if value == spec.default:
                target.pop(key, None)
            else:
                target[key] = value
        # Forced like the seeds, but part of the config (and of its replicate hash).
        base.update(self.config.slot_values(slot))
        node_id = view.first_iteration + slot
        seeds = child_seeds(self.config, node_id, slot)
        text = describe_mutation(mutation, before, self.defaults)
        code_version = 0
        if self.code_editor is not None:
            code_version = self.code_editor.resolve(
                parent.code_version if parent else self.code_editor.active
            )
        return Node(
            id=node_id,
            parent=proposal.parent,
            block=view.block,
            slot=slot,
            strategy=str(proposal.strategy or "exploit"),
            overrides=base,
            mutation=mutation,
            simulation=sim,
            seeds=seeds,
            job_num=self.state.next_job_idx + slot,
            hypothesis=str(proposal.hypothesis or ""),
            mutation_text=text if mutation else "",
            code_version=code_version,
        )

    def _launch(self, children: Sequence[Node]) -> list[ChildOutcome]:
        for child in children:
            write_child_record(self.sweep_dir, child.job_num, self.child_record(child))
        try:
            outcomes = list(self.launch(children))
        except Exception as err:  # a hard crash of the launcher fails the batch, not the sweep
            message = f"launcher error: {error_line(err, 340)}"
            self._event(self.state, f"iters {children[0].node_id}-{children[-1].node_id}: {message}")
            return [ChildOutcome("failed", error=message, lost=True) for _ in children]
        if len(outcomes) != len(children):
            message = f"launcher returned {len(outcomes)} results for {len(children)} jobs"
            self._event(self.state, message)
            return [ChildOutcome("failed", error=message) for _ in children]
        return outcomes

    def child_record(self, child: Node) -> dict[str, Any]:
        """The node metadata a child reads for itself (see :func:`children.child_record`)."""
        return child_record(self.state.sweep_id, child)

    def _stop_if_out_of_space(self, children: Sequence[Node], outcomes: Sequence[ChildOutcome]) -> None:
        """A child that found a disk full failed for the disk, not for its config, and so would every
        child after it: stop before the batch is recorded. It stays in flight, so the resume proposes
        it again (as after a kill), and no failed node steers the tree away from its config."""
        full = [(c, o) for c, o in zip(children, outcomes, strict=True) if is_out_of_space(o.error)]
        if not full:
            return
        child, out = full[0]
        message = (
            f"stopping: a disk is full: node {child.id} (job {child.job_num}) failed with "
            f"{clip(out.error or '', 300)}. The batch of iterations {children[0].id}-{children[-1].id} is "
            f"re-proposed on resume; free space, then continue with hydra.sweeper.resume=true (state: "
            f"{state_path(self.sweep_dir)})"
        )
        with contextlib.suppress(OSError):  # sweep.log may be on the full disk
            self._event(self.state, message, console=False)  # the error raised is the terminal's line
        raise SweepOutOfSpace(message)

    def _check_failure_rate(self) -> None:
        nodes = self.state.nodes
        failed = [n for n in nodes if n.status == "failed"]
        if len(nodes) < min(self.config.n_parallel, self.config.n_iterations):
            return
        rate = len(failed) / len(nodes)
        if rate > self.config.max_failure_rate:
            last = "; ".join(f"node {n.id}: {n.error}" for n in failed[-3:])
            message = (
                f"stopping: {len(failed)}/{len(nodes)} children failed ({rate:.0%} > "
                f"hydra.sweeper.max_failure_rate={self.config.max_failure_rate}). Last errors: {last}. "
                f"State saved in {state_path(self.sweep_dir)}; "
                "fix the cause and continue with hydra.sweeper.resume=true"
            )
            self._event(self.state, message, console=False)  # the error raised is the terminal's line
            raise SweepFailedError(message)

    # ------------------------------------------------------------------ end + persistence
    def _finish(self) -> None:
        """Ask for the last batch's observations and final memory (no proposals), then persist."""
        last = self.state.batches[-1] if self.state.batches else []
        nodes = [n for n in self.state.nodes if n.id in set(last)]
        if nodes and any(not n.observation for n in nodes):
            view = self.view(0)
            try:
                reply = clean_reply(self.proposer.propose(view))
            except Exception as err:
                self._event(self.state, f"final observations: proposer raised {type(err).__name__}: {err}")
                reply = self.rules.propose(view)
            for obs in reply.observations:
                node = self.state.node(obs.node_id)
                if node is not None and node.id in set(last):
                    node.observation = str(obs.observation)
            if reply.memory:
                self._set_memory(reply.memory)
            if view.is_block_end:  # the last block's summary and memory, as a block end keeps them
                self._close_block(reply, view.block - 1)
            self.state.replies.append(
                {"iteration": view.first_iteration, "final": True, "extra": dict(reply.extra)}
            )
        best = reports.best_config(self.state.nodes)
        if best is not None:
            metric = self.config.objective.metric
            self._event(
                self.state,
                f"done: best config {metric}={best.summary(metric)}; best run node {best.node.id} "
                f"(job {best.node.job_num}, {best.node.output_dir or 'no folder'}); "
                f"report: {self.exploration / 'report.html'}",
            )
        self.persist()

    def persist(self) -> None:
        """Write state.json and every artefact of the sweep folder (atomically, file by file)."""
        state, objective = self.state, self.config.objective
        save_state(self.sweep_dir, state)
        header = f"# Exploration log: {self.name} (sweep {state.sweep_id}, proposer {state.proposer})"
        analysis = reports.render_analysis(
            state.nodes, state.next_parents, state.block_summaries, self.config.n_iter_block, header
        )
        if self.code_editor is not None:
            analysis += "\n" + self.code_editor.markdown(state.nodes, objective.metric)
        atomic_write_text(self.exploration / "analysis.md", analysis)
        atomic_write_text(self.exploration / "memory.md", state.memory)
        if state.protocol:
            atomic_write_text(self.exploration / "protocol.md", state.protocol)
        atomic_write_text(self.exploration / "variance.md", reports.render_variance(state.nodes, objective))
        block = state.nodes[-1].block if state.nodes else 1
        block_nodes = self._tree_nodes(block)
        c = self.config
        scores = list(self._ucb_rows(block_nodes))
        atomic_write_text(
            self.exploration / "ucb_scores.txt",
            reports.render_ucb(scores, objective, block, c.ucb_formula, c.ucb_c),
        )
        results = reports.optimization_results(state.nodes, objective, self.space.fixed, self.name)
        import yaml

        atomic_write_text(
            self.sweep_dir / "optimization_results.yaml", yaml.safe_dump(results, sort_keys=False)
        )
        if self.plot and block_nodes:
            from hydra_llm.explore.tree_plot import plot_tree

            sim = block_nodes[0].simulation
            title = (
                f"UCB tree: block {block}, iterations {block_nodes[0].id}-{block_nodes[-1].id} ({self.name})"
            )
            path = self.exploration / "tree" / f"ucb_tree_iter_{state.iteration:03d}.png"
            try:
                plot_tree(block_nodes, scores, path, title, objective.metric, sim)
            except Exception as err:  # a picture must never stop the sweep
                self._event(state, f"tree picture failed: {type(err).__name__}: {err}")
        from hydra_llm.explore.report_html import write_report

        target = {"metric": objective.metric, "direction": objective.direction, "target": objective.target}
        try:
            write_report(self.sweep_dir, target, f"{self.name}: exploration {state.sweep_id}")
        except OSError as err:  # a full disk must not stop the sweep either; the state is saved
            self._event(state, f"report.html not written: {err}")
