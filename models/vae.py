"""The variational autoencoder of Kingma and Welling (2014) as a Pyro model/guide pair.

Generative model::

    z ~ Normal(0, I)                 (z_dim latent dimensions)
    x | z ~ p(x | decoder(z))        (the chosen likelihood, independent pixels)

Guide (amortized, mean-field)::

    z | x ~ Normal(loc(x), diag(scale(x))^2)    (loc and scale from the encoder)

With ``reparameterized=False`` the guide's normal is one that declares no reparameterized
sampler (:class:`ScoreFunctionNormal`, ``has_rsample = False``): the same pair and the same bound, but Pyro's estimators
then differentiate it through the score function ``grad log q(z | x)`` (REINFORCE)
instead of through ``z = loc + scale * eps``, which is how the two gradient estimators
are compared on one pair.

This file is the template for a new pair: networks are registered with
``pyro.module``, the batch lives in ``pyro.plate("data")``, the observation is the site
``"x"``. The attributes ``x_shape``, ``likelihood`` and ``hparams`` and the methods
``sample``, ``reconstruct`` and ``encode`` are optional: the trainer uses the first
three to check data and rebuild the pair, the plots use the last three.
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.errors import UsageError
from pyrovae.likelihoods import make_likelihood
from pyrovae.nets import Decoder, Encoder
from pyrovae.pairs import register

__all__ = ["VAE", "ScoreFunctionNormal"]


class ScoreFunctionNormal(dist.Normal):
    """A normal distribution that declares no reparameterized sampler (``has_rsample`` is
    False), so Pyro draws from it without gradients and its ELBO estimators use the score
    function for its parameters. A subclass rather than ``.has_rsample_(False)``: the
    instance flag is lost when a plate expands an ``Independent`` distribution, the class
    attribute is kept."""

    has_rsample = False


@register("vae")
class VAE(nn.Module):
    """The plain VAE: standard normal prior, MLP encoder and decoder.

    :param z_dim: number of latent dimensions.
    :param hidden: hidden layer sizes of the encoder (the decoder mirrors them).
    :param likelihood: ``bernoulli``, ``gaussian``, ``gaussian-learned`` or ``continuous-bernoulli``.
    :param x_shape: shape of one example.
    :param reparameterized: draw ``z`` in the guide by the reparameterization trick (the
        default); ``False`` hides the reparameterized sampler, so ELBO gradients for the
        encoder come from the score-function estimator.
    """

    def __init__(
        self,
        z_dim: int = 50,
        hidden: Sequence[int] = (400,),
        likelihood: str = "bernoulli",
        x_shape: Sequence[int] = (1, 28, 28),
        reparameterized: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(reparameterized, bool):
            raise UsageError(f"reparameterized must be true or false, got {reparameterized!r}")
        if not hidden or z_dim < 1:
            raise UsageError(f"the VAE needs z_dim >= 1 and at least one hidden layer size, got z_dim={z_dim}, hidden={hidden}")
        self.hparams = {"z_dim": z_dim, "hidden": list(hidden), "likelihood": likelihood, "x_shape": list(x_shape)}
        if not reparameterized:  # recorded only when set, so configs of earlier runs still match on resume
            self.hparams["reparameterized"] = False
        self.z_dim = z_dim
        self.reparameterized = bool(reparameterized)
        self.x_shape = tuple(x_shape)
        self.encoder = Encoder(self.x_shape, hidden, z_dim)
        self.decoder = Decoder(z_dim, list(reversed(hidden)), self.x_shape)
        self.likelihood = make_likelihood(likelihood)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            p_x = self.likelihood(self.decoder(z)).to_event(len(self.x_shape))
            pyro.sample("x", p_x, obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            normal = dist.Normal if self.reparameterized else ScoreFunctionNormal
            pyro.sample("z", normal(loc, scale).to_event(1))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` images decoded from prior draws (the likelihood's mean)."""
        z = torch.randn(n, self.z_dim, device=self.decoder.net[0].weight.device)
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the guide's mean for each input."""
        return self.likelihood.mean(self.decoder(self.encode(x)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's mean of ``z`` for each input."""
        return self.encoder(x)[0]
