"""Pairs written the way a user writes them, for the tests (loaded as path.py:ClassName)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.likelihoods import Bernoulli
from pyrovae.models import VAE, LinearVAE
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


def linear_pair(column_scales: tuple[float, float] = (2.0, 1.0), raw_noise: float = 0.0,
                perturb: bool = False, x_dim: int = 5, seed: int = 0) -> LinearVAE:
    """A float64 linear Gaussian pair (d = 2) whose decoder has orthogonal columns, so the
    guide set by ``set_optimal_guide`` is the exact posterior. ``raw_noise`` sets the
    decoder's noise scale to softplus(raw_noise); ``perturb`` moves the guide off the
    posterior (ELBO gap about 5.8 nats per example with the defaults)."""
    torch.manual_seed(seed)
    pair = LinearVAE(z_dim=2, x_shape=(x_dim,)).double()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(x_dim, 2, dtype=torch.float64))
        pair.decoder.linear.weight.copy_(q * torch.tensor(column_scales, dtype=torch.float64))
        pair.decoder.linear.bias.normal_()
        pair.decoder.raw_scale.fill_(raw_noise)
    pair.set_optimal_guide()
    if perturb:
        with torch.no_grad():
            pair.encoder.linear.weight.add_(0.3 * torch.randn(2, x_dim, dtype=torch.float64))
            pair.encoder.raw_scale.add_(0.7)
    return pair



class BatchNormVAE(VAE):
    """The VAE with a batch norm on the encoder's features: a correct pair, though in training
    mode one image is too few for the norm (evaluation runs pairs in eval mode)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.norm = nn.BatchNorm1d(self.hparams["hidden"][-1])

    def guide(self, x, y=None):
        pyro.module("encoder", self.encoder)
        pyro.module("norm", self.norm)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder.code(self.norm(self.encoder.features(x)))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
