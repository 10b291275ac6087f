"""Estimators against mathematics, on the linear Gaussian pair where log p(x) and p(z | x)
are closed form (float64, D = 5, d = 2, a deliberately imperfect guide unless stated).

Monte Carlo tolerances are stated where used: a mean of R draws is compared with its
reference within 4 standard errors; gradient means coordinate by coordinate within 5.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn

from pyrovae.errors import UsageError
from pyrovae.estimators import DReG_ELBO, NotReparameterizedError, make_estimator, make_evaluator
from example_pairs import linear_pair
from pyrovae.models import LinearVAE

D, N = 5, 8


def _linear_pair(perturb: bool = True) -> LinearVAE:
    return linear_pair(perturb=perturb)


@pytest.fixture
def pair() -> LinearVAE:
    return _linear_pair()


@pytest.fixture
def x(pair) -> torch.Tensor:
    torch.manual_seed(1)
    return pair.marginal().sample((N,)).detach()


def closed_form_elbo(pair: LinearVAE, x: torch.Tensor) -> float:
    """E_q[log p(x | z)] + E_q[log p(z)] + H[q] for q = Normal(m, diag(s^2)), summed over x."""
    with torch.no_grad():
        m, s = pair.encoder(x)
        w, b, sigma = pair.decoder.linear.weight, pair.decoder.linear.bias, pair.decoder.scale
        resid = ((x - m @ w.T - b) ** 2).sum(-1) + (s**2 @ (w**2).T).sum(-1)
        log_lik = -0.5 * D * math.log(2 * math.pi * sigma**2) - resid / (2 * sigma**2)
        log_prior = -math.log(2 * math.pi) - 0.5 * ((m**2).sum(-1) + (s**2).sum(-1))
        entropy = (0.5 * torch.log(2 * math.pi * math.e * s**2)).sum(-1)
        return (log_lik + log_prior + entropy).sum().item()


def direct_log_weights(pair: LinearVAE, x: torch.Tensor, draws: int) -> torch.Tensor:
    """log p(x, z) - log q(z | x) for ``draws`` samples, computed without Pyro: (draws, N)."""
    with torch.no_grad():
        loc, scale = pair.encoder(x)
        q = torch.distributions.Normal(loc, scale)
        z = q.sample((draws,))
        w, b, sigma = pair.decoder.linear.weight, pair.decoder.linear.bias, pair.decoder.scale
        log_joint = (torch.distributions.Normal(z @ w.T + b, sigma).log_prob(x).sum(-1)
                     + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))
        return log_joint - q.log_prob(z).sum(-1)


def reference_bound(pair: LinearVAE, x: torch.Tensor, k: int, groups: int = 20000) -> tuple[float, float]:
    """The K-sample bound summed over x, by a large sample of K-groups: (value, standard error)."""
    torch.manual_seed(2)
    log_w = direct_log_weights(pair, x, k * groups).reshape(groups, k, N)
    per_group = (torch.logsumexp(log_w, dim=1) - math.log(k)).sum(-1)
    return per_group.mean().item(), per_group.std().item() / math.sqrt(groups)


def loss_draws(estimator, pair, x, draws: int = 400) -> torch.Tensor:
    with pyro.get_param_store().scope():
        return torch.tensor([-estimator.loss(pair.model, pair.guide, x) for _ in range(draws)])


def grad_draws(estimator, pair, x, draws: int) -> torch.Tensor:
    """Each row: one gradient draw of every parameter of the pair, flattened (negative loss)."""
    rows = []
    with pyro.get_param_store().scope():
        for _ in range(draws):
            for p in pair.parameters():
                p.grad = None
            estimator.loss_and_grads(pair.model, pair.guide, x)
            rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                   for p in pair.parameters()]))
    return torch.stack(rows)


def guide_slice(pair: LinearVAE) -> slice:
    names = [n for n, _ in pair.named_parameters()]
    sizes = [p.numel() for p in pair.parameters()]
    start = sum(s for n, s in zip(names, sizes) if not n.startswith("encoder"))
    assert all(n.startswith("encoder") for n in names[len(names) - 2:])  # encoder registered last
    return slice(start, sum(sizes))


@pytest.mark.parametrize("name", ["trace", "meanfield", "stl"])
def test_elbo_estimators_average_to_the_closed_form_elbo(name, pair, x):
    values = loss_draws(make_estimator(name), pair, x)
    se = values.std().item() / math.sqrt(len(values))
    assert abs(values.mean().item() - closed_form_elbo(pair, x)) < 4 * se, (values.mean(), closed_form_elbo(pair, x), se)


@pytest.mark.parametrize("name, k", [("iwae-5", 5), ("dreg-5", 5), ("iwae-20", 20), ("dreg-20", 20)])
def test_importance_weighted_estimators_average_to_their_k_sample_bound(name, k, pair, x):
    values = loss_draws(make_estimator(name), pair, x)
    ref, ref_se = reference_bound(pair, x, k)
    se = math.hypot(values.std().item() / math.sqrt(len(values)), ref_se)
    assert abs(values.mean().item() - ref) < 4 * se, (values.mean(), ref, se)


def test_bounds_are_ordered_and_rise_with_k_towards_log_p(pair, x):
    log_p = pair.log_marginal(x).sum().item()
    elbo = closed_form_elbo(pair, x)
    bounds = {k: reference_bound(pair, x, k, groups=20000 if k < 500 else 400) for k in (1, 5, 50, 500)}
    assert abs(bounds[1][0] - elbo) < 4 * bounds[1][1]  # the 1-sample bound is the ELBO
    values = [elbo] + [bounds[k][0] for k in (5, 50, 500)]
    gaps = [log_p - v for v in values]
    assert all(a > b + 0.5 * (a - b) > b for a, b in zip(gaps, gaps[1:]))  # strictly rising bounds
    assert gaps[-1] >= -4 * bounds[500][1]  # never above log p(x), within MC error
    assert gaps[-1] < 0.05 * gaps[0]  # K = 500 closes over 95% of the ELBO's gap (measured: 99%)


def test_meanfield_kl_is_the_closed_form_gaussian_kl(pair, x):
    """TraceMeanField's loss is -(log p(x | z) - KL) at the guide's draw: recover its KL."""
    estimator = TraceMeanField_ELBO()
    with pyro.get_param_store().scope():
        pyro.set_rng_seed(5)
        z = poutine.trace(pair.guide).get_trace(x).nodes["z"]["value"]
        pyro.set_rng_seed(5)
        loss = estimator.loss(pair.model, pair.guide, x)
    w, b, sigma = pair.decoder.linear.weight, pair.decoder.linear.bias, pair.decoder.scale
    log_lik = torch.distributions.Normal(z @ w.T + b, sigma).log_prob(x).sum().item()
    m, s = (t.detach() for t in pair.encoder(x))
    seed_formula = (-0.5 * (1 + torch.log(s**2) - m**2 - s**2)).sum().item()
    assert loss + log_lik == pytest.approx(seed_formula, abs=1e-9)


@pytest.mark.parametrize("ours, standard", [("stl", "trace"), ("dreg-5", "iwae-5")])
def test_path_gradients_have_the_standard_expectation(ours, standard, pair, x):
    a = grad_draws(make_estimator(ours), pair, x, 600)
    b = grad_draws(make_estimator(standard), pair, x, 600)
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    z = (a.mean(0) - b.mean(0)).abs() / se
    assert z.max() < 5, z
    # and the guide's gradients are less noisy, which is the point of both estimators
    g = guide_slice(pair)
    assert a[:, g].var(0).sum() < b[:, g].var(0).sum()


class _Scalars(nn.Module):
    def __init__(self, **values: float) -> None:
        super().__init__()
        for name, v in values.items():
            setattr(self, name, nn.Parameter(torch.tensor(v, dtype=torch.float64)))


class SharedLocationPair(nn.Module):
    """z ~ N(mu, 1), x | z ~ N(z, 1); guide z ~ N(mu + shift + x / 2, s): ``mu`` belongs to
    the model and the guide both (the exact posterior is N((mu + x) / 2, 1/2))."""

    def __init__(self) -> None:
        super().__init__()
        self.prior = _Scalars(mu=0.3)
        self.encoder = _Scalars(shift=0.2, log_scale=-0.3)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("prior", self.prior)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior.mu.expand(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("prior", self.prior)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc = self.prior.mu + self.encoder.shift + x / 2
            pyro.sample("z", dist.Normal(loc, self.encoder.log_scale.exp()))


def test_dreg_gradient_of_a_parameter_shared_by_model_and_guide_is_unbiased():
    """DReG rewrites the score term of guide-only parameters; a shared one keeps IWAE's."""
    pair, x = SharedLocationPair(), torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    pyro.set_rng_seed(3)
    a = grad_draws(make_estimator("dreg-5"), pair, x, 600)
    b = grad_draws(make_estimator("iwae-5"), pair, x, 600)
    z = (a.mean(0) - b.mean(0)).abs() / (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    assert z.max() < 5, z  # mu, shift, log_scale; mu was tens of standard errors off when it got the DReG form


@pytest.mark.parametrize("ours, standard", [("stl", "trace"), ("dreg-5", "iwae-5")])
def test_path_guide_gradient_is_zero_at_the_exact_posterior(ours, standard, x):
    """There log p(x, z) - log q(z | x) = log p(x) for every z: no path derivative is left."""
    pair = _linear_pair(perturb=False)
    g = guide_slice(pair)
    path = grad_draws(make_estimator(ours), pair, x, 20)[:, g]
    score = grad_draws(make_estimator(standard), pair, x, 20)[:, g]
    assert path.abs().max() < 1e-10
    assert score.std(0).max() > 1e-2  # the standard estimator is noisy at the same point


def _same_draws(first, second, pair, x) -> tuple[tuple[float, torch.Tensor], tuple[float, torch.Tensor]]:
    results = []
    with pyro.get_param_store().scope():
        for estimator in (first, second):
            estimator.loss(pair.model, pair.guide, x)  # a vectorized estimator guesses its plate nesting first
        for estimator in (first, second):
            for p in pair.parameters():
                p.grad = None
            pyro.set_rng_seed(11)
            loss = estimator.loss_and_grads(pair.model, pair.guide, x)
            results.append((loss, torch.cat([p.grad.flatten() for p in pair.parameters()])))
    return results[0], results[1]


def test_iwae_with_one_sample_is_trace(pair, x):
    (loss_a, grad_a), (loss_b, grad_b) = _same_draws(make_estimator("iwae-1"), make_estimator("trace"), pair, x)
    assert loss_a == pytest.approx(loss_b, abs=1e-10)
    assert torch.allclose(grad_a, grad_b, atol=1e-10)


def test_dreg_with_one_sample_is_stl(pair, x):
    (loss_a, grad_a), (loss_b, grad_b) = _same_draws(make_estimator("dreg-1"), make_estimator("stl"), pair, x)
    assert loss_a == pytest.approx(loss_b, abs=1e-10)
    assert torch.allclose(grad_a, grad_b, atol=1e-10)


class DiscreteGuidePair(nn.Module):
    """A pair whose guide samples a Bernoulli: no path derivative exists."""

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c.unsqueeze(-1) * torch.ones(2), 1.0).to_event(1), obs=x)

    def guide(self, x, y=None):
        p = pyro.param("p", torch.tensor(0.3), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(p))


@pytest.mark.parametrize("name", ["stl", "dreg-3", "iwae-3", "renyi-0.5-3"])
def test_path_estimators_refuse_a_non_reparameterized_guide(name):
    pair = DiscreteGuidePair()
    with pytest.raises(NotReparameterizedError, match=r"'c' \(Bernoulli\).*'graph'"):
        make_estimator(name).loss_and_grads(pair.model, pair.guide, torch.zeros(4, 2))


def test_pyros_iwae_gives_a_discrete_guide_site_no_gradient():
    """Why iwae-K refuses such guides: Pyro's RenyiELBO at alpha 0 leaves the parameter of the
    guide's Bernoulli with a zero gradient on every draw, where the score-function ELBO moves it."""
    pair, x = DiscreteGuidePair(), torch.full((4, 2), 1.0)

    def grad_of_p(elbo) -> torch.Tensor:
        pyro.clear_param_store()
        elbo.loss_and_grads(pair.model, pair.guide, x)
        p = pyro.param("p").unconstrained()
        return p.grad.clone()

    assert all(grad_of_p(RenyiELBO(alpha=0.0, num_particles=3, vectorize_particles=True)) == 0 for _ in range(20))
    assert any(grad_of_p(TraceGraph_ELBO()) != 0 for _ in range(20))


def test_dreg_fills_grad_as_backward_does_so_gradient_hooks_run(pair, x):
    """A pair may count its steps with a gradient hook, as the GMVAE does."""
    decoder_param = next(pair.decoder.parameters())
    fired = []
    decoder_param.register_post_accumulate_grad_hook(lambda p: fired.append(p.grad.clone()))
    make_estimator("dreg-3").loss_and_grads(pair.model, pair.guide, x)
    assert len(fired) == 1 and torch.equal(fired[0], decoder_param.grad)


def test_registry_parses_forms_and_picks_the_reporting_elbo():
    assert make_estimator("iwae-7").num_particles == 7
    renyi = make_estimator("renyi-0.5-3")
    assert isinstance(renyi, RenyiELBO) and (renyi.alpha, renyi.num_particles) == (0.5, 3)
    assert isinstance(make_estimator("dreg-4"), DReG_ELBO) and make_estimator("dreg-4").num_particles == 4
    assert isinstance(make_evaluator("enum"), TraceEnum_ELBO) and isinstance(make_evaluator("jit-enum"), TraceEnum_ELBO)
    assert type(make_evaluator("iwae-5")) is Trace_ELBO


@pytest.mark.parametrize("name", ["iwae-0", "renyi-1-5", "renyi-1.0-5", "dreg-", "trace2", "IWAE-5", "dreg-2.5"])
def test_malformed_names_list_the_valid_forms(name):
    with pytest.raises(UsageError, match=r"valid forms: trace, .*iwae-K, dreg-K, renyi-A-K"):
        make_estimator(name)


@pytest.mark.parametrize("name", ["meanfield", "jit-meanfield"])
def test_meanfield_refuses_a_discrete_guide_site_by_name_even_with_validation_off(name):
    """Pyro's own check runs only under validation, which the trainer turns off after an
    epoch's first step, and does not name the site."""
    import broken_pairs

    pair = broken_pairs.Discrete()
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    with pyro.validation_enabled(False), pyro.get_param_store().scope(), \
            pytest.raises(NotReparameterizedError, match=r"meanfield.*guide site\(s\) 'c' \(Categorical\)"):
        make_estimator(name).loss_and_grads(pair.model, pair.guide, x)
