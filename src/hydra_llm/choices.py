"""Config-group choices on the command line, checked before Hydra composes anything.

Hydra stops a misspelt choice (``simulation=flyvis_natrual``) with a message of a dozen lines: the
options one per line, then its config search path. :func:`unknown_choice` names the key, the closest
option and the allowed ones in one line instead. It asks Hydra's own config loader for each group's
options (the files in ``conf/`` and the schemas in the ConfigStore), so it refuses only what Hydra
would; where the command line moves the search path (``--config-dir``, ``--config-path``,
``hydra.searchpath``), it leaves the check to Hydra.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path


def unknown_choice(argv: Sequence[str], config_dir: Path) -> str | None:
    """The one-line error for the first command-line choice of a config group in ``argv`` (Hydra's
    arguments, e.g. ``sys.argv[1:]``) that is not one of the group's options, or None. A sweep over
    choices (``simulation=signal_dale,flyvis_natural``) has each value checked; globs, ranges and
    deletions are left to Hydra."""
    from hydra import initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    args, _ = get_args_parser().parse_known_args(list(argv))
    if args.config_dir or args.config_path:
        return None
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides or [])
    except Exception:  # noqa: BLE001 (a malformed override is Hydra's to report)
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
                    close = difflib.get_close_matches(value, options, n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    allowed = ", ".join(options)
                    return f"{override.key_or_group}={value}: no such option{hint}; allowed: {allowed}"
    return None
