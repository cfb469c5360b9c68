"""Editable regions of a Python module: ``# region: <name>`` ... ``# endregion`` at the start of lines.

A region's body is the text between its two marker lines. An edit replaces whole bodies and nothing
else: :func:`splice` refuses bodies that carry markers of their own, and the text outside every region
stays byte-identical (checked after splicing).
"""

from __future__ import annotations

import importlib.util
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

START = re.compile(r"^(?P<indent>[ \t]*)# region: (?P<name>[A-Za-z_][A-Za-z0-9_]*)[ \t]*$")
END = re.compile(r"^[ \t]*# endregion[ \t]*$")
ANY_MARKER = re.compile(r"^[ \t]*#\s*(end)?region\b", re.MULTILINE)


class RegionError(ValueError):
    """A module's markers are malformed, or an edit would change text outside its region."""


@dataclass(frozen=True)
class Region:
    """One editable region. ``body`` is dedented; lines are 1-based, markers excluded."""

    name: str
    module: str
    indent: str
    body: str
    first_line: int
    last_line: int


def module_source(module: str) -> tuple[Path, str]:
    """The installed source file of ``module`` (dotted name) and its text, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as err:
        raise RegionError(f"{module}: not an importable module ({err})") from None
    if spec is None:
        raise RegionError(f"{module}: not an importable module (no such module)")
    if not spec.origin or not spec.origin.endswith(".py"):
        raise RegionError(f"{module}: not a Python source file ({spec.origin})")
    path = Path(spec.origin)
    return path, path.read_text(encoding="utf-8")


def find_regions(source: str, module: str) -> dict[str, Region]:
    """Every region of ``source`` by name; raises on nested, unclosed or duplicate markers."""
    regions: dict[str, Region] = {}
    lines = source.splitlines(keepends=True)
    open_at: tuple[int, str, str] | None = None
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        start, end = START.match(text), END.match(text)
        if start:
            if open_at is not None:
                raise RegionError(f"{module}:{number}: region {start['name']!r} opens inside {open_at[1]!r}")
            open_at = (number, start["name"], start["indent"])
        elif end:
            if open_at is None:
                raise RegionError(f"{module}:{number}: '# endregion' without a region")
            first, name, indent = open_at
            if name in regions:
                raise RegionError(f"{module}: region {name!r} appears twice")
            body = "".join(lines[first : number - 1])
            regions[name] = Region(name, module, indent, textwrap.dedent(body), first + 1, number - 1)
            open_at = None
        elif ANY_MARKER.match(text):
            raise RegionError(f"{module}:{number}: malformed region marker {text.strip()!r}")
    if open_at is not None:
        raise RegionError(f"{module}:{open_at[0]}: region {open_at[1]!r} is never closed")
    return regions


def outside(source: str, module: str) -> str:
    """``source`` with every region body removed (what an edit must leave untouched)."""
    lines = source.splitlines(keepends=True)
    inside = set()
    for region in find_regions(source, module).values():
        inside.update(range(region.first_line, region.last_line + 1))
    return "".join(line for i, line in enumerate(lines, start=1) if i not in inside)


def splice(source: str, module: str, bodies: Mapping[str, str]) -> str:
    """``source`` with the named regions' bodies replaced (re-indented to their markers)."""
    regions = find_regions(source, module)
    lines = source.splitlines(keepends=True)
    for name, body in bodies.items():
        if name not in regions:
            raise RegionError(f"{module}: no region {name!r}; regions: {', '.join(sorted(regions))}")
        if ANY_MARKER.search(body):
            raise RegionError(
                f"region {name}: the new code contains a region marker; send only the code between the "
                "markers (an edit may not reach outside its region)"
            )
    for region in sorted((regions[n] for n in bodies), key=lambda r: r.first_line, reverse=True):
        # The blank lines around the old body stay (a round trip of an unchanged body is the identity).
        old = region.body
        before = len(old) - len(old.lstrip("\n"))
        after = len(old) - len(old.rstrip("\n")) - 1 if old.strip() else 0
        body = "\n" * before + textwrap.dedent(bodies[region.name]).strip("\n") + "\n" + "\n" * max(0, after)
        indented = textwrap.indent(body, region.indent) if region.indent else body
        lines[region.first_line - 1 : region.last_line] = [indented]
    edited = "".join(lines)
    if outside(edited, module) != outside(source, module):
        raise RegionError(f"{module}: the edit changes text outside its regions")
    return edited
