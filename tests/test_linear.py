"""The linear Gaussian pair: its closed forms against each other and against Pyro's traces."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyrovae.models import LinearVAE


@pytest.fixture
def pair() -> LinearVAE:
    torch.manual_seed(1)
    pair = LinearVAE(z_dim=2, x_shape=(5,)).double()
    with torch.no_grad():
        pair.decoder.linear.weight.normal_()
        pair.decoder.raw_scale.fill_(0.3)
    return pair


def test_marginal_is_the_dense_gaussian(pair):
    x = torch.randn(6, 5, dtype=torch.float64)
    w, b, var = pair.decoder.linear.weight, pair.decoder.linear.bias, pair.decoder.scale**2
    dense = torch.distributions.MultivariateNormal(b, w @ w.T + var * torch.eye(5, dtype=torch.float64))
    assert torch.allclose(pair.log_marginal(x), dense.log_prob(x), atol=1e-10)


def test_posterior_satisfies_bayes_rule(pair):
    """log p(x) = log p(x, z) - log p(z | x) for every z."""
    x = torch.randn(6, 5, dtype=torch.float64)
    post = pair.posterior(x)
    z = post.sample()
    w, b, sd = pair.decoder.linear.weight, pair.decoder.linear.bias, pair.decoder.scale
    log_joint = (torch.distributions.Normal(z @ w.T + b, sd).log_prob(x).sum(-1)
                 + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))
    assert torch.allclose(log_joint - post.log_prob(z), pair.log_marginal(x), atol=1e-10)


def test_optimal_guide_is_the_exact_posterior_when_columns_are_orthogonal(pair):
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64))
        pair.decoder.linear.weight.copy_(q * torch.tensor([2.0, 0.5], dtype=torch.float64))
    pair.set_optimal_guide()
    x = torch.randn(6, 5, dtype=torch.float64)
    loc, scale = pair.encoder(x)
    post = pair.posterior(x)
    assert torch.allclose(loc, post.mean, atol=1e-10)
    assert torch.allclose(scale**2, post.variance, atol=1e-10)
    # then the ELBO is log p(x) exactly, for any sample: the bound is tight
    with pyro.get_param_store().scope():
        elbo = -Trace_ELBO().loss(pair.model, pair.guide, x)
    assert elbo == pytest.approx(pair.log_marginal(x).sum().item(), abs=1e-8)
