"""Seconds and memory of the importance-weighted log-likelihood with K = 5000 over the
10,000 test images, against its matmul floor.

Question: how close does :func:`pyrovae.evaluate.importance_log_likelihood` come to the
time its matrix multiplications alone would take, and is its memory bounded by the chunk
size (not by K or the number of images)? The pair is the default VAE after
``--train-epochs`` epochs (the weights do not change the work). The floor counts the
decoder's matmuls for every draw and the encoder's for every chunk, at the GFLOP/s this
machine reaches on a 2048 x 2048 float32 matmul. Memory: peak resident set during the
evaluation (Linux lets the peak be reset once loading and training are done), in a fresh
process per setting with ``--memory`` (two K, two chunk sizes).

Run from the repository root::

    python benchmarks/eval_time.py [--k 5000] [--chunk-size N] [--batch-size 100] [--device cuda]

``--chunk-size`` defaults to the evaluation's own default for the device
(:func:`pyrovae.evaluate.default_chunk_size`).

Prints the figures; writes benchmarks/results/eval_time[_DEVICE].json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyrovae  # noqa: E402
from machine import describe, matmul_gflops, mlp_macs, peak_rss_mib, reset_peak_rss, rss_mib  # noqa: E402
from pyrovae.data import evaluation_split  # noqa: E402
from pyrovae.evaluate import default_chunk_size, importance_log_likelihood  # noqa: E402
from pyrovae.models import VAE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HIDDEN, Z_DIM, X_DIM = [400], 50, 784


def eval_flops(n: int, k: int, chunk_size: int) -> float:
    """Matmul FLOPs: the decoder for each of n * k draws, the encoder once per chunk of each image."""
    decoder = sum(mlp_macs([Z_DIM, *HIDDEN, X_DIM]))
    encoder = sum(mlp_macs([X_DIM, *HIDDEN, 2 * Z_DIM]))
    return 2.0 * n * (k * decoder + math.ceil(k / chunk_size) * encoder)


def measure(k: int, chunk_size: int, batch_size: int, test_size: int | None, train_epochs: int,
            device: str, progress: bool = True) -> dict:
    """Train the pair briefly, then time one importance-sampling pass; peak memory of this process."""
    data = pyrovae.load_dataset("fashion-mnist", train_size=10_000, test_size=test_size)
    pyro.set_rng_seed(0)
    pair = pyrovae.train(VAE(), data, epochs=train_epochs, device=device, quiet=True).pair
    test = evaluation_split(data.test, True).to(device)
    rss_before = peak_rss_mib()
    reset = reset_peak_rss()  # so that the peak below is the evaluation's, not the loading's or training's
    gpu = torch.device(device) if device.startswith("cuda") else None
    if gpu is not None:
        torch.cuda.synchronize(gpu)
        torch.cuda.reset_peak_memory_stats(gpu)
    rss_start = rss_mib()
    t0 = time.perf_counter()
    ll = importance_log_likelihood(pair, test, k=k, chunk_size=chunk_size, batch_size=batch_size, progress=progress)
    if gpu is not None:
        torch.cuda.synchronize(gpu)
    seconds = time.perf_counter() - t0
    out = {"k": k, "chunk_size": chunk_size, "batch_size": batch_size, "images": len(test), "seconds": seconds,
           "log_likelihood": ll.mean, "stderr": ll.stderr, "peak_rss_mib_before": rss_before,
           "peak_rss_mib": peak_rss_mib(), "peak_reset": reset,
           "rss_mib_at_start": rss_start}
    if gpu is not None:  # on a GPU the evaluation's tensors live in its memory, not in the RSS
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(gpu) / 2**20
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--chunk-size", type=int, default=None, help="draws per image at once (default: the device's)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--test-size", type=int, default=None, help="first N test images (default all 10,000)")
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory", action="store_true", help="also measure peak memory of small settings")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.chunk_size is None:
        args.chunk_size = default_chunk_size(torch.device(args.device))
    if args.child:  # one setting in a fresh process, for its peak memory
        print(json.dumps(measure(args.k, args.chunk_size, args.batch_size, args.test_size, 1, args.device, False)))
        return 0

    gflops = matmul_gflops(args.device)
    main_run = measure(args.k, args.chunk_size, args.batch_size, args.test_size, args.train_epochs, args.device)
    floor = eval_flops(main_run["images"], args.k, args.chunk_size) / (gflops * 1e9)
    main_run.update({"floor_seconds": floor, "floor_fraction": floor / main_run["seconds"]})
    print(f"K={args.k}, {main_run['images']} images, chunks of {args.chunk_size} draws x {args.batch_size} images: "
          f"{main_run['seconds']:.1f} s, log p(x) {main_run['log_likelihood']:.2f}; matmul floor {floor:.1f} s at "
          f"{gflops:.0f} GFLOP/s ({main_run['floor_fraction']:.0%} of it reached); "
          f"peak RSS {main_run['peak_rss_mib']:.0f} MiB"
          + (f", peak GPU memory {main_run['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in main_run else ""), flush=True)

    memory = []
    if args.memory:
        for k, chunk in ((500, 50), (2000, 50), (500, 500), (2000, 500)):
            cmd = [sys.executable, __file__, "--child", "--k", str(k), "--chunk-size", str(chunk),
                   "--batch-size", str(args.batch_size), "--test-size", "200", "--device", args.device]
            row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            memory.append(row)
            gpu_peak = f", peak GPU memory {row['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in row else ""
            print(f"memory: K={k}, chunk {chunk}: peak RSS while evaluating {row['peak_rss_mib']:.0f} MiB, "
                  f"{row['rss_mib_at_start'] or float('nan'):.0f} MiB when it started{gpu_peak}", flush=True)

    info = describe()
    suffix = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
    result = {**info, "matmul_gflops": gflops, "run": main_run, "memory": memory}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"eval_time{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = info["machine"]
    lines = ["# Importance-weighted log-likelihood: time and memory\n",
             f"Command: `{info['command']}`  ",
             f"Date: {info['date']}; torch {info['versions']['torch']}, pyro {info['versions']['pyro']}; "
             f"{m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads)"
             f"{', ' + m['gpu'] if m['gpu'] else ''}, device {args.device}\n",
             "| K | images | chunk x batch | seconds | matmul floor | share of floor | peak RSS while evaluating |",
             "|---|---|---|---|---|---|---|",
             f"| {args.k} | {main_run['images']} | {args.chunk_size} x {args.batch_size} | {main_run['seconds']:.1f} | "
             f"{floor:.1f} s | {main_run['floor_fraction']:.0%} | {main_run['peak_rss_mib']:.0f} MiB |",
             f"\nlog p(x) = {main_run['log_likelihood']:.2f} ± {main_run['stderr']:.2f} nats per image (default VAE "
             f"after {args.train_epochs} epochs on 10,000 images; the figure is about speed, not quality). "
             f"Matmul rate {gflops:.0f} GFLOP/s."]
    if memory:
        lines += ["\nPeak resident memory while evaluating, in a fresh process (200 images, one epoch of "
                  "training first), with the resident memory when the evaluation started and the peak of "
                  "loading and training before it:\n",
                  "| K | chunk x batch | peak RSS while evaluating | growth while evaluating | RSS at start "
                  "| peak before |", "|---|---|---|---|---|---|"]
        mib = lambda v: "-" if v is None else f"{v:.0f} MiB"  # noqa: E731  (no /proc: no current RSS)
        lines += [f"| {r['k']} | {r['chunk_size']} x {r['batch_size']} | {r['peak_rss_mib']:.0f} MiB | "
                  f"{mib(r['rss_mib_at_start'] and r['peak_rss_mib'] - r['rss_mib_at_start'])} | "
                  f"{mib(r['rss_mib_at_start'])} | {r['peak_rss_mib_before']:.0f} MiB |" for r in memory]
        if any("peak_cuda_mib" in r for r in memory):
            lines += ["\nOn the GPU the evaluation's tensors are in its memory: peak GPU memory allocated while "
                      "evaluating, " + ", ".join(f"K={r['k']}, chunk {r['chunk_size']}: {r['peak_cuda_mib']:.0f} MiB"
                                                 for r in memory) + "."]
    (RESULTS / f"eval_time{suffix}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / f'eval_time{suffix}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
