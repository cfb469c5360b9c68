"""Text for a terminal or a log line: control characters out, one line, a size cap.

Error messages, file names and model replies all pass through here before a person or a log reads
them (the exploration's text rules build on it: ``hydra_llm/explore/text.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# C0 and C1 controls, line and paragraph separators, zero-width and bidirectional marks
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marking the cut."""
    if len(text) <= limit:
        return text
    marker = f" [...{len(text) - limit} chars cut]"
    return text[: max(0, limit - len(marker))] + marker


def one_line(text: object, limit: int) -> str:
    """One printable line: control characters dropped, any run of whitespace a single space, capped."""
    cleaned = CONTROL.sub(" ", str(text if text is not None else ""))
    return clip(" ".join(cleaned.split()), limit)


def error_line(err: BaseException, limit: int) -> str:
    """``<type>: <message>`` of an exception as :func:`one_line`."""
    return one_line(f"{type(err).__name__}: {err}", limit)


def did_you_mean(close: Sequence[str], brackets: bool = False) -> str:
    """The hint that names ``close``, the names nearest a misspelt one: ``"; did you mean a or b?"`` to
    end a message, ``" (did you mean a?)"`` with ``brackets`` for one that goes on; ``""`` for none."""
    if not close:
        return ""
    hint = f"did you mean {' or '.join(close)}?"
    return f" ({hint})" if brackets else f"; {hint}"
