"""NUTS reference posteriors and the gap split against the linear Gaussian pair's exact
posterior and log p(x), and ``pyrovae eval --posterior``.

Tolerances: NUTS means within 0.25 posterior standard deviations and standard deviations
within 20% (600 draws of two chains, bulk ESS about 400: standard errors near 0.05 sd and
4%); gaps within 0.05 nats (5000 draws of each guide).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyro
import pytest
import torch
from PIL import Image
from test_evaluate import exact_elbo, linear_pair, scale_guide

from pyrovae.cli import main
from pyrovae.errors import PyrovaeError
from pyrovae.models import GMVAE, VAE
from pyrovae.posterior import check_comparable, compare_posterior, gap_split


@pytest.fixture
def pair():
    return linear_pair()


@pytest.fixture
def x(pair) -> torch.Tensor:
    torch.manual_seed(4)
    return pair.marginal().sample((1,)).detach()


def test_nuts_recovers_the_exact_posterior_beside_the_guide(pair, x):
    scale_guide(pair, 0.5)  # a guide too narrow by half, to see it beside the reference
    result = compare_posterior(pair, x, num_samples=300, warmup_steps=200, guide_samples=2000, k=0)
    posterior = pair.posterior(x)
    mean, sd = posterior.mean.detach()[0], posterior.variance.detach().sqrt()[0]
    assert set(result.inference_data.groups()) >= {"posterior", "sample_stats"}
    assert result.inference_data.posterior.sizes["chain"] == 2 and result.inference_data.posterior.sizes["draw"] == 300
    assert result.names == ["z[0]", "z[1]"] and result.nuts.shape == (600, 2) and result.guide.shape == (2000, 2)
    assert result.rhat_max < 1.05 and result.ess_bulk_min > 100, (result.rhat_max, result.ess_bulk_min)
    assert ((result.nuts.mean(0) - mean).abs() < 0.25 * sd).all(), (result.nuts.mean(0), mean, sd)
    assert ((result.nuts.std(0) / sd - 1).abs() < 0.2).all(), (result.nuts.std(0), sd)
    assert ((result.guide.std(0) / sd - 0.5).abs() < 0.05).all()  # the guide's half-width shows
    summary = result.summary()
    assert summary["coordinates"]["z[1]"]["nuts_sd"] == pytest.approx(result.nuts.std(0)[1].item())
    assert "approximation_gap" not in summary and result.gaps is None
    assert not list(pyro.get_param_store().keys()), "the posterior analysis left parameters in Pyro's store"


def test_one_chain_is_reported_as_unchecked_not_as_chains_that_disagree(pair, x):
    result = compare_posterior(pair, x, num_samples=100, warmup_steps=50, num_chains=1, guide_samples=100, k=0)
    assert result.inference_data.posterior.sizes["chain"] == 1 and math.isnan(result.rhat_max)
    assert any("one chain" in w for w in result.warnings())
    assert not any("disagree" in w for w in result.warnings())


def test_gap_split_finds_no_gap_for_the_exact_guide_and_the_whole_kl_as_amortization_gap(pair, x):
    exact = pair.log_marginal(x).item()
    split = gap_split(pair, x, k=5000, steps=300, lr=0.05)
    assert split.log_likelihood == pytest.approx(exact, abs=0.05)
    assert abs(split.approximation_gap) < 0.05 and abs(split.amortization_gap) < 0.05, split

    with torch.no_grad():
        pair.encoder.linear.bias.add_(0.5)  # the encoder misses; the family still holds p(z | x)
    scale_guide(pair, 0.6)
    kl = exact - exact_elbo(pair, x).item()
    split = gap_split(pair, x, k=5000, steps=300, lr=0.05)
    assert kl > 0.5
    assert split.elbo_amortized == pytest.approx(exact - kl, abs=0.05)
    assert abs(split.approximation_gap) < 0.05, split
    assert split.amortization_gap == pytest.approx(kl, abs=0.05), (split, kl)
    assert split.khat < 0.5  # log p(x) came from weights of a near-exact guide


def test_eval_posterior_writes_the_comparison_and_the_gaps(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["--train-size", "300", "--test-size", "20", "--batch-size", "50", "--quiet"]
    small = ["--arg", "z_dim=2", "--arg", "hidden=[16]"]
    assert main(["train", "vae", "--epochs", "1", "--out", str(run), *tiny, *small]) == 0
    argv = ["eval", str(run), "--iwae-k", "20", "--posterior", "1", "--nuts-samples", "40", "--nuts-warmup", "40",
            "--gap-steps", "20"]
    assert main(argv) == 0
    assert "posterior of test input 0: r-hat" in capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    (posterior,) = result["posterior"]
    assert posterior["index"] == 0 and posterior["nuts_draws"] == 80
    assert set(posterior["coordinates"]) == {"z[0]", "z[1]"} and posterior["gap_k"] == 5000
    assert posterior["approximation_gap"] + posterior["amortization_gap"] == pytest.approx(
        posterior["log_likelihood"] - posterior["elbo_amortized"])
    with Image.open(Path(posterior["figure"])) as image:
        assert image.format == "PNG" and image.size[0] > 0
    assert main(["eval", str(run), "--iwae-k", "0"]) == 0  # a second eval leaves no figure the first one drew
    assert not list(run.glob("posterior_*.png")) and "posterior" not in json.loads((run / "eval.json").read_text())


def test_gap_split_finds_the_mean_field_approximation_gap_of_a_correlated_posterior(pair, x):
    """With correlated decoder columns p(z | x) has precision L with off-diagonal terms; the
    best diagonal normal has precisions L_ii, so the approximation gap is
    KL = (sum_i log L_ii - log det L) / 2 in closed form, and the guide set to that best
    normal leaves no amortization gap."""
    with torch.no_grad():
        w = pair.decoder.linear.weight
        u0, u1 = w[:, 0] / w[:, 0].norm(), w[:, 1] / w[:, 1].norm()
        w[:, 1] = 2.0 * (0.8 * u0 + 0.6 * u1)  # at cosine 0.8 to the first column
    pair.set_optimal_guide()
    m, var = pair._precision_parts()
    precision = m / var
    gap = 0.5 * (torch.diagonal(precision).log().sum() - torch.logdet(precision)).item()
    assert gap > 0.25, gap  # a gap worth finding (0.31 nats)
    assert exact_elbo(pair, x).item() == pytest.approx(pair.log_marginal(x).item() - gap, abs=1e-9)
    split = gap_split(pair, x, k=5000, steps=300, lr=0.05)
    assert split.log_likelihood == pytest.approx(pair.log_marginal(x).item(), abs=0.05)
    assert split.approximation_gap == pytest.approx(gap, abs=0.05), split
    assert abs(split.amortization_gap) < 0.05, split


def test_a_pair_whose_latent_depends_on_a_summed_out_site_is_refused_before_evaluation(tmp_path, capsys):
    """NUTS enumerates the GMVAE's component ``y``, and its ``z`` then gets one value per
    component: another variable than the guide's ``z``. eval refuses before the long parts."""
    pyro.set_rng_seed(0)
    gmvae = GMVAE(k=3, z_dim=2, hidden=[16], pretrain_examples=0)
    x = torch.rand(1, 1, 28, 28).round()
    with pytest.raises(PyrovaeError, match=r"'z' then has shape \(3, 1, 2\).*the guide's has shape \(1, 2\)"):
        check_comparable(gmvae, x)
    check_comparable(VAE(z_dim=2, hidden=[16]), x)  # no discrete site: nothing to refuse

    run = tmp_path / "gm"
    assert main(["train", "gmvae", "--k", "3", "--z-dim", "2", "--hidden", "[16]", "--pretrain-examples", "0",
                 "--epochs", "1", "--train-size", "100", "--test-size", "20", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--posterior", "1"]) == 1
    out, err = capsys.readouterr()
    assert "NUTS reference posteriors do not apply to GMVAE" in err and "test ELBO" not in out
    assert not (run / "eval.json").exists()
