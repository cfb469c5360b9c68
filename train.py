"""Entry point: ``python train.py`` (one run) or ``python train.py -m hydra/sweeper=llm_ucb`` (a sweep)."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    from hydra_llm.train import run

    return run(cfg)


if __name__ == "__main__":
    main()
