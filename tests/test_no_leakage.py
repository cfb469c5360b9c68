"""Training never sees the ground truth: by construction (signatures, objects) and by experiment
(training with the ground truth replaced by garbage, or removed, gives bit-identical parameters)."""

from __future__ import annotations

import dataclasses
import inspect

import lightning.pytorch as pl
import pytest
import torch

from hydra_llm.models.signal_gnn import SignalGNN
from hydra_llm.simulation.base import Observations
from hydra_llm.simulation.signal import SignalDataModule

SIM = dict(n_neurons=24, n_neuron_types=3, n_frames=400, burn_in_frames=50, noise_model_level=0.1, seed=11)
TRAINING = dict(
    n_epochs=2,
    batch_size=4,
    data_augmentation_loop=1,
    learning_rate_W_start=2e-3,
    learning_rate_start=1e-3,
    learning_rate_embedding_start=1e-3,
    coeff_W_L1=1e-5,
    coeff_edge_diff=10.0,
    coeff_edge_norm=1.0,
    coeff_phi_zero=1.0,
    seed=5,
)


def datamodule() -> SignalDataModule:
    dm = SignalDataModule(**SIM)
    dm.setup("fit")
    return dm


def fit(dm: SignalDataModule) -> SignalGNN:
    pl.seed_everything(123, verbose=False)
    model = SignalGNN(dm.observations, TRAINING)
    trainer = pl.Trainer(
        max_epochs=TRAINING["n_epochs"],
        accelerator="cpu",
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    return model


def storages(obj, seen=None) -> set[int]:
    """data_ptr of every tensor reachable from ``obj`` through attributes, dicts and sequences."""
    seen = set() if seen is None else seen
    found: set[int] = set()
    if id(obj) in seen:
        return found
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return {obj.untyped_storage().data_ptr()}
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, list | tuple | set):
        items = list(obj)
    elif isinstance(obj, torch.nn.Module | Observations) or dataclasses.is_dataclass(obj):
        items = [v for k, v in vars(obj).items() if k != "_trainer"]
    else:
        return found
    for item in items:
        found |= storages(item, seen)
    return found


def test_model_constructor_cannot_receive_ground_truth():
    params = inspect.signature(SignalGNN.__init__).parameters
    assert "ground_truth" not in params
    assert all("GroundTruth" not in str(p.annotation) for p in params.values())
    with pytest.raises(TypeError, match="must be an Observations"):
        SignalGNN(datamodule().ground_truth, TRAINING)


def test_observations_hold_no_hidden_parameter():
    dm = datamodule()
    obs = dm.observations
    names = {f.name for f in dataclasses.fields(Observations)}
    assert names == {
        "activity",
        "derivative",
        "dt",
        "n_train_frames",
        "edge_index",
        "external_input",
        "extras",
    }
    assert obs.edge_index is None and obs.external_input is None and dict(obs.extras) == {}
    truth_ptrs = storages(dict(dm.ground_truth.tensors))
    assert not storages(obs) & truth_ptrs


def test_model_and_batches_reference_no_ground_truth_tensor():
    dm = datamodule()
    truth_ptrs = storages(dict(dm.ground_truth.tensors))
    model = fit(dm)
    assert not storages(model) & truth_ptrs
    for batch in dm.train_dataloader():
        assert set(batch) == {"activity", "derivative", "frame"}
        assert not storages(batch) & truth_ptrs
        assert torch.equal(batch["derivative"], dm.observations.derivative[batch["frame"]])


def test_training_is_bit_identical_with_garbage_or_missing_ground_truth():
    reference = fit(datamodule())

    garbage = datamodule()
    garbage.ground_truth = garbage.ground_truth.garbage(seed=0)
    with_garbage = fit(garbage)

    missing = datamodule()
    del missing.ground_truth  # any read of it during training would raise AttributeError
    without = fit(missing)

    ref_state = reference.state_dict()
    assert ref_state.keys() == with_garbage.state_dict().keys() == without.state_dict().keys()
    for key, value in ref_state.items():
        assert torch.equal(value, with_garbage.state_dict()[key]), key
        assert torch.equal(value, without.state_dict()[key]), key
    assert not torch.equal(reference.W, torch.zeros_like(reference.W))  # training did move W
