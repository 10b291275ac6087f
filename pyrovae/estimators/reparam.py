"""Pieces shared by the path-derivative estimators (STL, DReG).

Both differentiate ``log q(z | x)`` only through the sample ``z = g(eps, phi)``, never
through the parameters of ``q`` directly. That needs every guide sample site to be
reparameterized, and the guide's log density evaluated with its parameters detached.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions.util import detach, scale_and_mask
from pyro.poutine import Trace

__all__ = ["NotReparameterizedError", "require_reparameterized", "detached_log_prob"]


class NotReparameterizedError(ValueError):
    """A path-derivative estimator was given a guide with a non-reparameterized site."""


def require_reparameterized(guide_trace: Trace, estimator: str) -> None:
    """Raise :class:`NotReparameterizedError` naming each guide site without ``rsample``."""
    bad = [
        f"{name!r} ({type(site['fn']).__name__})"
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site["fn"].has_rsample
    ]
    if bad:
        raise NotReparameterizedError(
            f"{estimator} needs a fully reparameterized guide, but guide site(s) {', '.join(bad)} "
            "cannot be reparameterized; use the 'trace' or 'graph' estimator (or 'enum' to sum "
            "discrete sites out)"
        )


def detached_log_prob(site: dict[str, Any]) -> torch.Tensor:
    """``log q(value)`` of a guide site with the distribution's parameters detached
    (scaled and masked like the site's own ``log_prob``): gradients reach the guide
    only through the sampled value."""
    return scale_and_mask(detach(site["fn"]).log_prob(site["value"]), site["scale"], site["mask"])
