"""``auto``: the LLM proposer when an endpoint is configured, else the offline rules proposer."""

from __future__ import annotations

import os
from typing import Any

from hydra_llm.explore.proposers.base import Proposer
from hydra_llm.explore.proposers.rules import RulesProposer
from hydra_llm.schemas.sweeper import AutoProposerConf


def choose(
    api_key_env: str = AutoProposerConf.api_key_env, base_url: str | None = AutoProposerConf.base_url
) -> tuple[str, str]:
    """(``llm`` | ``rules``, why) from the environment and ``base_url`` only (the key is never read out)."""
    if os.environ.get(api_key_env):
        return "llm", f"auto: ${api_key_env} is set"
    if base_url:
        return "llm", f"auto: base_url={base_url}"
    return "rules", f"auto: no ${api_key_env} in the environment and no base_url"


def auto_proposer(
    api_key_env: str = AutoProposerConf.api_key_env,
    base_url: str | None = AutoProposerConf.base_url,
    **llm_kwargs: Any,
) -> Proposer:
    """Build the chosen proposer; its ``choice_note`` says which and why (logged first by the sweep)."""
    kind, why = choose(api_key_env, base_url)
    if kind == "llm":
        from hydra_llm.explore.proposers.llm import LLMProposer

        proposer: Proposer = LLMProposer(api_key_env=api_key_env, base_url=base_url, **llm_kwargs)
    else:  # the LLM's settings are still checked: they take effect once a key or base_url is set
        from hydra_llm.explore.proposers.llm import checked_options

        options = {key: value for key, value in llm_kwargs.items() if key not in ("vision", "record_dir")}
        checked_options(api_key_env=api_key_env, base_url=base_url, **options)
        proposer = RulesProposer()
    proposer.choice_note = f"{kind} ({why})"  # type: ignore[attr-defined]
    return proposer
