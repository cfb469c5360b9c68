"""Search space and proposal validation.

The space is declared in Hydra's own override grammar (``interval``, ``tag(log, interval(...))``,
``choice``, ``range``) and parsed with Hydra's :class:`OverridesParser` into :class:`ParamSpec`.
Every proposed value is checked here before anything is launched: the key is explorable, allowed at
this point of the sweep (block-level keys only at block boundaries), never a seed or a path, never
sweep syntax, of the declared type and inside the declared range. Messages name the key and what is
allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra_llm.explore.proposers.base import ParamSpec

# Keys whose last segment matches are set by the sweeper or point at files: never proposable.
_SEED_RE = re.compile(r"(^|_)seeds?($|_)")
_PATH_RE = re.compile(r"(^|_)(path|paths|dir|dirs|file|folder|dataset|cache)($|_)")
_RESERVED_PREFIXES = ("hydra.", "paths.", "sweep_node.")
_PLAIN_STRING = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-./]*$")
_GRAMMAR_WORDS = {"true", "false", "null", "nan", "inf", "none"}


class SearchSpaceError(ValueError):
    """A malformed declaration in ``hydra.sweeper.params`` / ``block_params``."""


def forbidden_reason(key: str) -> str | None:
    """Why ``key`` may never be proposed (seeds, paths, Hydra/sweeper metadata), or None."""
    if key.startswith(_RESERVED_PREFIXES) or key in {"hydra", "paths", "sweep_node"}:
        return "hydra.*, paths.* and sweep_node.* are managed by the sweeper"
    last = key.rsplit(".", 1)[-1].lower()
    if _SEED_RE.search(last):
        return "seeds are set by the sweeper per slot and may never be proposed"
    if _PATH_RE.search(last):
        return "paths, folders and dataset names may never be proposed"
    return None


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _spec_from_override(key: str, override: Any, block_level: bool, default: Any) -> ParamSpec:
    """Turn one parsed sweep override into a ParamSpec."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    value = override.value()
    log = "log" in getattr(value, "tags", set())
    if isinstance(value, IntervalSweep):
        low, high = float(value.start), float(value.end)
        is_int = "int" in value.tags  # Hydra parses interval bounds as floats; tag(int, ...) asks for ints
        if low >= high or (log and low <= 0):
            raise SearchSpaceError(
                f"{key}: interval({value.start}, {value.end}) needs low < high (and low > 0 for log)"
            )
        return ParamSpec(key, "int" if is_int else "float", low, high, log, (), block_level, default)
    if isinstance(value, RangeSweep):
        values = list(value.range())
        if not values:
            raise SearchSpaceError(f"{key}: range({value.start}, {value.stop}, {value.step}) is empty")
        if all(isinstance(v, int) for v in values) and (value.step in (1, None)):
            return ParamSpec(key, "int", float(values[0]), float(values[-1]), log, (), block_level, default)
        return ParamSpec(
            key, "choice", choices=tuple(values), log=log, block_level=block_level, default=default
        )
    if isinstance(value, ChoiceSweep):
        return ParamSpec(
            key, "choice", choices=tuple(value.list), log=log, block_level=block_level, default=default
        )
    raise SearchSpaceError(
        f"{key}: unsupported sweep {override.input_line!r}; use interval, choice, range or tag(log, ...)"
    )


@dataclass(frozen=True)
class SearchSpace:
    """Explorable keys (within a block), block-level keys, and fixed overrides applied to every child."""

    params: tuple[ParamSpec, ...]
    block_params: tuple[ParamSpec, ...]
    fixed: tuple[str, ...] = ()

    def spec(self, key: str) -> ParamSpec | None:
        for spec in (*self.params, *self.block_params):
            if spec.key == key:
                return spec
        return None

    def validate(self, overrides: Mapping[str, Any], allow_block: bool) -> list[str]:
        """Errors for a proposed ``{key: value}`` mutation (empty list when valid)."""
        errors: list[str] = []
        for key, value in overrides.items():
            errors.extend(self._validate_one(str(key), value, allow_block))
        return errors

    def _allowed_keys(self, allow_block: bool) -> str:
        keys = [s.key for s in self.params] + ([s.key for s in self.block_params] if allow_block else [])
        return ", ".join(keys) if keys else "(none)"

    def _validate_one(self, key: str, value: Any, allow_block: bool) -> list[str]:
        reason = forbidden_reason(key)
        if reason:
            return [f"{key}: {reason}"]
        spec = self.spec(key)
        if spec is None:
            return [f"{key}: not an explorable key; allowed keys now: {self._allowed_keys(allow_block)}"]
        if spec.block_level and not allow_block:
            return [
                f"{key}: block-level (simulation) keys may change only at a block boundary, as one "
                "decision for the whole block (block_end.next_simulation), never in a slot's overrides; "
                f"allowed keys in a proposal: {self._allowed_keys(False)}"
            ]
        try:
            parsed = parse_value(key, value)
        except ValueError as err:
            return [str(err)]
        error = check_value(spec, parsed)
        return [error] if error else []


def parse_value(key: str, value: Any) -> Any:
    """A proposed value as a Python value; strings go through Hydra's grammar and may not be sweeps."""
    if not isinstance(value, str):
        return value
    try:
        override = _parser().parse_override(f"{key}={value}")
    except Exception as err:  # Hydra raises OverrideParseException with a long message
        raise ValueError(
            f"{key}: {value!r} is not a valid Hydra override value ({str(err).splitlines()[0]})"
        ) from err
    if override.is_sweep_override():
        raise ValueError(f"{key}: {value!r} is sweep syntax; propose one plain value")
    return override.value()


def describe(spec: ParamSpec) -> str:
    """Human-readable allowed values of ``spec``."""
    if spec.kind == "choice":
        return "one of " + ", ".join(format_value(c) for c in spec.choices)
    scale = " (log scale)" if spec.log else ""
    return f"{spec.kind} in [{_num(spec.low)}, {_num(spec.high)}]{scale}"


def _num(x: float | None) -> str:
    return "None" if x is None else f"{x:g}"


def edge_values(spec: ParamSpec) -> tuple[Any, ...]:
    """The values of ``spec`` that stand for all it allows in a check: every choice, a range's two ends."""
    if spec.kind == "choice":
        return spec.choices
    assert spec.low is not None and spec.high is not None
    cast = int if spec.kind == "int" else float
    return (cast(spec.low), cast(spec.high))


def edge_rounds(specs: Sequence[ParamSpec]) -> list[dict[str, Any]]:
    """The edge values of ``specs`` in as few configs as possible: round ``i`` sets each key that has
    an ``i``-th edge value to it (five choices and two ends: five rounds, not seven configs)."""
    values = {spec.key: edge_values(spec) for spec in specs}
    n_rounds = max((len(v) for v in values.values()), default=0)
    return [{key: v[i] for key, v in values.items() if i < len(v)} for i in range(n_rounds)]


def check_value(spec: ParamSpec, value: Any) -> str | None:
    """Why ``value`` is not allowed for ``spec`` (type or range), or None."""
    allowed = describe(spec)
    if spec.kind == "choice":
        if any(_same(value, choice) for choice in spec.choices):
            return None
        return f"{spec.key}: {_short(value)} is not allowed; allowed: {allowed}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{spec.key}: {_short(value)} has type {type(value).__name__}; allowed: {allowed}"
    number = _finite(value)
    if number is None:
        return f"{spec.key}: {_short(value)} is not finite or too large; allowed: {allowed}"
    if spec.kind == "int" and number != int(number):
        return f"{spec.key}: {value!r} is not an integer; allowed: {allowed}"
    assert spec.low is not None and spec.high is not None
    tolerance = 1e-9 * max(1.0, abs(spec.high))
    if not spec.low - tolerance <= number <= spec.high + tolerance:
        return f"{spec.key}: {_short(value)} is out of range; allowed: {allowed}"
    return None


def _finite(value: int | float) -> float | None:
    """``value`` as a finite float, or None (NaN, inf, or an integer beyond float range)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for a message, cut when long (a 400-digit integer, a megabyte string)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > 200:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 12]}... ({len(text)} chars)"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        x, y = _finite(a), _finite(b)
        if x is None or y is None:
            return a == b
        return math.isclose(x, y, rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return str(a) == str(b)


def coerce(spec: ParamSpec, value: Any) -> Any:
    """Normalise a valid value to its declared type (ints stay ints, choices take the declared object)."""
    if spec.kind == "int":
        return int(value)
    if spec.kind == "float":
        return float(value)
    for choice in spec.choices:
        if _same(value, choice):
            return choice
    return value


def format_value(value: Any) -> str:
    """A Python value as a Hydra override value string (a list as Hydra's ``[a,b]``)."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if _PLAIN_STRING.match(text) and text.lower() not in _GRAMMAR_WORDS:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_override_strings(values: Mapping[str, Any]) -> list[str]:
    """``{key: value}`` as ``key=value`` strings, in key order."""
    return [f"{key}={format_value(value)}" for key, value in values.items()]


def parse_space(
    params: Mapping[str, Any],
    block_params: Mapping[str, Any],
    arguments: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """Parse the declared search space. CLI ``arguments`` that are sweeps join ``params``; the rest are fixed.

    ``defaults`` maps keys to their value in the composed root config (ParamSpec.default).
    Raises :class:`SearchSpaceError` naming the key for anything malformed or forbidden.
    """
    defaults = dict(defaults or {})
    parser = _parser()
    fixed: list[str] = []
    specs: dict[str, ParamSpec] = {}
    block_specs: dict[str, ParamSpec] = {}

    def parse_entries(entries: Iterable[str], block_level: bool, from_cli: bool) -> None:
        for line in entries:
            try:
                override = parser.parse_override(line)
            except Exception as err:
                raise SearchSpaceError(
                    f"cannot parse search-space entry {line!r}: {str(err).splitlines()[0]}"
                ) from err
            key = override.get_key_element()
            if not override.is_sweep_override():
                if not from_cli:
                    raise SearchSpaceError(
                        f"{key}: {line!r} is a fixed value; params/block_params take interval, choice, range "
                        "or tag(log, interval(...)) (put fixed values on the command line or in the config)"
                    )
                fixed.append(line)
                continue
            reason = forbidden_reason(key.lstrip("+"))
            if reason:
                raise SearchSpaceError(f"{key}: cannot be explored: {reason}")
            target = block_specs if block_level else specs
            target[key] = _spec_from_override(key, override, block_level, defaults.get(key))

    parse_entries((f"{k}={v}" for k, v in params.items()), block_level=False, from_cli=False)
    parse_entries(arguments, block_level=False, from_cli=True)
    parse_entries((f"{k}={v}" for k, v in block_params.items()), block_level=True, from_cli=False)
    both = set(specs) & set(block_specs)
    if both:
        raise SearchSpaceError(f"{sorted(both)}: declared in both params and block_params; choose one")
    return SearchSpace(tuple(specs.values()), tuple(block_specs.values()), tuple(fixed))
