"""Evaluation of a trained pair on held-out data."""

from __future__ import annotations

import torch
from pyro.infer import ELBO
from torch import nn

from pyrovae.data import Split, batches

__all__ = ["mean_elbo"]


@torch.no_grad()
def mean_elbo(pair: nn.Module, split: Split, estimator: ELBO, batch_size: int = 1000,
              uses_labels: bool = False) -> float:
    """Mean of ``estimator``'s bound over ``split`` in nats per example (higher is better).

    Run it inside the pair's parameter scope (:meth:`pyrovae.runs.Run.param_scope` or
    the trainer's own) so that Pyro parameters outside networks have their trained values.
    """
    total = 0.0
    for x, y in batches(split, batch_size):
        total += estimator.loss(pair.model, pair.guide, x, y) if uses_labels else estimator.loss(pair.model, pair.guide, x)
    return -total / len(split)
