"""A plain multilayer perceptron, the building block of the GNNs' learned functions."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "softplus": nn.Softplus}


class MLP(nn.Module):
    """``n_layers`` Linear layers (``n_layers - 1`` hidden layers of width ``hidden_dim``).

    Input (..., input_size) -> output (..., output_size). The last layer starts small (std
    ``out_init_std``, zero bias) so that a fresh model predicts nearly nothing; ``out_init_std=None``
    keeps PyTorch's default initialisation of every layer.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_dim: int = 64,
        n_layers: int = 3,
        activation: str = "relu",
        out_init_std: float | None = 0.01,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"model.n_layers={n_layers}: must be >= 1")
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.activation={activation!r}: must be one of {sorted(ACTIVATIONS)}")
        sizes = [input_size] + [hidden_dim] * (n_layers - 1) + [output_size]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < n_layers - 1:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        if out_init_std is not None:
            last = self.net[-1]
            nn.init.normal_(last.weight, std=out_init_std)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
