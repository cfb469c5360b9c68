"""Typed schemas of the settings objects, and the check that turns plain options into them.

The ``training``, ``model``, ``simulation`` and ``evaluation`` options are dataclasses in :mod:`.training`,
:mod:`.models`, :mod:`.simulation` and :mod:`.evaluation`, each with a ``GROUP`` (its config group, for
error messages); :mod:`.store` registers them in Hydra's ConfigStore on every Hydra start (through
``hydra_plugins.hydra_llm_schemas``). :mod:`.sweeper` declares ``hydra/sweeper=llm_ucb``'s settings,
registered by that plugin. Importing this package is cheap (no torch, no Hydra).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T")

_ONE_OF = re.compile(r"expected one of \[(.*?)\]")


def validate(schema: type[T], options: Mapping[str, Any] | None, group: str | None = None) -> T:
    """``options`` merged over the defaults of ``schema`` and checked (types, every float finite, then
    the schema's own ``__post_init__`` ranges). A bad key or value raises one ``ValueError`` line naming
    ``<group>.<key>`` and what is allowed; ``group`` defaults to ``schema.GROUP`` (an entry of a list
    passes its place in it, e.g. ``evaluation.callbacks.0``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    prefix = group or schema.GROUP  # type: ignore[attr-defined]
    data = OmegaConf.to_container(options) if OmegaConf.is_config(options) else dict(options or {})
    allowed = [f.name for f in fields(schema)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"{prefix}: unknown keys {unknown}; allowed keys: {allowed}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
        bad = non_finite(OmegaConf.to_container(merged))
        if bad is None:
            return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigKeyError as err:
        raise ValueError(f"{prefix}.{err.full_key}: unknown key") from None
    except ValidationError as err:
        first = str(err.msg).splitlines()[0]
        one_of = _ONE_OF.search(first)
        rule = f"allowed values: [{one_of.group(1)}]" if one_of else first
        raise ValueError(f"{prefix}.{err.full_key}={err.value!r}: {rule}") from None
    except OmegaConfBaseException as err:
        if not isinstance(err.__cause__, ValueError):
            raise ValueError(f"{prefix}: {str(err).splitlines()[0]}") from None
        check = err.__cause__  # a range check of a nested schema's __post_init__
    except ValueError as err:  # a range check of the schema's own __post_init__
        check = err
    else:  # checked before __post_init__, whose range checks a NaN passes (nan < 0 is False)
        raise ValueError(f"{prefix}.{bad[0]}={bad[1]}: must be a finite number") from None
    message = str(check)  # it names schema.GROUP; an entry of a list is named by its place
    if group and message.startswith(schema.GROUP):  # type: ignore[attr-defined]
        message = group + message.removeprefix(schema.GROUP)  # type: ignore[attr-defined]
    raise ValueError(message) from None


def non_finite(value: Any, key: str = "") -> tuple[str, float] | None:
    """``(dotted key, value)`` of the first float in ``value`` (plain dicts, lists and scalars) that is
    NaN or infinite; None when there is none."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (key, value)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = non_finite(v, f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


def plain(options: Any) -> dict[str, Any]:
    """A validated schema as a plain dict: nested schemas as dicts, enum members as their ``str`` values
    (so loggers and YAML writers see plain data)."""

    def factory(items: list[tuple[str, Any]]) -> dict[str, Any]:
        return {key: value.value if isinstance(value, Enum) else value for key, value in items}

    return asdict(options, dict_factory=factory)


def as_dict(schema: type, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`validate`, as a plain dict (see :func:`plain`)."""
    return plain(validate(schema, options))
