"""The metabolism GNN: learnable rate constants, a substrate MLP and a homeostasis MLP.

``network`` holds the parameters and equations, ``module`` the LightningModule that trains them in two
phases, ``losses`` and ``least_squares`` its loss terms and exact solves, ``conserved_types`` the search
for homeostatic types from the conservation laws, ``options`` its training options and schedules.
"""

from hydra_llm.models.metabolism.module import MetabolismGNN, fit_model
from hydra_llm.models.metabolism.network import conservation_basis
from hydra_llm.models.metabolism.options import trainer_settings, training_options

__all__ = [
    "MetabolismGNN",
    "conservation_basis",
    "fit_model",
    "trainer_settings",
    "training_options",
]
