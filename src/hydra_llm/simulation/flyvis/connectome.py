"""The fly visual system connectome, compiled from the ``flyvis`` wheel's JSON by our own code.

The JSON (``fib25-fib19_v2.2.json``) lists 65 cell types and, per (source type, target type) pair, the
average synapse count to a target whose column is displaced by (du, dv) on a hexagonal lattice. We
tile those "convolutional filters" over the columns ``|u|, |v|, |u+v| <= extent``:

1. nodes, type by type in JSON order, over the columns (u outer, v inner) that match the type's
   ``stride`` pattern;
2. per pair with three or more reported offsets, every lattice point inside the convex hull of the
   offsets that was not reported is added with ``n_syn_fill`` synapses;
3. one edge per (offset, source neuron) whose displaced target exists.

The ``flyvis`` package is located with :mod:`importlib.metadata` and never imported (importing it pulls
torch extras and creates data folders). Counts are pinned by tests (extent 8: 13,741 neurons,
434,112 edges).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.path import Path as PolygonPath
from scipy.spatial import ConvexHull

from hydra_llm.schemas.simulation import ConnectomeOptions

_OPTIONS = ConnectomeOptions()  # build_connectome's defaults, declared once in the schema

FLYVIS_JSON = "flyvis/connectome/fib25-fib19_v2.2.json"
FLYVIS_JSON_SHA256 = "bfbb0766251ff09e22723d0ebbf7b14793e70b3ae8ad0eea64eac9d28223351a"
INSTALL_HINT = (
    "install it with `pip install --no-deps flyvis==1.2.0` (the wheel only; never its dependencies)"
)


@dataclass(frozen=True)
class Connectome:
    """A compiled connectome: node and edge tables as numpy arrays.

    Node arrays have shape (N,), edge arrays (E,), pair arrays (P,) over the realised type pairs and
    group arrays (G,) over the realised (pair, du, dv) offset groups.
    """

    type_names: tuple[str, ...]
    input_type_names: tuple[str, ...]
    extent: int
    node_type: np.ndarray  # (N,) int64, index into type_names (JSON order)
    node_u: np.ndarray  # (N,) int64 hex coordinate
    node_v: np.ndarray  # (N,) int64 hex coordinate
    edge_src: np.ndarray  # (E,) int64
    edge_tgt: np.ndarray  # (E,) int64
    edge_pair: np.ndarray  # (E,) int64 index into pair_*
    edge_group: np.ndarray  # (E,) int64 index into group_*
    pair_src_type: np.ndarray  # (P,) int64
    pair_tgt_type: np.ndarray  # (P,) int64
    pair_sign: np.ndarray  # (P,) float64, +1 excitatory / -1 inhibitory
    group_pair: np.ndarray  # (G,) int64
    group_du: np.ndarray  # (G,) int64
    group_dv: np.ndarray  # (G,) int64
    group_n_syn: np.ndarray  # (G,) float64, average synapse count of the offset

    @property
    def n_neurons(self) -> int:
        return int(self.node_type.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_src.shape[0])

    @property
    def n_types(self) -> int:
        return len(self.type_names)

    @property
    def n_pairs(self) -> int:
        return int(self.pair_sign.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.group_pair.shape[0])

    @property
    def edge_sign(self) -> np.ndarray:
        return self.pair_sign[self.edge_pair]

    @property
    def edge_n_syn(self) -> np.ndarray:
        return self.group_n_syn[self.edge_group]

    @property
    def input_mask(self) -> np.ndarray:
        """(N,) bool: the photoreceptors that receive the visual input."""
        ids = [self.type_names.index(name) for name in self.input_type_names]
        return np.isin(self.node_type, ids)

    @property
    def columns(self) -> np.ndarray:
        """(C, 2) int64 hex coordinates (u, v) of the lattice, in node order."""
        return hex_columns(self.extent)

    @property
    def node_column(self) -> np.ndarray:
        """(N,) int64 index of each node's column in :attr:`columns`."""
        n = self.extent
        lookup = np.full((2 * n + 1, 2 * n + 1), -1, dtype=np.int64)
        cols = self.columns
        lookup[cols[:, 0] + n, cols[:, 1] + n] = np.arange(len(cols))
        return lookup[self.node_u + n, self.node_v + n]


def hex_columns(extent: int) -> np.ndarray:
    """(3n(n+1)+1, 2) int64 column coordinates (u, v) with |u|, |v|, |u+v| <= n; u outer, v inner."""
    if extent < 0:
        raise ValueError(f"connectome extent must be >= 0, got {extent}")
    rng = np.arange(-extent, extent + 1)
    u, v = np.meshgrid(rng, rng, indexing="ij")
    keep = np.abs(u + v) <= extent
    return np.stack([u[keep], v[keep]], axis=1).astype(np.int64)


def flyvis_json_path() -> Path:
    """Path of the connectome JSON inside the installed ``flyvis`` wheel (the package is not imported)."""
    try:
        dist = importlib.metadata.distribution("flyvis")
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(f"the `flyvis` package is not installed; {INSTALL_HINT}") from err
    path = Path(str(dist.locate_file(FLYVIS_JSON)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed flyvis; {INSTALL_HINT}")
    return path


def load_spec(path: str | Path | None = None, sha256: str | None = FLYVIS_JSON_SHA256) -> dict[str, Any]:
    """Read a connectome JSON (default: the flyvis wheel's), checking its sha256 when one is given."""
    file = Path(path) if path is not None else flyvis_json_path()
    blob = file.read_bytes()
    if sha256 is not None:
        digest = hashlib.sha256(blob).hexdigest()
        if digest != sha256:
            raise ValueError(f"{file}: sha256 {digest} does not match the expected {sha256}")
    spec = json.loads(blob)
    validate_spec(spec, source=str(file))
    return spec


def validate_spec(spec: dict[str, Any], source: str = "connectome spec") -> None:
    """Raise a clear error when a spec misses the keys the compiler reads."""
    for key in ("nodes", "edges", "input_units"):
        if key not in spec:
            raise ValueError(f"{source}: missing top-level key {key!r} (need nodes, edges, input_units)")
    names = [node["name"] for node in spec["nodes"]]
    for node in spec["nodes"]:
        kind = node.get("pattern", [None])[0]
        if kind != "stride":
            raise ValueError(f"{source}: node {node['name']!r} has pattern {kind!r}; allowed: 'stride'")
    for edge in spec["edges"]:
        for end in ("src", "tar"):
            if edge[end] not in names:
                raise ValueError(f"{source}: edge endpoint {edge[end]!r} is not a node name")
    for name in spec["input_units"]:
        if name not in names:
            raise ValueError(f"{source}: input unit {name!r} is not a node name")


def fill_hull(offsets: np.ndarray, n_syn: np.ndarray, n_syn_fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Add the lattice points inside the convex hull of ``offsets`` (K, 2) that were not reported.

    Returns the reported offsets followed by the filled ones (u outer, v inner) and their synapse
    counts. Sets of fewer than three offsets are returned unchanged. Qhull's joggle option handles
    collinear sets; points exactly on a hull edge follow the half-open rule of the polygon test.
    """
    if n_syn_fill <= 0 or len(offsets) < 3:
        return offsets, n_syn
    points = offsets.astype(np.float64)
    hull = ConvexHull(points * (1 + 1e-6), qhull_options="QJ")
    polygon = PolygonPath(points[hull.vertices])
    lo, hi = offsets.min(axis=0), offsets.max(axis=0)
    gu, gv = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    grid = np.stack([gu.ravel(), gv.ravel()], axis=1)
    inside = polygon.contains_points(grid)
    reported = {(int(u), int(v)) for u, v in offsets}
    new = np.array([p for p in grid[inside] if (int(p[0]), int(p[1])) not in reported], dtype=np.int64)
    if len(new) == 0:
        return offsets, n_syn
    return np.concatenate([offsets, new]), np.concatenate([n_syn, np.full(len(new), float(n_syn_fill))])


def type_columns(node: dict[str, Any], columns: np.ndarray) -> np.ndarray:
    """(C,) bool: the ``columns`` (C, 2) that hold a neuron of the spec's ``node`` (its type): those whose
    (u, v) are multiples of the type's pattern strides."""
    su, sv = node["pattern"][1]
    return (columns[:, 0] % su == 0) & (columns[:, 1] % sv == 0)


def count_neurons(spec: dict[str, Any], extent: int) -> int:
    """The N of :func:`compile_connectome` at ``extent``, without building its edges."""
    columns = hex_columns(extent)
    return sum(int(type_columns(node, columns).sum()) for node in spec["nodes"])


def compile_connectome(spec: dict[str, Any], extent: int = 8, n_syn_fill: float = 1.0) -> Connectome:
    """Tile the spec's per-pair offset filters over the hex lattice of the given extent."""
    validate_spec(spec)
    names = tuple(node["name"] for node in spec["nodes"])
    columns = hex_columns(extent)
    node_type, node_u, node_v = [], [], []
    for t, node in enumerate(spec["nodes"]):
        keep = type_columns(node, columns)
        node_type.append(np.full(int(keep.sum()), t, dtype=np.int64))
        node_u.append(columns[keep, 0])
        node_v.append(columns[keep, 1])
    types, us, vs = np.concatenate(node_type), np.concatenate(node_u), np.concatenate(node_v)

    size = 2 * extent + 1
    lookup = np.full((len(names), size, size), -1, dtype=np.int64)
    lookup[types, us + extent, vs + extent] = np.arange(len(types))
    members = [np.flatnonzero(types == t) for t in range(len(names))]

    src_parts, tgt_parts, group_of_edge = [], [], []
    pairs: list[tuple[int, int, float]] = []
    groups: list[tuple[int, int, int, float]] = []
    for edge in spec["edges"]:
        s, t = names.index(edge["src"]), names.index(edge["tar"])
        offsets = np.array([o[0] for o in edge["offsets"]], dtype=np.int64).reshape(-1, 2)
        counts = np.array([o[1] for o in edge["offsets"]], dtype=np.float64)
        offsets, counts = fill_hull(offsets, counts, n_syn_fill)
        pair_id, pair_used = len(pairs), False
        for (du, dv), count in zip(offsets, counts, strict=True):
            src = members[s]
            tu, tv = us[src] + du, vs[src] + dv
            valid = (np.abs(tu) <= extent) & (np.abs(tv) <= extent)
            tgt = np.full(len(src), -1, dtype=np.int64)
            tgt[valid] = lookup[t, tu[valid] + extent, tv[valid] + extent]
            ok = tgt >= 0
            if not ok.any():
                continue
            pair_used = True
            group_of_edge.append(np.full(int(ok.sum()), len(groups), dtype=np.int64))
            groups.append((pair_id, int(du), int(dv), float(count)))
            src_parts.append(src[ok])
            tgt_parts.append(tgt[ok])
        if pair_used:
            pairs.append((s, t, float(np.sign(edge["alpha"]))))

    edge_group = np.concatenate(group_of_edge) if group_of_edge else np.zeros(0, dtype=np.int64)
    group_arr = np.array(groups, dtype=np.float64).reshape(-1, 4)
    group_pair = group_arr[:, 0].astype(np.int64)
    pair_arr = np.array(pairs, dtype=np.float64).reshape(-1, 3)
    return Connectome(
        type_names=names,
        input_type_names=tuple(spec["input_units"]),
        extent=int(extent),
        node_type=types,
        node_u=us,
        node_v=vs,
        edge_src=np.concatenate(src_parts) if src_parts else np.zeros(0, dtype=np.int64),
        edge_tgt=np.concatenate(tgt_parts) if tgt_parts else np.zeros(0, dtype=np.int64),
        edge_pair=group_pair[edge_group],
        edge_group=edge_group,
        pair_src_type=pair_arr[:, 0].astype(np.int64),
        pair_tgt_type=pair_arr[:, 1].astype(np.int64),
        pair_sign=pair_arr[:, 2],
        group_pair=group_pair,
        group_du=group_arr[:, 1].astype(np.int64),
        group_dv=group_arr[:, 2].astype(np.int64),
        group_n_syn=group_arr[:, 3],
    )


def synthetic_spec(n_types: int = 6, n_input_types: int = 2, seed: int = 0) -> dict[str, Any]:
    """A small random connectome in the flyvis JSON schema, for fast tests and smoke runs.

    Input types are named R1..Rk (stride 1); the others T0.. (stride 1, the last one stride [3, 2] like
    Lawf). Each input type projects to the first non-input type; every non-input type receives from
    2-3 random types with 1-5 offsets within one column and mixed signs.
    """
    if n_types <= n_input_types:
        raise ValueError(
            f"synthetic connectome: n_types ({n_types}) must exceed n_input_types ({n_input_types})"
        )
    rng = np.random.default_rng(seed)
    inputs = [f"R{k + 1}" for k in range(n_input_types)]
    others = [f"T{k}" for k in range(n_types - n_input_types)]
    names = inputs + others
    nodes = [
        {"name": name, "pattern": ["stride", [3, 2] if name == others[-1] and len(others) > 1 else [1, 1]]}
        for name in names
    ]
    neighbourhood = [[0, 0], [1, 0], [0, 1], [-1, 1], [-1, 0], [0, -1], [1, -1]]
    edges, seen = [], set()

    def add(src: str, tar: str, n_offsets: int, sign: int) -> None:
        if (src, tar) in seen:
            return
        seen.add((src, tar))
        picks = rng.choice(len(neighbourhood), size=n_offsets, replace=False)
        offsets = [[neighbourhood[i], float(np.round(rng.uniform(1.0, 20.0), 3))] for i in sorted(picks)]
        edges.append({"src": src, "tar": tar, "alpha": sign, "offsets": offsets, "edge_type": "chem"})

    for r in inputs:
        add(r, others[0], 1, 1)
    for tar in others:
        for src in rng.choice(names, size=int(rng.integers(2, 4)), replace=False):
            add(str(src), tar, int(rng.integers(1, 6)), int(rng.choice([-1, 1])))
    return {
        "nodes": nodes,
        "edges": edges,
        "receptors": [],
        "input_units": inputs,
        "output_units": others[-2:],
    }


def connectome_spec(
    source: str = _OPTIONS.source, path: str | None = _OPTIONS.path, seed: int = _OPTIONS.seed
) -> dict[str, Any]:
    """The spec named by ``source``: 'flyvis' (the wheel's JSON), 'file' (a JSON of the same schema at
    ``path``, no checksum) or 'synthetic' (:func:`synthetic_spec` with ``seed``)."""
    if source == "flyvis":
        return load_spec(None)
    if source == "file":
        if path is None:
            raise ValueError("simulation.connectome.path is required when connectome.source='file'")
        return load_spec(path, sha256=None)
    if source == "synthetic":
        return synthetic_spec(seed=seed)
    raise ValueError(f"simulation.connectome.source={source!r}; allowed: 'flyvis', 'file', 'synthetic'")


def build_connectome(
    source: str = _OPTIONS.source,
    extent: int = _OPTIONS.extent,
    path: str | None = _OPTIONS.path,
    seed: int = _OPTIONS.seed,
) -> Connectome:
    """Compile the connectome named by ``source`` (:func:`connectome_spec`) at ``extent``."""
    return compile_connectome(connectome_spec(source, path, seed), extent=extent)
