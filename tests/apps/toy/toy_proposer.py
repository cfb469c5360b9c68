"""A rules proposer that can stop in its proposer step, for the SIGKILL-between-batches test.

When the batch starting at ``pause_at_iteration`` is being proposed (the previous batch's state is
persisted, nothing of the new batch is launched yet) and ``marker`` does not exist, it writes
``marker`` (its process id) and sleeps, so a test can deliver a real SIGKILL at that exact point.
Otherwise it proposes exactly what :class:`RulesProposer` proposes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hydra_llm.explore.proposers.base import ExplorationView, ProposerReply
from hydra_llm.explore.proposers.rules import RulesProposer
from hydra_llm.files import atomic_write_text


class PausingProposer(RulesProposer):
    """:class:`RulesProposer` plus a pause point (see module docstring); ``sleep_s`` in seconds."""

    def __init__(
        self,
        pause_at_iteration: int | None = None,
        marker: str | None = None,
        sleep_s: float = 120.0,
        **rules_kwargs: float,
    ) -> None:
        super().__init__(**rules_kwargs)
        self.pause_at_iteration = pause_at_iteration
        self.marker = Path(marker) if marker else None
        self.sleep_s = float(sleep_s)

    def propose(self, view: ExplorationView, feedback: list[str] | None = None) -> ProposerReply:
        if (
            self.marker is not None
            and view.first_iteration == self.pause_at_iteration
            and not self.marker.exists()
        ):
            atomic_write_text(self.marker, str(os.getpid()))  # never read half written
            time.sleep(self.sleep_s)
        return super().propose(view, feedback)
