"""Is training blind to the ground truth? Two checks by experiment, for the tests of every training path
and for the code-edit check.

* **Reachability** (:func:`truth_paths`): after training, walk everything training holds (the
  Observations, the LightningModule, the Trainer and its datamodule) and report each path to a
  ground-truth tensor: the same storage, or an equal copy. Evaluation callbacks hold the ground truth
  by design; they say so with a class attribute ``holds_ground_truth = True`` and the walk does not
  enter them. Tensors the regime records as observed (``GroundTruth.meta["observed"]``, e.g. a known
  stoichiometry) are not leaks.
* **Garbage** (:func:`differing`): train again with the ground truth replaced by garbage
  (:meth:`~hydra_llm.simulation.base.GroundTruth.garbage`, handed to the evaluation callbacks as in a
  real run); any parameter that differs was learned from the answer.

:func:`check` runs both on a composed config through the real training path of ``train.run``.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hydra_llm.simulation.base import GroundTruth

HOLDS_GROUND_TRUTH = "holds_ground_truth"
MAX_DEPTH = 14
MIN_COPY_NUMEL = 4  # smaller tensors (a per-type pair) are matched by storage only: equal values are likely
_WALKED_PACKAGES = ("hydra_llm", "lightning", "torch", "tests", "__main__")


@dataclass
class BlindnessReport:
    """What :func:`check` found: paths to ground truth, and parameters that changed with garbage."""

    reachable: list[str]
    differs: list[str]

    @property
    def ok(self) -> bool:
        return not self.reachable and not self.differs

    def __str__(self) -> str:
        if self.ok:
            return "blind: no ground truth reachable, bit-identical parameters with garbage ground truth"
        parts = []
        if self.reachable:
            parts.append("ground truth reachable at " + ", ".join(self.reachable))
        if self.differs:
            parts.append("parameters differ with garbage ground truth: " + ", ".join(self.differs))
        return "; ".join(parts)


def held_by_training(observations: Any, model: Any) -> dict[str, Any]:
    """The roots of the walk after a fit: the Observations, the module, and its Trainer (with the
    datamodule, callbacks and loops the Trainer holds)."""
    return {"observations": observations, "model": model, "trainer": getattr(model, "_trainer", None)}


def truth_paths(roots: Mapping[str, Any], truth: GroundTruth, limit: int = 10) -> list[str]:
    """Paths (``model._trainer.datamodule.kept.tensors['W']``) from ``roots`` to ground-truth tensors."""
    observed = set(truth.meta.get("observed", ()))
    hidden = {k: v for k, v in truth.tensors.items() if k not in observed}
    storages = {_storage(v): k for k, v in hidden.items()}
    found: list[str] = []
    seen: set[int] = set()

    def matches(tensor: torch.Tensor) -> str | None:
        name = storages.get(_storage(tensor))
        if name is not None:
            return name
        if tensor.numel() < MIN_COPY_NUMEL:
            return None
        for key, value in hidden.items():
            if value.shape == tensor.shape and torch.equal(value.to(tensor.dtype), tensor.detach().cpu()):
                return key
        return None

    def walk(obj: Any, path: str, depth: int) -> None:
        if len(found) >= limit or depth > MAX_DEPTH or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, GroundTruth):
            found.append(path)
            return
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "fiub":
            obj = torch.from_numpy(obj)
        if isinstance(obj, torch.Tensor):
            name = matches(obj)
            if name is not None:
                found.append(f"{path} (= ground truth {name!r})")
            return
        if isinstance(obj, Mapping):
            for key, value in list(obj.items()):
                walk(value, f"{path}[{key!r}]", depth + 1)
        elif isinstance(obj, list | tuple | set | frozenset):
            for index, value in enumerate(list(obj)):
                walk(value, f"{path}[{index}]", depth + 1)
        elif _walked(obj):
            for key, value in list(vars(obj).items()):
                walk(value, f"{path}.{key}", depth + 1)

    for name, root in roots.items():
        walk(root, name, 0)
    return found


def _walked(obj: Any) -> bool:
    """Objects whose attributes are walked: our own, Lightning's and torch's (not classes, functions,
    modules, or evaluation callbacks that declare that they hold the ground truth)."""
    if isinstance(obj, type | types.ModuleType | types.FunctionType | types.MethodType):
        return False
    if getattr(type(obj), HOLDS_GROUND_TRUTH, False) or not hasattr(obj, "__dict__"):
        return False
    return dataclasses.is_dataclass(obj) or type(obj).__module__.startswith(_WALKED_PACKAGES)


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def differing(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """Names of the state entries in which two trained modules differ (all, when the names differ)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return ["the parameter names"]
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def check(cfg: Any, out: Path, garbage_seed: int = 1) -> BlindnessReport:
    """Train ``cfg`` as ``train.run`` does (deterministic, evaluation callbacks on the truth), scan for
    reachable ground truth, train again on garbage ground truth, and compare the parameters."""
    from hydra_llm import preflight
    from hydra_llm.train import evaluation_callbacks, fit

    datamodule = preflight.check(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    truth = datamodule.release_ground_truth()

    def train(ground_truth: GroundTruth, folder: str) -> torch.nn.Module:
        path = Path(out) / folder
        path.mkdir(parents=True, exist_ok=True)
        callbacks = evaluation_callbacks(cfg, datamodule.observations, ground_truth, path)
        model, _ = fit(
            cfg, datamodule, path, callbacks=callbacks, deterministic=True, enable_checkpointing=False
        )
        return model

    reference = train(truth, "truth")
    reachable = truth_paths(held_by_training(datamodule.observations, reference), truth)
    blind = train(truth.garbage(seed=garbage_seed), "garbage")
    return BlindnessReport(reachable=reachable, differs=differing(reference, blind))
