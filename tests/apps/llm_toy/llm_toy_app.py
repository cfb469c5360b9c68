"""A tiny Hydra app for the LLM proposer's sweep tests: a smooth score, a plot, an R2 trajectory.

With ``use_wandb: true`` every child also writes an offline W&B run under ``wandb_dir``, its config
built as ``train.py`` builds it (:func:`hydra_llm.train.loggable_config` plus the node record the
sweeper wrote), so a test can check that no secret reaches W&B.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

# A valid 1x1 PNG: what a vision-capable endpoint receives as the slot's plot.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6300010000000500010d0a2db40000000049454e44ae426082"
)


def score(lr: float, width: int, regime: str) -> float:
    """Peaks at lr=1e-3, width=8 (about 0.0 .. 1.0)."""
    value = 1.0 - 0.08 * (math.log10(lr) + 3.0) ** 2 - 0.004 * (width - 8) ** 2
    return value - (0.0 if regime == "smooth" else 0.1)


def run(cfg: DictConfig) -> dict[str, float]:
    out = Path(HydraConfig.get().runtime.output_dir)
    if cfg.fail_if_width is not None and int(cfg.training.width) == int(cfg.fail_if_width):
        raise ValueError(f"width {cfg.training.width} fails by request")
    value = score(float(cfg.training.lr), int(cfg.training.width), str(cfg.simulation.regime))
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "plots" / "activity.png").write_bytes(PNG_1X1)
    steps = [(i * 10, value * (1 - math.exp(-i))) for i in range(1, 6)]
    (out / "r2_trajectory.csv").write_text("step,score\n" + "".join(f"{s},{v:.4f}\n" for s, v in steps))
    if cfg.use_wandb:
        import wandb

        from hydra_llm.train import child_record, loggable_config

        config = loggable_config(cfg)
        config["sweep_node"] = child_record(cfg)
        (out / "wandb_config.json").write_text(json.dumps(config))  # what W&B was handed
        run_ = wandb.init(
            mode="offline",
            dir=str(cfg.wandb_dir),
            project="llm-toy",
            config=config,
            reinit="finish_previous",
        )
        try:
            run_.log({"score": value})
        finally:
            run_.finish()
    return {"score": value}


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    return run(cfg)


if __name__ == "__main__":
    main()
