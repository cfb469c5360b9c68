"""The typed interface between simulations, models and evaluation.

A simulation produces two separate objects:

* :class:`Observations`: what an experimenter would record (activity, known input, known graph).
  This is the *only* thing a LightningModule receives.
* :class:`GroundTruth`: the hidden parameters (W, tau, V_rest, types, rate constants, ...).
  Only evaluation reads it.

Keeping them in two types (and never passing GroundTruth to a model constructor or a dataloader)
makes label leakage impossible by construction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from hydra_llm.files import atomic_torch_save, disk_size, reserve_disk
from hydra_llm.printable import error_line

log = logging.getLogger(__name__)
# Bump when the layout of a cached file changes: older files are then ignored, never misread.
CACHE_FORMAT = 4


class DataError(ValueError):
    """Input data that cannot be read (a damaged or half-downloaded file): one line naming the file and
    the fix. A run reports it as it reports a bad setting."""


class IndexedInput:
    """A known input that reaches few neurons, stored as its source movie: frame t of neuron
    ``neuron[k]`` is ``values[t, channel[k]]``, every other neuron gets 0.

    The flyvis photoreceptors read their column's luminance, so a (T, C) movie of 217 columns stands for
    a (T, N) input of 13,741 neurons (63x smaller at extent 8). Indexing gives what the dense (T, N)
    tensor would (``inputs[t]`` (N,), ``inputs[frames]`` (B, N), ``inputs[a:b]`` (b - a, N)), built
    from the movie on the fly; ``to(device)`` moves the movie, not a dense copy.

    Args:
        values: (T, C) float32, the source movie.
        neuron: (K,) int64, the neurons that receive input.
        channel: (K,) int64, the movie channel (column) each of them reads.
        n_neurons: N.
    """

    def __init__(self, values: torch.Tensor, neuron: torch.Tensor, channel: torch.Tensor, n_neurons: int):
        if neuron.shape != channel.shape or neuron.ndim != 1:
            raise ValueError(f"neuron {tuple(neuron.shape)} and channel {tuple(channel.shape)} must be (K,)")
        self.values, self.neuron, self.channel = values, neuron.long(), channel.long()
        self.n_neurons = int(n_neurons)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.values.shape[0], self.n_neurons))

    @property
    def device(self) -> torch.device:
        return self.values.device

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __getitem__(self, key: int | slice | torch.Tensor | tuple) -> torch.Tensor:
        if isinstance(key, tuple):  # (frames, neurons...): the dense frames, then the rest
            rows = self[key[0]]
            return rows[(slice(None),) * (rows.ndim - 1) + key[1:]]
        rows = self.values[key]  # (C,) or (B, C)
        dense = rows.new_zeros((*rows.shape[:-1], self.n_neurons))
        dense[..., self.neuron] = rows[..., self.channel]
        return dense

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError("IndexedInput selects frames only (dim 0)")
        return self[index]

    def to(self, device: torch.device | str) -> IndexedInput:
        values, neuron, channel = (x.to(device) for x in (self.values, self.neuron, self.channel))
        return IndexedInput(values, neuron, channel, self.n_neurons)

    def dense(self) -> torch.Tensor:
        """(T, N) float32: the whole input, materialised."""
        return self[:]


@dataclass(frozen=True)
class Observations:
    """Recorded data of one simulated network.

    Attributes:
        activity: (T, N) float32, the recorded state (voltage, signal or concentration) per frame.
        derivative: (T, N) float32, the training target d(activity)/dt per frame, computed from the
            recording itself (finite differences), never from the simulator's hidden right-hand side.
        dt: time step between frames, in the regime's time unit.
        n_train_frames: frames ``[0, n_train_frames)`` are for training, the rest are held out.
        edge_index: (2, E) int64 known graph structure (source row 0, target row 1), or None when the
            structure is unknown and must be learned densely.
        external_input: (T, N) float32 known input per frame (a tensor, or an :class:`IndexedInput`
            when it reaches few neurons), or None.
        extras: regime-specific recordings (e.g. a known stoichiometry, flyvis's out-of-distribution
            recording and its IndexedInput), never hidden parameters.
        smoothing_window: the Savitzky-Golay window (frames) that ``activity`` and ``derivative`` were
            computed with, 1 for the raw record (what ``simulation.smoothing_window: auto`` chose).
    """

    activity: torch.Tensor
    derivative: torch.Tensor
    dt: float
    n_train_frames: int
    edge_index: torch.Tensor | None = None
    external_input: torch.Tensor | IndexedInput | None = None
    extras: Mapping[str, torch.Tensor | IndexedInput] = field(default_factory=dict)
    smoothing_window: int = 1

    @property
    def n_frames(self) -> int:
        return int(self.activity.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.activity.shape[1])


@dataclass(frozen=True)
class GroundTruth:
    """Hidden parameters of a simulated network, keyed by name (e.g. ``W`` (N, N), ``tau`` (N,),
    ``types`` (N,) int64). Only evaluation code may read it. ``meta["observed"]`` names the tensors that
    the regime's Observations also hold (e.g. a known stoichiometry), which are not hidden."""

    tensors: Mapping[str, torch.Tensor]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def garbage(self, seed: int = 0) -> GroundTruth:
        """Random tensors of the same names, shapes and dtypes (integers in 0..2): training that never
        reads the ground truth learns bit-identical parameters from this as from the real one."""
        gen = torch.Generator().manual_seed(int(seed))
        tensors = {
            key: torch.randn(value.shape, generator=gen).to(value.dtype)
            if value.is_floating_point()
            else torch.randint(0, 3, value.shape, generator=gen).to(value.dtype)
            for key, value in self.tensors.items()
        }
        return GroundTruth(tensors=tensors, meta={"garbage": True})


@dataclass(frozen=True)
class _RecordFile:
    """Stands in the cache's pickle for a recording kept as ``<name>.npy`` in the cache's record folder."""

    name: str


def _map_recordings(observations: Observations, fn: Callable[[str, Any], Any]) -> Observations:
    """``observations`` with ``fn(name, value)`` applied to ``activity``, ``derivative``,
    ``external_input`` and each ``extras[key]`` (named ``extras.<key>``)."""
    return dataclasses.replace(
        observations,
        activity=fn("activity", observations.activity),
        derivative=fn("derivative", observations.derivative),
        external_input=fn("external_input", observations.external_input),
        extras={key: fn(f"extras.{key}", value) for key, value in observations.extras.items()},
    )


def config_hash(params: Mapping[str, Any], length: int = 16) -> str:
    """Stable hex digest of a JSON-serialisable mapping (used as the data-cache key)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


class SimulationDataModule(pl.LightningDataModule):
    """Base class of the regimes: generate (or load from cache) once, then serve training frames.

    Subclasses implement :meth:`simulate` and :meth:`cache_key_params` and set ``cache_dir`` (None:
    no cache); after :meth:`setup`, ``self.observations`` and ``self.ground_truth`` are set, and
    ``train.run`` takes the ground truth out (:meth:`release_ground_truth`) before training.

    The cache holds one file per key (the class name and a hash of :meth:`cache_key_params`, which
    includes the seed). Sweep children that share a key simulate once: the first takes a file lock,
    simulates and writes atomically; the others wait for it and load its file. A regime whose
    recordings are long allocates them with :meth:`recording`: while the cache is written they are
    ``.npy`` files in the record folder next to it (``<key>.rec/``), filled in place, so the recording
    lives in the page cache rather than in the process's private memory, and the ``.pt`` file that
    completes the entry refers to them by name.
    """

    observations: Observations
    ground_truth: GroundTruth
    cache_dir: str | Path | None = None
    _record_dir: Path | None = None
    _recordings: dict[str, torch.Tensor] | None = None

    def simulate(self) -> tuple[Observations, GroundTruth]:
        raise NotImplementedError

    def cache_key_params(self) -> dict[str, Any]:
        """Every parameter that changes the generated data, including the seed."""
        raise NotImplementedError

    def record_bytes(self) -> int:
        """The bytes :meth:`prepare_data` writes into the cache's record files (0: nothing of note, the
        recording is pickled with the cache file). The preflight compares it with the free space."""
        return 0

    def cache_path(self, cache_dir: str | Path | None) -> Path | None:
        if cache_dir is None:
            return None
        key = {"cache_format": CACHE_FORMAT, **self.cache_key_params()}
        return Path(cache_dir) / f"{type(self).__name__}-{config_hash(key)}.pt"

    def recording(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised float32 tensor of ``shape`` for the recording that ``simulate`` returns as
        ``name`` (``activity``, ``derivative``, ``external_input`` or ``extras.<key>``).

        While the cache is written it maps ``<name>.npy`` in the record folder, so it never takes
        private memory; otherwise it is plain memory.
        """
        if self._record_dir is None or self._recordings is None:
            return torch.empty(shape, dtype=torch.float32)
        self._record_dir.mkdir(exist_ok=True)
        path = self._record_dir / f"{name}.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=tuple(shape))
        try:
            reserve_disk(path)
        except OSError as err:  # a full disk, now rather than as a SIGBUS mid-simulation
            size = disk_size(self.record_bytes())
            raise OSError(
                err.errno,
                f"paths.cache_dir={self.cache_dir}: no room for the record ({size}; "
                f"{err.strerror}); free space, set paths.cache_dir (or $HYDRA_LLM_CACHE) to another "
                "disk, or lower simulation.n_frames",
            ) from None
        tensor = torch.from_numpy(array)
        self._recordings[name] = tensor
        return tensor

    def prepare_data(self) -> None:
        """Simulate once into the cache (no-op when its file exists)."""
        path = self.cache_path(self.cache_dir)
        if path is not None:
            self._write_cache(path)

    def setup(self, stage: str | None = None) -> None:
        """Load from the cache (or simulate, and store when there is a cache); idempotent. An entry that
        cannot be read (a truncated file, a record file deleted to free space) is simulated again."""
        if getattr(self, "observations", None) is not None:
            return
        path = self.cache_path(self.cache_dir)
        if path is None:
            self.observations, self.ground_truth = self.simulate()
            return
        self._write_cache(path)
        seen = path.stat()
        try:
            self.observations, self.ground_truth = self._load_cache(path)
        except MemoryError:  # the entry may be sound
            raise
        except Exception as err:  # a damaged entry (a truncated file, a record deleted to free space)
            reason = error_line(err, 300)
            log.warning("the data cache's %s cannot be read (%s); simulating it again", path, reason)
            self._discard(path, seen)
            self._write_cache(path)
            self.observations, self.ground_truth = self._load_cache(path)

    def release_ground_truth(self) -> GroundTruth:
        """Hand the ground truth over (to evaluation) and keep none, so that the datamodule given to
        Lightning holds nothing a training step could read the answer from. Call after :meth:`setup`."""
        truth = self.ground_truth
        del self.ground_truth
        return truth

    def _write_cache(self, path: Path) -> None:
        """Simulate into ``path`` under its lock when the file is missing (no-op when it exists)."""
        from filelock import FileLock

        if path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):
            if path.is_file():  # another child may have written it while we waited
                return
            record_dir = path.with_suffix(".rec")
            shutil.rmtree(record_dir, ignore_errors=True)  # left by a run killed while simulating
            self._record_dir, self._recordings = record_dir, {}
            try:
                observations, truth = self.simulate()
                observations = _map_recordings(observations, self._record_file)
            except BaseException:
                shutil.rmtree(record_dir, ignore_errors=True)  # its disk goes back at once
                raise
            finally:
                self._record_dir, self._recordings = None, None
            atomic_torch_save({"observations": observations, "ground_truth": truth}, path)

    @staticmethod
    def _discard(path: Path, seen: os.stat_result) -> None:
        """Remove the cache entry ``path`` (its file and record folder) under its lock, unless another
        process has removed or replaced it since it was ``seen``."""
        from filelock import FileLock

        with FileLock(f"{path}.lock"):
            try:
                now = path.stat()
            except FileNotFoundError:
                return
            if (now.st_ino, now.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns):
                path.unlink()
                shutil.rmtree(path.with_suffix(".rec"), ignore_errors=True)

    def _record_file(self, name: str, value: Any) -> Any:
        """``_RecordFile(name)`` when ``value`` is the whole tensor allocated as ``name`` (its file is
        written through the shared mapping); anything else is pickled as it is."""
        kept = (self._recordings or {}).get(name)
        if not (isinstance(value, torch.Tensor) and kept is not None):
            return value
        if value.data_ptr() != kept.data_ptr() or value.shape != kept.shape:
            return value
        return _RecordFile(name)

    @staticmethod
    def _load_cache(path: Path) -> tuple[Observations, GroundTruth]:
        """The data of ``path``, its tensors memory-mapped from the file and the record folder (pages of
        the page cache, copy-on-write): the children of a sweep that share a cache entry share one copy
        of the recording in RAM, and the child that simulated it keeps no private copy."""
        blob = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        record_dir = path.with_suffix(".rec")

        def load(name: str, value: Any) -> Any:
            if not isinstance(value, _RecordFile):
                return value
            return torch.from_numpy(np.load(record_dir / f"{value.name}.npy", mmap_mode="c"))

        log.info("data loaded from cache %s", path)
        return _map_recordings(blob["observations"], load), blob["ground_truth"]
