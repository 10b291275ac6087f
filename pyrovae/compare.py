"""Comparing ELBO estimators on one model/guide pair: bounds, gradient signal-to-noise, time.

For every estimator and seed the same pair is built from the same seed, trained on the
same data with the same batches, and measured:

- ``test_elbo``: the ELBO on the test split after training (nats per example);
- ``log_likelihood``: the importance-weighted estimate of log p(x) with K samples on
  the first ``ll_size`` test examples, and its standard error;
- ``seconds_per_epoch``: the median over epochs;
- gradient signal-to-noise ratio ``|E g| / sd(g)`` per parameter entry over repeated
  gradient draws on one fixed minibatch (Rainforth et al. 2018, "Tighter Variational
  Bounds are Not Necessarily Better"), averaged over the guide's parameters and over the
  model's, at initialization and after training.

Each (estimator, seed) trains in its own run directory under ``out``; a stopped
comparison started again with the same options resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pyro
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.infer import ELBO
from torch import nn
from tqdm.auto import tqdm

from pyrovae.check import refusal
from pyrovae.data import Dataset, Split, evaluation_split
from pyrovae.errors import UsageError
from pyrovae.estimators import make_estimator
from pyrovae.evaluate import check_importance, importance_log_likelihood
from pyrovae.pairs import build
from pyrovae.rng import forked_rng
from pyrovae.runs import CHECKPOINT
from pyrovae.train import pyro_info_silenced, resolve_device, train

__all__ = ["Settings", "SNR", "gradient_snr", "compare", "summarize"]

@dataclass(frozen=True)
class Settings:
    """What a comparison trains and measures; identical for every estimator."""

    model: str
    model_args: dict[str, Any]
    estimators: tuple[str, ...]
    seeds: int = 3
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    device: str = "cpu"
    iwae_k: int = 1000
    ll_size: int = 1000
    snr_draws: int = 100
    snr_batch: int = 64

    def __post_init__(self) -> None:
        if not self.estimators:
            raise UsageError("--elbos needs at least one estimator name")
        for name in self.estimators:
            make_estimator(name)  # an unknown name fails here, before any training
        twice = sorted({name for name in self.estimators if self.estimators.count(name) > 1})
        if twice:
            raise UsageError(f"--elbos names {', '.join(twice)} more than once; each estimator is one column of seeds")
        small = {k: v for k, v in asdict(self).items() if isinstance(v, int) and not isinstance(v, bool) and v < 1}
        if small:
            raise UsageError(f"these settings must be positive: {small}")
        if self.snr_draws < 2:
            raise UsageError("--snr-draws must be at least 2 to estimate a standard deviation")
        resolve_device(self.device)  # an unknown or absent device fails here, before anything is written


@dataclass(frozen=True)
class SNR:
    """Mean over parameter entries of ``|mean| / sd`` of their gradient draws (entries whose
    gradient never varies, such as weights of ReLU units that never fire, are left out)."""

    guide: float
    model: float


def _param_groups(pair: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> tuple[list, list]:
    """The unconstrained parameter leaves seen by the guide alone, and all the others (the model's)."""
    args = (x, y) if y is not None else (x,)
    with poutine.block(), forked_rng(x.device):
        guide_trace = poutine.trace(pair.guide).get_trace(*args)
        # replayed on the guide's draws: a model with an improper prior (the autoencoder's) cannot draw its own
        model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace), param_only=True).get_trace(*args)
    leaves = lambda tr: {id(s["value"].unconstrained()): s["value"].unconstrained()  # noqa: E731
                         for s in tr.nodes.values() if s["type"] == "param"}
    guide, model = leaves(guide_trace), leaves(model_trace)
    return [p for i, p in guide.items() if i not in model], list(model.values())


def gradient_snr(pair: nn.Module, estimator: ELBO, x: torch.Tensor, y: torch.Tensor | None = None,
                 draws: int = 100) -> SNR:
    """Gradient signal-to-noise of ``estimator`` on the fixed minibatch ``x``.

    Runs inside the caller's parameter scope; leaves no gradients behind, and puts the
    pair's buffers back afterwards (a pair that counts its training steps in a buffer, as
    the GMVAE does, must not count these draws). Sums and sums of squares are accumulated
    in float64, so memory does not grow with ``draws``.
    """
    buffers = {name: b.clone() for name, b in pair.named_buffers()}
    args = (x, y) if y is not None else (x,)
    guide, model = _param_groups(pair, x, y)
    groups = {"guide": guide, "model": model}
    sums = {k: [torch.zeros_like(p, dtype=torch.float64) for p in ps] for k, ps in groups.items()}
    squares = {k: [torch.zeros_like(p, dtype=torch.float64) for p in ps] for k, ps in groups.items()}
    everything = guide + model
    with pyro_info_silenced():  # an estimator's first call may log its guess of max_plate_nesting
        for _ in range(draws):
            for p in everything:
                p.grad = None
            estimator.loss_and_grads(pair.model, pair.guide, *args)
            for k, ps in groups.items():
                for p, s, q in zip(ps, sums[k], squares[k]):
                    g = p.grad.double() if p.grad is not None else torch.zeros_like(s)
                    s += g
                    q += g * g
    for p in everything:
        p.grad = None
    with torch.no_grad():
        for name, b in pair.named_buffers():
            b.copy_(buffers[name])
    result = {}
    for k in groups:
        ratios = []
        for s, q in zip(sums[k], squares[k]):
            mean = s / draws
            sd = ((q / draws - mean**2).clamp_min(0) * draws / (draws - 1)).sqrt()
            ratios.append((mean.abs() / sd)[sd > 0])  # entries that never vary (dead units) have no SNR
        result[k] = torch.cat(ratios).mean().item() if ratios and torch.cat(ratios).numel() else float("nan")
    return SNR(**result)


def _snr_batch(data: Dataset, settings: Settings, binarize: bool) -> Split:
    batch = Split(data.train.x[: settings.snr_batch], data.train.y[: settings.snr_batch])
    return evaluation_split(batch, binarize)


def _one(settings: Settings, data: Dataset, name: str, seed: int, run_dir: Path) -> dict[str, Any]:
    row_file = run_dir / "row.json"
    if row_file.exists():
        return json.loads(row_file.read_text())
    pyro.set_rng_seed(seed)
    pair = build(settings.model, settings.model_args)
    pair.to(settings.device)
    binarize = getattr(getattr(pair, "likelihood", None), "binarize", False)
    labels = getattr(pair, "uses_labels", False)
    fixed = _snr_batch(data, settings, binarize).to(settings.device)
    y = fixed.y if labels else None
    estimator = make_estimator(name)
    with pyro.get_param_store().scope():
        init = gradient_snr(pair, estimator, fixed.x, y, settings.snr_draws)
    resume = (run_dir / CHECKPOINT).exists()
    run = train(pair, data, epochs=settings.epochs, elbo=name, batch_size=settings.batch_size, lr=settings.lr,
                seed=seed, device=settings.device, out=run_dir, resume=resume, quiet=True)
    test = evaluation_split(data.test, binarize).to(settings.device)
    test = Split(test.x[: settings.ll_size], test.y[: settings.ll_size])
    with run.param_scope():
        ll = importance_log_likelihood(run.pair, test, settings.iwae_k, uses_labels=labels)
        end = gradient_snr(run.pair, estimator, fixed.x, y, settings.snr_draws)
    row = {
        "estimator": name, "seed": seed,
        "test_elbo": run.metrics[-1]["test_elbo"],
        "log_likelihood": ll.mean, "log_likelihood_stderr": ll.stderr, "k": ll.k, "ll_examples": len(test),
        "snr_examples": len(fixed),
        "seconds_per_epoch": statistics.median(r["seconds"] for r in run.metrics),
        "snr_guide_init": init.guide, "snr_model_init": init.model,
        "snr_guide_end": end.guide, "snr_model_end": end.model,
        "curve": [r["test_elbo"] for r in run.metrics],
    }
    row_file.write_text(json.dumps(row) + "\n")
    return row


def compare(settings: Settings, data: Dataset, out: str | Path, quiet: bool = False) -> list[dict[str, Any]]:
    """Train and measure every estimator on every seed; write ``results.csv``,
    ``results.md``, ``curves.png`` and ``snr.png`` into ``out`` and return the rows."""
    _check_pair(settings, data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "settings.json"
    data_of = {"dataset": data.name, "train_size": len(data.train), "test_size": len(data.test)}
    current = json.loads(json.dumps({**asdict(settings), **data_of}))
    if saved.exists() and json.loads(saved.read_text()) != current:
        raise UsageError(f"{out} holds a comparison with other settings or data ({saved}); choose another --out")
    saved.write_text(json.dumps(current, indent=2) + "\n")
    jobs = [(name, seed) for seed in range(settings.seeds) for name in settings.estimators]
    rows = []
    show_bar = not quiet and sys.stderr.isatty()  # else, unless quiet, a line per run (a log has no use for a bar)
    bar = tqdm(jobs, disable=not show_bar, file=sys.stderr, desc="compare")
    for i, (name, seed) in enumerate(bar, 1):
        bar.set_description(f"compare: {name}, seed {seed}")
        rows.append(_one(settings, data, name, seed, out / f"{name}-seed{seed}"))
        if not quiet and not show_bar:
            print(f"compare: {name}, seed {seed} done ({i} of {len(jobs)})", file=sys.stderr, flush=True)
    _write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(summarize(rows, settings) + "\n")
    _plot_curves(rows, out / "curves.png")
    _plot_snr(rows, out / "snr.png")
    return rows


def _check_pair(settings: Settings, data: Dataset) -> None:
    """Refuse, before any training, a pair that the log-likelihood of every run could not be
    computed for, or that one of the estimators refuses (one untrained instance, one test
    image, the RNG untouched)."""
    device = torch.device(settings.device)
    with forked_rng(device), pyro.get_param_store().scope():
        pair = build(settings.model, settings.model_args).to(device)
        binarize = getattr(getattr(pair, "likelihood", None), "binarize", False)
        first = evaluation_split(Split(data.test.x[:1], data.test.y[:1]), binarize).to(device)
        y = first.y if getattr(pair, "uses_labels", False) else None
        check_importance(pair, first.x, y)
        args = (first.x,) if y is None else (first.x, y)
        for name in settings.estimators:
            why = refusal(pair, name, args)
            if why is not None:
                raise UsageError(f"{name} cannot train {settings.model}: {why}")


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = [k for k in rows[0] if k != "curve"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _by_estimator(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["estimator"], []).append(row)
    return groups


def _mean_sd(values: Sequence[float]) -> str:
    if any(math.isnan(v) for v in values):  # an SNR with no varying entry; statistics cannot take NaN
        return "nan"
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def summarize(rows: list[dict[str, Any]], settings: Settings) -> str:
    """A markdown table: mean ± standard deviation over seeds for each estimator."""
    header = ["estimator", "test ELBO", f"log p(x), K={settings.iwae_k}", "s/epoch",
              "SNR guide init", "SNR guide end", "SNR model init", "SNR model end"]
    keys = ["test_elbo", "log_likelihood", "seconds_per_epoch",
            "snr_guide_init", "snr_guide_end", "snr_model_init", "snr_model_end"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, group in _by_estimator(rows).items():
        lines.append(f"| {name} | " + " | ".join(_mean_sd([r[k] for r in group]) for k in keys) + " |")
    n, n_snr = rows[0]["ll_examples"], rows[0].get("snr_examples", settings.snr_batch)
    lines.append(f"\n{settings.model}, {settings.epochs} epochs, {settings.seeds} seed(s); nats per example; "
                 f"log p(x) on the first {n} test examples; SNR = mean |E g| / sd(g) over "
                 f"{settings.snr_draws} draws on {n_snr} fixed training examples.")
    return "\n".join(lines)


def _plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, group in _by_estimator(rows).items():
        curves = torch.tensor([r["curve"] for r in group])
        epochs = range(1, curves.shape[1] + 1)
        ax.plot(epochs, curves.mean(0), marker="o", label=name)
        if len(group) > 1:
            ax.fill_between(epochs, curves.min(0).values, curves.max(0).values, alpha=0.2)
    ax.set(xlabel="epoch", ylabel="test ELBO (nats per example)", title="Test ELBO by estimator (band: seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_snr(rows: list[dict[str, Any]], path: Path) -> None:
    groups = _by_estimator(rows)
    names = list(groups)
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    width = 0.38
    for ax, part in zip(axes, ("guide", "model")):
        for i, when in enumerate(("init", "end")):
            values = [statistics.fmean(r[f"snr_{part}_{when}"] for r in groups[n]) for n in names]
            ax.bar([j + (i - 0.5) * width for j in range(len(names))], values, width, label=when)
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set(title=f"{part} gradient SNR", ylabel="mean |E g| / sd(g)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
