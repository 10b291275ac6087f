"""Probes that leave the random state as it was, and the state a checkpoint keeps."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pyrovae.rng import forked_rng, rng_state, set_rng_state

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _draws(device: str = "cpu") -> tuple:
    return torch.rand(3, device=device).cpu(), np.random.rand(3), random.random()


def test_a_saved_state_gives_the_same_draws_again():
    state = rng_state()
    first = _draws()
    torch.rand(5), np.random.rand(5), random.random()  # move every generator on
    set_rng_state(state)
    again = _draws()
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_a_forked_probe_leaves_the_next_draw_unchanged():
    state = torch.get_rng_state()
    expected = torch.rand(4)
    torch.set_rng_state(state)
    with forked_rng(torch.device("cpu")):
        torch.rand(10)
    assert torch.equal(torch.rand(4), expected)


@needs_cuda
def test_a_forked_probe_on_a_gpu_leaves_its_generator_unchanged():
    state = torch.cuda.get_rng_state()
    expected = torch.rand(4, device="cuda")
    torch.cuda.set_rng_state(state)
    with forked_rng(expected.device):
        torch.rand(10, device="cuda")
    assert torch.equal(torch.rand(4, device="cuda"), expected)


@needs_cuda
def test_a_state_from_a_machine_with_more_gpus_restores_the_ones_here():
    state = rng_state()
    state["cuda"] = state["cuda"] + [state["cuda"][0]]  # written where one more GPU was visible
    expected = torch.rand(3, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(3, device="cuda"), expected)
