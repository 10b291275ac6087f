"""Random number state: probes that leave it as it was, and its place in checkpoints.

Several parts of pyrovae run a pair once only to look at it (the plate nesting, the
latent site a figure uses, the parameters a pair creates). Pyro's sample sites draw from
the global generators of the device the tensors live on, so such a probe forks both the
CPU's generator and, for tensors on a GPU, that GPU's; forking the CPU's alone would let
a probe on ``cuda`` shift every later draw of the run.
"""

from __future__ import annotations

import random
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

__all__ = ["forked_rng", "rng_state", "set_rng_state"]


def forked_rng(device: torch.device) -> AbstractContextManager:
    """A context that puts the CPU's random state, and ``device``'s when it is a GPU, back on exit."""
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index if device.index is not None else torch.cuda.current_device()])


def rng_state() -> dict[str, Any]:
    """The state of every generator a run draws from: torch's CPU one, NumPy's, Python's and,
    on a machine with CUDA, each GPU's."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s ``state``. GPU states are set for the GPUs this machine has,
    in order (a checkpoint written on more GPUs than are visible now keeps the first ones';
    one written without CUDA leaves the GPUs' generators alone)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        for index, gpu_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state.cpu(), index)
