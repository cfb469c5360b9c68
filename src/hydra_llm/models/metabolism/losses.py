"""The metabolism GNN's phase-1 loss, its regularisers and the phase-2 embedding auxiliary loss.

Functions of the model (a :class:`~hydra_llm.models.metabolism.MetabolismGNN`), bound as its methods;
every term comes back weighted. The phase-2 loss itself is the editable strategy
``hydra_llm.strategies.metabolism_phase2``. Shapes: ``starts`` (B,) start frames, ``conc`` (B, N).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def regularisers(model, conc: torch.Tensor) -> dict[str, torch.Tensor]:
    """The options' regularisers that are on (coefficient > 0), each a weighted scalar."""
    o = model.opts
    reg: dict[str, torch.Tensor] = {}
    if o["coeff_MLP_sub_diff"] > 0 or o["coeff_MLP_sub_norm"] > 0:
        c_e = conc[:, model.edge_met]
        s_e = model.edge_order.expand_as(c_e)
        if o["coeff_MLP_sub_diff"] > 0:
            # g must not decrease with concentration
            drop = F.relu(model.substrate_function(c_e, s_e) - model.substrate_function(1.05 * c_e, s_e))
            reg["sub_diff"] = o["coeff_MLP_sub_diff"] * drop.mean()
        if o["coeff_MLP_sub_norm"] > 0:
            one = torch.ones(1, device=conc.device)
            reg["sub_norm"] = (
                o["coeff_MLP_sub_norm"] * (model.substrate_function(one, one) - 1.0).pow(2).sum()
            )
    if o["coeff_MLP_node_L1"] > 0:
        reg["node_L1"] = o["coeff_MLP_node_L1"] * model.node_function(conc).abs().mean()
    if o["coeff_k_floor"] > 0:
        reg["k_floor"] = o["coeff_k_floor"] * F.relu(o["k_floor_threshold"] - model.log_k).pow(2).sum()
    if isinstance(model.stoichiometry, nn.Parameter):
        S = model.stoichiometry
        if o["coeff_S_L1"] > 0:
            reg["S_L1"] = o["coeff_S_L1"] * S.abs().mean()
        if o["coeff_S_integer"] > 0:
            reg["S_integer"] = o["coeff_S_integer"] * torch.sin(math.pi * S).pow(2).mean()
        if o["coeff_mass_conservation"] > 0:
            reg["mass_conservation"] = o["coeff_mass_conservation"] * S.sum(0).pow(2).mean()
    return reg


def phase1_losses(model, starts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Derivative loss (``time_step`` 1) or rollout loss, each error scaled by the model's error weight."""
    steps = int(model.opts["time_step"])
    conc = model.activity[starts]
    if steps == 1:
        err = model(conc) - model.derivative[starts]
    else:
        window = model.window(starts, steps)
        err = (model.rollout(conc, steps)[-1] - window[-1]) / (model.dt * steps)
    loss = (err.pow(2) * model.error_weight).mean()
    return {"prediction": loss, **regularisers(model, conc)}


def embedding_aux_loss(model) -> torch.Tensor:
    """Contrastive loss on the embeddings, weighted by how similar the *learned* response curves are
    (no labels). Pairs whose curves are closer than the ``embedding_aux_sigma_quantile`` quantile of all
    pairwise curve distances pull together; the others are pushed at least ``embedding_aux_margin``
    apart (in units of the embedding spread)."""
    o = model.opts
    with torch.no_grad():
        curves = model.response_curves(int(o["embedding_aux_grid_points"]))
        dist = torch.cdist(curves, curves)
        off_diagonal = dist[~torch.eye(len(dist), dtype=torch.bool, device=dist.device)]
        sigma = torch.quantile(off_diagonal, float(o["embedding_aux_sigma_quantile"]))
        weight = torch.exp(-(dist / sigma.clamp_min(1e-12)).pow(2))
    emb = model.embedding
    spread = emb.detach().std(0).norm().clamp_min(1e-3)
    d_emb = torch.cdist(emb, emb) / spread
    pull = weight * d_emb.pow(2)
    push = (1.0 - weight) * F.relu(float(o["embedding_aux_margin"]) - d_emb).pow(2)
    return (pull + push).mean()
