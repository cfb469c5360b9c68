"""Training never sees the ground truth, on every training path, and the check bites.

For each path (signal, signal on a known graph, flyvis, metabolism phase 1, phase 2 learned, phase 2 by
the conservation solve, phase 2 by the integrated conservation equations),
:func:`hydra_llm.blindness.check` trains through ``train.run``'s own path twice, the second time with
garbage ground truth, and walks everything training holds. A clean run must be blind. Then a leak is
planted, and the same check must fail:

* ``observations``: the simulation copies a hidden tensor into ``Observations.extras``;
* ``datamodule``: the datamodule keeps the ground truth it hands to evaluation, so it is reachable
  from the Trainer (``trainer.datamodule``) and from the module (``module.trainer``);
* ``reads``: a callback that declares itself evaluation code (so the walk skips it) moves a parameter
  by a number computed from the truth: only the garbage comparison can see this one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import open_dict

from hydra_llm import blindness
from hydra_llm.simulation.base import GroundTruth, SimulationDataModule
from hydra_llm.simulation.flyvis import FlyvisDataModule
from hydra_llm.simulation.metabolism import MetabolismDataModule
from hydra_llm.simulation.signal import SignalDataModule
from tests.test_train_run import compose_quiet

FLYVIS_TINY = Path(__file__).parent / "data" / "flyvis_tiny_connectome.json"

SIGNAL = [
    "simulation.n_neurons=16",
    "simulation.n_neuron_types=2",
    "simulation.n_frames=200",
    "simulation.burn_in_frames=20",
    "training.n_epochs=1",
    "training.batch_size=4",
    "training.data_augmentation_loop=1",
]
METABOLISM = [
    "simulation=metabolism_homeostasis",
    "simulation.n_metabolites=12",
    "simulation.n_reactions=10",
    "simulation.n_frames=200",
    "model.hidden_dim_sub=8",
    "model.n_layers_sub=2",
    "model.hidden_dim_node=8",
]
PHASE2 = [
    *METABOLISM,
    "training.phase1.data_augmentation_loop=10",
    "training.data_augmentation_loop=2",
    "training.homeostasis_time_step=4",
]
FLYVIS = [
    "simulation=flyvis_synthetic",
    "simulation.connectome.source=file",
    f"simulation.connectome.path={FLYVIS_TINY}",
    "simulation.connectome.extent=1",
    "simulation.parameters.mode=random_trained_like",
    "simulation.n_frames=120",
    "simulation.n_ood_frames=20",
    "training.max_steps_per_epoch=8",
    "evaluation.callbacks.0.every_n_steps=4",
]
PATHS = {
    "signal": (SignalDataModule, SIGNAL),
    "signal_known_graph": (
        SignalDataModule,
        [*SIGNAL, "simulation.structure_known=true", "model.w_layout=edges"],
    ),
    "flyvis": (FlyvisDataModule, FLYVIS),
    "flyvis_embedding_snap": (
        FlyvisDataModule,
        [*FLYVIS, "training.embedding_snap_at=[0.5]", "training.embedding_snap_components=3"],
    ),
    "metabolism_phase1": (
        MetabolismDataModule,
        [*METABOLISM, "training=metabolism_phase1", "training.data_augmentation_loop=10"],
    ),
    "metabolism_phase2": (
        MetabolismDataModule,
        [*PHASE2, "training=metabolism_phase2", "training.coeff_embedding_aux=0.1"],
    ),
    "metabolism_phase2_conservation": (
        MetabolismDataModule,
        [
            *PHASE2,
            "training=metabolism_phase2_conservation",
            "model.node_form=affine",
            "model.embedding_dim=1",
        ],
    ),
    "metabolism_phase2_integrated": (
        MetabolismDataModule,
        [
            *PHASE2,
            "training=metabolism_phase2_integrated",
            "training.integrated_window=16",
            "training.node_least_squares_every=2",
        ],
    ),
}


class NudgeFromTruth(pl.Callback):
    """A planted leak that reads the answer during training: after every step it adds a multiple of the
    mean of a hidden tensor to the module's first parameter. It claims to be evaluation code."""

    holds_ground_truth = True

    def __init__(self, observations, ground_truth: GroundTruth, out_dir) -> None:
        self.value = float(next(iter(ground_truth.tensors.values())).float().mean())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            next(pl_module.parameters()).add_(1e-3 * self.value)


def compose_path(name: str, tmp_path: Path, leak: str | None = None):
    cfg = compose_quiet(tmp_path, *PATHS[name][1])
    if leak == "reads":
        with open_dict(cfg):
            callbacks = list(cfg.evaluation.get("callbacks") or [])
            callbacks.append({"_target_": f"{__name__}.NudgeFromTruth", "_partial_": True})
            cfg.evaluation.callbacks = callbacks
    return cfg


def plant(monkeypatch, regime: type[SimulationDataModule], leak: str) -> None:
    if leak == "observations":
        simulate = regime.simulate

        def leaky_simulate(self):
            observations, truth = simulate(self)
            hidden = [k for k in truth.tensors if k not in truth.meta.get("observed", ())]
            extras = {**observations.extras, "leak": truth[hidden[0]].clone()}
            return dataclasses.replace(observations, extras=extras), truth

        monkeypatch.setattr(regime, "simulate", leaky_simulate)
    elif leak == "datamodule":
        release = SimulationDataModule.release_ground_truth

        def keep_a_copy(self):
            self.kept = release(self)
            return self.kept

        monkeypatch.setattr(SimulationDataModule, "release_ground_truth", keep_a_copy)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_training_is_blind_and_each_planted_leak_is_caught(name, tmp_path, monkeypatch):
    clean = blindness.check(compose_path(name, tmp_path / "clean"), tmp_path / "clean" / "check")
    assert clean.ok, f"{name}: {clean}"

    for leak in ("observations", "datamodule", "reads"):
        with monkeypatch.context() as patch:
            plant(patch, PATHS[name][0], leak)
            report = blindness.check(compose_path(name, tmp_path / leak, leak), tmp_path / leak / "check")
        assert not report.ok, f"{name}: the planted leak {leak!r} was not caught"
        if leak == "observations":
            assert any(path.startswith("observations.extras['leak']") for path in report.reachable), report
        elif leak == "datamodule":
            assert any(".kept" in path for path in report.reachable), report
        else:
            assert report.differs and not report.reachable, report
