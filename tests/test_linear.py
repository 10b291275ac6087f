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


def test_training_recovers_the_pca_subspace_and_the_exact_likelihood():
    """The seeds' claim, measured: SVI on the linear VAE finds the span of the data's top
    principal directions (small principal angles), and its ELBO approaches the closed-form
    log p(x) of probabilistic PCA at the maximum-likelihood solution (Tipping and Bishop)."""
    from pyrovae import train
    from pyrovae.data import Dataset, Split

    torch.manual_seed(0)
    d_x, n = 8, 4000
    basis, _ = torch.linalg.qr(torch.randn(d_x, 2))
    x = torch.randn(n, 2) @ (basis * torch.tensor([3.0, 2.0])).T + 0.3 * torch.randn(n, d_x)
    data = Dataset("ppca", Split(x[:3000], torch.zeros(3000)), Split(x[3000:], torch.zeros(1000)), ())
    pyro.set_rng_seed(0)
    pair = LinearVAE(z_dim=2, x_shape=(d_x,))
    run = train(pair, data, epochs=30, batch_size=100, lr=0.02, quiet=True)

    centred = x[:3000] - x[:3000].mean(0)
    eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred / 3000)
    pca = eigvecs[:, -2:]
    learned, _ = torch.linalg.qr(pair.decoder.linear.weight.detach())
    cosines = torch.linalg.svdvals(pca.T @ learned)  # cosines of the principal angles
    assert cosines.min() > 0.995, cosines  # every angle below about 6 degrees

    # maximum-likelihood pPCA: sigma^2 = mean of the discarded eigenvalues, W = U (L - sigma^2)^1/2
    sigma2 = eigvals[:-2].mean()
    cov = pca @ torch.diag(eigvals[-2:] - sigma2) @ pca.T + sigma2 * torch.eye(d_x)
    best = torch.distributions.MultivariateNormal(x[:3000].mean(0), cov).log_prob(x[3000:]).mean().item()
    learned_ll = pair.log_marginal(x[3000:]).mean().item()
    assert abs(learned_ll - best) < 0.1, (learned_ll, best)  # nats per example; measured 0.03
    assert run.metrics[-1]["test_elbo"] > best - 0.5  # the diagonal guide is nearly exact here
    # and a bound: above log p(x) only by its Monte Carlo error (one draw per test example)
    from test_estimators import direct_log_weights

    se = direct_log_weights(pair, x[3000:], 200).var(0).mean().sqrt().item() / 1000**0.5
    assert run.metrics[-1]["test_elbo"] <= learned_ll + 4 * se, (run.metrics[-1]["test_elbo"], learned_ll, se)
