"""The sweep's persistent state (``exploration/state.json``) and atomic file writes.

The state holds everything needed to resume: the nodes, the sweep position, the next job number,
the working memory and protocol, the block-level overrides in force, the proposer replies' ``extra``
and the batch in flight (its job numbers are consumed: a resumed sweep never reuses them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra_llm.explore.tree import Node
from hydra_llm.files import atomic_write_text

STATE_VERSION = 1


@dataclass
class SweepState:
    """The whole exploration, JSON-serialisable."""

    sweep_id: str
    seed: int
    proposer: str
    next_job_idx: int = 0
    iteration: int = 0  # iterations (nodes) completed
    nodes: list[Node] = field(default_factory=list)
    current_simulation: dict[str, Any] = field(default_factory=dict)
    memory: str = ""
    protocol: str = ""
    block_summaries: dict[str, str] = field(default_factory=dict)  # block number -> summary
    in_flight: list[dict[str, Any]] = field(default_factory=list)  # children launched, not recorded
    batches: list[list[int]] = field(default_factory=list)  # node ids of each recorded batch
    next_parents: dict[str, Any] = field(default_factory=dict)  # node id -> first parent of the next batch
    replies: list[dict[str, Any]] = field(
        default_factory=list
    )  # per proposer call: iteration, extra, fallbacks
    user_input_acks: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # rejections, launcher errors, protocol edits
    search_space: dict[str, Any] = field(default_factory=dict)
    # Code versions when hydra.sweeper.code_edits is on: versions, active, reviewed_blocks, attempts.
    code: dict[str, Any] = field(default_factory=dict)
    # The sweep folder's absolute path when the state was written: a resume from another place (the
    # folder moved or copied) moves the nodes' job folders and plots with it (:meth:`move_folder`).
    sweep_dir: str = ""
    version: int = STATE_VERSION

    def to_dict(self) -> dict[str, Any]:
        # asdict(self) less its second pass over the nodes: each field deep-copied, each node once
        return {
            f.name: [n.to_dict() for n in self.nodes]
            if f.name == "nodes"
            else deepcopy(getattr(self, f.name))
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepState:
        """The state saved as ``data``; ``ValueError`` naming the first field that is not what this
        version writes (a wrong type, an unknown key, nodes that disagree with the sweep's position).
        Keys added after a state was saved take their defaults."""
        data = dict(data)
        if data.get("version") != STATE_VERSION:
            raise ValueError(
                f"state.json version {data.get('version')!r} is not supported (expected {STATE_VERSION})"
            )
        _check_fields(cls, data, "state")
        nodes = []
        for i, raw in enumerate(data.get("nodes", [])):
            if not isinstance(raw, dict):
                raise ValueError(f"nodes[{i}]: {type(raw).__name__}, not an object")
            _check_fields(Node, raw, f"nodes[{i}]")
            nodes.append(Node.from_dict(raw))
        state = cls(**{**data, "nodes": nodes})
        state._check_consistent()
        return state

    def _check_consistent(self) -> None:
        """The nodes are iterations 1..``iteration`` in the order of ``batches``, with known statuses,
        numeric metrics and job numbers below ``next_job_idx``."""
        ids = [n.id for n in self.nodes]
        if ids != list(range(1, len(ids) + 1)) or self.iteration != len(ids):
            raise ValueError(f"iteration {self.iteration} and the node ids {ids[:8]} disagree")
        if [i for batch in self.batches for i in batch] != ids:
            raise ValueError("batches do not list the nodes in order")
        for n in self.nodes:
            if n.status not in ("completed", "failed"):
                raise ValueError(f"node {n.id}: status {n.status!r}; allowed: completed, failed")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in n.metrics.values()):
                raise ValueError(f"node {n.id}: a metric that is not a number")
            if n.job_num >= self.next_job_idx:
                raise ValueError(
                    f"node {n.id}: job {n.job_num} is not below next_job_idx {self.next_job_idx}"
                )

    def move_folder(self, sweep_dir: Path) -> list[int]:
        """Point the nodes' job folders and plots that lay inside the recorded ``self.sweep_dir`` at
        the same places inside ``sweep_dir`` (where this state now is); returns the ids of the nodes
        moved. Paths outside the old folder are kept; a state that recorded no folder moves nothing."""
        new = Path(os.path.abspath(sweep_dir))  # as Hydra makes the job folders absolute
        old, self.sweep_dir = self.sweep_dir, str(new)
        if not old or Path(old) == new:
            return []

        def moved(path: str) -> str:
            if not path or not Path(path).is_absolute() or not Path(path).is_relative_to(old):
                return path
            return str(new / Path(path).relative_to(old))

        ids = []
        for node in self.nodes:
            folder, plots = moved(node.output_dir), [moved(p) for p in node.plots]
            if (folder, plots) != (node.output_dir, node.plots):
                node.output_dir, node.plots = folder, plots
                ids.append(node.id)
        return ids

    def node(self, node_id: int) -> Node | None:
        for node in self.nodes:
            if node.id == node_id:
                return node
        return None


# A field's annotation (its text, under ``from __future__ import annotations``) -> the JSON types it takes
_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "Literal": (str,),
    "list": (list,),
    "dict": (dict,),
}


def _check_fields(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise ``ValueError`` for a key of ``data`` that is not a field of the dataclass ``cls``, or
    whose value is not of the field's JSON type (``None`` only where the field allows it)."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for name, value in data.items():
        if name not in fields:
            raise ValueError(f"{what}: unknown key {name!r}")
        annotation = fields[name]
        if value is None and "None" in annotation:
            continue
        kinds = _KINDS.get(re.split(r"[\[ |]", annotation, maxsplit=1)[0])
        if kinds and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise ValueError(f"{what}.{name}: {type(value).__name__} {str(value)[:40]!r}, not {annotation}")


def state_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "exploration" / "state.json"


def dump_state(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True, default=str, allow_nan=True)


def save_state(sweep_dir: Path, state: SweepState | dict[str, Any]) -> None:
    data = state.to_dict() if isinstance(state, SweepState) else state
    atomic_write_text(state_path(sweep_dir), dump_state(data))


def load_state(sweep_dir: Path) -> SweepState:
    path = state_path(sweep_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no sweep state to resume at {path}") from err
    return SweepState.from_dict(data)
