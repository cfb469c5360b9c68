"""OpenAI-compatible LLM access: structured output ladder, retries, re-asks, redaction, call records."""

from hydra_llm.llm.client import (
    Completion,
    LLMClient,
    LLMError,
    LLMKeyRefused,
    LLMReplyInvalid,
    LLMSettings,
    LLMUnavailable,
)
from hydra_llm.llm.redact import Redactor
from hydra_llm.llm.structured import LADDER, Mode, ReplyFormatError

__all__ = [
    "LADDER",
    "Completion",
    "LLMClient",
    "LLMError",
    "LLMKeyRefused",
    "LLMReplyInvalid",
    "LLMSettings",
    "LLMUnavailable",
    "Mode",
    "Redactor",
    "ReplyFormatError",
]
