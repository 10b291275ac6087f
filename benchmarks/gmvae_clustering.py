"""Unsupervised clustering of Fashion-MNIST by the GMVAE, against two k-means references.

In one run, on the same data (training split for fitting, test split for scoring):

1. k-means (k = 10, k-means++ seeding, best of 2 restarts) on raw pixels;
2. a plain VAE (same z_dim and hidden sizes) trained for ``--vae-epochs``, then k-means
   on its latent means (best of 4 restarts);
3. the GMVAE (K = 10, ``TraceEnum_ELBO``) from scratch, ``--epochs`` epochs;
4. the GMVAE warm-started from step 2, as VaDE (Jiang et al., 2017) initializes from a
   pretrained autoencoder and a mixture fit on its codes: the VAE's encoder and decoder
   weights, component means and scales from the k-means clusters of the latent codes,
   and the classifier fitted (cross-entropy, ``--classifier-epochs``) to those clusters;
   then ``--epochs`` epochs of the GMVAE's own ELBO.

Test clustering accuracy (Hungarian matching) and NMI of each, with seconds. Published
anchors: ClusterGAN 0.61 on Fashion-MNIST; VaDE 0.945 on MNIST.

Run from the repository root (about 15 minutes on 2 cores with the defaults)::

    OMP_NUM_THREADS=1 python benchmarks/gmvae_clustering.py [--epochs 10] [--train-size N]

Writes ``benchmarks/results/gmvae_clustering.md``, ``.json`` and
``gmvae_clustering_components.png`` (samples, one row per component, of the warm-started GMVAE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

import pyrovae
from pyrovae.clustering import clustering_accuracy, kmeans, normalized_mutual_info
from pyrovae.models import GMVAE, VAE
from pyrovae.plots import save_rows

RESULTS = Path(__file__).resolve().parent / "results"


def scores(clusters: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"accuracy": clustering_accuracy(clusters, labels), "nmi": normalized_mutual_info(clusters, labels)}


def kmeans_test_scores(train_x: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, k: int,
                       seed: int, n_init: int = 4) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Fit k-means on the training rows, assign test rows to the nearest center, score them."""
    assign, centers = kmeans(train_x, k, n_init=n_init, seed=seed)
    test_assign = torch.cdist(test_x.float(), centers).argmin(1)
    return scores(test_assign, test_y), assign, centers


def warm_start(gmvae: GMVAE, vae: VAE, train_x: torch.Tensor, assign: torch.Tensor, centers: torch.Tensor,
               classifier_epochs: int, batch_size: int, seed: int) -> None:
    """Initialize ``gmvae`` from the trained ``vae`` and k-means ``assign``/``centers`` of its codes
    (the architectures must match: one hidden layer, same z_dim)."""
    with torch.no_grad():
        gmvae.decoder.load_state_dict(vae.decoder.state_dict())
        gmvae.encoder.x_in.load_state_dict(vae.encoder.body[0].state_dict())
        gmvae.encoder.head.load_state_dict(vae.encoder.head.state_dict())
        gmvae.encoder.y_in.weight.zero_()
        loc, scale = vae.encoder(train_x)
        gmvae.prior.loc.copy_(centers)
        for k in range(gmvae.k):
            members = assign == k
            if members.sum() < 2:
                continue
            var = loc[members].var(0) + scale[members].pow(2).mean(0)  # the aggregate posterior's spread
            gmvae.prior.raw_scale[k] = torch.log(torch.expm1(var.sqrt().clamp(min=1e-3)))
    optim = torch.optim.Adam(gmvae.classifier.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(classifier_epochs):
        for idx in torch.randperm(train_x.shape[0], generator=g).split(batch_size):
            loss = F.cross_entropy(gmvae.logits(train_x[idx]), assign[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()


def train_gmvae(pair: GMVAE, data: pyrovae.Dataset, epochs: int, batch_size: int, seed: int) -> list[dict]:
    run = pyrovae.train(pair, data, epochs=epochs, batch_size=batch_size, seed=seed, quiet=False)
    return run.metrics


def table(rows: list[dict]) -> str:
    lines = ["| method | test accuracy | test NMI | test ELBO | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        elbo = f"{r['test_elbo']:.2f}" if r.get("test_elbo") is not None else "-"
        lines.append(f"| {r['method']} | {r['accuracy']:.3f} | {r['nmi']:.3f} | {elbo} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="GMVAE epochs (each of the two GMVAE runs)")
    parser.add_argument("--vae-epochs", type=int, default=10)
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=None, help="first N training images (default all 60000)")
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--z-dim", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-scratch", action="store_true", help="skip the GMVAE trained from scratch")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    # q(y | x) of unused components falls to ~1e-40: without this, denormal arithmetic makes
    # each epoch several times slower than the one before on x86 CPUs
    torch.set_flush_denormal(True)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    data = pyrovae.load_dataset("fashion-mnist", train_size=args.train_size, test_size=args.test_size)
    k = len(data.classes) if getattr(data, "classes", None) else 10
    train_x, test_x, test_y = data.train.x, data.test.x, data.test.y.long()
    flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
    rows: list[dict] = []
    t_all = time.perf_counter()

    def report(row: dict) -> None:
        rows.append(row)
        print(f"{row['method']}: accuracy {row['accuracy']:.3f}, NMI {row['nmi']:.3f}, {row['seconds']:.0f} s", flush=True)

    t0 = time.perf_counter()
    s, _, _ = kmeans_test_scores(flat(train_x), flat(test_x), test_y, k, args.seed, n_init=2)
    report({"method": "k-means on raw pixels", **s, "seconds": time.perf_counter() - t0})

    t0 = time.perf_counter()
    pyro.set_rng_seed(args.seed)
    vae = VAE(z_dim=args.z_dim, hidden=[args.hidden])
    vae_metrics = pyrovae.train(vae, data, epochs=args.vae_epochs, batch_size=args.batch_size, seed=args.seed).metrics
    s, assign, centers = kmeans_test_scores(vae.encode(train_x), vae.encode(test_x), test_y, k, args.seed)
    report({"method": f"k-means on plain-VAE latent means ({args.vae_epochs} epochs)", **s,
            "test_elbo": vae_metrics[-1]["test_elbo"], "seconds": time.perf_counter() - t0})

    if not args.skip_scratch:
        t0 = time.perf_counter()
        pyro.set_rng_seed(args.seed)
        scratch = GMVAE(k=k, z_dim=args.z_dim, hidden=[args.hidden])
        metrics = train_gmvae(scratch, data, args.epochs, args.batch_size, args.seed)
        report({"method": f"GMVAE from scratch ({args.epochs} epochs, enum)", **scores(scratch.cluster(test_x), test_y),
                "test_elbo": metrics[-1]["test_elbo"], "seconds": time.perf_counter() - t0,
                "components_used": int(scratch.cluster(test_x).unique().numel())})

    t0 = time.perf_counter()
    pyro.set_rng_seed(args.seed)
    warm = GMVAE(k=k, z_dim=args.z_dim, hidden=[args.hidden])
    warm_start(warm, vae, train_x, assign, centers, args.classifier_epochs, args.batch_size, args.seed)
    s0 = scores(warm.cluster(test_x), test_y)
    print(f"warm start before ELBO training: accuracy {s0['accuracy']:.3f}, NMI {s0['nmi']:.3f}", flush=True)
    metrics = train_gmvae(warm, data, args.epochs, args.batch_size, args.seed)
    report({"method": f"GMVAE warm-started from the VAE + k-means ({args.epochs} epochs, enum)",
            **scores(warm.cluster(test_x), test_y), "test_elbo": metrics[-1]["test_elbo"],
            "seconds": time.perf_counter() - t0 + rows[1]["seconds"], "before_elbo_training": s0,
            "components_used": int(warm.cluster(test_x).unique().numel())})
    figure = save_rows(warm.sample_by_component(10), out / "gmvae_clustering_components.png",
                       "GMVAE samples, one row per component", [f"component {i}" for i in range(warm.k)])

    total = time.perf_counter() - t_all
    md = "\n".join([
        "# GMVAE clustering on Fashion-MNIST", "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', 'benchmarks/gmvae_clustering.py', *(argv if argv is not None else sys.argv[1:])])}`  ",
        f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; torch {torch.__version__}, pyro {pyro.__version__}; "
        f"{platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, 2 shared CPU cores  ",
        f"Data: {len(data.train)} training images (fit), {len(data.test)} test images (scored); K = {k}, "
        f"z_dim = {args.z_dim}, hidden = {args.hidden}, batch {args.batch_size}, seed {args.seed}; "
        f"Bernoulli likelihood on dynamically binarized pixels. Total {total / 60:.1f} min.", "",
        table(rows), "",
        "Accuracy: Hungarian matching of clusters to the 10 classes; NMI: arithmetic normalization. "
        "The warm-started GMVAE's seconds include the VAE it starts from. Published anchors: "
        "ClusterGAN 0.61 (Fashion-MNIST), VaDE 0.945 (MNIST).", "",
        f"![samples per component]({figure.name})", "",
    ])
    (out / "gmvae_clustering.md").write_text(md)
    (out / "gmvae_clustering.json").write_text(json.dumps({"args": vars(args), "rows": rows, "total_seconds": total},
                                                           indent=2) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
