"""Seconds per epoch of ``pyrovae train vae`` against a hand-written PyTorch loop, and the
fraction of the machine's matmul floor that each reaches.

Question: what does writing the VAE as a Pyro model/guide pair cost per epoch? The
loops train the default VAE (784-400-50, Bernoulli, batch 256, Adam 1e-3) on all of
Fashion-MNIST, one epoch each in turn, ``--reps`` times after one warm-up epoch each,
in one process, so that a busy machine slows all of them alike:

- ``pyrovae``: :func:`pyrovae.train`, the function behind ``pyrovae train vae``, with the
  default estimator (``trace``; others with ``--elbos``), continued epoch by epoch with
  ``resume=True`` (the epoch's seconds come from the run's metrics, as the CLI records them);
  as each epoch is a new call, a JIT estimator (``jit-trace``) compiles and warms up again
  in every timed epoch, which a run of many epochs does once;
- ``plain``: the loop of ``benchmarks/plain_vae.py`` with ``torch.optim.Adam``'s defaults,
  what one writes by hand;
- ``plain+fused``: the same loop with PyTorch's fused Adam kernel, which pyrovae's
  trainer uses (:class:`pyrovae.optim.JointAdam`), so the remaining difference is Pyro's;
- ``plain+fused+compiled`` (with ``--compiled``): that loop with both networks under
  ``torch.compile``, to see whether compiling the networks would pay.

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
import tempfile
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


def pyrovae_epochs(data: pyrovae.Dataset, elbo: str, seed: int, device: str, out: Path) -> Callable[[], dict]:
    """One more epoch of a pyrovae run per call."""
    done = 0

    def step() -> dict[str, Any]:
        nonlocal done
        done += 1
        pyro.set_rng_seed(seed)
        run = pyrovae.train(VAE(), data, epochs=done, elbo=elbo, seed=seed, device=device, out=out,
                            resume=done > 1, quiet=True)
        return run.metrics[-1]
    return step


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
    p.add_argument("--reps", type=int, default=5, help="timed epochs per loop, after one warm-up epoch")
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

    with tempfile.TemporaryDirectory() as tmp:
        loops: dict[str, Callable[[], dict]] = {
            f"pyrovae {e}": pyrovae_epochs(data, e, args.seed, args.device, Path(tmp) / e)
            for e in args.elbos.split(",")
        }
        loops["plain"] = PlainVAE(data, args.seed, device=args.device).epoch
        loops["plain+fused"] = PlainVAE(data, args.seed, fused_adam=True, device=args.device).epoch
        if args.compiled:
            loops["plain+fused+compiled"] = PlainVAE(data, args.seed, fused_adam=True, device=args.device,
                                                     compiled=True).epoch
        seconds: dict[str, list[float]] = {name: [] for name in loops}
        elbos: dict[str, float] = {}
        for rep in range(args.reps + 1):
            for name, epoch in loops.items():
                record = epoch()
                if rep:
                    seconds[name].append(record["seconds"])
                elbos[name] = record["test_elbo"]
            if rep:
                print(f"rep {rep}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)

    median = {name: statistics.median(s) for name, s in seconds.items()}
    first = next(iter(loops))
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
    paired = paired_ratios(seconds[first], seconds["plain"])
    print(f"\n{first} / plain = {median[first] / median['plain']:.2f} (ratio of medians); per rep, "
          f"{paired['summary']}; floor {floor:.2f} s/epoch at {gflops:.0f} GFLOP/s")

    info = describe()
    suffix = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
    result = {**info, "config": {"reps": args.reps, "elbos": args.elbos, "seed": args.seed, "device": args.device,
                                 "train_size": len(data.train), "test_size": len(data.test), "batch_size": 256,
                                 "z_dim": Z_DIM, "hidden": HIDDEN},
              "matmul_gflops": gflops, "epoch_matmul_gflop": {k: v / 1e9 for k, v in flops.items()},
              "floor_seconds": floor, "same_shape_matmul_seconds": shaped, "loops": rows,
              "paired_vs_plain": {"loop": first, **paired}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"epoch_time{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = info["machine"]
    (RESULTS / f"epoch_time{suffix}.md").write_text(
        f"# Seconds per epoch: pyrovae against plain PyTorch\n\nCommand: `{info['command']}`  \n"
        f"Date: {info['date']}; torch {info['versions']['torch']}, pyro {info['versions']['pyro']}; "
        f"{m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads){', ' + m['gpu'] if m['gpu'] else ''}, "
        f"device {args.device}  \n"
        f"Default VAE (784-400-50, Bernoulli, batch 256) on {len(data.train)} training images, test ELBO on "
        f"{len(data.test)}; {args.reps} timed epochs per loop after one warm-up, taken in turn.  \n"
        f"Matmul: {gflops:.0f} GFLOP/s (2048 x 2048 float32); an epoch holds "
        f"{(flops['train'] + flops['test']) / 1e9:.0f} GFLOP of matmuls, a floor of {floor:.2f} s; "
        f"run alone at the VAE's shapes, the same matmuls take {shaped:.2f} s.\n\n"
        + "\n".join(lines) + f"\n\n{first} against plain, epoch by epoch (the two run back to back in "
        f"each rep): {paired['summary']}.\n")
    print(f"wrote {RESULTS / f'epoch_time{suffix}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
