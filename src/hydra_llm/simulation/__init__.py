"""Simulated regimes. Each produces :class:`Observations` (what an experimenter records) and
:class:`GroundTruth` (what is hidden). Models only ever receive Observations."""

from hydra_llm.simulation.base import GroundTruth, Observations, SimulationDataModule

__all__ = ["GroundTruth", "Observations", "SimulationDataModule"]
