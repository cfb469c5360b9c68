"""The signal GNN: node-wise aggregation vs the per-edge oracle, layouts, optimizer, losses, errors."""

from __future__ import annotations

import pytest
import torch

from hydra_llm.models.layers import EdgeMessagePassing
from hydra_llm.models.signal_gnn import SignalGNN
from hydra_llm.schemas.training import SignalTraining
from hydra_llm.simulation.signal import SignalDataModule

TRAINING = dict(
    n_epochs=1,
    batch_size=4,
    data_augmentation_loop=3,
    learning_rate_W_start=2e-3,
    learning_rate_start=1e-3,
    learning_rate_embedding_start=5e-4,
    coeff_W_L1=1e-5,
    coeff_edge_diff=10.0,
    coeff_edge_norm=1.0,
    coeff_phi_zero=1.0,
    seed=7,
)


@pytest.fixture(scope="module")
def sparse_dm() -> SignalDataModule:
    dm = SignalDataModule(
        n_neurons=40,
        n_neuron_types=2,
        n_frames=200,
        burn_in_frames=20,
        connectivity_filling_factor=0.3,
        structure_known=True,
        seed=1,
    )
    dm.setup("fit")
    return dm


def scramble(model: SignalGNN, seed: int = 0) -> SignalGNN:
    """Random non-trivial parameters everywhere (W, embeddings, MLP output layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def oracle(model: SignalGNN, u: torch.Tensor, edge_index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_j W_ij psi(u_j, a_j) with psi evaluated once per edge by torch-geometric."""
    x = model._features(u).permute(1, 0, 2)  # (N, B, F)
    layer = EdgeMessagePassing(lambda feats: model.psi(feats))
    return layer(x, edge_index, weight).T


def test_dense_aggregation_equals_per_edge_message_passing(sparse_dm):
    obs = sparse_dm.observations
    hidden_graph = type(obs)(obs.activity, obs.derivative, obs.dt, obs.n_train_frames)  # graph unknown
    model = scramble(SignalGNN(hidden_graph, TRAINING))
    assert not model.use_edges
    n = obs.n_neurons
    full = torch.stack(torch.nonzero(~torch.eye(n, dtype=torch.bool), as_tuple=True)[::-1])  # source, target
    u = obs.activity[:5]
    with torch.no_grad():
        expected = oracle(model, u, full, model.W[full[1], full[0]])
        got = model.aggregate(model.psi_of(u))
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert got.abs().max() > 0.1


def test_edge_layout_equals_oracle_and_dense_layout(sparse_dm):
    obs = sparse_dm.observations
    model = scramble(SignalGNN(obs, TRAINING))
    assert model.use_edges and model.W.shape == (obs.edge_index.shape[1],)
    u = obs.activity[:5]
    with torch.no_grad():
        expected = oracle(model, u, model.edge_index, model.W)
        got = model.aggregate(model.psi_of(u))
        dense = model.learned_W()
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(model.psi_of(u) @ dense.T, got, atol=1e-5, rtol=1e-5)
    assert (dense != 0).sum() == obs.edge_index.shape[1]


def test_edge_layout_gradient_reaches_only_known_edges(sparse_dm):
    model = scramble(SignalGNN(sparse_dm.observations, TRAINING))
    loss = model.losses(sparse_dm.observations.activity[:4], sparse_dm.observations.derivative[:4])[
        "prediction"
    ]
    loss.backward()
    assert model.W.grad.shape == model.W.shape and model.W.grad.abs().sum() > 0


def test_dense_diagonal_never_contributes(sparse_dm):
    obs = sparse_dm.observations
    model = scramble(SignalGNN(type(obs)(obs.activity, obs.derivative, obs.dt, obs.n_train_frames), TRAINING))
    u = obs.activity[:3]
    with torch.no_grad():
        before = model(u)
        model.W.diagonal().add_(100.0)
        after = model(u)
    assert torch.equal(before, after)
    assert torch.all(model.learned_W().diagonal() == 0)


def test_optimizer_has_three_groups_at_their_learning_rates(sparse_dm):
    model = SignalGNN(sparse_dm.observations, TRAINING)
    groups = {g["name"]: g for g in model.configure_optimizers().param_groups}
    assert set(groups) == {"W", "mlp", "embedding"}
    assert groups["W"]["lr"] == 2e-3 and groups["mlp"]["lr"] == 1e-3 and groups["embedding"]["lr"] == 5e-4
    assert groups["W"]["params"][0] is model.W and groups["embedding"]["params"][0] is model.a
    n_mlp = sum(p.numel() for p in groups["mlp"]["params"])
    assert n_mlp == sum(p.numel() for p in model.phi.parameters()) + sum(
        p.numel() for p in model.psi.parameters()
    )


def test_iterations_per_epoch_follow_the_seeds_formula(sparse_dm):
    model = SignalGNN(sparse_dm.observations, {**TRAINING, "data_augmentation_loop": 7, "batch_size": 3})
    assert model.frame_sampling.batches_per_epoch == int(200 * 7 // 3 * 0.2) == 93
    assert model.frame_sampling.batch_size == 3


def test_mlp_input_sizes_are_derived_from_embedding_dim(sparse_dm):
    model = SignalGNN(sparse_dm.observations, TRAINING, embedding_dim=5)
    assert model.phi.net[0].in_features == 6 and model.psi.net[0].in_features == 6
    assert model.a.shape == (40, 5)


def test_loss_terms_have_their_documented_values(sparse_dm):
    obs = sparse_dm.observations
    model = scramble(SignalGNN(obs, TRAINING))
    u, y = obs.activity[:4], obs.derivative[:4]
    with torch.no_grad():
        terms = model.losses(u, y)
        zero = torch.zeros(1, obs.n_neurons)
        anchor = torch.full((1, obs.n_neurons), 2 * model.xnorm)
        shifted = model.psi_of(u + 0.05 * model.xnorm)
        assert terms["prediction"] == pytest.approx(float(((model(u) - y) ** 2).mean()), rel=1e-5)
        assert terms["W_L1"] == pytest.approx(1e-5 * float(model.W.abs().sum()), rel=1e-5)
        assert terms["phi_zero"] == pytest.approx(float((model.phi_of(zero) ** 2).mean()), rel=1e-5)
        assert terms["edge_norm"] == pytest.approx(float(((model.psi_of(anchor) - 1) ** 2).mean()), rel=1e-5)
        assert terms["edge_diff"] == pytest.approx(
            10.0 * float(torch.relu(model.psi_of(u) - shifted).mean()), rel=1e-5, abs=1e-8
        )
    off = SignalGNN(obs, {**TRAINING, "coeff_W_L1": 0.0, "coeff_edge_diff": 0.0})
    assert set(off.losses(u, y)) == {"prediction", "edge_norm", "phi_zero"}


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"learning_rate_W_start": -1.0}, "training.learning_rate_W_start=-1.0: must be a finite float > 0"),
        ({"coeff_W_L1": -1e-3}, "training.coeff_W_L1=-0.001: must be a finite float >= 0"),
        ({"batch_size": 0}, "training.batch_size=0"),
        ({"n_epochs": 0}, "training.n_epochs=0"),
    ],
)
def test_bad_training_values_are_rejected(sparse_dm, training, message):
    with pytest.raises(ValueError) as err:
        SignalGNN(sparse_dm.observations, {**TRAINING, **training})
    assert message in str(err.value)


def test_misspelt_training_key_and_bad_model_options(sparse_dm):
    # a key left out takes the schema's default; a misspelt one is named with the allowed keys
    incomplete = {k: v for k, v in TRAINING.items() if k != "coeff_phi_zero"}
    assert SignalGNN.check_training(incomplete)["coeff_phi_zero"] == SignalTraining.coeff_phi_zero
    with pytest.raises(
        ValueError, match=r"training: unknown keys \['coeff_phi_zer'\]; allowed keys: \[.*'coeff_phi_zero'"
    ):
        SignalGNN(sparse_dm.observations, {**incomplete, "coeff_phi_zer": 1.0})
    with pytest.raises(ValueError, match="model.w_layout='csr'"):
        SignalGNN(sparse_dm.observations, TRAINING, w_layout="csr")
    obs = sparse_dm.observations
    with pytest.raises(ValueError, match="structure_known"):
        SignalGNN(
            type(obs)(obs.activity, obs.derivative, obs.dt, obs.n_train_frames), TRAINING, w_layout="edges"
        )


def test_sparse_aggregation_gradients_match_the_dense_product():
    from hydra_llm.models.layers import EdgeGraph, aggregate_edges

    gen = torch.Generator().manual_seed(3)
    n = 30
    flat = torch.randperm(n * n, generator=gen)[:200]
    edges = torch.stack([flat % n, flat // n])
    weight = torch.randn(200, generator=gen, dtype=torch.float64, requires_grad=True)
    psi = torch.randn(5, n, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, n, generator=gen, dtype=torch.float64)
    graph = EdgeGraph(edges, n)
    edges = graph.edge_index  # the weights follow the graph's edge order
    (aggregate_edges(psi, weight, graph) * upstream).sum().backward()
    grad_w, grad_psi = weight.grad.clone(), psi.grad.clone()
    weight.grad = psi.grad = None
    dense = torch.zeros(n, n, dtype=torch.float64).index_put((edges[1], edges[0]), weight)
    (psi @ dense.T * upstream).sum().backward()
    assert torch.allclose(grad_w, weight.grad) and torch.allclose(grad_psi, psi.grad)


@pytest.mark.parametrize("n_edges", [20, 600])  # sparse: per-edge gather; dense: sampled outer product
def test_sparse_aggregation_gradients_on_both_paths(n_edges):
    from hydra_llm.models.layers import EdgeGraph, aggregate_edges

    gen = torch.Generator().manual_seed(4)
    n = 30
    flat = torch.randperm(n * n, generator=gen)[:n_edges]
    graph = EdgeGraph(torch.stack([flat % n, flat // n]), n)
    assert graph.outer_grad == (n_edges == 600)
    weight = torch.randn(n_edges, generator=gen, dtype=torch.float64, requires_grad=True)
    psi = torch.randn(4, n, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, p: aggregate_edges(p, w, graph), (weight, psi))


def test_training_can_be_checked_before_any_data_exists():
    assert SignalGNN.check_training(TRAINING)["batch_size"] == 4
    with pytest.raises(ValueError, match="training.learning_rate_start=0"):
        SignalGNN.check_training({**TRAINING, "learning_rate_start": 0})


def test_fit_runs_on_the_configured_threads_and_restores_them(sparse_dm):
    import lightning.pytorch as pl

    seen = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, *args):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    model = SignalGNN(sparse_dm.observations, TRAINING, cpu_threads=1)
    trainer = pl.Trainer(
        max_epochs=1,
        max_steps=2,
        accelerator="cpu",
        logger=False,
        callbacks=[Probe()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=sparse_dm)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="model.cpu_threads=0"):
        SignalGNN(sparse_dm.observations, TRAINING, cpu_threads=0)
