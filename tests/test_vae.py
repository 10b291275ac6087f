"""The VAE pair: it learns, its ELBO is a bound, and two pairs never share parameters."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyrovae import load_dataset, train
from pyrovae.data import Split, fixed_binarization
from pyrovae.evaluate import mean_elbo
from pyrovae.models import VAE
from pyrovae.pairs import bundled, spec_of


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_test_elbo_rises_within_two_hundred_steps():
    data = load_dataset(train_size=2000, test_size=500)
    test = Split(fixed_binarization(data.test.x), data.test.y)
    pair = VAE(z_dim=10, hidden=[128])
    with pyro.get_param_store().scope():
        before = mean_elbo(pair, test, Trace_ELBO())
    run = train(pair, data, epochs=5, batch_size=50, quiet=True)  # 40 steps an epoch
    elbos = [r["test_elbo"] for r in run.metrics]
    assert before < -500  # an untrained decoder puts about log 2 nats on each of 784 pixels
    assert elbos[-1] > before + 150, (before, elbos)  # measured: about -550 -> -290
    assert elbos[-1] > elbos[0]


def test_trace_and_meanfield_agree_on_the_elbo(data):
    """Both estimate the same bound; meanfield uses the analytic KL for the normal sites."""
    pair = VAE(z_dim=5, hidden=[32])
    x = fixed_binarization(data.test.x[:50])
    with pyro.get_param_store().scope():
        trace = Trace_ELBO(num_particles=400, vectorize_particles=True).loss(pair.model, pair.guide, x)
        meanfield = TraceMeanField_ELBO(num_particles=400, vectorize_particles=True).loss(pair.model, pair.guide, x)
    # per-example ELBO noise is a few nats per particle; 400 particles x 50 examples
    assert abs(trace - meanfield) / 50 < 0.5


def test_two_pairs_in_one_process_never_share_parameters(data):
    first = VAE(z_dim=4, hidden=[16])
    train(first, data, epochs=1, quiet=True)
    trained_first = _snapshot(first)
    second = VAE(z_dim=4, hidden=[16])
    initial_second = _snapshot(second)
    train(second, data, epochs=1, quiet=True)
    for name, value in first.state_dict().items():
        assert torch.equal(value, trained_first[name]), f"training the second pair moved the first's {name}"
        assert not torch.equal(second.state_dict()[name], initial_second[name]), f"the second pair's {name} never trained"
    assert not list(pyro.get_param_store().keys()), "the trainer left parameters in Pyro's global store"


def test_samples_and_reconstructions_are_images(data):
    pair = VAE(z_dim=3, hidden=[16]).eval()
    assert pair.sample(6).shape == (6, 1, 28, 28)
    recon = pair.reconstruct(data.test.x[:5])
    assert recon.shape == (5, 1, 28, 28) and recon.min() >= 0 and recon.max() <= 1
    assert pair.encode(data.test.x[:5]).shape == (5, 3)


def test_registry_names_the_bundled_pair():
    assert bundled()["vae"] is VAE
    assert spec_of(VAE()) == "vae"


@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian-learned", "continuous-bernoulli"])
def test_every_likelihood_trains(likelihood, data):
    pair = VAE(z_dim=4, hidden=[16], likelihood=likelihood)
    run = train(pair, data, epochs=2, batch_size=100, quiet=True)
    assert all(torch.isfinite(torch.tensor(r["test_elbo"])) for r in run.metrics)
    assert run.metrics[1]["train_elbo"] > run.metrics[0]["train_elbo"]


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "graph", "enum", "stl", "iwae-3", "dreg-3", "renyi-0.5-2", "jit-trace"])
def test_every_registered_estimator_trains_the_vae(elbo, data):
    run = train(VAE(z_dim=4, hidden=[16]), data, epochs=2, batch_size=100, elbo=elbo, quiet=True)
    assert run.metrics[1]["train_elbo"] > run.metrics[0]["train_elbo"], run.metrics


def test_score_function_pair_has_the_same_elbo_and_mean_gradient_but_noisier_guide_gradients():
    """reparameterized=False changes how the guide is differentiated, not what: the same
    bound, the same expected gradient, a larger variance (lower signal-to-noise)."""
    from pyrovae.compare import gradient_snr

    torch.manual_seed(0)
    reparam = VAE(z_dim=2, hidden=[8], x_shape=(6,))
    score = VAE(z_dim=2, hidden=[8], x_shape=(6,), reparameterized=False)
    score.load_state_dict(reparam.state_dict())
    assert score.hparams["reparameterized"] is False and "reparameterized" not in reparam.hparams
    x = torch.bernoulli(torch.full((16, 6), 0.3), generator=torch.Generator().manual_seed(1))
    with pyro.get_param_store().scope():
        pyro.set_rng_seed(2)
        elbo_reparam = Trace_ELBO().loss(reparam.model, reparam.guide, x)
        pyro.set_rng_seed(2)
        elbo_score = Trace_ELBO().loss(score.model, score.guide, x)
    assert elbo_reparam == pytest.approx(elbo_score)  # same draws, same bound

    def grads(pair, draws):
        out = []
        with pyro.get_param_store().scope():
            for _ in range(draws):
                pair.zero_grad()
                Trace_ELBO().loss_and_grads(pair.model, pair.guide, x)
                out.append(pair.encoder.head.bias.grad.clone())
        return torch.stack(out)

    g_r, g_s = grads(reparam, 400), grads(score, 400)
    se = (g_r.var(0) / 400 + g_s.var(0) / 400).sqrt()
    assert ((g_r.mean(0) - g_s.mean(0)).abs() < 4 * se).all(), (g_r.mean(0), g_s.mean(0), se)
    assert (g_s.var(0) > 2 * g_r.var(0)).all(), (g_s.var(0), g_r.var(0))
    with pyro.get_param_store().scope():  # one scope per pair: both register "encoder" and "decoder"
        snr_r = gradient_snr(reparam, Trace_ELBO(), x, draws=100)
    with pyro.get_param_store().scope():
        snr_s = gradient_snr(score, Trace_ELBO(), x, draws=100)
    assert snr_r.guide > snr_s.guide, (snr_r, snr_s)


@pytest.mark.parametrize("elbo", ["trace", "graph"])
def test_score_function_pair_trains(elbo, data):
    pair = VAE(z_dim=4, hidden=[16], reparameterized=False)
    guide_z = pyro.poutine.trace(pair.guide).get_trace(data.test.x[:3]).nodes["z"]["fn"]
    assert not guide_z.has_rsample
    run = train(pair, data, epochs=2, batch_size=100, elbo=elbo, quiet=True)
    assert run.metrics[1]["train_elbo"] > run.metrics[0]["train_elbo"], run.metrics
    assert run.config["model_args"]["reparameterized"] is False
