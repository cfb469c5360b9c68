"""Typed schemas of the settings objects, and the check that turns plain options into them.

``training`` options are dataclasses in :mod:`hydra_llm.schemas.training`; ``store`` registers them in
Hydra's ConfigStore (on every Hydra start, through ``hydra_plugins.hydra_llm_schemas``). Importing this
package is cheap (no torch).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, TypeVar

T = TypeVar("T")

_ONE_OF = re.compile(r"expected one of \[(.*?)\]")


def validate(schema: type[T], options: Mapping[str, Any] | None, prefix: str = "training") -> T:
    """``options`` merged over the defaults of ``schema`` and checked (types, then the schema's own
    ``__post_init__`` ranges). A bad key or value raises one ``ValueError`` line naming ``prefix.key``
    and what is allowed."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    data = OmegaConf.to_container(options) if OmegaConf.is_config(options) else dict(options or {})
    allowed = [f.name for f in fields(schema)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"{prefix}: unknown keys {unknown}; allowed keys: {allowed}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))  # type: ignore[return-value]
    except ConfigKeyError as err:
        raise ValueError(f"{prefix}.{err.full_key}: unknown key") from None
    except ValidationError as err:
        first = str(err.msg).splitlines()[0]
        one_of = _ONE_OF.search(first)
        rule = f"allowed values: [{one_of.group(1)}]" if one_of else first
        raise ValueError(f"{prefix}.{err.full_key}={err.value!r}: {rule}") from None
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ValueError) else None
        if cause is not None:  # a range check of the schema's __post_init__
            raise cause from None
        raise ValueError(f"{prefix}: {str(err).splitlines()[0]}") from None


def as_dict(schema: type, options: Mapping[str, Any] | None, prefix: str = "training") -> dict[str, Any]:
    """:func:`validate`, as a plain dict (nested schemas as dicts; enum members are ``str``)."""
    return asdict(validate(schema, options, prefix))  # type: ignore[call-overload]
