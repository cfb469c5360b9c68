"""Code versions of a sweep: folders under ``exploration/code/`` and a git history beside them.

Version 0 is the installed code. Version ``k`` lives in ``exploration/code/v00k/``: one file per edited
strategy module (``<module>.py``, the whole module with its regions replaced), ``version.json`` (its
parent, block, node, rationale, status) and ``diff.patch`` against its parent. The folder is written
under a temporary name and renamed, so it is complete or absent. Every version is also a commit of
the git repository ``exploration/code/history/`` (parent commit = parent version, tag ``v00k``,
message = block, node and rationale), so ``git log -p v00k`` there tells its story.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from hydra_llm.code_edits.loader import module_file
from hydra_llm.code_edits.regions import module_source
from hydra_llm.files import atomic_write_text

log = logging.getLogger(__name__)
Status = Literal["installed", "candidate", "kept", "reverted", "replaced"]
ERROR_FILE = "code_error.json"  # what a child whose code version raised leaves in its folder
GIT_IDENTITY = (
    "-c",
    "user.name=hydra-llm",
    "-c",
    "user.email=hydra-llm@localhost",
    "-c",
    "commit.gpgsign=false",
)


@dataclass
class CodeVersion:
    """One version of the editable code (its files live in :meth:`CodeStore.folder`).

    ``status``: ``candidate`` until the next block end's verdict, then ``kept`` or ``reverted``;
    ``replaced`` when a repair superseded it (``replaced_by``). ``repairs`` counts the repairs in its
    lineage. ``regions`` are the region names it changed relative to ``parent``.
    """

    id: int
    parent: int | None
    block: int
    after_node: int | None
    rationale: str
    regions: list[str] = field(default_factory=list)
    status: Status = "candidate"
    reason: str = ""
    replaced_by: int | None = None
    repairs: int = 0
    commit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodeVersion:
        return cls(**dict(data))


def version_name(version: int) -> str:
    return f"v{version:03d}"


class CodeStore:
    """The code versions of one sweep folder (files and git); the versions' records live in the
    sweep state, this class only writes and reads files."""

    def __init__(self, exploration: Path, modules: tuple[str, ...]) -> None:
        self.root = Path(exploration) / "code"
        self.modules = modules
        self.history = self.root / "history"
        self.git_error: str | None = None

    def folder(self, version: int) -> Path:
        return self.root / version_name(version)

    def source(self, version: int, module: str) -> str:
        """The text of ``module`` in ``version`` (0: the installed file)."""
        if version == 0:
            return module_source(module)[1]
        return module_file(self.folder(version), module).read_text(encoding="utf-8")

    def sources(self, version: int) -> dict[str, str]:
        return {m: self.source(version, m) for m in self.modules}

    def next_free(self, known: int) -> int:
        """The next version number: after ``known`` and after every folder present (a folder left by
        a killed sweeper is never reused)."""
        numbers = [int(m[1]) for p in self.root.glob("v[0-9]*") if (m := re.fullmatch(r"v(\d+)", p.name))]
        return max([known, *numbers]) + 1

    def diff(self, old: Mapping[str, str], new: Mapping[str, str], old_name: str, new_name: str) -> str:
        lines: list[str] = []
        for module in self.modules:
            lines += difflib.unified_diff(
                old[module].splitlines(keepends=True),
                new[module].splitlines(keepends=True),
                f"{old_name}/{module}.py",
                f"{new_name}/{module}.py",
            )
        return "".join(lines)

    def write(self, version: CodeVersion, files: Mapping[str, str], diff: str) -> Path:
        """Write the version's folder atomically (temporary name, then rename) and return it."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.folder(version.id)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=self.root))
        try:
            for module, text in files.items():
                module_file(staging, module).write_text(text, encoding="utf-8")
            (staging / "diff.patch").write_text(diff, encoding="utf-8")
            (staging / "version.json").write_text(json.dumps(version.to_dict(), indent=1), encoding="utf-8")
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def update_record(self, version: CodeVersion) -> None:
        """Rewrite ``version.json`` after a verdict (the code files never change)."""
        if version.id > 0 and self.folder(version.id).is_dir():
            atomic_write_text(
                self.folder(version.id) / "version.json", json.dumps(version.to_dict(), indent=1)
            )

    # ------------------------------------------------------------------ git
    def _git(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")
        done = subprocess.run(
            ["git", *GIT_IDENTITY, *args],
            cwd=self.history,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"git {args[0]}: {(done.stderr or done.stdout).strip()[:300]}")
        return done.stdout.strip()

    def commit(self, version: CodeVersion, files: Mapping[str, str], parent_commit: str | None) -> str:
        """Commit ``files`` as ``version`` on top of ``parent_commit``; returns the commit id, or ''
        when git is unavailable (the folders remain the record; :attr:`git_error` says why)."""
        if self.git_error is not None:
            return ""
        try:
            if not (self.history / ".git").is_dir():
                self.history.mkdir(parents=True, exist_ok=True)
                self._git("init", "-q")
            if parent_commit:
                self._git("checkout", "-q", "--detach", parent_commit)
            for module, text in files.items():
                (self.history / f"{module}.py").write_text(text, encoding="utf-8")
            self._git("add", "-A")
            self._git("commit", "-q", "--allow-empty", "--no-verify", "-m", commit_message(version))
            commit = self._git("rev-parse", "HEAD")
            self._git("tag", "-f", version_name(version.id), commit)
            return commit
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as err:
            self.git_error = f"{type(err).__name__}: {err}"
            log.warning("code versions are kept as folders only: %s", self.git_error)
            return ""

    def tag_verdict(self, version: CodeVersion) -> None:
        """Tag a judged version ``kept/v00k`` or ``reverted/v00k`` in the git history."""
        if self.git_error is None and version.commit and version.status in ("kept", "reverted", "replaced"):
            try:
                self._git("tag", "-f", f"{version.status}/{version_name(version.id)}", version.commit)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as err:
                log.warning("git tag failed: %s", err)


def commit_message(version: CodeVersion) -> str:
    """``v002: end of block 2 (after node 4): edit of <regions>`` or ``v003: block 3, node 5 failed:
    repair of v002 (<regions>)``, then the rationale."""
    if version.id == 0:
        return "v000: installed code (baseline)"
    regions = ", ".join(version.regions)
    if version.repairs:
        subject = (
            f"block {version.block}, node {version.after_node} failed: repair of "
            f"{version_name(version.parent or 0)} ({regions})"
        )
    else:
        subject = f"end of block {version.block} (after node {version.after_node}): edit of {regions}"
    return f"{version_name(version.id)}: {subject}\n\n{version.rationale}"
