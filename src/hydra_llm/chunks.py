"""A per-frame function over a long record, a bounded number of values at a time: training-side
least squares and the evaluations both run models on every frame of a record."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Values (frames x neurons) per call of in_chunks. A model's MLPs hold (frames, N, hidden)
# activations: one call on the 20,000 held-out frames of a 1,000-neuron record took a run to 12.8 GB.
CHUNK_VALUES = 1 << 20


@torch.no_grad()
def in_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor, chunk: int = CHUNK_VALUES
) -> torch.Tensor:
    """``fn(values)`` for ``values`` (T, N), applied to consecutive frames about ``chunk`` values at a time.

    ``fn`` must act on each frame alone (row i of the result depends on row i only), as a model's
    ``forward`` does; the result is the same as one call, with the peak memory of a chunk.
    """
    frames = max(1, chunk // max(1, values.shape[-1]))
    return torch.cat([fn(part) for part in values.split(frames)])
