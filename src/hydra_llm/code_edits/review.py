"""The code editor of a sweep: at each block end, verdicts on the versions tried and new edits; after a
batch, repairs of versions that raised at run time.

Block end ("BLOCK END + CODE REVIEW"): the LLM sees each version's results (runs, failures, mean of
the objective over replicates) and the current code of every editable region, answers KEEP or REVERT
per candidate version with its evidence, and may rewrite regions (each with a rationale). An edit
passes staged checks before any child runs it: splice (only inside its region), the static check, then
a check run (import, smoke run on a tiny regime, blindness run). A failed stage goes back to the LLM
with its error (``max_reasks`` times), then the edit is dropped and the sweep goes on with the
current code. A passing edit becomes a new version (folder + git commit) and the code of the next
block. The engine enforces the verdicts: a reverted version never runs again.

Repair ("CODE REPAIR"): when a child fails with an exception inside an edited region, the LLM gets the
traceback and the region and sends a fix (same checks). A version repaired ``max_repairs`` times
that fails again is reverted, and the failure is recorded.
"""

from __future__ import annotations

import ast
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hydra_llm.code_edits.regions import Region, RegionError, find_regions, outside, splice
from hydra_llm.code_edits.static import MAX_BODY_CHARS, check_region, top_level_names
from hydra_llm.code_edits.versions import ERROR_FILE, CodeStore, CodeVersion, version_name
from hydra_llm.explore.text import plain_text
from hydra_llm.explore.tree import Node, stats
from hydra_llm.printable import clip, error_line, one_line

RunCheck = Callable[[Path, Mapping[str, Any]], dict[str, Any]]
# complete(messages, tag=..., check=...) -> (reply, reask) where reask(problem) is the conversation
# extended by the reply and a request to fix ``problem``.
Complete = Callable[..., tuple["CodeReply", Callable[[str], list[dict[str, Any]]]]]
MAX_RATIONALE_CHARS = 1500

RULES = """\
You may rewrite only the regions shown below, each as a whole: send the complete new code that goes
between its markers (without the markers). The code outside the regions, the model class, phase 1,
data generation and the evaluation code are not yours to change.
- Keep every function the region defines, with the same arguments: code outside the region calls it.
- Training code reads only the model and its batch. Never read ground truth or anything that holds it
  (the trainer, the datamodule, evaluation or simulation code); no loss may use ground-truth labels.
- Imports: torch, math, numpy, typing, functools, itertools, dataclasses only. No file, network or
  process access, no eval/exec/getattr, no dunder attributes, no global statements.
- Give a rationale per edit: what the change does, why it should help this objective, and the
  literature or prior result it rests on.
Every edit is checked before any run uses it: the static rules above, an import, a smoke run on a tiny
version of the regime, and a blindness run (training with garbage ground truth must learn exactly the
same parameters). A failed check comes back to you with its error.
"""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Verdict(_Strict):
    version: int = Field(description="Id of a candidate version (e.g. 1 for v001)")
    decision: Literal["KEEP", "REVERT"]
    evidence: str = Field(description="One line: the results that justify the decision (cite numbers)")


class RegionEdit(_Strict):
    region: str = Field(description="Name of an editable region, exactly as listed")
    code: str = Field(description="The complete new code between the region's markers (markers excluded)")
    rationale: str = Field(description="What the change does, why it should help, literature rationale")


class CodeReply(_Strict):
    verdicts: list[Verdict] = Field(description="One verdict per candidate version ([] when none)")
    edits: list[RegionEdit] = Field(description="New code per region; [] keeps the code as it is")


@dataclass(frozen=True)
class CodeEditSettings:
    """``hydra.sweeper.code_edits.*`` as the editor uses them (defaults: the sweeper's
    ``CodeEditsConf``).

    ``modules``: dotted names of the modules whose regions may be rewritten; ``max_reasks``: re-asks
    of an edit that fails a check; ``max_repairs``: repairs of one version's lineage before it is
    reverted; ``max_edits``: regions one block end may rewrite.
    """

    modules: tuple[str, ...]
    max_reasks: int
    max_repairs: int
    max_edits: int


class CodeEditor:
    """Keeps the sweep's code versions (in ``state.code``) and talks to the LLM about them.

    ``complete`` asks the LLM for a :class:`CodeReply` (schema-checked, see :data:`Complete`);
    ``run_check(folder, simulation)`` runs a version's import, smoke and blindness checks in a child
    process and returns its ``code_check.json``; ``say`` writes one line to the sweep's log (the
    engine sets it to its event writer).
    """

    def __init__(
        self,
        settings: CodeEditSettings,
        exploration: Path,
        complete: Complete,
        run_check: RunCheck,
        say: Callable[[str], Any] = print,
    ) -> None:
        self.settings = settings
        self.store = CodeStore(exploration, settings.modules)
        self.complete = complete
        self.run_check = run_check
        self.say = say
        self.regions = self._installed_regions()
        self._outside_names = {
            m: top_level_names(ast.parse(outside(self.store.source(0, m), m))) for m in settings.modules
        }
        self.code: dict[str, Any] = {}

    def _installed_regions(self) -> dict[str, Region]:
        regions: dict[str, Region] = {}
        for module in self.settings.modules:
            found = find_regions(self.store.source(0, module), module)
            if not found:
                raise RegionError(f"{module}: no '# region: <name>' ... '# endregion' block to edit")
            for name, region in found.items():
                if name in regions:
                    raise RegionError(f"region {name!r} is defined in {regions[name].module} and {module}")
                regions[name] = region
        return regions

    # ------------------------------------------------------------------ state
    def attach(self, code: dict[str, Any]) -> None:
        """Use (and fill in) the sweep state's ``code`` record: versions, active version, reviews."""
        recorded = code.get("modules")
        if recorded is not None and list(recorded) != list(self.settings.modules):
            raise ValueError(
                f"hydra.sweeper.code_edits.modules: {list(self.settings.modules)} differs from the sweep "
                f"being resumed ({list(recorded)}); resume with the same modules"
            )
        self.code = code
        code["modules"] = list(self.settings.modules)
        code.setdefault("versions", [])
        code.setdefault("active", 0)
        code.setdefault("reviewed_blocks", [])
        code.setdefault("attempts", 0)
        if not code["versions"]:
            baseline = CodeVersion(0, None, 1, None, "installed code", status="installed")
            baseline.commit = self.store.commit(baseline, self.store.sources(0), None)
            code["versions"].append(baseline.to_dict())
            if self.store.git_error:
                self.say(f"code edits: no git history ({self.store.git_error}); versions are folders only")

    @property
    def versions(self) -> dict[int, CodeVersion]:
        return {v["id"]: CodeVersion.from_dict(v) for v in self.code["versions"]}

    def _save_version(self, version: CodeVersion) -> None:
        records = self.code["versions"]
        for i, record in enumerate(records):
            if record["id"] == version.id:
                records[i] = version.to_dict()
                break
        else:
            records.append(version.to_dict())
        self.store.update_record(version)

    @property
    def active(self) -> int:
        return int(self.code.get("active", 0))

    def resolve(self, version: int) -> int:
        """The live version that runs in place of ``version`` (itself unless reverted or replaced)."""
        versions = self.versions
        seen = set()
        while version in versions and version not in seen:
            seen.add(version)
            record = versions[version]
            if record.status == "replaced" and record.replaced_by is not None:
                version = record.replaced_by
            elif record.status == "reverted":
                version = record.parent or 0
            else:
                break
        return version

    def folder(self, version: int) -> str:
        """The folder a child running ``version`` imports from ('' for the installed code)."""
        return "" if version == 0 else str(self.store.folder(version))

    # ------------------------------------------------------------------ block end
    def block_end(
        self, block: int, nodes: Sequence[Node], objective: Mapping[str, Any], simulation: Mapping[str, Any]
    ) -> None:
        """Verdicts on the candidates and new edits, once per block end (idempotent on resume)."""
        if block in self.code["reviewed_blocks"]:
            return
        after = max((n.id for n in nodes), default=None)
        candidates = [v for v in self.versions.values() if v.status == "candidate"]
        messages = [
            {"role": "system", "content": _system_prompt()},
            {"role": "user", "content": self._review_prompt(block, nodes, objective, candidates)},
        ]
        try:
            reply, reask = self._ask(
                messages, f"code_review_block{block:03d}", lambda r: self._reply_errors(r, candidates)
            )
        except Exception as err:  # no reply: candidates stay candidates, the code stays as it is
            self.say(f"code review at block {block}: no usable reply ({error_line(err, 240)})")
            self.code["reviewed_blocks"].append(block)
            return
        self._apply_verdicts(reply.verdicts, block)
        if reply.edits:
            self._try_edits(reply, reask, block, after, simulation, repair_of=None)
        self.code["reviewed_blocks"].append(block)

    def _reply_errors(self, reply: CodeReply, candidates: Sequence[CodeVersion]) -> list[str]:
        errors = []
        wanted = {v.id for v in candidates}
        given = [v.version for v in reply.verdicts]
        if sorted(given) != sorted(wanted):
            errors.append(
                f"verdicts: give exactly one KEEP or REVERT per candidate version {sorted(wanted)}; "
                f"got versions {given}"
            )
        names = [e.region for e in reply.edits]
        unknown = sorted(set(names) - set(self.regions))
        if unknown:
            errors.append(f"edits: unknown region(s) {unknown}; allowed: {', '.join(sorted(self.regions))}")
        if len(set(names)) != len(names):
            errors.append("edits: each region at most once")
        if len(names) > self.settings.max_edits:
            errors.append(
                f"edits: {len(names)} regions; allowed: at most {self.settings.max_edits} per block end"
            )
        return errors

    def _apply_verdicts(self, verdicts: Sequence[Verdict], block: int) -> None:
        versions = self.versions
        for verdict in verdicts:
            version = versions.get(verdict.version)
            if version is None or version.status != "candidate":
                continue
            version.status = "kept" if verdict.decision == "KEEP" else "reverted"
            version.reason = f"block {block} review: {one_line(verdict.evidence, 400)}"
            self._save_version(version)
            self.store.tag_verdict(version)
            if version.status == "reverted" and self.resolve(self.active) != self.active:
                self.code["active"] = self.resolve(self.active)
            self.say(
                f"code review at block {block}: {verdict.decision} {version_name(version.id)} "
                f"({one_line(verdict.evidence, 200)}); code of the next block: "
                f"{version_name(self.active)}"
            )

    def _ask(
        self, messages: list[dict[str, Any]], tag: str, check: Callable[[CodeReply], list[str]]
    ) -> tuple[CodeReply, Callable[[str], list[dict[str, Any]]]]:
        reply, reask = self.complete(messages, tag=tag, check=check)
        return _cleaned(reply), reask

    # ------------------------------------------------------------------ edits and checks
    def _try_edits(
        self,
        reply: CodeReply,
        reask: Callable[[str], list[dict[str, Any]]],
        block: int,
        after: int | None,
        simulation: Mapping[str, Any],
        repair_of: CodeVersion | None,
    ) -> CodeVersion | None:
        """Check the reply's edits against the active version (or the version being repaired);
        re-ask with the failed stage's error; return the new version, or None when dropped."""
        base = repair_of.id if repair_of is not None else self.active
        label = "repair" if repair_of is not None else "edit"
        for attempt in range(1 + self.settings.max_reasks):
            problem, files = self._stage(reply, base, simulation)
            if not problem:
                return self._commit(reply, files, base, block, after, repair_of)
            self.say(f"code {label} at block {block} rejected (attempt {attempt + 1}): {clip(problem, 300)}")
            if attempt == self.settings.max_reasks:
                break
            try:
                reply, reask = self._ask(
                    reask(_rejection_text(problem)),
                    f"code_{label}_block{block:03d}_reask{attempt + 1}",
                    lambda r: self._reply_errors(r, []) if not r.verdicts else ["verdicts: send [] now"],
                )
            except Exception as err:
                self.say(f"code {label} at block {block}: re-ask failed ({type(err).__name__})")
                break
            if not reply.edits:
                break
        self.say(f"code {label} at block {block} dropped; the sweep goes on with {version_name(self.active)}")
        return None

    def _stage(
        self, reply: CodeReply, base: int, simulation: Mapping[str, Any]
    ) -> tuple[str, dict[str, str]]:
        """Splice and check the edits: (the first failed stage's error or '', the edited files)."""
        sources = self.store.sources(base)
        files = dict(sources)
        by_module: dict[str, dict[str, str]] = {}
        for edit in reply.edits:
            region = self.regions.get(edit.region)
            if region is None:
                return f"edits: unknown region {edit.region!r}", files
            by_module.setdefault(region.module, {})[edit.region] = edit.code
            # The interface is the installed region's: the code outside it calls its functions.
            problems = check_region(edit.code, region.body, self._outside_names[region.module], edit.region)
            if problems:
                return "static check: " + "; ".join(problems[:6]), files
            if not edit.rationale.strip():
                return f"region {edit.region}: the rationale is empty", files
        try:
            for module, bodies in by_module.items():
                files[module] = splice(sources[module], module, bodies)
                compile(files[module], f"{module}.py", "exec")
        except (RegionError, SyntaxError) as err:
            return f"splice: {err}", files
        self.code["attempts"] = int(self.code.get("attempts", 0)) + 1
        attempt = self.store.root / "attempts" / f"a{self.code['attempts']:03d}"
        shutil.rmtree(attempt, ignore_errors=True)  # left by a sweeper killed during its check
        attempt.mkdir(parents=True)
        for module, text in files.items():
            if text != sources[module] or base != 0:
                (attempt / f"{module}.py").write_text(text, encoding="utf-8")
        result = self.run_check(attempt, simulation)
        (attempt / "check_result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        if not result.get("ok"):
            stage = result.get("stage", "check")
            error = one_line(result.get("error") or "failed", 600)
            tail = _last_lines(str(result.get("traceback") or ""), 6)
            return f"{stage} check failed: {error}" + (f"\n{tail}" if tail else ""), files
        return "", files

    def _commit(
        self,
        reply: CodeReply,
        files: dict[str, str],
        base: int,
        block: int,
        after: int | None,
        repair_of: CodeVersion | None,
    ) -> CodeVersion:
        versions = self.versions
        number = self.store.next_free(max(versions))
        rationale = "\n".join(
            f"{e.region}: {clip(e.rationale.strip(), MAX_RATIONALE_CHARS)}" for e in reply.edits
        )
        version = CodeVersion(
            id=number,
            parent=base,
            block=block,
            after_node=after,
            rationale=rationale,
            regions=[e.region for e in reply.edits],
            repairs=(repair_of.repairs + 1) if repair_of is not None else 0,
        )
        old = self.store.sources(base)
        diff = self.store.diff(old, files, version_name(base), version_name(number))
        self.store.write(version, files, diff)
        version.commit = self.store.commit(version, files, versions[base].commit or None)
        self._save_version(version)
        if repair_of is None:  # a repair runs in place of the version it repairs (see after_batch)
            self.code["active"] = number
        what = f"repair of {version_name(base)}" if repair_of is not None else f"edit of {version_name(base)}"
        self.say(
            f"code {version_name(number)} ({what}: {', '.join(version.regions)}) passed the checks; "
            f"it runs from now on. {one_line(rationale, 200)}"
        )
        return version

    # ------------------------------------------------------------------ repair
    def after_batch(self, nodes: Sequence[Node], block: int, simulation: Mapping[str, Any]) -> None:
        """Repair (or revert) each version that raised inside an edited region in this batch."""
        handled: set[int] = set()
        for node in nodes:
            if node.status != "failed" or not node.code_version or node.code_version in handled:
                continue
            record = _code_error(node.output_dir)
            if record is None or not record.get("region"):
                continue
            handled.add(node.code_version)
            version = self.versions.get(node.code_version)
            if version is None or version.status in ("reverted", "replaced", "installed"):
                continue
            if version.repairs >= self.settings.max_repairs:
                self._revert(
                    version,
                    f"raised at run time in node {node.id} after {version.repairs} repair(s): "
                    f"{record['error']}",
                )
                continue
            fixed = self._repair(version, node, record, block, simulation)
            if fixed is None:
                self._revert(
                    version,
                    f"raised at run time in node {node.id}; no repair passed the checks: {record['error']}",
                )
            else:
                version.status, version.replaced_by = "replaced", fixed.id
                version.reason = f"raised at run time in node {node.id}: {clip(record['error'], 300)}"
                self._save_version(version)
                self.store.tag_verdict(version)
                self.code["active"] = self.resolve(self.active)

    def _repair(
        self,
        version: CodeVersion,
        node: Node,
        record: Mapping[str, Any],
        block: int,
        simulation: Mapping[str, Any],
    ) -> CodeVersion | None:
        region = str(record["region"])
        body = find_regions(
            self.store.source(version.id, self.regions[region].module), self.regions[region].module
        )[region].body
        prompt = (
            f">>> CODE REPAIR <<<\nNode {node.id} ran code version {version_name(version.id)} and failed "
            "with "
            f"an exception inside region {region}:\n\n{clip(str(record.get('error', '')), 1000)}\n\n"
            f"Traceback (last frames):\n```\n{_last_lines(str(record.get('traceback', '')), 25)}\n```\n\n"
            f"Current code of region {region} ({version_name(version.id)}):\n```python\n{body}```\n\n"
            f"Send one edit of region {region} that fixes the error (verdicts: []). This is repair "
            f"{version.repairs + 1} of at most {self.settings.max_repairs}; after that the version is "
            "reverted."
        )
        messages = [{"role": "system", "content": _system_prompt()}, {"role": "user", "content": prompt}]
        try:
            reply, reask = self._ask(
                messages,
                f"code_repair_{version_name(version.id)}",
                lambda r: (
                    []
                    if [e.region for e in r.edits] == [region]
                    else [f"edits: send exactly one edit, of region {region}"]
                ),
            )
        except Exception as err:
            self.say(f"code repair of {version_name(version.id)}: no usable reply ({type(err).__name__})")
            return None
        return self._try_edits(reply, reask, block, node.id, simulation, repair_of=version)

    def _revert(self, version: CodeVersion, reason: str) -> None:
        """Revert ``version`` and the versions its repairs replaced; the code falls back to the
        nearest live ancestor."""
        version.status, version.reason = "reverted", one_line(reason, 600)
        self._save_version(version)
        self.store.tag_verdict(version)
        versions = self.versions
        parent = versions.get(version.parent) if version.parent is not None else None
        while parent is not None and parent.status == "replaced":
            parent.status = "reverted"
            parent.reason += f"; its repair {version_name(version.id)} was reverted"
            self._save_version(parent)
            self.store.tag_verdict(parent)
            parent = versions.get(parent.parent) if parent.parent is not None else None
        self.code["active"] = self.resolve(self.active)
        self.say(
            f"code {version_name(version.id)} reverted: {clip(version.reason, 300)}; now running "
            f"{version_name(self.active)}"
        )

    # ------------------------------------------------------------------ prompts and reports
    def _review_prompt(
        self,
        block: int,
        nodes: Sequence[Node],
        objective: Mapping[str, Any],
        candidates: Sequence[CodeVersion],
    ) -> str:
        lines = [
            f">>> BLOCK END + CODE REVIEW <<< (block {block} finished)",
            "",
            f"Objective: {objective.get('direction', 'maximize')} {objective.get('metric')}"
            + (f" (target {objective['target']})" if objective.get("target") is not None else ""),
            "",
            "## Results per code version (mean over replicate groups of the same config)",
            self.results_table(nodes, str(objective.get("metric"))),
            "",
        ]
        if candidates:
            lines += [
                "## Candidate versions: answer KEEP or REVERT for each, citing the results above",
                *(
                    f"### {version_name(v.id)} (edit of {version_name(v.parent or 0)}, block {v.block}): "
                    f"{one_line(v.rationale, 300)}\n```diff\n{self._diff(v)}```"
                    for v in candidates
                ),
                "",
            ]
        else:
            lines += ["## Candidate versions: none (verdicts: [])", ""]
        lines += [
            f"## Editable regions (code of {version_name(self.active)}; an edit applies to the version "
            "active "
            "after your verdicts)",
        ]
        for name, region in sorted(self.regions.items()):
            body = find_regions(self.store.source(self.active, region.module), region.module)[name].body
            lines.append(f"### region {name} (module {region.module})\n```python\n{body}```")
        lines += [
            "",
            f"Rewrite at most {self.settings.max_edits} region(s), or send edits: [] to keep the code.",
        ]
        return "\n".join(lines)

    def _diff(self, version: CodeVersion) -> str:
        path = self.store.folder(version.id) / "diff.patch"
        return clip(path.read_text(encoding="utf-8"), 6000) if path.is_file() else ""

    def results_table(self, nodes: Sequence[Node], metric: str) -> str:
        """One row per version that ran: status, runs, failures, mean and best replicate-group mean."""
        rows = [
            "| version | status | parent | runs | failed | mean | best group mean |",
            "|---|---|---|---|---|---|---|",
        ]
        versions = self.versions
        for vid, version in sorted(versions.items()):
            ran = [n for n in nodes if n.code_version == vid]
            if not ran and version.status not in ("candidate",):
                continue
            values = [n.metrics.get(metric) for n in ran if n.status == "completed"]
            values = [v for v in values if v is not None and math.isfinite(v)]
            groups: dict[str, list[float]] = {}
            for n in ran:
                value = n.metrics.get(metric)
                if n.status == "completed" and value is not None and math.isfinite(value):
                    groups.setdefault(n.config_hash, []).append(value)
            means = [stats(g).mean for g in groups.values()]
            mean = stats(values).mean if values else math.nan
            best = max(means) if means else math.nan
            parent = version_name(version.parent) if version.parent is not None else "-"
            rows.append(
                f"| {version_name(vid)} | {version.status} | {parent} "
                f"| {len(ran)} | {sum(n.status == 'failed' for n in ran)} | {mean:.4g} | {best:.4g} |"
            )
        return "\n".join(rows)

    def describe(self) -> str:
        """The code versions for the proposer's view and ``analysis.md`` (markdown, with diffs)."""
        versions = self.versions
        if len(versions) <= 1:
            return f"Code: installed version (v000); editable regions: {', '.join(sorted(self.regions))}."
        lines = [f"Code now running: {version_name(self.active)}"]
        for vid, version in sorted(versions.items()):
            if vid == 0:
                continue
            lines.append(
                f"- {version_name(vid)} ({version.status}; parent {version_name(version.parent or 0)}; block "
                f"{version.block}; regions {', '.join(version.regions)}): "
                f"{one_line(version.rationale, 200)}"
                + (f" [{clip(version.reason, 200)}]" if version.reason else "")
            )
        return "\n".join(lines)

    def markdown(self, nodes: Sequence[Node], metric: str) -> str:
        """The section of ``analysis.md``: the versions, their results and their diffs."""
        lines = ["## Code versions", "", self.describe(), "", self.results_table(nodes, metric), ""]
        for vid, version in sorted(self.versions.items()):
            if vid:
                lines += [
                    f"### {version_name(vid)}",
                    "",
                    version.rationale,
                    "",
                    "```diff",
                    self._diff(version),
                    "```",
                    "",
                ]
        return "\n".join(lines)


def client_completer(client: Callable[[], Any], max_tokens: int = 6000) -> Complete:
    """A :data:`Complete` on the :class:`~hydra_llm.llm.client.LLMClient` that ``client()`` returns
    (schema-checked replies, saved prompts, the client's retries and deadline), asked for on the first
    call: building a client creates its record folder. ``max_tokens`` bounds each reply."""
    from hydra_llm.llm.client import reask_messages

    def complete(messages: list[dict[str, Any]], *, tag: str, check: Any) -> Any:
        done = client().complete(messages, CodeReply, check=check, tag=tag, max_tokens=max_tokens)
        return done.value, lambda problem: reask_messages(done.messages, done.raw_text, problem)

    return complete


def _system_prompt() -> str:
    return (
        "You improve the training code of a scientific exploration sweep, one marked region at a time. "
        "Reply with one JSON object that matches the schema.\n\n" + RULES
    )


def _rejection_text(problem: str) -> str:
    return (
        "The edit was rejected by the checks:\n"
        f"{problem}\n\nSend the corrected edit (the whole region code again, verdicts: []), or edits: [] "
        "to give up."
    )


def _cleaned(reply: CodeReply) -> CodeReply:
    """The reply as data: control characters dropped, text capped (code over the cap is refused by
    the static check, never cut)."""
    return CodeReply(
        verdicts=[
            Verdict(version=v.version, decision=v.decision, evidence=one_line(v.evidence, 600))
            for v in reply.verdicts
        ],
        edits=[
            RegionEdit(
                region=one_line(e.region, 100),
                code=e.code if len(e.code) > MAX_BODY_CHARS else plain_text(e.code, MAX_BODY_CHARS),
                rationale=plain_text(e.rationale, MAX_RATIONALE_CHARS),
            )
            for e in reply.edits
        ],
    )


def _last_lines(text: str, n: int) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _code_error(output_dir: str) -> dict[str, Any] | None:
    if not output_dir:
        return None
    try:
        return json.loads((Path(output_dir) / ERROR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
