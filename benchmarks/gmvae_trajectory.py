"""Test clustering accuracy of the GMVAE after every epoch, for studying its recipe.

Question: where does the GMVAE's clustering accuracy come from, its k-means start or its
mixture phase, and do pair options (pretraining length, network sizes) move it? Trains
``pyrovae train gmvae`` one epoch at a time (resuming the same run, so the run is the one
an uninterrupted command gives) and after each epoch prints the test ELBO and test
clustering accuracy: during pretraining that of k-means (k = K, the least inertia of the
pair's ``init_restarts`` runs) on the encoder means of the training images, the start the
mixture would get from a fully encoded training set; afterwards that of
:meth:`GMVAE.cluster`.

Run from the repository root, one seed per process::

    OMP_NUM_THREADS=1 python benchmarks/gmvae_trajectory.py [--seed 0] [--epochs 15] \\
        [--arg pretrain_examples=600000] [--arg hidden=[500,500,2000]]

Prints one line per epoch and writes benchmarks/results/gmvae_trajectory_<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyrovae  # noqa: E402
from machine import describe  # noqa: E402
from pyrovae.clustering import clustering_accuracy, kmeans  # noqa: E402
from pyrovae.models import GMVAE  # noqa: E402
from pyrovae.pairs import parse_model_args  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="a GMVAE option, as for train")
    args = p.parse_args(argv)
    options = parse_model_args(args.arg)
    data = pyrovae.load_dataset("fashion-mnist")
    test_x, test_y = data.test.x, data.test.y.long()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(1, args.epochs + 1):
            pyro.set_rng_seed(args.seed)
            run = pyrovae.train(GMVAE(**options), data, epochs=epoch, batch_size=args.batch_size, seed=args.seed,
                                out=tmp, resume=epoch > 1, quiet=True)
            pair = run.pair
            if pair.mixture_on:
                how, accuracy = "mixture", clustering_accuracy(pair.cluster(test_x), test_y)
            else:
                _, centers = kmeans(pair.encode(data.train.x), pair.k, n_init=pair.init_restarts, seed=args.seed)
                how = "k-means on codes"
                accuracy = clustering_accuracy(torch.cdist(pair.encode(test_x), centers).argmin(1), test_y)
            rows.append({"epoch": epoch, "test_elbo": run.metrics[-1]["test_elbo"], "clustering": how,
                         "accuracy": accuracy})
            print(f"epoch {epoch}: test ELBO {rows[-1]['test_elbo']:.2f}, {how} accuracy {accuracy:.3f}", flush=True)
    tag = "_".join([f"seed{args.seed}", *args.arg])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"gmvae_trajectory_{''.join(c if c.isalnum() or c in '_-' else '-' for c in tag)}.json"
    out.write_text(json.dumps({**describe(), "options": options, "seed": args.seed, "epochs": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
