"""JointAdam against pyro.optim.Adam: same updates, interchangeable state, untouched parameters left alone."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyrovae.models import VAE
from pyrovae.optim import JointAdam

X = torch.bernoulli(torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)))


def _trajectory(optim: pyro.optim.PyroOptim, steps: int, state: dict | None = None,
                pair_state: dict | None = None) -> tuple[dict[str, torch.Tensor], pyro.optim.PyroOptim]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pair = VAE(z_dim=3, hidden=[8])
    if pair_state is not None:
        pair.load_state_dict(pair_state)
    if state is not None:
        optim.set_state(state)
    svi = SVI(pair.model, pair.guide, optim, Trace_ELBO())
    for _ in range(steps):
        svi.step(X.to(torch.get_default_dtype()))
    return {k: v.detach().clone() for k, v in pair.state_dict().items()}, optim


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_updates_as_pyro_adam(dtype):
    torch.set_default_dtype(dtype)
    try:
        ref, _ = _trajectory(pyro.optim.Adam({"lr": 1e-2}), 20)
        ours, optim = _trajectory(JointAdam(lr=1e-2), 20)
    finally:
        torch.set_default_dtype(torch.float32)
    assert optim.fused  # every parameter is a CPU float tensor
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for name in ref:
        assert ref[name].dtype == dtype
        torch.testing.assert_close(ours[name], ref[name], rtol=tol, atol=tol)
    moved = sum((ours[k] - _trajectory(JointAdam(lr=1e-2), 0)[0][k]).abs().sum() for k in ours)
    assert moved > 0.1  # the comparison is not between two untrained pairs


@pytest.mark.parametrize("first,second", [(JointAdam, pyro.optim.Adam), (pyro.optim.Adam, JointAdam)])
def test_state_moves_between_the_two(first, second):
    make = {JointAdam: lambda: JointAdam(lr=1e-2), pyro.optim.Adam: lambda: pyro.optim.Adam({"lr": 1e-2})}
    half, optim = _trajectory(make[first](), 5)
    state = optim.get_state()
    assert len(state) == 8 and all(s["state"][0]["step"] == 5 for s in state.values())
    resumed, _ = _trajectory(make[second](), 5, state=state, pair_state=half)
    ref_half, ref_optim = _trajectory(pyro.optim.Adam({"lr": 1e-2}), 5)
    ref, _ = _trajectory(pyro.optim.Adam({"lr": 1e-2}), 5, state=ref_optim.get_state(), pair_state=ref_half)
    fresh, _ = _trajectory(make[second](), 5, pair_state=half)  # the moments matter: without them, another path
    for name in ref:
        torch.testing.assert_close(resumed[name], ref[name], rtol=1e-5, atol=1e-5)
    assert max((fresh[k] - ref[k]).abs().max() for k in ref) > 1e-4


def test_parameters_missing_from_a_step_stay_put():
    optim = JointAdam(lr=0.1)
    pyro.param("a", torch.zeros(3))
    pyro.param("b", torch.zeros(3))

    def loss_of(*params):
        for p in params:
            p.grad = None
        sum(((p.unconstrained() if hasattr(p, "unconstrained") else p) - 1).pow(2).sum() for p in params).backward()

    ua, ub = pyro.get_param_store()["a"].unconstrained(), pyro.get_param_store()["b"].unconstrained()
    loss_of(ua, ub)
    optim([ua, ub])
    after_both = ub.detach().clone()
    for _ in range(3):
        loss_of(ua)
        ub.grad = torch.zeros_like(ub)  # SVI zeroes the gradients it saw last step
        optim([ua])
    assert torch.equal(ub.detach(), after_both)  # Adam's momentum must not move b
    assert (ua.detach() > after_both).all()


def test_fused_kernel_not_required_for_odd_dtypes():
    optim = JointAdam(lr=0.1)
    p = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    q = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    pyro.get_param_store()["p"] = p
    pyro.get_param_store()["q"] = q
    up, uq = pyro.get_param_store()["p"].unconstrained(), pyro.get_param_store()["q"].unconstrained()
    (up.sum() + uq.sum()).backward()
    optim([up])
    optim([up, uq])  # a float64 tensor joins float32 ones: the optimizer leaves the fused kernel
    assert optim.fused is False
    assert (uq.detach() < 0).all() and (up.detach() < 0).all()


def test_fits_a_free_parameter():
    pyro.clear_param_store()

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(2.0))
        pyro.sample("z", dist.Normal(loc, 1.0))

    svi = SVI(model, guide, JointAdam(lr=0.05), Trace_ELBO())
    for _ in range(300):
        svi.step()
    assert abs(pyro.param("loc").item()) < 0.5  # the exact posterior mean is 0


def test_gradients_are_released_after_a_step():
    # the next backward pass then writes fresh gradients instead of adding to zeros
    pyro.clear_param_store()
    pair = VAE(z_dim=3, hidden=[8])
    svi = SVI(pair.model, pair.guide, JointAdam(lr=1e-2), Trace_ELBO())
    svi.step(X)
    assert all(p.grad is None for p in pair.parameters())
