"""pyrovae's SVI trainer against a plain PyTorch loop: test ELBO and time per epoch.

Question: does ``pyrovae train vae`` with its defaults (z_dim=50, hidden=(400,),
Bernoulli likelihood, Trace_ELBO, batch size 256, Adam lr=1e-3) reach a test ELBO
within 2 nats of a hand-written PyTorch loop that trains the same networks on the same
batches for the same number of epochs, and how long does each take?

The plain loop builds ``Encoder((1,28,28), [400], 50)`` and ``Decoder(50, [400], (1,28,28))``
from :mod:`pyrovae.nets` (the same initial weights as ``VAE()`` under the same seed),
minimizes the single-sample negative ELBO log q(z|x) - log p(z) - log p(x|z) summed over
the batch, as Trace_ELBO does, and draws the same shuffles and dynamic binarizations
per epoch as :func:`pyrovae.train`. Test ELBO is the mean single-sample ELBO in nats
per image on the fixed binarization of the Fashion-MNIST test split; an epoch's
seconds cover training and this evaluation, as in pyrovae's ``metrics``.

Run from the repository root::

    python benchmarks/vs_pytorch.py --epochs 10 [--seed 0] [--train-size N] [--threads T]

Prints a per-epoch table and a summary; writes them to benchmarks/results/vs_pytorch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyro
import torch
import torch.nn.functional as F
from torch.distributions import Normal

import pyrovae
from pyrovae.data import Dataset, Split, batches, fixed_binarization
from pyrovae.models import VAE
from pyrovae.nets import Decoder, Encoder
from pyrovae.train import epoch_generator

X_SHAPE, HIDDEN, Z_DIM = (1, 28, 28), [400], 50
BATCH_SIZE, TEST_BATCH_SIZE, LR = 256, 1000, 1e-3  # pyrovae.train's defaults; it evaluates in batches of 1000
TOLERANCE = 2.0  # nats per image
RESULTS = Path(__file__).resolve().parent / "results" / "vs_pytorch.json"


def elbo(encoder: Encoder, decoder: Decoder, x: torch.Tensor) -> torch.Tensor:
    """Single-sample ELBO per image: log p(x|z) + log p(z) - log q(z|x) at a reparameterized z."""
    loc, scale = encoder(x)
    z = loc + scale * torch.randn_like(loc)
    log_lik = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(dim=(1, 2, 3))
    log_prior = Normal(torch.zeros_like(z), 1.0).log_prob(z).sum(-1)
    log_q = Normal(loc, scale).log_prob(z).sum(-1)
    return log_lik + log_prior - log_q


@torch.no_grad()
def test_elbo(encoder: Encoder, decoder: Decoder, test_x: torch.Tensor) -> float:
    total = sum(elbo(encoder, decoder, x).sum().item() for x, _ in batches(Split(test_x, test_x), TEST_BATCH_SIZE))
    return total / test_x.shape[0]


def train_plain(data: Dataset, epochs: int, seed: int) -> list[dict[str, Any]]:
    """The hand-written loop; one record per epoch, like pyrovae's metrics."""
    torch.manual_seed(seed)
    encoder, decoder = Encoder(X_SHAPE, HIDDEN, Z_DIM), Decoder(Z_DIM, HIDDEN, X_SHAPE)
    optim = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)
    test_x = fixed_binarization(data.test.x)
    torch.manual_seed(seed)  # pyrovae.train reseeds before its first step too
    records = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        encoder.train()
        decoder.train()
        total = 0.0
        # pyrovae.train's per-epoch generators (salt 0: shuffle, salt 1: binarization)
        cpu = torch.device("cpu")
        shuffle, flips = epoch_generator(seed, epoch, 0, cpu), epoch_generator(seed, epoch, 1, cpu)
        for x, _ in batches(data.train, BATCH_SIZE, shuffle=shuffle, binarize_with=flips):
            loss = -elbo(encoder, decoder, x).sum()
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item()
        encoder.eval()
        decoder.eval()
        test = test_elbo(encoder, decoder, test_x)
        records.append({"epoch": epoch, "train_elbo": -total / len(data.train), "test_elbo": test,
                        "seconds": time.perf_counter() - t0})
    return records


def train_pyrovae(data: Dataset, epochs: int, seed: int) -> list[dict[str, Any]]:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    run = pyrovae.train(VAE(), data, epochs=epochs, seed=seed, quiet=True)
    return run.metrics


def summarize(plain: list[dict[str, Any]], pv: list[dict[str, Any]], wall: dict[str, float]) -> dict[str, Any]:
    med_plain = statistics.median(r["seconds"] for r in plain)
    med_pv = statistics.median(r["seconds"] for r in pv)
    diff = pv[-1]["test_elbo"] - plain[-1]["test_elbo"]
    return {
        "final_test_elbo_plain": plain[-1]["test_elbo"], "final_test_elbo_pyrovae": pv[-1]["test_elbo"],
        "difference_pyrovae_minus_plain": diff, "within_tolerance": abs(diff) <= TOLERANCE,
        "tolerance_nats": TOLERANCE,
        "total_seconds_plain": wall["plain"], "total_seconds_pyrovae": wall["pyrovae"],
        "median_seconds_per_epoch_plain": med_plain, "median_seconds_per_epoch_pyrovae": med_pv,
        "ratio_pyrovae_over_plain": med_pv / med_plain,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training images")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(T)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = pyrovae.load_dataset("fashion-mnist", train_size=args.train_size)

    wall = {}
    t0 = time.perf_counter()
    plain = train_plain(data, args.epochs, args.seed)
    wall["plain"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pv = train_pyrovae(data, args.epochs, args.seed)
    wall["pyrovae"] = time.perf_counter() - t0
    summary = summarize(plain, pv, wall)

    print(f"{'epoch':>5}  {'test ELBO plain':>15}  {'test ELBO pyrovae':>17}  {'s plain':>8}  {'s pyrovae':>9}")
    for a, b in zip(plain, pv):
        print(f"{a['epoch']:>5}  {a['test_elbo']:>15.2f}  {b['test_elbo']:>17.2f}  {a['seconds']:>8.2f}  {b['seconds']:>9.2f}")
    s = summary
    print(f"\nfinal test ELBO: plain {s['final_test_elbo_plain']:.2f}, pyrovae {s['final_test_elbo_pyrovae']:.2f}, "
          f"difference (pyrovae - plain) {s['difference_pyrovae_minus_plain']:+.2f} nats "
          f"({'within' if s['within_tolerance'] else 'NOT within'} {TOLERANCE:g})")
    print(f"total seconds: plain {s['total_seconds_plain']:.1f}, pyrovae {s['total_seconds_pyrovae']:.1f}")
    print(f"seconds/epoch (median): plain {s['median_seconds_per_epoch_plain']:.2f}, "
          f"pyrovae {s['median_seconds_per_epoch_pyrovae']:.2f}, ratio pyrovae/plain {s['ratio_pyrovae_over_plain']:.2f}")

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "pyro": pyro.__version__, "pyrovae": pyrovae.__version__},
        "command": shlex.join(["python", *sys.argv]),
        "config": {"epochs": args.epochs, "seed": args.seed, "train_size": len(data.train),
                   "test_size": len(data.test), "batch_size": BATCH_SIZE, "lr": LR,
                   "z_dim": Z_DIM, "hidden": HIDDEN},
        "epochs": [{"epoch": a["epoch"], **{f"{k}_{name}": r[k] for name, r in (("plain", a), ("pyrovae", b))
                                            for k in ("train_elbo", "test_elbo", "seconds")}}
                   for a, b in zip(plain, pv)],
        "summary": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
