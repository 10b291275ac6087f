"""Encoder and decoder building blocks: plain ``torch.nn`` multilayer perceptrons.

Both accept any leading batch dimensions (vectorized particles, importance samples):
the encoder flattens only the trailing ``len(x_shape)`` dimensions, the decoder
unflattens only its last one.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.errors import UsageError

__all__ = ["MLP", "Encoder", "Decoder"]

MIN_SCALE = 1e-4


class MLP(nn.Sequential):
    """Linear layers of the given sizes with an activation between each two."""

    def __init__(self, sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> None:
        if len(sizes) < 2 or any(not isinstance(s, Integral) or isinstance(s, bool) or s < 1 for s in sizes):
            raise UsageError(f"layer sizes must be positive integers, at least two of them, got {list(sizes)} "
                             "(the input's size, the hidden sizes, the output's size)")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i:
                layers.append(activation())
            layers.append(nn.Linear(n_in, n_out))
        super().__init__(*layers)


class Encoder(nn.Module):
    """Maps ``x`` of shape ``(..., *x_shape)`` to the ``loc`` and positive ``scale`` of a
    diagonal normal over ``z``, each of shape ``(..., z_dim)``.

    :param extra_features: size of a vector concatenated to the flattened ``x`` (a condition).
    """

    def __init__(
        self, x_shape: Sequence[int], hidden: Sequence[int], z_dim: int, extra_features: int = 0
    ) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.z_dim = z_dim
        self.body = MLP([math.prod(self.x_shape) + extra_features, *hidden], nn.ReLU)
        self.head = nn.Linear(hidden[-1], 2 * z_dim)

    def forward(
        self, x: torch.Tensor, extra: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.code(self.features(x, extra))

    def features(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden layer's activations, shape ``(..., hidden[-1])``, for a head of one's own."""
        h = x.reshape(*x.shape[: x.dim() - len(self.x_shape)], -1)
        if extra is not None:
            h = torch.cat([h, extra], dim=-1)
        return F.relu(self.body(h))

    def code(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``loc`` and ``scale`` from :meth:`features`."""
        loc, raw_scale = self.head(features).split(self.z_dim, dim=-1)
        return loc, F.softplus(raw_scale) + MIN_SCALE


class Decoder(nn.Module):
    """Maps ``z`` of shape ``(..., in_features)`` to likelihood parameters of shape ``(..., *x_shape)``."""

    def __init__(self, in_features: int, hidden: Sequence[int], x_shape: Sequence[int]) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.net = MLP([in_features, *hidden, math.prod(self.x_shape)], nn.ReLU)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(*z.shape[:-1], *self.x_shape)
