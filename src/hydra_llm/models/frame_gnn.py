"""The base of the GNNs trained on random batches of recorded frames (signal, flyvis)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import lightning.pytorch as pl
import torch


class FrameGNN(pl.LightningModule):
    """Sums the loss terms of each batch, logs them, and keeps ``final_loss``.

    Subclasses implement :meth:`loss_terms`; its ``prediction`` term is the data error.
    ``final_loss`` is the mean prediction loss over the last tenth of the latest epoch. Each term is
    logged as ``train/<name>`` every ``log_every`` batches.
    """

    log_every = 200

    def __init__(self) -> None:
        super().__init__()
        self.final_loss = math.nan
        self._epoch_losses: list[torch.Tensor] = []

    def loss_terms(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every loss term (already weighted, scalar tensors) of one batch."""
        raise NotImplementedError

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        loss = torch.stack(list(terms.values())).sum()
        self._epoch_losses.append(terms["prediction"].detach())
        if batch_idx % self.log_every == 0:
            self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False)
            self.log("loss", loss.detach(), prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._epoch_losses:
            tail = self._epoch_losses[-max(1, len(self._epoch_losses) // 10) :]
            self.final_loss = float(torch.stack(tail).mean())
            self.log("train/epoch_prediction_loss", self.final_loss)
        self._epoch_losses = []
