"""The connectome compiler: exact counts of the real flyvis JSON and of a hand-checked tiny spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hydra_llm.simulation.flyvis.connectome import (
    build_connectome,
    compile_connectome,
    fill_hull,
    flyvis_json_path,
    hex_columns,
    load_spec,
    synthetic_spec,
)

TINY = Path(__file__).parent / "data" / "flyvis_tiny_connectome.json"


@pytest.fixture(scope="module")
def spec() -> dict:
    return load_spec()


@pytest.mark.parametrize(
    ("extent", "neurons", "edges"),
    [(0, 65, 480), (1, 443, 8_174), (4, 3_865, 110_794), (8, 13_741, 434_112), (15, 45_669, 1_513_231)],
)
def test_flyvis_counts(spec, extent, neurons, edges):
    c = compile_connectome(spec, extent)
    assert (c.n_neurons, c.n_edges) == (neurons, edges)
    assert c.n_types == 65
    assert c.input_mask.sum() == 8 * len(hex_columns(extent))


def test_flyvis_extent8_pairs_groups_and_layout(spec):
    c = compile_connectome(spec, 8)
    assert c.n_pairs == 604 and c.n_groups == 2_355
    assert c.input_mask.sum() == 1_736
    assert np.flatnonzero(c.input_mask).max() == 1_735  # photoreceptors come first
    lawf = [c.type_names.index("Lawf1"), c.type_names.index("Lawf2")]
    assert [(c.node_type == t).sum() for t in lawf] == [35, 35]
    assert np.all(c.node_u[np.isin(c.node_type, lawf)] % 3 == 0)
    # every edge lands on a target at the offset of its group
    du = c.node_u[c.edge_tgt] - c.node_u[c.edge_src]
    assert np.array_equal(du, c.group_du[c.edge_group])
    assert np.array_equal(c.pair_tgt_type[c.edge_pair], c.node_type[c.edge_tgt])
    assert set(np.unique(c.pair_sign)) == {-1.0, 1.0}


def test_hull_filling_grows_offsets_to_2378(spec):
    total = 0
    for edge in spec["edges"]:
        offsets = np.array([o[0] for o in edge["offsets"]])
        counts = np.array([o[1] for o in edge["offsets"]], dtype=float)
        total += len(fill_hull(offsets, counts, 1.0)[0])
    assert total == 2_378


def test_fill_hull_adds_interior_points_only():
    diamond = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]])
    filled, counts = fill_hull(diamond, np.full(4, 2.0), 1.0)
    assert filled.tolist() == [*diamond.tolist(), [0, 0]]
    assert counts.tolist() == [2.0, 2.0, 2.0, 2.0, 1.0]
    pair = np.array([[0, 0], [1, 0]])
    assert fill_hull(pair, np.ones(2), 1.0)[0].tolist() == pair.tolist()


def test_tiny_fixture_counts_by_hand():
    spec = json.loads(TINY.read_text())
    one = compile_connectome(spec, 1)
    # 4 stride-1 types x 7 columns + 1 stride-(3,2) node; edges 7+7+4+1+(4*4+7)+1, L->L never lands
    assert (one.n_neurons, one.n_edges, one.n_pairs, one.n_groups) == (29, 43, 6, 10)
    zero = compile_connectome(spec, 0)
    assert (zero.n_neurons, zero.n_edges) == (5, 5)
    filled = one.group_n_syn[(one.group_du == 0) & (one.group_dv == 0)]
    assert 1.0 in filled.tolist()  # the hull-filled centre of B -> A


def test_synthetic_spec_compiles_with_same_schema():
    c = compile_connectome(synthetic_spec(seed=3), extent=1)
    assert c.n_types == 6 and c.input_mask.sum() == 2 * 7
    assert c.n_edges > 0 and c.edge_src.max() < c.n_neurons


def test_checksum_mismatch_and_bad_spec_are_clear(tmp_path):
    copy = tmp_path / "c.json"
    copy.write_bytes(flyvis_json_path().read_bytes() + b" ")
    with pytest.raises(ValueError, match="sha256"):
        load_spec(copy)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [], "edges": []}))
    with pytest.raises(ValueError, match="input_units"):
        load_spec(bad, sha256=None)
    with pytest.raises(ValueError, match="allowed: 'flyvis', 'file', 'synthetic'"):
        build_connectome("hemibrain")
    with pytest.raises(ValueError, match="extent"):
        hex_columns(-1)
