"""Saving every request and reply of the LLM client, redacted, one JSON file per HTTP call.

Files are ``NNNN_<tag>.json`` in the record folder (``exploration/llm/`` of a sweep). Numbering
continues after the files already there, so a resumed sweep never overwrites a record. Images are
not stored again (they are in the children's folders): a data URL becomes ``<image: N bytes>``, and
any string longer than ``MAX_FIELD_CHARS`` (an oversized reply) is stored cut.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hydra_llm.llm.redact import Redactor

_NUMBERED = re.compile(r"^(\d{4,})_")
MAX_FIELD_CHARS = 50_000


def strip_images(value: Any) -> Any:
    """JSON-like data with every ``data:`` URL replaced by a short placeholder and every string cut
    to ``MAX_FIELD_CHARS``."""
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value:
        return f"<image: {len(value)} bytes of base64 omitted>"
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + f" [...{len(value) - MAX_FIELD_CHARS} chars not stored]"
    if isinstance(value, dict):
        return {k: strip_images(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strip_images(v) for v in value]
    return value


class CallRecorder:
    """Writes one redacted JSON record per call into ``directory``."""

    def __init__(self, directory: str | Path, redactor: Redactor) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.redactor = redactor
        numbers = [int(m.group(1)) for p in self.directory.iterdir() if (m := _NUMBERED.match(p.name))]
        self._next = max(numbers, default=0) + 1

    def save(
        self, tag: str, request: dict[str, Any], response: Any = None, error: Exception | None = None
    ) -> str:
        """Write request + reply (or error) and return the file name (relative to the folder)."""
        record: dict[str, Any] = {"request": strip_images(request)}
        if response is not None:
            record["response"] = strip_images(
                response.model_dump(mode="json") if hasattr(response, "model_dump") else response
            )
        if error is not None:
            record["error"] = {
                "type": type(error).__name__,
                "status": getattr(error, "status_code", None),
                "message": str(error),
                "body": getattr(error, "body", None),
            }
        safe_tag = re.sub(r"[^A-Za-z0-9_-]+", "_", tag)[:40] or "call"
        name = f"{self._next:04d}_{safe_tag}.json"
        self._next += 1
        # One pass over the serialised text: secrets are registered in raw and JSON-escaped form.
        text = json.dumps(record, indent=2, default=str, ensure_ascii=False)
        (self.directory / name).write_text(self.redactor.text(text) + "\n", encoding="utf-8")
        return name
