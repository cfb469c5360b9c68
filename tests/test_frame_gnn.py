"""FrameGNN's bookkeeping of the prediction loss, on a loader with a length and one without."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from hydra_llm.models.frame_gnn import FrameGNN


class Line(FrameGNN):
    """y = a x, fitted by SGD; records every prediction loss it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[float] = []

    def loss_terms(self, batch):
        prediction = ((self.a * batch["x"] - batch["y"]) ** 2).mean()
        self.seen.append(float(prediction.detach()))
        return {"prediction": prediction}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Stream(IterableDataset):
    """``n`` batches of (x, 2x), with no length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        gen = torch.Generator().manual_seed(0)
        for _ in range(self.n):
            x = torch.randn(8, generator=gen)
            yield {"x": x, "y": 2 * x}


def fit(model: Line, loader: DataLoader) -> None:
    quiet = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    pl.Trainer(max_epochs=1, logger=False, **quiet).fit(model, loader)


@pytest.mark.parametrize("window", [4096, 7])
def test_final_loss_without_a_loader_length_is_the_last_tenth(window):
    """An iterable loader has no length: the losses go round a ring of ``unsized_window`` slots, and
    ``final_loss`` is still the mean of the last tenth of the steps (at most the ring's size)."""
    model = Line()
    model.unsized_window = window
    fit(model, DataLoader(Stream(95), batch_size=None))
    assert len(model.seen) == 95
    last = min(95 // 10, window)
    assert model.final_loss == pytest.approx(sum(model.seen[-last:]) / last, rel=1e-6)
    assert model.final_loss < model.seen[0]


def test_final_loss_with_a_loader_length_is_the_last_tenth():
    model = Line()
    batches = list(Stream(40))
    fit(model, DataLoader(batches, batch_size=None))
    assert model.final_loss == pytest.approx(sum(model.seen[-4:]) / 4, rel=1e-6)
