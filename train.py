"""Entry point: ``python train.py`` (one run) or ``python train.py -m hydra/sweeper=llm_ucb`` (a sweep)."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float] | float:
    from hydra_llm.preflight import PreflightError
    from hydra_llm.train import in_sweep, optimized, run

    try:
        metrics = run(cfg)
    except PreflightError as err:
        if in_sweep():  # a failed node; the sweeper ran the same check before its first batch
            raise
        raise SystemExit(f"error: {err}") from None  # one line naming the setting, no traceback
    return optimized(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
