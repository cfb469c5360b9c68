"""The checks of a code version that need its code to run, in a child process of the sweeper.

``python train.py <tiny regime> code.dir=<version> code.check=true`` runs three stages and writes
``<run dir>/code_check.json`` (``{"ok", "stage", "error", ...}``):

1. **import**: every edited module of the version loads;
2. **smoke**: training on the tiny regime finishes with a finite loss and finite parameters;
3. **blindness** (:mod:`hydra_llm.blindness`): nothing training holds reaches a ground-truth tensor,
   and training again with the ground truth replaced by garbage
   (:meth:`~hydra_llm.simulation.base.GroundTruth.garbage`) gives bit-identical parameters. The
   datamodule handed to Lightning holds no ground truth (``train.run`` releases it to evaluation), but
   the Trainer's evaluation callbacks do, as in a real run: code that reads the answer through them
   learns something else. Files are the static check's concern (no file access).

Also here: :func:`record_code_error`, which a failing run uses to tell the sweeper that the error
came from an edited region (``code_error.json``, read for the repair request).
"""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hydra_llm.blindness import differing, held_by_training, truth_paths
from hydra_llm.code_edits import loader
from hydra_llm.code_edits.regions import RegionError, find_regions
from hydra_llm.code_edits.versions import ERROR_FILE

CHECK_FILE = "code_check.json"
MAX_TRACEBACK_CHARS = 4000


def run_check(cfg: DictConfig, datamodule: Any, ground_truth: Any, out: Path) -> dict[str, float]:
    """Run the three stages; write ``code_check.json``; return ``{"code_check_ok": 0 or 1}``.

    Both trainings run like a real one: the evaluation callbacks of ``cfg.evaluation`` (which hold
    the ground truth, the real one and then the garbage) are attached to the Trainer.
    """
    result: dict[str, Any] = {"ok": False, "stage": "import", "error": ""}
    folder = loader.version_dir()
    try:
        try:
            modules = sorted(p.stem for p in folder.glob("*.py")) if folder else []
            for module in modules:
                loader.strategy(module)
            result["stage"] = "smoke"
            reference, _ = _fit(cfg, datamodule, ground_truth, out / "smoke")
            problem = _not_finite(reference)
            if problem:
                raise FloatingPointError(problem)
            result["final_loss"] = float(getattr(reference, "final_loss", math.nan))
            result["stage"] = "blindness"
            reachable = truth_paths(held_by_training(datamodule.observations, reference), ground_truth)
            garbage = ground_truth.garbage(seed=1)
            blind, _ = _fit(cfg, datamodule, garbage, out / "blind")
            differs = differing(reference, blind)
            if reachable:
                result["error"] = f"the ground truth is reachable from training at {', '.join(reachable[:3])}"
            elif differs:
                result["error"] = (
                    "training with the ground truth replaced by garbage learned different parameters "
                    f"({', '.join(differs[:5])}): the code reads the ground truth"
                )
            else:
                result["ok"] = True
        except Exception as err:
            result["error"] = f"{type(err).__name__}: {err}"[:1000]
            result["traceback"] = _edited_traceback(err)
    finally:
        (out / CHECK_FILE).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return {"code_check_ok": float(result["ok"])}


def _fit(cfg: DictConfig, datamodule: Any, truth: Any, out: Path) -> Any:
    """One deterministic training, with the evaluation callbacks built on ``truth``."""
    from hydra_llm.train import evaluation_callbacks, fit  # train imports this module

    out.mkdir(parents=True, exist_ok=True)
    callbacks = evaluation_callbacks(cfg, datamodule.observations, truth, out)
    return fit(cfg, datamodule, out, callbacks=callbacks, deterministic=True, enable_checkpointing=False)


def _not_finite(model: Any) -> str:
    loss = float(getattr(model, "final_loss", math.nan))
    bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not p.isfinite().all()]
    if bad:
        return f"non-finite learned parameters after training: {', '.join(bad[:5])}"
    if not math.isfinite(loss):
        return f"the training loss is {loss}"
    return ""


def _edited_traceback(err: BaseException) -> str:
    """The traceback, cut to its last frames (where the edited code usually is)."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return text[-MAX_TRACEBACK_CHARS:]


def record_code_error(err: BaseException, out: Path) -> None:
    """When ``err`` passed through an edited region, write ``<out>/code_error.json``: the module,
    region and line, the error and the traceback (capped)."""
    frame = loader.edited_frame(err)
    folder = loader.version_dir()
    if frame is None or folder is None:
        return
    module, line = frame
    region = ""
    try:
        source = loader.module_file(folder, module).read_text(encoding="utf-8")
        for candidate in find_regions(source, module).values():
            if candidate.first_line <= line <= candidate.last_line:
                region = candidate.name
    except (OSError, RegionError):
        pass
    record = {
        "version": folder.name,
        "module": module,
        "region": region,
        "line": line,
        "error": f"{type(err).__name__}: {err}"[:1000],
        "traceback": _edited_traceback(err),
    }
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / ERROR_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    except OSError:
        pass
