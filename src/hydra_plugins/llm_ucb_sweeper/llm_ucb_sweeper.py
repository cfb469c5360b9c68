"""Registration of ``hydra/sweeper: llm_ucb`` and its proposers; a thin Sweeper.

Hydra imports this module on every app start, so it imports nothing heavy: the schema lives in
``hydra_llm.schemas.sweeper`` (no torch, no Hydra), the work in ``_impl.py`` (imported in ``setup``) and
in ``hydra_llm.explore``.
"""

from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper

from hydra_llm.schemas.sweeper import (
    AutoProposerConf,
    CodeEditsConf,
    LLMProposerConf,
    LLMUCBSweeperConf,
    ObjectiveConf,
    RulesProposerConf,
    UCBConf,
)

# The schema's names, importable from here as before.
__all__ = [
    "AutoProposerConf",
    "CodeEditsConf",
    "LLMProposerConf",
    "LLMUCBSweeper",
    "LLMUCBSweeperConf",
    "ObjectiveConf",
    "RulesProposerConf",
    "UCBConf",
]

_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="llm_ucb", node=LLMUCBSweeperConf, provider="llm_ucb")
_store.store(group="hydra/sweeper/proposer", name="rules", node=RulesProposerConf, provider="llm_ucb")
_store.store(group="hydra/sweeper/proposer", name="llm", node=LLMProposerConf, provider="llm_ucb")
_store.store(group="hydra/sweeper/proposer", name="auto", node=AutoProposerConf, provider="llm_ucb")


class LLMUCBSweeper(Sweeper):
    """Explores the config space as a UCB tree; each batch is proposed by ``proposer``."""

    def __init__(self, **settings: Any) -> None:
        """Hydra passes ``hydra.sweeper`` as keyword arguments; ``setup`` reads it, typed, from the config."""
        super().__init__()
        self._impl: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:  # noqa: D102
        from ._impl import LLMUCBSweeperImpl

        self._impl = LLMUCBSweeperImpl(self)
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self._impl.sweep(arguments)
