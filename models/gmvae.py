"""The Gaussian-mixture VAE as a Pyro model/guide pair, with the component summed out exactly.

Generative model (K components, fixed uniform mixing weights)::

    y ~ Categorical(1/K, ..., 1/K)               (the component)
    z | y ~ Normal(mu_y, diag(sigma_y)^2)        (learned means and scales per component)
    x | z ~ p(x | decoder(z))                    (the chosen likelihood, independent pixels)

Guide (amortized)::

    y | x ~ Categorical(softmax(classifier(x)))
    z | x, y ~ Normal(loc(x, y), diag(scale(x, y))^2)

The guide's ``y`` is marked ``infer={"enumerate": "parallel"}``. Under ``TraceEnum_ELBO``
(the pair's ``default_elbo``) the ELBO is then summed over the K values of ``y``
exactly, weighted by ``q(y | x)``, with one draw of ``z`` per component:

.. math::

    \\mathcal{L}(x) = \\sum_{k=1}^K q(k \\mid x) \\Big( \\mathbb{E}_{q(z \\mid x, k)}
        \\big[\\log p(x \\mid z) + \\log p(z \\mid k) - \\log q(z \\mid x, k)\\big]
        + \\log p(k) - \\log q(k \\mid x) \\Big).

Any other estimator (``TraceGraph_ELBO``: score-function gradients for ``y``) ignores the
mark and samples ``y``, so the two can be compared on the same pair
(``pyrovae compare gmvae --elbos enum,graph``). The mixing weights are fixed uniform, a
choice that keeps components from starving (a learned ``pi`` lets a few components win
early and the rest die). Clustering uses ``argmax_k q(k | x)`` (:meth:`GMVAE.cluster`).
See Dilokthanakul et al. (2016, "Deep Unsupervised Clustering with Gaussian Mixture
Variational Autoencoders") and Jiang et al. (2017, "Variational Deep Embedding", VaDE).
"""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.errors import UsageError
from pyrovae.likelihoods import make_likelihood
from pyrovae.nets import MIN_SCALE, MLP, Decoder
from pyrovae.pairs import register

__all__ = ["GMVAE", "MixturePrior", "ComponentEncoder"]


class MixturePrior(nn.Module):
    """The component means ``mu_k`` and scales ``sigma_k`` of ``p(z | y = k)``, each (K, z_dim).

    The means start spread out (standard normal draws times ``init_spread``) so that the
    components are told apart from the first step."""

    def __init__(self, k: int, z_dim: int, init_spread: float = 1.0) -> None:
        super().__init__()
        self.loc = nn.Parameter(init_spread * torch.randn(k, z_dim))
        self.raw_scale = nn.Parameter(torch.full((k, z_dim), math.log(math.e - 1.0)))  # softplus -> 1

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``loc`` and ``scale`` of component ``y`` (any shape of integer labels), shape (*y.shape, z_dim)."""
        return self.loc[y], F.softplus(self.raw_scale[y]) + MIN_SCALE


class ComponentEncoder(nn.Module):
    """``q(z | x, y)``: the first hidden layer adds a learned vector per component to a linear
    map of ``x``, so ``x`` of shape (B, *x_shape) and ``y`` of shape (K, 1) (parallel
    enumeration) broadcast to (K, B, z_dim) without copying ``x`` K times."""

    def __init__(self, x_shape: Sequence[int], hidden: Sequence[int], z_dim: int, k: int) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.z_dim = z_dim
        self.x_in = nn.Linear(math.prod(self.x_shape), hidden[0])
        self.y_in = nn.Embedding(k, hidden[0])
        self.body = MLP(list(hidden), nn.ReLU) if len(hidden) > 1 else nn.Identity()
        self.head = nn.Linear(hidden[-1], 2 * z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.reshape(*x.shape[: x.dim() - len(self.x_shape)], -1)
        h = F.relu(self.x_in(h) + self.y_in(y))
        if not isinstance(self.body, nn.Identity):
            h = F.relu(self.body(h))
        loc, raw_scale = self.head(h).split(self.z_dim, dim=-1)
        return loc, F.softplus(raw_scale) + MIN_SCALE


@register("gmvae")
class GMVAE(nn.Module):
    """A VAE whose prior is a mixture of K Gaussians; the component is summed out by enumeration.

    :param k: number of mixture components (at least 2).
    :param z_dim: number of latent dimensions.
    :param hidden: hidden layer sizes of the encoders (the decoder mirrors them).
    :param likelihood: ``bernoulli``, ``gaussian``, ``gaussian-learned`` or ``continuous-bernoulli``.
    :param x_shape: shape of one example.
    :param init_spread: standard deviation of the initial component means.
    """

    default_elbo = "enum"

    def __init__(
        self,
        k: int = 10,
        z_dim: int = 10,
        hidden: Sequence[int] = (500,),
        likelihood: str = "bernoulli",
        x_shape: Sequence[int] = (1, 28, 28),
        init_spread: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(k, int) or isinstance(k, bool) or k < 2:
            raise UsageError(f"the GMVAE needs k >= 2 mixture components (an integer), got k={k!r}; "
                             "with one component it is the plain VAE (model 'vae')")
        if not hidden or z_dim < 1:
            raise UsageError(f"the GMVAE needs z_dim >= 1 and at least one hidden layer size, got z_dim={z_dim}, hidden={hidden}")
        self.hparams = {"k": k, "z_dim": z_dim, "hidden": list(hidden), "likelihood": likelihood,
                        "x_shape": list(x_shape), "init_spread": init_spread}
        self.k, self.z_dim, self.x_shape = k, z_dim, tuple(x_shape)
        self.prior = MixturePrior(k, z_dim, init_spread)
        self.classifier = MLP([math.prod(self.x_shape), *hidden, k], nn.ReLU)
        self.encoder = ComponentEncoder(self.x_shape, hidden, z_dim, k)
        self.decoder = Decoder(z_dim, list(reversed(hidden)), self.x_shape)
        self.likelihood = make_likelihood(likelihood)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("prior", self.prior)
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("y", dist.Categorical(logits=x.new_zeros(self.k)))
            loc, scale = self.prior(c)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            p_x = self.likelihood(self.decoder(z)).to_event(len(self.x_shape))
            pyro.sample("x", p_x, obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("classifier", self.classifier)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("y", dist.Categorical(logits=self.logits(x)), infer={"enumerate": "parallel"})
            loc, scale = self.encoder(x, c)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized log q(y | x), shape (*batch, K)."""
        return self.classifier(x.reshape(*x.shape[: x.dim() - len(self.x_shape)], -1))

    @torch.no_grad()
    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable component under ``q(y | x)`` for each input, shape (batch,)."""
        return self.logits(x).argmax(-1)

    def _device(self) -> torch.device:
        return self.prior.loc.device

    @torch.no_grad()
    def sample_by_component(self, n: int) -> torch.Tensor:
        """``n`` images from each component (the likelihood's mean), shape (K, n, *x_shape)."""
        c = torch.arange(self.k, device=self._device()).unsqueeze(-1).expand(self.k, n)
        loc, scale = self.prior(c)
        return self.likelihood.mean(self.decoder(loc + scale * torch.randn_like(loc)))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` images from the prior: a uniform component, then ``z``, then the likelihood's mean."""
        c = torch.randint(self.k, (n,), device=self._device())
        loc, scale = self.prior(c)
        return self.likelihood.mean(self.decoder(loc + scale * torch.randn_like(loc)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's mean of ``z`` given ``x`` and its most probable component."""
        return self.encoder(x, self.cluster(x))[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean for each row of ``z``."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode :meth:`encode`'s mean for each input."""
        return self.decode(self.encode(x))
