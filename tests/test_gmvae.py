"""The GMVAE pair: shapes, a training step with each estimator, the enumerated ELBO equals
the expectation over the component summed by hand, and bad K is refused."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyrovae import train
from pyrovae.errors import UsageError
from pyrovae.evaluate import log_weights
from pyrovae.models import GMVAE
from pyrovae.pairs import build, bundled, spec_of


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
    pair = GMVAE(k=3, z_dim=2, hidden=[16])
    run = train(pair, data, epochs=1, batch_size=200, elbo=elbo, quiet=True)
    assert run.config["elbo"] == (elbo or "enum")  # enumeration is the pair's default
    assert torch.isfinite(torch.tensor(run.metrics[0]["test_elbo"]))
    assert not list(pyro.get_param_store().keys())


@pytest.mark.parametrize("k", [1, 0, -3])
def test_fewer_than_two_components_is_a_usage_error(k):
    with pytest.raises(UsageError, match="k >= 2"):
        GMVAE(k=k)
    with pytest.raises(UsageError):
        build("gmvae", {"k": k})


def test_registry_names_the_pair():
    assert bundled()["gmvae"] is GMVAE
    assert spec_of(GMVAE(k=2, z_dim=2, hidden=[8])) == "gmvae"


def test_enumerated_loss_equals_the_hand_summed_expectation_over_y():
    """TraceEnum_ELBO draws one z per component from q(z | x, k) and weights by q(k | x).
    With the same draws (same seed, no plate-guessing pass) the loss must equal
    -sum_x sum_k q(k|x) [log p(x|z_k) + log p(z_k|k) + log p(k) - log q(z_k|x,k) - log q(k|x)]."""
    K, B = 3, 5
    pyro.set_rng_seed(0)
    pair = GMVAE(k=K, z_dim=2, hidden=[6], x_shape=(4,)).double()
    x = torch.rand(B, 4, dtype=torch.float64).bernoulli()

    pyro.set_rng_seed(7)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(pair.model, pair.guide, x)

    pyro.set_rng_seed(7)  # replay the guide's draws: z of shape (K, B, z_dim), one per component
    enumerated_guide = poutine.enum(pair.guide, first_available_dim=-2)
    z = poutine.trace(enumerated_guide).get_trace(x).nodes["z"]["value"]
    assert z.shape == (K, B, 2)

    with torch.no_grad():
        log_q_y = torch.log_softmax(pair.logits(x), -1)  # (B, K)
        total = torch.zeros(B, dtype=torch.float64)
        for k in range(K):
            ks = torch.full((B,), k)
            zk = z[k]
            q_loc, q_scale = pair.encoder(x, ks)
            p_loc, p_scale = pair.prior(ks)
            log_p_x = torch.distributions.Bernoulli(logits=pair.decoder(zk)).log_prob(x).sum(-1)
            log_p_z = torch.distributions.Normal(p_loc, p_scale).log_prob(zk).sum(-1)
            log_q_z = torch.distributions.Normal(q_loc, q_scale).log_prob(zk).sum(-1)
            log_p_y = -torch.log(torch.tensor(float(K), dtype=torch.float64))
            total += log_q_y[:, k].exp() * (log_p_x + log_p_z + log_p_y - log_q_z - log_q_y[:, k])
    assert loss == pytest.approx(-total.sum().item(), rel=1e-12, abs=1e-10)


def test_eval_reports_clustering_for_a_pair_that_clusters(tmp_path):
    import json

    from pyrovae.cli import main

    run = tmp_path / "gm"
    assert main(["train", "gmvae", "--k", "3", "--z-dim", "2", "--hidden", "[16]", "--epochs", "1",
                 "--train-size", "200", "--test-size", "60", "--batch-size", "50", "--quiet", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--iwae-k", "0"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert 0.1 <= result["clustering_accuracy"] <= 1 and 0 <= result["nmi"] <= 1
