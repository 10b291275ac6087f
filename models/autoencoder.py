"""A plain (deterministic) autoencoder written as a Pyro model/guide pair.

An autoencoder maps ``x`` to one code ``z = f(x)`` and back to ``g(z)``, and is trained
to reconstruct its input. As a Pyro program::

    guide:   z = f(x)                        (a point mass: Delta(f(x)))
    model:   z ~ flat improper "prior"        (log density 0 everywhere)
             x | z ~ p(x | g(z))              (the chosen likelihood, independent pixels)

Why this pair of choices: ``Trace_ELBO`` estimates
``E_q[log p(x | z) + log p(z) - log q(z | x)]``. The point mass puts all of ``q`` on
``f(x)``, so the expectation is exact with one draw; Pyro's ``Delta`` gives its value
log-density 0, and the flat prior gives every ``z`` log-density 0. What remains is
``log p(x | g(f(x)))``: the ELBO of this pair *is* the reconstruction log-likelihood
(cross-entropy for the Bernoulli likelihood, half the squared error plus a constant for
``gaussian-linear``), and SVI on it is ordinary autoencoder training. A standard normal
prior in the model would instead add ``log N(f(x); 0, I)``, a weight penalty on the codes
that a plain autoencoder does not have.

The price of the flat prior is that the model cannot be run forward: there is no
distribution to draw ``z`` from, so the pair has no ``sample(n)``. That is the point of
comparing it with the VAE (``notebooks/04_holes_in_the_latent_space.ipynb``): to generate
with an autoencoder one must invent a distribution over codes. The ELBO is not a bound on a
proper ``log p(x)`` here, so ``pyrovae eval``'s "log-likelihood" of this pair is its
reconstruction log-likelihood.

With ``hidden=[]`` and ``likelihood="gaussian-linear"`` (identity mean, unit scale) both
networks are single linear maps and the objective is the squared reconstruction error:
the linear autoencoder whose optimal code space is the span of the top principal
components (Baldi and Hornik, 1989).
"""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.util import broadcast_shape
from torch import nn

from pyrovae.errors import UsageError
from pyrovae.likelihoods import LIKELIHOODS, Likelihood, make_likelihood
from pyrovae.nets import MLP, Decoder
from pyrovae.pairs import register

__all__ = ["AutoEncoder", "FlatPrior", "LinearGaussian"]


class LinearGaussian(Likelihood):
    """Normal pixels with mean ``params`` itself (no squashing) and scale 1: the negative
    log-likelihood is ``||x - params||^2 / 2`` plus a constant, the squared error."""

    name = "gaussian-linear"

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Normal(params, 1.0)


class FlatPrior(dist.ImproperUniform):
    """Pyro's improper flat density (log density 0, no sampler), with the zeros of its log
    density made on the value's device: ``ImproperUniform`` makes them on the CPU, which a
    GPU run's importance weights (a sum of per-example log densities) cannot add."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return value.new_zeros(broadcast_shape(value.shape[: value.dim() - self.event_dim], self.batch_shape))


_OWN_LIKELIHOODS: dict[str, type[Likelihood]] = {LinearGaussian.name: LinearGaussian}


def _likelihood(name: str) -> Likelihood:
    if name in _OWN_LIKELIHOODS:
        return _OWN_LIKELIHOODS[name]()
    if name not in LIKELIHOODS:
        valid = ", ".join([*LIKELIHOODS, *_OWN_LIKELIHOODS])
        raise UsageError(f"unknown likelihood {name!r} for the autoencoder; valid names: {valid}")
    return make_likelihood(name)


@register("autoencoder")
class AutoEncoder(nn.Module):
    """The deterministic autoencoder: its ELBO (``Trace_ELBO``) is exactly the reconstruction
    log-likelihood ``log p(x | g(f(x)))``.

    :param z_dim: size of the code.
    :param hidden: hidden layer sizes of the encoder (the decoder mirrors them); ``[]``
        makes both networks linear.
    :param likelihood: ``bernoulli``, ``gaussian``, ``gaussian-learned``,
        ``continuous-bernoulli`` or ``gaussian-linear`` (identity mean: squared error).
    :param x_shape: shape of one example.
    """

    def __init__(
        self,
        z_dim: int = 50,
        hidden: Sequence[int] = (400,),
        likelihood: str = "bernoulli",
        x_shape: Sequence[int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        if z_dim < 1 or any(int(h) < 1 for h in hidden):
            raise UsageError(f"the autoencoder needs z_dim >= 1 and positive hidden sizes, got z_dim={z_dim}, "
                             f"hidden={list(hidden)}")
        self.hparams = {"z_dim": z_dim, "hidden": list(hidden), "likelihood": likelihood, "x_shape": list(x_shape)}
        self.z_dim = z_dim
        self.x_shape = tuple(x_shape)
        self.x_dim = math.prod(self.x_shape)
        self.encoder = MLP([self.x_dim, *hidden, z_dim])
        self.decoder = Decoder(z_dim, list(reversed(hidden)), self.x_shape)
        self.likelihood = _likelihood(likelihood)

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.reshape(*x.shape[: x.dim() - len(self.x_shape)], self.x_dim))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            flat = FlatPrior(constraints.real, (), (self.z_dim,))  # log density 0: no prior
            z = pyro.sample("z", flat)
            p_x = self.likelihood(self.decoder(z)).to_event(len(self.x_shape))
            pyro.sample("x", p_x, obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(self._codes(x), event_dim=1))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code ``f(x)`` of each input, shape ``(N, z_dim)``."""
        return self._codes(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean at ``g(z)`` for each code: images of shape ``(N, *x_shape)``."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x))
