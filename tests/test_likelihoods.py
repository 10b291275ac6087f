"""Observation models against their closed-form log densities, and the networks' shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyrovae.errors import UsageError
from pyrovae.likelihoods import LIKELIHOODS, make_likelihood
from pyrovae.nets import MLP, Decoder, Encoder

PARAMS = torch.linspace(-3, 3, 12).reshape(1, 1, 3, 4)
GREY = torch.linspace(0.01, 0.99, 12).reshape(1, 1, 3, 4)


def test_bernoulli_is_binary_cross_entropy_with_logits():
    x = (GREY > 0.5).float()
    p = torch.sigmoid(PARAMS)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum()
    got = make_likelihood("bernoulli")(PARAMS).to_event(3).log_prob(x)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["gaussian", "gaussian-learned"])
def test_gaussians_have_sigmoid_mean_and_scale_one_tenth(name):
    mean, s = torch.sigmoid(PARAMS), 0.1
    expected = (-((GREY - mean) ** 2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)).sum()
    got = make_likelihood(name)(PARAMS).to_event(3).log_prob(GREY)
    assert torch.allclose(got, expected, rtol=1e-5)


def test_learned_scale_is_a_trainable_parameter():
    lik = make_likelihood("gaussian-learned")
    (param,) = lik.parameters()
    lik(PARAMS).log_prob(GREY).sum().backward()
    assert param.grad is not None and param.grad != 0


def test_continuous_bernoulli_includes_its_normalizer():
    lam = torch.sigmoid(PARAMS)
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = (GREY * lam.log() + (1 - GREY) * (1 - lam).log() + log_c).sum()
    got = make_likelihood("continuous-bernoulli")(PARAMS).to_event(3).log_prob(GREY)
    assert torch.allclose(got, expected, rtol=1e-4)


def test_flags_match_the_support():
    assert [n for n, c in LIKELIHOODS.items() if c.binarize] == ["bernoulli"]
    assert {n for n, c in LIKELIHOODS.items() if c.unit_interval} == {"bernoulli", "continuous-bernoulli"}


def test_unknown_likelihood_lists_the_valid_names():
    with pytest.raises(UsageError, match="gaussian-learned"):
        make_likelihood("laplace")


def test_nets_keep_leading_sample_dimensions():
    enc, dec = Encoder((1, 28, 28), [16], 3), Decoder(3, [16], (1, 28, 28))
    loc, scale = enc(torch.rand(5, 2, 1, 28, 28))
    assert loc.shape == scale.shape == (5, 2, 3) and (scale > 0).all()
    assert dec(loc).shape == (5, 2, 1, 28, 28)
    for sizes in ([784], [784, 0], [784, "a"], [784, 2.5]):
        with pytest.raises(UsageError, match="positive integers"):
            MLP(sizes)
    assert MLP([784, np.int64(16), 2])[-1].in_features == 16  # NumPy integers are integers
