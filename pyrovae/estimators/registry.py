"""A registry from short names to configured ELBO estimators.

Names are fixed (``trace``, ``stl``, ``jit-trace``, ...) or forms with numbers
(``iwae-K``, ``dreg-K``, ``renyi-A-K``). Each entry has a docstring that says when to
use it; ``pyrovae models`` and error messages list them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)

from pyrovae.errors import UsageError
from pyrovae.estimators.dreg_elbo import DReG_ELBO
from pyrovae.estimators.renyi_elbo import ReparameterizedRenyiELBO
from pyrovae.estimators.reparam import require_reparameterized
from pyrovae.estimators.stl_elbo import STL_ELBO

__all__ = ["Form", "FORMS", "make_estimator", "make_evaluator", "valid_forms"]


@dataclass(frozen=True)
class Form:
    """One kind of estimator name: ``pattern`` as shown to users, ``regex`` to parse it."""

    pattern: str
    regex: str
    build: Callable[..., ELBO]
    enumerates: bool = False  # sums discrete sites out, so its ELBO is reported by TraceEnum_ELBO

    @property
    def doc(self) -> str:
        return " ".join((self.build.__doc__ or "").split())


def _trace() -> ELBO:
    """Trace_ELBO: the standard single-sample ELBO; the default for reparameterized guides."""
    return Trace_ELBO()


class _NamesUnreparameterizedSites:
    """Pyro's mean-field ELBOs check the guide only while validation is on (pyrovae's trainer
    turns it on for an epoch's first step) and without naming the site: check at every
    step, and name each guide site that cannot be reparameterized."""

    def _get_trace(self, model, guide, args, kwargs):  # noqa: ANN001, ANN202 - Pyro's signature
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        require_reparameterized(guide_trace, "the mean-field estimator (meanfield)")
        return model_trace, guide_trace


class _MeanField(_NamesUnreparameterizedSites, TraceMeanField_ELBO):
    pass


class _JitMeanField(_NamesUnreparameterizedSites, JitTraceMeanField_ELBO):
    pass


def _meanfield() -> ELBO:
    """TraceMeanField_ELBO: the analytic KL between guide and prior where Pyro has it (lower
    variance); the guide's latent sites must mirror the model's and be reparameterized."""
    return _MeanField()


def _graph() -> ELBO:
    """TraceGraph_ELBO: Rao-Blackwellized score-function gradients for sites that cannot be
    reparameterized (discrete latents sampled in the guide)."""
    return TraceGraph_ELBO()


def _enum() -> ELBO:
    """TraceEnum_ELBO: sums discrete sites marked for enumeration out exactly."""
    return TraceEnum_ELBO()


def _stl() -> ELBO:
    """Sticking the landing (Roeder et al. 2017): the ELBO with the guide's score term
    dropped; lower-variance guide gradients, zero variance at the exact posterior.
    Reparameterized guides only."""
    return STL_ELBO()


def _iwae(k: str) -> ELBO:
    """The importance-weighted bound with K samples per example (RenyiELBO with alpha 0;
    Burda et al. 2016): tighter than the ELBO, but its guide gradient gets noisier as K grows.
    Reparameterized guides only."""
    return ReparameterizedRenyiELBO(alpha=0.0, num_particles=int(k), vectorize_particles=True)


def _dreg(k: str) -> ELBO:
    """The importance-weighted bound with K samples and doubly-reparameterized guide
    gradients (Tucker et al. 2018): IWAE's bound without its guide-gradient decay.
    Reparameterized guides only."""
    return DReG_ELBO(num_particles=int(k))


def _renyi(alpha: str, k: str) -> ELBO:
    """The Renyi alpha-divergence bound with K samples (Li and Turner 2016); alpha 0 is
    IWAE, alpha towards 1 the ELBO. Reparameterized guides only."""
    return ReparameterizedRenyiELBO(alpha=float(alpha), num_particles=int(k), vectorize_particles=True)


def _jit(cls: type[ELBO]) -> Callable[[], ELBO]:
    def build() -> ELBO:
        return cls()

    pyros = next(c for c in cls.__mro__ if c.__module__.startswith("pyro."))
    build.__doc__ = f"{pyros.__name__}: the same estimator compiled with the PyTorch JIT (first step is slow)."
    return build


_INT = r"([1-9][0-9]{0,5})"  # below a million draws: more overflow Pyro's plates long before they would help
_FLOAT = r"(-?[0-9]+(?:\.[0-9]+)?)"
FORMS: tuple[Form, ...] = (
    Form("trace", "trace", _trace),
    Form("meanfield", "meanfield", _meanfield),
    Form("graph", "graph", _graph),
    Form("enum", "enum", _enum, enumerates=True),
    Form("stl", "stl", _stl),
    Form("iwae-K", rf"iwae-{_INT}", _iwae),
    Form("dreg-K", rf"dreg-{_INT}", _dreg),
    Form("renyi-A-K", rf"renyi-{_FLOAT}-{_INT}", _renyi),
    Form("jit-trace", "jit-trace", _jit(JitTrace_ELBO)),
    Form("jit-meanfield", "jit-meanfield", _jit(_JitMeanField)),
    Form("jit-graph", "jit-graph", _jit(JitTraceGraph_ELBO)),
    Form("jit-enum", "jit-enum", _jit(JitTraceEnum_ELBO), enumerates=True),
)


def valid_forms() -> str:
    return ", ".join(f.pattern for f in FORMS) + " (K a positive integer below a million, A a number other than 1)"


def _match(name: str) -> tuple[Form, tuple[str, ...]]:
    for form in FORMS:
        m = re.fullmatch(form.regex, name)
        if m:
            if form.pattern == "renyi-A-K" and float(m.group(1)) == 1.0:
                break  # alpha = 1 is the ELBO itself, where Renyi's bound is undefined
            return form, m.groups()
    raise UsageError(f"unknown estimator {name!r}; valid forms: {valid_forms()}")


def make_estimator(name: str) -> ELBO:
    """The estimator called ``name``; an unknown or malformed name raises :class:`UsageError`
    listing the valid forms."""
    form, groups = _match(name)
    return form.build(*groups)


def make_evaluator(name: str) -> ELBO:
    """The single-sample ELBO that reports runs trained with ``name``: ``TraceEnum_ELBO``
    for estimators that enumerate, else ``Trace_ELBO``. (Reporting with the training
    estimator itself would report IWAE's bound, not the ELBO, for ``iwae-K``.)"""
    return TraceEnum_ELBO() if _match(name)[0].enumerates else Trace_ELBO()
