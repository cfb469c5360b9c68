"""The regime's cheap checks before any work: model, training, evaluation and simulation settings, data.

``check(cfg)`` runs on the composed config before a single run simulates anything and, through the
task config's ``preflight`` key, in the llm_ucb sweeper before its first batch (so a sweep with a
missing DAVIS folder or a misspelt training key launches no child; the sweeper checks the configs
that the search space's edge values compose too). Beyond importing the training stack (Lightning,
seconds), it takes well under a second: the trainer's device (where the runs train on this machine),
a top-level key that the command line adds and nothing reads (``+seed=3``, ``++seed=3``),
``num_threads``, the model settings against their schema, the model class's ``check_training``, the
trainer's settings (the Trainer is built, nothing else, and the values its loop would fail on or that
train nothing are checked), the evaluation settings, ``optimized_metric`` against the evaluation's
metric names, the W&B logger's mode, the simulation DataModule's constructor, which validates its
arguments and finds its data but simulates nothing, and the cache folder.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hydra_llm.printable import did_you_mean


class PreflightError(ValueError):
    """A setting that would fail the run: one line naming the key and the fix."""


def check(cfg: DictConfig) -> Any:
    """Raise :class:`PreflightError` for the first bad setting of ``cfg`` (see the module docstring);
    else return the simulation DataModule it built (nothing simulated yet), for the run to use."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    from hydra_llm.schemas.models import MODELS

    check_accelerator(cfg)
    try:
        check_added_keys(cfg)
        check_num_threads(cfg)
        check_schema(cfg, "model", MODELS)
        training: dict[str, Any] = OmegaConf.to_container(cfg.training, resolve=True)  # type: ignore[assignment]
        model_check = getattr(get_class(cfg.model._target_), "check_training", None)
        if model_check is not None:
            model_check(training)
        check_trainer(cfg)  # after training: trainer.max_epochs follows training.n_epochs
        check_evaluation(cfg)
        check_optimized_metric(cfg)
        check_logger(cfg)
        try:
            datamodule = instantiate(cfg.simulation, cache_dir=cfg.paths.cache_dir)
        except InstantiationException as err:  # Hydra wraps the constructor's own error
            raise (err.__cause__ or err) from None
        check_cache_dir(cfg, datamodule)  # last: it creates the folder, as the run would
        return datamodule
    except (ValueError, TypeError, KeyError, FileNotFoundError, InstantiationException) as err:
        first = " ".join(str(err).split()) or type(err).__name__
        raise PreflightError(first) from err  # the cause keeps its type (e.g. FileNotFoundError)


def _hydra_node(cfg: DictConfig) -> Any:
    """The ``hydra`` node: the sweeper's config holds it, a run's task function reads it from Hydra."""
    from hydra.core.hydra_config import HydraConfig

    node = OmegaConf.select(cfg, "hydra", default=None)
    if node is None and HydraConfig.initialized():
        node = HydraConfig.get()
    return node


def _leaf_keys(value: Any, prefix: str) -> set[str]:
    """The dotted keys of every leaf under ``value`` (a plain container; a leaf is its own key)."""
    if not isinstance(value, dict) or not value:
        return {prefix}
    return set().union(*(_leaf_keys(v, f"{prefix}.{k}") for k, v in value.items()))


def check_added_keys(cfg: DictConfig) -> None:
    """Raise ``ValueError`` for a top-level key that the command line adds (``+seed=3``,
    ``+optimizer.lr=0.1``, or ``++seed=3`` where the config has no ``seed``) and that names no config
    group: nothing reads it, so the run would go ahead as if it were not there (Hydra itself suggests
    the ``+`` for a misspelt key). Names the group keys of that name, where there are any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_node = _hydra_node(cfg)
    if hydra_node is None:
        return
    groups = set(OmegaConf.select(hydra_node, "runtime.choices", default=None) or {})
    task = list(OmegaConf.select(hydra_node, "overrides.task", default=None) or [])
    adds = [o for o in OverridesParser.create().parse_overrides(task) if o.is_add() or o.is_force_add()]
    added = {o.key_or_group for o in adds}
    tree: dict[str, Any] = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
    tree.pop("hydra", None)

    def top(override: Any) -> str:
        return override.key_or_group.split(".")[0]

    # not a group, and every key under it added here (a key that was there has its own checks)
    new = [
        o
        for o in adds
        if top(o) not in groups and top(o) in tree and _leaf_keys(tree[top(o)], top(o)) <= added
    ]
    forced = {o.input_line for o in new if o.is_force_add()}
    if forced:  # ``++`` also sets a key that is there: tell by composing without them
        before = _top_level_keys(hydra_node, [line for line in task if line not in forced])
        new = [o for o in new if o.input_line not in forced or (before is not None and top(o) not in before)]
    for override in new:
        key = top(override)
        near = [f"{group}.{key}" for group, node in tree.items() if isinstance(node, dict) and key in node]
        raise ValueError(
            f"{override.input_line}: adds a top-level key {key!r} that nothing reads (the top-level keys: "
            f"{', '.join(sorted(k for k in tree if k != key))}){did_you_mean(near)}"
        )


def _top_level_keys(hydra_node: Any, overrides: list[str]) -> set[str] | None:
    """The top-level keys of the task's config composed with ``overrides``; None where Hydra's config
    loader is not at hand (outside a Hydra app) or the composition fails."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    name = OmegaConf.select(hydra_node, "job.config_name", default=None)
    if name is None or not GlobalHydra.instance().is_initialized():
        return None
    try:
        composed = GlobalHydra.instance().config_loader().load_configuration(name, overrides, RunMode.RUN)
    except Exception:  # noqa: BLE001 (a config that does not compose here is left to Hydra)
        return None
    return set(composed) - {"hydra"}


def check_num_threads(cfg: DictConfig) -> None:
    """Raise ``ValueError`` for a bad ``num_threads``, which the run reads only when it sets its threads
    (the ``resources`` hints are the launcher's: the llm_ucb sweeper checks them with its launcher)."""
    threads = OmegaConf.select(cfg, "num_threads", default=None)
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(
            f"num_threads={threads!r}: must be an integer >= 1, or null (from the launcher: "
            "cores // n_jobs under joblib, cpus_per_task under SLURM)"
        )


def check_schema(cfg: DictConfig, group: str, schemas: dict[str, type]) -> dict[str, Any]:
    """Raise ``ValueError`` for a bad setting of ``cfg.<group>``, checked against the schema of its
    ``_target_`` in ``schemas`` (a user's own ``_target_`` checks its own); return the options."""
    from hydra_llm.schemas import validate

    options: dict[str, Any] = OmegaConf.to_container(cfg[group], resolve=True)  # type: ignore[assignment]
    schema = schemas.get(str(options.get("_target_")))
    if schema is not None:
        validate(schema, options)
    return options


def check_evaluation(cfg: DictConfig) -> None:
    """Raise ``ValueError`` for a bad ``evaluation`` setting (:mod:`hydra_llm.schemas.evaluation`).
    Each ``evaluation.callbacks`` entry must name a callable ``_target_``; a known one (``CALLBACKS``)
    has its options checked against its schema, without importing it."""
    from hydra_llm.schemas import validate
    from hydra_llm.schemas.evaluation import CALLBACKS, EVALUATIONS

    options = check_schema(cfg, "evaluation", EVALUATIONS)
    for i, entry in enumerate(options.get("callbacks") or []):
        key = f"evaluation.callbacks.{i}"
        target = entry.get("_target_") if isinstance(entry, dict) else None
        if not isinstance(target, str):
            raise ValueError(f"{key}: must be a mapping with a _target_ (a callable's import path)")
        if target in CALLBACKS:
            validate(CALLBACKS[target], entry, group=key)
        else:
            check_importable(f"{key}._target_", target)


def metric_names(cfg: DictConfig) -> tuple[str, ...] | None:
    """The metrics a run of ``cfg`` returns, from its evaluation's schema
    (:func:`hydra_llm.schemas.evaluation.metric_names`); None for a user's own evaluation. The config's
    ``metric_names`` key names this function for the llm_ucb sweeper, which checks its objective
    metric against it before the first batch."""
    from hydra_llm.schemas.evaluation import metric_names as names_of

    return names_of(str(OmegaConf.select(cfg, "evaluation._target_", default="")))


def check_optimized_metric(cfg: DictConfig) -> None:
    """Raise ``ValueError`` when ``optimized_metric`` (the one number a run returns to sweepers such as
    Optuna) names no metric of the run, rather than after its training."""
    from hydra_llm.schemas.evaluation import is_metric, unknown_metric

    name = OmegaConf.select(cfg, "optimized_metric", default=None)
    names = metric_names(cfg)
    if name and names is not None and not is_metric(str(name), names):
        raise ValueError(unknown_metric("optimized_metric", str(name), names))


def check_cache_dir(cfg: DictConfig, datamodule: Any) -> None:
    """Raise ``ValueError`` when ``paths.cache_dir`` (where the simulation records) cannot be created or
    written, or lacks the space the ``datamodule``'s record needs (``record_bytes``) when it is not
    cached yet: a full disk under a memory-mapped record ends the process without a Python error.
    The folder is created, as the run would create it."""
    import os
    import shutil
    from pathlib import Path

    from hydra_llm.files import disk_size

    folder = OmegaConf.select(cfg, "paths.cache_dir", default=None)
    if folder is None:
        return
    fix = "set paths.cache_dir (or $HYDRA_LLM_CACHE) to a writable folder"
    try:
        Path(str(folder)).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"paths.cache_dir={folder}: cannot be created ({err.strerror}); {fix}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"paths.cache_dir={folder}: not writable; {fix}")
    need, cached = datamodule.record_bytes(), datamodule.cache_path(folder)
    free = shutil.disk_usage(folder).free
    if need > free and cached is not None and not cached.is_file():
        raise ValueError(
            f"paths.cache_dir={folder}: the simulation records {disk_size(need)} there and "
            f"{disk_size(free)} are free; free space, set paths.cache_dir (or $HYDRA_LLM_CACHE) to "
            "another disk, or lower simulation.n_frames"
        )


def check_importable(key: str, path: str) -> None:
    """Raise ``ValueError`` unless ``path`` names a callable that imports here (e.g. a callback factory)."""
    import logging

    from hydra.utils import get_object

    hydra_log = logging.getLogger("hydra.utils")  # get_object logs the error it raises; the caller says it
    disabled, hydra_log.disabled = hydra_log.disabled, True
    try:
        found = get_object(path)
    except Exception as err:  # a missing module or attribute comes in several exception types
        raise ValueError(f"{key}={path!r}: cannot be imported ({' '.join(str(err).split())[:200]})") from None
    finally:
        hydra_log.disabled = disabled
    if not callable(found):
        raise ValueError(f"{key}={path!r}: not callable")


def on_cluster_nodes(cfg: DictConfig) -> bool:
    """Whether a cluster launcher (``hydra/launcher=slurm``) sends the runs to other nodes, whose
    devices this machine need not have."""
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    return launcher.endswith("SlurmLauncher")


def check_trainer(cfg: DictConfig) -> None:
    """Raise ``ValueError`` for a ``trainer`` setting the run's Trainer would refuse after the
    simulation: a key that is none of its arguments, a value its constructor rejects (``devices=0``,
    an unknown ``precision``) or one its loop fails on (:func:`check_loop_values`). The Trainer is
    built here as the run builds it, without logger, callbacks or files, its start-up messages
    silenced; where the runs go to cluster nodes only the keys and loop values are checked (the
    constructor would look for the nodes' devices here)."""
    import difflib
    import inspect
    import logging
    import warnings

    from hydra.utils import get_class, instantiate

    options: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    target = get_class(str(options.pop("_target_")))
    allowed = inspect.signature(target).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in allowed.values()):
        for key in options:
            if key not in allowed:
                close = [f"trainer.{c}" for c in difflib.get_close_matches(key, list(allowed), n=1)]
                raise ValueError(f"trainer.{key}: not an argument of {target.__name__}{did_you_mean(close)}")
    check_loop_values(options)
    if on_cluster_nodes(cfg):
        return
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # "GPU available: ..."
    disabled, rank_zero.disabled = rank_zero.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    except Exception as err:  # Hydra wraps the constructor's error (a MisconfigurationException, ...)
        cause = err.__cause__ or err
        raise ValueError(f"trainer: {' '.join(str(cause).split())[:300]}") from None
    finally:
        rank_zero.disabled = disabled


def check_loop_values(options: dict[str, Any]) -> None:
    """Raise ``ValueError`` for a Trainer value its constructor takes but its loop fails on, after the
    simulation: ``accumulate_grad_batches`` 0 or less (a division by zero at the first step) and a
    ``gradient_clip_val`` of NaN (refused at the first step; 0 or less turns clipping off); and for a
    loop that takes no step (``max_epochs``, ``max_steps`` or ``limit_train_batches`` 0: the run would
    evaluate the untrained model as if it were a result) or never ends (``max_epochs=-1`` with no
    ``max_steps`` or ``max_time``); and for a loop length that is not a whole number (``max_epochs=abc``
    passes the constructor and fails an assertion in the loop)."""
    for key in ("max_epochs", "min_epochs", "max_steps", "min_steps"):
        value = options.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"trainer.{key}={value!r}: must be a whole number (or null)")
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if options.get(key) == 0 and not isinstance(options[key], bool):
            raise ValueError(
                f"trainer.{key}={options[key]!r}: trains nothing; give at least 1"
                + (" (it follows training.n_epochs unless set)" if key == "max_epochs" else "")
            )
    endless = options.get("max_epochs") == -1 and options.get("max_steps", -1) == -1
    if endless and not options.get("max_time"):
        raise ValueError("trainer.max_epochs=-1: never ends without trainer.max_steps or trainer.max_time")
    count = options.get("accumulate_grad_batches", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"trainer.accumulate_grad_batches={count!r}: must be an integer >= 1")
    clip = options.get("gradient_clip_val")
    if isinstance(clip, float) and math.isnan(clip):
        raise ValueError("trainer.gradient_clip_val=nan: must be a number (0: no clipping), or null")


def check_logger(cfg: DictConfig) -> None:
    """Raise ``ValueError`` for a W&B ``logger.mode`` that W&B refuses: the logger starts its W&B run
    only after the simulation."""
    from hydra_llm.wandb_runs import wandb_logger

    logger = wandb_logger(cfg)
    mode = logger.get("mode") if logger is not None else None
    if mode is None:
        return
    import wandb
    from pydantic import ValidationError

    try:
        wandb.Settings(mode=mode)
    except ValidationError as err:
        allowed = str(err.errors()[0]["msg"]).replace("Input should be", "must be")
        raise ValueError(f"logger.mode={mode!r}: {allowed}") from None


def check_accelerator(cfg: DictConfig) -> None:
    """Raise :class:`PreflightError` when ``trainer.accelerator`` is not one of Lightning's accelerators,
    or names a device this machine lacks.

    The device is not looked for when a cluster launcher (``hydra/launcher=slurm``) sends the runs to
    other nodes: the sweeper's own machine need not have their GPU.
    """
    from lightning.pytorch.accelerators import AcceleratorRegistry

    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    known = AcceleratorRegistry.available_accelerators()
    devices = {name: (name,) for name in known} | {"gpu": ("cuda", "mps"), "auto": ()}
    if accelerator not in devices:
        raise PreflightError(
            f"trainer.accelerator={accelerator}: not an accelerator Lightning knows here; one of "
            + ", ".join(sorted(devices))
        )
    if on_cluster_nodes(cfg) or not devices[accelerator]:
        return
    # "gpu" is Lightning's alias for whichever of cuda and mps the machine has
    if not any(AcceleratorRegistry[name]["accelerator"].is_available() for name in devices[accelerator]):
        raise PreflightError(
            f"trainer.accelerator={accelerator}: no {accelerator.upper()} on this machine; use "
            "trainer=cpu, or train on a GPU node (hydra/launcher=slurm resources.gpus_per_node=1)"
        )
