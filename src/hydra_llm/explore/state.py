"""The sweep's persistent state (``exploration/state.json``) and atomic file writes.

The state holds everything needed to resume: the nodes, the sweep position, the next job number,
the working memory and protocol, the block-level overrides in force, the proposer replies' ``extra``
and the batch in flight (its job numbers are consumed: a resumed sweep never reuses them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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
    version: int = STATE_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["nodes"] = [n.to_dict() for n in self.nodes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepState:
        data = dict(data)
        if data.get("version") != STATE_VERSION:
            raise ValueError(
                f"state.json version {data.get('version')!r} is not supported (expected {STATE_VERSION})"
            )
        data["nodes"] = [Node.from_dict(n) for n in data.get("nodes", [])]
        return cls(**data)

    def node(self, node_id: int) -> Node | None:
        for node in self.nodes:
            if node.id == node_id:
                return node
        return None


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
