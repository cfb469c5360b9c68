"""The phase-2 loss of the metabolism GNN (an editable strategy).

``phase2_losses(model, starts)`` returns every loss term of one batch, already weighted; the update
step sums them. ``model`` is the :class:`~hydra_llm.models.metabolism.MetabolismGNN` in phase 2:
its recorded concentrations ``activity`` (T, N) and their derivative ``derivative`` (T, N), the frozen
phase-1 reaction term, the homeostasis (node) term being learned, and its options ``opts``. It holds
no ground truth.

Shapes: ``starts`` (B,) are start frames; each term is a scalar tensor.
"""

from __future__ import annotations

import torch


# region: metabolism_phase2_loss
def phase2_losses(model, starts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rollout loss, residual supervision, conservation losses (derivative and integrated), node targets,
    offset penalty and the embedding auxiliary loss.

    Each data term is divided by a scale of the data it compares with: the variance of the phase-1
    residual (dc/dt minus the frozen reaction term), or for the conservation terms the mean square of
    the conserved combinations' derivative or change; so the weights compare like with like.
    """
    o = model.opts
    scale = model.residual_scale**2
    conc = model.activity[starts]
    losses: dict[str, torch.Tensor] = {}
    if o["rollout_loss_weight"] > 0:
        steps = model.current_time_step()
        window = model.window(starts, steps)
        states = model.rollout(conc, steps, detach_reactions=bool(o["separate_loss_components"]))
        err = (states[-1] - window[-1]) / (model.dt * steps)
        losses["rollout"] = o["rollout_loss_weight"] * err.pow(2).mean() / scale
    # with node targets the residual and conservation terms are already solved exactly (in the targets)
    direct = o["node_target_weight"] <= 0
    if direct and o["residual_supervision_weight"] > 0:
        with torch.no_grad():
            residual = model.derivative[starts] - model.reaction_term(conc)
        err = model.homeostasis_term(conc) - residual
        losses["residual"] = o["residual_supervision_weight"] * err.pow(2).mean() / scale
    if direct and o["conservation_loss_weight"] > 0 and model.conservation_basis.shape[1] > 0:
        # w^T S = 0: the projection of (dc/dt - node) needs no reaction term, so phase-1 errors vanish
        err = (model.derivative[starts] - model.homeostasis_term(conc)) @ model.conservation_basis
        losses["conservation"] = o["conservation_loss_weight"] * err.pow(2).mean() / model.conservation_scale
    if o["integrated_conservation_weight"] > 0 and model.conservation_basis.shape[1] > 0:
        # w^T (c(t+L) - c(t)) = dt sum_{s<t+L} w^T node(c(s)): the recorded states themselves, so the noise
        # stays white and nothing of phase 1 enters
        steps = int(o["integrated_window"])
        window = model.window(starts, steps)  # (L + 1, B, N)
        change = (window[-1] - window[0]) @ model.conservation_basis
        flow = model.dt * model.homeostasis_term(window[:-1].flatten(0, 1)).view_as(window[:-1]).sum(0)
        err = change - flow @ model.conservation_basis
        losses["integrated_conservation"] = (
            o["integrated_conservation_weight"] * err.pow(2).mean() / model.integrated_scale
        )
    if o["node_target_weight"] > 0:
        slope_offset = model.MLP_node(model.embedding)
        err = (slope_offset - model.node_targets[0]) / model.node_targets[1]
        weight = torch.tensor([1.0, float(o["node_target_offset_weight"])], device=err.device)
        losses["node_target"] = o["node_target_weight"] * (err.pow(2) * weight).mean()
    if o["coeff_offset_penalty"] > 0:
        # the per-metabolite constant part of the node output over the batch frames
        losses["offset"] = (
            o["coeff_offset_penalty"] * model.homeostasis_term(conc).mean(0).pow(2).mean() / scale
        )
    if o["coeff_embedding_aux"] > 0:
        losses["embedding_aux"] = o["coeff_embedding_aux"] * model.embedding_aux_loss()
    losses.update(model.regularisers(conc) if o["coeff_MLP_node_L1"] > 0 else {})
    return losses


# endregion
