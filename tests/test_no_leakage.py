"""Training never sees the ground truth, by construction: signatures, the Observations' fields, batches.
The experiments (garbage ground truth, planted leaks) on every training path are in test_blindness.py."""

from __future__ import annotations

import dataclasses
import inspect

import lightning.pytorch as pl
import pytest
import torch

from hydra_llm.blindness import truth_paths
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
        "smoothing_window",
        "edge_index",
        "external_input",
        "extras",
    }
    assert obs.edge_index is None and obs.external_input is None and dict(obs.extras) == {}
    assert truth_paths({"observations": obs}, dm.ground_truth) == []


def test_batches_hold_observations_only():
    dm = datamodule()
    truth = dm.release_ground_truth()
    model = fit(dm)
    assert truth_paths({"model": model, "datamodule": dm}, truth) == []
    for batch in dm.train_dataloader():
        assert set(batch) == {"activity", "derivative", "frame"}
        assert truth_paths({"batch": batch}, truth) == []
        assert torch.equal(batch["derivative"], dm.observations.derivative[batch["frame"]])
