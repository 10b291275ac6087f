"""Evaluation of a trained pair on held-out data: test ELBO, importance-weighted
log-likelihood and Pareto-smoothed importance sampling diagnostics.

Everything here works from Pyro traces of the pair, so it serves any model/guide pair.
For an example ``x`` and draws ``z_k ~ q(z | x)`` of the guide, the importance log-weights
are ``log w_k = log p(x, z_k) - log q(z_k | x)``. Their mean is a Monte Carlo estimate of
the ELBO, and

.. math::

    \\log p(x) \\approx \\log \\frac{1}{K} \\sum_{k=1}^K w_k
             = \\operatorname{logsumexp}_k \\log w_k - \\log K

is the importance-weighted bound of Burda, Grosse and Salakhutdinov (2016, "Importance
Weighted Autoencoders"), which rises to ``log p(x)`` as ``K`` grows; K = 5000 is their
standard. The Pareto shape ``k-hat`` fitted to the largest weights (Vehtari, Simpson,
Gelman, Yao and Gabry, 2024, "Pareto Smoothed Importance Sampling"; used to judge
variational approximations by Yao, Vehtari, Simpson and Gelman, 2018, "Yes, but Did It
Work?") says whether the estimate can be trusted: below 0.5 good, 0.5 to 0.7 usable,
above 0.7 the guide misses mass of the posterior and the estimate is unreliable.

Run these inside the pair's parameter scope (:meth:`pyrovae.runs.Run.param_scope`, or
``pyro.get_param_store().scope()``); they leave no parameters in Pyro's store.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn
from torch.distributions import kl_divergence
from tqdm.auto import tqdm

from pyrovae.data import Split, batches
from pyrovae.errors import PyrovaeError, brief
from pyrovae.rng import forked_rng

__all__ = [
    "mean_elbo",
    "log_weights",
    "check_importance",
    "SampleDimensionError",
    "LogLikelihood",
    "ImportanceEvaluation",
    "importance_log_likelihood",
    "importance_evaluation",
    "default_chunk_size",
    "psis_khat",
    "trace_log_weights",
    "plate_nesting",
    "isolated_params",
    "khat_shares",
    "KHAT_GOOD",
    "KHAT_OK",
    "KHAT_MIN_SAMPLES",
    "is_latent",
    "ElboTerms",
    "elbo_terms",
]


class SampleDimensionError(PyrovaeError):
    """The pair fails with a dimension of draws left of its plates, as importance sampling runs it."""


KHAT_GOOD, KHAT_OK = 0.5, 0.7  # Pareto k-hat thresholds of Vehtari et al.
KHAT_MIN_SAMPLES = 25  # below this ArviZ's Pareto tail has fewer than 5 weights
FLAT_TOLERANCE = 1e-5  # relative spread of log-weights below which they count as equal
DATA_PLATE = "data"
PARTICLE_PLATE = "_importance_particles"
# draws per example made at once when no chunk size is given. On the CPU, 500 draws for each of
# 100 images of 28 x 28 make tensors of 157 MB that the allocator maps fresh from the kernel at
# every chunk, and the page faults cost about as much as the rest of the work; with 50 draws
# (16 MB) it reuses its memory and the evaluation runs about twice as fast
# (benchmarks/eval_chunks.py). A GPU keeps the larger chunks: fewer calls through Pyro's Python.
CHUNK_SIZE = {"cpu": 50, "cuda": 500}


def default_chunk_size(device: torch.device) -> int:
    """Draws per example made at once by :func:`importance_log_likelihood` and
    :func:`importance_evaluation` when ``chunk_size`` is None: 50 on the CPU (measured on
    28 x 28 images; for larger ones a smaller chunk may pay), 500 on a GPU."""
    return CHUNK_SIZE.get(torch.device(device).type, CHUNK_SIZE["cuda"])


@torch.no_grad()
def mean_elbo(pair: nn.Module, split: Split, estimator: ELBO, batch_size: int = 1000,
              uses_labels: bool = False) -> float:
    """Mean of ``estimator``'s bound over ``split`` in nats per example (higher is better).

    Run it inside the pair's parameter scope (:meth:`pyrovae.runs.Run.param_scope` or
    the trainer's own) so that Pyro parameters outside networks have their trained values.
    """
    if batch_size < 1 or len(split) == 0:
        raise PyrovaeError(f"mean_elbo needs a positive batch size and examples, got batch_size={batch_size} "
                           f"and {len(split)} examples")
    total = 0.0
    validate = pyro.distributions.is_validation_enabled()
    with torch.no_grad():  # Pyro's ELBO.loss would otherwise record every batch for a backward pass
        for i, (x, y) in enumerate(batches(split, batch_size)):
            # Pyro's argument and shape checks on the first batch only, as the trainer does for
            # each epoch's first step: the later batches come from the same data and pair
            with pyro.validation_enabled(validate and i == 0):
                total += (estimator.loss(pair.model, pair.guide, x, y) if uses_labels
                          else estimator.loss(pair.model, pair.guide, x))
    return -total / len(split)


@contextmanager
def isolated_params() -> Iterator[None]:
    """Keep the parameters of the current Pyro store visible, and drop whatever the block adds."""
    store = pyro.get_param_store()
    with store.scope(store.get_state()):
        yield


def is_latent(site: dict) -> bool:
    """A sample site that is not observed."""
    return site["type"] == "sample" and not site["is_observed"]


def plate_nesting(model: Callable, guide: Callable, *args: Tensor) -> int:
    """How many plate dimensions the pair uses (one trace of guide and model, as Pyro's
    ``ELBO`` guesses ``max_plate_nesting``); also checks that a ``data`` plate exists."""
    with poutine.block(), forked_rng(args[0].device):  # the probe draws leave the RNG as it was
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    frames = [f for tr in (model_trace, guide_trace) for site in tr.nodes.values()
              if site["type"] == "sample" for f in site["cond_indep_stack"] if f.vectorized]
    if not any(f.name == DATA_PLATE for f in frames):
        raise PyrovaeError("the pair declares no pyro.plate('data', batch_size): per-example evaluation needs "
                           "the batch inside a plate named 'data', as in pyrovae.models.VAE")
    return max(-f.dim for f in frames)


def trace_log_weights(model: Callable, guide: Callable, args: tuple, num_samples: int, nesting: int) -> Tensor:
    """``log p(x, z_k) - log q(z_k | x)`` of shape (num_samples, batch) for any model and
    guide called with ``args``, with gradients (the engine of :func:`log_weights`).
    ``nesting`` is :func:`plate_nesting` of the pair.

    The samples are vectorized in a plate left of the pair's own plates. Model sites that
    are marked for parallel enumeration and absent from the guide are summed out exactly
    (Pyro's tensor variable elimination); other model latents absent from the guide are
    drawn from their prior, which then is part of the proposal, so their density cancels.
    Auxiliary guide sites (``infer={"is_auxiliary": True}``, as in autoguides, which draw
    an unconstrained value and push it through a ``Delta``) count towards ``log q``.
    """
    particle_dim = -nesting - 1

    def plated(fn: Callable) -> Callable:
        def wrapped(*a: Tensor) -> None:
            with pyro.plate(PARTICLE_PLATE, num_samples, dim=particle_dim):
                fn(*a)
        return wrapped

    try:
        guide_trace = prune_subsample_sites(poutine.trace(plated(guide)).get_trace(*args))
        enumerated = poutine.enum(plated(model), first_available_dim=particle_dim - 1)
        model_trace = poutine.trace(poutine.replay(enumerated, trace=guide_trace)).get_trace(*args)
    except PyrovaeError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        raise SampleDimensionError(
            f"the pair failed when run as importance sampling runs it, with {num_samples} draws per example in a "
            f"sample dimension left of its plates (dim {particle_dim}): {brief(err)}. Write model and guide so that "
            "a latent may carry extra leading dimensions: index tensors from the right, and expand other inputs "
            "to the latent's batch shape (torch.cat([z, y.expand(*z.shape[:-1], -1)], -1))") from err
    model_trace = prune_subsample_sites(model_trace)
    extra = [n for n, s in guide_trace.nodes.items()
             if is_latent(s) and n not in model_trace.nodes and not s["infer"].get("is_auxiliary")]
    if extra:
        raise PyrovaeError(f"guide sites {extra} are not in the model; importance weights need every guide "
                           "latent to be a model latent (or marked infer={'is_auxiliary': True}, as autoguides do)")
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    model_trace.symbolize_dims()
    guide_trace.symbolize_dims(model_trace.plate_to_symbol)
    symbols = model_trace.plate_to_symbol
    tree: OrderedDict[frozenset, list[Tensor]] = OrderedDict()
    sum_dims: set[str] = set()
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["infer"].get("_deterministic"):
                continue
            if trace is guide_trace and site["is_observed"]:
                continue
            in_guide = name in guide_trace.nodes
            enumerated_site = site["infer"].get("_enumerate_dim") is not None
            if trace is model_trace and is_latent(site) and not in_guide and not enumerated_site:
                continue  # drawn from the prior: proposal and target densities cancel
            ordinal = frozenset(symbols[f.name] for f in site["cond_indep_stack"] if f.vectorized)
            if symbols.get(DATA_PLATE) not in ordinal:
                raise PyrovaeError(f"site {name!r} is outside pyro.plate('data'); per-example importance "
                                   "weights need every latent and observed site inside the data plate")
            term = scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"]) * sign
            try:
                term = packed.pack(term, site["infer"]["_dim_to_symbol"])
            except ValueError as err:
                raise PyrovaeError(f"site {name!r} has batch dimensions that no plate declares "
                                   f"(shape {tuple(site['unscaled_log_prob'].shape)}); declare them with "
                                   "pyro.plate or move them to the event with .to_event()") from err
            sum_dims.update(set(term._pyro_dims) - set(symbols.values()))
            tree.setdefault(ordinal, []).append(term)
    present = set().union(*(t._pyro_dims for terms in tree.values() for t in terms))
    target = frozenset(symbols[p] for p in (PARTICLE_PLATE, DATA_PLATE) if symbols[p] in present)
    total = packed.unpack(contract_to_tensor(tree, sum_dims, target_ordinal=target), model_trace.symbol_to_dim)
    total = total[(None,) * max(0, nesting + 1 - total.dim())]
    data_dim = next(f.dim for s in model_trace.nodes.values() if s["type"] == "sample"
                    for f in s["cond_indep_stack"] if f.name == DATA_PLATE)
    total = total.movedim((particle_dim, data_dim), (0, 1))
    return total.reshape(total.shape[0], total.shape[1]).expand(num_samples, args[0].shape[0])


def _args(x: Tensor, y: Tensor | None) -> tuple[Tensor, ...]:
    return (x,) if y is None else (x, y)


@torch.no_grad()
def log_weights(pair: nn.Module, x: Tensor, y: Tensor | None = None, num_samples: int = 1) -> Tensor:
    """Importance log-weights of shape (num_samples, batch): log p(x, z_k) - log q(z_k | x) per example.

    Computed from a trace of ``pair.guide`` (``z_k ~ q(z | x)``, vectorized over samples)
    and a trace of ``pair.model`` replayed on it; each site's log density is summed over
    everything but the ``data`` plate. Pass ``y`` for a pair with ``uses_labels``.
    A discrete model site marked ``infer={"enumerate": "parallel"}`` and absent from the
    guide is summed out exactly; one sampled by the guide is weighted like any other.
    """
    if num_samples < 1:
        raise PyrovaeError(f"num_samples must be a positive integer, got {num_samples}")
    args = _args(x, y)
    with isolated_params():
        nesting = plate_nesting(pair.model, pair.guide, *args)
        return trace_log_weights(pair.model, pair.guide, args, num_samples, nesting)


def check_importance(pair: nn.Module, x: Tensor, y: Tensor | None = None) -> None:
    """Refuse, for the price of two draws on the first example of ``x``, a pair that importance
    sampling cannot run (:func:`log_weights` raises its error), before any long work; the RNG
    is left as it was."""
    with forked_rng(x.device):
        try:
            log_weights(pair, x[:1], None if y is None else y[:1], num_samples=2)
        except PyrovaeError:
            raise
        except Exception as err:  # noqa: BLE001 - the pair's own error, which the long parts would meet
            raise PyrovaeError(f"importance sampling cannot run the pair: {brief(err)}") from err


@dataclass
class LogLikelihood:
    """An importance-weighted estimate of the test log-likelihood."""

    mean: float          # mean over examples of the per-example log p(x) estimate, nats per example
    stderr: float        # its standard error over examples
    per_example: Tensor  # (N,) per-example estimates, on the CPU (float64)
    k: int               # importance samples per example


@dataclass
class ImportanceEvaluation:
    """Log-likelihood, ELBO and PSIS k-hat per example, all from the same K draws each."""

    log_likelihood: LogLikelihood
    elbo: Tensor  # (N,) mean of the K log-weights: a K-sample estimate of each example's ELBO
    khat: Tensor  # (N,) Pareto k-hat of each example's weights

    @property
    def gap(self) -> Tensor:
        """(N,) ``log p(x)`` estimate minus ELBO estimate; never negative (Jensen's inequality)."""
        return self.log_likelihood.per_example - self.elbo


def _chunks(pair: nn.Module, split: Split, k: int, chunk_size: int | None, batch_size: int,
            uses_labels: bool, progress: bool = False) -> Iterator[Iterator[Tensor]]:
    """For each batch of ``split``, an iterator over its log-weights in chunks of shape
    (at most chunk_size, batch): memory is bounded by chunk_size x batch_size samples.
    With ``progress``, a progress bar over the batches on standard error."""
    if chunk_size is None:
        chunk_size = default_chunk_size(split.x.device)
    if k < 1 or chunk_size < 1 or batch_size < 1:
        raise PyrovaeError(f"k, chunk_size and batch_size must be positive, got {k}, {chunk_size}, {batch_size}")
    if len(split) == 0:
        raise PyrovaeError("the split to evaluate holds no examples")
    nesting = None
    bar = tqdm(batches(split, batch_size), total=math.ceil(len(split) / batch_size), disable=not progress,
               desc=f"importance sampling, K={k}", unit="batch", file=sys.stderr, leave=False)
    for x, y in bar:
        args = _args(x, y if uses_labels else None)
        if nesting is None:
            nesting = plate_nesting(pair.model, pair.guide, *args)
        yield _batch_chunks(pair, args, k, chunk_size, nesting)


def _batch_chunks(pair: nn.Module, args: tuple, k: int, chunk_size: int, nesting: int) -> Iterator[Tensor]:
    # Pyro's argument checks ran in plate_nesting's probe; over K draws per example they
    # would cost a pass over every sampled image, about a tenth of the work
    for start in range(0, k, chunk_size):
        with pyro.validation_enabled(False):
            lw = trace_log_weights(pair.model, pair.guide, args, min(chunk_size, k - start), nesting)
        yield lw.double()


def _summary(per_example: Tensor, k: int) -> LogLikelihood:
    n = per_example.numel()
    stderr = per_example.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return LogLikelihood(per_example.mean().item(), stderr, per_example.cpu(), k)


@torch.no_grad()
def importance_log_likelihood(pair: nn.Module, split: Split, k: int = 5000, *, chunk_size: int | None = None,
                              batch_size: int = 100, uses_labels: bool = False,
                              progress: bool = False) -> LogLikelihood:
    """Importance-weighted estimate of ``log p(x)`` for every example of ``split``.

    ``log p(x) ~ logsumexp_k log w_k - log K`` with ``K = k`` draws of the guide per example
    (Burda et al., 2016). The draws are made ``chunk_size`` at a time for ``batch_size``
    examples (by default :func:`default_chunk_size` of the split's device), and the
    log-sum-exp is accumulated across chunks, so memory is bounded by
    ``chunk_size x batch_size`` samples whatever ``k`` and the split's size.
    """
    estimates = []
    with isolated_params():
        for chunks in _chunks(pair, split, k, chunk_size, batch_size, uses_labels, progress):
            acc = None
            for lw in chunks:
                part = torch.logsumexp(lw, dim=0)
                acc = part if acc is None else torch.logaddexp(acc, part)
            estimates.append(acc - math.log(k))
    return _summary(torch.cat(estimates), k)


@torch.no_grad()
def importance_evaluation(pair: nn.Module, split: Split, k: int = 5000, *, chunk_size: int | None = None,
                          batch_size: int = 100, uses_labels: bool = False,
                          progress: bool = False) -> ImportanceEvaluation:
    """Like :func:`importance_log_likelihood`, and also each example's K-sample ELBO and the
    PSIS k-hat of its weights (which needs all K log-weights of a batch at once: memory
    ``K x batch_size`` numbers, besides the ``chunk_size x batch_size`` samples)."""
    lls, elbos, khats = [], [], []
    with isolated_params():
        for chunks in _chunks(pair, split, k, chunk_size, batch_size, uses_labels, progress):
            lw = torch.cat(list(chunks))
            lls.append(torch.logsumexp(lw, dim=0) - math.log(k))
            elbos.append(lw.mean(dim=0))
            khats.append(psis_khat(lw))
    return ImportanceEvaluation(_summary(torch.cat(lls), k), torch.cat(elbos).cpu(), torch.cat(khats))


def psis_khat(log_weights: Tensor) -> Tensor:
    """Pareto k-hat of each column of ``log_weights`` (shape (K, N)), by ArviZ's PSIS.

    The tail fit needs at least ``KHAT_MIN_SAMPLES`` (25) weights per column; with fewer
    every k-hat is NaN. A column of weights equal to within rounding (a perfect proposal:
    spread below ``1e-5 * (1 + |log w|)`` nats) gets 0, as there is no tail to fit.
    """
    lw = log_weights.detach().double().cpu()
    if lw.shape[0] < KHAT_MIN_SAMPLES:
        return torch.full(lw.shape[1:], float("nan"), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ announces a refactor on import and warns for k-hat > 0.7
        import arviz  # imported here: it is slow to import, and only evaluation needs it

        _, khat = arviz.psislw(lw.T.numpy(), reff=1.0)
    khat = torch.as_tensor(khat, dtype=torch.float64).reshape(-1)
    top = lw.max(dim=0).values
    constant = (top - lw.min(dim=0).values) <= FLAT_TOLERANCE * (1 + top.abs())
    return torch.where(constant, torch.zeros_like(khat), khat)


def khat_shares(khat: Tensor) -> dict[str, float]:
    """Fractions of examples with k-hat below 0.5 (good), 0.5 to 0.7 (usable), above 0.7
    (unreliable); NaN k-hats (too few samples) fall in none."""
    n = max(khat.numel(), 1)
    return {
        "below_0.5": (khat < KHAT_GOOD).sum().item() / n,
        "0.5_to_0.7": ((khat >= KHAT_GOOD) & (khat <= KHAT_OK)).sum().item() / n,
        "above_0.7": (khat > KHAT_OK).sum().item() / n,
    }


@dataclass
class ElboTerms:
    """The ELBO split into its two terms, nats per example:
    ``ELBO = reconstruction - kl`` with ``reconstruction = E_q[log p(x | z)]`` and
    ``kl = KL(q(z | x) || p(z))``."""

    reconstruction: float  # expected log-likelihood of the observed sites under the guide's draws
    kl: float              # KL of the guide's latent sites from the model's prior for them
    analytic_kl: bool      # True when every latent site's KL was computed in closed form

    @property
    def elbo(self) -> float:
        return self.reconstruction - self.kl


@torch.no_grad()
def elbo_terms(pair: nn.Module, split: Split, *, num_samples: int = 1, batch_size: int = 1000,
               uses_labels: bool = False, analytic_kl: bool = True) -> ElboTerms:
    """The expected log-likelihood and the KL term of the ELBO over ``split``, separately.

    .. math::

        \\mathrm{ELBO}(x) = \\mathbb{E}_{q(z | x)}[\\log p(x | z)] - \\mathrm{KL}(q(z | x) \\| p(z))

    From traces of the pair: ``num_samples`` draws of the guide per example, the model
    replayed on each. The reconstruction term sums the log-densities of the model's
    observed sites; the KL term sums, over the guide's latent sites, the closed-form
    ``KL(q || p)`` where Pyro has one for the two distributions (``analytic_kl``, as
    ``TraceMeanField_ELBO`` does), else the Monte Carlo estimate ``log q(z) - log p(z)`` at
    the draws. With ``analytic_kl=False`` and one sample, ``reconstruction - kl`` is exactly
    the single-draw estimate that ``Trace_ELBO`` makes from the same draws.

    Every model latent must be drawn by the guide (a site summed out by enumeration or
    drawn from its prior has no guide term to split off). Run it inside the pair's
    parameter scope; it leaves no parameters in Pyro's store.
    """
    if num_samples < 1 or batch_size < 1:
        raise PyrovaeError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    if len(split) == 0:
        raise PyrovaeError("the split to evaluate holds no examples")
    recon, kl, exact = 0.0, 0.0, True
    with isolated_params():
        for x, y in batches(split, batch_size):
            args = _args(x, y if uses_labels else None)
            for _ in range(num_samples):
                guide_trace = prune_subsample_sites(poutine.trace(pair.guide).get_trace(*args))
                model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(*args)
                model_trace = prune_subsample_sites(model_trace)
                model_trace.compute_log_prob()
                guide_trace.compute_log_prob()
                unmatched = [n for n, s in model_trace.nodes.items() if is_latent(s) and n not in guide_trace.nodes]
                if unmatched:
                    raise PyrovaeError(f"model latent sites {unmatched} are not drawn by the guide; elbo_terms "
                                       "needs every latent in the guide to split the ELBO into its terms")
                for name, site in model_trace.nodes.items():
                    if site["type"] == "sample" and site["is_observed"]:
                        recon += site["log_prob_sum"].item()
                for name, q_site in guide_trace.nodes.items():
                    if not is_latent(q_site):
                        continue
                    p_site = model_trace.nodes[name]
                    term = None
                    if analytic_kl:
                        try:
                            term = kl_divergence(q_site["fn"], p_site["fn"]).sum().item()
                        except NotImplementedError:
                            exact = False
                    if term is None:
                        term = (q_site["log_prob_sum"] - p_site["log_prob_sum"]).item()
                    kl += term
    n = len(split) * num_samples
    return ElboTerms(recon / n, kl / n, analytic_kl and exact)
