"""``pyrovae check``: run a model/guide pair once on a small batch and report, in plain
words, the mistakes Pyro users make most, each with the site it concerns and the fix.

Guide and model are traced on their own (``pyro.poutine.trace``; the model draws its
latents from the prior) in a fresh parameter store, on ``n`` and on ``n - 1`` examples:
the dimensions that change between the two are the batch. The kinds of finding:
``unregistered-network`` (parameters that shape a density but never pass through
``pyro.module``), ``site-mismatch`` (latents of one program missing from the other, or
shaped differently), ``outside-plate`` and ``batch-in-event`` (sites that are not per
example), ``plate-shape`` (a missing ``.to_event``), ``obs-shape`` (an observation whose
value and distribution differ in shape), ``not-reparameterized`` (guide sites without
``rsample``, not enumerated), ``param-leak`` (a second instance in the same parameter store
uses the first one's tensors), ``no-observation`` and ``trace-error``. Each estimator form
(K = 2, A = 0.5; the JIT forms behave as the plain ones) also runs once, so the report of
a clean pair says which apply.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn

from pyrovae.data import binarize, load_dataset
from pyrovae.errors import PyrovaeError, UsageError, brief
from pyrovae.estimators import FORMS, make_estimator
from pyrovae.evaluate import SampleDimensionError, check_importance
from pyrovae.rng import forked_rng
from pyrovae.train import check_data, pyro_info_silenced

__all__ = ["Finding", "Site", "Network", "Report", "check_pair", "load_batch", "refusal"]

DATA_PLATE = "data"
PLATE_FIX = "sample {} inside `with pyro.plate('data', x.shape[0]):` and .to_event(n) only the dimensions of one example"


@dataclass(frozen=True)
class Finding:
    """One problem: its ``kind``, the site (or network) it concerns, what is wrong, what to do."""

    kind: str
    site: str
    message: str
    fix: str


@dataclass(frozen=True)
class Site:
    """A sample site of the model or the guide, as traced on the full batch."""

    program: str
    name: str
    dist: str
    batch_shape: tuple[int, ...]
    event_shape: tuple[int, ...]
    value_shape: tuple[int, ...]
    observed: bool
    reparameterized: bool
    enumerated: bool
    auxiliary: bool
    in_data_plate: bool
    scale: float | None = 1.0  # poutine.scale's factor on its log density; None when it varies by example

    @property
    def role(self) -> str:
        if self.observed or self.enumerated:
            return "observed" if self.observed else "enumerated"
        return "latent" if self.program == "model" else "reparameterized" if self.reparameterized else "score function"


@dataclass(frozen=True)
class Network:
    """A top-level submodule (or parameter) of the pair: its size, the ``pyro.module`` names
    it is registered under, and the programs whose densities depend on it."""

    name: str
    size: int
    registered_as: tuple[str, ...]
    used_in: tuple[str, ...]


@dataclass
class Report:
    """What :func:`check_pair` found; ``ok`` when it found no problem."""

    pair: str
    batch_size: int
    findings: list[Finding] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    free_params: dict[str, int] = field(default_factory=dict)  # pyro.param outside any network: name -> size
    estimators: dict[str, str | None] = field(default_factory=dict)  # form -> None where it applies, else why not

    @property
    def ok(self) -> bool:
        return not self.findings

    def format(self) -> str:
        """The report as ``pyrovae check`` prints it."""
        if self.findings:
            n = len(self.findings)
            lines = [f"{self.pair}: {n} problem{'s' * (n > 1)} on a batch of {self.batch_size}:"]
            for f in self.findings:
                lines += [f"- [{f.kind}] {f.site}: {f.message}", f"  fix: {f.fix}"]
            return "\n".join(lines)
        lines = [f"{self.pair}: no problems found on a batch of {self.batch_size}.", "sites (batch | event shape):"]
        lines += [f"  {s.program:<5} {s.name:<8} {s.dist:<16} {str(s.batch_shape):>8} | {str(s.event_shape):<14} "
                  f"{s.role}" for s in self.sites]
        lines.append("parameters:")
        for net in self.networks:
            where = ", ".join(f"pyro.module {r!r}" for r in net.registered_as) or "not registered"
            used = f"used in {' and '.join(net.used_in)}" if net.used_in else "unused in this call"
            lines.append(f"  {net.name:<14} {net.size:>10,}  ({where}; {used})")
        lines += [f"  {name:<14} {size:>10,}  (pyro.param)" for name, size in self.free_params.items()]
        fine = ", ".join(p for p, why in self.estimators.items() if why is None) or "none"
        lines.append(f"estimators that apply: {fine} (and their jit- forms)")
        return "\n".join(lines + [f"  not {p}: {why}" for p, why in self.estimators.items() if why is not None])


class _Failed(Exception):
    """A program raised; ``finding`` says which and how."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


def _trace(pair: nn.Module, args: tuple) -> dict[str, Trace]:
    """Guide and model traced on their own; a model that cannot draw from its prior (an improper
    one) is replayed on the guide's draws. An error becomes a finding (raised as :class:`_Failed`)."""
    traces: dict[str, Trace] = {}
    for program in ("guide", "model"):
        given = tuple(a.clone() for a in args)  # the caller's batch stays as it was, whatever the program does
        try:
            try:
                traces[program] = poutine.trace(getattr(pair, program)).get_trace(*given)
            except NotImplementedError:  # e.g. ImproperUniform does not support sampling
                if program == "guide":
                    raise
                traces[program] = poutine.trace(poutine.replay(pair.model, traces["guide"])).get_trace(*given)
            traces[program] = prune_subsample_sites(traces[program])
        except Exception as err:  # noqa: BLE001 - whatever the user's program raises is reported
            m = re.search(r"inside plate\('([^']+)'\) at site (\S+) dim (-?\d+), (\d+) vs (\d+)", str(err))
            if m and m.group(1) == DATA_PLATE and int(m.group(4)) != args[0].shape[0]:
                raise _Failed(Finding(
                    "plate-size", m.group(2), f"in {program}(), pyro.plate('data') has size {m.group(4)}, but the "
                    f"batch holds {args[0].shape[0]} examples", "use pyro.plate('data', x.shape[0])")) from err
            if m:
                plate, site, dim, size, got = m.groups()
                raise _Failed(Finding(
                    "plate-shape", site, f"in {program}(), {site} has size {got} at dim {dim}, where "
                    f"pyro.plate({plate!r}) of size {size} sits: dimensions of one example are left in the batch shape",
                    "declare them with .to_event(n), e.g. dist.Normal(loc, scale).to_event(1) for a vector latent")) from err
            raise _Failed(Finding("trace-error", program, f"{program}() raised {brief(err)}",
                                  f"run pyro.poutine.trace(pair.{program}).get_trace(x) to see where")) from err
        changed = [i for i, (a, g) in enumerate(zip(args, given)) if not torch.equal(a, g)]
        if changed:
            raise _Failed(Finding("changes-input", program, f"{program}() changed its input "
                                  f"{'xy'[changed[0]] if changed[0] < 2 else 'argument'} in place, so the batch the "
                                  "caller holds is no longer the one observed", "use out-of-place operations "
                                  "(x * 0.5, not x.mul_(0.5)); clone the input first if an in-place one is needed"))
    return traces


def _sites(traces: dict[str, Trace]) -> dict[tuple[str, str], Site]:
    out = {}
    for program, trace in traces.items():
        for name, s in trace.nodes.items():
            if s["type"] == "sample":
                fn, base = s["fn"], s["fn"]
                while hasattr(base, "base_dist"):
                    base = base.base_dist
                out[(program, name)] = Site(
                    program, name, type(base).__name__, tuple(fn.batch_shape), tuple(fn.event_shape),
                    tuple(s["value"].shape), s["is_observed"], bool(fn.has_rsample), "enumerate" in s["infer"],
                    bool(s["infer"].get("is_auxiliary")), any(f.name == DATA_PLATE for f in s["cond_indep_stack"]),
                    _scalar(s["scale"]))
    return out


def _scalar(scale: float | Tensor) -> float | None:
    if torch.is_tensor(scale):
        return float(scale) if scale.numel() == 1 else None
    return float(scale)


def _densities(traces: dict[str, Trace]) -> tuple[dict[str, Tensor], list[Finding]]:
    """Each program's summed log density, and a finding for each that cannot be evaluated."""
    out, errors = {}, []
    for program, trace in traces.items():
        try:
            out[program] = trace.log_prob_sum()
        except Exception as err:  # noqa: BLE001 - whatever the user's distributions raise is reported
            binary = "Boolean" in str(err) or "Binary" in str(err)
            site = re.search(r"at site '([^']+)'", str(err))
            errors.append(Finding(
                "trace-error", site.group(1) if site else program, f"the log density of {program}() cannot be evaluated: {brief(err)}",
                "a Bernoulli observation needs binary data: give the pair likelihood = pyrovae.likelihoods.Bernoulli() "
                "so that pyrovae binarizes the images" if binary else "check each site's distribution against its value"))
    return out, errors


def _connected(totals: list[Tensor], tensors: list[Tensor]) -> list[bool]:
    """Whether the sum of ``totals`` depends on each tensor (through autograd)."""
    totals = [t for t in totals if torch.is_tensor(t) and t.requires_grad]
    if not totals or not tensors:
        return [False] * len(tensors)
    return [g is not None for g in torch.autograd.grad(sum(totals), tensors, allow_unused=True)]


def _leaves(traces: dict[str, Trace]) -> dict[int, tuple[str, Tensor]]:
    """The tensors behind the param sites (what SVI optimizes), by id, with their names."""
    out = {}
    for trace in traces.values():
        for name, s in trace.nodes.items():
            if s["type"] == "param":
                leaf = s["value"].unconstrained() if hasattr(s["value"], "unconstrained") else s["value"]
                out[id(leaf)] = (name, leaf)
    return out


def _shape_findings(sites: dict, smaller: dict) -> list[Finding]:
    found: dict[tuple[str, str], tuple[list[str], Site, Site]] = {}
    for (program, name), s in sites.items():
        other = smaller.get((program, name), s)
        kind = "batch-in-event" if s.event_shape != other.event_shape else "outside-plate" if not s.in_data_plate else ""
        if kind:
            found.setdefault((kind, name), ([], s, other))[0].append(f"{program}()")
    out = []
    for (kind, name), (programs, s, other) in found.items():
        where = " and ".join(programs)
        if kind == "batch-in-event":
            out.append(Finding(kind, name, f"in {where}, {name} has event shape {s.event_shape}, which holds the "
                               "batch: the whole batch is one example, so per-example evaluation (importance "
                               "weights, log p(x)) is impossible", PLATE_FIX.format(name)))
        else:
            why = (f"its batch shape {s.batch_shape} carries the batch, but no plate says so"
                   if s.batch_shape != other.batch_shape else "it is global, which per-example evaluation cannot use")
            out.append(Finding(kind, name, f"in {where}, {name} is outside pyro.plate('data'): {why}",
                               PLATE_FIX.format(name) + " (the plate must be called 'data')"))
    return out


def _match_findings(sites: dict) -> list[Finding]:
    guide = {n: s for (p, n), s in sites.items() if p == "guide" and not s.observed and not s.auxiliary}
    model = {n: s for (p, n), s in sites.items() if p == "model" and not s.observed}
    observes = any(s.observed for (p, _), s in sites.items() if p == "model")
    out = [Finding("site-mismatch", n, f"guide() samples {n!r} but model() has no site of that name (model latents: "
                   f"{', '.join(model) or 'none'}), so q({n}) approximates nothing", "name the guide's site after "
                   "the model latent it approximates (or mark a helper infer={'is_auxiliary': True})")
           for n in guide.keys() - model.keys()]
    out += [Finding("site-mismatch", n, f"model() samples {n!r} but guide() has no site of that name (guide latents: "
                    f"{', '.join(guide) or 'none'}), so it is drawn from the prior, never inferred from x"
                    , f"add pyro.sample({n!r}, ...) to the guide, or mark a "
                    "discrete model site infer={'enumerate': 'parallel'} and train with --elbo enum")
            for n in model.keys() - guide.keys() if not model[n].enumerated and (observes or n != "x")]
    for n in guide.keys() & model.keys():
        g, m = guide[n], model[n]
        if (g.batch_shape, g.event_shape) != (m.batch_shape, m.event_shape):
            out.append(Finding("site-mismatch", n, f"guide() draws {n!r} with batch shape {g.batch_shape} and event "
                               f"shape {g.event_shape}, model() expects {m.batch_shape} and {m.event_shape}",
                               "give the guide's distribution the model's size and the same .to_event(n)"))
        if None not in (g.scale, m.scale) and g.scale != m.scale:
            out.append(Finding("scale-mismatch", n, f"model() scales the log density of {n!r} by {m.scale:g} and "
                               f"guide() by {g.scale:g}: the ELBO is then no bound on log p(x) (to weigh the KL "
                               "term, as a beta-VAE does, both must be scaled alike)",
                               "put the same poutine.scale around the site in both programs, or in neither"))
    return out


def _obs_findings(sites: dict) -> list[Finding]:
    observed = [s for (p, _), s in sites.items() if p == "model" and s.observed]
    if not observed:
        return [Finding("no-observation", "x", "model() observes nothing, so the ELBO does not depend on the data"
                        + " (its 'x' is a latent)" * any(n == "x" for _, n in sites), "pass the data to the "
                        "observation inside the plate: pyro.sample('x', likelihood, obs=x)")]
    out = []
    for s in observed:
        shape = s.batch_shape + s.event_shape
        if s.value_shape != shape and s.dist != "Unit":  # a pyro.factor has no value
            try:
                full = torch.broadcast_shapes(s.value_shape, shape)
                lp = f"Pyro broadcasts the two, so log p({s.name} | z) gets shape {tuple(full)[:len(full) - len(s.event_shape)]}"
            except RuntimeError:
                lp = "the two do not broadcast"
            out.append(Finding("obs-shape", s.name, f"model() observes {s.name} of shape {s.value_shape} with a "
                               f"{s.dist} of shape {shape} (batch {s.batch_shape}, event {s.event_shape}); {lp}",
                               f"give the distribution the observation's shape, e.g. reshape the decoder's output "
                               f"to x.shape and .to_event({len(s.value_shape) - 1})"))
    return out


def _networks(pair: nn.Module, traces: dict[str, Trace], densities: dict[str, Tensor]
              ) -> tuple[list[Network], dict[str, int], list[Finding]]:
    leaves = _leaves(traces)
    named = [(n, p) for n, p in pair.named_parameters() if p.requires_grad]
    used = {prog: _connected([densities.get(prog)], [p for _, p in named]) for prog in traces}
    nets: dict[str, dict] = {}
    for i, (name, p) in enumerate(named):
        net = nets.setdefault(name.split(".")[0], {"size": 0, "as": set(), "used": [], "missing": []})
        net["size"] += p.numel()
        net["used"] += [prog for prog in ("model", "guide") if used[prog][i] and prog not in net["used"]]
        if id(p) in leaves:
            net["as"].add(leaves[id(p)][0].split("$$$")[0])
        elif any(used[prog][i] for prog in used):
            net["missing"].append((name, p.numel()))
    findings = []
    for net, info in nets.items():
        if info["missing"]:
            size = sum(k for _, k in info["missing"])
            which = "" if size == info["size"] else f" (parameters {', '.join(n for n, _ in info['missing'])})"
            findings.append(Finding(
                "unregistered-network", net, f"the network {net}{which} is used in {' and '.join(info['used'])}() but "
                f"its {size:,} parameters were never registered with pyro.module, so SVI never updates them: they "
                "would keep their initial values", f"call pyro.module({net!r}, self.{net}) at the top of "
                f"{info['used'][0]}()"))
    own = {id(p) for p in pair.parameters()}
    free = {name: leaf.numel() for key, (name, leaf) in leaves.items() if key not in own}
    return [Network(n, i["size"], tuple(sorted(i["as"])), tuple(i["used"])) for n, i in nets.items()], free, findings


def _leak_findings(first: nn.Module, second: nn.Module, args: tuple) -> list[Finding]:
    """Run both instances in one parameter store: does the second's density use the first's tensors?"""
    with pyro.get_param_store().scope():
        candidates = {**_leaves(_trace(first, args)), **{id(p): (n, p) for n, p in first.named_parameters()}}
        candidates = [v for v in candidates.values() if v[1].requires_grad]
        hits = _connected(list(_densities(_trace(second, args))[0].values()), [t for _, t in candidates])
    out = []
    for (name, leaf), hit in zip(candidates, hits):
        if hit and "$$$" not in name and all(leaf is not p for p in second.parameters()):
            out.append(Finding("param-leak", name, f"pyro.param({name!r}) has a fixed name and lives in Pyro's "
                               "parameter store, not in the pair: a second instance in the same store reads and "
                               f"trains the first one's {name!r}. pyrovae's train, eval and compare give each run its "
                               "own store, but your own SVI loop or notebook may not, and pair.state_dict() lacks it",
                               f"make {name} an nn.Parameter of a submodule that the pair registers with pyro.module"))
        elif hit:
            out.append(Finding("param-leak", name.split("$$$")[0], f"the network {name.split('$$$')[0]} is one object "
                               "shared by every instance of the pair (a class attribute or a global), so training one "
                               "trains them all", "create the network in __init__ (self.name = ...)"))
    return out


def refusal(pair: nn.Module, estimator: str, args: tuple) -> str | None:
    """One step of ``estimator`` on ``pair`` with ``args`` (in a parameter store of its own,
    gradients cleared after): None where it works, else why not (the error, shortened)."""
    try:
        with pyro_info_silenced(), pyro.get_param_store().scope():
            make_estimator(estimator).loss_and_grads(pair.model, pair.guide, *args)
        return None
    except Exception as err:  # noqa: BLE001 - the reason is reported
        return brief(err)
    finally:
        pair.zero_grad(set_to_none=True)


def _estimators(pair: nn.Module, args: tuple) -> dict[str, str | None]:
    """Each estimator form, without the JIT ones, run once: None where it works, else its error."""
    return {form.pattern: refusal(pair, form.pattern.replace("-A", "-0.5").replace("-K", "-2"), args)
            for form in FORMS if not form.pattern.startswith("jit-")}


def _sample_dim_findings(pair: nn.Module, args: tuple) -> list[Finding]:
    """Importance sampling (eval's log p(x), compare, the gap split) runs the pair with a
    dimension of draws left of its plates; a pair that breaks there is a finding."""
    mode = pair.training
    try:
        with pyro.get_param_store().scope():
            pair.eval()  # as eval runs it: a batch norm, say, takes one image then
            check_importance(pair, *args)
    except SampleDimensionError as err:
        cause = brief(err.__cause__) if err.__cause__ is not None else str(err)
        return [Finding("sample-dim", "model/guide", "importance sampling (eval's log p(x), compare, iwae-K, dreg-K) "
                        f"runs the pair with its draws in a leading sample dimension, and it fails there: {cause}",
                        "index tensors from the right and expand other inputs to the latent's batch shape, e.g. "
                        "torch.cat([z, y.expand(*z.shape[:-1], -1)], -1)")]
    except PyrovaeError as err:
        return [Finding("trace-error", "model/guide", f"{err}, as eval's log p(x) runs it",
                        "run pyrovae.evaluate.log_weights(pair, x) to see where")]
    finally:
        pair.train(mode)
    return []


def _reparam_findings(sites: dict, estimators: dict[str, str | None]) -> list[Finding]:
    refused = [p for p, why in estimators.items() if why is not None and "reparam" in why]
    return [Finding("not-reparameterized", s.name, f"guide() draws {s.name} from a {s.dist}, which has no rsample: its "
                    "gradients come from the score function, which is noisy"
                    + f", and {', '.join(refused)} refuse the pair" * bool(refused),
                    f"if {s.name} is discrete, mark it infer={{'enumerate': 'parallel'}} and train with --elbo enum "
                    "(summed out exactly) or --elbo graph (Rao-Blackwellized score-function gradients); if it is "
                    "continuous, use a distribution with rsample")
            for s in sites.values() if s.program == "guide" and not s.observed and not s.reparameterized
            and not s.enumerated]


def check_pair(pair: nn.Module | Callable[[], nn.Module], x: Tensor, y: Tensor | None = None,
               name: str | None = None) -> Report:
    """Run ``pair`` once on the batch ``x`` (and labels ``y``, passed on when given) and report its
    problems, or for a clean pair its sites, networks and the estimators that apply.

    :param pair: a pair, or a function (such as its class) that builds one; the leak check runs
        two instances, the second a deep copy when ``pair`` is an instance.
    :param x: at least 2 examples; ``x[:-1]`` runs too, to tell the batch from other dimensions.
    :param name: how the report names the pair (default: its class name).
    """
    if x.shape[0] < 2:
        raise UsageError(f"the check needs a batch of at least 2 examples, got {x.shape[0]}")

    def batch(n: int) -> tuple:
        return (x[:n],) if y is None else (x[:n], y[:n])

    store = pyro.get_param_store()
    with forked_rng(x.device), pyro.validation_enabled(True), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = pair if isinstance(pair, nn.Module) else pair()
        report = Report(name or type(first).__name__, x.shape[0])
        try:
            with store.scope():
                traces = _trace(first, batch(x.shape[0]))
                densities, broken = _densities(traces)
                report.networks, report.free_params, unregistered = _networks(first, traces, densities)
            with store.scope():
                smaller = _sites(_trace(first, batch(x.shape[0] - 1)))
        except _Failed as failed:
            report.findings.append(failed.finding)
            return report
        sites = _sites(traces)
        report.sites = list(sites.values())
        shapes = _shape_findings(sites, smaller)
        shapes += _match_findings(sites) + (_obs_findings(sites) if not shapes else [])
        report.findings += shapes + (broken if not shapes else []) + unregistered
        try:
            second = copy.deepcopy(pair) if isinstance(pair, nn.Module) else pair()
            report.findings += _leak_findings(first, second, batch(x.shape[0]))
        except _Failed:
            pass  # the first instance ran; a second one that fails has nothing to add
        report.estimators = _estimators(first, batch(x.shape[0]))
        report.findings += _reparam_findings(sites, report.estimators)
        if not report.findings:
            report.findings += _sample_dim_findings(first, batch(x.shape[0]))
    unique: dict[tuple[str, str], Finding] = {}
    report.findings = [unique.setdefault((f.kind, f.site), f) for f in report.findings if (f.kind, f.site) not in unique]
    return report


def load_batch(pair: nn.Module, dataset: str = "fashion-mnist", size: int = 8, root: str | Path | None = None,
               seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """The first ``size`` training images of ``dataset`` as training feeds them to ``pair``:
    binarized for a Bernoulli likelihood, with labels when the pair ``uses_labels``."""
    data = load_dataset(dataset, root=root, train_size=size, test_size=1)
    check_data(pair, data)
    x = data.train.x
    if getattr(getattr(pair, "likelihood", None), "binarize", False):
        x = binarize(x, torch.Generator().manual_seed(seed))
    return x, data.train.y if getattr(pair, "uses_labels", False) else None
