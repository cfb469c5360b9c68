"""Which code a run trains with: the installed strategy modules, or an edited code version.

A code version is a folder holding edited copies of strategy modules, one file per module named
``<dotted.module.name>.py`` (e.g. ``hydra_llm.strategies.signal_loss.py``). A run that was given a
version (``code.dir`` in its config, set by the sweeper) calls :func:`use_version` once; afterwards
:func:`strategy` returns the edited copy for every module the folder holds and the installed module
for the others. The installed package is never changed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

_version_dir: Path | None = None
_loaded: dict[tuple[str, str], ModuleType] = {}


def use_version(folder: str | Path | None) -> None:
    """Train with the code version in ``folder`` from now on (None: the installed code)."""
    global _version_dir
    if folder is None or str(folder) == "":
        _version_dir = None
        return
    path = Path(folder).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"code.dir: {folder} is not a folder of code versions")
    _version_dir = path


def version_dir() -> Path | None:
    """The folder of the code version in use, or None for the installed code."""
    return _version_dir


def module_file(folder: Path, module: str) -> Path:
    """Where ``module``'s edited copy lives inside the version ``folder``."""
    return Path(folder) / f"{module}.py"


def strategy(module: str) -> ModuleType:
    """The module ``module`` (dotted name) as this run must use it."""
    folder = _version_dir
    if folder is None or not module_file(folder, module).is_file():
        return importlib.import_module(module)
    key = (str(folder), module)
    if key not in _loaded:
        _loaded[key] = _load_file(module_file(folder, module), f"_hydra_llm_code_{folder.name}.{module}")
    return _loaded[key]


def _load_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def edited_frame(exc: BaseException) -> tuple[str, int] | None:
    """``(module, line)`` of the innermost traceback frame inside the code version in use, or None
    when the error did not pass through edited code."""
    folder = _version_dir
    if folder is None:
        return None
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if path.parent == folder and path.suffix == ".py" and frame.lineno is not None:
            found = (path.name[: -len(".py")], int(frame.lineno))
    return found
