"""The deterministic autoencoder pair: its ELBO is the reconstruction log-likelihood, it
trains, the linear one finds the PCA subspace, and the CLI trains it."""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyrovae.cli import main
from pyrovae.data import Dataset, Split
from pyrovae.errors import UsageError
from pyrovae.evaluate import elbo_terms, log_weights
from pyrovae.models import AutoEncoder
from pyrovae.pairs import bundled
from pyrovae.plots import decode_means, encode_means


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed))


def _nll_by_hand(pair: AutoEncoder, x: torch.Tensor) -> torch.Tensor:
    logits = pair.decoder(pair.encoder(x.reshape(x.shape[0], -1)))
    return -torch.distributions.Bernoulli(logits=logits).log_prob(x).sum()


def test_the_elbo_is_the_reconstruction_negative_log_likelihood():
    pair = AutoEncoder(z_dim=3, hidden=[16])
    x = _images(10)
    with pyro.get_param_store().scope():
        loss = Trace_ELBO().loss(pair.model, pair.guide, x)
    assert loss == pytest.approx(_nll_by_hand(pair, x).item(), rel=1e-6)
    # no randomness: every importance weight is the same number, and the KL term is zero
    lw = log_weights(pair, x, num_samples=3)
    assert torch.allclose(lw, lw[:1].expand(3, -1)) and torch.allclose(lw[0].sum(), -_nll_by_hand(pair, x).detach())
    terms = elbo_terms(pair, Split(x, torch.zeros(10)))
    assert terms.kl == 0 and terms.reconstruction == pytest.approx(-loss / 10, rel=1e-6)


def test_the_flat_prior_makes_its_zeros_where_the_codes_are():
    # the importance weights add the prior's log density to the likelihood's, per draw and
    # example; on a GPU that sum needs the zeros on the GPU (meta stands in for cuda here)
    pair = AutoEncoder(z_dim=3, hidden=[16])
    with pyro.get_param_store().scope():
        x = _images(4)
        guide = pyro.poutine.trace(pair.guide).get_trace(x)
        trace = pyro.poutine.trace(pyro.poutine.replay(pair.model, trace=guide)).get_trace(x)
    codes = torch.zeros(5, 4, 3, device="meta")  # 5 draws of 4 examples' codes
    log_p = trace.nodes["z"]["fn"].log_prob(codes)
    assert log_p.device == codes.device and log_p.shape == (5, 4)
    assert torch.equal(trace.nodes["z"]["fn"].log_prob(torch.ones(5, 4, 3)), torch.zeros(5, 4))


def test_one_svi_step_lowers_the_loss_and_moves_both_networks():
    pair = AutoEncoder(z_dim=3, hidden=[16])
    x = _images(32)
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    with torch.no_grad():
        initial = _nll_by_hand(pair, x).item()
    with pyro.get_param_store().scope():
        svi = SVI(pair.model, pair.guide, Adam({"lr": 1e-2}), Trace_ELBO())
        first = svi.step(x)
        second = svi.evaluate_loss(x)
    assert first == pytest.approx(initial, rel=1e-6)  # the step's loss is taken before the update
    assert second < first
    for name in ("encoder.0.weight", "decoder.net.0.weight"):
        assert not torch.equal(pair.state_dict()[name], before[name]), f"{name} did not train"


def test_codes_and_decodings_through_the_methods_and_through_traces_agree():
    pair = AutoEncoder(z_dim=2, hidden=[16]).eval()
    x = _images(5)
    assert pair.encode(x).shape == (5, 2) and pair.reconstruct(x).shape == x.shape
    z = torch.randn(4, 2)
    assert torch.allclose(decode_means(pair, z, x), pair.decode(z))
    with pyro.get_param_store().scope():
        trace = pyro.poutine.trace(pair.guide).get_trace(x)
    assert torch.allclose(trace.nodes["z"]["value"], encode_means(pair, x))
    assert not callable(getattr(pair, "sample", None))  # a flat prior: nothing to draw codes from


def test_the_linear_autoencoder_spans_the_top_principal_directions():
    """hidden=[] and the gaussian-linear likelihood: squared-error linear autoencoder (Baldi and
    Hornik, 1989): its decoder's columns span the data's top principal subspace."""
    from pyrovae import train

    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(8, 2))
    x = torch.randn(3000, 2) @ (basis * torch.tensor([3.0, 2.0])).T + 0.3 * torch.randn(3000, 8)
    data = Dataset("synthetic", Split(x[:2500], torch.zeros(2500)), Split(x[2500:], torch.zeros(500)), ())
    pair = AutoEncoder(z_dim=2, hidden=[], likelihood="gaussian-linear", x_shape=(8,))
    train(pair, data, epochs=20, batch_size=100, lr=0.02, quiet=True)
    centred = x[:2500] - x[:2500].mean(0)
    pca = torch.linalg.eigh(centred.T @ centred)[1][:, -2:]
    learned, _ = torch.linalg.qr(pair.decoder.net[0].weight.detach())
    assert torch.linalg.svdvals(pca.T @ learned).min() > 0.99  # cosines of the principal angles


def test_registered_and_trained_from_the_command_line(tmp_path):
    assert bundled()["autoencoder"] is AutoEncoder
    run = tmp_path / "ae"
    argv = ["train", "autoencoder", "--epochs", "2", "--out", str(run), "--train-size", "300", "--test-size", "40",
            "--batch-size", "50", "--quiet", "--arg", "z_dim=2", "--arg", "hidden=[16]"]
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "autoencoder"
    assert config["model_args"] == {"z_dim": 2, "hidden": [16], "likelihood": "bernoulli", "x_shape": [1, 28, 28]}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and metrics[1]["train_elbo"] > metrics[0]["train_elbo"]
    assert (run / "reconstructions.png").exists() and not (run / "samples.png").exists()


def test_bad_arguments_say_what_is_allowed():
    with pytest.raises(UsageError, match="gaussian-linear"):
        AutoEncoder(likelihood="poisson")
    with pytest.raises(UsageError, match="z_dim >= 1"):
        AutoEncoder(z_dim=0)
