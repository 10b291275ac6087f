"""The sticking-the-landing ELBO gradient."""

from __future__ import annotations

from pyro.infer import Trace_ELBO
from pyro.infer.util import torch_item

from pyrovae.estimators.reparam import detached_log_prob, require_reparameterized

__all__ = ["STL_ELBO"]


class STL_ELBO(Trace_ELBO):
    r"""The ELBO with the sticking-the-landing gradient estimator of Roeder, Wu and
    Duvenaud (2017), "Sticking the Landing: Simple, Lower-Variance Gradient Estimators
    for Variational Inference".

    With a reparameterized guide, :math:`z = g(\epsilon, \phi)`, the total derivative of
    the single-sample ELBO splits into a path term and a score term:

    .. math::

        \nabla_\phi \left[\log p(x, z) - \log q_\phi(z \mid x)\right]
        = \underbrace{\left(\nabla_z \log p(x, z) - \nabla_z \log q_\phi(z \mid x)\right)
          \nabla_\phi g(\epsilon, \phi)}_{\text{path}}
        - \underbrace{\nabla_\phi \log q_\phi(z \mid x)\big|_{z\ \text{fixed}}}_{\text{score}}.

    The score term has expectation zero; STL drops it by evaluating
    :math:`\log q_{\bar\phi}(z \mid x)` with the guide's parameters detached
    (:math:`\bar\phi`). The loss value is the ordinary ELBO and the gradient is unbiased;
    when the guide equals the exact posterior the path term vanishes too, so the guide's
    gradient has zero variance. Model parameters get the usual gradient.

    Every guide sample site must be reparameterized; a guide with a discrete or other
    non-reparameterized site raises :class:`~pyrovae.estimators.reparam.NotReparameterizedError`.
    """

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        require_reparameterized(guide_trace, "the sticking-the-landing estimator (stl)")
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo_particle, surrogate_elbo_particle = 0.0, 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo_particle += torch_item(site["log_prob_sum"])
                surrogate_elbo_particle = surrogate_elbo_particle + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not site["is_observed"]:
                elbo_particle -= torch_item(site["log_prob_sum"])
                surrogate_elbo_particle = surrogate_elbo_particle - detached_log_prob(site).sum()
        return -elbo_particle, -surrogate_elbo_particle
