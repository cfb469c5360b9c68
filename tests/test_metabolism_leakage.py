"""No label leakage: metabolite types (and every other hidden parameter) never reach training.

Proof by experiment: the whole task function (simulate -> phase 1 -> phase 2 -> evaluate) is run twice,
the second time with the GroundTruth replaced by garbage (shuffled types, random lambdas, baselines and
rate constants). The trained parameters must be bit-identical; only the metrics may differ.
Proof by construction: the model's constructor gets Observations only, and its module never names the
ground-truth type.
"""

from __future__ import annotations

import inspect
import json

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import hydra_llm.models.metabolism as model_module
from hydra_llm.simulation.base import GroundTruth
from hydra_llm.simulation.metabolism import MetabolismDataModule
from hydra_llm.train import run
from tests.test_metabolism_config import CONF_DIR, PHASE2_TINY, TINY_OVERRIDES


class GarbageTruthDataModule(MetabolismDataModule):
    """The same data, with every hidden parameter replaced by noise."""

    def simulate(self):
        obs, gt = super().simulate()
        gen = torch.Generator().manual_seed(123)
        garbage = {
            key: (
                value[torch.randperm(len(value), generator=gen)]
                if key == "types"
                else torch.rand(value.shape, generator=gen) * 3 - 2
            )
            for key, value in gt.tensors.items()
        }
        garbage["types"] = 1 - gt["types"]
        return obs, GroundTruth(tensors=garbage, meta=dict(gt.meta))


def _run(tmp_path, name: str, target: str | None):
    out = tmp_path / name
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                *TINY_OVERRIDES,
                *PHASE2_TINY,
                "training=metabolism_phase2",
                "training.coeff_embedding_aux=0.1",
                "training.rollout_loss_weight=0.5",
                f"paths.cache_dir={tmp_path / name}_cache",
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        if target is not None:
            cfg.simulation._target_ = target
    metrics = run(cfg)
    state = torch.load(out / "metabolism_phase2.ckpt", weights_only=False)["state_dict"]
    return metrics, state


def test_garbage_ground_truth_gives_bit_identical_training(tmp_path):
    metrics_a, state_a = _run(tmp_path, "true", None)
    metrics_b, state_b = _run(tmp_path, "garbage", f"{__name__}.GarbageTruthDataModule")
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    # training is blind to the truth, evaluation is not
    assert metrics_a["final_loss"] == metrics_b["final_loss"]
    assert metrics_a["rate_constants_R2"] != metrics_b["rate_constants_R2"]
    saved = json.loads((tmp_path / "true" / "metrics.json").read_text())
    assert saved["avg_slope_ratio"] == metrics_a["avg_slope_ratio"]


def test_training_code_cannot_reach_types():
    signature = inspect.signature(model_module.MetabolismGNN.__init__)
    assert "ground_truth" not in signature.parameters
    source = inspect.getsource(model_module)
    assert "GroundTruth" not in source
    assert '"types"' not in source and "'types'" not in source
    dm = MetabolismDataModule(n_metabolites=8, n_reactions=6, n_frames=50)
    dm.setup()
    assert "types" not in dm.observations.extras
