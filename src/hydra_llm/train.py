"""The task function of one run: simulate -> fit -> evaluate -> log -> return metrics.

``run(cfg)`` is what ``train.py`` (and so every sweep child) calls. It returns a small picklable
dict of floats; richer artefacts (``metrics.json``, ``plots/*.png``, checkpoints) go to the job
folder. Ground truth goes to evaluation only.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hydra_llm import preflight
from hydra_llm.schemas.evaluation import headline_names, metric_groups, unknown_metric

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The job folder: Hydra's runtime output dir (never the cwd)."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _choice(group: str) -> str | None:
    """The option chosen for a config group (e.g. the regime ``signal_chaotic``), when Hydra runs."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def _run_name(cfg: DictConfig) -> str | None:
    node = cfg.sweep_node
    if node.node is None:
        return None
    from hydra.core.hydra_config import HydraConfig

    job = HydraConfig.get().job.num if HydraConfig.initialized() else "x"
    return f"n{node.node}-j{job}"


_ENV_INTERPOLATION = re.compile(r"\$\{(oc\.env|env|oc\.decode):")


def loggable_config(cfg: DictConfig) -> dict[str, Any]:
    """The task config as plain data for a logger: resolved, except that a value written as an
    environment interpolation (``${oc.env:...}``) is kept as written, and any secret of the
    environment that still shows up (through another interpolation) is masked."""
    from hydra_llm.llm.redact import Redactor, environment_secrets

    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    def merge(raw_value: Any, value: Any) -> Any:
        if isinstance(raw_value, str) and _ENV_INTERPOLATION.search(raw_value):
            return raw_value
        if isinstance(raw_value, dict) and isinstance(value, dict):
            return {k: merge(raw_value.get(k), v) for k, v in value.items()}
        if isinstance(raw_value, list) and isinstance(value, list) and len(raw_value) == len(value):
            return [merge(r, v) for r, v in zip(raw_value, value, strict=True)]
        return value

    return Redactor(environment_secrets()).obj(merge(raw, resolved))


def child_record(cfg: DictConfig) -> dict[str, Any] | None:
    """This sweep child's node metadata (strategy, hypothesis, ...), written by the sweeper; None
    outside a sweep."""
    from hydra.core.hydra_config import HydraConfig

    from hydra_llm.explore.sweep_folder import read_child_record

    if cfg.sweep_node.node is None or not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return read_child_record(hydra_cfg.sweep.dir, int(hydra_cfg.job.num))


def build_logger(cfg: DictConfig, out: Path):
    """Instantiate the configured Lightning logger (or None), named and grouped for sweeps."""
    from hydra.utils import instantiate

    from hydra_llm.wandb_runs import child_tags, wandb_logger

    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return None
    kwargs: dict[str, Any] = {}
    if wandb_logger(cfg) is not None:
        config = loggable_config(cfg)
        record = child_record(cfg)
        if record is not None:
            config["sweep_node"] = record  # plain data: never resolved, never an override

        kwargs = {
            "config": config,
            "name": _run_name(cfg),
            "group": cfg.sweep_node.sweep_id,
            "tags": child_tags(_choice("simulation"), record),
            "reinit": "finish_previous",
        }
    # Through a partial: instantiate(cfg, config=...) would clash with instantiate's own `config` argument.
    return instantiate(cfg.logger, _partial_=True)(**kwargs)


def threads_for_child(num_threads: int | None) -> int | None:
    """Torch CPU threads for this job, so parallel children do not oversubscribe the cores.

    An explicit ``num_threads`` wins. Otherwise, under the joblib launcher each of ``n_jobs``
    children gets ``cores // n_jobs`` threads, under submitit the job's ``cpus_per_task``; a plain run
    keeps torch's default (None).
    """
    import os

    from hydra.core.hydra_config import HydraConfig

    if num_threads is not None:  # an integer >= 1 (the preflight checks it)
        return int(num_threads)
    if not HydraConfig.initialized() or "launcher" not in HydraConfig.get():
        return None
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", "")).lower()
    cores = len(os.sched_getaffinity(0))
    if "joblib" in target:
        n_jobs = int(launcher.get("n_jobs") or -1)
        n_jobs = cores if n_jobs < 0 else n_jobs
        return max(1, cores // max(1, n_jobs))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return max(1, int(launcher.cpus_per_task))
    return None


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Plain floats (NaN kept as NaN so the sweeper can mark the node failed)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def optimized(metrics: dict[str, float], key: str | None) -> dict[str, float] | float:
    """The run's return value: every metric, or only ``optimized_metric`` (raises after the run's
    files are written when it names no metric of the run)."""
    if not key:
        return metrics
    if key not in metrics:  # one the preflight could not check (a user's own evaluation) or not produced
        raise ValueError(unknown_metric("optimized_metric", key, sorted(metrics)))
    return float(metrics[key])


def run(cfg: DictConfig) -> dict[str, float]:
    """Simulate, fit, evaluate and log one configuration; return its metrics."""
    import torch
    from hydra.utils import instantiate

    from hydra_llm.code_edits.loader import use_version

    out = output_dir(cfg)
    quiet_duplicate_loggers()
    code = cfg.get("code") or {}
    use_version(code.get("dir"))  # the code version a sweep gave this run (None: the installed code)
    # a bad setting or missing data fails here, before anything is simulated
    datamodule = preflight.check(cfg)
    threads = threads_for_child(cfg.get("num_threads"))
    if threads is not None:
        torch.set_num_threads(threads)
        log.info("torch threads: %d", threads)
    datamodule.prepare_data()
    datamodule.setup("fit")
    # Evaluation takes the ground truth; the datamodule that goes to Lightning keeps none.
    ground_truth = datamodule.release_ground_truth()
    if code.get("check"):
        from hydra_llm.code_edits.check_run import run_check

        return run_check(cfg, datamodule, ground_truth, out)
    observations = datamodule.observations

    logger = build_logger(cfg, out)
    try:
        callbacks = evaluation_callbacks(cfg, observations, ground_truth, out)
        model, training_time_min = fit(cfg, datamodule, out, callbacks=callbacks, logger=logger)

        evaluation = OmegaConf.to_container(cfg.evaluation, resolve=True)
        evaluation.pop("callbacks", None)  # built before fit, see evaluation_callbacks
        evaluate = instantiate(evaluation, _partial_=True)
        metrics = dict(
            evaluate(model=model, observations=observations, ground_truth=ground_truth, out_dir=out)
        )
        metrics["final_loss"] = float(getattr(model, "final_loss", math.nan))
        metrics["training_time_min"] = training_time_min
        metrics["smoothing_window"] = observations.smoothing_window
        metrics = finite_metrics(metrics)

        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        headline = headline_names(str(cfg.evaluation.get("_target_")))
        log.info("metrics:%s", metrics_table(metrics, out / "metrics.json", headline))
        if logger is not None:
            log_results(logger, metrics, out / "plots")
        return metrics
    finally:
        _finish_wandb()


def fit(cfg: DictConfig, datamodule, out: Path, *, callbacks=(), logger=None, **trainer_kwargs: Any):
    """Seed, build the model from the observations only, and train it; returns (model, minutes).

    An error raised inside an edited code region is recorded in ``<out>/code_error.json`` (for the
    sweeper's repair request) before it propagates.
    """
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from hydra_llm.code_edits.check_run import record_code_error

    pl.seed_everything(int(cfg.training.seed), workers=True, verbose=False)
    training = OmegaConf.to_container(cfg.training, resolve=True)
    # The observations are passed to the built partial, not through Hydra, which would turn the
    # Observations dataclass into a config.
    build_model = instantiate(cfg.model, _recursive_=False, _convert_="object", _partial_=True)
    model = build_model(observations=datamodule.observations, training=training)
    trainer = instantiate(
        cfg.trainer,
        callbacks=list(callbacks),
        logger=logger if logger is not None else False,
        default_root_dir=str(out),
        enable_progress_bar=bool(cfg.trainer.get("enable_progress_bar", True)) and not in_sweep(),
        **trainer_kwargs,
    )
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule)
    except Exception as err:
        record_code_error(err, out)
        raise
    return model, (time.perf_counter() - start) / 60.0


def metrics_table(metrics: Mapping[str, float], path: Path, headline: Sequence[str] = ()) -> str:
    """The run's metrics as an aligned table for the terminal, in :func:`metric_groups` under their
    titles (the ``headline`` metrics first)."""
    width = max((len(k) + 2 for k in metrics), default=6)
    rule = "  " + "-" * (width + 12)
    lines = ["", f"  {'metric':<{width}}  {'value':>10}", rule]
    for title, keys in metric_groups(metrics, headline):
        lines += [f"  {title}", *(f"    {key:<{width - 2}}  {metrics[key]:>10.4g}" for key in keys)]
    return "\n".join([*lines, rule, f"  saved: {path}", ""])


# Lines of Lightning's that say nothing about the run: advertisements for its cloud packages, the hint to
# launch through srun wherever SLURM is installed (a sweep's SLURM children run under it already), and a
# deprecation inside Lightning itself.
_LIGHTNING_TIPS = ("💡 Tip: ",)
_LIGHTNING_WARNINGS = (
    r"The `srun` command is available on your system but is not used",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_LIGHTNING_TIPS)


def quiet_duplicate_loggers() -> None:
    """Lightning's loggers print through their own handler and again through the root handler that
    Hydra configures; keep the root one (console and the job's log file), without Lightning's tips and
    the warnings of ``_LIGHTNING_WARNINGS``."""
    import warnings

    import lightning  # noqa: F401 (its import adds the handler removed here)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_a_tip not in rank_zero.filters:
        rank_zero.addFilter(_not_a_tip)
    for message in _LIGHTNING_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def evaluation_callbacks(cfg: DictConfig, observations, ground_truth, out: Path) -> list:
    """Lightning callbacks that evaluate during training (e.g. the R2 trajectory log).

    They are evaluation code: they hold the ground truth, the model never sees it. Each entry of
    ``evaluation.callbacks`` is a partial target called with the observations, ground truth and folder.
    """
    from hydra.utils import instantiate

    factories = cfg.evaluation.get("callbacks") or []
    return [
        instantiate(factory, _partial_=True)(
            observations=observations, ground_truth=ground_truth, out_dir=out
        )
        for factory in factories
    ]


def log_results(logger, metrics: Mapping[str, float], plots_dir: Path) -> None:
    """Final metrics and every plot: into W&B's run summary and images, else under ``eval/``."""
    plots = sorted(plots_dir.glob("*.png")) if plots_dir.is_dir() else []
    if type(logger).__name__ == "WandbLogger":
        from hydra_llm.wandb_runs import log_child_results

        log_child_results(logger.experiment, metrics, plots)
    else:
        logger.log_metrics({f"eval/{k}": v for k, v in metrics.items()})
    logger.save()


def _finish_wandb() -> None:
    """Close the W&B run so the next in-process job does not reuse it."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
