"""The linear Gaussian VAE: probabilistic PCA written as a Pyro model/guide pair.

Generative model (Tipping and Bishop, 1999)::

    z ~ Normal(0, I_d)
    x | z ~ Normal(W z + b, sigma^2 I_D)

so that ``x ~ Normal(b, W W^T + sigma^2 I)`` and the posterior is Gaussian::

    M = W^T W + sigma^2 I,   p(z | x) = Normal(M^{-1} W^T (x - b), sigma^2 M^{-1}).

Guide: ``q(z | x) = Normal(A x + c, diag(s)^2)``, amortized and linear in ``x`` with a
scale that does not depend on ``x``. Its best member has ``A = M^{-1} W^T``,
``c = -A b`` and ``s^2 = sigma^2 / diag(M)``; this is the exact posterior when
``W^T W`` is diagonal, which the ELBO's optimum favours (Lucas, Tucker, Grosse and
Norouzi, 2019, "Don't Blame the ELBO!"). Both ``log p(x)`` and ``p(z | x)`` are closed
form, which is what the estimator and evaluation tests check against.
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
from pyrovae.pairs import register

__all__ = ["LinearVAE"]


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class LinearGaussianDecoder(nn.Module):
    """``z -> (W z + b, sigma)`` with one learned ``sigma`` for all dimensions."""

    def __init__(self, z_dim: int, x_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(z_dim, x_dim)
        self.raw_scale = nn.Parameter(_softplus_inverse(torch.tensor(1.0)))

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale)


class LinearEncoder(nn.Module):
    """``x -> (A x + c, s)`` with a scale ``s`` that does not depend on ``x``."""

    def __init__(self, x_dim: int, z_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(x_dim, z_dim)
        self.raw_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self, x_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.linear(x_flat)
        return loc, F.softplus(self.raw_scale).expand_as(loc)


@register("linear")
class LinearVAE(nn.Module):
    """Probabilistic PCA as a VAE: linear Gaussian decoder, amortized linear guide;
    log p(x) and p(z | x) in closed form.

    :param z_dim: number of latent dimensions (principal directions).
    :param x_shape: shape of one example.
    """

    def __init__(self, z_dim: int = 10, x_shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__()
        if z_dim < 1:
            raise UsageError(f"the linear VAE needs z_dim >= 1, got {z_dim}")
        self.hparams = {"z_dim": z_dim, "x_shape": list(x_shape)}
        self.z_dim, self.x_shape = z_dim, tuple(x_shape)
        self.x_dim = math.prod(self.x_shape)
        self.decoder = LinearGaussianDecoder(z_dim, self.x_dim)
        self.encoder = LinearEncoder(self.x_dim, z_dim)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[: x.dim() - len(self.x_shape)], self.x_dim)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            loc = self.decoder.linear(z).reshape(*z.shape[:-1], *self.x_shape)
            pyro.sample("x", dist.Normal(loc, self.decoder.scale).to_event(len(self.x_shape)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(self._flat(x))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # closed forms ------------------------------------------------------------------

    def marginal(self) -> dist.LowRankMultivariateNormal:
        """``p(x) = Normal(b, W W^T + sigma^2 I)`` over flattened examples."""
        lin, scale = self.decoder.linear, self.decoder.scale
        return dist.LowRankMultivariateNormal(lin.bias, lin.weight, scale.pow(2).expand(self.x_dim))

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` for each example, in nats."""
        return self.marginal().log_prob(self._flat(x))

    def _precision_parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        w, var = self.decoder.linear.weight, self.decoder.scale.pow(2)
        m = w.T @ w + var * torch.eye(self.z_dim, dtype=w.dtype, device=w.device)
        return m, var

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """The exact posterior ``p(z | x)`` for each example (batch shape ``(N,)``)."""
        m, var = self._precision_parts()
        lin = self.decoder.linear
        loc = torch.linalg.solve(m, lin.weight.T @ (self._flat(x) - lin.bias).T).T
        return dist.MultivariateNormal(loc, covariance_matrix=var * torch.linalg.inv(m))

    @torch.no_grad()
    def set_optimal_guide(self) -> None:
        """Set the encoder to the best guide of its family (the KL(q || p)-optimal one):
        the exact posterior when ``W^T W`` is diagonal."""
        m, var = self._precision_parts()
        lin = self.decoder.linear
        a = torch.linalg.solve(m, lin.weight.T)
        self.encoder.linear.weight.copy_(a)
        self.encoder.linear.bias.copy_(-a @ lin.bias)
        self.encoder.raw_scale.copy_(_softplus_inverse((var / torch.diagonal(m)).sqrt()))

    # pictures ----------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` decoded means ``W z + b`` for prior draws ``z``."""
        z = torch.randn(n, self.z_dim, device=self.decoder.linear.weight.device)
        return self.decoder.linear(z).reshape(n, *self.x_shape)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._flat(x))[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder.linear(self.encode(x)).reshape(x.shape)
