"""Shared fixtures: small slices of Fashion-MNIST and a clean Pyro state per test."""

from __future__ import annotations

import pyro
import pytest

from pyrovae import load_dataset
from pyrovae.data import Dataset


@pytest.fixture(scope="session")
def data() -> Dataset:
    """600 training and 200 test images (the Debian package or pyrovae's cache must hold them)."""
    return load_dataset("fashion-mnist", train_size=600, test_size=200)


@pytest.fixture(autouse=True)
def clean_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
