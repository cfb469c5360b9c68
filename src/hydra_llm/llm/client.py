"""An OpenAI-compatible chat client that returns validated pydantic objects.

One :class:`LLMClient` lives for a whole sweep. It

- reads the API key from ``os.environ[api_key_env]`` only, and never stores or logs it;
- detects once which structured-output mode the endpoint accepts (the ladder in
  :mod:`hydra_llm.llm.structured`), steps down when the server rejects a mode, and caches the result
  (in memory, and in ``capabilities.json`` of the record folder so that a resumed sweep reuses it);
- lets the ``openai`` client retry 429 / 5xx / timeouts (``max_retries``, honouring ``Retry-After``);
- re-asks with the validation error when a reply does not validate (``max_reasks`` times);
- records every request and reply, redacted, and returns per-call token usage and latency.

Endpoints (``base_url``):

=================  =============================================  ===================================
server             base_url                                       structured output it accepts
=================  =============================================  ===================================
OpenAI             (unset) or ``https://api.openai.com/v1``       json_schema (strict)
vLLM               ``http://HOST:8000/v1``                        json_schema; tool needs a parser flag
Ollama             ``http://localhost:11434/v1``                  json_schema (>= 0.5)
llama.cpp server   ``http://localhost:8080/v1``                   json_schema
llama-cpp-python   ``http://localhost:8000/v1``                   json_object (+schema), forced tool
=================  =============================================  ===================================
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import openai
import pydantic

from hydra_llm.llm.record import CallRecorder
from hydra_llm.llm.redact import Redactor
from hydra_llm.llm.structured import (
    LADDER,
    Mode,
    ReplyFormatError,
    payload_text,
    request_kwargs,
    schema_instructions,
    validate,
)
from hydra_llm.schemas.sweeper import LLMProposerConf, StructuredOutput

log = logging.getLogger(__name__)

M = TypeVar("M", bound=pydantic.BaseModel)

STRUCTURED_OUTPUT_CHOICES = tuple(StructuredOutput)  # "auto", then the ladder's modes
# Words in a server's error body that say it rejected the *format* of the request, per mode.
_REJECTION_WORDS: dict[Mode, tuple[str, ...]] = {
    "json_schema": ("response_format", "json_schema", "schema"),
    "json_object": ("response_format", "json_object"),
    "tool": ("tool",),
    "text": (),
}
_REJECTION_STATUSES = {400, 404, 415, 422, 500, 501}
# A 500 may be an overloaded server whose message happens to mention a schema: a step-down it causes
# is kept only once the lower mode has produced a valid reply.
_PROVISIONAL_STATUSES = {500}
_KEY_REFUSED_STATUSES = {401, 403}
MAX_REPLY_CHARS = 200_000  # a longer reply is rejected unread (a sane reply is a few thousand)
# Key used when the endpoint needs none (a local server); the openai client insists on one.
_NO_KEY = "no-key-needed"


class LLMError(RuntimeError):
    """The endpoint gave no usable reply. ``calls`` holds the per-call records (redacted)."""

    def __init__(self, message: str, calls: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.calls = calls or []


class LLMUnavailable(LLMError):
    """Connection, timeout, authentication or server errors that survived the retries."""


class LLMKeyRefused(LLMUnavailable):
    """The endpoint refused the request's credentials (HTTP 401 or 403): retrying cannot help."""


class LLMReplyInvalid(LLMError):
    """Replies kept failing validation after the re-asks."""


class _DeadlineExceeded(Exception):
    """The call's wall-clock deadline passed (internal; surfaces as :class:`LLMUnavailable`)."""


@dataclass(frozen=True)
class LLMSettings:
    """Everything that selects and tunes an endpoint; contains no secret (only the key's env name).

    ``deadline`` is the wall-clock budget in seconds of one :meth:`LLMClient.complete` call, covering
    transport retries, re-asks and slowly sent bodies; ``timeout`` caps each HTTP request within it;
    ``max_retries`` the openai client's transport retries; ``max_reasks`` how often an invalid reply
    is sent back with its validation error.
    """

    # defaults: the llm proposer's (hydra_llm.schemas.sweeper.LLMProposerConf), declared once there
    model: str
    base_url: str | None = LLMProposerConf.base_url
    api_key_env: str = LLMProposerConf.api_key_env
    temperature: float = LLMProposerConf.temperature
    timeout: float = LLMProposerConf.timeout
    max_retries: int = LLMProposerConf.max_retries
    structured_output: str = LLMProposerConf.structured_output
    max_reasks: int = LLMProposerConf.max_reasks
    max_tokens: int | None = LLMProposerConf.max_tokens
    deadline: float = LLMProposerConf.deadline

    def check(self) -> None:
        """Raise ``ValueError`` naming the key and the allowed values for any bad setting."""
        if not self.model or not isinstance(self.model, str):
            raise ValueError("llm.model must be a non-empty model name (e.g. 'gpt-4o-mini', 'qwen2.5:7b')")
        if self.structured_output not in STRUCTURED_OUTPUT_CHOICES:
            raise ValueError(
                f"llm.structured_output={self.structured_output!r} is not allowed; "
                f"allowed: {', '.join(STRUCTURED_OUTPUT_CHOICES)}"
            )
        if not (0.0 <= float(self.temperature) <= 2.0):
            raise ValueError(f"llm.temperature={self.temperature} must be within [0, 2]")
        for key in ("timeout", "deadline"):
            value = float(getattr(self, key))
            if not (value > 0 and math.isfinite(value)):  # NaN fails both
                raise ValueError(f"llm.{key}={value} must be a finite number > 0 seconds")
        if int(self.max_retries) < 0 or int(self.max_reasks) < 0:
            raise ValueError("llm.max_retries and llm.max_reasks must be >= 0")
        if self.max_tokens is not None and int(self.max_tokens) < 1:
            raise ValueError(f"llm.max_tokens={self.max_tokens} must be >= 1, or null (sized from the reply)")
        if not self.api_key_env or not str(self.api_key_env).replace("_", "").isalnum():
            raise ValueError(
                f"llm.api_key_env={self.api_key_env!r} must be the NAME of an environment variable "
                "(e.g. OPENAI_API_KEY), never the key itself"
            )
        if self.base_url is not None and not str(self.base_url).startswith(("http://", "https://")):
            raise ValueError(f"llm.base_url={self.base_url!r} must start with http:// or https://")


@dataclass
class Completion(Generic[M]):
    """A validated reply: the object, the mode that produced it, the raw payload and the call records."""

    value: M
    mode: Mode
    raw_text: str
    messages: list[dict[str, Any]]  # the conversation that produced it (for a follow-up re-ask)
    calls: list[dict[str, Any]] = field(default_factory=list)


class LLMClient:
    """Structured chat completions against one OpenAI-compatible endpoint (see module docstring)."""

    def __init__(self, settings: LLMSettings, record_dir: str | Path | None = None) -> None:
        settings.check()
        self.settings = settings
        key = os.environ.get(settings.api_key_env)
        if not key and settings.base_url is None:
            raise ValueError(
                f"no API key: environment variable {settings.api_key_env} is unset and no base_url is "
                "configured; set the variable, or point llm.base_url at a local server"
            )
        self.redactor = Redactor([key])
        self.recorder = CallRecorder(record_dir, self.redactor) if record_dir is not None else None
        self._key = key or _NO_KEY
        self._client = self._new_client()
        self._rejected: dict[str, str] = {}
        self._mode: Mode = self._initial_mode()
        # (mode, rejections) before a step-down that a 500 caused, until a valid reply confirms it
        self._provisional: tuple[Mode, dict[str, str]] | None = None

    def _new_client(self) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=self._key,
            base_url=self.settings.base_url,
            timeout=float(self.settings.timeout),
            max_retries=int(self.settings.max_retries),
        )

    # ----------------------------------------------------------------- capability cache
    @property
    def mode(self) -> Mode:
        """The structured-output mode in use (after any step-down)."""
        return self._mode

    def _cache_path(self) -> Path | None:
        return self.recorder.directory / "capabilities.json" if self.recorder else None

    def _initial_mode(self) -> Mode:
        if self.settings.structured_output != "auto":
            return self.settings.structured_output  # type: ignore[return-value]
        path = self._cache_path()
        if path is not None and path.exists():
            try:
                cached = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                cached = {}
            same = (cached.get("base_url"), cached.get("model")) == (
                self.settings.base_url,
                self.settings.model,
            )
            if same and cached.get("mode") in LADDER:
                self._rejected = dict(cached.get("rejected", {}))
                return cached["mode"]
        return LADDER[0]

    def _save_capabilities(self) -> None:
        path = self._cache_path()
        if path is None:
            return
        data = {
            "base_url": self.settings.base_url,
            "model": self.settings.model,
            "mode": self._mode,
            "rejected": self._rejected,
        }
        path.write_text(json.dumps(self.redactor.obj(data), indent=2) + "\n")

    def _step_down(self, reason: str, provisional: bool) -> bool:
        """Move to the next ladder mode after a rejection; False when there is none (or it is pinned).

        A provisional step-down is confirmed (logged and cached) once the server answers a request in
        the lower mode (whether or not the model's reply then validates), and undone if the call ends
        without such an answer."""
        if self.settings.structured_output != "auto" or self._mode == LADDER[-1]:
            return False
        old = self._mode
        if provisional and self._provisional is None:
            self._provisional = (old, dict(self._rejected))
        self._rejected[old] = reason[:300]
        self._mode = LADDER[LADDER.index(old) + 1]
        if not provisional and self._provisional is None:
            self._confirm_mode(old)
        return True

    def _confirm_mode(self, old: Mode) -> None:
        log.warning("LLM endpoint rejected structured output mode %r; using %r from now on", old, self._mode)
        self._save_capabilities()

    @staticmethod
    def _is_rejection(err: openai.APIStatusError, mode: Mode) -> bool:
        if err.status_code not in _REJECTION_STATUSES:
            return False
        body = f"{err.message} {json.dumps(err.body, default=str) if err.body is not None else ''}".lower()
        return any(word in body for word in _REJECTION_WORDS[mode])

    # ----------------------------------------------------------------- calls
    def complete(
        self,
        messages: list[dict[str, Any]],
        model: type[M],
        *,
        check: Any = None,
        tag: str = "call",
        max_tokens: int | None = None,
    ) -> Completion[M]:
        """Ask for one ``model`` object; re-ask on invalid replies; raise :class:`LLMError` if none comes.

        ``messages`` are chat messages (content may be a list of parts with images). ``check`` is an
        optional ``callable(value) -> list[str]`` of further errors that also trigger a re-ask.
        ``max_tokens`` bounds each reply when the settings leave ``max_tokens`` unset.
        """
        self._provisional = None
        try:
            completion = self._complete(
                messages, model, check, tag, time.monotonic() + self.settings.deadline, max_tokens
            )
        except LLMError:
            if self._provisional is not None:  # an unconfirmed step-down is undone
                self._mode, self._rejected = self._provisional[0], self._provisional[1]
            raise
        return completion

    def _complete(
        self,
        messages: list[dict[str, Any]],
        model: type[M],
        check: Any,
        tag: str,
        deadline: float,
        max_tokens: int | None,
    ) -> Completion[M]:
        limit = self.settings.max_tokens or max_tokens
        conversation = [dict(m) for m in messages]
        calls: list[dict[str, Any]] = []
        reasks = 0
        while True:
            mode = self._mode
            sent = self._with_schema_prompt(conversation, model, mode)
            record: dict[str, Any] = {"tag": tag, "mode": mode, "reask": reasks, "max_tokens": limit}
            start = time.perf_counter()
            try:
                response = self._create_before(
                    deadline,
                    model=self.settings.model,
                    messages=sent,
                    temperature=float(self.settings.temperature),
                    **({"max_tokens": int(limit)} if limit else {}),
                    **request_kwargs(mode, model),
                )
            except openai.APIStatusError as err:
                record.update(self._error_record(err, start))
                self._record(record, sent, mode, model, error=err)
                calls.append(record)
                provisional = err.status_code in _PROVISIONAL_STATUSES
                if self._is_rejection(err, mode) and self._step_down(
                    self.redactor.text(str(err)), provisional
                ):
                    continue
                if err.status_code in _KEY_REFUSED_STATUSES:
                    raise LLMKeyRefused(f"endpoint refused the key: {record['error']}", calls) from None
                raise LLMUnavailable(f"endpoint error: {record['error']}", calls) from None
            except (openai.APIConnectionError, openai.APIResponseValidationError) as err:
                record.update(self._error_record(err, start))
                self._record(record, sent, mode, model, error=err)
                calls.append(record)
                raise LLMUnavailable(f"endpoint unreachable: {record['error']}", calls) from None
            except _DeadlineExceeded as err:
                record.update(self._error_record(err, start))
                self._record(record, sent, mode, model, error=err)
                calls.append(record)
                raise LLMUnavailable(f"endpoint too slow: {err}", calls) from None
            except Exception as err:  # a body the SDK cannot parse (empty, HTML, truncated JSON, ...)
                record.update(self._error_record(err, start))
                self._record(record, sent, mode, model, error=err)
                calls.append(record)
                raise LLMUnavailable(
                    f"endpoint sent an unusable response: {record['error']}", calls
                ) from None
            if not hasattr(response, "choices"):  # e.g. a 200 with a non-JSON body, returned as text
                err = ReplyFormatError(f"the endpoint sent no chat completion ({type(response).__name__})")
                record.update(self._error_record(err, start))
                self._record(record, sent, mode, model, error=err)
                calls.append(record)
                raise LLMUnavailable(f"endpoint sent an unusable response: {record['error']}", calls)
            record.update(self._usage_record(response, start))
            self._record(record, sent, mode, model, response=response)
            calls.append(record)
            if self._provisional is not None:  # the server answered in the lower mode: the step-down holds
                self._confirm_mode(self._provisional[0])
                self._provisional = None
            text = ""
            try:
                if not response.choices:
                    raise ReplyFormatError("the reply had no choices; a JSON object is required")
                message = response.choices[0].message
                text = payload_text(message, mode)
                if len(text) > MAX_REPLY_CHARS:
                    size = len(text)
                    text = text[:2000]
                    raise ReplyFormatError(
                        f"the reply is {size} characters long; the limit is {MAX_REPLY_CHARS}: "
                        "send one compact JSON object"
                    )
                value = validate(model, text)
                errors = list(check(value)) if check is not None else []
                if errors:
                    raise ReplyFormatError(
                        "the reply is inconsistent:\n" + "\n".join(f"- {e}" for e in errors)
                    )
            except ReplyFormatError as err:
                record["status"] = "invalid"
                record["error"] = self.redactor.text(str(err))[:2000]
                if reasks >= int(self.settings.max_reasks):
                    raise LLMReplyInvalid(
                        f"invalid reply after {reasks} re-ask(s): {record['error']}", calls
                    ) from None
                reasks += 1
                conversation = reask_messages(conversation, text, str(err))
                continue
            record["status"] = "ok"
            return Completion(value, mode, text, conversation, calls)

    def _create_before(self, deadline: float, **kwargs: Any) -> Any:
        """One ``chat.completions.create`` (with the SDK's retries) that returns or raises by
        ``deadline`` (a ``time.monotonic()`` value), however slowly the server sends its body."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlineExceeded(f"the call's deadline of {self.settings.deadline:g} s has passed")
        client, box = self._client, {}

        def work() -> None:
            try:
                box["response"] = client.chat.completions.create(
                    timeout=min(float(self.settings.timeout), remaining), **kwargs
                )
            except BaseException as err:  # handed to the waiting thread
                box["error"] = err

        thread = threading.Thread(target=work, name="hydra-llm-request", daemon=True)
        thread.start()
        thread.join(remaining)
        if thread.is_alive():
            client.close()  # aborts the transfer; the worker thread ends with a connection error
            self._client = self._new_client()
            raise _DeadlineExceeded(
                f"no complete reply within the call's deadline of {self.settings.deadline:g} s "
                "(llm deadline, covering retries and re-asks)"
            )
        if "error" in box:
            raise box["error"]
        return box["response"]

    def _with_schema_prompt(
        self, messages: list[dict[str, Any]], model: type[pydantic.BaseModel], mode: Mode
    ) -> list[dict[str, Any]]:
        """Modes without server-side schema get the schema as an extra system message, right after the
        leading system messages: the same for every call of a sweep, so it joins the prompt prefix that
        servers cache (llama.cpp, vLLM, OpenAI) instead of following the part that changes."""
        if mode not in ("json_object", "text"):
            return messages
        lead = next((i for i, m in enumerate(messages) if m.get("role") != "system"), len(messages))
        schema = {"role": "system", "content": schema_instructions(model)}
        return [*messages[:lead], schema, *messages[lead:]]

    def _error_record(self, err: Exception, start: float) -> dict[str, Any]:
        status = getattr(err, "status_code", None)
        return {
            "status": "error",
            "http_status": status,
            "error": self.redactor.text(f"{type(err).__name__}: {err}")[:1000],
            "latency_s": round(time.perf_counter() - start, 4),
        }

    @staticmethod
    def _usage_record(response: Any, start: float) -> dict[str, Any]:
        usage = getattr(response, "usage", None)
        return {
            "latency_s": round(time.perf_counter() - start, 4),
            "prompt_tokens": getattr(usage, "prompt_tokens", None),
            "completion_tokens": getattr(usage, "completion_tokens", None),
            "total_tokens": getattr(usage, "total_tokens", None),
        }

    def _record(
        self, record: dict[str, Any], sent: list[dict[str, Any]], mode: Mode, model: type, **kw: Any
    ) -> None:
        if self.recorder is None:
            return
        request = {
            "model": self.settings.model,
            "base_url": self.settings.base_url,
            "mode": mode,
            "max_tokens": record.get("max_tokens"),
            "messages": sent,
        }
        request["structured_output"] = request_kwargs(mode, model)
        record["file"] = self.recorder.save(record["tag"], request, **kw)


def reask_messages(conversation: list[dict[str, Any]], reply_text: str, error: str) -> list[dict[str, Any]]:
    """The conversation extended by the invalid reply and a request to fix it (reply capped at 20k chars)."""
    follow = (
        "Your previous reply was rejected:\n"
        f"{error}\n"
        "Send the complete reply again as ONE JSON object that fixes these problems."
    )
    extra: list[dict[str, Any]] = []
    if reply_text.strip():
        extra.append({"role": "assistant", "content": reply_text[:20000]})
    extra.append({"role": "user", "content": follow})
    return [*conversation, *extra]
