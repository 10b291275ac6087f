"""Pairs written the way a user writes them, for the tests (loaded as path.py:ClassName)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.likelihoods import Bernoulli
from pyrovae.models import VAE
from pyrovae.nets import Decoder, Encoder


class OffsetVAE(nn.Module):
    """A user's pair with a free Pyro parameter (``pyro.param`` outside any network) and
    no ``hparams``: the trainer must checkpoint the free parameter and rebuild the pair
    from the command line's arguments."""

    def __init__(self, z_dim: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder((1, 28, 28), [hidden], z_dim)
        self.decoder = Decoder(z_dim, [hidden], (1, 28, 28))
        self.likelihood = Bernoulli()

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        offset = pyro.param("logit_offset", torch.zeros((), device=x.device))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z) + offset).to_event(3), obs=x)

    def guide(self, x, y=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class PoisonedVAE(VAE):
    """A VAE whose loss turns NaN from its ``poison_at``-th model call on."""

    def __init__(self, poison_at: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison_at, self.calls = poison_at, 0

    def model(self, x, y=None):
        self.calls += 1
        super().model(x, y)
        if self.calls >= self.poison_at:
            pyro.factor("poison", torch.tensor(float("nan")))
