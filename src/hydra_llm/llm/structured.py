"""The structured-output ladder: how a pydantic model is requested from a server and read back.

Modes, best first:

- ``json_schema``: ``response_format={"type": "json_schema", ...}`` with the strict schema
  (OpenAI, vLLM, Ollama >= 0.5, llama.cpp ``llama-server``).
- ``json_object``: ``response_format={"type": "json_object", "schema": ...}`` plus the schema in the
  prompt (llama-cpp-python's server, servers without schema support).
- ``tool``: one forced function call whose parameters are the schema.
- ``text``: no constraint; the schema is in the prompt and the first JSON object is extracted.

Whatever the mode, the payload is validated locally with the pydantic model: servers differ in which
schema keywords they enforce, and some accept a schema without enforcing it.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Literal, TypeVar

import pydantic
from openai import pydantic_function_tool

Mode = Literal["json_schema", "json_object", "tool", "text"]
LADDER: tuple[Mode, ...] = ("json_schema", "json_object", "tool", "text")
TOOL_NAME = "submit_reply"

M = TypeVar("M", bound=pydantic.BaseModel)


class ReplyFormatError(ValueError):
    """The reply could not be read as the requested model; ``str()`` is what we tell the model."""


@lru_cache(maxsize=32)
def strict_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The strict JSON schema of ``model`` (every property required, no additional properties).

    Cached per model class; callers must not mutate the returned dict.
    """
    return pydantic_function_tool(model, name=TOOL_NAME)["function"]["parameters"]


@lru_cache(maxsize=32)
def schema_instructions(model: type[pydantic.BaseModel]) -> str:
    """Text that asks for a bare JSON object following the schema (used by json_object and text)."""
    schema = json.dumps(strict_schema(model), separators=(",", ":"))
    return (
        "Answer with ONE JSON object and nothing else (no prose, no code fence). "
        f"It must validate against this JSON schema:\n{schema}"
    )


def request_kwargs(mode: Mode, model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The extra ``chat.completions.create`` arguments that ask for ``model`` in ``mode``."""
    if mode == "json_schema":
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": model.__name__, "schema": strict_schema(model), "strict": True},
            }
        }
    if mode == "json_object":
        return {"response_format": {"type": "json_object", "schema": strict_schema(model)}}
    if mode == "tool":
        return {
            "tools": [_tool(model)],
            "tool_choice": {"type": "function", "function": {"name": TOOL_NAME}},
        }
    if mode == "text":
        return {}
    raise ValueError(f"unknown structured output mode {mode!r}; allowed: {', '.join(LADDER)}")


@lru_cache(maxsize=32)
def _tool(model: type[pydantic.BaseModel]) -> Any:
    return pydantic_function_tool(model, name=TOOL_NAME)


def payload_text(message: Any, mode: Mode) -> str:
    """The text that should hold the JSON object: the forced tool call's arguments, else the content.

    Raises :class:`ReplyFormatError` for a refusal or an empty reply.
    """
    refusal = getattr(message, "refusal", None)
    if refusal:
        raise ReplyFormatError(f"the reply was a refusal ({refusal[:200]!r}); a JSON object is required")
    tool_calls = getattr(message, "tool_calls", None) or []
    if mode == "tool":
        for call in tool_calls:
            function = getattr(call, "function", None)
            if function is not None and function.arguments:
                return function.arguments
    content = message.content or ""
    if not content.strip() and tool_calls:
        function = getattr(tool_calls[0], "function", None)
        content = getattr(function, "arguments", "") or ""
    if not content.strip():
        raise ReplyFormatError("the reply was empty; a JSON object is required")
    return content


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """Decode the JSON object in ``text``: the whole text, else a fenced block, else the first object.

    Raises :class:`ReplyFormatError` naming the decoder's complaint when nothing decodes.
    """
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        first_error = err
    for block in _FENCE.findall(text):
        try:
            return json.loads(block)
        except json.JSONDecodeError:
            continue
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
            return value
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    raise ReplyFormatError(f"the reply is not valid JSON ({first_error.msg} at char {first_error.pos})")


def validate(model: type[M], text: str) -> M:
    """Decode and validate ``text`` as ``model``; raise :class:`ReplyFormatError` with a short list."""
    data = extract_json(text)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as err:
        raise ReplyFormatError(format_validation_error(err)) from None


def format_validation_error(err: pydantic.ValidationError, limit: int = 12) -> str:
    """A compact, model-readable list of pydantic errors (location: message)."""
    lines = []
    for item in err.errors()[:limit]:
        loc = ".".join(str(p) for p in item["loc"]) or "(root)"
        lines.append(f"- {loc}: {item['msg']}")
    more = len(err.errors()) - limit
    if more > 0:
        lines.append(f"- ... and {more} more")
    return "the reply does not match the schema:\n" + "\n".join(lines)
