"""A registry from short names to configured ELBO estimators.

Each entry is a factory with a docstring that says when to use it; ``pyrovae models``
and error messages list them.
"""

from __future__ import annotations

from typing import Callable

from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from pyrovae.errors import UsageError

__all__ = ["ESTIMATORS", "make_estimator"]


def _trace() -> ELBO:
    """Trace_ELBO: the standard single-sample ELBO; the default for reparameterized guides."""
    return Trace_ELBO()


def _meanfield() -> ELBO:
    """TraceMeanField_ELBO: uses the analytic KL between guide and prior where Pyro has it
    (lower variance); requires the guide's latent sites to mirror the model's."""
    return TraceMeanField_ELBO()


def _graph() -> ELBO:
    """TraceGraph_ELBO: Rao-Blackwellized score-function gradients for sites that cannot be
    reparameterized (discrete latents sampled in the guide)."""
    return TraceGraph_ELBO()


def _enum() -> ELBO:
    """TraceEnum_ELBO: sums discrete sites marked for enumeration out exactly."""
    return TraceEnum_ELBO()


ESTIMATORS: dict[str, Callable[[], ELBO]] = {
    "trace": _trace,
    "meanfield": _meanfield,
    "graph": _graph,
    "enum": _enum,
}


def make_estimator(name: str) -> ELBO:
    """The estimator called ``name``; an unknown name raises :class:`UsageError` listing the valid ones."""
    if name not in ESTIMATORS:
        raise UsageError(f"unknown estimator {name!r}; valid names: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]()
