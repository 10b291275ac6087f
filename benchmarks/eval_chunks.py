"""Seconds per million importance draws against the number of draws made at once.

Question: :func:`pyrovae.evaluate.importance_log_likelihood` draws ``chunk_size`` samples
for each of ``batch_size`` images at a time; which size of that block of draws is
fastest? Larger blocks pay Pyro's per-call Python less often; smaller ones make smaller
tensors of decoded images (``chunk x batch x 784`` numbers each), whose memory the
allocator can reuse instead of taking fresh pages from the kernel for every block (counted
here as minor page faults and the process's kernel-mode CPU seconds, from ``getrusage``).
The pair is the default VAE after one epoch on 10,000 images (the weights do not change
the work); each setting evaluates the first ``--test-size`` test images with ``--k`` draws
each, the settings taking turns for ``--reps`` rounds.

Run from the repository root::

    python benchmarks/eval_chunks.py [--k 1000] [--test-size 500] [--reps 3] [--device cpu]

Prints the figures; writes benchmarks/results/eval_chunks[_DEVICE].json and .md.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyrovae  # noqa: E402
from machine import describe  # noqa: E402
from pyrovae.data import evaluation_split  # noqa: E402
from pyrovae.evaluate import importance_log_likelihood  # noqa: E402
from pyrovae.models import VAE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# (chunk_size, batch_size): draws per image at once, images at once
SETTINGS = [(500, 100), (200, 100), (100, 100), (50, 100), (20, 100), (10, 100), (500, 10), (250, 20)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    data = pyrovae.load_dataset("fashion-mnist", train_size=10_000, test_size=args.test_size)
    pyro.set_rng_seed(0)
    pair = pyrovae.train(VAE(), data, epochs=1, device=args.device, quiet=True).pair
    test = evaluation_split(data.test, True).to(args.device)
    gpu = torch.device(args.device) if args.device.startswith("cuda") else None
    seconds: dict[tuple[int, int], list[float]] = {s: [] for s in SETTINGS}
    faults: dict[tuple[int, int], list[int]] = {s: [] for s in SETTINGS}
    kernel: dict[tuple[int, int], list[float]] = {s: [] for s in SETTINGS}
    estimates: dict[tuple[int, int], float] = {}
    for rep in range(args.reps):
        for chunk, batch in SETTINGS:
            pyro.set_rng_seed(rep)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            ll = importance_log_likelihood(pair, test, k=args.k, chunk_size=chunk, batch_size=batch)
            if gpu is not None:
                torch.cuda.synchronize(gpu)
            seconds[(chunk, batch)].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults[(chunk, batch)].append(after.ru_minflt - usage.ru_minflt)
            kernel[(chunk, batch)].append(after.ru_stime - usage.ru_stime)
            estimates[(chunk, batch)] = ll.mean
        print(f"round {rep + 1}/{args.reps}: " + ", ".join(f"{c}x{b} {seconds[(c, b)][-1]:.2f} s" for c, b in SETTINGS),
              flush=True)

    draws = args.k * len(test)
    rows = [{"chunk_size": c, "batch_size": b, "draws_at_once": c * b, "seconds": seconds[(c, b)],
             "median_seconds": statistics.median(seconds[(c, b)]),
             "seconds_per_million_draws": statistics.median(seconds[(c, b)]) / draws * 1e6,
             "minor_faults": faults[(c, b)], "kernel_seconds": kernel[(c, b)],
             "log_likelihood_last_round": estimates[(c, b)]} for c, b in SETTINGS]
    info = describe()
    suffix = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"eval_chunks{suffix}.json").write_text(
        json.dumps({**info, "k": args.k, "images": len(test), "rows": rows}, indent=2) + "\n")
    m = info["machine"]
    baseline = rows[0]["median_seconds"]
    lines = ["# Importance sampling: draws made at once\n",
             f"Command: `{info['command']}`  ",
             f"Date: {info['date']}; torch {info['versions']['torch']}, pyro {info['versions']['pyro']}; "
             f"{m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads)"
             f"{', ' + m['gpu'] if m['gpu'] else ''}, device {args.device}  ",
             f"Default VAE after one epoch on 10,000 images; K = {args.k} draws for each of the first {len(test)} "
             f"test images ({draws:,} draws) per setting, settings in turn, {args.reps} rounds.\n",
             "| chunk x batch | draws at once | s (median) | min-max | s per million draws | vs 500 x 100 "
             "| minor page faults (median) | kernel-mode s (median) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['chunk_size']} x {r['batch_size']} | {r['draws_at_once']:,} | {r['median_seconds']:.2f} | "
              f"{min(r['seconds']):.2f}-{max(r['seconds']):.2f} | {r['seconds_per_million_draws']:.2f} | "
              f"{r['median_seconds'] / baseline:.2f} | {statistics.median(r['minor_faults']):,.0f} | "
              f"{statistics.median(r['kernel_seconds']):.2f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"eval_chunks{suffix}.md").write_text(text)
    print(text + f"wrote {RESULTS / f'eval_chunks{suffix}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
