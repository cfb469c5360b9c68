"""Exact least-squares steps of the metabolism GNN: rate constants given the substrate function, and
the per-metabolite affine node targets of phase 2. Functions of the model, bound as its methods."""

from __future__ import annotations

import torch

from hydra_llm.chunks import in_chunks
from hydra_llm.models.metabolism.network import LN10, left_sums


@torch.no_grad()
def refit_rate_constants(model, chunk: int = 512) -> None:
    """Set k to its least-squares optimum given the current substrate function (variable projection).

    The prediction is linear in k: ``dc/dt - node = S diag(k) m(t)`` with ``m = v / k``, so over all
    training frames the normal equations are ``((S^T S) * (M^T M)) k = sum_t (S^T y_t) * m_t``
    (``*`` elementwise; M (T, R)). Solved with a small ridge towards the current k (so weakly identified
    reactions stay where they are) and kept above ``10 ** (k_floor_threshold - 1)``. This removes the slow
    k <-> substrate-shape direction that plain gradient descent crawls along.
    """
    n_rxn, n_train = model.n_reactions, model.n_train_frames
    gram = torch.zeros(n_rxn, n_rxn, dtype=torch.float64, device=model.log_k.device)
    rhs = torch.zeros(n_rxn, dtype=torch.float64, device=model.log_k.device)
    k = torch.exp(LN10 * model.log_k.double())
    weight = model.error_weight.double().sqrt()
    S = weight.unsqueeze(1) * model.stoichiometry.detach().double()  # rows scaled like the training loss
    for start in range(0, n_train, chunk):
        conc = model.activity[start : min(start + chunk, n_train)]
        m = model.reaction_rates(conc).double() / k
        y = model.derivative[start : start + len(conc)].double() - model.homeostasis_term(conc).double()
        gram += m.T @ m
        rhs += (((y * weight) @ S) * m).sum(0)
    system = gram * (S.T @ S)
    ridge = float(model.opts["k_least_squares_ridge"]) * float(system.diagonal().mean())
    system += ridge * torch.eye(n_rxn, dtype=system.dtype, device=system.device)
    solution = torch.linalg.solve(system, rhs + ridge * k)
    floor = 10.0 ** (float(model.opts["k_floor_threshold"]) - 1.0)
    model.log_k.copy_(torch.log10(solution.clamp_min(floor)).float())


@torch.no_grad()
def affine_node_targets(model) -> torch.Tensor:
    """Exact minimiser of the phase-2 data terms over free per-metabolite affine node terms.

    With ``h_i(c) = theta_i c / c_scale + beta_i`` the conservation and residual losses are linear least
    squares in the 2N unknowns (theta, beta), solved here over all training frames (normal equations, a
    tiny relative ridge). Conservation rows (``w^T (dc/dt - h) = 0``) carry no phase-1 error and pin the
    slopes; residual rows fill in what the conserved combinations leave free (most offsets).
    Returns (2, N, 2): targets [(theta, beta) per metabolite] and their scales.
    """
    o = model.opts
    n, t = model.n_metabolites, model.n_train_frames
    conc = model.activity[:t].double() / model.c_scale
    dcdt = model.derivative[:t].double()
    W = model.conservation_basis.double()
    gram = torch.zeros(2 * n, 2 * n, dtype=torch.float64, device=conc.device)
    rhs = torch.zeros(2 * n, dtype=torch.float64, device=conc.device)
    w_c = float(o["conservation_loss_weight"]) / model.conservation_scale
    if w_c > 0 and W.shape[1] > 0:
        # rows (t, k): [W_ik c_i(t), W_ik] . (theta, beta) = sum_i W_ik dc_i/dt(t)
        rows = torch.cat([conc.unsqueeze(1) * W.T.unsqueeze(0), W.T.unsqueeze(0).expand(t, -1, -1)], dim=-1)
        rows = rows.reshape(-1, 2 * n)
        gram += w_c * rows.T @ rows
        rhs += w_c * rows.T @ (dcdt @ W).reshape(-1)
    w_r = float(o["residual_supervision_weight"]) / model.residual_scale**2
    if w_r > 0:
        residual = dcdt - in_chunks(model.reaction_term, model.activity[:t], chunk=512 * n).double()
        # per-metabolite rows [c_i(t), 1] . (theta_i, beta_i) = residual_i(t): a 2x2 block each
        idx = torch.arange(n, device=conc.device)
        gram[idx, idx] += w_r * conc.pow(2).sum(0)
        gram[idx, idx + n] += w_r * conc.sum(0)
        gram[idx + n, idx] += w_r * conc.sum(0)
        gram[idx + n, idx + n] += w_r * t
        rhs[:n] += w_r * (conc * residual).sum(0)
        rhs[n:] += w_r * residual.sum(0)
    ridge = float(o["node_target_ridge"]) * float(gram.diagonal().mean().clamp_min(1e-30))
    solution = torch.linalg.solve(gram + ridge * torch.eye(2 * n, dtype=gram.dtype, device=gram.device), rhs)
    targets = torch.stack([solution[:n], solution[n:]], dim=1)  # (N, 2)
    scales = targets.std(0, keepdim=True).clamp_min(1e-12).expand(n, -1)
    return torch.stack([targets, scales]).float()


@torch.no_grad()
def refit_node_output(model, chunk: int = 256) -> None:
    """Set MLP_node's output layer to its least-squares optimum under the integrated conservation loss,
    given its hidden layers and the embeddings (variable projection, as :func:`refit_rate_constants`).

    The node term is ``h_i(c) = v . phi(c_i, a_i) + beta`` with ``phi`` the hidden layers' output, so over
    the whole training record the integrated conservation equations are linear in (v, beta)::

        w_k^T c(t) = y0_k + sum_i w_ki dt sum_{s<t} (v . phi(c_i(s), a_i) + beta)

    Each law's intercept ``y0_k`` (its start value, noisy) is projected out; a tiny relative ridge keeps the
    solve well posed. Needs ``node_form: mlp`` and at least one conservation law.
    """
    t = model.n_train_frames
    W = model.conservation_basis.double()
    hidden, last = model.MLP_node.net[:-1], model.MLP_node.net[-1]
    flows = []  # per frame and law, sum_i w_ki [phi(c_i), 1]: (T, K, H + 1)
    for start in range(0, t, chunk):
        conc = model.activity[start : min(start + chunk, t)]
        phi = hidden(model.node_inputs(conc, model.embedding)).double()
        phi = torch.cat([phi, torch.ones_like(phi[..., :1])], dim=-1)
        flows.append(torch.einsum("bnh,nk->bkh", phi, W))
    flow = torch.cat(flows)
    z = left_sums(flow, model.dt)
    y = model.activity[:t].double() @ W  # (T, K)
    z = z - z.mean(0)
    y = y - y.mean(0)
    gram = torch.einsum("tkh,tkg->hg", z, z)
    rhs = torch.einsum("tkh,tk->h", z, y)
    ridge = 1e-10 * float(gram.diagonal().mean().clamp_min(1e-30))
    solution = torch.linalg.solve(
        gram + ridge * torch.eye(len(gram), dtype=gram.dtype, device=gram.device), rhs
    )
    scale = model.node_amplification
    last.weight.copy_((solution[:-1] / scale).float().unsqueeze(0))
    last.bias.copy_((solution[-1:] / scale).float())
