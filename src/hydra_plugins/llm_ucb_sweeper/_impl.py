"""The adapter between Hydra and :mod:`hydra_llm.explore`.

It parses the search space, builds each child's override list (search-space values, seeds and
``sweep_node.*`` metadata), launches batches through whatever ``hydra/launcher`` was chosen with a
growing ``initial_job_idx``, turns ``JobReturn`` objects into outcomes, and lets the engine handle
failures (a raising child, a NaN, a launcher that crashes).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hydra_llm.explore.child_output import to_job_log
from hydra_llm.explore.children import ChildOutcome, child_seeds, seed_overrides
from hydra_llm.explore.engine import ExplorationEngine
from hydra_llm.explore.engine_config import EngineConfig, SweepConfigError, SweepFailedError
from hydra_llm.explore.interrupts import InterruptGuard, SweepInterrupted, exit_now, watch_sweeper
from hydra_llm.explore.proposers.base import Proposer
from hydra_llm.explore.space import (
    SearchSpace,
    SearchSpaceError,
    edge_rounds,
    format_value,
    parse_space,
    to_override_strings,
)
from hydra_llm.explore.state import state_path
from hydra_llm.explore.sweep_folder import RESULTS_DIR
from hydra_llm.explore.tree import Node
from hydra_llm.files import atomic_write_text, disk_size, is_out_of_space, unwritable
from hydra_llm.printable import error_line, one_line
from hydra_llm.schemas.sweeper import CodeEditsConf, LLMUCBSweeperConf

log = logging.getLogger(__name__)
# A worker of a process pool died (os._exit, a signal, the OOM killer): the pool takes every running
# child down with it (loky's TerminatedWorkerError, concurrent.futures' BrokenProcessPool). So does a
# child that runs past joblib's hydra.launcher.timeout (TimeoutError): joblib stops the whole pool.
_BROKEN_POOL_ERRORS = ("TerminatedWorkerError", "BrokenProcessPool", "TimeoutError")
# A launcher's resource limit, told by the marks submitit and SLURM leave in a killed child's error,
# and the launcher key that sets it.
_LIMITS = (
    ("time limit", "timeout_min", ("timed-out", "(state: TIMEOUT)", "DUE TO TIME LIMIT")),
    ("memory limit", "mem_gb", ("(state: OUT_OF_MEMORY)", "oom-kill", "oom_kill")),
)
# The submitit launcher's counts and the least each allows (null keeps SLURM's default).
_LAUNCHER_MINIMA = {
    "timeout_min": 1,
    "cpus_per_task": 1,
    "mem_gb": 0,
    "gpus_per_node": 0,
    "tasks_per_node": 1,
    "nodes": 1,
    "array_parallelism": 1,
}
# The launchers' line per job (its overrides) and the LLM client's per request ("HTTP Request: POST
# ... 200 OK", "Retrying request ..."): the sweep prints one line per node and per batch, and keeps
# every call in exploration/llm.
_QUIET_LOGGERS = (
    "hydra._internal.core_plugins.basic_launcher",
    "hydra_plugins.hydra_joblib_launcher._core",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
    "httpx",
    "httpx2",  # the HTTP client of openai 3.x
    "openai",
)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _objective(settings: LLMUCBSweeperConf, regime: Mapping[str, Any]) -> dict[str, Any]:
    """The objective's fields: the sweeper's, each null one filled from the regime's
    ``exploration.objective`` (a field null in both keeps the built-in objective's value)."""
    given = {k: v for k, v in vars(settings.objective).items() if v is not None}
    return {**dict(regime.get("objective") or {}), **given}


_REFUSALS = (ValueError, TypeError, KeyError, FileNotFoundError)  # what a task's preflight raises


def _refusal(check: Any, config: DictConfig) -> str | None:
    """The one-line error with which the task's preflight ``check`` refuses ``config``, or None."""
    try:
        check(config)
    except _REFUSALS as err:
        return one_line(err, 1000)
    return None


def _checked(check: Any, config: DictConfig, where: str) -> Any:
    """What the task's preflight ``check`` returns for ``config``; its refusal as one line after ``where``."""
    try:
        return check(config)
    except _REFUSALS as err:
        raise SweepConfigError(f"{where}: {one_line(err, 1000)}") from None


def _names_another_key(error: str, key: str, keys: Sequence[str]) -> bool:
    """Whether ``error`` names one of ``keys`` other than ``key``, in full or by its last part."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", error))
    others = [k.lstrip("+") for k in keys if k != key]
    return any(k in words or k.rsplit(".", 1)[-1] in words for k in others)


class LLMUCBSweeperImpl:
    """The sweeper's settings and work; ``outer`` is the registered Sweeper (validate_batch_is_legal)."""

    def __init__(self, outer: Any) -> None:
        self.outer = outer
        self.returns: list[list[JobReturn]] = []
        self.space: Any = None
        self.code_editor: Any = None  # set when the sweep edits code: a node's version -> its folder
        self._composed: set[tuple[Any, ...]] = set()
        self._task_check: Any = None  # the config's ``preflight`` function, when it names one

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.outer.hydra_context = hydra_context
        self.outer.config = config
        self.outer.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=RecordingTask(task_function), config=config
        )
        # Hydra's joblib launcher passes these keyword arguments to joblib.Parallel. Each pool worker
        # watches the sweeper from its start, not from its first child: a worker that never got one
        # (a batch smaller than n_jobs) would otherwise outlive a SIGKILLed sweeper, at times for good.
        joblib_kwargs = getattr(self.outer.launcher, "joblib", None)
        if isinstance(joblib_kwargs, dict):
            joblib_kwargs.setdefault("initializer", watch_sweeper)
        self.config = config
        # ``hydra.sweeper`` as its schema's dataclass: typed and checked when Hydra composed it.
        self.settings: LLMUCBSweeperConf = OmegaConf.to_object(config.hydra.sweeper)

    # ------------------------------------------------------------------ sweep
    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        """Run the exploration; a bad setting, a stopped sweep, a full disk under the sweep's own files
        or a Ctrl-C before the first batch ends the process with one line."""
        # A log file on a full disk would print a traceback for every line logged; the full disk is
        # reported once, below.
        raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False
        try:
            return self._sweep(arguments)
        except (SweepConfigError, SearchSpaceError, SweepFailedError) as err:
            print(f"[llm_ucb] {err}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        except OSError as err:
            if not is_out_of_space(err):
                raise
            # Every file of the sweep is written atomically: what is on disk is what was saved before.
            print(
                f"[llm_ucb] stopping: a disk is full ({one_line(err, 300)}) while the sweep wrote its "
                f"files in {self.config.hydra.sweep.dir}; what was saved before stays; free space, then "
                "continue with hydra.sweeper.resume=true",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1) from None
        except KeyboardInterrupt:  # Ctrl-C before the batch loop (imports, preflight): its guard is not up
            saved = state_path(Path(str(self.config.hydra.sweep.dir)))
            then = (
                f"state saved in {saved}; continue with hydra.sweeper.resume=true"
                if saved.is_file()
                else "nothing was written"
            )
            print(f"[llm_ucb] stopped by SIGINT before the first batch: {then}", file=sys.stderr, flush=True)
            raise SystemExit(128 + signal.SIGINT) from None
        finally:
            logging.raiseExceptions = raise_exceptions

    def _sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # joblib's resource tracker (a process that shares the terminal) cleans up after a stopped sweep
        # and warns of "leaked semlock objects" after the sweep's own last line; it inherits this.
        os.environ["PYTHONWARNINGS"] = ",".join(
            filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:resource_tracker:UserWarning"])
        )
        config, settings = self.config, self.settings
        regime = _plain(OmegaConf.select(config, "exploration", default=None)) or {}
        # The sweep's own settings first (well under a second), then the task's preflight, which
        # imports the training stack (seconds); nothing is written before both have passed.
        self.space, space_record = self._space(regime, arguments)
        check_launcher(config)
        check_slurm(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if problem := unwritable(sweep_dir):
            raise SweepConfigError(f"hydra.sweep.dir={sweep_dir}: {problem}; choose a folder you can write")
        objective = _objective(settings, regime)
        engine_config = EngineConfig.from_settings(settings, objective=objective)
        proposer = self._proposer(config.hydra.sweeper.proposer)
        _check_memory_caps(proposer, config.hydra.sweeper)
        code_editor = self.code_editor = self._code_editor(settings.code_edits, proposer, sweep_dir)
        self._preflight(engine_config)
        self._check_metric(engine_config.objective.metric, given=settings.objective.metric is not None)
        self.seed_keys = engine_config.seed_keys
        self.metric = engine_config.objective.metric
        self.sweep_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.hydra.job.name}-{sweep_dir.name}")
        summary = {
            "n_iterations": settings.n_iterations,
            "n_parallel": settings.n_parallel,
            "n_iter_block": settings.n_iter_block,
            "slot_roles": [str(role) for role in settings.slot_roles],
            "objective": objective,
            **space_record,
        }
        engine = ExplorationEngine(
            engine_config,
            self.space,
            proposer,
            self._launch,
            sweep_dir,
            check_child=self._check_child,
            check_batch=lambda simulation, first: self._batch_refusal(
                engine_config, simulation, first, "the block's first batch"
            ),
            protocol=self._protocol_text(settings.protocol or regime.get("protocol")),
            sweep_id=self.sweep_id,
            name=str(config.hydra.job.name),
            resume=settings.resume,
            proposer_note=getattr(proposer, "choice_note", None)
            or getattr(proposer, "name", type(proposer).__name__),
            after_batch=self._wandb_hook(sweep_dir, summary),
            code_editor=code_editor,
        )
        self.sweep_id = engine.state.sweep_id  # a resumed sweep keeps its W&B group
        OmegaConf.save(config, sweep_dir / "multirun.yaml")  # after the folder's lock is ours
        try:
            with InterruptGuard(on_interrupt=engine.interrupted):
                engine.run()
        except SweepInterrupted as stop:
            # The state on disk is consistent; exit without waiting for launcher workers (they watch
            # this process and stop by themselves).
            exit_now(
                stop.exit_code,
                f"[llm_ucb] stopped by {stop}: state saved in {sweep_dir / 'exploration'}; continue with "
                "hydra.sweeper.resume=true",
            )
        return self.returns

    def _space(
        self, regime: Mapping[str, Any], arguments: list[str]
    ) -> tuple[SearchSpace, dict[str, dict[str, str]]]:
        """The search space and the ``params`` / ``block_params`` it was parsed from.

        Both empty (and no sweep on the command line): the regime's, from the task config's
        ``exploration`` node; an empty space after that is an error (the sweep would only replicate).
        """
        record = {"params": dict(self.settings.params), "block_params": dict(self.settings.block_params)}
        space = self._parse(record, arguments)
        if not space.params and not space.block_params and regime:
            record = {k: dict(regime.get(k) or {}) for k in ("params", "block_params")}
            space = self._parse(record, arguments)
        if not space.params and not space.block_params:
            raise SweepConfigError(
                "hydra.sweeper.params: the search space is empty, so the sweep could only repeat the root "
                "config; declare hydra.sweeper.params / block_params (Hydra sweep syntax, e.g. "
                "training.lr='tag(log, interval(1e-4, 1e-2))'), choose an experiment=..., or a regime "
                "whose exploration/ config declares a space"
            )
        return space, record

    def _wandb_hook(self, sweep_dir: Path, summary: Mapping[str, Any]) -> Any:
        """After each batch, the sweep-level W&B run (when the task logs to W&B and W&B is not off);
        ``summary``: the settings it records as its config."""
        from hydra_llm.wandb_runs import wandb_logger

        logger = wandb_logger(self.config)
        if logger is None:
            return None
        mode = str(os.environ.get("WANDB_MODE") or OmegaConf.select(logger, "mode", default="offline"))
        if mode == "disabled":
            return None
        from hydra_llm.explore.reports import best_so_far
        from hydra_llm.wandb_runs import SweepRun

        wandb_run = SweepRun(
            project=str(logger.get("project") or "hydra-llm"),
            group=self.sweep_id,
            mode=mode,
            folder=sweep_dir / "exploration",
            config=dict(summary),
        )
        metric = self.metric

        def update(state: Any) -> None:
            wandb_run.group = self.sweep_id  # a resumed sweep keeps its first id
            best = [top.mean(metric) if top is not None else float("nan") for top in best_so_far(state.nodes)]
            pictures = sorted((sweep_dir / "exploration" / "tree").glob("ucb_tree_iter_*.png"))
            wandb_run.update(
                [n.to_dict() for n in state.nodes], metric, best, pictures[-1] if pictures else None
            )

        return update

    def _code_editor(self, conf: CodeEditsConf, proposer: Proposer, sweep_dir: Path) -> Any:
        """The code editor when ``hydra.sweeper.code_edits.enabled`` (checked before any child runs)."""
        if not conf.enabled:
            return None
        from hydra_llm.code_edits.regions import RegionError
        from hydra_llm.code_edits.review import CodeEditor, CodeEditSettings, client_completer
        from hydra_llm.explore.proposers.llm import LLMProposer

        key = "hydra.sweeper.code_edits"
        if not isinstance(proposer, LLMProposer):
            raise SweepConfigError(
                f"{key}.enabled=true needs the llm proposer (hydra/sweeper/proposer=llm, or auto with an "
                "endpoint configured); the rules proposer writes no code"
            )
        code = OmegaConf.select(self.config, "code", default=None)
        if not OmegaConf.is_dict(code) or "dir" not in code or "check" not in code:
            raise SweepConfigError(
                f"{key}.enabled=true: the task config has no `code` node with `dir` and `check` (see "
                "conf/train.yaml); the task must call hydra_llm.code_edits.loader.use_version(cfg.code.dir)"
            )
        regime = _plain(OmegaConf.select(self.config, "exploration.code", default=None)) or {}
        modules = tuple(conf.modules or regime.get("modules") or ())
        if not modules:
            raise SweepConfigError(
                f"{key}.modules: empty, and the regime declares none (exploration.code.modules); allowed: "
                "dotted names of modules with '# region: <name>' blocks, e.g. "
                "[hydra_llm.strategies.signal_loss]"
            )
        limits = {name: getattr(conf, name) for name in ("max_reasks", "max_repairs", "max_edits")}
        for name, value in limits.items():
            if value < int(name == "max_edits"):
                raise SweepConfigError(
                    f"{key}.{name}: {value}; allowed: an integer >= {int(name == 'max_edits')}"
                )
        if not (conf.check_timeout_s > 0 and math.isfinite(conf.check_timeout_s)):  # NaN fails both
            raise SweepConfigError(
                f"{key}.check_timeout_s: {conf.check_timeout_s}; allowed: a finite number of seconds > 0"
            )
        self._check_overrides = [str(o) for o in conf.check_overrides or regime.get("check_overrides") or []]
        self._check_timeout = conf.check_timeout_s
        editor_settings = CodeEditSettings(modules=modules, **limits)
        try:
            completer = client_completer(lambda: proposer.client)
            return CodeEditor(editor_settings, sweep_dir / "exploration", completer, self._run_code_check)
        except RegionError as err:
            raise SweepConfigError(f"{key}.modules: {err}") from None

    def _run_code_check(self, folder: Path, simulation: Mapping[str, Any]) -> dict[str, Any]:
        """Run a code version's import, smoke and blindness checks: the task's entry point on the tiny
        regime with ``code.check=true``, in a process without the environment's secrets."""
        from hydra_llm.code_edits.check_run import CHECK_FILE
        from hydra_llm.llm.redact import environment_without_secrets

        run_dir = folder / "check"
        overrides = [
            *self.space.fixed,
            *to_override_strings(dict(simulation)),
            *self._check_overrides,
            f"code.dir={format_value(str(folder))}",
            "code.check=true",
            f"hydra.run.dir={format_value(str(run_dir))}",
        ]
        command = [sys.executable, *_entry_command(), *_last_per_key(overrides)]
        env = environment_without_secrets()
        env.pop("HYDRA_LLM_SWEEPER_PID", None)
        try:
            done = subprocess.run(
                command,
                cwd=str(self.config.hydra.runtime.cwd),
                env=env,
                capture_output=True,
                text=True,
                timeout=self._check_timeout,
            )
        except subprocess.TimeoutExpired:
            return {
                "ok": False,
                "stage": "run",
                "error": f"the check run took more than {self._check_timeout:g} s",
            }
        (folder / "check.log").write_text((done.stdout + done.stderr)[-20000:], encoding="utf-8")
        try:
            return json.loads((run_dir / CHECK_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            lines = (done.stderr or done.stdout).strip().splitlines()
            return {
                "ok": False,
                "stage": "run",
                "error": f"the check run exited with code {done.returncode}: {lines[-1] if lines else ''}",
            }

    def _preflight(self, engine_config: EngineConfig) -> None:
        """The task's own cheap check (the config's ``preflight`` key, a dotted path to a function of
        the composed config) on the root config, on each slot of the first batch and the room for the
        records its children make at once (:meth:`_batch_refusal`), then on the configs that the search
        space's edge values compose (every choice, each interval's two ends: :func:`edge_rounds`), as
        a child composes them, before any child runs."""
        target = OmegaConf.select(self.config, "preflight", default=None)
        if not target:
            return
        from hydra.utils import get_method

        check = self._task_check = get_method(str(target))
        _checked(check, self.config, "preflight")
        refusal = self._batch_refusal(engine_config, {}, 1, "the first batch")
        if refusal:
            raise SweepConfigError(f"preflight: {refusal}")
        specs = [*self.space.params, *self.space.block_params]
        for values in edge_rounds(specs):
            if self._edge_refusal(check, values) is None:
                continue
            # Split the round: a value refused alone stops the sweep, unless the refusal names another
            # key of the space (a proposal may change that key too); two values that clash pass.
            for key, value in values.items():
                error = self._edge_refusal(check, {key: value})
                if error and not _names_another_key(error, key, [spec.key for spec in specs]):
                    raise SweepConfigError(
                        f"search space: {key} allows {format_value(value)}, which the run refuses: "
                        f"{error}; take it out of the key's choice or interval"
                    )

    def _edge_refusal(self, check: Any, values: Mapping[str, Any]) -> str | None:
        """The preflight's refusal of the root config with ``values`` set, as a child's overrides set
        them, or None."""
        overrides = [*self.space.fixed, *to_override_strings(values)]
        try:
            config = self.outer.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except Exception as err:  # Hydra's composition errors have no common base class
            return one_line(err, 300) or type(err).__name__
        return _refusal(check, config)

    def _batch_refusal(
        self, config: EngineConfig, simulation: Mapping[str, Any], first_iteration: int, batch: str
    ) -> str | None:
        """Why the batch that starts at ``first_iteration`` on the block-level values ``simulation``
        (the root config's when empty) cannot start, or None: the task's preflight refuses a slot's
        config (its seeds and ``slot_params``), or the records its children make at once do not fit in
        the cache folder together. The run's own preflight finds room for one record, but with one
        simulation seed per slot (``simulation_seed=slot``; per iteration every record is new) each
        child records its own. Records are counted for a task whose check returns a DataModule with
        ``record_bytes`` above 0 (flyvis: memory-mapped records of GB); those in the cache count for
        nothing. The first batch is checked before the sweep starts, a block's when it changes the
        simulation (the proposer's ``next_simulation``)."""
        check = self._task_check
        if check is None:
            return None
        loader = self.outer.hydra_context.config_loader
        records: dict[Path, int] = {}
        folder = None
        for slot in range(config.n_parallel):
            seeds = child_seeds(config, first_iteration + slot, slot)
            seed = {config.seed_keys[k]: v for k, v in seeds.items() if k == "simulation"}
            values = {**simulation, **config.slot_values(slot), **seed}
            overrides = [*self.space.fixed, *to_override_strings(values)]
            try:
                composed = loader.load_sweep_config(self.config, overrides)
            except Exception as err:  # Hydra's composition errors have no common base class
                return f"{batch}'s slot {slot}: {one_line(err, 300) or type(err).__name__}"
            try:
                datamodule = _checked(check, composed, f"{batch}'s slot {slot}")
            except SweepConfigError as err:
                return str(err)
            size = getattr(datamodule, "record_bytes", lambda: 0)()
            path = datamodule.cache_path(datamodule.cache_dir) if size else None
            if path is not None and not path.is_file():
                records[path], folder = size, Path(str(datamodule.cache_dir))
        if folder is None:  # all cached, no cache folder, or records of no note
            return None
        need, free = sum(records.values()), shutil.disk_usage(folder).free
        if need <= free:
            return None
        shared = {"slot": "one record per slot", "iteration": "one record per child"}
        return (
            f"{batch}'s {config.n_parallel} children record {len(records)} simulations at once in "
            f"paths.cache_dir={folder} ({disk_size(need)}, {disk_size(free)} free; "
            f"hydra.sweeper.simulation_seed={config.simulation_seed}: "
            f"{shared.get(str(config.simulation_seed), 'one record for every child')}); "
            "free space, set paths.cache_dir (or $HYDRA_LLM_CACHE) to another disk, lower "
            "hydra.sweeper.n_parallel or simulation.n_frames, or share one record with "
            "hydra.sweeper.simulation_seed=fixed"
        )

    def _check_metric(self, metric: str, given: bool) -> None:
        """Stop before the first batch when the objective metric is none of the task's metrics (the
        config's ``metric_names`` key, a dotted path to a function of the composed config that returns
        them, or None when they are known only once a run ends). ``given``: the sweeper's own
        ``objective.metric`` set it, not the regime's ``exploration.objective``."""
        from hydra.utils import get_method

        from hydra_llm.schemas.evaluation import is_metric, unknown_metric

        target = OmegaConf.select(self.config, "metric_names", default=None)
        names = get_method(str(target))(self.config) if target else None
        if names is not None and not is_metric(metric, names):
            key = "hydra.sweeper.objective.metric" if given else "exploration.objective.metric"
            raise SweepConfigError(unknown_metric(key, metric, names))

    def _parse(self, record: Mapping[str, Mapping[str, str]], arguments: list[str]) -> SearchSpace:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params, block_params = record["params"], record["block_params"]
        # A sweep on the command line joins params: its default is its value in the config too.
        overrides = OverridesParser.create().parse_overrides(arguments)
        swept = [o.get_key_element() for o in overrides if o.is_sweep_override()]
        keys = [*params, *block_params, *swept]
        return parse_space(params, block_params, arguments, self._defaults(keys))

    def _defaults(self, keys: Sequence[str]) -> dict[str, Any]:
        """Each key's value in the composed root config; a config group gives its selected option."""
        choices = self.config.hydra.runtime.choices
        out: dict[str, Any] = {}
        missing = object()
        for key in keys:
            if key in choices:
                out[key] = choices[key]
                continue
            value = OmegaConf.select(self.config, key.lstrip("+"), default=missing)
            if value is missing and not key.startswith("+"):
                raise SweepConfigError(
                    f"hydra.sweeper.params/block_params: {key} is not a key of the composed config "
                    "(check the spelling, or prefix it with + to add a new key)"
                )
            out[key] = None if value is missing else _plain(value)
        return out

    @staticmethod
    def _proposer(node: DictConfig) -> Proposer:
        from hydra.errors import InstantiationException

        try:
            proposer = instantiate(node)
        except InstantiationException as err:  # Hydra wraps the constructor's own check
            first = (str(err.__cause__ or err).strip().splitlines() or [type(err).__name__])[0]
            raise SweepConfigError(f"hydra.sweeper.proposer: {first}") from None
        if not isinstance(proposer, Proposer):
            raise SweepConfigError(
                f"hydra.sweeper.proposer: {type(proposer).__name__} is not a Proposer; "
                "allowed: hydra/sweeper/proposer=rules | llm | auto, or a _target_ building a Proposer"
            )
        return proposer

    def _protocol_text(self, path: str | None) -> str:
        """The protocol file's text; a relative ``path`` is looked for under the folder the sweep was
        started from, then under the app's own folder (the one above its primary config folder, where
        ``instructions/`` ships), so that ``python /path/to/train.py -m ...`` works from anywhere."""
        if not path:
            return ""
        roots = [Path(str(self.config.hydra.runtime.cwd))]
        roots += [
            Path(str(source.path)).parent
            for source in self.config.hydra.runtime.config_sources
            if source.provider == "main" and source.schema == "file"
        ]
        candidates = [Path(path)] if Path(path).is_absolute() else [root / path for root in roots]
        for candidate in candidates:
            if candidate.is_file():
                try:
                    return candidate.read_text(encoding="utf-8")
                except UnicodeDecodeError as err:
                    raise SweepConfigError(
                        f"hydra.sweeper.protocol: {candidate} is not UTF-8 text (byte "
                        f"{err.object[err.start]:#04x} at position {err.start}); save it as UTF-8"
                    ) from None
        looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
        raise SweepConfigError(f"hydra.sweeper.protocol: {path!r} is not a file (looked at {looked})")

    # ------------------------------------------------------------------ children
    def overrides(self, child: Node) -> list[str]:
        """The child's Hydra overrides: fixed CLI values, block-level and training values, seeds, metadata.

        Only numbers and the sanitised sweep id travel as ``sweep_node.*`` overrides; free text (the
        strategy, the hypothesis) stays in ``exploration/children/<job>.json``, which the child reads.
        """
        values = {**child.config, **seed_overrides(child, self.seed_keys)}
        code_dir = self.code_editor.folder(child.code_version) if self.code_editor is not None else ""
        code = [f"code.dir={format_value(code_dir)}"] if code_dir else []
        meta = {
            "sweep_id": self.sweep_id,
            "node": child.id,
            "parent": child.parent,
            "block": child.block,
            "slot": child.slot,
        }
        return [
            *self.space.fixed,
            *to_override_strings(values),
            *code,
            *(f"++sweep_node.{k}={format_value(v)}" for k, v in meta.items()),
        ]

    def _check_child(self, child: Node) -> str | None:
        """Compose the child's config once per override *shape* (Hydra's validate_batch_is_legal).

        Values were already checked against the search space, so a child whose override keys and
        block-level values were composed before cannot fail differently; composing costs ~0.3 s.
        """
        simulation = tuple(sorted(to_override_strings(child.simulation)))  # hashable, lists included
        shape = (tuple(sorted(child.overrides)), simulation)
        if shape in self._composed:
            return None
        try:
            self.outer.validate_batch_is_legal([self.overrides(child)])
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return f"the child config does not compose: {first}"
        self._composed.add(shape)
        return None

    def _launch(self, children: Sequence[Node]) -> list[ChildOutcome]:
        batch = [self.overrides(c) for c in children]
        try:
            returns = list(self.outer.launcher.launch(batch, initial_job_idx=children[0].job_num))
        except Exception as err:
            # A hard crash (a killed worker, a SLURM time or memory limit) takes the whole launch()
            # down; the children that finished left their result on disk, so only the others fail.
            outcomes = self._recover(children, err)
        else:
            self.returns.append(returns)
            outcomes = [outcome(r, self.metric) for r in returns]
        settings = limit_settings(self.config.hydra.launcher)
        return [replace(o, error=limit_reached(o.error, settings)) if o.error else o for o in outcomes]

    def _recover(self, children: Sequence[Node], err: Exception) -> list[ChildOutcome]:
        """Each child's own record; the others failed. When a process pool broke (joblib), a child
        without a record may be a batch mate killed with the pool: it is marked ``lost`` so the
        engine runs it again alone. Elsewhere (SLURM) children are separate jobs and fail by
        themselves."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        reason = error_line(err, 1000)
        timeout = OmegaConf.select(self.config.hydra.launcher, "timeout", default=None)
        if type(err).__name__ == "TimeoutError" and timeout is not None:  # joblib's says nothing more
            reason = f"time limit reached (hydra.launcher.timeout={timeout} s per child): {reason}"
        pool_broke = type(err).__name__ in _BROKEN_POOL_ERRORS
        outcomes = []
        for child in children:
            recorded = read_result(sweep_dir, child.job_num, self.metric)
            if recorded is None:
                recorded = ChildOutcome("failed", error=f"launcher error: {reason}"[:1000], lost=pool_broke)
            outcomes.append(recorded)
        kept = sum(o.status == "completed" for o in outcomes)
        log.warning("launch() raised (%s); %d of %d children recovered", reason[:200], kept, len(children))
        return outcomes


class RecordingTask:
    """The user's task function, plus a record of its return value (or error) per job number.

    The record lands in ``<sweep dir>/exploration/results/<job_num>.json`` from inside the child, so
    the sweeper can tell which children finished when ``launcher.launch()`` itself raises.
    """

    def __init__(self, task_function: Any) -> None:
        self.task_function = task_function

    def __call__(self, cfg: DictConfig) -> Any:
        watch_sweeper()  # in a separate process: stop when the sweeper dies, ignore the terminal's Ctrl-C
        try:
            with to_job_log(HydraConfig.get().runtime.output_dir):  # the child's chatter, not the sweep's
                value = self.task_function(cfg)
        except Exception as err:  # an interrupt (a BaseException) is no result of the child
            _write_result({"status": "failed", "error": f"{type(err).__name__}: {err}"[:1000]})
            raise
        _write_result({"status": "completed", "value": _jsonable(value)})
        return value


def _last_per_key(overrides: Sequence[str]) -> list[str]:
    """``key=value`` overrides with only the last one of each key (Hydra refuses a config group
    chosen twice), in the order of their last appearance."""
    last: dict[str, str] = {}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        last.pop(key, None)
        last[key] = override
    return list(last.values())


def _entry_command() -> list[str]:
    """The script of this Hydra app and its config-location flags, to run it again as a single job."""
    flags = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
    argv, kept = sys.argv[1:], [sys.argv[0]]
    for i, arg in enumerate(argv):
        if arg.startswith(tuple(f"{f}=" for f in flags)):
            kept.append(arg)
        elif arg in flags and i + 1 < len(argv):
            kept += [arg, argv[i + 1]]
    return kept


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): number for k, v in value.items() if (number := _as_float(v)) is not None}
    number = _as_float(value)
    return number if number is not None else repr(value)[:200]


def _write_result(record: dict[str, Any]) -> None:
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    record["output_dir"] = str(hydra_cfg.runtime.output_dir)
    folder = Path(str(hydra_cfg.sweep.dir)) / RESULTS_DIR
    atomic_write_text(folder / f"{hydra_cfg.job.num}.json", json.dumps(record))


def read_result(sweep_dir: Path, job_num: int, metric: str) -> ChildOutcome | None:
    """The outcome a child recorded for itself, or None when it left no record (it never finished)."""
    path = sweep_dir / RESULTS_DIR / f"{job_num}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    output_dir = str(record.get("output_dir", ""))
    if record.get("status") != "completed":
        return _failed(str(record.get("error", "failed")), output_dir)
    return _from_value(record.get("value"), metric, output_dir)


def outcome(ret: JobReturn, metric: str) -> ChildOutcome:
    """A JobReturn as a ChildOutcome (a plain number is the ``metric``); never re-raises."""
    output_dir = ""
    if ret.hydra_cfg is not None:
        output_dir = str(OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default="") or "")
    if ret.status != JobStatus.COMPLETED:
        err = ret._return_value
        message = (
            f"{type(err).__name__}: {err}"
            if isinstance(err, BaseException)
            else f"job status {ret.status.name}"
        )
        return _failed(message[:1000], output_dir)
    return _from_value(ret._return_value, metric, output_dir)


def _plots(output_dir: str) -> tuple[str, ...]:
    return tuple(str(p) for p in sorted(Path(output_dir).glob("plots/*.png"))) if output_dir else ()


def setting_name(launcher: DictConfig, key: str) -> str:
    """The override that sets the launcher's ``key``: the key it takes it from (``resources.timeout_min``
    under the ``slurm`` preset) or the launcher's own key."""
    raw = OmegaConf.to_container(launcher, resolve=False)
    assert isinstance(raw, dict)
    source = re.fullmatch(r"\$\{([\w.]+)\}", str(raw.get(key)))
    return source.group(1) if source else f"hydra.launcher.{key}"


def limit_settings(launcher: DictConfig) -> dict[str, str]:
    """The override that sets each of the launcher's limits (:func:`setting_name`), as ``name=value``."""
    return {
        key: f"{setting_name(launcher, key)}={OmegaConf.select(launcher, key)}"
        for _, key, _ in _LIMITS
        if key in launcher
    }


def _check_memory_caps(proposer: Proposer, sweeper: DictConfig) -> None:
    """The LLM is told how many lines of working memory it may keep (``proposer.memory_max_lines``);
    the sweep keeps ``memory_max_lines``: what the model is told must hold."""
    told = OmegaConf.select(sweeper, "proposer.memory_max_lines", default=None)
    kept = int(sweeper.memory_max_lines)
    if getattr(proposer, "name", "") == "llm" and told is not None and int(told) > kept:
        raise SweepConfigError(
            f"hydra.sweeper.proposer.memory_max_lines={told} is above hydra.sweeper.memory_max_lines={kept}: "
            f"the model would be told it may keep {told} lines of memory and the sweep keeps {kept}; "
            f"allowed: at most {kept}"
        )


def check_launcher(config: DictConfig) -> None:
    """Raise :class:`SweepConfigError` for a setting of ``config.hydra.launcher`` that would fail the first
    batch: joblib's ``n_jobs`` of 0 or a ``timeout`` that is not above 0, or a submitit count
    (``_LAUNCHER_MINIMA``; under the ``slurm`` preset, from ``resources.*``) that is not an integer at
    least its least, named by the override that sets it."""
    from omegaconf.errors import OmegaConfBaseException

    launcher = config.hydra.launcher
    if "joblib" in str(launcher.get("_target_", "")).lower():
        if launcher.get("n_jobs") == 0:
            raise SweepConfigError(
                f"{setting_name(launcher, 'n_jobs')}=0: must be a nonzero integer (-1: one job per core)"
            )
        timeout = launcher.get("timeout")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):  # NaN fails both
            raise SweepConfigError(
                f"{setting_name(launcher, 'timeout')}={timeout}: must be a number of seconds > 0 per child "
                "(null: no limit)"
            )
    for key, low in _LAUNCHER_MINIMA.items():
        if key not in launcher:
            continue
        rule = f"must be an integer >= {low}"
        try:  # the launcher's schema types the value that an interpolation brings
            value = OmegaConf.select(launcher, key, default=None)
        except OmegaConfBaseException:
            raw = OmegaConf.select(config, setting_name(launcher, key), throw_on_resolution_failure=False)
            raise SweepConfigError(f"{setting_name(launcher, key)}={raw!r}: {rule}") from None
        if value is not None and value < low:
            raise SweepConfigError(f"{setting_name(launcher, key)}={value}: {rule}")


def check_slurm(config: DictConfig, timeout_s: float = 15.0) -> None:
    """Raise :class:`SweepConfigError` when ``config.hydra.launcher`` submits to SLURM from a machine
    where that cannot work: no ``sbatch`` on the PATH, or no controller that answers ``scontrol ping``
    within ``timeout_s`` (no cluster configured here, or it is down). Unchecked,
    every child of the first batch fails at ``sbatch`` and the sweep stops on its failure rate."""
    if "SlurmLauncher" not in str(config.hydra.launcher.get("_target_", "")):
        return
    choice = (
        OmegaConf.select(config, "hydra.runtime.choices.hydra/launcher", default=None) or "submitit_slurm"
    )
    fix = (
        "run the sweep where sbatch reaches the cluster (its login node; SLURM_CONF names its slurm.conf "
        "where it needs one), or choose hydra/launcher=joblib"
    )
    if shutil.which("sbatch") is None:
        raise SweepConfigError(f"hydra/launcher={choice}: sbatch is not on this machine's PATH; {fix}")
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return
    try:
        proc = subprocess.run([scontrol, "ping"], capture_output=True, text=True, timeout=timeout_s)
        said, why = f"{proc.stderr}\n{proc.stdout}", ""
        if proc.returncode == 0 or " is UP" in proc.stdout:  # one controller up (a backup may be down)
            return
    except subprocess.TimeoutExpired as err:  # e.g. no slurm.conf where SLURM_CONF says: it retries 60 s
        output = [
            o.decode(errors="replace") if isinstance(o, bytes) else o or "" for o in (err.stderr, err.stdout)
        ]
        said, why = "\n".join(output), f"no answer in {timeout_s:g} s"
    lines = [line.strip() for line in said.splitlines() if line.strip() and not line.strip().startswith("*")]
    line = next((x for x in lines if "fatal" in x), lines[0] if lines else "")
    told = "; ".join(one_line(x, 200) for x in (why, line) if x)
    raise SweepConfigError(
        f"hydra/launcher={choice}: the SLURM controller does not answer (scontrol ping: {told}); {fix}"
    )


def limit_reached(error: str, settings: Mapping[str, str]) -> str:
    """``error`` led by the launcher limit that killed the child (SLURM's or submitit's time or memory
    limit) and the setting behind it, so a report's reader sees why at once; at most 1,000 characters."""
    for limit, key, marks in _LIMITS:
        if any(mark in error for mark in marks):
            setting = f" ({settings[key]})" if key in settings else ""
            return f"{limit} reached{setting}: {error}"[:1000]
    return error[:1000]


def _failed(error: str, output_dir: str) -> ChildOutcome:
    return ChildOutcome("failed", error=error, output_dir=output_dir, plots=_plots(output_dir))


def _from_value(value: Any, metric: str, output_dir: str) -> ChildOutcome:
    """A task's return value: a dict of numbers (non-numbers dropped) or a number (the ``metric``)."""
    if isinstance(value, Mapping):
        metrics = {str(k): number for k, v in value.items() if (number := _as_float(v)) is not None}
    elif (number := _as_float(value)) is not None:
        metrics = {metric: number}
    else:
        return _failed(
            f"task returned {type(value).__name__}; expected a dict of floats or a float", output_dir
        )
    return ChildOutcome("completed", metrics=metrics, output_dir=output_dir, plots=_plots(output_dir))


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number
