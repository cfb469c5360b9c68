"""Entry point: ``python train.py`` (one run) or ``python train.py -m hydra/sweeper=llm_ucb`` (a sweep)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float] | float:
    from hydra_llm.cli import task_started
    from hydra_llm.files import is_out_of_space
    from hydra_llm.preflight import PreflightError
    from hydra_llm.simulation.base import DataError
    from hydra_llm.train import in_sweep, optimized, run

    task_started()
    try:
        metrics = run(cfg)
    except (PreflightError, DataError, OSError) as err:
        if in_sweep() or not (isinstance(err, PreflightError | DataError) or is_out_of_space(err)):
            raise  # in a sweep: a failed node (or a full disk, which stops the sweep)
        raise SystemExit(f"error: {err}") from None  # one line naming the setting, the file or the disk
    return optimized(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    from hydra_llm.cli import run_app

    run_app(main, Path(__file__).parent / "conf", sys.argv[1:])
