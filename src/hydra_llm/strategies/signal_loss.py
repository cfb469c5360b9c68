"""The loss of one training batch of the signal GNN (an editable strategy).

``loss_terms(model, u, target)`` returns every loss term, already weighted; the training step sums
them and logs each under ``train/<name>``. ``model`` is the :class:`~hydra_llm.models.signal_gnn.SignalGNN`
being trained: its learned functions (``phi_of``, ``psi_of``, ``aggregate``), its weights ``W`` and its
training settings ``training_cfg``. It holds no ground truth.

Shapes: ``u`` and ``target`` (= du/dt) are (B, N): B frames of N neurons.
"""

from __future__ import annotations

import torch


# region: signal_loss
def loss_terms(model, u: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Prediction error plus the regularisers of the signal GNN (each weighted by its coefficient)."""
    cfg = model.training_cfg
    b = u.shape[0]
    # One psi call for u, u + d (monotonicity) and the anchor row; one phi call for u and u = 0.
    anchor = torch.full_like(u[:1], 2.0 * model.xnorm)
    psi_all = model.psi_of(torch.cat([u, u + 0.05 * model.xnorm, anchor], dim=0))
    phi_all = model.phi_of(torch.cat([u, torch.zeros_like(u[:1])], dim=0))
    psi_u = psi_all[:b]
    pred = phi_all[:b] + model.aggregate(psi_u)
    terms = {"prediction": torch.mean((pred - target) ** 2)}
    if cfg["coeff_W_L1"] > 0:
        terms["W_L1"] = cfg["coeff_W_L1"] * model.W.abs().sum()
    if cfg["coeff_edge_diff"] > 0:
        terms["edge_diff"] = cfg["coeff_edge_diff"] * torch.relu(psi_u - psi_all[b : 2 * b]).mean()
    if cfg["coeff_edge_norm"] > 0:
        terms["edge_norm"] = cfg["coeff_edge_norm"] * ((psi_all[2 * b] - 1.0) ** 2).mean()
    if cfg["coeff_phi_zero"] > 0:
        terms["phi_zero"] = cfg["coeff_phi_zero"] * (phi_all[b] ** 2).mean()
    return terms


# endregion
