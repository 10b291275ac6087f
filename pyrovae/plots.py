"""Figures: image grids drawn with torchvision's grid utilities."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.utils import save_image

__all__ = ["save_samples", "save_reconstructions"]


def save_samples(pair: nn.Module, path: str | Path, n: int = 64, nrow: int = 8) -> Path:
    """A grid of ``n`` images from ``pair.sample(n)``."""
    if not callable(getattr(pair, "sample", None)):
        raise TypeError(f"{type(pair).__name__} has no sample(n) method, so it cannot draw images")
    save_image(pair.sample(n).clamp(0, 1).cpu(), path, nrow=nrow, padding=2, pad_value=1.0)
    return Path(path)


def save_reconstructions(pair: nn.Module, x: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Rows of inputs, each followed by a row of their reconstructions by ``pair.reconstruct``."""
    if not callable(getattr(pair, "reconstruct", None)):
        raise TypeError(f"{type(pair).__name__} has no reconstruct(x) method")
    recon = pair.reconstruct(x).clamp(0, 1)
    rows = [t for i in range(0, x.shape[0], nrow) for t in (x[i : i + nrow], recon[i : i + nrow])]
    save_image(torch.cat(rows).cpu(), path, nrow=nrow, padding=2, pad_value=1.0)
    return Path(path)
