"""The fly visual system regime (Lappalainen et al. 2024): connectome, parameters, dynamics, stimuli."""

from hydra_llm.simulation.flyvis.datamodule import FlyvisDataModule

__all__ = ["FlyvisDataModule"]
