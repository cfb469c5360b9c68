"""The ``llm`` proposer: any OpenAI-compatible endpoint, structured and validated.

Per batch it builds the prompt from the exploration view (:mod:`.llm_prompt`), asks the endpoint for
an :class:`~.llm_schema.LLMReply` through :class:`hydra_llm.llm.LLMClient` (structured-output ladder,
retries, re-ask on invalid replies), and converts the reply into a :class:`ProposerReply`. When the
engine calls again with ``feedback`` (validation errors of some proposals), the same conversation
continues with the errors. When the endpoint gives no usable reply at all, the batch is proposed by
the fallback proposer (the rules proposer), and the reason is logged and stored in ``extra``; an
endpoint that refuses the key (HTTP 401 or 403) before it has answered once stops the sweep instead
(:class:`SweepConfigError`): a sweep that asked for the LLM does not run on the rules unawares.

Sweeper config::

    proposer:
      _target_: hydra_llm.explore.proposers.llm.LLMProposer
      model: gpt-4o-mini
      base_url: null            # or http://localhost:11434/v1 (Ollama), http://HOST:8000/v1 (vLLM) ...
      api_key_env: OPENAI_API_KEY
      vision: false
      record_dir: ${hydra:sweep.dir}/exploration/llm
      max_reasks: 1             # structured_output, max_tokens, memory_max_lines, min_rule_evidence,
      max_rules: 20             # max_rules_chars: every constructor argument is a field of
                                # LLMProposerConf (hydra/sweeper/proposer=llm), set without '+'
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra_llm.explore.engine_config import SweepConfigError
from hydra_llm.explore.proposers.base import ExplorationView, Proposer, ProposerReply
from hydra_llm.explore.proposers.llm_prompt import PromptBuilder, PromptLimits, cap_lines
from hydra_llm.explore.proposers.llm_schema import LLMReply, check_reply, reply_model, to_proposer_reply
from hydra_llm.explore.protocol import RulesPolicy
from hydra_llm.llm.client import (
    Completion,
    LLMClient,
    LLMError,
    LLMKeyRefused,
    LLMSettings,
    reask_messages,
)
from hydra_llm.printable import clip
from hydra_llm.schemas.sweeper import LLMProposerConf

log = logging.getLogger(__name__)


def checked_options(
    memory_max_lines: int = LLMProposerConf.memory_max_lines,
    min_rule_evidence: int = LLMProposerConf.min_rule_evidence,
    max_rules: int = LLMProposerConf.max_rules,
    max_rules_chars: int = LLMProposerConf.max_rules_chars,
    **llm: Any,
) -> tuple[LLMSettings, RulesPolicy, PromptLimits]:
    """The client's settings (``llm``: :class:`LLMSettings` fields, the model by default
    LLMProposerConf's) and the limits on the model's memory and learned rules, all checked: raises
    ``ValueError`` naming the first bad one. The ``auto`` proposer checks them too when it picks rules."""
    llm = {"model": LLMProposerConf.model, **llm}
    llm["base_url"] = llm.get("base_url") or None
    llm["structured_output"] = str(llm.get("structured_output", LLMProposerConf.structured_output))
    settings = LLMSettings(**llm)
    settings.check()
    for key, value, low in (
        ("memory_max_lines", memory_max_lines, 20),
        ("min_rule_evidence", min_rule_evidence, 1),  # a learned rule cites the nodes that support it
        ("max_rules", max_rules, 0),
        ("max_rules_chars", max_rules_chars, 0),
    ):
        if int(value) < low:
            raise ValueError(f"llm proposer: {key}={value} must be >= {low}")
    policy = RulesPolicy(int(min_rule_evidence), int(max_rules), int(max_rules_chars))
    return settings, policy, PromptLimits(memory_lines=int(memory_max_lines))


def endpoint_configured(api_key_env: str = LLMProposerConf.api_key_env, base_url: str | None = None) -> bool:
    """True when an LLM endpoint is usable: a ``base_url`` is set or the key variable is set."""
    return bool(base_url) or bool(os.environ.get(api_key_env))


class LLMProposer(Proposer):
    """Proposes each batch with an LLM; falls back to ``fallback`` (rules) when the endpoint fails.

    ``deadline`` is the wall-clock budget in seconds of one proposal call (retries, re-asks and slow
    bodies included), ``timeout`` caps each HTTP request within it, ``max_retries`` transport retries
    (429/5xx/timeouts), ``max_reasks`` re-asks of an invalid reply within one call,
    ``memory_max_lines`` the cap on the working memory, ``min_rule_evidence``/``max_rules``/
    ``max_rules_chars`` the limits on learned rules (told to the model; the engine enforces them with
    :func:`hydra_llm.explore.protocol.edit_rules`).
    """

    name = "llm"

    def __init__(
        self,
        model: str,
        base_url: str | None = LLMProposerConf.base_url,
        api_key_env: str = LLMProposerConf.api_key_env,
        temperature: float = LLMProposerConf.temperature,
        timeout: float = LLMProposerConf.timeout,
        deadline: float = LLMProposerConf.deadline,
        max_retries: int = LLMProposerConf.max_retries,
        max_reasks: int = LLMProposerConf.max_reasks,
        structured_output: str = LLMProposerConf.structured_output,
        max_tokens: int | None = LLMProposerConf.max_tokens,
        vision: bool = LLMProposerConf.vision,
        record_dir: str | Path | None = None,
        memory_max_lines: int = LLMProposerConf.memory_max_lines,
        min_rule_evidence: int = LLMProposerConf.min_rule_evidence,
        max_rules: int = LLMProposerConf.max_rules,
        max_rules_chars: int = LLMProposerConf.max_rules_chars,
        fallback: Proposer | None = None,
    ) -> None:
        self.settings, self.rules_policy, limits = checked_options(
            model=model,
            base_url=base_url,
            api_key_env=api_key_env,
            temperature=temperature,
            timeout=timeout,
            deadline=deadline,
            max_retries=max_retries,
            structured_output=structured_output,
            max_reasks=max_reasks,
            max_tokens=max_tokens,
            memory_max_lines=memory_max_lines,
            min_rule_evidence=min_rule_evidence,
            max_rules=max_rules,
            max_rules_chars=max_rules_chars,
        )
        if self.settings.base_url is None and not os.environ.get(api_key_env):
            raise ValueError(
                f"llm proposer: environment variable {api_key_env} is unset and no base_url is configured; "
                "set the variable, point base_url at a local server, or use proposer=rules"
            )
        self.vision = bool(vision)
        self.builder = PromptBuilder(limits, self.rules_policy)
        self._record_dir = Path(record_dir) if record_dir else None
        self._client: LLMClient | None = None
        self._fallback = fallback
        self._last: tuple[int, Completion[LLMReply], ProposerReply] | None = None

    # ------------------------------------------------------------------ wiring
    @property
    def record_dir(self) -> Path | None:
        return self._record_dir

    @record_dir.setter
    def record_dir(self, path: str | Path | None) -> None:
        """Where prompts and replies are saved (the engine may set it to ``exploration/llm``)."""
        self._record_dir = Path(path) if path else None
        self._client = None

    @property
    def client(self) -> LLMClient:
        if self._client is None:
            self._client = LLMClient(self.settings, self._record_dir)
        return self._client

    @property
    def fallback(self) -> Proposer:
        if self._fallback is None:
            from hydra_llm.explore.proposers.rules import RulesProposer

            self._fallback = RulesProposer()
        return self._fallback

    # ------------------------------------------------------------------ proposing
    def propose(self, view: ExplorationView, feedback: list[str] | None = None) -> ProposerReply:
        previous = self._last if self._last and self._last[0] == view.first_iteration else None
        if feedback and previous is not None:
            _, completion, reply = previous
            messages = reask_messages(completion.messages, completion.raw_text, _feedback_text(feedback))
            tag = f"iter{view.first_iteration:04d}_feedback"
        else:
            messages = self.builder.messages(view, vision=self.vision)
            tag = f"iter{view.first_iteration:04d}"
        try:
            completion = self.client.complete(
                messages,
                reply_model(view),
                check=lambda r: check_reply(r, view),
                tag=tag,
                max_tokens=reply_token_budget(
                    view.n_parallel,
                    len(view.last_batch),
                    min(
                        self.builder.limits.memory_lines, len(view.memory.splitlines()) + MEMORY_GROWTH_LINES
                    ),
                    view.is_block_end,
                ),
            )
        except LLMError as err:
            if isinstance(err, LLMKeyRefused) and self._last is None:
                raise SweepConfigError(self._key_refused(err)) from None
            if feedback and previous is not None:
                # Keep the first reply's readings and memory; the engine replaces the invalid slots.
                log.warning("LLM re-ask with validation feedback failed (%s); keeping the first reply", err)
                kept = previous[2]
                kept.extra = {**kept.extra, "feedback_failed": str(err)[:500], "feedback_calls": err.calls}
                return kept
            return self._fall_back(view, err)
        reply = self._convert(completion, view)
        self._last = (view.first_iteration, completion, reply)
        return reply

    def _convert(self, completion: Completion[LLMReply], view: ExplorationView) -> ProposerReply:
        redact = self.client.redactor
        value = type(completion.value).model_validate(redact.obj(completion.value.model_dump()))
        memory = cap_lines(value.memory, self.builder.limits.memory_lines)
        reply = to_proposer_reply(value, view, memory)
        extra: dict[str, Any] = {"proposer": "llm", "mode": completion.mode, **_usage(completion.calls)}
        if memory != value.memory:
            extra["memory_capped"] = True
        if value.block_end is not None and not view.is_block_end:
            extra["ignored_block_end"] = "block_end given outside a block end; ignored"
        reply.extra = extra
        return reply

    def _key_refused(self, err: LLMKeyRefused) -> str:
        """The one line that stops a sweep whose endpoint refused its credentials (a wrong key, or one
        without access to the model) before any reply."""
        env, server = self.settings.api_key_env, self.settings.base_url or "the OpenAI API"
        key = (
            f"the call with the key in ${env}"
            if os.environ.get(env)
            else f"the call without a key (${env} is unset)"
        )
        said = err.calls[-1]["error"] if err.calls else str(err)  # the server's words, redacted
        return (
            f"hydra.sweeper.proposer: {server} refused {key} ({clip(said, 300)}); set a valid key in ${env} "
            "(hydra.sweeper.proposer.api_key_env names the variable) or run with "
            "hydra/sweeper/proposer=rules, then continue with hydra.sweeper.resume=true"
        )

    def _fall_back(self, view: ExplorationView, err: LLMError) -> ProposerReply:
        reason = self.client.redactor.text(str(err))[:500]
        log.warning(
            "LLM proposer gave no usable reply (%s); the %s proposer proposes this batch", reason, "rules"
        )
        reply = self.fallback.propose(view, feedback=None)
        reply.extra = {
            **reply.extra,
            "proposer": "llm",
            "fallback": getattr(self.fallback, "name", "rules"),
            "fallback_reason": reason,
            **_usage(err.calls),
        }
        return reply


# Lines the working memory may grow by in one reply (its budget is the current memory plus these, up to
# the cap: a budget for the full cap would let a small model ramble for thousands of tokens).
MEMORY_GROWTH_LINES = 40


def reply_token_budget(n_parallel: int, n_observed: int, memory_lines: int, block_end: bool) -> int:
    """A default ``max_tokens`` sized from the reply schema: a fixed part, ~450 tokens per proposal,
    ~200 per observation, ~20 per memory line, and the block-end fields when due (summary and rules;
    the final call, with no slots, gives the summary only). Bounds every call against a model that
    never stops; ``max_tokens`` in the settings wins."""
    end = (2500 if n_parallel else 800) if block_end else 0
    return 600 + 450 * n_parallel + 200 * n_observed + 20 * memory_lines + end


def _feedback_text(feedback: list[str]) -> str:
    return "Some proposals were rejected by the validator:\n" + "\n".join(f"- {line}" for line in feedback)


def _usage(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-call records plus totals of tokens and latency."""

    def total(key: str) -> float | int:
        return sum(c.get(key) or 0 for c in calls)

    return {
        "calls": calls,
        "n_calls": len(calls),
        "prompt_tokens": total("prompt_tokens"),
        "completion_tokens": total("completion_tokens"),
        "latency_s": round(float(total("latency_s")), 4),
    }
