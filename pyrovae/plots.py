"""Figures: image grids (torchvision's ``save_image``/``make_grid``), latent spaces, curves.

Every figure is a PNG. Plots are drawn with matplotlib's object-oriented API on the Agg
canvas, so nothing needs a display and the user's pyplot backend is left alone. Latent
codes and decoded images are read from traces of the pair (the guide's mean of its
continuous latent site, the mean of the model's observation given a latent value), so the
pictures need nothing of a pair beyond ``model`` and ``guide``; its optional methods
``sample(n)``, ``reconstruct(x)``, ``encode(x)``, ``decode(z)``, ``sample_by_label(n)``
and ``sample_by_component(n)`` are used where present. A pair sets one of them to ``None``
to say it has no such figure: ``decode = None`` for a model whose ``p(x | z)`` needs more
than ``z`` (a condition taken from ``x`` itself), which no figure decoding a latent alone
could show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from pyrovae.data import Split
from pyrovae.evaluate import KHAT_OK, is_latent, isolated_params
from pyrovae.rng import forked_rng

__all__ = [
    "FigureUnavailable",
    "Figures",
    "save_samples",
    "save_reconstructions",
    "save_training_curves",
    "save_interpolations",
    "save_latent_scatter",
    "save_manifold",
    "save_rows",
    "save_worst_khat",
    "save_posterior_comparison",
    "save_figures",
    "encode_means",
    "decode_means",
]


def _save_image(*args: Any, **kwargs: Any) -> None:
    from torchvision.utils import save_image  # imported on first use: importing torchvision takes seconds

    save_image(*args, **kwargs)


def _make_grid(*args: Any, **kwargs: Any) -> Tensor:
    from torchvision.utils import make_grid

    return make_grid(*args, **kwargs)


class FigureUnavailable(TypeError):
    """The pair or the data cannot give this figure (a missing method, a latent that is not 2-D, ...)."""


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    fig.savefig(path, dpi=100)
    return Path(path)


def _check_images(x_shape: Sequence[int]) -> None:
    if not (len(x_shape) == 3 and x_shape[0] in (1, 3)):
        raise FigureUnavailable(f"examples of shape {tuple(x_shape)} are not images of shape (1 or 3, H, W)")


def save_samples(pair: nn.Module, path: str | Path, n: int = 64, nrow: int = 8) -> Path:
    """A grid of ``n`` images from ``pair.sample(n)``."""
    if not callable(getattr(pair, "sample", None)):
        raise FigureUnavailable(f"{type(pair).__name__} has no sample(n) method, so it cannot draw images")
    _save_image(pair.sample(n).clamp(0, 1).cpu(), path, nrow=nrow, padding=2, pad_value=1.0)
    return Path(path)


def save_reconstructions(pair: nn.Module, x: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Rows of inputs, each followed by a row of their reconstructions by ``pair.reconstruct``."""
    if not callable(getattr(pair, "reconstruct", None)):
        raise FigureUnavailable(f"{type(pair).__name__} has no reconstruct(x) method")
    recon = pair.reconstruct(x).clamp(0, 1)
    rows = [t for i in range(0, x.shape[0], nrow) for t in (x[i : i + nrow], recon[i : i + nrow])]
    _save_image(torch.cat(rows).cpu(), path, nrow=nrow, padding=2, pad_value=1.0)
    return Path(path)


def save_training_curves(metrics: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Train and test ELBO per epoch (nats per example) from a run's ``metrics.jsonl`` records."""
    if not metrics:
        raise FigureUnavailable("the run has no epoch's record (its metrics.jsonl is empty or missing)")
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in metrics]
    for key, label in (("train_elbo", "train ELBO"), ("test_elbo", "test ELBO")):
        ax.plot(epochs, [r[key] for r in metrics], marker="o", label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="ELBO (nats per example, higher is better)", title="Training curves")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


# latent codes and decoded images from traces of the pair --------------------------------

def _args(x: Tensor, y: Tensor | None) -> tuple[Tensor, ...]:
    return (x,) if y is None else (x, y)


def _latent_site(pair: nn.Module, x: Tensor, y: Tensor | None) -> tuple[str, Any]:
    """The guide's continuous latent site for ``x``: ``z`` if there is one, else the only one."""
    with poutine.block(), forked_rng(x.device):
        trace = poutine.trace(pair.guide).get_trace(*_args(x, y))
    sites = {n: s for n, s in trace.nodes.items() if is_latent(s) and not s["fn"].has_enumerate_support}
    if "z" in sites:
        return "z", sites["z"]
    if not sites:
        raise FigureUnavailable("the guide has no continuous latent site")
    if len(sites) != 1:
        raise FigureUnavailable(f"the guide has continuous latent sites {sorted(sites)}; "
                                "the latent plots need one (preferably named 'z')")
    return next(iter(sites.items()))


@torch.no_grad()
def encode_means(pair: nn.Module, x: Tensor, y: Tensor | None = None) -> Tensor:
    """The guide's mean of the latent for each input, flattened to shape (N, latent size):
    ``pair.encode(x)`` when the pair has it and takes no labels, else from a trace of the guide."""
    if callable(getattr(pair, "encode", None)) and y is None:
        return pair.encode(x).reshape(x.shape[0], -1)
    with isolated_params():
        _, site = _latent_site(pair, x, y)
        return site["fn"].mean.reshape(x.shape[0], -1)


@torch.no_grad()
def decode_means(pair: nn.Module, z: Tensor, x_like: Tensor, y: Tensor | None = None) -> Tensor:
    """The mean of ``p(x | z)`` for each row of ``z`` (shape (N, latent size)): ``pair.decode``
    when the pair has it, else the model's observation site with its latent fixed to ``z``.
    ``x_like`` (a batch of inputs) gives the example shape and dtype; ``y``, one label per
    row of ``z``, is passed to a pair that uses labels."""
    n = z.shape[0]
    if hasattr(pair, "decode") and pair.decode is None:
        raise FigureUnavailable(f"{type(pair).__name__} decodes a latent only with a condition taken from an input "
                                "(decode = None)")
    if callable(getattr(pair, "decode", None)):
        return pair.decode(z)
    with isolated_params():
        name, site = _latent_site(pair, x_like[:1], None if y is None else y[:1])
        dummy = x_like.new_zeros(n, *x_like.shape[1:])
        value = z.reshape(n, *site["value"].shape[1:]).to(site["value"])
        with poutine.block(), forked_rng(dummy.device):
            trace = poutine.trace(poutine.condition(pair.model, data={name: value})).get_trace(*_args(dummy, y))
    observed = [s for s in trace.nodes.values() if s["type"] == "sample" and s["is_observed"] and s["value"] is dummy]
    if not observed:
        raise FigureUnavailable("the model has no site observing x (pyro.sample(..., obs=x)) to decode with")
    return observed[0]["fn"].mean.reshape(dummy.shape)


def save_interpolations(pair: nn.Module, x_from: Tensor, x_to: Tensor, path: str | Path, steps: int = 8,
                        y: Tensor | None = None) -> Path:
    """One row per pair of inputs: the first input, ``steps`` images decoded along the straight
    line between the two latent means, the second input."""
    _check_images(x_from.shape[1:])
    if x_from.shape[0] == 0:
        raise FigureUnavailable("interpolations need at least 2 test inputs")
    za, zb = encode_means(pair, x_from, y), encode_means(pair, x_to, y)
    t = torch.linspace(0, 1, steps, dtype=za.dtype, device=za.device)
    path_z = za[:, None] + t[None, :, None] * (zb - za)[:, None]  # (rows, steps, d)
    labels = None if y is None else y.repeat_interleave(steps, 0)
    decoded = decode_means(pair, path_z.reshape(-1, za.shape[1]), x_from, labels)
    decoded = decoded.reshape(x_from.shape[0], steps, *x_from.shape[1:])
    grid = torch.cat([x_from[:, None], decoded, x_to[:, None]], dim=1).flatten(0, 1)
    _save_image(grid.clamp(0, 1).cpu().float(), path, nrow=steps + 2, padding=2, pad_value=1.0)
    return Path(path)


def save_latent_scatter(pair: nn.Module, split: Split, path: str | Path, classes: Sequence[str] | None = None,
                        uses_labels: bool = False, max_points: int = 2000) -> Path:
    """The guide's latent means of up to ``max_points`` inputs, coloured by class: the latent
    itself when it is 2-D, else its projection on the first two principal components."""
    x, y = split.x[:max_points], split.y[:max_points]
    z = encode_means(pair, x, y if uses_labels else None).double().cpu()
    if z.shape[1] == 2:
        points, axes = z, ("z[0]", "z[1]")
    elif z.shape[1] == 1:
        points, axes = torch.cat([z, torch.rand_like(z)], 1), ("z", "random jitter")
    else:
        centered = z - z.mean(0)
        _, s, v = torch.linalg.svd(centered, full_matrices=False)
        share = (s**2 / (s**2).sum()).tolist()
        points = centered @ v[:2].T
        axes = (f"PC 1 ({share[0]:.0%} of variance)", f"PC 2 ({share[1]:.0%} of variance)")
    fig = _figure(7, 6)
    ax = fig.add_subplot()
    labels = y.cpu()
    for c in torch.unique(labels).tolist():
        pick = labels == c
        name = classes[c] if classes is not None and c < len(classes) else str(c)
        ax.scatter(points[pick, 0], points[pick, 1], s=4, alpha=0.6, label=name)
    kind = "latent means" if z.shape[1] <= 2 else f"PCA of {z.shape[1]}-D latent means"
    ax.set(xlabel=axes[0], ylabel=axes[1], title=f"Guide {kind}, {len(labels)} test inputs")
    ax.legend(markerscale=3, fontsize=8, loc="best")
    return _save(fig, path)


def save_manifold(pair: nn.Module, x_like: Tensor, path: str | Path, n: int = 20, y: Tensor | None = None) -> Path:
    """Images decoded over an ``n x n`` grid of prior quantiles of a 2-D latent (Kingma and
    Welling, 2014, figure 4): ``z = F^{-1}(q)`` for ``q`` in ``(0.5/n, ..., 1 - 0.5/n)`` per
    coordinate, with ``F`` the standard normal CDF (the plain VAE's prior; for a pair with
    another prior, such as a mixture or a flat one, the grid is the same and may miss where
    its codes lie); ``z[1]`` grows upwards. For a pair that uses labels, ``y[0]`` is the
    label of every image."""
    _check_images(x_like.shape[1:])
    label = None if y is None else y[:1]
    d = encode_means(pair, x_like[:1], label).shape[1]
    if d != 2:
        raise FigureUnavailable(f"the manifold needs a 2-D latent; this one has {d} dimensions")
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    ticks = torch.distributions.Normal(0.0, 1.0).icdf(q)
    z1, z0 = torch.meshgrid(ticks.flip(0), ticks, indexing="ij")  # rows from high z[1] to low
    z = torch.stack([z0.reshape(-1), z1.reshape(-1)], 1).to(device=x_like.device, dtype=x_like.dtype)
    with torch.no_grad():
        images = decode_means(pair, z, x_like, None if label is None else label.expand(n * n, *label.shape[1:]))
    _save_image(images.clamp(0, 1).cpu().float(), path, nrow=n, padding=1, pad_value=1.0)
    return Path(path)


def _grid_figure(images: Tensor, nrow: int, path: str | Path, title: str, row_labels: Sequence[str] = (),
                 cell_text: Sequence[str] = ()) -> Path:
    """``make_grid`` of ``images`` drawn with a title, row labels and a caption per cell."""
    pad = 2
    grid = _make_grid(images.clamp(0, 1).cpu().float(), nrow=nrow, padding=pad, pad_value=1.0)
    h, w = images.shape[-2] + pad, images.shape[-1] + pad
    rows = math.ceil(images.shape[0] / nrow)
    fig = _figure(max(4.0, 0.6 * nrow + 2.5), 0.6 * rows + 1.0)
    ax = fig.add_subplot()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([pad + r * h + h / 2 for r in range(len(row_labels))], list(row_labels))
    for i, text in enumerate(cell_text):
        ax.text(pad + (i % nrow) * w, pad + (i // nrow) * h, text, color="red", fontsize=7, va="top",
                bbox={"facecolor": "white", "alpha": 0.8, "pad": 0.5, "linewidth": 0})
    ax.set_title(title)
    return _save(fig, path)


def save_rows(images: Tensor, path: str | Path, title: str, row_labels: Sequence[str] | None = None) -> Path:
    """A grid with one row per leading index of ``images`` (shape (rows, n, *x_shape)), e.g.
    the output of a pair's ``sample_by_label(n)`` or ``sample_by_component(n)``."""
    _check_images(images.shape[2:])
    rows, n = images.shape[:2]
    labels = list(row_labels) if row_labels is not None else [str(r) for r in range(rows)]
    return _grid_figure(images.flatten(0, 1), n, path, title, labels[:rows])


def save_worst_khat(x: Tensor, khat: Tensor, path: str | Path, n: int = 16, nrow: int = 8) -> Path:
    """The ``n`` inputs with the largest PSIS k-hat, each captioned with its k-hat."""
    _check_images(x.shape[1:])
    order = torch.argsort(khat.cpu(), descending=True)[:n]
    bad = int((khat > KHAT_OK).sum())
    title = f"Largest PSIS k-hat ({bad} of {khat.numel()} test inputs above {KHAT_OK})"
    return _grid_figure(x[order.to(x.device)], nrow, path, title,
                        cell_text=[f"{khat[i].item():.2f}" for i in order.tolist()])


def save_posterior_comparison(nuts: Tensor, guide: Tensor, names: Sequence[str], path: str | Path,
                              title: str = "", dims: tuple[int, int] | None = None, max_coordinates: int = 64) -> Path:
    """NUTS draws of ``p(z | x)`` against the guide's draws of ``q(z | x)`` (each (S, D)).

    Left: both clouds in two latent coordinates (by default the two with the smallest
    posterior standard deviation, the ones the input informs most). Right: mean +- one
    standard deviation per coordinate for both.
    """
    nuts, guide = nuts.double().cpu(), guide.double().cpu()
    d = nuts.shape[1]
    if dims is None:
        dims = tuple(torch.argsort(nuts.std(0))[:2].tolist()) if d > 1 else (0, 0)
    fig = _figure(12, 5)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.4])
    i, j = dims
    left.scatter(guide[:, i], guide[:, j], s=4, alpha=0.3, color="tab:orange", label="q(z | x), the guide")
    left.scatter(nuts[:, i], nuts[:, j], s=4, alpha=0.5, color="tab:blue", label="p(z | x) by NUTS")
    left.set(xlabel=names[i], ylabel=names[j], title="Draws in two latent coordinates")
    left.legend(markerscale=3)
    shown = min(d, max_coordinates)
    pos = torch.arange(shown, dtype=torch.float64)
    for draws, label, shift, color in ((nuts, "p(z | x) by NUTS", -0.15, "tab:blue"),
                                       (guide, "q(z | x), the guide", 0.15, "tab:orange")):
        right.errorbar(pos + shift, draws.mean(0)[:shown], yerr=draws.std(0)[:shown], fmt="o", ms=3, capsize=2,
                       color=color, label=label)
    right.set_xticks(pos.tolist(), list(names[:shown]), rotation=90, fontsize=6 if shown > 20 else 8)
    right.set(ylabel="mean +- sd", title="Mean and standard deviation per coordinate")
    right.legend()
    fig.suptitle(title)
    return _save(fig, path)


@dataclass
class Figures:
    """What :func:`save_figures` wrote, and why it left the others out."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def save_figures(pair: nn.Module, split: Split, out: str | Path, *, metrics: Sequence[dict[str, Any]] = (),
                 classes: Sequence[str] | None = None, uses_labels: bool = False, n: int = 64) -> Figures:
    """Every figure the pair and the data allow, as PNGs in ``out``: training curves,
    samples, reconstructions, interpolations, the latent scatter, the 2-D manifold, and
    per-label and per-component samples. Run it inside the pair's parameter scope."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = Figures()
    x, y = split.x[:n], split.y[:n]
    labels = y if uses_labels else None
    half = min(8, x.shape[0] // 2)
    names = [str(c) for c in classes] if classes is not None else None
    jobs = {
        "curves.png": lambda p: save_training_curves(metrics, p),
        "samples.png": lambda p: save_samples(pair, p, n=n, nrow=math.ceil(math.sqrt(n))),
        "reconstructions.png": lambda p: save_reconstructions(pair, x[:32], p),
        "interpolations.png": lambda p: save_interpolations(pair, x[:half], x[half : 2 * half], p,
                                                            y=None if labels is None else labels[:half]),
        "latent_scatter.png": lambda p: save_latent_scatter(pair, split, p, classes, uses_labels),
        "manifold.png": lambda p: save_manifold(pair, x, p, y=labels),
        "samples_by_label.png": lambda p: _per_row(pair, "sample_by_label", p, "Samples, one row per label", names),
        "samples_by_component.png": lambda p: _per_row(pair, "sample_by_component", p,
                                                       "Samples, one row per mixture component", None),
    }
    with torch.no_grad(), isolated_params():
        for name, job in jobs.items():
            try:
                figures.written.append(job(out / name))
            except FigureUnavailable as err:
                figures.skipped[name] = str(err)
    return figures


def _per_row(pair: nn.Module, method: str, path: Path, title: str, row_labels: Sequence[str] | None) -> Path:
    if not callable(getattr(pair, method, None)):
        raise FigureUnavailable(f"{type(pair).__name__} has no {method}(n) method")
    images = getattr(pair, method)(8)
    if row_labels is None:
        row_labels = [f"{method.split('_')[-1]} {r}" for r in range(images.shape[0])]
    return save_rows(images, path, title, row_labels)
