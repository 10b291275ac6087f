"""Observation models ``p(x | z)``: each turns a decoder's output into a distribution.

A likelihood is an ``nn.Module`` (a learned scale is a parameter of it, registered with
``pyro.module`` by the pair) whose ``forward`` maps decoder outputs of shape
``(..., *x_shape)`` to a distribution with that batch shape; the pair declares the
event dimensions with ``.to_event``. Two class attributes tell the trainer how to
treat data: ``binarize`` (train on dynamically binarized pixels, evaluate on a fixed
binarization) and ``unit_interval`` (observations must lie in [0, 1]).
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.errors import UsageError

__all__ = [
    "Likelihood",
    "Bernoulli",
    "Gaussian",
    "LearnedGaussian",
    "ContinuousBernoulli",
    "LIKELIHOODS",
    "make_likelihood",
]


class Likelihood(nn.Module):
    """Base class: ``forward(params)`` returns the per-pixel distribution."""

    name: ClassVar[str]
    binarize: ClassVar[bool] = False
    unit_interval: ClassVar[bool] = False

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The expected image under ``forward(params)``, for pictures."""
        return self(params).mean


class Bernoulli(Likelihood):
    """Binary pixels with logits ``params``; trains on dynamically binarized data."""

    name = "bernoulli"
    binarize = True
    unit_interval = True

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=params)


class Gaussian(Likelihood):
    """Normal pixels with mean ``sigmoid(params)`` and a fixed scale."""

    name = "gaussian"

    def __init__(self, scale: float = 0.1) -> None:
        super().__init__()
        if scale <= 0:
            raise UsageError(f"the Gaussian likelihood's scale must be positive, got {scale}")
        self.scale = scale

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Normal(torch.sigmoid(params), self.scale)


class LearnedGaussian(Likelihood):
    """Normal pixels with mean ``sigmoid(params)`` and one scale shared by all pixels,
    learned with the networks (the calibrated decoder of Rybkin, Daniilidis and
    Levine, 2021, "Simple and Effective VAE Training with Calibrated Decoders")."""

    name = "gaussian-learned"

    def __init__(self, init_scale: float = 0.1, min_scale: float = 1e-3) -> None:
        super().__init__()
        self.min_scale = min_scale
        raw = torch.tensor(float(init_scale - min_scale)).expm1().log()  # softplus inverse
        self.raw_scale = nn.Parameter(raw)

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Normal(torch.sigmoid(params), self.scale)


class ContinuousBernoulli(Likelihood):
    """Pixels in [0, 1] under the continuous Bernoulli (Loaiza-Ganem and Cunningham,
    2019), the normalized form of the Bernoulli likelihood for grey levels."""

    name = "continuous-bernoulli"
    unit_interval = True

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=params)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (Bernoulli, Gaussian, LearnedGaussian, ContinuousBernoulli)
}


def make_likelihood(name: str) -> Likelihood:
    """The observation model called ``name`` (one of :data:`LIKELIHOODS`)."""
    if name not in LIKELIHOODS:
        raise UsageError(f"unknown likelihood {name!r}; valid names: {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name]()
