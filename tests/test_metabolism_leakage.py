"""No label leakage, by construction: the metabolism model's constructor gets Observations only, and its
module never names the ground-truth type. The experiments (garbage ground truth, planted leaks) on
phase 1 and both phase-2 strategies are in test_blindness.py."""

from __future__ import annotations

import inspect

import hydra_llm.models.metabolism as model_module
from hydra_llm.simulation.metabolism import MetabolismDataModule


def test_training_code_cannot_reach_types():
    signature = inspect.signature(model_module.MetabolismGNN.__init__)
    assert "ground_truth" not in signature.parameters
    source = inspect.getsource(model_module)
    assert "GroundTruth" not in source
    assert '"types"' not in source and "'types'" not in source
    dm = MetabolismDataModule(n_metabolites=8, n_reactions=6, n_frames=50)
    dm.setup()
    assert "types" not in dm.observations.extras
