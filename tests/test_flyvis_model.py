"""Flyvis GNN (node-wise vs per-edge oracle, training strategies) and the flyvis metrics."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from hydra_llm.evaluation.flyvis import (
    READOUTS,
    ConnectivityR2Log,
    NeuronRange,
    cluster_features,
    corrected_weights,
    evaluate,
    gmm_cluster_accuracy,
    recorded_state_fit,
)
from hydra_llm.evaluation.metrics import r2_slope
from hydra_llm.models.embedding_snap import EmbeddingSnap, cluster_medians
from hydra_llm.models.flyvis_gnn import FlyvisGNN, aggregate_source_messages
from hydra_llm.models.lr_schedule import lr_factor
from hydra_llm.schemas.training import FlyvisTraining
from hydra_llm.simulation.flyvis import FlyvisDataModule

ROOT = Path(__file__).parents[1]
TINY = Path(__file__).parent / "data" / "flyvis_tiny_connectome.json"
TRAINING = asdict(FlyvisTraining())
FAMS = ["moving_edge", "moving_bar", "grating", "flash", "white_noise", "blank"]


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    dm = FlyvisDataModule(
        connectome={"source": "file", "path": str(TINY), "extent": 1},
        parameters={"mode": "random_trained_like"},
        stimulus={"source": "synthetic", "families": FAMS, "ood_families": ["pink_noise"]},
        n_frames=600,
        n_ood_frames=60,
        noise_model_level=0.0,
    )
    dm.setup()
    return dm


def training(**overrides):
    return {**TRAINING, "max_steps_per_epoch": 40, **overrides}


def fit(dm, model, callbacks=()):
    trainer = pl.Trainer(
        max_epochs=int(model.training_cfg["n_epochs"]),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(model, datamodule=dm)
    return trainer


@pytest.mark.parametrize("other", ["edge", "sparse"])
def test_node_wise_messages_equal_the_per_edge_oracle_and_the_sparse_propagate(data, other):
    torch.manual_seed(0)
    obs = data.observations
    node = FlyvisGNN(obs, training(), hidden_dim=16, hidden_dim_update=16)
    edge = FlyvisGNN(obs, training(), hidden_dim=16, hidden_dim_update=16, aggregation=other)
    edge.load_state_dict(node.state_dict())
    with torch.no_grad():
        node.a.normal_()
        edge.a.copy_(node.a)
    v, inp = obs.activity[:5], obs.external_input[:5]
    out_node, out_edge = node(v, inp), edge(v, inp)
    assert torch.allclose(out_node, out_edge, rtol=1e-5, atol=1e-5)
    out_node.square().sum().backward()
    out_edge.square().sum().backward()
    for (name, p), q in zip(node.named_parameters(), edge.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5), name


def test_aggregation_is_the_sparse_sum():
    psi = torch.tensor([[1.0, 2.0, 3.0]])
    edge_index = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 1]])
    msg = aggregate_source_messages(psi, torch.tensor([10.0, 100.0, 1000.0, 1.0]), edge_index)
    assert msg.tolist() == [[3000.0, 13.0, 200.0]]


@pytest.mark.parametrize(
    ("model_kw", "train_kw", "message"),
    [
        ({"w_init_mode": "ones"}, {}, r"w_init_mode='ones': allowed values: \[zeros, randn, randn_scaled\]"),
        ({"aggregation": "dense"}, {}, "model.aggregation"),
        (
            {"update_form": "additive"},
            {},
            r"update_form='additive': allowed values: \[joint, separable, affine\]",
        ),
        ({}, {"coeff_g_phi_zero": -1.0}, "training.coeff_g_phi_zero"),
        ({}, {"coeff_W_L1": -1.0}, "training.coeff_W_L1"),
        ({}, {"learning_rate_W_start": 0.0}, "training.learning_rate_W_start"),
        ({}, {"alternate_vrest_ratio": 1.0}, "alternate_vrest_ratio"),
        ({}, {"lr_final_ratio": 1.5}, r"training.lr_final_ratio=1.5: must be in \[0, 1\]"),
        ({}, {"lr_schedule": "step"}, "training.lr_schedule"),
        ({}, {"embedding_snap_at": [0.5, 1.5]}, r"training.embedding_snap_at=\[0.5, 1.5\]: fractions"),
        ({}, {"embedding_snap_components": 0}, "training.embedding_snap_components=0"),
    ],
)
def test_bad_options_name_the_key(data, model_kw, train_kw, message):
    with pytest.raises(ValueError, match=message):
        FlyvisGNN(data.observations, training(**train_kw), **model_kw)


def test_training_lowers_the_loss_and_sets_final_loss(data):
    torch.manual_seed(0)
    model = FlyvisGNN(
        data.observations, training(max_steps_per_epoch=300), hidden_dim=32, hidden_dim_update=32
    )
    obs = data.observations
    v, dv, inp = obs.activity[:400], obs.derivative[:400], obs.external_input[:400]
    before = float(model.one_step_losses(v, dv, inp)["prediction"])
    fit(data, model)
    after = float(model.one_step_losses(v, dv, inp)["prediction"])
    assert after < 0.5 * before
    assert abs(model.final_loss - after) < 0.5 * before


def test_a_step_cap_that_the_batch_leaves_unreached_is_named_when_the_fit_starts(data, caplog):
    """A larger batch divides the steps that the frames allow (frames x loop // batch x 0.2): where
    that falls below ``max_steps_per_epoch`` the run is shorter than asked, and the fit says so once,
    naming the key that lifts it; a cap that binds says nothing."""
    n = data.observations.n_train_frames
    runs = {}
    for batch in (4, 16):
        caplog.clear()
        model = FlyvisGNN(
            data.observations,
            training(max_steps_per_epoch=40, batch_size=batch, data_augmentation_loop=1600 / n),
            hidden_dim=8,
            hidden_dim_update=8,
        )
        with caplog.at_level("WARNING", logger="hydra_llm.models.flyvis_gnn"):
            trainer = fit(data, model)
        runs[batch] = (trainer.global_step, [r.getMessage() for r in caplog.records])
    assert runs[4] == (40, [])
    steps, messages = runs[16]
    assert steps == model.steps_per_epoch < 40 and len(messages) == 1
    assert messages[0].startswith(f"training.max_steps_per_epoch=40 is not reached: {n} training frames")
    hint = f"batch_size 16 x 0.2 give {steps} steps an epoch; raise training.data_augmentation_loop"
    assert hint in messages[0]


def test_final_loss_is_the_mean_prediction_loss_of_the_last_tenth_of_the_epoch(data):
    """The epoch's losses go into one buffer (a scalar tensor kept per step grew an extent-8 run by about
    3 MB a step); it starts afresh each epoch and is let go at the epoch's end."""
    seen: list[float] = []

    class Recording(FlyvisGNN):
        def loss_terms(self, batch):
            terms = super().loss_terms(batch)
            seen.append(float(terms["prediction"]))
            return terms

    model = Recording(
        data.observations, training(max_steps_per_epoch=30, n_epochs=2), hidden_dim=16, hidden_dim_update=16
    )
    fit(data, model)
    assert len(seen) == 60
    assert model.final_loss == pytest.approx(sum(seen[-3:]) / 3, rel=1e-6)
    assert model._epoch_losses is None


def test_the_additivity_penalty_brings_the_leak_at_msg_zero_to_that_of_the_record(data):
    obs = data.observations
    v, inp = obs.activity[100:108], obs.external_input[100:108]
    mismatch = {}
    for coeff in (0.0, 10.0):
        torch.manual_seed(0)
        model = FlyvisGNN(
            obs,
            training(coeff_f_theta_additivity=coeff, learning_rate_update_start=1e-2),
            hidden_dim=16,
            hidden_dim_update=16,
            update_form="joint",
        )
        with torch.no_grad():  # an f far from additive to start from
            for p in model.f_theta.parameters():
                p.normal_(0.0, 0.5)
        fit(data, model)
        with torch.no_grad():
            mismatch[coeff] = float(model.leak_mismatch(v, model.messages(v), inp))
    assert 0 < mismatch[10.0] < 0.2 * mismatch[0.0]
    true_model = TrueModel(obs, data.ground_truth, n_types=5)
    true_model.xnorm, true_model.yscale = 1.0, 1.0
    assert float(FlyvisGNN.leak_mismatch(true_model, v, true_model.messages(v), inp)) < 1e-8


@pytest.mark.parametrize("additive", ["separable", "affine"])
def test_a_separable_update_leaks_the_same_at_every_message_and_trains(data, additive):
    """``update_form: separable`` (and ``affine``) makes f additive in v and the drive by construction:
    its rise over a voltage step is the same at the recorded message and input as at msg = I = 0,
    where the joint MLP's is not."""
    obs = data.observations
    v, inp = obs.activity[100:108], obs.external_input[100:108]
    mismatch = {}
    for form in ("joint", additive):
        torch.manual_seed(0)
        model = FlyvisGNN(
            obs, training(max_steps_per_epoch=200), hidden_dim=16, hidden_dim_update=16, update_form=form
        )
        with torch.no_grad():  # far from additive, for the joint MLP
            for p in model.f_theta.parameters():
                p.normal_(0.0, 0.5)
            mismatch[form] = float(model.leak_mismatch(v, model.messages(v), inp))
    assert mismatch["joint"] > 1e-2
    assert mismatch[additive] < 1e-8
    assert {name.split(".")[0] for name, _ in model.f_theta.named_parameters()} == {"leak", "drive"}
    dv = obs.derivative[100:108]
    terms = model.one_step_losses(v, dv, inp)
    assert TRAINING["coeff_f_theta_additivity"] > 0 and "f_theta_additivity" not in terms  # skipped
    before = float(terms["prediction"])
    fit(data, model)
    assert float(model.one_step_losses(v, dv, inp)["prediction"]) < 0.5 * before


def test_an_affine_drive_is_straight_in_the_message_and_the_input(data):
    """``update_form: affine``: f(v, m, I) - f(v, 0, 0) = g m + k I per neuron, so f at msg = 0 (the line
    read-out's) is the straight continuation of f over the recorded messages; a free drive MLP bends."""
    obs = data.observations
    v, inp = obs.activity[100:108].double(), obs.external_input[100:108].double()
    bend = {}
    for form in ("separable", "affine"):
        torch.manual_seed(0)
        model = FlyvisGNN(obs, training(), hidden_dim=16, hidden_dim_update=16, update_form=form).double()
        with torch.no_grad():
            for p in model.f_theta.parameters():
                p.normal_(0.0, 0.5)
            msg, zero = model.messages(v), torch.zeros_like(v)
            msg, stim = 3 * msg / msg.abs().max(), 3 * inp / inp.abs().max()  # across the MLP's kinks
            for m, i in ((msg, zero), (zero, stim), (msg, stim)):
                rise = model.f(v, m, i) - model.f(v, zero, zero)
                double = model.f(v, 2 * m, 2 * i) - model.f(v, zero, zero)
                bend[form, m is msg, i is stim] = float(((double - 2 * rise).abs() / rise.abs().mean()).max())
    assert max(v for k, v in bend.items() if k[0] == "affine") < 1e-9
    assert bend["separable", True, False] > 1e-2
    assert set(dict(model.f_theta.named_parameters())) >= {"drive.gains.net.0.weight"}


@pytest.mark.parametrize("form", ["joint", "separable", "affine"])
def test_every_update_form_reads_each_neuron_row_by_row_and_the_affine_gains_once_per_neuron(data, form):
    """f on a batch (B, N) is f on each frame alone; the affine drive's gain MLP sees the N embeddings
    once, whatever the batch (a batch of 4 at extent 8 costs a quarter of the rows it did per frame)."""
    obs = data.observations
    torch.manual_seed(0)
    model = FlyvisGNN(obs, training(), hidden_dim=16, hidden_dim_update=16, update_form=form).double()
    with torch.no_grad():
        model.a.normal_()
    v, inp = obs.activity[100:104].double(), obs.external_input[100:104].double()
    rows = []
    if form == "affine":
        model.f_theta.drive.gains.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape))
    with torch.no_grad():
        msg = model.messages(v)
        batch = model.f(v, msg, inp)
        frames = torch.cat([model.f(v[k : k + 1], msg[k : k + 1], inp[k : k + 1]) for k in range(4)])
        grid = model.f(v[None], msg[None], inp[None])[0]  # any leading dimensions, as the read-outs' grids
    assert batch.shape == (4, obs.n_neurons)
    torch.testing.assert_close(batch, frames, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(batch, grid, rtol=1e-12, atol=1e-12)
    if form == "affine":
        assert rows[0] == (obs.n_neurons, model.a.shape[1])


def fit_with_penalty(data, key: str, coeff: float, psi_at_zero: float | None = None) -> FlyvisGNN:
    """A small model trained 100 steps with the psi penalty ``key`` at ``coeff`` (its term is in the
    loss exactly when ``coeff`` > 0); ``psi_at_zero``: psi's last bias to start from."""
    obs = data.observations
    torch.manual_seed(0)
    model = FlyvisGNN(
        obs, training(**{f"coeff_{key}": coeff}, max_steps_per_epoch=100), hidden_dim=16, hidden_dim_update=16
    )
    if psi_at_zero is not None:
        with torch.no_grad():
            model.g_phi.net[-1].bias.fill_(psi_at_zero)
    terms = model.one_step_losses(obs.activity[:4], obs.derivative[:4], obs.external_input[:4])
    assert (key in terms) == (coeff > 0)
    fit(data, model)
    return model


def test_the_zero_penalty_pins_psi_at_zero_voltage(data):
    """``coeff_g_phi_zero`` pulls psi(0, a_j) to 0 (msg = 0 is then zero synaptic drive); off by
    default."""
    n = data.observations.n_neurons
    assert TRAINING["coeff_g_phi_zero"] == 0
    at_zero = {}
    for coeff in (0.0, 10.0):  # psi well above 0 at v = 0 to start from
        model = fit_with_penalty(data, "g_phi_zero", coeff, psi_at_zero=0.5)
        with torch.no_grad():
            at_zero[coeff] = float(model.psi(torch.zeros(1, n)).abs().mean())
    assert at_zero[10.0] < 0.2 * at_zero[0.0]


def test_the_straightness_penalty_takes_the_bend_out_of_psi(data):
    """``coeff_g_phi_straight`` pulls psi towards a straight line on [0, 2 xnorm] (the simulator's relu
    is straight there), on points drawn from the step number (the same on a rerun); off by default."""
    n = data.observations.n_neurons
    assert TRAINING["coeff_g_phi_straight"] == 0
    bend = {}
    for coeff in (0.0, 10.0):
        model = fit_with_penalty(data, "g_phi_straight", coeff)
        torch.testing.assert_close(model.psi_bend(torch.device("cpu")), model.psi_bend(torch.device("cpu")))
        with torch.no_grad():  # the change of slope over h at 21 points of [h, 2 xnorm - h], every neuron
            h = 0.25 * model.xnorm
            u = torch.linspace(h, 2.0 * model.xnorm - h, 21)[:, None].expand(21, n)
            psi = [model.psi((u + shift).contiguous()) for shift in (-h, 0.0, h)]
            bend[coeff] = float((((psi[2] - 2 * psi[1] + psi[0]) / h) ** 2).mean())
    assert bend[10.0] < 0.2 * bend[0.0], bend


def test_without_learn_autapses_self_loops_stay_at_zero_and_send_nothing(data):
    """While relu(v_j) is linear over the record, a self-loop's weight trades with the neuron's leak; with
    learn_autapses=False it is held at exactly 0 through training, every other weight learns, and the
    messages are those of the network without its self-loops."""
    obs = data.observations
    looped = replace(obs, edge_index=torch.cat([obs.edge_index, torch.tensor([[0, 3], [0, 3]])], dim=1))
    arch = {"hidden_dim": 16, "hidden_dim_update": 16}
    torch.manual_seed(0)
    held = FlyvisGNN(looped, training(max_steps_per_epoch=30), learn_autapses=False, **arch)
    torch.manual_seed(0)
    learned = FlyvisGNN(looped, training(max_steps_per_epoch=30), **arch)
    start, learned_start = held.W.detach().clone(), learned.W.detach().clone()
    assert start[-2:].tolist() == [0.0, 0.0] and learned_start[-2:].abs().min() > 0
    fit(data, held)
    fit(data, learned)
    assert held.W[-2:].tolist() == [0.0, 0.0]
    assert (held.W[:-2] != start[:-2]).all()
    assert (learned.W[-2:] != learned_start[-2:]).all()  # the default learns them

    plain = FlyvisGNN(obs, training(), **arch)
    plain.load_state_dict({**held.state_dict(), "W": held.W.detach()[:-2]})
    v = obs.activity[:5]
    with torch.no_grad():
        assert torch.equal(held.messages(v), plain.messages(v))


def test_annealing_is_active_from_the_first_step(data):
    coefficients = {"coeff_W_L2": 1e-6, "coeff_g_phi_weight_L1": 0.1, "coeff_f_theta_weight_L1": 0.01}
    model = FlyvisGNN(data.observations, training(**coefficients))
    assert 0.0 < model.anneal() < 1.0  # the original's 1 - exp(-0.5 * epoch) is 0 at epoch 0
    assert FlyvisGNN(data.observations, training(regul_annealing_rate=0.0)).anneal() == 1.0
    terms = model.one_step_losses(
        data.observations.activity[:4], data.observations.derivative[:4], data.observations.external_input[:4]
    )
    penalties = {
        "W_L1",
        "W_L2",
        "g_phi_diff",
        "g_phi_norm",
        "g_phi_weight_L1",
        "f_theta_weight_L1",
        "f_theta_additivity",
    }
    assert penalties <= set(terms)
    assert terms["W_L2"] > 0  # not gated by W_L1


class EmbeddingProbe(pl.Callback):
    """The embeddings by global step at the end of a batch (before the module's own callbacks, which
    Lightning appends after the Trainer's) and at the start of the next."""

    def __init__(self) -> None:
        self.ends: dict[int, torch.Tensor] = {}
        self.starts: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends[trainer.global_step] = pl_module.a.detach().clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts[trainer.global_step] = pl_module.a.detach().clone()


def test_embedding_snap_sets_each_embedding_to_its_cluster_median_then_training_moves_them(data):
    options = training(max_steps_per_epoch=20, embedding_snap_at=[0.5], embedding_snap_components=3)
    model = FlyvisGNN(data.observations, options)
    probe = EmbeddingProbe()
    fit(data, model, [probe])
    (snap,) = [c for c in model.trainer.callbacks if isinstance(c, EmbeddingSnap)]
    assert snap.snaps == [(10, 3)]
    learned, snapped = probe.ends[10], probe.starts[10]
    assert len(torch.unique(learned, dim=0)) > 20
    rows, labels = torch.unique(snapped, dim=0, return_inverse=True)
    assert len(rows) == 3
    assert torch.equal(snapped, cluster_medians(learned, labels.numpy()))
    assert len(torch.unique(probe.ends[20], dim=0)) > 20  # training moves them apart again
    assert FlyvisGNN(data.observations, training()).configure_callbacks() == []  # off by default


def test_cluster_medians_are_per_cluster_and_per_dimension():
    embedding = torch.tensor([[0.0, 5.0], [1.0, 4.0], [2.0, 9.0], [10.0, 0.0], [20.0, 1.0]])
    snapped = cluster_medians(embedding, np.array([0, 0, 0, 7, 7]))
    assert torch.equal(snapped[:3], torch.tensor([[1.0, 5.0]] * 3))
    assert torch.equal(snapped[3:], torch.tensor([[10.0, 0.0]] * 2))  # torch's median: the lower middle


def test_the_weight_penalties_are_per_neuron(data):
    """sum|W| / N and sum W^2 / N, as the prediction term is a mean over neurons: the old plain sum,
    tuned at extent 1, pulled every weight 31x harder at extent 8 and held connectivity near 0.87."""
    model = FlyvisGNN(data.observations, training(coeff_W_L1=3e-3, coeff_W_L2=2e-3, regul_annealing_rate=0.0))
    with torch.no_grad():
        model.W.copy_(torch.linspace(-1.0, 2.0, model.W.numel()))
    obs = data.observations
    terms = model.one_step_losses(obs.activity[:2], obs.derivative[:2], obs.external_input[:2])
    n = obs.n_neurons
    assert float(terms["W_L1"]) == pytest.approx(3e-3 * float(model.W.abs().sum()) / n, rel=1e-6)
    assert float(terms["W_L2"]) == pytest.approx(2e-3 * float((model.W**2).sum()) / n, rel=1e-6)


def test_the_lr_schedule_spans_every_epoch_and_multiplies_the_phase_rates(data):
    class Rates(pl.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            groups = trainer.optimizers[0].param_groups
            self.seen.append((module.phase, {g["name"]: g["lr"] for g in groups}))

    cfg = training(
        max_steps_per_epoch=10,
        n_epochs=2,
        lr_schedule="warmup_decay",
        lr_warmup_fraction=0.1,
        lr_final_ratio=0.05,
        alternate_training=True,
        n_alternations=1,
    )
    model, rates = FlyvisGNN(data.observations, cfg, hidden_dim=8, hidden_dim_update=8), Rates()
    fit(data, model, [rates])
    assert len(rates.seen) == 20
    for step, (phase, lrs) in enumerate(rates.seen):
        factor = lr_factor("warmup_decay", step, 20, model.training_cfg)
        assert lrs == pytest.approx({k: v * factor for k, v in model.phase_learning_rates(phase).items()})
    first, last = rates.seen[0][1]["W"], rates.seen[-1][1]["W"]
    assert first == pytest.approx(cfg["learning_rate_W_start"] / 2)  # step 1 of a 2-step warm-up
    assert last == pytest.approx(cfg["learning_rate_W_start"] * 0.05 * cfg["alternate_lr_ratio"])  # V_rest


def test_alternate_training_phases_rates_and_r2_log(data, tmp_path):
    cfg = training(alternate_training=True, n_alternations=2, alternate_vrest_ratio=0.5, alternate_lr_W=1e-7)
    model = FlyvisGNN(data.observations, cfg, hidden_dim=16, hidden_dim_update=16)
    assert [model.phase_at(s) for s in (0, 9, 10, 19, 20, 39)] == [
        "W",
        "W",
        "V_rest",
        "V_rest",
        "W",
        "V_rest",
    ]
    w_phase, v_phase = model.phase_learning_rates("W"), model.phase_learning_rates("V_rest")
    assert w_phase["W"] == cfg["learning_rate_W_start"] and v_phase["W"] == 1e-7
    assert v_phase["g_phi"] == pytest.approx(cfg["learning_rate_start"] * cfg["alternate_lr_ratio"])
    assert w_phase["f_theta"] == pytest.approx(cfg["learning_rate_start"] * cfg["alternate_lr_ratio"])
    log = ConnectivityR2Log(data.observations, data.ground_truth, tmp_path, every_n_steps=5)
    fit(data, model, [log])
    lines = (tmp_path / "connectivity_r2.log").read_text().splitlines()
    assert lines[0] == "epoch,iteration,connectivity_r2,phase"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 8 and {r[3] for r in rows} == {"W", "V_rest"}
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows)


def test_two_stages_keep_f_theta_and_embedding_at_their_own_rates(data):
    """``alternate_lr_ratio_W_phase=1`` (experiment=flyvis_recovery): stage one runs every group at its
    own rate, a user's f_theta rate included; stage two slows W and psi by ``alternate_lr_ratio``."""
    cfg = training(
        alternate_training=True,
        n_alternations=1,
        alternate_lr_ratio=0.1,
        alternate_lr_ratio_W_phase=1.0,
        learning_rate_update_start=3e-4,
    )
    model = FlyvisGNN(data.observations, cfg, hidden_dim=8, hidden_dim_update=8)
    own = model.phase_learning_rates("joint")
    assert own["f_theta"] == 3e-4 and model.phase_learning_rates("W") == own
    stage_two = model.phase_learning_rates("V_rest")
    assert stage_two["W"] == pytest.approx(own["W"] * 0.1) and stage_two["f_theta"] == 3e-4
    named_cfg = {**cfg, "alternate_lr_update": 1e-6}
    named = FlyvisGNN(data.observations, named_cfg, hidden_dim=8, hidden_dim_update=8)
    assert named.phase_learning_rates("W")["f_theta"] == 1e-6  # a rate set by name wins over the ratio
    with pytest.raises(ValueError, match=r"alternate_lr_ratio_W_phase=-1.0: must be a finite float >= 0"):
        FlyvisGNN(data.observations, {**cfg, "alternate_lr_ratio_W_phase": -1.0})


def test_the_r2_log_records_the_line_readouts_w_star_without_the_zero_drive_pass(data, tmp_path):
    """The R2 log (and the embedding snap) skip the second pass of f (``zero_drive=False``); what they
    read is what the full read-out gives."""
    torch.manual_seed(0)
    model = FlyvisGNN(
        data.observations, training(max_steps_per_epoch=10), hidden_dim=16, hidden_dim_update=16
    )
    log = ConnectivityR2Log(data.observations, data.ground_truth, tmp_path, every_n_steps=100)
    fit(data, model, [log])
    full = corrected_weights(model, data.observations)
    light = corrected_weights(model, data.observations, zero_drive=False)
    for readout in READOUTS:
        assert "V_rest_zero_drive_hat" in full[readout] and "V_rest_zero_drive_hat" not in light[readout]
        for key, value in light[readout].items():
            torch.testing.assert_close(value, full[readout][key], rtol=0, atol=0)
    r2 = r2_slope(data.ground_truth["W"].double(), full["line"]["W_star"].double())[0]
    assert log.rows[-1][1] == 10 and log.rows[-1][2] == pytest.approx(r2, abs=1e-12)


def test_the_r2_log_of_a_long_run_is_capped_at_max_records(data, tmp_path):
    cfg = training(max_steps_per_epoch=20)
    model = FlyvisGNN(data.observations, cfg, hidden_dim=16, hidden_dim_update=16)
    log = ConnectivityR2Log(data.observations, data.ground_truth, tmp_path, every_n_steps=1, max_records=5)
    fit(data, model, [log])
    assert [row[1] for row in log.rows] == [4, 8, 12, 16, 20]  # every ceil(20 / 5) steps, the end included
    with pytest.raises(
        ValueError, match=r"^evaluation\.callbacks\.max_records=0: must be an integer >= 1, or null"
    ):
        ConnectivityR2Log(data.observations, data.ground_truth, tmp_path, max_records=0)


def test_recurrent_training_unrolls_time_step(data):
    cfg = training(recurrent_training=True, time_step=4, noise_recurrent_level=0.01, max_steps_per_epoch=10)
    model = FlyvisGNN(data.observations, cfg, hidden_dim=16, hidden_dim_update=16)
    assert model.frame_window == 5
    loss = model.rollout_losses(torch.tensor([0, model.n_train_frames - 5]))
    assert torch.isfinite(torch.stack(list(loss.values()))).all()
    fit(data, model)
    assert model.final_loss == model.final_loss  # not NaN


class TrueModel(torch.nn.Module):
    """The simulator's own equations in the GNN's interface: psi = relu, f = (-v + V_rest + msg + I) / tau."""

    def __init__(self, obs, gt, n_types):
        super().__init__()
        self.W = torch.nn.Parameter(gt["W"].clone())
        self.a = torch.nn.Parameter(torch.nn.functional.one_hot(gt["types"], n_types).float())
        self.tau, self.V_rest, self.edge_index = gt["tau"], gt["V_rest"], obs.edge_index
        self.n_neurons, self.dt, self.phase = obs.n_neurons, obs.dt, "joint"

    @property
    def weights(self):
        return self.W

    def psi(self, v):
        return torch.relu(v)

    def messages(self, v):
        return aggregate_source_messages(self.psi(v), self.W, self.edge_index)

    def f(self, v, msg, inp):
        return (-v + self.V_rest + msg + inp) / self.tau

    def rollout(self, v0, inputs):
        out, v = [], v0
        for t in range(inputs.shape[0]):
            out.append(v)
            v = v + self.dt * self.f(v[None], self.messages(v[None]), inputs[t][None])[0]
        return torch.stack(out)


def test_metrics_recover_the_truth_from_the_true_model(data, tmp_path):
    obs, gt = data.observations, data.ground_truth
    oracle = TrueModel(obs, gt, n_types=5)
    for readout in ("line", "local"):
        corrected = corrected_weights(oracle, obs)[readout]
        assert torch.allclose(corrected["W_star"], gt["W"], atol=1e-3)
    metrics = evaluate(oracle, obs, gt, tmp_path, rollout_frames=50, cluster_n_components=5)
    assert metrics["connectivity_R2"] > 0.999 and abs(metrics["connectivity_slope"] - 1) < 1e-2
    assert metrics["connectivity_R2_identity"] > 0.999 and metrics["connectivity_R2_visible"] > 0.999
    for suffix in ("", "_local"):  # the original's line read-out, and the fit near the recorded states
        assert metrics[f"tau_R2{suffix}"] > 0.999 and metrics[f"V_rest_R2{suffix}"] > 0.999
    assert metrics["connectivity_R2_local"] > 0.999 and metrics["connectivity_R2_identity_local"] > 0.999
    assert metrics["tau_clipped_fraction"] == metrics["tau_clipped_fraction_local"] == 0.0
    assert metrics["test_pearson"] > 0.99 and metrics["test_R2"] > 0.99
    assert metrics["test_pearson_ood"] > 0.99
    assert metrics["cluster_accuracy"] > 0.8 and metrics["cluster_accuracy_local"] > 0.8
    for name in ("W_scatter", "tau_scatter", "V_rest_scatter", "embeddings", "activity", "rollout_test"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1000


class NonDecayingNeuron(TrueModel):
    """The true model, except that neuron ``k``'s voltage no longer decays: its f has slope +1e-3 / tau."""

    def __init__(self, obs, gt, n_types, k):
        super().__init__(obs, gt, n_types)
        self.decay = torch.ones(obs.n_neurons)
        self.decay[k] = -1e-3

    def f(self, v, msg, inp):
        return (-self.decay * v + self.V_rest + msg + inp) / self.tau


def test_a_neuron_whose_learned_decay_crosses_zero_keeps_its_weights_bounded(data, tmp_path):
    """W* and V_rest use the clipped tau_hat (1 s where f does not decay), not a division by the slope:
    the incoming weights of that one neuron are off by 1 / tau instead of by -1 / (1e-3 / tau)."""
    obs, gt = data.observations, data.ground_truth
    tgt = obs.edge_index[1]
    incoming = torch.bincount(tgt, weights=gt["W"].abs(), minlength=obs.n_neurons)
    k = int(torch.argmax(incoming * gt["tau"]))  # the largest tau among neurons with real inputs
    corrected = corrected_weights(NonDecayingNeuron(obs, gt, 5, k), obs)["line"]
    assert corrected["slope_f"][k] > 0 and corrected["tau_hat"][k] == 1.0
    into_k = tgt == k
    assert torch.allclose(corrected["W_star"][~into_k], gt["W"][~into_k], atol=1e-3)
    assert torch.allclose(corrected["W_star"][into_k], gt["W"][into_k] / gt["tau"][k], rtol=1e-3, atol=1e-4)
    assert corrected["V_rest_hat"][k] == pytest.approx(float(gt["V_rest"][k] / gt["tau"][k]), rel=1e-3)
    metrics = evaluate(
        NonDecayingNeuron(obs, gt, 5, k),
        obs,
        gt,
        tmp_path,
        rollout_frames=50,
        cluster_n_components=5,
        make_plots=False,
    )
    assert metrics["tau_clipped_fraction"] == metrics["tau_clipped_fraction_local"] == 1 / obs.n_neurons


class OffsetMessages(TrueModel):
    """The true dynamics with ``psi = relu(v) + b_j``: f subtracts ``sum_j W_ij b_j`` again, so every
    trajectory is the simulator's, but msg = 0 is no longer the point of zero synaptic drive."""

    def __init__(self, obs, gt, n_types):
        super().__init__(obs, gt, n_types)
        self.b = 5.0 + 5.0 * torch.rand(obs.n_neurons, generator=torch.Generator().manual_seed(3))
        src, tgt = obs.edge_index
        self.m = torch.zeros(obs.n_neurons).index_add_(0, tgt, gt["W"] * self.b[src])

    def psi(self, v):
        return torch.relu(v) + self.b

    def f(self, v, msg, inp):
        return (-v + self.V_rest + msg - self.m + inp) / self.tau


def test_v_rest_at_zero_drive_reads_through_an_offset_of_psi(data, tmp_path):
    """The original's V_rest (f at msg = 0) is off by m_i = sum_j W_ij b_j; ``V_rest_zero_drive`` reads
    f at the learned message of zero drive and is exact, as are W* and tau."""
    obs, gt = data.observations, data.ground_truth
    model = OffsetMessages(obs, gt, n_types=5)
    for readout in ("line", "local"):
        corrected = corrected_weights(model, obs)[readout]
        assert torch.allclose(corrected["W_star"], gt["W"], atol=1e-3)
        assert torch.allclose(corrected["V_rest_zero_drive_hat"], gt["V_rest"], atol=1e-3)
        assert torch.allclose(corrected["V_rest_hat"], gt["V_rest"] - model.m, atol=1e-3)
    metrics = evaluate(model, obs, gt, tmp_path, rollout_frames=50, cluster_n_components=5, make_plots=False)
    assert metrics["V_rest_zero_drive_R2"] > 0.999 and metrics["V_rest_zero_drive_R2_local"] > 0.999
    assert metrics["V_rest_R2"] < 0.8
    assert metrics["connectivity_R2"] > 0.999 and metrics["tau_R2"] > 0.999
    assert metrics["readout_agreement"] > 0.999


class LeakBeyondTheRecord(TrueModel):
    """The true dynamics wherever msg lies within 2 std (+ 0.01) of a neuron's recorded messages; beyond,
    the leak grows by ``gain`` per unit of the distance ``d``. The record cannot tell this model from the
    true one."""

    gain = 20.0

    def __init__(self, obs, gt, n_types):
        super().__init__(obs, gt, n_types)
        with torch.no_grad():
            msg = self.messages(obs.activity[: obs.n_train_frames])
        self.lo = msg.min(0).values - 2 * msg.std(0) - 0.01
        self.hi = msg.max(0).values + 2 * msg.std(0) + 0.01

    def f(self, v, msg, inp):
        d = torch.relu(self.lo - msg) + torch.relu(msg - self.hi)
        return (-(1 + self.gain * d) * v + self.V_rest + msg + inp) / self.tau


def test_the_local_readout_fits_f_where_the_record_lies_and_the_line_extrapolates_to_msg_zero(data):
    """The original's line reads the leak at msg = 0; for the neurons whose messages never come near 0
    that is the extrapolated one, tau / (1 + gain d). The local read-out fits f near the recorded states and
    is exact."""
    obs, gt = data.observations, data.ground_truth
    model = LeakBeyondTheRecord(obs, gt, n_types=5)
    readouts = corrected_weights(model, obs)
    local, line = readouts["local"], readouts["line"]
    for key, truth in (("W_star", gt["W"]), ("tau_hat", gt["tau"]), ("V_rest_zero_drive_hat", gt["V_rest"])):
        assert torch.allclose(local[key], truth, atol=1e-3), key
    d = torch.relu(model.lo) + torch.relu(-model.hi)  # how far msg = 0 lies from the recorded range
    far = d > 0
    assert int(far.sum()) >= 3  # neurons whose messages stay clear of 0
    assert torch.allclose(line["tau_hat"], gt["tau"] / (1 + model.gain * d), rtol=1e-3)
    assert (line["tau_hat"][far] < 0.9 * gt["tau"][far]).any()


class GrowsWhereRecorded(LeakBeyondTheRecord):
    """The true dynamics, except that neuron ``k`` (whose messages stay clear of 0) grows with v instead
    of decaying wherever its messages lie within the recorded range; beyond it, the true leak."""

    gain = 0.0

    def __init__(self, obs, gt, n_types):
        super().__init__(obs, gt, n_types)
        far = (torch.relu(self.lo) + torch.relu(-self.hi)) > 0
        self.k = int(far.nonzero()[0])

    def f(self, v, msg, inp):
        inside = (msg >= self.lo) & (msg <= self.hi)
        grows = inside & (torch.arange(v.shape[-1]) == self.k)
        return (torch.where(grows, v, -v) + self.V_rest + msg + inp) / self.tau


def test_a_neuron_whose_local_fit_does_not_decay_takes_the_line_readout(data):
    """The local fit of neuron k grows with v (no time constant); the local read-out takes the line's
    slope and offsets for it, which hold the truth, so its tau, incoming W* and V_rest stay exact."""
    obs, gt = data.observations, data.ground_truth
    model = GrowsWhereRecorded(obs, gt, n_types=5)
    assert recorded_state_fit(model, obs)["slope_v"][model.k] > 0
    readouts = corrected_weights(model, obs)
    for readout in ("line", "local"):
        values = readouts[readout]
        assert torch.allclose(values["tau_hat"], gt["tau"], atol=1e-3), readout
        assert torch.allclose(values["W_star"], gt["W"], atol=1e-3), readout
        assert torch.allclose(values["V_rest_zero_drive_hat"], gt["V_rest"], atol=1e-3), readout


def test_readout_agreement_compares_the_two_readouts_of_w_without_the_answer(data, tmp_path):
    """Where the line extrapolates a leak the record never saw, its W* parts from the local one's and
    ``readout_agreement`` (their R2) falls; it is the same whatever ground truth evaluation is handed."""
    obs, gt = data.observations, data.ground_truth
    model = LeakBeyondTheRecord(obs, gt, n_types=5)
    kw = {"rollout_frames": 2, "cluster_n_components": 5, "make_plots": False}
    metrics = evaluate(model, obs, gt, tmp_path, **kw)
    readouts = corrected_weights(model, obs)
    assert metrics["readout_agreement"] == pytest.approx(
        r2_slope(readouts["line"]["W_star"], readouts["local"]["W_star"])[0]
    )
    assert metrics["readout_agreement"] < 0.99 and metrics["connectivity_R2_local"] > 0.999
    garbage = evaluate(model, obs, gt.garbage(seed=1), tmp_path, **kw)
    assert garbage["readout_agreement"] == metrics["readout_agreement"]
    assert garbage["connectivity_R2_local"] < 0.5


def test_metrics_of_an_untrained_model_are_poor(data, tmp_path):
    torch.manual_seed(0)
    model = FlyvisGNN(data.observations, training(), hidden_dim=16, hidden_dim_update=16)
    metrics = evaluate(
        model,
        data.observations,
        data.ground_truth,
        tmp_path,
        rollout_frames=50,
        cluster_n_components=5,
        make_plots=False,
    )
    assert metrics["connectivity_R2"] < 0.5
    assert set(json.loads(json.dumps(metrics))) >= {"tau_R2", "V_rest_R2", "cluster_accuracy", "test_R2"}


def test_neuron_range_in_chunks_equals_the_whole_record_statistics():
    """The read-outs' voltage ranges are computed over chunks of frames (a 64,000-frame record is never
    copied whole); they equal the statistics of the whole record."""
    v = torch.randn(1003, 40, generator=torch.Generator().manual_seed(0)) * torch.linspace(0, 2, 40) - 0.3
    span = NeuronRange.of(v, chunk_frames=64)
    assert torch.allclose(span.mean, v.mean(0), atol=1e-6)
    assert torch.allclose(span.std, v.std(0), atol=1e-5)
    assert torch.allclose(span.relu_std, torch.relu(v).std(0), atol=1e-5)


def test_cluster_accuracy_is_one_gmm_start_and_cluster_starts_give_its_spread(data, tmp_path):
    """The headline is the start with ``cluster_seed`` (as the original clusters); ``cluster_starts``
    starts with seeds ``cluster_seed``, ``cluster_seed + 1``, ... give its median, min and max."""
    obs, gt = data.observations, data.ground_truth
    torch.manual_seed(0)
    model = FlyvisGNN(obs, training(), hidden_dim=16, hidden_dim_update=16)
    kw = {"rollout_frames": 2, "cluster_n_components": 5, "cluster_seed": 3, "make_plots": False}
    metrics = evaluate(model, obs, gt, tmp_path, cluster_starts=6, **kw)
    values = corrected_weights(model, obs, NeuronRange.of(obs.activity[: obs.n_train_frames]))["line"]
    features = cluster_features(
        model.a, values["W_star"], values["tau_hat"], values["V_rest_hat"], obs.edge_index
    )
    each = [gmm_cluster_accuracy(features, gt["types"].numpy(), 5, seed) for seed in range(3, 9)]
    assert max(each) > min(each)  # the starts differ here, so the spread is not the headline repeated
    assert metrics["cluster_accuracy"] == each[0]
    assert metrics["cluster_accuracy_median"] == pytest.approx(np.median(each))
    assert (metrics["cluster_accuracy_min"], metrics["cluster_accuracy_max"]) == (min(each), max(each))
    one = evaluate(model, obs, gt, tmp_path, cluster_starts=1, **kw)
    assert one["cluster_accuracy"] == one["cluster_accuracy_median"] == one["cluster_accuracy_max"] == each[0]
    with pytest.raises(ValueError, match=r"^evaluation\.cluster_starts=0: must be an integer >= 1$"):
        evaluate(model, obs, gt, tmp_path, cluster_starts=0)
