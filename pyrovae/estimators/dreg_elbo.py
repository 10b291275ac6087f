"""The doubly-reparameterized importance-weighted gradient."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.util import warn_if_nan

from pyrovae.estimators.reparam import detached_log_prob, require_reparameterized

__all__ = ["DReG_ELBO"]


class DReG_ELBO(ELBO):
    r"""The importance-weighted bound with the doubly-reparameterized gradient estimator
    of Tucker, Lawson, Gu and Maddison (2018), "Doubly Reparameterized Gradient
    Estimators for Monte Carlo Objectives".

    The loss is the negative IWAE bound of Burda, Grosse and Salakhutdinov (2016) with
    :math:`K` samples per example,

    .. math::

        \mathcal{L}_K = \mathbb{E}\left[\log \frac{1}{K} \sum_{k=1}^K w_k\right],
        \qquad w_k = \frac{p(x, z_k)}{q_\phi(z_k \mid x)},
        \quad z_k = g(\epsilon_k, \phi).

    Model parameters :math:`\theta` get the standard IWAE gradient
    :math:`\sum_k \tilde w_k \nabla_\theta \log w_k` with normalized weights
    :math:`\tilde w_k = w_k / \sum_j w_j`. The guide's gradient replaces the score term,
    whose signal-to-noise ratio falls as :math:`K` grows (Rainforth et al. 2018), by a
    second reparameterization; it is unbiased and reads

    .. math::

        \nabla_\phi \mathcal{L}_K = \mathbb{E}\left[\sum_{k=1}^K \tilde w_k^2\,
        \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi}\right],

    with :math:`\log q` inside :math:`\log w_k` evaluated with the guide's parameters
    detached. Weights are normalized per example along the ``data`` plate.

    Parameters that appear only in the guide get the DReG gradient; all others get the
    IWAE gradient :math:`\sum_k \tilde w_k \nabla \log w_k`, with the guide's density
    differentiated in full for a parameter that the model and the guide share (the DReG
    identity rewrites only the score term of a guide-only parameter; dropping that term
    for a shared one would bias its gradient). Every guide sample site must be
    reparameterized.

    :param num_particles: :math:`K`, samples per example.
    :param vectorize_particles: draw the :math:`K` samples in one vectorized pass.
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = True) -> None:
        if num_particles < 1:
            raise ValueError(f"DReG needs num_particles >= 1, got {num_particles}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles)

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
        require_reparameterized(guide_trace, "the doubly-reparameterized estimator (dreg)")
        return model_trace, guide_trace

    def _log_weights(self, model, guide, args, kwargs):
        """Log-weights of shape (K, ...) with q's parameters detached, the same with them
        attached, and the parameters (unconstrained leaves) of the model alone, of the
        guide alone and of both."""
        detached, attached, model_params, guide_params = [], [], set(), set()
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_p, log_q, log_q_detached = 0.0, 0.0, 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_p = log_p + torch_sum(site["log_prob"], sum_dims)
                elif site["type"] == "param":
                    model_params.add(site["value"].unconstrained())
            for site in guide_trace.nodes.values():
                if site["type"] == "sample" and not site["is_observed"]:
                    log_q = log_q + torch_sum(site["log_prob"], sum_dims)
                    log_q_detached = log_q_detached + torch_sum(detached_log_prob(site), sum_dims)
                elif site["type"] == "param":
                    guide_params.add(site["value"].unconstrained())
            detached.append(log_p - log_q_detached)
            attached.append(log_p - log_q)
        stack = (lambda w: w[0]) if self.vectorize_particles and self.num_particles > 1 else torch.stack
        return (stack(detached), stack(attached), model_params - guide_params, guide_params - model_params,
                model_params & guide_params)

    def _bound(self, log_w: torch.Tensor) -> torch.Tensor:
        return (torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negative IWAE bound (a float), from one draw of K samples per example."""
        with torch.no_grad():
            loss = -self._bound(self._log_weights(model, guide, args, kwargs)[0]).item()
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negative IWAE bound; accumulates the DReG gradients into each ``.grad``."""
        log_w, log_w_attached, model_params, guide_params, shared = self._log_weights(model, guide, args, kwargs)
        weights = torch.softmax(log_w.detach(), dim=0)
        targets = [(-(weights * log_w).sum(), list(model_params)),
                   (-(weights.pow(2) * log_w).sum(), list(guide_params))]
        if shared:  # none in the bundled pairs: no third surrogate for them
            targets.append((-(weights * log_w_attached).sum(), list(shared)))
        for surrogate, params in targets:
            params = [p for p in params if p.requires_grad]
            if params and surrogate.requires_grad:
                # into each .grad as backward() does, so gradient hooks on the parameters run as
                # under Pyro's estimators (the GMVAE counts its training steps with one)
                torch.autograd.backward(surrogate, inputs=params, retain_graph=True)
        loss = -self._bound(log_w.detach()).item()
        warn_if_nan(loss, "loss")
        return loss
