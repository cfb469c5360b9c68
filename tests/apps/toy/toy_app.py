"""A toy Hydra app for sweeper tests: a deterministic score with optional failure injection."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hydra_llm.files import atomic_write_text


def score(lr: float, width: int, act: str, regime: str, sim_seed: int, train_seed: int) -> float:
    """Peaks at lr=1e-3, width=8, act=relu; small seed-dependent jitter (deterministic)."""
    value = 1.0 - 0.08 * (math.log10(lr) + 3.0) ** 2 - 0.004 * (width - 8) ** 2
    value -= 0.0 if act == "relu" else 0.05
    value -= 0.0 if regime == "smooth" else 0.1
    return value + 0.01 * (((sim_seed * 7919 + train_seed * 104729) % 97) / 97.0 - 0.5)


def run(cfg: DictConfig):
    b = cfg.behaviour
    job = HydraConfig.get().job.num if HydraConfig.initialized() else -1
    out = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(".")
    if b.kill_at_job is not None and job == b.kill_at_job and not Path(b.kill_marker).exists():
        Path(b.kill_marker).write_text(str(job))
        os.kill(os.getpid(), signal.SIGKILL)
    if b.chatter:  # what Lightning, W&B and libraries print in a real child
        print("toy child chatter on stdout", flush=True)
        print("toy child warning on stderr", file=sys.stderr, flush=True)
        os.system("echo toy child subprocess output")
    if b.pid_dir is not None:
        atomic_write_text(Path(b.pid_dir) / f"{job}.pid", str(os.getpid()))  # never read half written
    end = time.monotonic() + float(b.sleep or 0.0)
    while time.monotonic() < end and not (b.release_file and Path(b.release_file).exists()):
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
    at_node = b.sleep_at_node is not None and cfg.sweep_node.node == b.sleep_at_node
    if (b.sleep_at_job is not None and job == b.sleep_at_job) or at_node:
        time.sleep(float(b.sleep_at_job_s))
    lr, width = float(cfg.training.lr), int(cfg.training.width)
    exit_node = b.exit_at_node is not None and cfg.sweep_node.node == b.exit_at_node
    if (b.exit_if_lr_above is not None and lr > b.exit_if_lr_above) or job == b.exit_at_job or exit_node:
        os._exit(3)
    if b.raise_if_lr_above is not None and lr > b.raise_if_lr_above:
        raise ValueError(f"lr {lr} too large for the toy task")
    if b.return_text:
        return "not a number"
    value = score(lr, width, cfg.training.act, cfg.simulation.regime, cfg.simulation.seed, cfg.training.seed)
    if b.nan_if_width is not None and width == b.nan_if_width:
        value = math.nan
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "plots" / "activity.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return {"score": value, "lr": lr, "width": float(width), "horizon": float(cfg.training.horizon)}


def slow_preflight(cfg: DictConfig) -> None:
    """A task preflight that takes its time (the Ctrl-C tests): it marks its start, then sleeps."""
    Path(cfg.behaviour.preflight_marker).write_text("started")
    time.sleep(60)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    return run(cfg)


if __name__ == "__main__":
    main()
