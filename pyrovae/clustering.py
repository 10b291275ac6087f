"""Unsupervised clustering metrics and a small k-means, for judging cluster assignments
(a GMVAE's components, k-means on pixels or latent codes) against class labels.

- :func:`clustering_accuracy`: the fraction of examples labelled correctly after the best
  one-to-one matching of clusters to labels (the Hungarian algorithm, scipy's
  ``linear_sum_assignment`` on the contingency table), as in Xie, Girshick and Farhadi
  (2016, "Unsupervised Deep Embedding for Clustering Analysis") and VaDE.
- :func:`normalized_mutual_info`: ``I(C; L) / ((H(C) + H(L)) / 2)``, in [0, 1], the
  arithmetic-mean normalization (scikit-learn's default), invariant to relabelling.
- :func:`kmeans`: Lloyd's algorithm with k-means++ seeding (Arthur and Vassilvitskii,
  2007), the best of ``n_init`` restarts by inertia.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from pyrovae.errors import UsageError

__all__ = ["contingency", "clustering_accuracy", "normalized_mutual_info", "kmeans"]


def _as_labels(a: Tensor | np.ndarray, name: str) -> np.ndarray:
    a = a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise UsageError(f"{name} must be a 1-D array of integer labels, got shape {a.shape} and dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise UsageError(f"{name} must hold non-negative integer labels, got minimum {a.min()}")
    return a


def contingency(clusters: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> np.ndarray:
    """Counts ``n[c, l]`` of examples in cluster ``c`` with label ``l``."""
    c, l = _as_labels(clusters, "clusters"), _as_labels(labels, "labels")
    if c.shape != l.shape or not c.size:
        raise UsageError(f"clusters and labels must be non-empty and of equal length, got {c.size} and {l.size}")
    table = np.zeros((c.max() + 1, l.max() + 1), dtype=np.int64)
    np.add.at(table, (c, l), 1)
    return table


def clustering_accuracy(clusters: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Accuracy under the best one-to-one map of clusters to labels (Hungarian matching).
    With more clusters than labels, the unmatched clusters count as wrong."""
    table = contingency(clusters, labels)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def normalized_mutual_info(clusters: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Mutual information of clusters and labels over the mean of their entropies (nats cancel).
    1 for identical partitions up to relabelling; 1 as well when both are a single block."""
    table = contingency(clusters, labels).astype(np.float64)
    p = table / table.sum()
    pc, pl = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pc, pl)[nz])).sum())
    h_c = float(-(pc[pc > 0] * np.log(pc[pc > 0])).sum())
    h_l = float(-(pl[pl > 0] * np.log(pl[pl > 0])).sum())
    if h_c == 0.0 and h_l == 0.0:
        return 1.0
    return max(0.0, mi) / ((h_c + h_l) / 2)


def _plus_plus_init(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    # the draws come from a CPU generator whatever x's device (an index drawn on the CPU may
    # index a CUDA tensor), so a seed picks the same centers on the CPU and on a GPU
    n = x.shape[0]
    centers = x[torch.randint(n, (1,), generator=generator)]
    d2 = torch.cdist(x, centers).squeeze(1) ** 2
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than clusters
            idx = torch.randint(n, (1,), generator=generator)
        else:
            idx = torch.multinomial((d2 / total).cpu(), 1, generator=generator)
        centers = torch.cat([centers, x[idx]])
        d2 = torch.minimum(d2, (torch.cdist(x, x[idx]).squeeze(1)) ** 2)
    return centers


@torch.no_grad()
def kmeans(x: Tensor, k: int, *, n_init: int = 4, max_iter: int = 100, tol: float = 1e-6,
           seed: int = 0) -> tuple[Tensor, Tensor]:
    """Cluster the rows of ``x`` (N, D) into ``k`` groups: ``(assignments (N,), centers (k, D))``
    of the restart with the least inertia (sum of squared distances to the nearest center)."""
    if x.dim() != 2 or not 1 <= k <= x.shape[0]:
        raise UsageError(f"kmeans needs x of shape (N, D) and 1 <= k <= N, got shape {tuple(x.shape)} and k={k}")
    if n_init < 1 or max_iter < 1:
        raise UsageError(f"kmeans needs n_init >= 1 and max_iter >= 1, got {n_init} and {max_iter}")
    x = x.float()
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(n_init):
        centers = _plus_plus_init(x, k, generator)
        for _ in range(max_iter):
            assign = torch.cdist(x, centers).argmin(1)
            sums = torch.zeros_like(centers).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k).unsqueeze(1)
            new = torch.where(counts > 0, sums / counts.clamp(min=1), centers)  # an empty cluster keeps its center
            shift = (new - centers).pow(2).sum()
            centers = new
            if shift <= tol * x.pow(2).mean() * k:
                break
        dist2 = torch.cdist(x, centers).pow(2)
        assign = dist2.argmin(1)
        inertia = float(dist2.gather(1, assign[:, None]).sum())
        if best is None or inertia < best[0]:
            best = (inertia, assign, centers)
    assert best is not None
    return best[1], best[2]
