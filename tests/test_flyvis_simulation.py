"""Parameters, dynamics, stimuli and the DataModule of the flyvis regime (tiny connectomes)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from hydra_llm.schemas.simulation import FlyvisSimulation
from hydra_llm.simulation.flyvis import FlyvisDataModule
from hydra_llm.simulation.flyvis.connectome import compile_connectome, load_spec
from hydra_llm.simulation.flyvis.dynamics import FlyvisODE
from hydra_llm.simulation.flyvis.parameters import (
    TRAINED_CHECKPOINT,
    flyvis_init,
    load_checkpoint,
    parameter_names,
    random_trained_like,
    trained,
)
from hydra_llm.simulation.flyvis.stimuli import FAMILIES, column_positions, synthetic_sequence

TINY = Path(__file__).parent / "data" / "flyvis_tiny_connectome.json"
FAMS = ["moving_edge", "moving_bar", "grating", "flash", "white_noise", "blank"]


def tiny(extent: int = 1):
    return compile_connectome(json.loads(TINY.read_text()), extent)


def datamodule(tmp_path=None, **overrides) -> FlyvisDataModule:
    kwargs = {
        "connectome": {"source": "file", "path": str(TINY), "extent": 1},
        "parameters": {"mode": "random_trained_like"},
        "stimulus": {"source": "synthetic", "families": FAMS, "ood_families": ["pink_noise"]},
        "n_frames": 200,
        "n_ood_frames": 50,
        "noise_model_level": 0.0,
        "cache_dir": str(tmp_path) if tmp_path is not None else None,
    }
    kwargs.update(overrides)
    return FlyvisDataModule(**kwargs)


def test_flyvis_init_gives_mean_abs_weight_001_per_pair():
    c = compile_connectome(load_spec(), 1)
    p = flyvis_init(c, seed=0)
    w = np.abs(p.edge_weights(c))
    per_pair = np.bincount(c.edge_pair, weights=w) / np.bincount(c.edge_pair)
    assert np.allclose(per_pair, 0.01)
    assert np.all(p.tau_type == 0.05) and abs(p.V_rest_type.mean() - 0.5) < 0.03


def test_random_trained_like_is_bounded_and_in_range():
    c = compile_connectome(load_spec(), 1)
    p = random_trained_like(c, seed=1, dt=0.02, median_abs_weight=0.3)  # too strong: must be shrunk
    assert p.gain < 1.0
    assert np.all((p.tau_type >= 0.97 * 0.02 - 1e-12) & (p.tau_type <= 0.3))
    assert np.all((p.V_rest_type >= 0) & (p.V_rest_type <= 0.8))
    again = random_trained_like(c, seed=1, dt=0.02, median_abs_weight=0.3)
    assert np.array_equal(p.pair_strength, again.pair_strength)


def test_trained_ground_truth_at_extent_8_has_the_published_figures():
    c = compile_connectome(load_spec(), 8)
    p = trained(c)
    w = p.edge_weights(c)
    assert (round(float(w.min()), 2), round(float(w.max()), 2)) == (-1.50, 4.17)
    assert int((p.pair_strength == 0).sum()) == 31 and c.n_pairs == 604
    assert int((p.tau_type < 0.02).sum()) == 51
    assert 0.0193 < p.tau_type.min() < 0.0195 and 0.315 < p.tau_type.max() < 0.317
    assert 0.0066 < p.V_rest_type.min() < 0.0068 and 0.79 < p.V_rest_type.max() < 0.81
    assert FlyvisSimulation().parameters.mode == "trained"
    assert "Janelia Open-Source License" in (TRAINED_CHECKPOINT.parent / "LICENCE-flyvis-gnn.md").read_text()


def test_trained_ground_truth_maps_by_name_at_every_extent():
    spec = load_spec()
    small, large = compile_connectome(spec, 1), compile_connectome(spec, 8)
    assert small.n_pairs == 597  # 7 pairs are not realised at extent 1
    p_small, p_large = trained(small), trained(large)
    _, pairs_small, groups_small = parameter_names(small)
    _, pairs_large, groups_large = parameter_names(large)
    at = {key: i for i, key in enumerate(pairs_large)}
    assert np.array_equal(p_small.pair_strength, p_large.pair_strength[[at[k] for k in pairs_small]])
    at = {key: i for i, key in enumerate(groups_large)}
    assert np.array_equal(p_small.group_syn_count, p_large.group_syn_count[[at[k] for k in groups_small]])
    assert np.array_equal(p_small.tau_type, p_large.tau_type)


def test_checkpoint_round_trip_and_errors(tmp_path):
    reference = compile_connectome(load_spec(), 15)  # flyvis's parameter order
    rng = np.random.default_rng(0)
    state = {
        "nodes_bias": torch.tensor(rng.uniform(0, 1, reference.n_types)),
        "nodes_time_const": torch.tensor(rng.uniform(0.02, 0.2, reference.n_types)),
        "edges_sign": torch.tensor(reference.pair_sign),
        "edges_syn_strength": torch.tensor(rng.uniform(0, 0.1, reference.n_pairs)),
        "edges_syn_count": torch.tensor(np.log(reference.group_n_syn)),
    }
    path = tmp_path / "chkpt_00000"
    torch.save({"network": state}, path)
    c = compile_connectome(load_spec(), 1)
    p = load_checkpoint(path, c)
    strength = dict(zip(parameter_names(reference)[1], state["edges_syn_strength"].numpy(), strict=True))
    by_name = np.array([strength[key] for key in parameter_names(c)[1]])
    assert np.allclose(p.edge_weights(c), c.pair_sign[c.edge_pair] * c.edge_n_syn * by_name[c.edge_pair])

    swapped = state["edges_sign"].clone()
    swapped[[0, -1]] = swapped[[-1, 0]]
    assert not torch.equal(swapped, state["edges_sign"])
    torch.save({"network": {**state, "edges_sign": swapped}}, path)
    with pytest.raises(ValueError, match="not flyvis's in flyvis's parameter order"):
        load_checkpoint(path, c)
    torch.save({"network": {**state, "edges_syn_strength": torch.zeros(3)}}, path)
    with pytest.raises(ValueError, match="edges_syn_strength has 3 values, flyvis's connectome has 604"):
        load_checkpoint(path, c)
    torch.save({"network": state}, path)
    with pytest.raises(ValueError, match="has no cell type for .* it fits the flyvis connectome only"):
        load_checkpoint(path, tiny())
    with pytest.raises(ValueError, match="expected sha256"):
        load_checkpoint(path, c, sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        load_checkpoint(tmp_path / "nope", c)


def test_rate_matches_dense_formula_and_input_reaches_photoreceptors_only():
    c = tiny()
    rng = np.random.default_rng(0)
    w, tau, vr = (
        rng.normal(0, 0.5, c.n_edges),
        rng.uniform(0.005, 0.1, c.n_neurons),
        rng.uniform(0, 1, c.n_neurons),
    )
    ode = FlyvisODE.build(c, w, tau, vr, dt=0.02, clamp_tau=True)
    V, frame = rng.normal(0, 1, c.n_neurons).astype(np.float32), rng.random(7).astype(np.float32)
    dense = np.zeros((c.n_neurons, c.n_neurons))
    np.add.at(dense, (c.edge_tgt, c.edge_src), w)
    e = np.where(c.input_mask, frame[c.node_column], 0.0)
    expected = (-V + vr + dense @ np.maximum(V, 0) + e) / np.maximum(tau, 0.02)
    assert np.allclose(ode.rate(V, frame), expected, rtol=1e-4, atol=1e-4)
    movie = ode.input_movie(frame[None])[0]
    assert np.array_equal(movie != 0, c.input_mask & (frame[c.node_column] != 0))
    # the same luminance for every photoreceptor type of a column
    for col in range(7):
        assert len(set(movie[c.input_mask & (c.node_column == col)].tolist())) == 1
    raw = FlyvisODE.build(c, w, tau, vr, dt=0.02, clamp_tau=False)
    assert np.allclose(raw.tau_eff, tau) and np.all(ode.tau_eff >= 0.02)


def test_input_is_kept_as_the_column_movie_and_indexes_like_the_dense_input():
    c = tiny()
    p = random_trained_like(c, seed=0, dt=0.02)
    ode = FlyvisODE.build(c, p.edge_weights(c), p.neuron_tau(c), p.neuron_V_rest(c), 0.02)
    movie = np.random.default_rng(2).random((30, 7), dtype=np.float32)
    inputs = ode.input_movie(movie)
    assert inputs.values.shape == (30, 7) and inputs.shape == (30, c.n_neurons) and len(inputs) == 30
    dense = np.zeros((30, c.n_neurons), np.float32)
    dense[:, c.input_mask] = movie[:, c.node_column[c.input_mask]]
    dense = torch.from_numpy(dense)
    frames = torch.tensor([3, 0, 29, 3])
    assert torch.equal(inputs.dense(), dense) and torch.equal(inputs[5], dense[5])
    assert torch.equal(inputs[4:9], dense[4:9]) and torch.equal(inputs[frames], dense[frames])
    assert torch.equal(inputs.index_select(0, frames), dense[frames])
    assert torch.equal(inputs[frames, 2:6], dense[frames, 2:6]) and torch.equal(inputs[7, 3], dense[7, 3])
    assert torch.equal(inputs.to("cpu")[frames], dense[frames])


def test_euler_run_matches_rate_and_noise_is_seeded():
    c = tiny()
    p = random_trained_like(c, seed=0, dt=0.02)
    ode = FlyvisODE.build(c, p.edge_weights(c), p.neuron_tau(c), p.neuron_V_rest(c), 0.02)
    stim = np.random.default_rng(1).random((5, 7), dtype=np.float32)
    V0 = ode.steady_state(10.0)
    assert np.abs(ode.rate(V0, np.full(7, 0.5, np.float32))).max() < 1e-3  # grey steady state
    out, _ = ode.run(stim, V0)
    assert np.allclose(out[1], out[0] + 0.02 * ode.rate(out[0], stim[0]), atol=1e-5)
    a, _ = ode.run(stim, V0, 0.05, np.random.default_rng(3))
    b, _ = ode.run(stim, V0, 0.05, np.random.default_rng(3))
    assert np.array_equal(a, b) and not np.allclose(a, out)
    into = np.full((7, c.n_neurons), np.nan, np.float32)  # a longer record: the run fills a slice of it
    ode.run(stim, V0, 0.05, np.random.default_rng(3), out=into[1:6])
    assert np.array_equal(into[1:6], a) and np.isnan(into[0]).all() and np.isnan(into[6]).all()
    with pytest.raises(ValueError, match="needs"):
        ode.run(stim, V0, out=into)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_stimulus_families_are_valid_movies(family):
    cols = compile_connectome(json.loads(TINY.read_text()), 2).columns
    movie = FAMILIES[family](column_positions(cols), 60, 0.02, np.random.default_rng(0))
    assert movie.shape == (60, len(cols))
    assert movie.min() >= 0.0 and movie.max() <= 1.0
    if family in ("moving_edge", "moving_bar", "grating", "white_noise", "pink_noise"):
        assert movie.std(axis=0).max() > 0.05  # something moves


def test_synthetic_sequence_mixes_and_rejects_unknown_family():
    cols = tiny().columns
    seq = synthetic_sequence(cols, 500, 0.02, FAMS, np.random.default_rng(0))
    assert seq.shape == (500, 7) and seq.dtype == np.float32
    with pytest.raises(ValueError, match="allowed values"):
        synthetic_sequence(cols, 10, 0.02, ["sintel"], np.random.default_rng(0))


def test_datamodule_separates_observations_and_ground_truth(tmp_path):
    dm = datamodule(tmp_path)
    dm.setup()
    obs, gt = dm.observations, dm.ground_truth
    assert obs.activity.shape == (200, 29) and obs.n_train_frames == 160
    assert obs.edge_index.shape == (2, 43) and obs.external_input.shape == (200, 29)
    assert obs.extras["ood_activity"].shape == (50, 29)
    assert gt["W"].shape == (43,) and gt["types"].shape == (29,)
    fields = {f.name for f in dataclasses.fields(obs)} | set(obs.extras)
    assert not fields & {"W", "tau", "V_rest", "types"}
    d = (obs.activity[1:160] - obs.activity[:159]) / obs.dt
    assert torch.allclose(obs.derivative[:159], d, atol=1e-3)
    # noise-free voltages follow the true ODE exactly
    c = dm.build_connectome()
    ode = FlyvisODE.build(c, gt["W"].double().numpy(), gt["tau_raw"].numpy(), gt["V_rest"].numpy(), 0.02)
    lum = obs.external_input[10, torch.from_numpy(np.flatnonzero(c.input_mask))].numpy()
    frame = np.zeros(7, np.float32)
    frame[c.node_column[c.input_mask]] = lum
    assert np.allclose(obs.derivative[10].numpy(), ode.rate(obs.activity[10].numpy(), frame), atol=1e-3)


def test_datamodule_cache_is_reused_and_keyed_by_seed(tmp_path):
    first = datamodule(tmp_path)
    first.setup()
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    second = datamodule(tmp_path)
    second.setup()
    assert torch.equal(first.observations.activity, second.observations.activity)
    # memory-mapped from the file: the children of a sweep that share it share its pages
    assert str(files[0].resolve()) in Path("/proc/self/maps").read_text()
    # the long recordings were simulated straight into the record folder and are mapped from there
    record = files[0].with_suffix(".rec")
    assert sorted(p.name for p in record.iterdir()) == [
        "activity.npy",
        "derivative.npy",
        "extras.ood_activity.npy",
    ]
    # the size the preflight checks against the free space, to the npy headers
    written = sum(np.load(p, mmap_mode="r").nbytes for p in record.iterdir())
    assert first.record_bytes() == written
    maps = Path("/proc/self/maps").read_text()
    assert all(str(p.resolve()) in maps for p in record.iterdir())
    assert torch.equal(torch.from_numpy(np.load(record / "derivative.npy")), second.observations.derivative)
    uncached = datamodule(None)
    uncached.setup()
    for name in ("activity", "derivative"):
        assert torch.equal(getattr(uncached.observations, name), getattr(second.observations, name)), name
    ood = "ood_activity"
    assert torch.equal(uncached.observations.extras[ood], second.observations.extras[ood])
    # a run killed while simulating leaves a record folder but no .pt: the next run redoes it
    files[0].unlink()
    (record / "activity.npy").unlink()  # a new file: the mapped one stays valid for `first`
    (record / "activity.npy").write_bytes(b"partial")
    again = datamodule(tmp_path)
    again.setup()
    assert torch.equal(again.observations.activity, first.observations.activity)
    other = datamodule(tmp_path, seed=7)
    other.setup()
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert not torch.equal(first.observations.activity, other.observations.activity)


def test_a_damaged_cache_entry_is_simulated_again(tmp_path, caplog):
    """A record file deleted to free space, or a truncated cache file, is a cache miss with a warning,
    not an error in every run that shares the entry; the data come out as before."""
    first = datamodule(tmp_path)
    first.setup()
    path = next(tmp_path.glob("*.pt"))
    (path.with_suffix(".rec") / "activity.npy").unlink()  # `first` keeps its mapping
    damaged = {"a record file deleted": None, "a truncated cache file": path.stat().st_size // 2}
    for what, size in damaged.items():
        if size is not None:
            with open(path, "r+b") as handle:
                handle.truncate(size)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hydra_llm.simulation.base"):
            again = datamodule(tmp_path)
            again.setup()
        assert f"the data cache's {path} cannot be read" in caplog.text, what
        assert "simulating it again" in caplog.text, what
        assert torch.equal(again.observations.activity, first.observations.activity), what
        assert torch.equal(again.observations.derivative, first.observations.derivative), what
        assert sorted(p.name for p in tmp_path.glob("*.pt")) == [path.name]


def test_the_cache_key_holds_the_stimulus_keys_its_source_reads(tmp_path):
    """A key the source ignores (the illuminant under synthetic stimuli) shares the cached record; a
    key it reads (the families) makes another; every stimulus key is read by some source."""
    from hydra_llm.schemas.simulation import StimulusOptions, StimulusSource
    from hydra_llm.simulation.flyvis.datamodule import SOURCE_KEYS, STIMULUS_KEYS

    stimulus = {"source": "synthetic", "families": FAMS, "ood_families": ["pink_noise"]}
    first = datamodule(tmp_path)
    first.setup()
    lit = datamodule(tmp_path, stimulus={**stimulus, "luminance": [0.2, 0.8], "crop": 0.5})
    assert lit.cache_path(tmp_path) == first.cache_path(tmp_path)
    lit.setup()
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert torch.equal(lit.observations.activity, first.observations.activity)
    fewer = datamodule(tmp_path, stimulus={**stimulus, "families": FAMS[:3]})
    assert fewer.cache_path(tmp_path) != first.cache_path(tmp_path)
    assert first.stimulus_read() == {**stimulus, "clip_s": [0.5, 2.0], "blank_s": [0.0, 0.0]}
    read = set(STIMULUS_KEYS).union(*SOURCE_KEYS.values())
    assert read == {f.name for f in dataclasses.fields(StimulusOptions)}
    assert set(SOURCE_KEYS) == {source.value for source in StimulusSource}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"parameters": {"mode": "pretrained"}},
            r"parameters.mode='pretrained': allowed values: \[trained, flyvis",
        ),
        ({"parameters": {"mode": "trained"}}, "it fits the flyvis connectome only"),
        (
            {"stimulus": {"source": "sintel"}},
            r"source='sintel': allowed values: \[synthetic, natural, davis\]",
        ),
        ({"stimulus": {"source": "synthetic", "families": FAMS, "ood_families": ["grating"]}}, "overlap"),
        ({"test_fraction": 1.5}, "test_fraction"),
        (
            {"connectome": {"source": "flyvis", "extent": 16}},
            r"connectome.extent=16: must be <= 15 with connectome.source=flyvis \(the fly's eye has 721",
        ),
        ({"parameters": {"mode": "checkpoint", "checkpoint_path": "/nowhere"}}, "checkpoint_path"),
    ],
)
def test_bad_config_fails_before_simulating(overrides, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        datamodule(**overrides)


def test_only_the_flyvis_connectome_is_bounded_by_the_eye():
    larger = datamodule(connectome={"source": "file", "path": str(TINY), "extent": 16})
    assert larger.connectome_cfg["extent"] == 16
