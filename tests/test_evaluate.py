"""Importance-weighted log-likelihood and PSIS k-hat against closed forms on the linear
Gaussian pair (float64, D = 5, d = 2, decoder columns orthogonal so that the optimal guide
is the exact posterior), chunking, discrete sites, and ``pyrovae eval``.

Monte Carlo tolerances: an importance-weighted estimate is compared with the exact
``log p(x)`` within 4 of its standard errors (delta method: ``sd(w) / (sqrt(K) mean(w))``
per example).
"""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributions.normal
from PIL import Image
from pyro.infer import Trace_ELBO
from torch import nn

import example_pairs
from pyrovae.cli import main
from pyrovae.data import Split
from pyrovae.errors import PyrovaeError
from pyrovae.evaluate import (default_chunk_size, importance_evaluation, importance_log_likelihood, khat_shares,
                              log_weights, mean_elbo)
from pyrovae.models import VAE, LinearVAE

D, N = 5, 12
TINY = ["--train-size", "300", "--test-size", "40", "--batch-size", "50", "--quiet"]


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def linear_pair() -> LinearVAE:
    """The exact-posterior guide: orthogonal decoder columns, then ``set_optimal_guide``."""
    return example_pairs.linear_pair(column_scales=(2.0, 0.5), raw_noise=0.3, x_dim=D, seed=1)


def scale_guide(pair: LinearVAE, factor: float) -> None:
    """Multiply the guide's standard deviations by ``factor``."""
    with torch.no_grad():
        scale = torch.nn.functional.softplus(pair.encoder.raw_scale)
        pair.encoder.raw_scale.copy_(_softplus_inverse(scale * factor))


def exact_elbo(pair: LinearVAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) - KL(q(z | x) || p(z | x)) per example, in closed form."""
    with torch.no_grad():
        loc, scale = pair.encoder(x)
        q = torch.distributions.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale))
        return pair.log_marginal(x) - torch.distributions.kl_divergence(q, pair.posterior(x))


@pytest.fixture
def pair() -> LinearVAE:
    return linear_pair()


@pytest.fixture
def x(pair) -> torch.Tensor:
    torch.manual_seed(2)
    return pair.marginal().sample((N,)).detach()


def test_log_weights_are_log_p_x_for_the_exact_posterior_guide(pair, x):
    lw = log_weights(pair, x, num_samples=4)
    assert lw.shape == (4, N)
    assert torch.allclose(lw, pair.log_marginal(x).detach().expand(4, N), atol=1e-10)
    assert not list(pyro.get_param_store().keys()), "log_weights left parameters in Pyro's store"


def test_estimate_is_within_standard_errors_of_log_p_x_and_above_the_elbo(pair, x):
    scale_guide(pair, 1.5)
    with torch.no_grad():
        pair.encoder.linear.bias.add_(0.3)  # a decent but imperfect guide
    k = 2000
    pyro.set_rng_seed(3)
    estimate = importance_log_likelihood(pair, Split(x, torch.zeros(N)), k, chunk_size=k, batch_size=N)
    pyro.set_rng_seed(3)
    lw = log_weights(pair, x, num_samples=k)  # the same draws: one chunk, one batch
    assert torch.allclose(estimate.per_example, torch.logsumexp(lw, 0) - math.log(k), atol=1e-5)

    exact, elbo = pair.log_marginal(x).detach(), exact_elbo(pair, x)
    w = torch.exp(lw - lw.max(0).values)
    stderr = ((w.std(0) / (math.sqrt(k) * w.mean(0))) ** 2).sum().sqrt() / N  # of the mean over examples
    assert abs(estimate.mean - exact.mean().item()) < 4 * stderr.item(), (estimate.mean, exact.mean(), stderr)
    assert (estimate.per_example > elbo + 0.5).all(), (estimate.per_example, elbo)  # the KL to p(z | x) is 0.79 nats
    assert estimate.k == k and estimate.per_example.shape == (N,)
    assert estimate.stderr == pytest.approx(estimate.per_example.std().item() / math.sqrt(N), rel=1e-5)


def test_the_elbo_and_gap_from_the_same_draws_match_the_closed_form(pair, x):
    scale_guide(pair, 0.7)
    result = importance_evaluation(pair, Split(x, torch.zeros(N)), 1000, chunk_size=300, batch_size=5)
    elbo = exact_elbo(pair, x)
    # log-weights have sd below 1 nat here, so the mean of 1000 is within 0.1 of the ELBO
    assert torch.allclose(result.elbo, elbo, atol=0.1), (result.elbo, elbo)
    assert torch.allclose(result.gap, pair.log_marginal(x).detach() - elbo, atol=0.1)


def test_khat_is_small_for_the_exact_posterior_and_large_for_a_guide_ten_times_too_narrow(pair, x):
    split = Split(x, torch.zeros(N))
    exact = importance_evaluation(pair, split, 1000, chunk_size=500, batch_size=N)
    assert (exact.khat < 0.5).all(), exact.khat
    scale_guide(pair, 1.3)  # wider than the posterior: bounded weights
    wide = importance_evaluation(pair, split, 1000, chunk_size=500, batch_size=N)
    assert (wide.khat < 0.5).float().mean() >= 0.9, wide.khat
    scale_guide(pair, 1 / 13)  # ten times narrower than the posterior
    narrow = importance_evaluation(pair, split, 1000, chunk_size=500, batch_size=N)
    assert (narrow.khat > 0.7).all(), narrow.khat
    assert khat_shares(narrow.khat) == {"below_0.5": 0.0, "0.5_to_0.7": 0.0, "above_0.7": 1.0}


class ShiftedByLabel(nn.Module):
    """A conditional pair: p(x | y) is the linear pair's p(x - y); it needs its labels."""

    uses_labels = True

    def __init__(self, base: LinearVAE) -> None:
        super().__init__()
        self.base = base

    def model(self, x, y=None):
        self.base.model(x - y[:, None].to(x))

    def guide(self, x, y=None):
        self.base.guide(x - y[:, None].to(x))


def test_labels_reach_a_conditional_pair_example_by_example(pair, x):
    y = torch.arange(N, dtype=torch.float64)
    split = Split(x + y[:, None], y)
    estimate = importance_log_likelihood(ShiftedByLabel(pair), split, 10, batch_size=5, uses_labels=True)
    assert torch.allclose(estimate.per_example, pair.log_marginal(x).detach(), atol=1e-10)


class StreamedNormalNoise:
    """Stands in for torch's standard normal draws: hands out a fixed sequence in order, so
    two runs that draw the same number of values see the same draws however they chunk."""

    def __init__(self, n: int) -> None:
        self.values, self.used = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5)), 0

    def __call__(self, shape, dtype=None, device=None):
        n = math.prod(shape)
        out = self.values[self.used : self.used + n]
        assert out.numel() == n, "the stream ran out"
        self.used += n
        return out.reshape(shape).to(dtype=dtype, device=device)


def test_chunked_and_unchunked_estimates_agree_on_the_same_draws(pair, x, monkeypatch):
    scale_guide(pair, 0.5)
    split, k = Split(x, torch.zeros(N)), 300
    runs = []
    for chunk_size in (k, 64):
        stream = StreamedNormalNoise(10 * k * N * 2)
        monkeypatch.setattr(torch.distributions.normal, "_standard_normal", stream)
        runs.append((importance_evaluation(pair, split, k, chunk_size=chunk_size, batch_size=5), stream.used))
    (whole, used_whole), (chunked, used_chunked) = runs
    assert used_whole == used_chunked
    assert torch.allclose(whole.log_likelihood.per_example, chunked.log_likelihood.per_example, atol=1e-6)
    assert torch.allclose(whole.khat, chunked.khat, atol=1e-6)
    assert (whole.khat > 0.5).all()  # heavy-tailed weights (a guide twice too narrow) were compared


def test_memory_is_bounded_by_chunk_size_times_batch_whatever_k(pair, x):
    rows = []
    hook = pair.decoder.linear.register_forward_hook(lambda m, inputs, out: rows.append(tuple(inputs[0].shape)))
    try:
        estimate = importance_log_likelihood(pair, Split(x, torch.zeros(N)), 5000, chunk_size=64, batch_size=5)
    finally:
        hook.remove()
    assert estimate.per_example.shape == (N,) and estimate.k == 5000
    particle_counts = {shape[0] for shape in rows if len(shape) == 3}
    assert particle_counts == {64, 5000 - 78 * 64}  # 78 full chunks and the rest, per batch
    assert max(math.prod(shape[:-1]) for shape in rows) <= 64 * 5  # never 5000 x batch at once


def test_default_chunk_size_is_the_devices(pair, x):
    rows = []
    hook = pair.decoder.linear.register_forward_hook(lambda m, inputs, out: rows.append(tuple(inputs[0].shape)))
    try:
        estimate = importance_log_likelihood(pair, Split(x, torch.zeros(N)), 120, batch_size=5)
    finally:
        hook.remove()
    assert default_chunk_size(torch.device("cpu")) == 50 and default_chunk_size(torch.device("cuda")) == 500
    assert {shape[0] for shape in rows if len(shape) == 3} == {50, 20}  # 50, 50 and the last 20 draws
    assert estimate.per_example.shape == (N,) and estimate.k == 120


class MixturePrior(nn.Module):
    """A GMVAE-like pair: c ~ Categorical(pi), z | c ~ Normal(mu_c, I), x | z ~ Normal(W z, 1).
    ``discrete`` says how c is handled: summed out by enumeration in the model ("enumerate"),
    sampled by the guide ("guide"), or absent (the prior of z written as a mixture density)."""

    def __init__(self, discrete: str) -> None:
        super().__init__()
        self.discrete = discrete
        self.mu = torch.tensor([[-2.0, 0.0], [1.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
        self.pi = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
        self.w = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        self.classifier = nn.Linear(4, 3).double()

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            if self.discrete == "mixture":
                components = dist.Normal(self.mu, 1.0).to_event(1)
                z = pyro.sample("z", dist.MixtureSameFamily(dist.Categorical(self.pi), components))
            else:
                c = pyro.sample("c", dist.Categorical(self.pi), infer={"enumerate": "parallel"})
                z = pyro.sample("z", dist.Normal(self.mu[c], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T, 1.0).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("classifier", self.classifier)
        with pyro.plate("data", x.shape[0]):
            if self.discrete == "guide":
                pyro.sample("c", dist.Categorical(logits=self.classifier(x)))
            pyro.sample("z", dist.Normal(x.new_zeros(2), 2.0).to_event(1))  # wide, covers the prior

    def log_marginal(self, x):
        cov = self.w @ self.w.T + torch.eye(4, dtype=torch.float64)
        parts = torch.distributions.MultivariateNormal(self.mu @ self.w.T, cov).log_prob(x[:, None])
        return torch.logsumexp(parts + self.pi.log(), dim=1)


def test_a_discrete_site_summed_out_or_sampled_gives_the_mixture_marginal():
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    enumerated, mixture, sampled = MixturePrior("enumerate"), MixturePrior("mixture"), MixturePrior("guide")
    pyro.set_rng_seed(0)
    lw_enumerated = log_weights(enumerated, x, num_samples=8)
    pyro.set_rng_seed(0)
    lw_mixture = log_weights(mixture, x, num_samples=8)
    assert torch.allclose(lw_enumerated, lw_mixture, atol=1e-10)  # same draws, c summed out exactly

    exact = mixture.log_marginal(x)
    for pair in (enumerated, sampled):
        lw = log_weights(pair, x, num_samples=20000)
        w = torch.exp(lw - lw.max(0).values)
        stderr = w.std(0) / (math.sqrt(20000) * w.mean(0))
        estimate = torch.logsumexp(lw, 0) - math.log(20000)
        assert ((estimate - exact).abs() < 4 * stderr + 1e-3).all(), (pair.discrete, estimate, exact, stderr)


class GlobalLatent(nn.Module):
    def model(self, x, y=None):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(shift.unsqueeze(-1).expand(*shift.shape, 3), 1.0).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.sample("shift", dist.Normal(0.0, 1.0))


class NoDataPlate(nn.Module):
    def model(self, x, y=None):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand(list(x.shape)).to_event(2), obs=x)

    def guide(self, x, y=None):
        pass


@pytest.mark.parametrize("pair, message", [(GlobalLatent(), "'shift' is outside pyro.plate('data')"),
                                           (NoDataPlate(), "declares no pyro.plate('data'")])
def test_pairs_without_per_example_weights_are_refused_with_a_reason(pair, message):
    with pytest.raises(PyrovaeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        log_weights(pair, torch.zeros(4, 3), num_samples=2)


def test_eval_writes_log_likelihood_gap_and_khat(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["--arg", "z_dim=2", "--arg", "hidden=[16]"]
    assert main(["train", "vae", "--epochs", "1", "--out", str(run), *TINY, *small]) == 0
    assert main(["eval", str(run), "--iwae-k", "50", "--test-size", "20", "--chunk-size", "20"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["num_examples"] == 20 and result["k"] == 50
    assert result["log_likelihood"] >= result["elbo_same_draws"]
    assert result["gap"] == pytest.approx(result["log_likelihood"] - result["elbo_same_draws"], abs=1e-3)
    assert abs(result["elbo_same_draws"] - result["test_elbo"]) < 10  # one bound, estimated twice
    assert sum(result["khat_shares"].values()) == pytest.approx(1.0)
    assert result["seconds"] > 0 and result["log_likelihood_stderr"] > 0
    with Image.open(result["worst_khat_figure"]) as image:
        assert image.format == "PNG" and image.size[0] > 0
    capsys.readouterr()
    assert main(["eval", str(run), "--iwae-k", "-1"]) == 2
    assert "--iwae-k must be 0 or more" in capsys.readouterr().err
    # one image has no standard error: eval.json says null, which every JSON reader takes (not NaN)
    assert main(["eval", str(run), "--iwae-k", "30", "--test-size", "1", "--chunk-size", "30"]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"eval.json holds {constant}")

    one = json.loads((run / "eval.json").read_text(), parse_constant=refuse)
    assert one["num_examples"] == 1 and one["log_likelihood_stderr"] is None
    assert main(["eval", str(run), "--test-size", "5", "--posterior", "6"]) == 2
    assert "more inputs than the 5 test images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # by the parser, before any evaluation
        main(["eval", str(run), "--posterior", "1", "--nuts-samples", "0"])
    assert refused.value.code == 2
    out, err = capsys.readouterr()
    assert "--nuts-samples: must be a positive integer" in err and "test ELBO" not in out


# the ELBO's two terms ---------------------------------------------------------------

def test_elbo_terms_add_up_to_trace_elbo_on_the_same_draws():
    from pyro.infer import Trace_ELBO

    from pyrovae.evaluate import elbo_terms
    from pyrovae.models import VAE

    pair = VAE(z_dim=3, hidden=[16])
    x = torch.bernoulli(torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    pyro.set_rng_seed(4)
    terms = elbo_terms(pair, Split(x, torch.zeros(30)), analytic_kl=False)
    pyro.set_rng_seed(4)
    with pyro.get_param_store().scope():
        elbo = -Trace_ELBO().loss(pair.model, pair.guide, x) / 30
    assert terms.elbo == pytest.approx(terms.reconstruction - terms.kl)
    assert terms.elbo == pytest.approx(elbo, abs=1e-4)
    assert not terms.analytic_kl


def test_analytic_kl_is_the_closed_form_for_a_normal_guide_and_a_standard_normal_prior():
    from pyrovae.evaluate import elbo_terms
    from pyrovae.models import VAE

    pair = VAE(z_dim=4, hidden=[16])
    with torch.no_grad():
        pair.encoder.head.bias.normal_()  # guide means and scales away from the prior's
    x = torch.rand(25, 1, 28, 28, generator=torch.Generator().manual_seed(1)).round()
    split = Split(x, torch.zeros(25))
    terms = elbo_terms(pair, split, batch_size=10)  # three batches
    with torch.no_grad():
        loc, scale = pair.encoder(x)
        closed = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1).mean().item()
    assert terms.analytic_kl
    assert terms.kl == pytest.approx(closed, rel=1e-5)
    # the Monte Carlo estimate of the same KL agrees within its noise (400 draws of 25 examples)
    pyro.set_rng_seed(0)
    sampled = elbo_terms(pair, split, num_samples=400, analytic_kl=False)
    assert abs(sampled.kl - closed) < 0.05 * closed + 0.05, (sampled.kl, closed)
    pyro.set_rng_seed(0)  # the same draws of z: the reconstruction term does not depend on how the KL is taken
    assert elbo_terms(pair, split, num_samples=400).reconstruction == pytest.approx(sampled.reconstruction, rel=1e-9)


def test_elbo_terms_on_the_linear_pair_match_its_closed_form_elbo(pair, x):
    from pyrovae.evaluate import elbo_terms

    scale_guide(pair, 0.7)
    pyro.set_rng_seed(0)
    terms = elbo_terms(pair, Split(x, torch.zeros(N)), num_samples=400)
    assert terms.elbo == pytest.approx(exact_elbo(pair, x).mean().item(), abs=0.06)  # sd about 0.015


def test_mean_elbo_is_the_closed_form_elbo_without_a_graph_checking_the_first_batch(pair, x):
    calls = []

    class Spy(Trace_ELBO):
        def loss(self, model, guide, *args, **kwargs):
            calls.append((torch.is_grad_enabled(), pyro.infer.util.is_validation_enabled()))
            return super().loss(model, guide, *args, **kwargs)

    pyro.set_rng_seed(3)
    with pyro.validation_enabled(True):
        got = mean_elbo(pair, Split(x, torch.zeros(N)), Spy(), batch_size=5)
        assert pyro.infer.util.is_validation_enabled()  # restored afterwards
    assert calls == [(False, True), (False, False), (False, False)]  # batches of 5, 5 and 2
    # the guide is the exact posterior, so every draw's ELBO is log p(x), the closed-form ELBO
    assert got == pytest.approx(exact_elbo(pair, x).mean().item(), abs=1e-4)


def test_mean_elbo_checks_the_data_of_its_first_batch():
    pair = VAE(z_dim=2, hidden=[8], x_shape=(4,))
    x = torch.bernoulli(torch.full((6, 4), 0.5))
    x[0, 0] = 0.5  # not a Bernoulli value
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="support"):
        mean_elbo(pair, Split(x, torch.zeros(6)), Trace_ELBO(), batch_size=3)


@pytest.mark.parametrize("size, batch_size", [(0, 3), (4, 0)])
def test_mean_elbo_refuses_no_examples_and_a_batch_size_below_one(size, batch_size):
    pair = VAE(z_dim=2, hidden=[8])
    with pytest.raises(PyrovaeError, match="positive batch size and examples"):
        mean_elbo(pair, Split(torch.zeros(size, 1, 28, 28), torch.zeros(size)), Trace_ELBO(), batch_size=batch_size)
