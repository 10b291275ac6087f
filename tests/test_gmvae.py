"""The GMVAE pair: shapes, a training step with each estimator, the enumerated ELBO equals
the expectation over the component summed by hand, bad arguments are refused, and the
pretraining stage switches to the mixture at the right step, from k-means on its codes,
identically after a resume."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

import pyrovae.models.gmvae as gmvae_module
import pyrovae
from pyrovae import clustering, train
from pyrovae.data import evaluation_split
from pyrovae.errors import UsageError
from pyrovae.evaluate import log_weights, mean_elbo
from pyrovae.models import GMVAE
from pyrovae.models.gmvae import MIN_LOG_PROB, MixturePrior
from pyrovae.pairs import build, bundled, spec_of
from pyrovae.runs import load_checkpoint, load_run
from pyrovae.train import Callback


def test_samples_clusters_and_codes_have_the_right_shapes(data):
    pair = GMVAE(k=4, z_dim=3, hidden=[16]).eval()
    x = data.test.x[:5]
    assert pair.sample(6).shape == (6, 1, 28, 28)
    by_component = pair.sample_by_component(3)
    assert by_component.shape == (4, 3, 1, 28, 28) and 0 <= by_component.min() and by_component.max() <= 1
    clusters = pair.cluster(x)
    assert clusters.shape == (5,) and clusters.dtype == torch.long and ((0 <= clusters) & (clusters < 4)).all()
    assert pair.encode(x).shape == (5, 3)
    assert pair.reconstruct(x).shape == (5, 1, 28, 28)
    assert log_weights(pair, x.bernoulli(), num_samples=2).shape == (2, 5)


@pytest.mark.parametrize("elbo", [None, "graph"])
def test_one_epoch_trains_with_y_summed_out_or_sampled(elbo, data):
    pair = GMVAE(k=3, z_dim=2, hidden=[16], pretrain_examples=400)  # two pretraining steps, then the mixture
    run = train(pair, data, epochs=1, batch_size=200, elbo=elbo, quiet=True)
    assert bool(pair.mixture_on) and int(pair.examples_seen) == 600
    assert run.config["elbo"] == (elbo or "enum")  # enumeration is the pair's default
    assert torch.isfinite(torch.tensor(run.metrics[0]["test_elbo"]))
    assert not list(pyro.get_param_store().keys())


@pytest.mark.parametrize("k", [1, 0, -3])
def test_fewer_than_two_components_is_a_usage_error(k):
    with pytest.raises(UsageError, match="k >= 2"):
        GMVAE(k=k)
    with pytest.raises(UsageError, match="k >= 2"):
        build("gmvae", {"k": k})


@pytest.mark.parametrize("args", [{"pretrain_examples": -1}, {"pretrain_examples": 1.5}, {"init_codes": 3},
                                  {"init_restarts": 0}, {"init_restarts": 2.0}])
def test_bad_pretraining_arguments_are_usage_errors(args):
    with pytest.raises(UsageError, match=next(iter(args))):
        GMVAE(k=4, **args)


def test_registry_names_the_pair():
    assert bundled()["gmvae"] is GMVAE
    assert spec_of(GMVAE(k=2, z_dim=2, hidden=[8])) == "gmvae"


def test_enumerated_loss_equals_the_hand_summed_expectation_over_y():
    """TraceEnum_ELBO sums y out of the guide q(y | x) q(z | x, y) with one draw z_k per
    component. With the same draws (same seed, no plate-guessing pass) the loss must equal
    -sum_x sum_k q(k|x) [log p(x|z_k) + log p(z_k|k) - log q(z_k|x,k) + log p(k) - log q(k|x)]."""
    K, B = 3, 5
    pyro.set_rng_seed(0)
    pair = GMVAE(k=K, z_dim=2, hidden=[6], x_shape=(4,), pretrain_examples=0).double()
    with torch.no_grad():  # the classifier head and shifts start at zero; make them count
        for param in pair.heads.parameters():
            param.normal_()
    x = torch.rand(B, 4, dtype=torch.float64).bernoulli()

    pyro.set_rng_seed(7)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(pair.model, pair.guide, x)

    pyro.set_rng_seed(7)  # replay the guide's draws of z, shape (K, B, z_dim): one per component
    enumerated_guide = poutine.enum(pair.guide, first_available_dim=-2)
    z = poutine.trace(enumerated_guide).get_trace(x).nodes["z"]["value"]
    assert z.shape == (K, B, 2)

    with torch.no_grad():
        h = pair.encoder.features(x)
        q_loc, q_scale = pair.encoder.code(h)
        log_q_y = torch.log_softmax(pair.prior.log_posterior(q_loc) + pair.heads.classifier(h), -1)  # (B, K)
        assert torch.allclose(log_q_y, torch.log_softmax(pair.logits(x), -1))
        log_p_y = -torch.log(torch.tensor(float(K), dtype=torch.float64))
        total = torch.zeros(B, dtype=torch.float64)
        for k in range(K):
            z_k = z[k]
            log_p_x = torch.distributions.Bernoulli(logits=pair.decoder(z_k)).log_prob(x).sum(-1)
            p_loc, p_scale = pair.prior(torch.full((B,), k))
            log_p_z = torch.distributions.Normal(p_loc, p_scale).log_prob(z_k).sum(-1)
            log_q_z = torch.distributions.Normal(q_loc + pair.heads.shift[k], q_scale).log_prob(z_k).sum(-1)
            total += log_q_y[:, k].exp() * (log_p_x + log_p_z - log_q_z + log_p_y - log_q_y[:, k])
    assert loss == pytest.approx(-total.sum().item(), rel=1e-12, abs=1e-10)


class Watch(Callback):
    def __init__(self, pair: GMVAE) -> None:
        self.pair, self.states = pair, []

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        self.states.append((int(self.pair.examples_seen), bool(self.pair.mixture_on)))


def test_pretraining_switches_to_the_mixture_at_the_first_step_past_pretrain_examples(data):
    pair = GMVAE(k=3, z_dim=2, hidden=[16], pretrain_examples=250, init_codes=120)
    start = pair.prior.loc.detach().clone()
    watch = Watch(pair)
    train(pair, data, epochs=1, batch_size=100, quiet=True, callbacks=[watch])
    # steps 1-3 are the plain VAE (300 >= 250 examples after step 3); step 4 starts the mixture
    assert watch.states == [(100, False), (200, False), (300, False), (400, True), (500, True), (600, True)]
    assert int(pair.codes_seen) == 300  # the codes of the three pretraining steps, the last 120 kept
    assert not torch.equal(pair.prior.loc.detach(), start)
    # evaluation counts no examples
    mean_elbo(pair.eval(), evaluation_split(data.test, True), TraceEnum_ELBO())
    pair.cluster(data.test.x)
    assert int(pair.examples_seen) == 600


def test_while_pretraining_the_pair_is_the_plain_vae_and_then_has_the_component_site(data):
    pair = GMVAE(k=3, z_dim=2, hidden=[16], pretrain_examples=10**9).eval()
    x = data.test.x[:4].bernoulli()
    sites = lambda: set(poutine.trace(pair.guide).get_trace(x).nodes) & {"y", "z"}  # noqa: E731
    assert sites() == {"z"} and pair.sample(3).shape == (3, 1, 28, 28)
    pair.init_mixture()  # no codes yet: the random means stay, the mixture starts
    assert bool(pair.mixture_on) and sites() == {"z", "y"}


def test_mixture_fit_puts_components_on_clusters_of_codes():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-6.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    loc = torch.cat([c + 0.5 * torch.randn(200, 2, generator=g) for c in centers])
    prior = MixturePrior(3, 2)
    prior.fit(loc, torch.full_like(loc, 0.5), restarts=4)
    order = prior.loc.detach()[:, 0].argsort()  # -6, then 0, then 6 on the first axis
    assert torch.allclose(prior.loc.detach()[order], centers[[0, 2, 1]], atol=0.2)
    scale = prior(torch.arange(3))[1].detach()
    assert torch.allclose(scale, torch.full_like(scale, 0.5 * 2**0.5), atol=0.1)  # codes' spread and posterior scale


def test_the_switch_keeps_the_least_inertia_of_init_restarts_kmeans_runs(monkeypatch):
    runs = []

    def kmeans(x, k, *, n_init, seed):
        runs.append(n_init)
        return clustering.kmeans(x, k, n_init=n_init, seed=seed)

    monkeypatch.setattr(gmvae_module, "kmeans", kmeans)
    pair = GMVAE(k=3, z_dim=2, hidden=[16], init_codes=30, init_restarts=7)
    pair.codes.copy_(torch.randn(30, 4))
    pair.codes_seen.fill_(30)
    pair.init_mixture()
    assert runs == [7] and bool(pair.mixture_on)


def test_component_probabilities_stay_above_the_denormal_range():
    prior = MixturePrior(4, 2)
    log_p = prior.log_posterior(torch.tensor([[1e3, -1e3], [0.0, 0.0]]))
    assert torch.isfinite(log_p).all() and log_p.min() >= MIN_LOG_PROB
    assert log_p.exp().min() > torch.finfo(torch.float32).tiny


def test_a_run_resumed_across_the_switch_ends_with_identical_state(tmp_path, data):
    class StopAt(Callback):
        def on_step(self, epoch: int, step: int, loss: float) -> None:
            if epoch == 2 and step == 2:
                raise KeyboardInterrupt

    # the pair's default estimator, enum: its guess of max_plate_nesting must not shift the resumed draws
    settings = dict(epochs=3, batch_size=200, quiet=True)
    make = lambda seed: (pyro.set_rng_seed(seed), GMVAE(k=3, z_dim=2, hidden=[16], pretrain_examples=1000))[1]  # noqa: E731
    whole = train(make(0), data, out=tmp_path / "whole", **settings)
    with pytest.raises(KeyboardInterrupt):
        train(make(0), data, out=tmp_path / "cut", callbacks=[StopAt()], **settings)
    assert not load_checkpoint(tmp_path / "cut")["pair"]["mixture_on"]  # stopped before the switch (step 6)
    resumed = train(make(5), data, out=tmp_path / "cut", resume=True, **settings)
    assert bool(resumed.pair.mixture_on)
    for name, value in whole.pair.state_dict().items():
        assert torch.equal(resumed.pair.state_dict()[name], value), name
    loaded = load_run(tmp_path / "cut")
    assert bool(loaded.pair.mixture_on) and torch.equal(loaded.pair.cluster(data.test.x), whole.pair.cluster(data.test.x))


def test_eval_reports_clustering_for_a_pair_that_clusters(tmp_path):
    import json

    from pyrovae.cli import main

    run = tmp_path / "gm"
    assert main(["train", "gmvae", "--k", "3", "--z-dim", "2", "--hidden", "[16]", "--epochs", "2", "--pretrain-examples",
                 "200", "--train-size", "200", "--test-size", "60", "--batch-size", "50", "--quiet", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model_args"]["pretrain_examples"] == 200
    assert main(["eval", str(run), "--iwae-k", "0"]) == 0
    result = json.loads((run / "eval.json").read_text())
    test = evaluation_split(pyrovae.load_dataset(train_size=1, test_size=60).test, True)
    clusters = load_run(run).pair.cluster(test.x)  # the guide's argmax q(y | x), from the saved weights
    assert result["clustering_accuracy"] == clustering.clustering_accuracy(clusters, test.y)
    assert result["nmi"] == pytest.approx(clustering.normalized_mutual_info(clusters, test.y), abs=1e-12)
    before = (run / "samples.png").read_bytes()  # drawn at the end of training
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert (run / "sample.png").stat().st_size > 0 and (run / "samples.png").read_bytes() == before


def test_a_jit_estimator_is_refused_while_pretraining_is_to_come(data):
    """A traced GMVAE replays its pretraining branch forever (its step count runs in Python
    too), so a JIT estimator would train the plain VAE under the GMVAE's name. From the
    mixture on, nothing is left to switch, and the traced mixture trains."""
    pyro.set_rng_seed(0)
    with pytest.raises(UsageError, match="never come"):
        train(GMVAE(k=3, z_dim=2, hidden=[16], pretrain_examples=200, init_codes=100), data, epochs=1,
              batch_size=100, elbo="jit-enum", quiet=True)
    pair = GMVAE(k=3, z_dim=2, hidden=[16], pretrain_examples=0)
    train(pair, data, epochs=1, batch_size=100, elbo="jit-enum", quiet=True)
    assert pair.heads.classifier.weight.abs().sum() > 0  # the guide's q(y | x) learned: y was summed out
