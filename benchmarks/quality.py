"""Test ELBO and importance-weighted log-likelihood after a fixed number of epochs:
pyrovae's ``trace``, ``meanfield`` and ``iwae-5`` against the plain PyTorch loop.

Question: does training through Pyro (and through pyrovae's other estimators) reach the
same quality as the hand-written loop in the same number of epochs? Every run trains the
default VAE (784-400-50, Bernoulli, batch 256, Adam 1e-3) from the same initial weights
on the same shuffles and binarizations (``benchmarks/plain_vae.py``). All are scored
alike: the single-sample test ELBO on the fixed test binarization, and ``log p(x)``
estimated by :func:`pyrovae.evaluate.importance_log_likelihood` with ``K`` guide draws per
image (the plain loop's networks are loaded into a ``pyrovae.models.VAE`` for this).

Run from the repository root::

    python benchmarks/quality.py [--epochs 10] [--k 1000] [--test-size N] [--elbos trace,meanfield,iwae-5]

Prints a table; writes benchmarks/results/quality.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyrovae  # noqa: E402
from machine import describe  # noqa: E402
from plain_vae import PlainVAE  # noqa: E402
from pyrovae.data import evaluation_split  # noqa: E402
from pyrovae.evaluate import importance_log_likelihood  # noqa: E402
from pyrovae.models import VAE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--elbos", default="trace,meanfield,iwae-5")
    p.add_argument("--k", type=int, default=1000, help="importance samples per test image")
    p.add_argument("--test-size", type=int, default=None, help="score the first N test images (default all)")
    p.add_argument("--train-size", type=int, default=None, help="first N training images (quick checks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    data = pyrovae.load_dataset("fashion-mnist", train_size=args.train_size, test_size=args.test_size)
    test = evaluation_split(data.test, True).to(args.device)
    t_start = time.perf_counter()

    rows, per_example = [], {}

    def score(name: str, pair: VAE, test_elbo: float, train_seconds: float) -> None:
        t0 = time.perf_counter()
        ll = importance_log_likelihood(pair.to(args.device).eval(), test, k=args.k, progress=True)
        per_example[name] = ll.per_example
        first = next(iter(per_example.values()))
        diff = ll.per_example - first
        rows.append({"loop": name, "test_elbo": test_elbo, "log_likelihood": ll.mean, "stderr": ll.stderr,
                     "vs_plain_stderr": (diff.std() / len(diff) ** 0.5).item() if len(rows) else 0.0,
                     "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t0})
        print(f"{name}: test ELBO {test_elbo:.2f}, log p(x) {ll.mean:.2f} +- {ll.stderr:.2f} (K={args.k}); "
              f"trained in {train_seconds:.0f} s", flush=True)

    t0 = time.perf_counter()
    plain = PlainVAE(data, args.seed, device=args.device)
    record = [plain.epoch() for _ in range(args.epochs)][-1]
    score("plain PyTorch", plain.as_pair(), record["test_elbo"], time.perf_counter() - t0)
    for elbo in args.elbos.split(","):
        t0 = time.perf_counter()
        pyro.set_rng_seed(args.seed)
        run = pyrovae.train(VAE(), data, epochs=args.epochs, elbo=elbo, seed=args.seed, device=args.device,
                            quiet=True)
        score(f"pyrovae {elbo}", run.pair, run.metrics[-1]["test_elbo"], time.perf_counter() - t0)

    ref = rows[0]
    lines = ["| loop | test ELBO | vs plain | log p(x), K=%d | vs plain | train s |" % args.k,
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['loop']} | {r['test_elbo']:.2f} | {r['test_elbo'] - ref['test_elbo']:+.2f} | "
              f"{r['log_likelihood']:.2f} ± {r['stderr']:.2f} | {r['log_likelihood'] - ref['log_likelihood']:+.2f} ± {r['vs_plain_stderr']:.2f} | "
              f"{r['train_seconds']:.0f} |" for r in rows]
    print("\n" + "\n".join(lines))

    info = describe()
    result = {**info, "config": {"epochs": args.epochs, "k": args.k, "seed": args.seed, "device": args.device,
                                 "train_size": len(data.train), "test_size": len(data.test)},
              "total_seconds": time.perf_counter() - t_start, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "quality.md").write_text(
        f"# Quality after {args.epochs} epochs: pyrovae's estimators against plain PyTorch\n\n"
        f"Command: `{info['command']}`  \nDate: {info['date']}; torch {info['versions']['torch']}, "
        f"pyro {info['versions']['pyro']}; {info['machine']['cpu']} ({info['machine']['cpu_count']} CPUs), "
        f"device {args.device}. Total {result['total_seconds'] / 60:.1f} min.  \n"
        f"Default VAE, {len(data.train)} training images, seed {args.seed}; scored on the fixed binarization of "
        f"{len(data.test)} test images (log p(x): importance sampling with K = {args.k}, ± one standard error "
        f"over images; for the difference with plain, the paired standard error over images). Nats per image, higher is better.\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
