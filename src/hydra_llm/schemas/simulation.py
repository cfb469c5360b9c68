"""Typed simulation options of the regimes: the one place their defaults live.

A regime's YAML (``conf/simulation/*.yaml``) puts its values over one of these (its defaults list names
``/schema_simulation_<regime>``), so a misspelt key or a value of the wrong type fails when Hydra
composes; the datamodule validates its keyword arguments against the same dataclass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from hydra_llm.schemas.ranges import at_least_one, fail, non_negative, ordered_pair, positive, seeds, within


class ConnectivityType(StrEnum):
    """chaotic: W_ij ~ N(0, 1/N); low_rank: W = U V / sqrt(r N) of rank r = connectivity_rank."""

    chaotic = "chaotic"
    low_rank = "low_rank"


def check_recording(options: Any, auto: bool = True) -> None:
    """The keys every regime shares for what is recorded: ``measurement_noise_level`` and
    ``smoothing_window`` (1, odd in [5, n_frames], or ``auto`` where the regime allows it)."""
    non_negative(options, "measurement_noise_level")
    window = options.smoothing_window
    allowed = f"1, an odd integer in [5, n_frames={options.n_frames}]" + (
        " or 'auto'" if auto else " ('auto' assumes dynamics smooth over a few frames; this regime's are not)"
    )
    if isinstance(window, str):
        if window != "auto" or not auto:
            fail(options, "smoothing_window", window, f"must be {allowed}")
    elif window != 1 and (window < 5 or window % 2 == 0 or window > options.n_frames):
        fail(options, "smoothing_window", window, f"must be {allowed}")


@dataclass
class SignalSimulation:
    """``simulation=signal_*``: ``du_i/dt = -u_i / tau_k + s_k tanh(u_i) + g_k sum_j W_ij tanh(u_j)``.

    ``neuron_type_params`` rows are ``[tau, s]``; the first ``n_neuron_types`` rows are used. ``gain`` is g,
    one float for every type or a list with one value per type.
    """

    GROUP: ClassVar[str] = "simulation"
    _target_: str = "hydra_llm.simulation.signal.SignalDataModule"
    n_neurons: int = 100
    n_neuron_types: int = 4
    # one row [tau, s] per type (the paper's Fig. 2 table, tau in {0.5, 1}, s in {1, 2}), ordered so that
    # the first 2 or 3 rows already differ in both tau and s
    neuron_type_params: list[list[float]] = field(
        default_factory=lambda: [[0.5, 1.0], [1.0, 2.0], [0.5, 2.0], [1.0, 1.0]]
    )
    gain: Any = 10.0  # g for every type (a float) or a list, one per type
    n_frames: int = 10_000
    delta_t: float = 0.01
    burn_in_frames: int = 1000  # simulated, not recorded
    test_fraction: float = 0.2  # the last frames are held out for the rollout test
    connectivity_type: ConnectivityType = ConnectivityType.chaotic
    connectivity_filling_factor: float = 1.0  # fraction of off-diagonal entries kept, in (0, 1]
    connectivity_rank: int = 20  # used by low_rank only, in [1, n_neurons]
    Dale_law: bool = False
    Dale_law_factor: float = 0.5  # fraction of excitatory presynaptic neurons
    noise_model_level: float = 0.0  # process-noise sigma: each Euler step adds sigma * sqrt(dt) * N(0, 1)
    measurement_noise_level: float = 0.0  # added to the record, in units of each recorded variable's std
    smoothing_window: int | str = 1  # 1: raw; odd >= 5: Savitzky-Golay frames; auto (recording.py)
    structure_known: bool = False  # true: the true edge set is observed and W is learned on it only
    seed: int = 42

    def __post_init__(self) -> None:
        seeds(self, "seed")
        if self.n_neurons < 1:
            fail(self, "n_neurons", self.n_neurons, "must be > 0")
        up_to_n = f"must be in [1, n_neurons={self.n_neurons}]"
        within(self, "n_neuron_types", 1, self.n_neurons, up_to_n)
        if self.n_frames < 10:
            fail(self, "n_frames", self.n_frames, "must be >= 10")
        if not (self.delta_t > 0 and math.isfinite(self.delta_t)):
            fail(self, "delta_t", self.delta_t, "must be > 0")
        if not 0.0 < self.connectivity_filling_factor <= 1.0:
            fail(self, "connectivity_filling_factor", self.connectivity_filling_factor, "must be in (0, 1]")
        if self.connectivity_type == ConnectivityType.low_rank:
            within(
                self, "connectivity_rank", 1, self.n_neurons, f"must be in [1, n_neurons={self.n_neurons}]"
            )
        within(self, "Dale_law_factor", 0.0, 1.0, "must be in [0, 1]")
        if self.noise_model_level < 0:
            fail(self, "noise_model_level", self.noise_model_level, "must be >= 0")
        check_recording(self)
        if self.burn_in_frames < 0:
            fail(self, "burn_in_frames", self.burn_in_frames, "must be >= 0")
        if not 0.0 < self.test_fraction < 1.0:
            fail(self, "test_fraction", self.test_fraction, "must be in (0, 1)")
        rows = self.neuron_type_params
        if len(rows) < self.n_neuron_types or any(len(row) != 2 for row in rows):
            fail(
                self,
                "neuron_type_params",
                rows,
                f"must hold at least n_neuron_types={self.n_neuron_types} rows [tau, s]",
            )
        if any(row[0] <= 0 for row in rows):
            fail(self, "neuron_type_params", rows, "every tau must be > 0")
        if len(self.gains()) < self.n_neuron_types:
            fail(self, "gain", self.gain, f"must be a float or a list of >= {self.n_neuron_types} floats")

    def gains(self) -> list[float]:
        """g per type: ``gain`` repeated, or the list as given."""
        if isinstance(self.gain, int | float):
            return [float(self.gain)] * self.n_neuron_types
        return [float(g) for g in self.gain]


@dataclass
class MetabolismSimulation:
    """``simulation=metabolism_homeostasis``: ``dc_i/dt = sum_j S_ij k_j prod_m c_m^order_mj
    - lambda_t(i) (c_i - baseline_t(i))``, explicit Euler at ``delta_t``."""

    GROUP: ClassVar[str] = "simulation"
    _target_: str = "hydra_llm.simulation.metabolism.MetabolismDataModule"
    n_metabolites: int = 100
    n_metabolite_types: int = 2
    n_reactions: int = 256
    max_metabolites_per_reaction: int = 4
    cycle_fraction: float = 1.0  # fraction of reactions in autocatalytic cycles m_i + m_(i+1) -> 2 m_(i+1)
    cycle_length: int = 3
    use_mass_action: bool = True  # only mass action is implemented
    log_k_min: float = -2.0  # log10 k ~ U[log_k_min, log_k_max]
    log_k_max: float = -1.0
    concentration_min: float = 1.0  # initial concentrations ~ U[min, max]
    concentration_max: float = 9.0
    n_frames: int = 2880
    delta_t: float = 0.1
    train_fraction: float = 0.8  # the last frames are held out (test_R2)
    homeostatic_lambda_per_type: list[float] = field(default_factory=lambda: [0.001, 0.002])
    homeostatic_baseline_per_type: list[float] = field(default_factory=lambda: [4.0, 6.0])
    circadian_amplitude: float = 0.0  # baseline_t(t) = baseline_t (1 + A sin(2 pi t / period)); 0 = constant
    circadian_period: float = 240.0
    flux_limit: bool = False  # rescale rates so that no substrate goes below zero within one step
    stoichiometry_known: bool = True  # S and substrate orders are observed (the model needs them)
    measurement_noise_level: float = 0.0  # added to the record, in units of each recorded variable's std
    smoothing_window: int | str = 1  # 1: raw; odd >= 5: Savitzky-Golay frames; auto (recording.py)
    seed: int = 0

    def __post_init__(self) -> None:
        seeds(self, "seed")
        n = self.n_metabolites
        if n < 2:
            fail(self, "n_metabolites", n, "must be >= 2")
        within(self, "n_metabolite_types", 1, n, f"must be in [1, n_metabolites={n}]")
        at_least_one(self, "n_reactions")
        within(self, "max_metabolites_per_reaction", 2, n, "must be in [2, n_metabolites]")
        within(self, "cycle_fraction", 0.0, 1.0, "must be in [0, 1]")
        within(self, "cycle_length", 2, n, "must be in [2, n_metabolites]")
        if not self.use_mass_action:
            fail(self, "use_mass_action", False, "only true is implemented (mass-action kinetics)")
        if self.log_k_min > self.log_k_max:
            fail(self, "log_k_min", self.log_k_min, f"must be <= log_k_max ({self.log_k_max})")
        if not 0.0 < self.concentration_min <= self.concentration_max:
            fail(self, "concentration_min", self.concentration_min, "need 0 < min <= concentration_max")
        if self.n_frames < 4:
            fail(self, "n_frames", self.n_frames, "must be >= 4")
        positive(self, "delta_t", "circadian_period")
        non_negative(self, "circadian_amplitude")
        if not 0.0 < self.train_fraction <= 1.0:
            fail(self, "train_fraction", self.train_fraction, "must be in (0, 1]")
        check_recording(self)
        for key in ("homeostatic_lambda_per_type", "homeostatic_baseline_per_type"):
            if len(getattr(self, key)) != self.n_metabolite_types:
                fail(self, key, getattr(self, key), f"needs one value per type ({self.n_metabolite_types})")


# ------------------------------------------------------------------------------------------- flyvis
class ConnectomeSource(StrEnum):
    """flyvis: the flyvis wheel's connectome JSON; file: a JSON of the same schema at ``path`` (no
    checksum); synthetic: a tiny random one (tests)."""

    flyvis = "flyvis"
    file = "file"
    synthetic = "synthetic"


class ParameterMode(StrEnum):
    """Where the ground-truth parameters come from: the shipped trained model flow/0000/000, flyvis's
    initialisation, a random draw shaped like a trained model, or a user's flyvis checkpoint file."""

    trained = "trained"
    flyvis_init = "flyvis_init"
    random_trained_like = "random_trained_like"
    checkpoint = "checkpoint"


class StimulusSource(StrEnum):
    """synthetic: edges, bars, gratings, flashes, noise; natural: photographs moved over the lattice
    (offline, from scikit-image's wheel); davis: DAVIS-2017 videos from a local folder."""

    synthetic = "synthetic"
    natural = "natural"
    davis = "davis"


EYE_EXTENT = 15  # the fly's eye, flyvis's own lattice: 721 hex columns, 45,669 neurons


@dataclass
class ConnectomeOptions:
    """``simulation.connectome``: which connectome, and how many hex columns of it (flyvis's: at most
    the eye's :data:`EYE_EXTENT`)."""

    GROUP: ClassVar[str] = "simulation.connectome"
    source: ConnectomeSource = ConnectomeSource.flyvis
    # hex columns |u|, |v|, |u+v| <= extent: 0 -> 65 neurons, 1 -> 443, 4 -> 3,865, 8 -> 13,741
    extent: int = 8
    path: str | None = None  # source=file
    seed: int = 0  # source=synthetic

    def __post_init__(self) -> None:
        seeds(self, "seed")
        if self.extent < 0:
            fail(self, "extent", self.extent, "must be >= 0")
        if self.source == ConnectomeSource.flyvis and self.extent > EYE_EXTENT:
            fail(
                self,
                "extent",
                self.extent,
                f"must be <= {EYE_EXTENT} with connectome.source=flyvis (the fly's eye has 721 columns, "
                f"extent {EYE_EXTENT}); a synthetic or file connectome may tile a larger lattice",
            )
        if self.source == ConnectomeSource.file and self.path is None:
            fail(self, "path", None, "is required when connectome.source=file")


@dataclass
class ParameterOptions:
    """``simulation.parameters``: the ground truth's time constants, resting potentials and weights.

    ``mode=trained`` (default) is the trained flyvis model flow/0000/000 shipped with the package, mapped
    to the connectome by cell-type and type-pair name at any extent; ``checkpoint`` reads a user's file
    the same way. The ``random_trained_like`` draw: a ``fast_fraction`` of cell types with tau just
    below dt (trained models: 51/65), the rest log-uniform in [dt, ``tau_max``] s; V_rest uniform in
    ``V_rest_range``; per-pair mean |w| log-normal around ``median_abs_weight`` (``log_sigma``),
    ``zero_fraction`` of the pairs off (trained: 31/604 strengths are 0); weights shrink by 0.7 until a
    flicker probe stays below ``max_abs_voltage``.
    """

    GROUP: ClassVar[str] = "simulation.parameters"
    mode: ParameterMode = ParameterMode.trained
    checkpoint_path: str | None = None  # mode=checkpoint: a flyvis checkpoint file
    fast_fraction: float = 0.78
    tau_max: float = 0.3
    V_rest_range: list[float] = field(default_factory=lambda: [0.0, 0.8])
    median_abs_weight: float = 0.03
    log_sigma: float = 1.0
    zero_fraction: float = 0.04
    max_abs_voltage: float = 20.0
    probe_noise: float | None = None  # process noise of the flicker probe; None: noise_model_level

    def __post_init__(self) -> None:
        within(self, "fast_fraction", 0.0, 1.0, "must be in [0, 1]")
        within(self, "zero_fraction", 0.0, 1.0, "must be in [0, 1]")
        positive(self, "tau_max", "median_abs_weight", "max_abs_voltage")
        non_negative(self, "log_sigma")
        ordered_pair(self, "V_rest_range")


# Photographs of natural scenes and objects in scikit-image's wheel (skimage/data; drawings, text and
# micrographs left out): the images of ``stimulus.source: natural``.
NATURAL_IMAGES = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "rocket.jpg",
)


@dataclass
class StimulusOptions:
    """``simulation.stimulus``: what drives the photoreceptors. ``families`` and ``ood_families`` name the
    synthetic families (``hydra_llm.simulation.flyvis.stimuli``); the out-of-distribution families are
    never in training. ``held_out_fraction`` of the source images or videos make the held-out recording.
    The natural keys apply to ``source: natural`` (``hydra_llm.simulation.flyvis.natural``), the DAVIS
    keys to ``source: davis`` (root: ``davis_root`` or $DATAVIS_ROOT)."""

    GROUP: ClassVar[str] = "simulation.stimulus"
    source: StimulusSource = StimulusSource.synthetic
    families: list[str] = field(
        default_factory=lambda: ["moving_edge", "moving_bar", "grating", "flash", "white_noise", "blank"]
    )
    ood_families: list[str] = field(default_factory=lambda: ["pink_noise"])
    clip_s: list[float] = field(default_factory=lambda: [0.5, 2.0])  # clip durations (s) of the sequence
    # grey (0.5) before every training and held-out clip, its duration (s) drawn from this range, so that
    # the neurons relax towards rest between clips; the original's follow-up prepends such a null
    # stimulus to every clip for identifiability. [0, 0]: none
    blank_s: list[float] = field(default_factory=lambda: [0.0, 0.0])
    held_out_fraction: float = 0.2  # natural, davis: the split is by source image or video
    natural_images: list[str] = field(default_factory=lambda: list(NATURAL_IMAGES))
    pixels_per_column: float = 8.0  # natural: image pixels between neighbouring columns
    contrast: float = 0.2  # natural: std of the normalised luminance (mean 0.5)
    # natural: each clip's mean luminance, drawn uniformly from this range; the clip is the normalised
    # image times mean / 0.5 (an illuminant: Weber contrast kept), clipped to [0, 1]. [0.5, 0.5]: none
    luminance: list[float] = field(default_factory=lambda: [0.5, 0.5])
    davis_root: str | None = None
    rotations: list[int] = field(default_factory=lambda: [0, 1, 2, 3])  # quarter turns (augmented copies)
    flips: list[bool] = field(default_factory=lambda: [False, True])
    crop: float = 0.6  # centre crop fraction
    kernel_px: int = 13  # box filter / column spacing in pixels
    fps: float = 24.0
    max_clip_frames: int = 80

    def __post_init__(self) -> None:
        ordered_pair(self, "clip_s")
        if self.clip_s[0] <= 0:
            fail(self, "clip_s", self.clip_s, "clip durations must be > 0 s")
        ordered_pair(self, "blank_s")
        if self.blank_s[0] < 0:
            fail(self, "blank_s", self.blank_s, "grey durations must be >= 0 s")
        if not 0.0 < self.held_out_fraction < 1.0:
            fail(self, "held_out_fraction", self.held_out_fraction, "must be in (0, 1)")
        positive(self, "pixels_per_column", "contrast")
        ordered_pair(self, "luminance")
        if not (self.luminance[0] > 0.0 and self.luminance[1] <= 1.0):
            fail(self, "luminance", self.luminance, "mean luminances must be in (0, 1]")
        unknown = [name for name in self.natural_images if name not in NATURAL_IMAGES]
        if unknown or len(self.natural_images) < 2:
            why = f"unknown images {unknown}" if unknown else "fewer than 2 images (the split is by image)"
            fail(
                self, "natural_images", self.natural_images, f"{why}; allowed values: {list(NATURAL_IMAGES)}"
            )
        within(self, "crop", 1e-6, 1.0, "must be in (0, 1]")
        positive(self, "fps")
        at_least_one(self, "kernel_px", "max_clip_frames")


@dataclass
class FlyvisSimulation:
    """``simulation=flyvis_*``: the fly visual system (flyvis's connectome and dynamics) under a stimulus."""

    GROUP: ClassVar[str] = "simulation"
    _target_: str = "hydra_llm.simulation.flyvis.FlyvisDataModule"
    connectome: ConnectomeOptions = field(default_factory=ConnectomeOptions)
    parameters: ParameterOptions = field(default_factory=ParameterOptions)
    stimulus: StimulusOptions = field(default_factory=StimulusOptions)
    n_frames: int = 64_000  # recorded frames (training and held out)
    test_fraction: float = 0.2
    n_ood_frames: int = 1000  # the out-of-distribution recording
    delta_t: float = 0.02  # s (flyvis trains at 1/50)
    noise_model_level: float = 0.05  # process noise per Euler step; the studied values are 0, 0.05, 0.5
    measurement_noise_level: float = 0.0  # added to the record, in units of each neuron's voltage std
    smoothing_window: int | str = 1  # 1: raw; odd >= 5: Savitzky-Golay frames; no auto (recording.py)
    clamp_tau: bool = True  # tau_eff = max(tau, dt), as flyvis does
    warmup_s: float = 2.0  # grey (0.5) warm-up to steady state, not recorded
    seed: int = 42

    def __post_init__(self) -> None:
        seeds(self, "seed")
        if not 0.0 < self.test_fraction < 1.0:
            fail(self, "test_fraction", self.test_fraction, "must be in (0, 1)")
        if self.n_frames < 10:
            fail(self, "n_frames", self.n_frames, "must be >= 10")
        at_least_one(self, "n_ood_frames")
        positive(self, "delta_t")
        non_negative(self, "noise_model_level", "warmup_s")
        check_recording(self, auto=False)  # time constants down to dt: see simulation/recording.py
