"""The Gaussian-mixture VAE as a Pyro model/guide pair, with the component summed out exactly.

Generative model (K components, fixed uniform mixing weights)::

    y ~ Categorical(1/K, ..., 1/K)               (the component)
    z | y ~ Normal(mu_y, diag(sigma_y)^2)        (learned means and scales per component)
    x | z ~ p(x | decoder(z))                    (the chosen likelihood, independent pixels)

Guide (amortized)::

    y | x ~ Categorical(q(y | x))                (a classifier on the encoder's hidden layer)
    z | x, y ~ Normal(loc(x) + shift_y, diag(scale(x))^2)

The encoder's hidden layer ``h(x)`` feeds three heads: ``loc`` and ``scale`` as in the
plain VAE, and the classifier's logits ``log p(y | z = loc(x)) + W h(x) + b``: the
mixture's own posterior at the code's mean, plus a linear head. ``W``, ``b`` and the
per-component shifts ``shift_y`` of the code's mean start at zero, so when the mixture
starts (see pretraining) the guide is the plain encoder with ``q(y | x) = p(y | loc(x))``,
the assignment the k-means start gives; a classifier from random weights would instead
start every example at a nearly uniform ``q(y | x)``. The guide's ``y`` is marked
``infer={"enumerate": "parallel"}``; under ``TraceEnum_ELBO`` (the pair's ``default_elbo``)
the ELBO is summed over the K values of ``y`` exactly, with one draw ``z_k`` of
``q(z | x, k)`` per component (the decoder runs K times per example):

.. math::

    \\mathcal{L}(x) = \\sum_{k=1}^K q(k \\mid x) \\Big( \\mathbb{E}_{q(z \\mid x, k)} \\big[
        \\log p(x \\mid z) + \\log p(z \\mid k) - \\log q(z \\mid x, k) \\big]
        + \\log p(k) - \\log q(k \\mid x) \\Big).

Any other estimator (``TraceGraph_ELBO``: score-function gradients for ``y``) ignores the
mark and samples ``y``, so the two can be compared on the same pair
(``pyrovae compare gmvae --elbos enum,graph --pretrain-examples 0``). Estimators that need a
reparameterized guide (``meanfield``, ``stl``, ``iwae-K``, ``renyi-A-K``, ``dreg-K``) refuse
``y`` once the mixture is on; JIT estimators are refused while pretraining lasts, as the
traced pair would replay its pretraining branch for ever.

**Pretraining.** Started from random component means, the mixture ELBO lets a few
components take every example (trained from scratch, an earlier version of this pair used
2 of its 10 components on Fashion-MNIST). VaDE therefore pretrains an autoencoder and
starts the mixture from a clustering of its codes; this pair does the same within one
training run. For its first ``pretrain_examples`` training examples (summed over SVI
steps) it is the plain VAE (``z ~ Normal(0, I)``, no ``y``), and it keeps the encoder means
and scales of the last ``init_codes`` of them. At the first step after that, k-means on
those codes (the least inertia of ``init_restarts`` runs) gives the component means, and
the spread of each cluster (code variance plus mean posterior variance) its scales; from
then on it trains the mixture ELBO above. The pair counts examples with a hook on one
decoder parameter, so a step counts when its gradient is taken (whatever the estimator;
evaluation under ``no_grad`` does not count), and the count, the kept codes and the switch
are buffers, so checkpoints carry them and a resumed run switches at the same step as one
that never stopped. While pretraining the
guide's classifier and shifts are unused and stay at zero.

The mixing weights are fixed uniform, which keeps components from starving (a learned
``pi`` lets a few components win early and the rest die). Clustering uses the guide's
classifier, ``argmax_k q(k | x)`` (:meth:`GMVAE.cluster`). See Dilokthanakul et al. (2016,
"Deep Unsupervised Clustering with Gaussian Mixture Variational Autoencoders") and Jiang
et al. (2017, "Variational Deep Embedding", VaDE).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from pyrovae import distributed
from pyrovae.clustering import kmeans
from pyrovae.errors import UsageError
from pyrovae.likelihoods import make_likelihood
from pyrovae.nets import MIN_SCALE, Decoder, Encoder
from pyrovae.pairs import register

__all__ = ["GMVAE", "MixturePrior", "ComponentHeads"]

# log p(k | z) is kept above this: a component far from z would otherwise get probabilities
# near 1e-40, whose denormal arithmetic made late epochs several times slower on x86 CPUs
MIN_LOG_PROB = -50.0

# while pretraining the pair has no site to enumerate, which TraceEnum_ELBO would warn about
warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured for enumeration")


class MixturePrior(nn.Module):
    """The component means ``mu_k`` and scales ``sigma_k`` of ``p(z | y = k)``, each (K, z_dim).

    The means start spread out (standard normal draws times ``init_spread``); after
    pretraining, :meth:`GMVAE.init_mixture` sets them from the codes."""

    def __init__(self, k: int, z_dim: int, init_spread: float = 1.0) -> None:
        super().__init__()
        self.loc = nn.Parameter(init_spread * torch.randn(k, z_dim))
        self.raw_scale = nn.Parameter(torch.full((k, z_dim), math.log(math.e - 1.0)))  # softplus -> 1

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``loc`` and ``scale`` of component ``y`` (any shape of integer labels), shape (*y.shape, z_dim)."""
        return self.loc[y], F.softplus(self.raw_scale[y]) + MIN_SCALE

    def log_posterior(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(k | z)`` under uniform mixing weights for ``z`` of shape (*batch, z_dim), shape
        (*batch, K), clamped below at ``MIN_LOG_PROB``."""
        scale = F.softplus(self.raw_scale) + MIN_SCALE
        log_pz = dist.Normal(self.loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)
        return torch.log_softmax(log_pz, -1).clamp(min=MIN_LOG_PROB)

    @torch.no_grad()
    def fit(self, loc: torch.Tensor, scale: torch.Tensor, restarts: int, seed: int = 0) -> None:
        """Set the components from codes (encoder means ``loc`` and scales ``scale``, (N, z_dim)):
        k-means centers (the least inertia of ``restarts`` runs), and per cluster the variance of
        its codes plus their mean variance."""
        k = self.loc.shape[0]
        assign, centers = kmeans(loc, k, n_init=restarts, seed=seed)
        var = torch.empty_like(centers)
        for j in range(k):
            members = assign == j
            if members.sum() < 2:  # an empty or single-point cluster gets the spread of all codes
                members = torch.ones_like(members)
            var[j] = loc[members].var(0) + scale[members].pow(2).mean(0)
        std = (var.sqrt() - MIN_SCALE).clamp(min=1e-3)
        self.loc.copy_(centers)
        self.raw_scale.copy_(std + torch.log(-torch.expm1(-std)))  # inverse softplus


class ComponentHeads(nn.Module):
    """The guide's parts for ``y``: a linear classifier head on the encoder's hidden layer
    (``features`` wide) and per-component shifts of ``q(z | x, y)``'s mean, (K, z_dim). Both
    start at zero, so that the guide starts as the plain encoder with ``q(y | x) = p(y | loc(x))``."""

    def __init__(self, features: int, k: int, z_dim: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(features, k)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        self.shift = nn.Parameter(torch.zeros(k, z_dim))


def _global_count(x: torch.Tensor) -> int:
    """The examples of this step on every process: pretraining lasts as many examples, and
    switches at the same step, as in one process."""
    group = distributed.current()
    return x.shape[0] if group is None else int(group.sum(x.shape[0], x.device))


@register("gmvae")
class GMVAE(nn.Module):
    """A VAE whose prior is a mixture of K Gaussians; the component is summed out by enumeration.

    :param k: number of mixture components (at least 2).
    :param z_dim: number of latent dimensions.
    :param hidden: hidden layer sizes of the encoder (the decoder mirrors them).
    :param likelihood: ``bernoulli``, ``gaussian``, ``gaussian-learned`` or ``continuous-bernoulli``.
    :param x_shape: shape of one example.
    :param pretrain_examples: training examples (summed over steps, and over processes) during which the pair is
        the plain VAE before the mixture starts from k-means on its codes; 0 starts the
        mixture at once from random means.
    :param init_codes: how many of the last pretraining codes the k-means sees.
    :param init_restarts: k-means runs on those codes; the one of least inertia starts the
        mixture (``benchmarks/gmvae_starts.py``: more runs pick better starts, by accuracy).
    :param init_spread: standard deviation of the random initial component means.
    """

    default_elbo = "enum"

    def __init__(
        self,
        k: int = 10,
        z_dim: int = 20,
        hidden: Sequence[int] = (500,),
        likelihood: str = "bernoulli",
        x_shape: Sequence[int] = (1, 28, 28),
        pretrain_examples: int = 300_000,
        init_codes: int = 10_000,
        init_spread: float = 1.0,
        init_restarts: int = 16,
    ) -> None:
        super().__init__()
        if not isinstance(k, int) or isinstance(k, bool) or k < 2:
            raise UsageError(f"the GMVAE needs k >= 2 mixture components (an integer), got k={k!r}; "
                             "with one component it is the plain VAE (model 'vae')")
        if not hidden or z_dim < 1:
            raise UsageError(f"the GMVAE needs z_dim >= 1 and at least one hidden layer size, got z_dim={z_dim}, hidden={hidden}")
        if not isinstance(pretrain_examples, int) or pretrain_examples < 0:
            raise UsageError(f"pretrain_examples must be an integer >= 0 (0: no pretraining), got {pretrain_examples!r}")
        if not isinstance(init_codes, int) or init_codes < k:
            raise UsageError(f"init_codes must be an integer >= k = {k} (codes for the k-means), got {init_codes!r}")
        if not isinstance(init_restarts, int) or init_restarts < 1:
            raise UsageError(f"init_restarts must be an integer >= 1 (k-means runs), got {init_restarts!r}")
        self.hparams = {"k": k, "z_dim": z_dim, "hidden": list(hidden), "likelihood": likelihood,
                        "x_shape": list(x_shape), "pretrain_examples": pretrain_examples,
                        "init_codes": init_codes, "init_spread": init_spread, "init_restarts": init_restarts}
        self.k, self.z_dim, self.x_shape = k, z_dim, tuple(x_shape)
        self.pretrain_examples, self.init_restarts = pretrain_examples, init_restarts
        self.prior = MixturePrior(k, z_dim, init_spread)
        self.encoder = Encoder(self.x_shape, hidden, z_dim)
        self.decoder = Decoder(z_dim, list(reversed(hidden)), self.x_shape)
        self.heads = ComponentHeads(hidden[-1], k, z_dim)
        self.likelihood = make_likelihood(likelihood)
        # training state, saved in checkpoints: examples trained on, the last codes, the switch
        self.register_buffer("examples_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("codes", torch.zeros(init_codes if pretrain_examples else 0, 2 * z_dim))
        self.register_buffer("codes_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("mixture_on", torch.tensor(pretrain_examples == 0))
        self._pending: tuple[int, torch.Tensor | None] | None = None
        self.decoder.net[-1].bias.register_post_accumulate_grad_hook(self._count_step)

    # --- the pair ---------------------------------------------------------------------------

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            if self.mixture_on:
                pyro.module("prior", self.prior)
                c = pyro.sample("y", dist.Categorical(logits=x.new_zeros(self.k)))
                loc, scale = self.prior(c)
            else:  # pretraining: the plain VAE
                loc, scale = x.new_zeros(self.z_dim), x.new_ones(self.z_dim)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            p_x = self.likelihood(self.decoder(z)).to_event(len(self.x_shape))
            pyro.sample("x", p_x, obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("encoder", self.encoder)
        if torch.jit.is_tracing() and not self.mixture_on:
            raise UsageError("a JIT-compiled estimator (jit-...) replays the GMVAE as it was traced, still "
                             "pretraining: the switch to the mixture is Python, so it would never come. Train "
                             "it with enum (its default) or graph, or with pretrain_examples=0")
        training = self.training and torch.is_grad_enabled()
        if training and not self.mixture_on and self.examples_seen >= self.pretrain_examples:
            self.init_mixture()
        with pyro.plate("data", x.shape[0]):
            h = self.encoder.features(x)
            loc, scale = self.encoder.code(h)
            z_loc = loc
            if self.mixture_on:
                pyro.module("prior", self.prior)
                pyro.module("heads", self.heads)
                c = pyro.sample("y", dist.Categorical(logits=self._logits(h, loc)),
                                infer={"enumerate": "parallel"})
                z_loc = loc + self.heads.shift[c]  # (K, batch, z_dim) when y is enumerated
            pyro.sample("z", dist.Normal(z_loc, scale).to_event(1))
        if training:  # committed by _count_step when this step's gradient arrives
            codes = None if self.mixture_on else torch.cat([loc, scale], -1).detach().reshape(-1, 2 * self.z_dim)
            self._pending = (_global_count(x), codes)

    # --- pretraining, then the switch ---------------------------------------------------------

    def _count_step(self, _param: torch.Tensor) -> None:
        """Gradient hook: count the examples of the step whose guide ran last, keep its codes."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        n, codes = pending
        with torch.no_grad():
            self.examples_seen += n
            if codes is not None and len(self.codes):
                codes = codes[-len(self.codes):]
                rows = (self.codes_seen + torch.arange(len(codes), device=codes.device)) % len(self.codes)
                self.codes[rows] = codes.to(self.codes.dtype)
                self.codes_seen += len(codes)

    @torch.no_grad()
    def init_mixture(self) -> None:
        """End pretraining: components from k-means on the kept codes (random ones if there are
        fewer codes than components), then the mixture ELBO from the next model call on."""
        n = min(int(self.codes_seen), len(self.codes))
        if n >= self.k:
            loc, scale = self.codes[:n].split(self.z_dim, -1)
            self.prior.fit(loc, scale, self.init_restarts)
        if distributed.current() is not None:  # each process kept its own slices' codes: all start from rank 0's
            for tensor in self.prior.state_dict().values():
                torch_dist.broadcast(tensor, src=0)
        self.mixture_on.fill_(True)

    # --- clustering and images -----------------------------------------------------------------

    def _logits(self, h: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        return self.prior.log_posterior(loc) + self.heads.classifier(h)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's ``log q(y | x)`` up to a constant per input, shape (*batch, K)."""
        h = self.encoder.features(x)
        return self._logits(h, self.encoder.code(h)[0])

    @torch.no_grad()
    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable component for each input, ``argmax_k q(k | x)``, shape (batch,)."""
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
        """``n`` images from the prior (a uniform component, then ``z``; the standard normal
        while pretraining), decoded to the likelihood's mean."""
        if not self.mixture_on:
            return self.decode(torch.randn(n, self.z_dim, device=self._device()))
        c = torch.randint(self.k, (n,), device=self._device())
        loc, scale = self.prior(c)
        return self.decode(loc + scale * torch.randn_like(loc))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's mean of ``z`` given ``x``."""
        return self.encoder(x)[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean for each row of ``z``."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode :meth:`encode`'s mean for each input."""
        return self.decode(self.encode(x))
