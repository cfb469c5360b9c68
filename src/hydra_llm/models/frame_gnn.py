"""The base of the GNNs trained on random batches of recorded frames (signal, flyvis)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import lightning.pytorch as pl
import torch


class FrameGNN(pl.LightningModule):
    """Sums the loss terms of each batch, logs them, and keeps ``final_loss``.

    Subclasses implement :meth:`loss_terms`; its ``prediction`` term is the data error.
    ``final_loss`` is the mean prediction loss over the last tenth of the latest epoch (at most the
    last ``unsized_window`` steps when the loader has no length). Each term is logged as
    ``train/<name>`` every ``log_every`` batches.

    The epoch's prediction losses go into one ring buffer allocated when the epoch starts: one slot
    per batch, or ``unsized_window`` slots for a loader without a length. Keeping a new
    scalar tensor per step instead (a list of them) grew the process by about 3 MB a step at extent 8:
    each one, allocated between the step's large temporaries and kept to the epoch's end, stops glibc
    from reusing or returning the heap around it (BENCHMARKS.md, "Memory over a long run").
    """

    log_every = 200
    unsized_window = 4096

    def __init__(self) -> None:
        super().__init__()
        self.final_loss = math.nan
        self._epoch_losses: torch.Tensor | None = None
        self._steps_done = 0

    def loss_terms(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every loss term (already weighted, scalar tensors) of one batch."""
        raise NotImplementedError

    def on_train_epoch_start(self) -> None:
        n_batches = self.trainer.num_training_batches
        size = int(n_batches) if math.isfinite(n_batches) else self.unsized_window
        self._epoch_losses = torch.full((size,), math.nan, device=self.device)
        self._steps_done = 0

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        loss = torch.stack(list(terms.values())).sum()
        if self._epoch_losses is not None and self._epoch_losses.numel():
            self._epoch_losses[batch_idx % self._epoch_losses.numel()] = terms["prediction"].detach()
            self._steps_done = batch_idx + 1
        if batch_idx % self.log_every == 0:
            self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False)
            self.log("loss", loss.detach(), prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._epoch_losses is not None and self._steps_done:
            losses, end = self._epoch_losses, self._steps_done
            last = min(max(1, end // 10), losses.numel())
            slots = torch.arange(end - last, end, device=losses.device) % losses.numel()
            self.final_loss = float(losses[slots].mean())
            self.log("train/epoch_prediction_loss", self.final_loss)
        self._epoch_losses = None
