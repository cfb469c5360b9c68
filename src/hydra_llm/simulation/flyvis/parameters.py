"""Ground-truth parameters of the fly visual system model: per-type tau and V_rest, per-pair strength.

Every parameter is shared the way flyvis shares it: ``tau`` and ``V_rest`` per cell type (65),
the synaptic strength ``alpha`` per (source type, target type) pair (604 values) and the synapse
count ``N`` per (pair, du, dv) group (2,355 values). Edge e weighs ``sign(pair) * N(group) * alpha(pair)``.

Modes (``simulation.parameters.mode``):

* ``trained`` (default): the trained model flow/0000/000 shipped in ``assets/`` (see its README and
  licence), mapped by name (:func:`load_checkpoint`).
* ``flyvis_init``: flyvis's initialisation rule: tau = 0.05 s, V_rest ~ N(0.5, 0.05) per type,
  alpha = 0.01 / <N>_pair so each pair's mean |w| is 0.01.
* ``random_trained_like``: tau, V_rest and alpha drawn in the ranges of trained flyvis models, then
  rescaled until a flicker probe keeps the activity bounded (see :func:`random_trained_like`).
* ``checkpoint``: a user's flyvis checkpoint file (torch zip with a ``network`` dict), read the same way.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hydra_llm.schemas.simulation import EYE_EXTENT, ParameterOptions
from hydra_llm.simulation.flyvis.connectome import Connectome, compile_connectome, load_spec

_OPTIONS = ParameterOptions()  # the random_trained_like defaults, declared once in the schema
TRAINED_CHECKPOINT = Path(__file__).parent / "assets" / "flow_0000_000_best_chkpt"
TRAINED_SHA256 = "d8a57a022aa18ca338599be713af9db29b89cde4b00098ffe42b78f0d583e46a"
CHECKPOINT_ORDER_EXTENT = EYE_EXTENT  # flyvis's default extent; its parameter order is first appearance there


@dataclass(frozen=True)
class FlyvisParameters:
    """Shared parameters; arrays are float64. tau in seconds, V_rest in the model's voltage unit."""

    tau_type: np.ndarray  # (n_types,)
    V_rest_type: np.ndarray  # (n_types,)
    pair_strength: np.ndarray  # (P,) alpha >= 0
    group_syn_count: np.ndarray  # (G,) N, synapses per (pair, du, dv)
    gain: float = 1.0  # the rescaling accepted by the stability probe (1 when none)

    def edge_weights(self, connectome: Connectome) -> np.ndarray:
        """(E,) float64 w_e = sign(pair) * N(group) * alpha(pair)."""
        pair, group = connectome.edge_pair, connectome.edge_group
        return connectome.pair_sign[pair] * self.group_syn_count[group] * self.pair_strength[pair]

    def neuron_tau(self, connectome: Connectome) -> np.ndarray:
        return self.tau_type[connectome.node_type]

    def neuron_V_rest(self, connectome: Connectome) -> np.ndarray:
        return self.V_rest_type[connectome.node_type]


def mean_pair_syn_count(connectome: Connectome) -> np.ndarray:
    """(P,) mean synapse count over the realised edges of each pair."""
    n_syn = connectome.edge_n_syn
    total = np.bincount(connectome.edge_pair, weights=n_syn, minlength=connectome.n_pairs)
    count = np.bincount(connectome.edge_pair, minlength=connectome.n_pairs)
    return total / np.maximum(count, 1)


def flyvis_init(connectome: Connectome, seed: int = 0) -> FlyvisParameters:
    """flyvis's initial parameters (reproducible, stable, weak activity)."""
    rng = np.random.default_rng(seed)
    return FlyvisParameters(
        tau_type=np.full(connectome.n_types, 0.05),
        V_rest_type=rng.normal(0.5, 0.05, size=connectome.n_types),
        pair_strength=0.01 / mean_pair_syn_count(connectome),
        group_syn_count=connectome.group_n_syn.copy(),
    )


def draw_trained_like(
    connectome: Connectome,
    rng: np.random.Generator,
    dt: float,
    fast_fraction: float,
    tau_max: float,
    V_rest_range: tuple[float, float],
    median_abs_weight: float,
    log_sigma: float,
    zero_fraction: float,
) -> FlyvisParameters:
    """One unscaled draw in the ranges of trained flyvis models.

    tau: a ``fast_fraction`` of types just below dt (trained models put 51/65 types there), the rest
    log-uniform in [dt, tau_max]. V_rest: uniform in ``V_rest_range``. Per-pair mean |w|: log-normal
    with the given median and log-sd, a ``zero_fraction`` of pairs switched off.
    """
    n_types = connectome.n_types
    fast = rng.random(n_types) < fast_fraction
    tau = np.where(
        fast,
        rng.uniform(0.97 * dt, dt, size=n_types),
        np.exp(rng.uniform(np.log(dt), np.log(tau_max), size=n_types)),
    )
    V_rest = rng.uniform(*V_rest_range, size=n_types)
    mean_abs_w = median_abs_weight * np.exp(log_sigma * rng.standard_normal(connectome.n_pairs))
    mean_abs_w[rng.random(connectome.n_pairs) < zero_fraction] = 0.0
    return FlyvisParameters(
        tau_type=tau,
        V_rest_type=V_rest,
        pair_strength=mean_abs_w / mean_pair_syn_count(connectome),
        group_syn_count=connectome.group_n_syn.copy(),
    )


def scaled(params: FlyvisParameters, factor: float) -> FlyvisParameters:
    return FlyvisParameters(
        tau_type=params.tau_type,
        V_rest_type=params.V_rest_type,
        pair_strength=params.pair_strength * factor,
        group_syn_count=params.group_syn_count,
        gain=params.gain * factor,
    )


def parameter_names(
    connectome: Connectome,
) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str, int, int]]]:
    """The names of a connectome's shared parameters, in its order: cell types (T,), type pairs
    ``(source, target)`` (P,) and offset groups ``(source, target, du, dv)`` (G,)."""
    names = connectome.type_names
    pairs = [
        (names[s], names[t]) for s, t in zip(connectome.pair_src_type, connectome.pair_tgt_type, strict=True)
    ]
    groups = [
        (*pairs[p], int(du), int(dv))
        for p, du, dv in zip(connectome.group_pair, connectome.group_du, connectome.group_dv, strict=True)
    ]
    return list(names), pairs, groups


def _by_name(values: np.ndarray, file_keys: list, keys: list, what: str, file: Path) -> np.ndarray:
    """``values`` (in ``file_keys`` order) picked for ``keys``; every key must be in the file."""
    index = {key: i for i, key in enumerate(file_keys)}
    missing = [key for key in keys if key not in index]
    if missing:
        raise ValueError(
            f"simulation.parameters: checkpoint {file} has no {what} for {len(missing)} of the connectome's "
            f"{len(keys)} (first: {missing[0]}); it fits the flyvis connectome only"
        )
    return values[[index[key] for key in keys]]


@functools.cache
def flyvis_order() -> Connectome:
    """flyvis's connectome compiled at ``CHECKPOINT_ORDER_EXTENT``: its types, pairs and groups are in
    the order of a flyvis checkpoint's values (compiled once per process; shared, so read only)."""
    return compile_connectome(load_spec(), extent=CHECKPOINT_ORDER_EXTENT)


def check_flyvis_names(spec: dict[str, Any]) -> None:
    """Raise one line when a connectome spec has a cell type or type pair that flyvis's has not, so a
    flyvis checkpoint cannot give it parameters (checked from the JSON, before anything is compiled)."""
    flyvis = load_spec()
    types = {node["name"] for node in flyvis["nodes"]}
    pairs = {(edge["src"], edge["tar"]) for edge in flyvis["edges"]}
    extra = [node["name"] for node in spec["nodes"] if node["name"] not in types]
    extra += [(edge["src"], edge["tar"]) for edge in spec["edges"] if (edge["src"], edge["tar"]) not in pairs]
    if extra:
        raise ValueError(
            f"simulation.parameters.mode: a flyvis checkpoint has no parameters for {extra[0]} (and "
            f"{len(extra) - 1} more of this connectome); it fits the flyvis connectome only, so use "
            "parameters.mode=random_trained_like or flyvis_init"
        )


def load_checkpoint(
    path: str | Path | None, connectome: Connectome, sha256: str | None = None
) -> FlyvisParameters:
    """Parameters from a flyvis checkpoint, mapped to ``connectome`` by cell-type and type-pair name.

    The file (a torch zip whose ``network`` dict holds ``nodes_bias`` and ``nodes_time_const`` per cell
    type, ``edges_syn_strength`` and ``edges_sign`` per type pair, ``edges_syn_count``, the log mean
    synapse count, per (pair, du, dv) group) stores its values in flyvis's order: types as in the
    connectome JSON, pairs and groups by first appearance in the connectome compiled at
    ``CHECKPOINT_ORDER_EXTENT``, where all of them are realised. The stored signs and counts must
    equal that compilation's, which catches a file in another order; then each of ``connectome``'s types,
    pairs and groups takes the value of its name, so one file serves every extent.
    """
    import torch

    file = Path(path) if path is not None else None
    if file is None or not file.is_file():
        raise FileNotFoundError(
            f"simulation.parameters.checkpoint_path={path!r} is not a file; point it to a flyvis checkpoint "
            "(e.g. <results>/flow/0000/000/chkpts/chkpt_00000) or use parameters.mode=trained"
        )
    blob = file.read_bytes()
    if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
        raise ValueError(f"simulation.parameters: {file} does not have the expected sha256 {sha256}")
    loaded = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    state = loaded.get("network", loaded)
    reference = flyvis_order()
    expected = {
        "nodes_bias": reference.n_types,
        "nodes_time_const": reference.n_types,
        "edges_syn_strength": reference.n_pairs,
        "edges_syn_count": reference.n_groups,
    }
    for key, size in expected.items():
        if key not in state:
            raise ValueError(
                f"simulation.parameters: checkpoint {file} misses {key!r} (needs {sorted(expected)})"
            )
        if int(state[key].numel()) != size:
            raise ValueError(
                f"simulation.parameters: checkpoint {file}: {key} has {state[key].numel()} values, flyvis's "
                f"connectome has {size}"
            )

    def arr(key: str) -> np.ndarray:
        return state[key].detach().double().numpy().reshape(-1)

    log_count = arr("edges_syn_count")
    order_ok = np.allclose(log_count, np.log(reference.group_n_syn), atol=1e-4)
    if "edges_sign" in state:
        order_ok &= np.array_equal(arr("edges_sign"), reference.pair_sign)
    if not order_ok:
        raise ValueError(
            f"simulation.parameters: checkpoint {file}: its signs and synapse counts are not flyvis's in "
            "flyvis's parameter order, so its values cannot be matched to cell types and pairs"
        )
    types, pairs, groups = parameter_names(reference)
    our_types, our_pairs, our_groups = parameter_names(connectome)
    return FlyvisParameters(
        tau_type=_by_name(arr("nodes_time_const"), types, our_types, "cell type", file),
        V_rest_type=_by_name(arr("nodes_bias"), types, our_types, "cell type", file),
        pair_strength=np.clip(
            _by_name(arr("edges_syn_strength"), pairs, our_pairs, "type pair", file), 0.0, None
        ),
        group_syn_count=np.exp(_by_name(log_count, groups, our_groups, "offset group", file)),
    )


def trained(connectome: Connectome) -> FlyvisParameters:
    """The shipped trained model flow/0000/000 (``assets/``, with its licence), mapped to ``connectome``."""
    return load_checkpoint(TRAINED_CHECKPOINT, connectome, sha256=TRAINED_SHA256)


def random_trained_like(
    connectome: Connectome,
    seed: int,
    dt: float,
    clamp_tau: bool = True,
    fast_fraction: float = _OPTIONS.fast_fraction,
    tau_max: float = _OPTIONS.tau_max,
    V_rest_range: tuple[float, float] | list[float] = tuple(_OPTIONS.V_rest_range),
    median_abs_weight: float = _OPTIONS.median_abs_weight,
    log_sigma: float = _OPTIONS.log_sigma,
    zero_fraction: float = _OPTIONS.zero_fraction,
    max_abs_voltage: float = _OPTIONS.max_abs_voltage,
    shrink: float = 0.7,
    max_tries: int = 12,
    probe_steps: int = 500,
    probe_noise: float = 0.0,
) -> FlyvisParameters:
    """A trained-like draw, scaled by ``shrink`` until the flicker probe (with the run's process noise
    ``probe_noise``) stays below ``max_abs_voltage``.

    Trained flyvis weights diverge at about 2x their scale, so an unchecked random draw can blow up;
    the accepted factor is kept in ``gain``.
    """
    from hydra_llm.simulation.flyvis.dynamics import FlyvisODE, flicker_probe

    rng = np.random.default_rng(seed)
    params = draw_trained_like(
        connectome,
        rng,
        dt,
        fast_fraction,
        tau_max,
        tuple(V_rest_range),
        median_abs_weight,
        log_sigma,
        zero_fraction,
    )
    n_columns = len(connectome.columns)
    for _ in range(max_tries):
        ode = FlyvisODE.build(
            connectome,
            params.edge_weights(connectome),
            params.neuron_tau(connectome),
            params.neuron_V_rest(connectome),
            dt,
            clamp_tau,
        )
        peak = flicker_probe(ode, n_columns, probe_steps, np.random.default_rng(seed + 1), probe_noise)
        if peak <= max_abs_voltage:
            return params
        params = scaled(params, shrink)
    raise RuntimeError(
        f"random_trained_like: activity stayed above {max_abs_voltage} after {max_tries} rescalings "
        f"by {shrink}; "
        "lower simulation.parameters.median_abs_weight"
    )
