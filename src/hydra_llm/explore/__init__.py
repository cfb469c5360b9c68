"""The exploration engine: tree + UCB, search space and validation, proposers, protocol files,
state/resume and reports. Independent of Hydra (the plugin adapts Hydra's launcher to it) and of
the simulation and model code."""
