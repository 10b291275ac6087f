"""Pyro's Renyi bound (IWAE at alpha 0), refusing guides it cannot train.

For a guide site that cannot be reparameterized (a discrete ``y``, or the score-function
normal of ``VAE(reparameterized=False)``), the gradient of the bound
``L = log (1/K sum_k w_k^(1 - alpha)) / (1 - alpha)`` with respect to the site's parameters
needs a score-function term, ``L`` times ``grad log q(z_k)`` summed over the K samples.
Pyro's ``RenyiELBO`` has no such term: it puts ``alpha / (1 - alpha) grad log q(z_k)``, weighted by
the normalized weights, in its place, which at alpha 0 (``iwae-K``) is zero. Those parameters
would not learn, with no error to say so; this subclass raises instead, naming the site.
"""

from __future__ import annotations

from typing import Any, Callable

from pyro.infer import RenyiELBO
from pyro.poutine import Trace

from pyrovae.estimators.reparam import require_reparameterized

__all__ = ["ReparameterizedRenyiELBO"]


class ReparameterizedRenyiELBO(RenyiELBO):
    """``pyro.infer.RenyiELBO`` for fully reparameterized guides; any other guide raises
    :class:`~pyrovae.estimators.reparam.NotReparameterizedError` at its first step."""

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict[str, Any]) -> tuple[Trace, Trace]:
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        require_reparameterized(guide_trace, "the Renyi and importance-weighted bounds (Pyro's RenyiELBO, "
                                "which has no score-function term for such sites)")
        return model_trace, guide_trace
