"""Datasets in memory: Fashion-MNIST and MNIST through torchvision, binarization, batches.

Whole splits live on the chosen device as tensors of shape ``(N, 1, 28, 28)`` with values
in [0, 1]; a batch is an index slice of them, not a per-item ``DataLoader``. Bernoulli
likelihoods train on dynamically binarized images (a fresh draw every epoch) and are
evaluated on one binarization of the test split with a fixed seed (the protocol of
Burda, Grosse and Salakhutdinov, 2016), so that numbers compare across runs.
"""

from __future__ import annotations

import gzip
import os
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from pyrovae.errors import PyrovaeError, UsageError, brief

__all__ = [
    "Split",
    "Dataset",
    "DATASETS",
    "load_dataset",
    "cache_dir",
    "binarize",
    "fixed_binarization",
    "evaluation_split",
    "batches",
]

TEST_BINARIZATION_SEED = 0

# name -> (torchvision.datasets class name, folder where a Debian package puts the raw .gz files);
# torchvision is imported on first use: importing it takes seconds, which every command would pay
DATASETS: dict[str, tuple[str, Path | None]] = {
    "fashion-mnist": ("FashionMNIST", Path("/usr/share/datasets/fashion-mnist")),
    "mnist": ("MNIST", None),
}


def _torchvision_class(name: str) -> Any:
    from torchvision import datasets

    return getattr(datasets, DATASETS[name][0])


@dataclass(frozen=True)
class Split:
    """One split in memory: images ``x`` of shape (N, C, H, W) in [0, 1], labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Dataset:
    """A train and a test split with their class names and the folder they came from."""

    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    root: str | None = None

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (1, 28, 28)."""
        return tuple(self.train.x.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        return replace(self, train=self.train.to(device), test=self.test.to(device))


def cache_dir() -> Path:
    """pyrovae's data cache: ``$PYROVAE_DATA``, else ``$XDG_CACHE_HOME/pyrovae``, else ``~/.cache/pyrovae``."""
    if "PYROVAE_DATA" in os.environ:
        return Path(os.environ["PYROVAE_DATA"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyrovae"


def _has_raw_files(cls: Any, root: Path) -> bool:
    raw = root / cls.__name__ / "raw"
    return all((raw / Path(name).stem).exists() for name, _ in cls.resources)


def _unpack_system_copy(cls: Any, system: Path, root: Path) -> bool:
    """Unpack a distribution package's .gz files into ``root`` in torchvision's layout.

    Debian recompresses the archives, so torchvision's checksums of the .gz files do not
    apply; torchvision's idx reader checks the unpacked files' headers when they load.
    """
    sources = [system / name for name, _ in cls.resources]
    if not all(path.is_file() for path in sources):
        return False
    raw = root / cls.__name__ / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PyrovaeError(f"cannot make the data folder {raw}: {brief(err)} (set PYROVAE_DATA to a folder)") from err
    for path in sources:
        target = raw / path.stem
        partial = target.with_suffix(f".partial{os.getpid()}")  # processes started together unpack side by side
        try:
            with gzip.open(path, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as err:  # a damaged archive (gzip.BadGzipFile is an OSError) or a full disk
            partial.unlink(missing_ok=True)
            raise PyrovaeError(f"cannot unpack {path} into {raw}: {brief(err)}") from err
        os.replace(partial, target)  # atomic: a stopped unpack never looks complete
    return True


def _find_root(name: str, root: str | Path | None, download: bool) -> Path:
    cls, system = _torchvision_class(name), DATASETS[name][1]
    tried = []
    if root is not None:
        if _has_raw_files(cls, Path(root)):
            return Path(root)
        tried.append(f"the given root {root}")
        warnings.warn(f"{root} holds no {name} files in {Path(root) / cls.__name__ / 'raw'}; looking elsewhere",
                      stacklevel=3)
    cache = cache_dir()
    if _has_raw_files(cls, cache):
        return cache
    tried.append(f"the cache {cache}")
    if system is not None and _unpack_system_copy(cls, system, cache):
        return cache
    if download:
        try:
            cls(str(cache), train=True, download=True)
            return cache
        except Exception as err:  # torchvision raises RuntimeError or URLError when offline
            tried.append(f"downloading through torchvision ({type(err).__name__})")
    ways = [
        f"pass root=DIR (--data-root DIR) where DIR/{cls.__name__}/raw/ holds the unpacked idx files",
        f"put those files under pyrovae's cache {cache}/{cls.__name__}/raw/ (or set PYROVAE_DATA)",
    ]
    if system is not None:
        ways.append(f"install the Debian package dataset-{name} (files in {system})")
    ways.append("run once on a machine online, so that torchvision downloads them")
    raise PyrovaeError(
        f"no {name} data found (tried: {', '.join(tried)}). Ways to get it:\n  - "
        + "\n  - ".join(ways)
    )


def load_dataset(
    name: str = "fashion-mnist",
    *,
    root: str | Path | None = None,
    device: torch.device | str = "cpu",
    train_size: int | None = None,
    test_size: int | None = None,
    download: bool = True,
) -> Dataset:
    """Load a dataset's train and test splits into memory.

    :param name: ``"fashion-mnist"`` or ``"mnist"``.
    :param root: a folder holding ``<ClassName>/raw/`` idx files; looked at before the cache.
    :param device: where the tensors live.
    :param train_size: keep only the first ``train_size`` training images (for quick runs).
    :param test_size: keep only the first ``test_size`` test images.
    :param download: let torchvision download the files when they are nowhere on disk.
    """
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    for label, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and size < 1:
            raise UsageError(f"{label} must be a positive number of images, got {size}")
    cls = _torchvision_class(name)
    found = str(_find_root(name, root, download))
    splits = []
    for is_train, size in ((True, train_size), (False, test_size)):
        try:
            ds = cls(found, train=is_train, download=False)
        except (RuntimeError, AssertionError, ValueError, EOFError, OSError) as err:  # torchvision's idx reader
            raise PyrovaeError(f"cannot read the {name} files in {Path(found) / cls.__name__ / 'raw'}: {brief(err)}; "
                               "replace them, or delete them to have them unpacked or downloaded again") from err
        x = ds.data[:size].unsqueeze(1).to(torch.float32).div_(255.0)
        splits.append(Split(x, ds.targets[:size].clone()).to(device))
    return Dataset(name, splits[0], splits[1], tuple(cls.classes), found)


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of binary pixels with ``P(pixel = 1) = x``, to within ``2**-15``: ``u < 32768 x`` for
    a uniform integer ``u`` in ``[0, 32768)`` per pixel, so the probability is
    ``ceil(32768 x) / 32768``, exact at 0 and 1.

    ``torch.rand`` spends one call of the generator on each pixel, serially on the CPU, where
    that was a tenth of a training step; here one 64-bit draw (63 random bits) is cut into
    four 15-bit ``u``, which takes 0.6 of the time (``benchmarks/binarize_time.py``).
    """
    n = x.numel()
    words = torch.empty(-(-n // 4), dtype=torch.int64, device=x.device).random_(generator=generator)
    u = words.bitwise_and_(_LOW_15_BITS_OF_EACH_QUARTER).view(torch.int16)[:n].view(x.shape)
    return (u < x * 32768).to(x.dtype)


_LOW_15_BITS_OF_EACH_QUARTER = 0x7FFF_7FFF_7FFF_7FFF


def fixed_binarization(x: torch.Tensor, seed: int = TEST_BINARIZATION_SEED) -> torch.Tensor:
    """The same binarization for the same ``x`` and seed on any device (drawn on the CPU by
    ``torch.bernoulli``, as it always was, so that evaluations stay comparable)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=generator).to(x.device)


def evaluation_split(split: Split, binarized: bool) -> Split:
    """``split`` as it is evaluated: the fixed-seed binarization for Bernoulli likelihoods."""
    return Split(fixed_binarization(split.x), split.y) if binarized else split


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: torch.Generator | None = None,
    binarize_with: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` slices of ``split``.

    :param shuffle: when given, the order is a permutation drawn from this generator.
    :param binarize_with: when given, each batch is binarized with this generator
        (dynamic binarization: a new draw every time the split is iterated).
    """
    n = len(split)
    order = torch.randperm(n, generator=shuffle).to(split.x.device) if shuffle is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            x, y = split.x[idx], split.y[idx]
        if binarize_with is not None:
            x = binarize(x, binarize_with)
        yield x, y
