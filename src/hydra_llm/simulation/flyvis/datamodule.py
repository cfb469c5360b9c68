"""``simulation=flyvis_synthetic`` / ``flyvis_natural`` / ``flyvis_davis``: the fly visual system regime
as a DataModule.

One run simulates three recordings from the grey steady state:

* training frames ``[0, n_train_frames)`` with process noise ``noise_model_level``;
* held-out frames (same stimulus source: new clips, or held-out images or videos), recorded without
  process noise;
* an out-of-distribution recording (stimulus families never used in training), also noise-free,
  in ``Observations.extras['ood_activity']`` / ``['ood_external_input']``.

Each recording gets measurement noise (``measurement_noise_level`` times each neuron's voltage std,
:mod:`hydra_llm.simulation.recording`). The model gets the recorded voltages, the derivative estimated
from them, the known photoreceptor input and the connectome's edge list; W, tau, V_rest and cell
types stay in :class:`GroundTruth`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hydra_llm.schemas import plain, validate
from hydra_llm.schemas.simulation import FlyvisSimulation
from hydra_llm.simulation.base import GroundTruth, Observations, SimulationDataModule
from hydra_llm.simulation.flyvis import davis as davis_io
from hydra_llm.simulation.flyvis import natural
from hydra_llm.simulation.flyvis.connectome import (
    FLYVIS_JSON_SHA256,
    Connectome,
    build_connectome,
    connectome_spec,
    count_neurons,
)
from hydra_llm.simulation.flyvis.dynamics import FlyvisODE
from hydra_llm.simulation.flyvis.parameters import (
    FlyvisParameters,
    check_flyvis_names,
    flyvis_init,
    load_checkpoint,
    random_trained_like,
    trained,
)
from hydra_llm.simulation.flyvis.stimuli import check_families, synthetic_sequence
from hydra_llm.simulation.frames import FrameSampling, start_frame_loader
from hydra_llm.simulation.recording import add_measurement_noise, smooth_and_differentiate

log = logging.getLogger(__name__)

# The ``simulation.stimulus`` keys that each source reads (the others are ignored under it): the
# recordings are made from these alone, so the cache key holds these alone.
STIMULUS_KEYS = ("source", "clip_s", "blank_s", "ood_families")
SOURCE_KEYS = {
    "synthetic": ("families",),
    "natural": ("natural_images", "held_out_fraction", "pixels_per_column", "contrast", "luminance"),
    "davis": (
        "davis_root",
        "held_out_fraction",
        "rotations",
        "flips",
        "max_clip_frames",
        "fps",
        "kernel_px",
        "crop",
    ),
}


class FlyvisDataModule(SimulationDataModule):
    """The flyvis regime. Sizes: N neurons (13,741 at extent 8), E edges, C columns, T frames."""

    def __init__(self, cache_dir: str | None = None, **options: Any) -> None:
        """Args:
        cache_dir: where simulated data is cached (None: no cache).
        **options: :class:`~hydra_llm.schemas.simulation.FlyvisSimulation` keys (``connectome``,
            ``parameters``, ``stimulus`` as mappings of their own keys); missing ones take its defaults.
            Every value is checked here, and the data a stimulus needs is found, before any simulation.
        """
        super().__init__()
        o = validate(FlyvisSimulation, options)
        self.connectome_cfg = plain(o.connectome)
        self.parameters_cfg = plain(o.parameters)
        self.stimulus_cfg = plain(o.stimulus)
        self.n_frames = o.n_frames
        self.test_fraction = o.test_fraction
        self.n_ood_frames = o.n_ood_frames
        self.delta_t = o.delta_t
        self.noise_model_level = o.noise_model_level
        self.measurement_noise_level = o.measurement_noise_level
        self.smoothing_window = o.smoothing_window
        self.clamp_tau = o.clamp_tau
        self.warmup_s = o.warmup_s
        self.seed = o.seed
        self.cache_dir = cache_dir
        self._validate()

    # ------------------------------------------------------------------ configuration
    def _validate(self) -> None:
        """What the schema cannot check: family names, files and folders."""
        params, stimulus = self.parameters_cfg, self.stimulus_cfg
        if params["mode"] == "checkpoint" and not Path(str(params["checkpoint_path"])).is_file():
            raise FileNotFoundError(
                f"simulation.parameters.checkpoint_path={params['checkpoint_path']!r} is not a file"
            )
        connectome = self.connectome_cfg
        if params["mode"] in ("trained", "checkpoint") and connectome["source"] != "flyvis":
            check_flyvis_names(connectome_spec(connectome["source"], connectome["path"], connectome["seed"]))
        train = check_families(stimulus["families"], "simulation.stimulus.families")
        ood = check_families(stimulus["ood_families"], "simulation.stimulus.ood_families")
        if stimulus["source"] == "synthetic" and set(train) & set(ood):
            raise ValueError(
                f"simulation.stimulus.ood_families {ood} overlap the training families {train}; "
                "the out-of-distribution test needs families never seen in training"
            )
        if stimulus["source"] == "natural":
            natural.image_dir()
        if stimulus["source"] == "davis":
            davis_io.find_root(stimulus["davis_root"])

    def record_bytes(self) -> int:
        """The record files (:meth:`record`): float32 voltages and derivatives over ``n_frames`` and the
        out-of-distribution voltages over ``n_ood_frames``, for every neuron (7.1 GB at extent 8 with
        64,000 frames)."""
        c = self.connectome_cfg
        n = count_neurons(connectome_spec(c["source"], c["path"], c["seed"]), c["extent"])
        return 4 * n * (2 * self.n_frames + self.n_ood_frames)

    def cache_key_params(self) -> dict[str, Any]:
        params = {
            "regime": "flyvis",
            # 2: noise in std units; 3: checkpoints by name; 4: input as a column movie; 5: the stimulus
            # keys its source reads
            "version": 5,
            "connectome": self.connectome_cfg,
            "parameters": self.parameters_cfg,
            "stimulus": self.stimulus_read(),
            "n_frames": self.n_frames,
            "test_fraction": self.test_fraction,
            "n_ood_frames": self.n_ood_frames,
            "delta_t": self.delta_t,
            "noise_model_level": self.noise_model_level,
            "measurement_noise_level": self.measurement_noise_level,
            "smoothing_window": self.smoothing_window,
            "clamp_tau": self.clamp_tau,
            "warmup_s": self.warmup_s,
            "seed": self.seed,
        }
        if self.connectome_cfg["source"] == "flyvis":
            params["flyvis_sha256"] = FLYVIS_JSON_SHA256
        if self.stimulus_cfg["source"] == "natural":
            folder = natural.image_dir()
            params["natural_files"] = [
                (n, (folder / n).stat().st_size) for n in self.stimulus_cfg["natural_images"]
            ]
        if self.stimulus_cfg["source"] == "davis":
            root = davis_io.find_root(self.stimulus_cfg["davis_root"])
            params["davis_root"] = str(root.resolve())
            params["davis_videos"] = [
                (v.name, len(list(v.glob("*.jpg")))) for v in davis_io.list_videos(root)
            ]
            split = [root / name for name in davis_io.SPLIT_FILES]
            params["davis_split"] = [f.read_text() for f in split if f.is_file()]
        return params

    def stimulus_read(self) -> dict[str, Any]:
        """The ``simulation.stimulus`` keys that its source reads (:data:`SOURCE_KEYS`)."""
        cfg = self.stimulus_cfg
        return {key: cfg[key] for key in (*STIMULUS_KEYS, *SOURCE_KEYS[cfg["source"]])}

    # ------------------------------------------------------------------ generation
    def build_connectome(self) -> Connectome:
        cfg = self.connectome_cfg
        return build_connectome(cfg["source"], cfg["extent"], cfg["path"], cfg["seed"])

    def build_parameters(self, connectome: Connectome) -> FlyvisParameters:
        cfg = {k: v for k, v in self.parameters_cfg.items() if k not in ("mode", "checkpoint_path")}
        mode = self.parameters_cfg["mode"]
        if mode == "trained":
            return trained(connectome)
        if mode == "flyvis_init":
            return flyvis_init(connectome, seed=self.seed)
        if mode == "checkpoint":
            return load_checkpoint(self.parameters_cfg["checkpoint_path"], connectome)
        if cfg["probe_noise"] is None:
            cfg["probe_noise"] = self.noise_model_level
        return random_trained_like(connectome, self.seed, self.delta_t, self.clamp_tau, **cfg)

    def stimuli(
        self, connectome: Connectome, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Column movies (T, C) for the training, held-out and out-of-distribution recordings."""
        cfg, columns, dt = self.stimulus_read(), connectome.columns, self.delta_t
        n_test = max(2, int(round(self.test_fraction * self.n_frames)))
        n_train = self.n_frames - n_test
        clip_s, blank_s = tuple(cfg["clip_s"]), tuple(cfg["blank_s"])
        ood = synthetic_sequence(columns, self.n_ood_frames, dt, cfg["ood_families"], rng, clip_s)
        if cfg["source"] == "synthetic":
            families = cfg["families"]
            train = synthetic_sequence(columns, n_train, dt, families, rng, clip_s, blank_s)
            test = synthetic_sequence(columns, n_test, dt, families, rng, clip_s, blank_s)
            return train, test, ood
        if cfg["source"] == "natural":
            train_images, test_images = natural.split_images(
                cfg["natural_images"], cfg["held_out_fraction"], self.seed
            )
            view = {
                "clip_s": clip_s,
                "blank_s": blank_s,
                "pixels_per_column": cfg["pixels_per_column"],
                "contrast": cfg["contrast"],
                "luminance": tuple(cfg["luminance"]),
            }
            train = natural.natural_sequence(columns, n_train, dt, train_images, rng, **view)
            test = natural.natural_sequence(columns, n_test, dt, test_images, rng, **view)
            return train, test, ood
        root = davis_io.find_root(cfg["davis_root"])
        train_videos, test_videos = davis_io.split_videos(
            davis_io.list_videos(root), cfg["held_out_fraction"], self.seed, root
        )
        keys = ("rotations", "flips", "max_clip_frames", "fps", "kernel_px", "crop")
        kwargs = {**{key: cfg[key] for key in keys}, "blank_s": blank_s, "cache_dir": self.cache_dir}
        train = davis_io.davis_sequence(train_videos, columns, n_train, dt, rng, **kwargs)
        test = davis_io.davis_sequence(test_videos, columns, n_test, dt, rng, **kwargs)
        return train, test, ood

    def simulate(self) -> tuple[Observations, GroundTruth]:
        rng = np.random.default_rng(self.seed)
        connectome = self.build_connectome()
        params = self.build_parameters(connectome)
        weights = params.edge_weights(connectome)
        tau, V_rest = params.neuron_tau(connectome), params.neuron_V_rest(connectome)
        ode = FlyvisODE.build(connectome, weights, tau, V_rest, self.delta_t, self.clamp_tau)
        train_stim, test_stim, ood_stim = self.stimuli(connectome, rng)
        V0 = ode.steady_state(self.warmup_s)

        activity, derivative, ood_activity = self.record(ode, V0, (train_stim, test_stim, ood_stim), rng)
        n_train = train_stim.shape[0]

        observations = Observations(
            activity=activity,
            derivative=derivative,
            dt=self.delta_t,
            n_train_frames=n_train,
            edge_index=torch.from_numpy(np.stack([connectome.edge_src, connectome.edge_tgt])).long(),
            external_input=ode.input_movie(np.concatenate([train_stim, test_stim])),
            extras={"ood_activity": ood_activity, "ood_external_input": ode.input_movie(ood_stim)},
            smoothing_window=int(self.smoothing_window),  # flyvis refuses "auto"
        )
        ground_truth = GroundTruth(
            tensors={
                "W": torch.as_tensor(weights.astype(np.float32)),
                "tau": torch.as_tensor(ode.tau_eff.astype(np.float32)),
                "tau_raw": torch.as_tensor(tau.astype(np.float32)),
                "V_rest": torch.as_tensor(V_rest.astype(np.float32)),
                "types": torch.as_tensor(connectome.node_type),
            },
            meta={
                "W_layout": "edges (aligned with Observations.edge_index)",
                "type_names": list(connectome.type_names),
                "gain": params.gain,
                "n_neurons": connectome.n_neurons,
                "n_edges": connectome.n_edges,
            },
        )
        return observations, ground_truth

    def record(
        self,
        ode: FlyvisODE,
        V0: np.ndarray,
        stimuli: tuple[np.ndarray, np.ndarray, np.ndarray],
        rng: np.random.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The recorded activity (T_train + T_test, N), its derivative (same shape) and the
        out-of-distribution activity (T_ood, N), float32, from the column movies of the training,
        held-out and out-of-distribution recordings.

        One (T, N) array each for the voltages and their derivative (:meth:`recording`: files of the
        cache while it is written), and nothing else of that size: the recordings are simulated into
        slices of one array, and noise and smoothing work in place.
        """
        train_stim, test_stim, ood_stim = stimuli
        n_train, n_test, n = train_stim.shape[0], test_stim.shape[0], ode.n_neurons
        activity_t = self.recording("activity", (n_train + n_test, n))
        derivative = self.recording("derivative", (n_train + n_test, n))
        ood_t = self.recording("extras.ood_activity", (ood_stim.shape[0], n))
        activity, ood_activity = activity_t.numpy(), ood_t.numpy()
        recordings = (
            (train_stim, self.noise_model_level, activity[:n_train]),
            (test_stim, 0.0, activity[n_train:]),
            (ood_stim, 0.0, ood_activity),
        )
        for index, (stim, noise, voltages) in enumerate(recordings):
            ode.run(stim, V0, noise, rng, out=voltages)
            if not np.all(np.isfinite(voltages)):
                raise FloatingPointError(
                    "flyvis simulation diverged; lower the weight scale or use clamp_tau"
                )
            add_measurement_noise(
                torch.from_numpy(voltages), self.measurement_noise_level, self.seed + index, inplace=True
            )
        for part in (slice(0, n_train), slice(n_train, None)):  # each recording differentiated alone
            voltages = activity_t[part]
            smooth_and_differentiate(
                voltages, self.delta_t, self.smoothing_window, out=(voltages, derivative[part])
            )
        smooth_and_differentiate(
            ood_t, self.delta_t, self.smoothing_window, out=(ood_t, torch.empty_like(ood_t))
        )
        return activity_t, derivative, ood_t

    # ------------------------------------------------------------------ Lightning hooks
    def train_dataloader(self):
        """Random batches of training frames: ``activity``, ``derivative``, ``external_input`` (B, N)
        and ``frame``.

        The attached module's ``frame_sampling`` sets batch size and steps; its ``frame_window`` (frames
        needed after a start, for rollout training) shortens the range starts are drawn from.
        """
        sampling = FrameSampling(batch_size=4, batches_per_epoch=100, seed=self.seed)
        window = 1
        module = self.trainer.lightning_module if getattr(self, "trainer", None) is not None else None
        if module is not None:
            sampling = getattr(module, "frame_sampling", sampling)
            window = int(getattr(module, "frame_window", 1))
        obs = self.observations
        tensors = {
            "activity": obs.activity,
            "derivative": obs.derivative,
            "external_input": obs.external_input,
        }
        return start_frame_loader(obs.n_train_frames, sampling, window, tensors)
