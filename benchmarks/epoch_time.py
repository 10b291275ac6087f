"""Seconds per epoch of ``pyrovae train vae`` against a hand-written PyTorch loop, and the
fraction of the machine's matmul floor that each reaches.

Question: what does writing the VAE as a Pyro model/guide pair cost per epoch? The
loops train the default VAE (784-400-50, Bernoulli, batch 256, Adam 1e-3) on all of
Fashion-MNIST in one process, taking turns epoch by epoch, so that a busy machine slows
all of them alike:

- ``pyrovae``: :func:`pyrovae.train`, the function behind ``pyrovae train vae``, with the
  default estimator (``trace``; others with ``--elbos``), one call of ``--reps`` + 1 epochs
  per estimator, as a user's run is (a JIT estimator such as ``jit-trace`` compiles before
  the first epoch and warms up in it, untimed); the epoch's seconds come from the run's
  metrics, as the CLI records them;
- ``plain``: the loop of ``benchmarks/plain_vae.py`` with ``torch.optim.Adam``'s defaults,
  what one writes by hand;
- ``plain+fused``: the same loop with PyTorch's fused Adam kernel, which pyrovae's
  trainer uses (:class:`pyrovae.optim.JointAdam`), so the remaining difference is Pyro's;
- ``plain+fused+compiled`` (with ``--compiled``): that loop with both networks under
  ``torch.compile``, to see whether compiling the networks would pay.

The plain loops' epochs run from a :class:`pyrovae.Callback` after each pyrovae epoch,
one of each, so every pyrovae epoch has plain epochs beside it (the first epoch of each
estimator's block, and the plain epochs beside it, are warm-up and not timed). The
per-rep ratio of an estimator is its epoch over the plain epoch that followed it.

Each epoch includes the test-ELBO pass over the 10,000 test images. The matmul floor is
the matmul FLOPs of an epoch (``benchmarks/machine.py``) at the GFLOP/s this machine
reaches on a 2048 x 2048 float32 matmul, measured at the start of the run. The same
products at the VAE's own shapes (batch 256 by 784, 400, 100 and 50 columns) run slower;
their time, measured alone, is the second floor, the one a loop at this batch size can
approach.

Run from the repository root::

    python benchmarks/epoch_time.py [--reps 5] [--elbos trace] [--threads T] [--compiled] [--device cuda]

Prints a table and a summary; writes benchmarks/results/epoch_time[_DEVICE].json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyrovae  # noqa: E402
from machine import describe, matmul_gflops, vae_epoch_flops, vae_epoch_matmul_seconds  # noqa: E402
from plain_vae import HIDDEN, TEST_BATCH_SIZE, Z_DIM, PlainVAE  # noqa: E402
from pyrovae.models import VAE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class PlainAlongside(pyrovae.Callback):
    """After each epoch of a pyrovae run, one epoch of each plain loop; keeps the seconds of
    all but the first (warm-up) epoch, the pyrovae run's under ``name``."""

    def __init__(self, name: str, plain: dict[str, Callable[[], dict]], seconds: dict[str, list[float]],
                 elbos: dict[str, float]) -> None:
        self.name, self.plain, self.seconds, self.elbos = name, plain, seconds, elbos
        self.paired: list[float] = []  # the plain loop's seconds beside each timed pyrovae epoch

    def on_epoch(self, record: dict[str, Any]) -> None:
        timed = record["epoch"] > 1
        self.elbos[self.name] = record["test_elbo"]
        if timed:
            self.seconds[self.name].append(record["seconds"])
        for name, epoch in self.plain.items():
            plain = epoch()
            self.elbos[name] = plain["test_elbo"]
            if timed:
                self.seconds[name].append(plain["seconds"])
                if name == "plain":
                    self.paired.append(plain["seconds"])
        if timed:
            print(f"{self.name} epoch {record['epoch'] - 1}: " + ", ".join(
                f"{n} {self.seconds[n][-1]:.2f} s" for n in [self.name, *self.plain]), flush=True)


def paired_ratios(mine: list[float], plain: list[float]) -> dict[str, Any]:
    """Per-rep ratios ``mine[i] / plain[i]`` (epochs run back to back, so a busy moment slows
    both): their median, quartiles and how many reps ``mine`` was the faster."""
    ratios = sorted(m / p for m, p in zip(mine, plain))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    faster = sum(r < 1.0 for r in ratios)
    return {"ratios": ratios, "median": statistics.median(ratios), "q1": q1, "q3": q3, "faster_reps": faster,
            "summary": f"median ratio {statistics.median(ratios):.3f} (quartiles {q1:.3f}-{q3:.3f}), "
                       f"faster than plain in {faster} of {len(ratios)} reps"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5,
                   help="timed epochs per estimator, each followed by one of each plain loop, after one warm-up epoch")
    p.add_argument("--elbos", default="trace", help="comma-separated pyrovae estimators to time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(T)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compiled", action="store_true",
                   help="also time plain+fused with the networks under torch.compile")
    p.add_argument("--train-size", type=int, default=None, help="first N training images (quick checks)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = pyrovae.load_dataset("fashion-mnist", train_size=args.train_size)
    gflops = matmul_gflops(args.device)
    flops = vae_epoch_flops(784, HIDDEN, Z_DIM, len(data.train), len(data.test))
    floor = (flops["train"] + flops["test"]) / (gflops * 1e9)
    shaped = vae_epoch_matmul_seconds(784, HIDDEN, Z_DIM, len(data.train), len(data.test), 256, TEST_BATCH_SIZE,
                                      args.device)
    print(f"matmul: {gflops:.0f} GFLOP/s; an epoch is {flops['train'] / 1e9:.0f} + {flops['test'] / 1e9:.0f} "
          f"GFLOP of matmuls (train + test), a floor of {floor:.2f} s; at the VAE's shapes they take "
          f"{shaped:.2f} s", flush=True)

    plain: dict[str, Callable[[], dict]] = {
        "plain": PlainVAE(data, args.seed, device=args.device).epoch,
        "plain+fused": PlainVAE(data, args.seed, fused_adam=True, device=args.device).epoch,
    }
    if args.compiled:
        plain["plain+fused+compiled"] = PlainVAE(data, args.seed, fused_adam=True, device=args.device,
                                                 compiled=True).epoch
    names = [f"pyrovae {e}" for e in args.elbos.split(",")]
    seconds: dict[str, list[float]] = {name: [] for name in [*names, *plain]}
    elbos: dict[str, float] = {}
    paired: dict[str, dict[str, Any]] = {}
    for name in names:
        alongside = PlainAlongside(name, plain, seconds, elbos)
        pyro.set_rng_seed(args.seed)
        pyrovae.train(VAE(), data, epochs=args.reps + 1, elbo=name.split()[1], seed=args.seed,
                      device=args.device, quiet=True, callbacks=[alongside])
        paired[name] = paired_ratios(seconds[name], alongside.paired)
    loops = [*names, *plain]

    median = {name: statistics.median(s) for name, s in seconds.items()}
    first = names[0]
    rows = [{"loop": name, "median_seconds": median[name], "min_seconds": min(seconds[name]),
             "max_seconds": max(seconds[name]), "vs_plain": median[name] / median["plain"],
             "vs_plain_fused": median[name] / median["plain+fused"], "floor_fraction": floor / median[name],
             "shaped_floor_fraction": shaped / median[name],
             "test_elbo_after": elbos[name], "seconds": seconds[name]} for name in loops]
    lines = ["| loop | s/epoch (median) | min-max | vs plain | vs plain+fused | share of matmul floor "
             "| share of same-shape matmul time |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['loop']} | {r['median_seconds']:.2f} | {r['min_seconds']:.2f}-{r['max_seconds']:.2f} | "
              f"{r['vs_plain']:.2f} | {r['vs_plain_fused']:.2f} | {r['floor_fraction']:.0%} | "
              f"{r['shaped_floor_fraction']:.0%} |" for r in rows]
    print("\n" + "\n".join(lines))
    print(f"\n{first} / plain = {median[first] / median['plain']:.2f} (ratio of medians); floor "
          f"{floor:.2f} s/epoch at {gflops:.0f} GFLOP/s")
    for name in names:
        print(f"{name} against the plain epoch beside it: {paired[name]['summary']}")

    info = describe()
    suffix = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
    result = {**info, "config": {"reps": args.reps, "elbos": args.elbos, "seed": args.seed, "device": args.device,
                                 "train_size": len(data.train), "test_size": len(data.test), "batch_size": 256,
                                 "z_dim": Z_DIM, "hidden": HIDDEN},
              "matmul_gflops": gflops, "epoch_matmul_gflop": {k: v / 1e9 for k, v in flops.items()},
              "floor_seconds": floor, "same_shape_matmul_seconds": shaped, "loops": rows,
              "paired_vs_plain": paired}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"epoch_time{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = info["machine"]
    (RESULTS / f"epoch_time{suffix}.md").write_text(
        f"# Seconds per epoch: pyrovae against plain PyTorch\n\nCommand: `{info['command']}`  \n"
        f"Date: {info['date']}; torch {info['versions']['torch']}, pyro {info['versions']['pyro']}; "
        f"{m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads){', ' + m['gpu'] if m['gpu'] else ''}, "
        f"device {args.device}  \n"
        f"Default VAE (784-400-50, Bernoulli, batch 256) on {len(data.train)} training images, test ELBO on "
        f"{len(data.test)}; {args.reps} timed epochs per estimator after one warm-up (one `pyrovae.train` call "
        f"each), each followed by one epoch of each plain loop.  \n"
        f"Matmul: {gflops:.0f} GFLOP/s (2048 x 2048 float32); an epoch holds "
        f"{(flops['train'] + flops['test']) / 1e9:.0f} GFLOP of matmuls, a floor of {floor:.2f} s; "
        f"run alone at the VAE's shapes, the same matmuls take {shaped:.2f} s.\n\n"
        + "\n".join(lines) + "\n\nEach estimator against the plain epoch run right after each of its "
        "epochs:\n\n" + "".join(f"- {name}: {paired[name]['summary']}\n" for name in names))
    print(f"wrote {RESULTS / f'epoch_time{suffix}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
