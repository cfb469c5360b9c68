"""LightningModules (one file per model family) and their layers. Models receive Observations only."""
