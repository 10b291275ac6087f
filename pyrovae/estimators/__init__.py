"""ELBO estimators by short name: the registry used by ``train --elbo NAME``."""

from pyrovae.estimators.registry import ESTIMATORS, make_estimator

__all__ = ["ESTIMATORS", "make_estimator"]
