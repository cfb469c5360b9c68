"""The metabolism GNN: forward pass against a per-reaction oracle, phase 1 and phase 2 on tiny networks,
checkpoints, caching of phase 1 and option errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hydra_llm.evaluation.metabolism import evaluate, line_fits
from hydra_llm.models.lr_schedule import lr_factor
from hydra_llm.models.metabolism import MetabolismGNN, fit_model, training_options
from hydra_llm.simulation.base import Observations
from hydra_llm.simulation.metabolism import MetabolismDataModule

TINY_SIM = dict(
    n_metabolites=16,
    n_reactions=15,
    n_frames=400,
    delta_t=0.1,
    homeostatic_lambda_per_type=[0.01, 0.02],
    homeostatic_baseline_per_type=[4.0, 6.0],
    seed=2,
)
SMALL_ARCH = dict(hidden_dim_sub=16, n_layers_sub=3, hidden_dim_node=16, n_layers_node=2)


@pytest.fixture(scope="module")
def tiny():
    dm = MetabolismDataModule(**TINY_SIM)
    dm.setup()
    return dm.observations, dm.ground_truth


def _phase1(obs, out, **training):
    torch.manual_seed(0)
    opts = {
        "data_augmentation_loop": 300,
        "batch_size": 16,
        **training,
    }
    model = MetabolismGNN(obs, training=opts, **SMALL_ARCH)
    fit_model(model, out)
    return model


@pytest.fixture(scope="module")
def tiny_phase1(tiny, tmp_path_factory):
    obs, _ = tiny
    out = tmp_path_factory.mktemp("p1")
    model = _phase1(obs, out)
    return model, out / "metabolism_phase1.ckpt"


def test_reaction_term_matches_a_per_reaction_oracle(tiny):
    obs, _ = tiny
    torch.manual_seed(0)
    model = MetabolismGNN(obs, training={}, **SMALL_ARCH)
    conc = obs.activity[:5]
    order = obs.extras["substrate_order"]
    S = obs.extras["stoichiometry"]
    expected = torch.zeros_like(conc)
    for j in range(order.shape[1]):  # oracle: one reaction at a time
        subs = torch.nonzero(order[:, j]).ravel()
        g = model.substrate_function(conc[:, subs], order[subs, j].expand(len(conc), -1))
        rate = 10.0 ** model.log_k[j] * g.prod(dim=1)
        expected += rate.unsqueeze(1) * S[:, j]
    torch.testing.assert_close(model.reaction_term(conc), expected, rtol=1e-5, atol=1e-6)
    # the node term starts at exactly zero (zero output layer), but its hidden layers are live
    assert float(model.node_function(conc).detach().abs().max()) == 0.0
    assert model.MLP_node.net[0].weight.abs().sum() > 0


def test_phase1_recovers_rate_constants_on_a_tiny_network(tiny, tiny_phase1):
    obs, gt = tiny
    model, _ = tiny_phase1
    assert model.loss_history[-1] < 0.1 * model.loss_history[0]
    r = np.corrcoef(model.corrected_log_k().numpy(), gt["log_k"].numpy())[0, 1]
    assert r**2 > 0.8
    assert model.alpha() == pytest.approx(1.0, abs=0.1)


def test_phase2_freezes_reactions_and_learns_homeostasis(tiny, tiny_phase1, tmp_path):
    obs, gt = tiny
    phase1, path = tiny_phase1
    torch.manual_seed(1)
    training = {
        "phase": 2,
        "phase1_checkpoint": str(path),
        "data_augmentation_loop": 40,
        "batch_size": 16,
        "homeostasis_time_step": 4,
        "rollout_loss_weight": 0.0,
        "residual_supervision_weight": 1.0,
    }
    model = MetabolismGNN(obs, training=training, **SMALL_ARCH)
    torch.testing.assert_close(model.log_k, phase1.log_k)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("log_k", "MLP_sub"))}
    fit_model(model, tmp_path)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    metrics = evaluate(model, obs, gt, tmp_path, slope_c_min=1.0, slope_c_max=9.0)
    assert metrics["phase2_node_magnitude"] > 0
    # both types end up with a negative slope, type 1's steeper, near the truth (-0.01, -0.02)
    assert metrics["MLP_node_slope_0"] < 0 and metrics["MLP_node_slope_1"] < metrics["MLP_node_slope_0"]
    assert 0.6 < metrics["slope_ratio_0"] < 1.6 and 0.6 < metrics["slope_ratio_1"] < 1.6
    for name in ("rate_constants.png", "MLP_node.png", "embedding.png", "loss.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_phase2_strategies_all_run(tiny, tiny_phase1, tmp_path):
    obs, _ = tiny
    _, path = tiny_phase1
    training = {
        "phase": 2,
        "phase1_checkpoint": str(path),
        "data_augmentation_loop": 2,
        "batch_size": 4,
        "homeostasis_time_step": 8,
        "residual_supervision_weight": 1.0,
        "amplification_factor": 10.0,
        "coeff_embedding_aux": 0.1,
        "rollout_curriculum": True,
        "lr_schedule": "warmup_decay",
        "gradient_accumulation": 2,
        "separate_loss_components": True,
        "coeff_offset_penalty": 0.1,
        "gradient_clip_val": 0.5,
    }
    model = MetabolismGNN(obs, training=training, **SMALL_ARCH)
    fit_model(model, tmp_path)
    assert all(math.isfinite(v) for v in model.loss_history)
    assert model.node_amplification == pytest.approx(1.0)  # decayed by the end
    multi = MetabolismGNN(obs, training={**training, "multi_scale_rollout": True}, **SMALL_ARCH)
    assert multi.max_window() == 64
    assert multi.current_time_step() in (4, 16, 32, 64)


def test_phase2_without_checkpoint_trains_and_caches_phase1(tiny, tmp_path):
    obs, _ = tiny
    training = {
        "phase": 2,
        "phase1": {"data_augmentation_loop": 2, "batch_size": 8},
        "phase1_cache_dir": str(tmp_path),
        "data_augmentation_loop": 1,
        "homeostasis_time_step": 2,
    }
    first = MetabolismGNN(obs, training=training, **SMALL_ARCH)
    cached = list(tmp_path.glob("metabolism_phase1-*.ckpt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = MetabolismGNN(obs, training=training, **SMALL_ARCH)
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not retrained
    torch.testing.assert_close(first.log_k, second.log_k)


def test_checkpoint_mismatch_and_bad_options_raise(tiny, tiny_phase1, tmp_path):
    obs, _ = tiny
    _, path = tiny_phase1
    with pytest.raises(ValueError, match="architecture differs"):
        MetabolismGNN(obs, training={"phase": 2, "phase1_checkpoint": str(path)}, hidden_dim_sub=8)
    with pytest.raises(ValueError, match="file not found"):
        MetabolismGNN(
            obs, training={"phase": 2, "phase1_checkpoint": str(tmp_path / "none.pt")}, **SMALL_ARCH
        )
    with pytest.raises(ValueError, match="unknown keys \\['learning_rate_W'\\]"):
        training_options({"learning_rate_W": 1.0})
    with pytest.raises(ValueError, match="training.lr_schedule.*allowed values"):
        training_options({"lr_schedule": "step"})
    with pytest.raises(ValueError, match="training.phase1_checkpoint"):
        training_options({"phase": 2, "phase1": None})
    with pytest.raises(ValueError, match="model.aggr_type"):
        MetabolismGNN(obs, training={}, aggr_type="max")
    bare = Observations(activity=obs.activity, derivative=obs.derivative, dt=obs.dt, n_train_frames=10)
    with pytest.raises(ValueError, match="simulation.stoichiometry_known"):
        MetabolismGNN(bare, training={})


def test_the_trainer_runs_the_loop_the_options_describe(tiny, tmp_path):
    obs, _ = tiny
    training = {
        "data_augmentation_loop": 20,
        "gradient_accumulation": 2,
        "k_least_squares_every": 3,
        "lr_schedule": "warmup_decay",
    }
    model = MetabolismGNN(obs, training=training, **SMALL_ARCH)
    refits: list[int] = []
    refit = model.refit_rate_constants
    model.refit_rate_constants = lambda: (refits.append(model.optimiser_step), refit())
    trainer = fit_model(model, tmp_path)
    total = model.steps_per_epoch() // 2
    assert trainer.global_step == model.total_steps == total
    # k is refit after every 3rd optimiser step, and once more at the epoch's end
    assert refits == [*range(3, total + 1, 3), total]
    # the LambdaLR schedule, stepped once per optimiser step, ends where lr_factor says
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(
        model.opts["learning_rate_k"] * lr_factor("warmup_decay", total, total, model.opts)
    )
    checkpoint = torch.load(tmp_path / "metabolism_phase1.ckpt", weights_only=False)
    assert checkpoint["metabolism"]["phase"] == 1 and checkpoint["optimizer_states"]
    other = MetabolismGNN(obs, training=training, **SMALL_ARCH)
    with pytest.raises(
        ValueError, match="trainer.accumulate_grad_batches=1 but the training options ask for 2"
    ):
        fit_model(other, tmp_path / "x", accumulate_grad_batches=1)


def test_learnable_stoichiometry_and_additive_aggregation_train(tiny, tmp_path):
    obs, _ = tiny
    model = _phase1(
        obs,
        tmp_path,
        data_augmentation_loop=3,
        freeze_stoichiometry=False,
        coeff_S_L1=0.01,
        coeff_S_integer=0.1,
        coeff_mass_conservation=0.1,
        coeff_MLP_sub_diff=1.0,
        coeff_k_floor=1.0,
    )
    assert isinstance(model.stoichiometry, torch.nn.Parameter)
    assert not torch.equal(model.stoichiometry.detach(), obs.extras["stoichiometry"])
    add = MetabolismGNN(obs, training={}, aggr_type="add", substrate_input="linear", **SMALL_ARCH)
    assert add(obs.activity[:3]).shape == (3, 16)


def test_schedules_and_line_fits():
    opts = training_options({"lr_warmup_fraction": 0.1, "lr_final_ratio": 0.1})
    assert lr_factor("constant", 5, 100, opts) == 1.0
    assert lr_factor("warmup_decay", 0, 100, opts) == pytest.approx(0.1)
    assert lr_factor("warmup_decay", 99, 100, opts) == pytest.approx(0.1)
    assert lr_factor("cosine_restarts", 0, 100, opts) == pytest.approx(1.0)
    grid = np.linspace(0, 10, 11)
    slopes, offsets = line_fits(grid, np.stack([-0.001 * grid + 0.004, 2 * grid], axis=1))
    np.testing.assert_allclose(slopes, [-0.001, 2.0])
    np.testing.assert_allclose(offsets, [0.004, 0.0], atol=1e-12)
