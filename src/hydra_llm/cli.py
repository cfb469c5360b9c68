"""The command line's mistakes in one line: ``python train.py`` runs through :func:`run_app`.

Hydra stops a misspelt choice (``simulation=flyvis_natrual``) with a message of a dozen lines (the
options one per line, then its config search path), and a misspelt or mistyped key
(``training.learning_rate_W_strat=1e-3``, ``simulation.n_neurons=abc``) with five, the first of
which advises adding the key with ``+`` (which the preflight would then refuse). :func:`unknown_choice`
checks the group choices before Hydra starts, asking Hydra's own config loader for each group's
options (the files in ``conf/`` and the schemas in the ConfigStore), so it refuses only what Hydra
would; where the command line moves the search path (``--config-dir``, ``--config-path``,
``hydra.searchpath``), it leaves the check to Hydra. :func:`nested_sweep` names the quotes that a
sweep inside a ``{...}`` value needs (Hydra: "Unexpected type annotation: Set[str]"), and
:func:`conflicting_commands` two commands at once. :func:`composition_error` turns the error
Hydra raises while composing into one line with the closest keys of the key's group. Errors of the
run itself keep Hydra's own report (:func:`task_started`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra_llm.printable import did_you_mean

_FULL_ERROR = "HYDRA_FULL_ERROR"  # Hydra re-raises what it would report when this is "1"
_set_here = False


def hydra_arguments(argv: Sequence[str]) -> Any:
    """``argv`` (e.g. ``sys.argv[1:]``) as Hydra's own argument parser reads it (flags and overrides)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_known_args(list(argv))[0]


def conflicting_commands(args: Any) -> str | None:
    """The one-line error for Hydra's arguments ``args`` (:func:`hydra_arguments`) when they ask for
    more than one command (``-m`` with ``--cfg job``: Hydra raises a ValueError with a traceback), or
    None."""
    given = {
        "--run": args.run,
        "--multirun": args.multirun,
        "--cfg": args.cfg is not None,
        "--info": args.info is not None,
        "--shell-completion": args.shell_completion,
    }
    asked = [flag for flag, on in given.items() if on]
    if len(asked) < 2:
        return None
    return f"{' and '.join(asked)}: Hydra runs one of {', '.join(given)} at a time"


def parsed_overrides(args: Any) -> list[Any] | None:
    """The overrides in Hydra's arguments ``args`` (:func:`hydra_arguments`) as Hydra's parser reads
    them, or None when one is malformed (Hydra's to report)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(args.overrides or [])
    except Exception:  # noqa: BLE001 (Hydra reports a malformed override with its position)
        return None


def nested_sweep(overrides: Sequence[Any]) -> str | None:
    """The one-line error for an override whose ``{...}`` or ``[...]`` value holds a sweep
    (``+hydra.sweeper.params={training.lr:interval(1e-4,1e-2)}``), which Hydra fails to merge with
    "Unexpected type annotation: Set[str]"; or None."""
    from hydra.core.override_parser.types import Sweep

    def find(value: Any) -> tuple[str | None, Sweep] | None:
        """The first sweep in ``value`` and its dict key (None in a list)."""
        items = (
            value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        )
        for k, v in items:
            if isinstance(v, Sweep):
                return (str(k) if isinstance(value, dict) else None), v
            if (found := find(v)) is not None:
                return found
        return None

    for override in overrides:
        if override.is_sweep_override() or (found := find(override.value())) is None:
            continue
        key, sweep = found
        text = _sweep_text(sweep)
        fix = (
            f'quote it ({key}:"{text}"), or sweep the key itself ({key}={text})'
            if key
            else f'quote it ("{text}")'
        )
        return f"{override.input_line}: {text} is a sweep inside a value, which Hydra cannot merge; {fix}"
    return None


def _sweep_text(sweep: Any) -> str:
    """A sweep as the override grammar writes it: ``choice(0,8)``, ``tag(log,interval(0.0001,0.01))``."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    if isinstance(sweep, ChoiceSweep):
        text = f"choice({','.join(str(v) for v in sweep.list)})"
    elif isinstance(sweep, IntervalSweep):
        text = f"interval({sweep.start},{sweep.end})"
    elif isinstance(sweep, RangeSweep):
        text = f"range({sweep.start},{sweep.stop},{sweep.step})"
    else:
        text = type(sweep).__name__
    return f"tag({','.join(sorted(sweep.tags))},{text})" if sweep.tags else text


def unknown_choice(args: Any, overrides: Sequence[Any], config_dir: Path) -> str | None:
    """The one-line error for the first choice of a config group among the command line's
    ``overrides`` (:func:`parsed_overrides` of Hydra's arguments ``args``) that is not one of the
    group's options, or None. A sweep over choices (``simulation=signal_dale,flyvis_natural``) has
    each value checked; globs, ranges and deletions are left to Hydra."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.types import ChoiceSweep

    if args.config_dir or args.config_path:
        return None
    if any(o.key_or_group.startswith("hydra.searchpath") for o in overrides):
        return None
    if GlobalHydra.instance().is_initialized():
        return None  # inside another Hydra app (tests): its own loader decides
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for override in overrides:
            if override.is_delete() or "." in override.key_or_group:
                continue
            if override.is_sweep_override() and not isinstance(override.value(), ChoiceSweep):
                continue
            values = (
                list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
            )
            options = loader.get_group_options(override.key_or_group)
            if not options:
                continue  # not a group: a config key, Hydra's and the preflight's to check
            for value in values:
                if isinstance(value, str) and "/" not in value and value not in options:
                    hint = did_you_mean(difflib.get_close_matches(value, options, n=1), brackets=True)
                    allowed = ", ".join(options)
                    return f"{override.key_or_group}={value}: no such option{hint}; allowed: {allowed}"
    return None


def composition_error(err: BaseException, config_dir: Path | None = None) -> str:
    """One line for Hydra's error composing the config: its message without the advice to append the
    key with ``+``, the first line of what OmegaConf raised under it, and for a key the config lacks
    where to find it: the ``+`` that adds an argument of the node's ``_target_``
    (:func:`_target_taking`), the sweeper or launcher that has a ``hydra.<group>`` key
    (:func:`_hydra_group_options`), else the closest keys of its group (:func:`_closest_keys`)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(line for line in lines if not line.startswith("To append to your config"))
    if getattr(err, "override", None):  # an override Hydra's grammar cannot parse
        text = f"{err.override}: {text}"
    cause = err.__cause__
    if cause is None or not str(cause).strip():
        return text
    first = str(cause).strip().splitlines()[0]
    text = text if first in text else f"{text.rstrip('.')}: {first}"
    if not isinstance(cause, ConfigAttributeError | ConfigKeyError):
        return text
    key = str(getattr(cause, "full_key", None) or "")
    if (target := _target_taking(cause)) is not None:
        return f"{text}; {target} takes it: add it with +{key}=<value>"
    others = _hydra_group_options(key, config_dir)
    name = key.rpartition(".")[2]
    if options := [option for option, keys in others.items() if name in keys]:
        return f"{text}; {_options_having(options)}"
    if close := _closest_keys(cause, config_dir):
        return text + did_you_mean(close)
    near = difflib.get_close_matches(name, sorted({k for keys in others.values() for k in keys}), n=1)
    if near:  # a misspelt key of another sweeper or launcher
        options = [option for option, keys in others.items() if near[0] in keys]
        meant = key.rpartition(".")[0] + "." + near[0]
        return f"{text}{did_you_mean([meant])} {_options_having(options)}"
    return text


def _options_having(options: list[str]) -> str:
    """'hydra/sweeper=llm_ucb has it: add hydra/sweeper=llm_ucb to the command line' for ``options``."""
    have = "has" if len(options) == 1 else "have"
    return f"{' or '.join(options)} {have} it: add {options[0]} to the command line"


def _closest_keys(cause: Any, config_dir: Path | None) -> list[str]:
    """The existing keys closest to the one OmegaConf's error ``cause`` names, in its config group
    (``simulation``, ``training``, ...): the same name deeper or shallower in the group
    (``simulation.extent`` -> ``simulation.connectome.extent``), else the closest names at its own
    level, else the closest names anywhere in the group. A misspelt top-level key is matched against
    the composed config's keys and ``config_dir``'s groups and primary config keys."""
    from omegaconf import DictConfig, OmegaConf

    node, key = getattr(cause, "parent_node", None), str(getattr(cause, "full_key", None) or "")
    if not isinstance(node, DictConfig) or not key:
        return []
    parent, _, name = key.rpartition(".")
    level = [str(k) for k in node]
    while node._get_parent() is not None and node._get_parent()._get_parent() is not None:
        node = node._get_parent()  # up to the group, the root's child
    top = node._get_parent() is None
    if top and config_dir is not None:  # a top-level key: the root's and the config folder's names
        level += _top_level_names(Path(config_dir))
    group, prefix = OmegaConf.to_container(node, resolve=False), "" if top else f"{node._key()}."
    paths = [prefix + p for p in _key_paths(group)] if isinstance(group, dict) else []
    same = [p for p in paths if p.rpartition(".")[2] == name and p != key]
    if same:
        return same[:3]
    here = difflib.get_close_matches(name, sorted(set(level)), n=2)
    if here:
        return [f"{parent}.{c}" if parent else c for c in here]
    leaves = {p.rpartition(".")[2]: p for p in paths}
    return [leaves[c] for c in difflib.get_close_matches(name, list(leaves), n=2)]


def _hydra_group_options(key: str, config_dir: Path | None) -> dict[str, set[str]]:
    """For a key directly under one of Hydra's own groups (``hydra.sweeper.n_iterations``, which the
    chosen sweeper may lack), each option of that group with its keys: ``{"hydra/sweeper=llm_ucb":
    {"n_iterations", ...}, ...}``, from the plugins' configs in the ConfigStore and ``config_dir``'s own
    (``conf/hydra/launcher/slurm.yaml``); empty for any other key."""
    import yaml
    from hydra.core.config_store import ConfigNode, ConfigStore

    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "hydra":
        return {}
    group = parts[1]
    repo = ConfigStore.instance().repo.get("hydra", {}).get(group, {})
    found = {
        option.removesuffix(".yaml"): {str(k) for k in entry.node}
        for option, entry in repo.items()
        if isinstance(entry, ConfigNode) and hasattr(entry.node, "keys")
    }
    for path in sorted((Path(config_dir) / "hydra" / group).glob("*.yaml")) if config_dir else []:
        try:
            own = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(own, dict):
            found.setdefault(path.stem, set()).update(str(k) for k in own)
    return {f"hydra/{group}={option}": found[option] for option in sorted(found)}


def _target_taking(cause: Any) -> str | None:
    """The ``_target_`` of the config node that lacks the key OmegaConf's error ``cause`` names, when
    that target (``lightning.pytorch.Trainer`` for ``trainer.max_steps``) takes the key as an
    argument; else None."""
    import inspect

    from hydra.utils import get_object
    from omegaconf import DictConfig

    node, name = getattr(cause, "parent_node", None), getattr(cause, "key", None)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not isinstance(target, str) or not isinstance(name, str):
        return None
    try:
        parameters = inspect.signature(get_object(target)).parameters
    except Exception:  # noqa: BLE001 (a target that cannot be imported here is the run's to report)
        return None
    return target if name in parameters else None


def _key_paths(tree: dict[Any, Any], prefix: str = "") -> list[str]:
    """Every key of the nested mapping ``tree`` as a dotted path (a mapping's own key included)."""
    paths = []
    for k, v in tree.items():
        path = f"{prefix}{k}"
        paths.append(path)
        if isinstance(v, dict):
            paths += _key_paths(v, f"{path}.")
    return paths


def _top_level_names(config_dir: Path) -> list[str]:
    """The config groups (folders) of ``config_dir`` and the keys of its primary config ``train.yaml``."""
    import yaml

    groups = [p.name for p in config_dir.iterdir() if p.is_dir() and p.name != "hydra"]
    try:
        primary = yaml.safe_load((config_dir / "train.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        primary = {}
    return sorted({*groups, *(str(k) for k in primary if k != "defaults")})


def run_app(main: Callable[[], Any], config_dir: Path, argv: Sequence[str]) -> None:
    """Run the ``@hydra.main`` function ``main`` with the command line ``argv``: a group choice that is
    not an option (:func:`unknown_choice`) or an error composing the config (:func:`composition_error`)
    ends the process with one line and status 1. A ``HYDRA_FULL_ERROR`` the user set is left to Hydra."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    global _set_here
    args = hydra_arguments(argv)
    overrides = parsed_overrides(args)
    problem = conflicting_commands(args)
    if problem is None and overrides is not None:
        problem = nested_sweep(overrides) or unknown_choice(args, overrides, config_dir)
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    if _FULL_ERROR in os.environ:
        main()
        return
    os.environ[_FULL_ERROR], _set_here = "1", True  # so that composition errors reach this frame
    try:
        main()
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as err:
        raise SystemExit(f"error: {composition_error(err, config_dir)}") from None


def task_started() -> None:
    """Called first in the task function: from here on Hydra reports errors as it would without
    :func:`run_app` (the run's own traceback, trimmed)."""
    global _set_here
    if _set_here:
        os.environ.pop(_FULL_ERROR, None)
        _set_here = False
