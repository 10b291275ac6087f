"""The true posterior of a trained model for a few inputs, set against the guide.

For one input ``x`` the reference posterior ``p(z | x)`` of the trained model is drawn
with the No-U-Turn sampler (Hoffman and Gelman, 2014; ``pyro.infer.NUTS``), several chains
one after the other, and kept as ArviZ ``InferenceData`` so that its split r-hat and
effective sample size (Vehtari, Gelman, Simpson, Carpenter and Buerkner, 2021) can be
checked. The guide's ``q(z | x)`` is set beside it: means and standard deviations per
latent coordinate, and both clouds of draws.

The inference gap ``log p(x) - ELBO(q)`` is split as Cremer, Li and Duvenaud (2018,
"Inference Suboptimality in Variational Autoencoders") do::

    log p(x) - ELBO(q_amortized) = [log p(x) - ELBO(q*)] + [ELBO(q*) - ELBO(q_amortized)]
                                 =  approximation gap    +  amortization gap

where ``q*`` is the best guide of the family for this one input: a mean-field normal
(``AutoNormal``) over the model's continuous latents, started at the encoder's output and
fitted to this example alone with the decoder held fixed. Run these functions inside the
pair's parameter scope; they leave no parameters in Pyro's store.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.autoguide.utils import deep_setattr
from pyro.infer.mcmc.util import initialize_model
from pyro.nn import PyroParam
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn

from pyrovae.errors import PyrovaeError, brief
from pyrovae.evaluate import (KHAT_OK, PARTICLE_PLATE, is_latent, isolated_params, plate_nesting, psis_khat,
                              trace_log_weights)
from pyrovae.rng import forked_rng

__all__ = [
    "check_comparable",
    "nuts_posterior",
    "posterior_draws",
    "guide_draws",
    "flatten_draws",
    "optimal_local_guide",
    "GapSplit",
    "gap_split",
    "PosteriorComparison",
    "compare_posterior",
]

RHAT_MAX, ESS_MIN_PER_CHAIN = 1.01, 100  # the thresholds of Vehtari et al. (2021)


def _arviz() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ announces its refactor on import
        import arviz
    return arviz


@contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the tensors of one example are small, and several threads only
    add synchronisation, which slows NUTS down on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_example(x: Tensor, y: Tensor | None) -> tuple[Tensor, ...]:
    if x.shape[0] != 1:
        raise PyrovaeError("posterior analysis takes one example with a batch dimension of 1, "
                           f"got shape {tuple(x.shape)}")
    return (x,) if y is None else (x, y)


def _nuts_cannot(err: Exception) -> PyrovaeError:
    return PyrovaeError(f"NUTS cannot sample this pair's model: {brief(err)}. It needs a proper prior density "
                        "over continuous latents, with discrete ones marked infer={'enumerate': 'parallel'}")


def check_comparable(pair: nn.Module, x: Tensor, y: Tensor | None = None) -> None:
    """Refuse, for the price of one run of the model and the guide, a pair whose NUTS draws
    could not be set against its guide's. NUTS sums the model's discrete sites out by
    enumeration; a continuous latent that depends on one (the GMVAE's ``z`` on its component
    ``y``) then gets a value for each enumerated value, another variable than the guide's."""
    args = _one_example(x, y)
    with isolated_params(), poutine.block(), forked_rng(x.device):
        nesting = plate_nesting(pair.model, pair.guide, *args)
        try:
            model_trace = initialize_model(pair.model, model_args=args, max_plate_nesting=nesting)[3]
        except (NotImplementedError, ValueError) as err:
            raise _nuts_cannot(err) from err
        guide_trace = prune_subsample_sites(poutine.trace(pair.guide).get_trace(*args))
    guide = {name: tuple(site["value"].shape) for name, site in guide_trace.nodes.items() if is_latent(site)}
    model = {name: tuple(site["value"].shape) for name, site in prune_subsample_sites(model_trace).nodes.items()
             if is_latent(site) and not _enumerated(site)}
    summed = [name for name, site in model_trace.nodes.items() if is_latent(site) and _enumerated(site)]
    for name in model.keys() & guide.keys():
        if model[name] != guide[name]:
            raise PyrovaeError(
                f"NUTS reference posteriors do not apply to {type(pair).__name__}: NUTS sums out its discrete "
                f"site(s) {', '.join(map(repr, summed))} by enumeration, and the latent {name!r} then has shape "
                f"{model[name]}, a value for each enumerated value, where the guide's has shape {guide[name]}")


def nuts_posterior(pair: nn.Module, x: Tensor, y: Tensor | None = None, *, num_samples: int = 500,
                   warmup_steps: int = 300, num_chains: int = 2, seed: int = 0) -> Any:
    """Draws of ``p(z | x)`` for one example ``x`` (shape ``(1, *x_shape)``) by NUTS.

    The chains run one after the other (seeds ``seed, seed + 1, ...``), each started at a
    random point (``init_to_uniform``), and are joined into one ``arviz.InferenceData``
    with groups ``posterior`` (one variable per latent site, dims ``chain, draw, ...``)
    and ``sample_stats`` (``diverging``). Discrete model sites must be marked
    ``infer={"enumerate": "parallel"}``; NUTS then sums them out. Sets Pyro's global seed.
    """
    az = _arviz()
    args = _one_example(x, y)
    if num_samples < 1 or warmup_steps < 0 or num_chains < 1:
        raise PyrovaeError(f"NUTS needs num_samples >= 1, warmup_steps >= 0 and num_chains >= 1, got "
                           f"{num_samples}, {warmup_steps}, {num_chains}")
    chains = []
    with isolated_params(), _one_thread():
        nesting = plate_nesting(pair.model, pair.guide, *args)
        for chain in range(num_chains):
            pyro.set_rng_seed(seed + chain)
            mcmc = MCMC(NUTS(pair.model, max_plate_nesting=nesting), num_samples=num_samples,
                        warmup_steps=warmup_steps, disable_progbar=True)
            try:
                mcmc.run(*args)
            except (NotImplementedError, ValueError) as err:
                raise _nuts_cannot(err) from err
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chains.append(az.from_pyro(mcmc, log_likelihood=False))
    return az.concat(chains, dim="chain") if num_chains > 1 else chains[0]


def posterior_draws(idata: Any) -> dict[str, Tensor]:
    """The posterior draws of ``idata``, chains pooled: site -> (chains * draws, *site shape)."""
    return {name: torch.as_tensor(var.values).reshape(-1, *var.shape[2:]) for name, var in idata.posterior.items()}


@torch.no_grad()
def guide_draws(pair: nn.Module, x: Tensor, y: Tensor | None = None, num_samples: int = 1000) -> dict[str, Tensor]:
    """``num_samples`` draws of each latent site of ``q(z | x)``: site -> (num_samples, coordinates)."""
    args = _one_example(x, y)
    with isolated_params():
        nesting = plate_nesting(pair.model, pair.guide, *args)
        with pyro.plate(PARTICLE_PLATE, num_samples, dim=-nesting - 1):
            trace = prune_subsample_sites(poutine.trace(pair.guide).get_trace(*args))
    return {name: site["value"].reshape(num_samples, -1) for name, site in trace.nodes.items() if is_latent(site)}


def flatten_draws(draws: dict[str, Tensor], sites: list[str]) -> tuple[Tensor, list[str]]:
    """Draws of the given sites as one (S, D) tensor and a name per coordinate, e.g. ``z[3]``."""
    columns, names = [], []
    for site in sites:
        flat = draws[site].reshape(draws[site].shape[0], -1).double()
        columns.append(flat)
        names += [site] if flat.shape[1] == 1 else [f"{site}[{i}]" for i in range(flat.shape[1])]
    return torch.cat(columns, dim=1), names


def _unconstrained(support: Any) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def _enumerated(msg: dict) -> bool:
    return msg["infer"].get("enumerate") == "parallel"


def optimal_local_guide(pair: nn.Module, x: Tensor, y: Tensor | None = None, *, steps: int = 500,
                        lr: float = 0.02, num_particles: int = 32) -> AutoNormal:
    """The best mean-field normal guide for this one example, with the model held fixed.

    An ``AutoNormal`` over the model's continuous latents (enumerated discrete sites are
    hidden from it and summed out), started at the mean and standard deviation of the
    pair's own guide for ``x`` and fitted by Adam on the reparameterized ELBO with
    ``num_particles`` draws a step, the learning rate falling from ``lr`` to ``lr / 100``
    on a cosine. Call it inside an isolated parameter scope
    (:func:`pyrovae.evaluate.isolated_params`) and use the guide there.
    """
    args = _one_example(x, y)
    nesting = plate_nesting(pair.model, pair.guide, *args)
    with torch.no_grad(), poutine.block():
        amortized = prune_subsample_sites(poutine.trace(pair.guide).get_trace(*args))
    init, spread = {}, {}
    for name, site in amortized.nodes.items():
        if is_latent(site):
            try:
                init[name], spread[name] = site["fn"].mean.detach(), site["fn"].stddev.detach()
            except NotImplementedError:  # a guide without closed-form moments: AutoNormal's defaults
                pass
    guide = AutoNormal(poutine.block(pair.model, hide_fn=_enumerated), init_loc_fn=init_to_value(values=init))
    try:
        guide(*args)  # builds the guide's parameters from a trace of the model
    except (NotImplementedError, ValueError) as err:
        raise PyrovaeError(f"cannot fit a normal guide to this pair's model for one example ({err}); "
                           "the gap split needs continuous latents") from err
    for name, sd in spread.items():
        site = guide.prototype_trace.nodes.get(name)
        if site is not None and _unconstrained(site["fn"].support):
            deep_setattr(guide.scales, name, PyroParam(sd, guide.scale_constraint, site["fn"].event_dim))
    params = list(guide.parameters())
    optim = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, max(steps, 1), eta_min=lr / 100)
    for _ in range(steps):
        loss = -trace_log_weights(pair.model, guide, args, num_particles, nesting).mean()
        # gradients for this guide's parameters only: the model's stay untouched
        for p, grad in zip(params, torch.autograd.grad(loss, params)):
            p.grad = grad
        optim.step()
        schedule.step()
    return guide


@dataclass
class GapSplit:
    """Cremer et al.'s split of one example's inference gap, in nats."""

    log_likelihood: float   # log p(x): the larger importance-weighted estimate of the two guides
    elbo_amortized: float   # ELBO of the pair's own (amortized) guide
    elbo_optimal: float     # ELBO of the best guide of the family for this example
    k: int                  # draws per estimate
    khat: float             # PSIS k-hat of the weights that gave log p(x): above 0.7, do not trust it

    @property
    def approximation_gap(self) -> float:
        """``log p(x) - ELBO(q*)``: what the guide family cannot express."""
        return self.log_likelihood - self.elbo_optimal

    @property
    def amortization_gap(self) -> float:
        """``ELBO(q*) - ELBO(q_amortized)``: what the encoder loses by sharing one network."""
        return self.elbo_optimal - self.elbo_amortized


def _iw(model: Any, guide: Any, args: tuple, k: int, chunk_size: int, nesting: int) -> tuple[float, float, float]:
    """(importance-weighted log p(x), ELBO, PSIS k-hat) from ``k`` draws of ``guide``, made in chunks."""
    lw = torch.cat([trace_log_weights(model, guide, args, min(chunk_size, k - s), nesting).detach().double()
                    for s in range(0, k, chunk_size)])
    return (torch.logsumexp(lw, 0) - math.log(k)).item(), lw.mean().item(), psis_khat(lw).item()


def gap_split(pair: nn.Module, x: Tensor, y: Tensor | None = None, *, k: int = 5000, chunk_size: int = 500,
              steps: int = 500, lr: float = 0.02, num_particles: int = 32) -> GapSplit:
    """Approximation and amortization gaps for one example ``x`` (shape ``(1, *x_shape)``).

    Both ELBOs and ``log p(x)`` are estimated from ``k`` draws of each guide; ``log p(x)``
    is the larger of the two importance-weighted estimates (each tends to ``log p(x)``
    from below as ``k`` grows), reported with the PSIS k-hat of its weights.
    """
    args = _one_example(x, y)
    with isolated_params(), _one_thread():
        nesting = plate_nesting(pair.model, pair.guide, *args)
        best = optimal_local_guide(pair, x, y, steps=steps, lr=lr, num_particles=num_particles)
        with torch.no_grad():
            amortized = _iw(pair.model, pair.guide, args, k, chunk_size, nesting)
            optimal = _iw(pair.model, best, args, k, chunk_size, nesting)
    ll, _, khat = max(amortized, optimal)
    return GapSplit(ll, amortized[1], optimal[1], k, khat)


@dataclass
class PosteriorComparison:
    """NUTS draws of ``p(z | x)`` beside the guide's draws of ``q(z | x)`` for one example."""

    names: list[str]       # one per latent coordinate, e.g. "z[0]"
    nuts: Tensor           # (S, D) posterior draws, chains pooled
    guide: Tensor          # (S', D) guide draws
    inference_data: Any    # arviz.InferenceData of the NUTS run
    rhat_max: float        # largest split r-hat over coordinates
    ess_bulk_min: float    # smallest bulk effective sample size over coordinates
    divergences: int
    gaps: GapSplit | None = None

    def warnings(self) -> list[str]:
        """What makes the reference posterior or the gap split doubtful, if anything."""
        chains = self.inference_data.posterior.sizes["chain"]
        out = []
        if chains < 2:
            out.append("one chain: r-hat needs two or more to check that NUTS converged")
        elif not self.rhat_max < RHAT_MAX:
            out.append(f"r-hat {self.rhat_max:.3f} >= {RHAT_MAX}: the chains disagree; draw more samples")
        if self.ess_bulk_min < ESS_MIN_PER_CHAIN * chains:
            out.append(f"bulk ESS {self.ess_bulk_min:.0f} < {ESS_MIN_PER_CHAIN * chains}: too few effective draws")
        if self.divergences:
            out.append(f"{self.divergences} divergent transitions: the sampler may have missed part of p(z | x)")
        if self.gaps is not None and not self.gaps.khat <= KHAT_OK:
            out.append(f"k-hat {self.gaps.khat:.2f} > {KHAT_OK} for log p(x): the approximation gap is unreliable")
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-friendly numbers: diagnostics, means and standard deviations, gaps."""
        columns = (self.nuts.mean(0), self.nuts.std(0), self.guide.mean(0), self.guide.std(0))
        keys = ("nuts_mean", "nuts_sd", "guide_mean", "guide_sd")
        out: dict[str, Any] = {
            "rhat_max": self.rhat_max, "ess_bulk_min": self.ess_bulk_min, "divergences": self.divergences,
            "nuts_draws": self.nuts.shape[0], "warnings": self.warnings(),
            "coordinates": {name: dict(zip(keys, values))
                            for name, *values in zip(self.names, *(c.tolist() for c in columns))},
        }
        if self.gaps is not None:
            out.update(log_likelihood=self.gaps.log_likelihood, elbo_amortized=self.gaps.elbo_amortized,
                       elbo_optimal=self.gaps.elbo_optimal, approximation_gap=self.gaps.approximation_gap,
                       amortization_gap=self.gaps.amortization_gap, gap_k=self.gaps.k, gap_khat=self.gaps.khat)
        return out


def compare_posterior(pair: nn.Module, x: Tensor, y: Tensor | None = None, *, num_samples: int = 500,
                      warmup_steps: int = 300, num_chains: int = 2, guide_samples: int = 1000,
                      k: int = 1000, gap_steps: int = 500, seed: int = 0) -> PosteriorComparison:
    """NUTS reference posterior, guide draws, diagnostics and the gap split for one example.

    ``k = 0`` or ``gap_steps = 0`` skips the gap split.
    """
    az = _arviz()
    check_comparable(pair, x, y)
    idata = nuts_posterior(pair, x, y, num_samples=num_samples, warmup_steps=warmup_steps,
                           num_chains=num_chains, seed=seed)
    reference = posterior_draws(idata)
    drawn = guide_draws(pair, x, y, guide_samples)
    sites = [s for s in reference if s in drawn]
    if not sites:
        raise PyrovaeError(f"the guide draws {sorted(drawn)} but NUTS drew {sorted(reference)}: nothing to compare")
    nuts, names = flatten_draws(reference, sites)
    guide, _ = flatten_draws(drawn, sites)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = az.rhat(idata, var_names=sites) if num_chains > 1 else None
        ess = az.ess(idata, var_names=sites, method="bulk")
    rhat_max = max(float(v.max()) for v in rhat.data_vars.values()) if rhat is not None else float("nan")
    ess_min = min(float(v.min()) for v in ess.data_vars.values())
    divergences = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else 0
    gaps = gap_split(pair, x, y, k=k, steps=gap_steps) if k > 0 and gap_steps > 0 else None
    return PosteriorComparison(names, nuts, guide, idata, rhat_max, ess_min, divergences, gaps)
