"""Random batches of recorded frames, the unit of training of the per-frame GNNs.

A LightningModule tells the DataModule how it wants to be fed by exposing ``frame_sampling``
(a :class:`FrameSampling`); the DataModule then serves ``batches_per_epoch`` batches of
``batch_size`` frames drawn uniformly from the training frames. This keeps the batch size in the
training config while the data stays in the DataModule, and only Observations are ever batched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class FrameSampling:
    """How many frames per batch, how many batches per epoch, and the seed of the draw."""

    batch_size: int
    batches_per_epoch: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"training.batch_size={self.batch_size}: must be >= 1")
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"batches_per_epoch={self.batches_per_epoch}: must be >= 1 "
                "(raise training.data_augmentation_loop or lower training.batch_size)"
            )


def iterations_per_epoch(n_frames: int, data_augmentation_loop: float, batch_size: int) -> int:
    """Iterations per epoch: ``int(n_frames * aug // batch_size * 0.2)``, at least 1."""
    return max(1, int(n_frames * data_augmentation_loop // batch_size * 0.2))


class FrameBatches(Dataset):
    """Batch ``i`` of the current epoch: a dict of ``(batch_size, N)`` tensors gathered from ``tensors``.

    Frames are drawn with replacement from ``[0, n_train_frames)``; the draw of epoch ``e`` (made when
    batch 0 is asked for, as the sequential loader does at each epoch start) uses seed
    ``sampling.seed + e`` so that a run is reproducible and two epochs differ. A map-style dataset,
    so the loader knows its length without the caveats of an iterable one.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], n_train_frames: int, sampling: FrameSampling):
        super().__init__()
        self.tensors = dict(tensors)
        self.n_train_frames = int(n_train_frames)
        self.sampling = sampling
        self.epoch = 0
        self._frames: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.sampling.batches_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index == 0 or self._frames is None:
            generator = torch.Generator().manual_seed(self.sampling.seed + self.epoch)
            self.epoch += 1
            shape = (self.sampling.batches_per_epoch, self.sampling.batch_size)
            self._frames = torch.randint(0, self.n_train_frames, shape, generator=generator)
        idx = self._frames[index]
        batch = {key: value.index_select(0, idx) for key, value in self.tensors.items()}
        batch["frame"] = idx
        return batch


def frame_loader(
    tensors: Mapping[str, torch.Tensor], n_train_frames: int, sampling: FrameSampling
) -> DataLoader:
    """A sequential DataLoader over :class:`FrameBatches` (batches are already formed; no workers)."""
    return DataLoader(
        FrameBatches(tensors, n_train_frames, sampling), batch_size=None, shuffle=False, num_workers=0
    )


def start_frame_loader(
    n_train_frames: int,
    sampling: FrameSampling,
    window: int,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> DataLoader:
    """Batches of start frames (``"frame"``, (batch_size,), with ``tensors`` gathered at them), each
    followed by ``window - 1`` more frames inside the training range (a rollout of ``window - 1``
    steps); the draw is :class:`FrameBatches`'."""
    n_starts = int(n_train_frames) - int(window) + 1
    if n_starts < 1:
        raise ValueError(
            f"simulation.n_frames: {n_train_frames} training frames leave no start for a window of {window} "
            "frames (lower the rollout length, or raise n_frames)"
        )
    return frame_loader(tensors or {}, n_starts, sampling)
