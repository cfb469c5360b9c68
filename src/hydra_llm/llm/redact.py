"""Redaction of secrets from anything we save or log: prompts, replies, errors, state.

The API key itself is known (read from the environment by the client) and is replaced wherever it
appears. Independently of the key, any ``Authorization:`` header value, ``Bearer <token>`` and
``api_key=...``-style assignment is masked, so a key we were never told about (a proxy's, a key echoed
back by a server) is masked too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

MASK = "[REDACTED]"
# Environment variables whose name says they hold a secret (API keys, tokens, passwords).
SECRET_NAME = re.compile(r"(?i)(key|token|secret|password|passwd|credential)")


def environment_secrets() -> list[str]:
    """Values of the environment's secret variables (at least 8 characters), to mask."""
    import os

    return [v for k, v in os.environ.items() if SECRET_NAME.search(k) and v and len(v) >= 8]


def environment_without_secrets() -> dict[str, str]:
    """The environment minus every secret variable (for processes that run model-written code)."""
    import os

    return {k: v for k, v in os.environ.items() if not SECRET_NAME.search(k)}


_PATTERNS: tuple[re.Pattern[str], ...] = (
    # "Authorization: Bearer abc", "authorization": "Bearer abc", authorization=abc
    re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?)(?:bearer\s+)?[^\s\"',}]+"),
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{4,}"),
    # api_key=..., "api-key": "...", x-api-key: ...
    re.compile(r"(?i)(\b(?:x-)?api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
    # OpenAI-style secret keys even without a label
    re.compile(r"()\bsk-[A-Za-z0-9_-]{8,}"),
)


class Redactor:
    """Masks known secrets and any credential-looking value in text and nested data.

    ``secrets`` are exact strings (e.g. the API key read from the environment); strings shorter than
    4 characters are ignored so that a trivial key cannot blank out ordinary text.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Register one more exact secret string (and its JSON-escaped form, for serialised text)."""
        if not secret or len(secret) < 4:
            return
        forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
        self._secrets = sorted(set(self._secrets) | forms, key=len, reverse=True)

    def text(self, value: str) -> str:
        """The string with every known secret and credential-looking value masked."""
        for secret in self._secrets:
            value = value.replace(secret, MASK)
        for pattern in _PATTERNS:
            value = pattern.sub(lambda m: m.group(1) + MASK, value)
        return value

    def obj(self, value: Any) -> Any:
        """A deep copy of JSON-like data (dict/list/tuple/str) with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)) if isinstance(k, str) else k: self.obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.obj(v) for v in value)
        return value
