"""Milliseconds to binarize one training batch: ``pyrovae.data.binarize`` against the obvious ways.

Question: dynamic binarization draws a random number per pixel for every batch of every
epoch; on the CPU the draws are serial, so how much of a training step do they take,
and what does cutting one 64-bit draw into four pixels (``binarize``) save? Times, on a
batch of ``--batch`` Fashion-MNIST training images (784 pixels each), in turns:

- ``torch.bernoulli(x)``;
- ``torch.rand_like(x) < x``, one uniform float per pixel (what ``binarize`` did before);
- ``pyrovae.data.binarize(x)``.

Run from the repository root::

    python benchmarks/binarize_time.py [--batch 256] [--reps 7] [--calls 300] [--threads T]

Writes benchmarks/results/binarize_time.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyrovae  # noqa: E402
from machine import describe  # noqa: E402
from pyrovae.data import binarize  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=7, help="timed blocks per method, taken in turn")
    p.add_argument("--calls", type=int, default=300, help="calls per block")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(T)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    x = pyrovae.load_dataset("fashion-mnist", train_size=args.batch, test_size=1).train.x
    g = torch.Generator().manual_seed(0)
    methods: dict[str, Callable[[], torch.Tensor]] = {
        "torch.bernoulli(x)": lambda: torch.bernoulli(x, generator=g),
        "torch.rand_like(x) < x": lambda: (torch.rand(x.shape, generator=g) < x).to(x.dtype),
        "pyrovae.data.binarize(x)": lambda: binarize(x, g),
    }
    ms: dict[str, list[float]] = {name: [] for name in methods}
    for f in methods.values():
        f()
    for _ in range(args.reps):
        for name, f in methods.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                f()
            ms[name].append((time.perf_counter() - t0) / args.calls * 1e3)
    median = {name: statistics.median(v) for name, v in ms.items()}
    base = median["torch.rand_like(x) < x"]
    lines = ["| method | ms per batch (median) | min-max | vs rand_like |", "|---|---|---|---|"]
    lines += [f"| `{name}` | {median[name]:.3f} | {min(v):.3f}-{max(v):.3f} | {median[name] / base:.2f} |"
              for name, v in ms.items()]
    print("\n".join(lines))
    info = describe()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "binarize_time.json").write_text(json.dumps(
        {**info, "config": {**vars(args), "pixels": x.numel()}, "ms": ms, "median": median}, indent=2) + "\n")
    m = info["machine"]
    (RESULTS / "binarize_time.md").write_text(
        f"# Binarizing a batch\n\nCommand: `{info['command']}`  \nDate: {info['date']}; torch "
        f"{info['versions']['torch']}; {m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads)  \n"
        f"{args.batch} Fashion-MNIST images ({x.numel()} pixels); {args.reps} blocks of {args.calls} calls per "
        "method, taken in turn.\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'binarize_time.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
