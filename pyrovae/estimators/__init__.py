"""ELBO estimators: Pyro's by short name, plus two Pyro lacks (STL and DReG), and Pyro's
Renyi bound refusing guides it cannot train."""

from pyrovae.estimators.dreg_elbo import DReG_ELBO
from pyrovae.estimators.registry import FORMS, make_estimator, make_evaluator, valid_forms
from pyrovae.estimators.renyi_elbo import ReparameterizedRenyiELBO
from pyrovae.estimators.reparam import NotReparameterizedError
from pyrovae.estimators.stl_elbo import STL_ELBO

__all__ = ["DReG_ELBO", "STL_ELBO", "ReparameterizedRenyiELBO", "NotReparameterizedError", "FORMS", "make_estimator",
           "make_evaluator", "valid_forms"]
