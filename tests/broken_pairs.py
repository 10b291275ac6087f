"""Pairs with one deliberate mistake each, for ``pyrovae check`` (loaded as path.py:ClassName).

Each is the small VAE of :class:`Small` with one thing done wrong, the way users get it wrong.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.likelihoods import Bernoulli
from pyrovae.nets import Decoder, Encoder

X_SHAPE = (1, 28, 28)


class Small(nn.Module):
    """A correct small VAE: the base the broken pairs change."""

    likelihood = Bernoulli()
    x_shape = X_SHAPE

    def __init__(self, z_dim: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder(X_SHAPE, [hidden], z_dim)
        self.decoder = Decoder(z_dim, [hidden], X_SHAPE)

    def prior(self, x):
        return dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1)

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(3), obs=x)

    def guide(self, x, y=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*self.encoder(x)).to_event(1))


class Unregistered(Small):
    """The decoder is never registered with pyro.module: it would never train."""

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(3), obs=x)


class Misnamed(Small):
    """The guide's latent is called "q_z", the model's "z"."""

    def guide(self, x, y=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("q_z", dist.Normal(*self.encoder(x)).to_event(1))


class WrongLatentSize(Small):
    """The guide draws a 3-dimensional z, the model a 4-dimensional one."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder(X_SHAPE, [16], 3)


class OutsidePlate(Small):
    """z is sampled outside the data plate (its batch shape carries the batch)."""

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(3), obs=x)

    def guide(self, x, y=None):
        pyro.module("encoder", self.encoder)
        pyro.sample("z", dist.Normal(*self.encoder(x)).to_event(1))


class BatchInEvent(Small):
    """z's whole (batch, z_dim) tensor is declared one event with .to_event(2), inside the plate."""

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(2))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(3), obs=x)

    def guide(self, x, y=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*self.encoder(x)).to_event(2))


class MissingToEvent(Small):
    """The guide's z has no .to_event(1): its z_dim is left in the batch shape."""

    def guide(self, x, y=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*self.encoder(x)))


class Discrete(Small):
    """A categorical latent sampled in the guide, not marked for enumeration."""

    def __init__(self, k: int = 5) -> None:
        super().__init__(z_dim=k)

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(self.z_dim)))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(F.one_hot(c, self.z_dim).to(x))).to_event(3), obs=x)

    def guide(self, x, y=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=self.encoder(x)[0]))


class WrongObservation(Small):
    """The decoder's output lacks the channel dimension of x: (B, 28, 28) against (B, 1, 28, 28),
    which Pyro broadcasts silently into a (B, B) log-likelihood."""

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            logits = self.decoder(z).reshape(x.shape[0], 28, 28)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(2), obs=x)


class NoObservation(Small):
    """The observation lacks obs=x, so x is a latent of the model."""

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(3))


class FreeParam(Small):
    """A logit offset kept with pyro.param under a fixed name: two instances share it."""

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        offset = pyro.param("offset", torch.zeros(X_SHAPE))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z) + offset).to_event(3), obs=x)


class SharedDecoder(Small):
    """The decoder is a class attribute: every instance uses the same one."""

    shared = Decoder(4, [16], X_SHAPE)

    def model(self, x, y=None):
        pyro.module("shared", self.shared)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Bernoulli(logits=self.shared(z)).to_event(3), obs=x)


class Crashing(Small):
    """The model feeds the decoder a latent twice as wide as it takes."""

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(torch.cat([z, z], -1))).to_event(3), obs=x)


class FlattensTheSampleDim(Small):
    """The model reshapes the decoder's output with ``view(-1, ...)``, which folds any leading
    dimension of draws into the batch: it runs on one draw, not on the draws that
    importance sampling makes side by side."""

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            logits = self.decoder(z).view(-1, *X_SHAPE)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)


class ChangesInput(Small):
    """The guide scales its input in place: the caller's batch changes under it."""

    def guide(self, x, y=None):
        x.mul_(0.5)
        super().guide(x, y)


class PlateOfOne(Small):
    """The model's data plate has size 1 whatever the batch; the latent has one per example."""

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", 1):
            z = pyro.sample("z", self.prior(x).expand([x.shape[0]]))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(3), obs=x)


class ScaledGuideOnly(Small):
    """Only the guide's latent is scaled, which makes the "ELBO" no bound."""

    def guide(self, x, y=None):
        with pyro.poutine.scale(scale=10.0):
            super().guide(x, y)


class GreyBernoulli(Small):
    """Bernoulli pixels, but no likelihood attribute: pyrovae would not binarize the grey images."""

    likelihood = None
