"""Unsupervised clustering of Fashion-MNIST by the GMVAE, against two k-means references.

In one run, on the same data (training split for fitting, test split for scoring):

1. k-means (k = 10, k-means++ seeding, best of 2 restarts) on raw pixels;
2. for each of ``--seeds``, a plain VAE (same z_dim, hidden sizes and likelihood) trained for
   ``--vae-epochs``, then k-means on its latent means (the least inertia of as many
   restarts as the GMVAE's k-means start makes, ``init_restarts``): the
   reference the GMVAE of the same seed is paired with, as this accuracy moves by
   several points from one seed (or one more epoch) to the next; and, on the same codes,
   ``--kmeans-restarts`` single k-means runs, whose accuracies show how much of that
   movement is k-means's own draw (their mean is what k-means gives on those codes);
   beside it, the same with the plain VAE as ``pyrovae train vae`` makes it (its
   defaults: z_dim 50, one hidden layer of 400), the reference a user of the bundled
   models gets;
3. the GMVAE as a user trains it, ``pyrovae train gmvae --epochs E --batch-size B --seed S``
   (through the CLI, into a temporary run directory), for each of ``--seeds``: its first
   ``pretrain_examples`` (300000: 5 epochs of the 60000 images) train it as the plain VAE,
   then k-means on its codes starts the mixture, as VaDE (Jiang et al., 2017) does, and
   the rest train the mixture ELBO with the component summed out (``TraceEnum_ELBO``).

Test clustering accuracy (Hungarian matching) and NMI of each, with seconds; for the
GMVAE each seed and the mean. Published anchors: ClusterGAN 0.61 on Fashion-MNIST; VaDE
0.945 on MNIST.

Run from the repository root (about 25 minutes on one core with the defaults, 3 seeds)::

    OMP_NUM_THREADS=1 python benchmarks/gmvae_clustering.py [--epochs 15] [--seeds 0 1 2] [--z-dim Z] [--hidden H ...] [--likelihood L] [--train-size N] [--device cuda]

Writes ``benchmarks/results/gmvae_clustering.md``, ``.json`` and
``gmvae_clustering_components.png`` (samples, one row per component, of the first seed's GMVAE).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae.cli import main as pyrovae_cli
from pyrovae.clustering import clustering_accuracy, kmeans, normalized_mutual_info
from pyrovae.likelihoods import LIKELIHOODS
from pyrovae.models import GMVAE, VAE
from pyrovae.plots import save_rows
from pyrovae.runs import load_run

RESULTS = Path(__file__).resolve().parent / "results"


def scores(clusters: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"accuracy": clustering_accuracy(clusters, labels), "nmi": normalized_mutual_info(clusters, labels)}


def kmeans_test_scores(train_x: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, k: int,
                       seed: int, n_init: int = 4) -> dict[str, float]:
    """Fit k-means on the training rows, assign test rows to the nearest center, score them."""
    _, centers = kmeans(train_x, k, n_init=n_init, seed=seed)
    return scores(torch.cdist(test_x.float(), centers).argmin(1), test_y)


def restart_spread(train_x: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, k: int,
                   restarts: int) -> dict[str, float]:
    """Test accuracy of ``restarts`` single k-means runs (seeds 1000, 1001, ...) on the same
    codes: mean, sd, range, and the accuracy of the run k-means itself prefers (least inertia)."""
    runs = []
    for r in range(restarts):
        assign, centers = kmeans(train_x, k, n_init=1, seed=1000 + r)
        inertia = float((train_x.float() - centers[assign]).pow(2).sum())
        runs.append((inertia, clustering_accuracy(torch.cdist(test_x.float(), centers).argmin(1), test_y)))
    accs = [a for _, a in runs]
    return {"restarts": restarts, "mean": statistics.fmean(accs), "sd": statistics.stdev(accs) if restarts > 1 else 0.0,
            "min": min(accs), "max": max(accs), "least_inertia": min(runs)[1]}


def mean_row(rows: list[dict], method: str) -> dict:
    """The mean of ``rows``' scores, ELBO and seconds, with the accuracy's sd over them."""
    mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    return {"method": method, "accuracy": mean("accuracy"), "nmi": mean("nmi"), "test_elbo": mean("test_elbo"),
            "seconds": mean("seconds"),
            "accuracy_sd": statistics.stdev([r["accuracy"] for r in rows]) if len(rows) > 1 else 0.0}


def restart_lines(vae_rows: list[dict], gmvae_rows: list[dict]) -> list[str]:
    """The spread of k-means on each reference's codes over single restarts, and the GMVAE
    against its mean (the accuracy k-means on those codes gives on average)."""
    spreads = [v.get("restart_spread") for v in vae_rows]
    if not all(spreads):
        return []
    per_seed = "; ".join(f"{s['mean']:.3f} +- {s['sd']:.3f} (range {s['min']:.3f}-{s['max']:.3f}, least inertia "
                         f"{s['least_inertia']:.3f})" for s in spreads)
    gains = [g["accuracy"] - s["mean"] for g, s in zip(gmvae_rows, spreads)]
    return [f"k-means is itself a draw: {spreads[0]['restarts']} single k-means runs (k-means++ seeds) on each "
            f"reference VAE's codes give test accuracy {per_seed}; each reference row above keeps the least-"
            f"inertia run of {spreads[0]['reference_restarts']} others. The "
            f"GMVAE minus that mean, per seed: {', '.join(f'{g:+.3f}' for g in gains)}, mean "
            f"{statistics.fmean(gains):+.3f}.", ""]


def table(rows: list[dict]) -> str:
    lines = ["| method | test accuracy | test NMI | test ELBO | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        elbo = f"{r['test_elbo']:.2f}" if r.get("test_elbo") is not None else "-"
        lines.append(f"| {r['method']} | {r['accuracy']:.3f} | {r['nmi']:.3f} | {elbo} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15, help="GMVAE epochs, pretraining included")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one GMVAE run per seed")
    parser.add_argument("--vae-epochs", type=int, default=10)
    gmvae_defaults = {k: v.default for k, v in inspect.signature(GMVAE).parameters.items()}
    parser.add_argument("--z-dim", type=int, default=gmvae_defaults["z_dim"],
                        help="latent dimensions of the GMVAE and of the reference VAEs (default: the GMVAE's)")
    parser.add_argument("--hidden", type=int, nargs="+", default=list(gmvae_defaults["hidden"]),
                        help="encoder hidden sizes of the GMVAE and of the reference VAEs, the decoders mirroring "
                        "them, e.g. 500 500 2000 as VaDE (default: the GMVAE's)")
    parser.add_argument("--init-restarts", type=int, default=gmvae_defaults["init_restarts"],
                        help="k-means restarts of the GMVAE's start and of the references on VAE codes, the least "
                        "inertia kept (default: the GMVAE's)")
    parser.add_argument("--likelihood", default=gmvae_defaults["likelihood"], choices=list(LIKELIHOODS),
                        help="likelihood of the GMVAE and of the same-size reference VAE (default: the GMVAE's); "
                        "the default-VAE reference keeps its own")
    parser.add_argument("--train-size", type=int, default=None, help="first N training images (default all 60000)")
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--gmvae-options", default="", help="extra pair options for `pyrovae train gmvae`, "
                        "e.g. '--pretrain-examples 600000'")
    parser.add_argument("--kmeans-restarts", type=int, default=10,
                        help="single k-means runs on each reference VAE's codes, for the spread of its accuracy")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: every model and k-means runs there")
    args = parser.parse_args(argv)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    data = pyrovae.load_dataset("fashion-mnist", train_size=args.train_size, test_size=args.test_size)
    k = len(data.classes) if getattr(data, "classes", None) else 10
    # the reference VAEs get the GMVAE's networks: its hidden sizes and the same latent size
    z_dim, hidden, restarts = args.z_dim, args.hidden, args.init_restarts
    train_x, test_x, test_y = data.train.x.to(args.device), data.test.x.to(args.device), data.test.y.long()
    flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
    rows: list[dict] = []
    t_all = time.perf_counter()

    def report(row: dict) -> None:
        rows.append(row)
        print(f"{row['method']}: accuracy {row['accuracy']:.3f}, NMI {row['nmi']:.3f}, {row['seconds']:.0f} s", flush=True)

    t0 = time.perf_counter()
    s = kmeans_test_scores(flat(train_x), flat(test_x), test_y, k, args.seeds[0], n_init=2)
    report({"method": "k-means on raw pixels", **s, "seconds": time.perf_counter() - t0})

    def vae_reference(options: dict, label: str, seed: int) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
        """Make ``VAE(**options)`` under the GMVAE's seed and train it so, k-means its training
        codes, score the test codes."""
        t0 = time.perf_counter()
        pyro.set_rng_seed(seed)
        vae = VAE(**options)
        metrics = pyrovae.train(vae, data, epochs=args.vae_epochs, batch_size=args.batch_size, seed=seed,
                                 device=args.device).metrics
        codes = vae.encode(train_x), vae.encode(test_x)
        s = kmeans_test_scores(*codes, test_y, k, seed, n_init=restarts)
        row = {"method": f"k-means on {label} latent means ({args.vae_epochs} epochs), seed {seed}", **s,
               "test_elbo": metrics[-1]["test_elbo"], "seconds": time.perf_counter() - t0}
        report(row)
        return row, codes

    vae_rows, default_rows = [], []
    vae_defaults = {k: v.default for k, v in inspect.signature(VAE).parameters.items()}
    default_label = f"default plain-VAE (z_dim {vae_defaults['z_dim']}, hidden {list(vae_defaults['hidden'])})"
    for seed in args.seeds:  # one reference per seed: k-means on VAE codes varies by several points with the seed
        row, codes = vae_reference({"z_dim": z_dim, "hidden": hidden, "likelihood": args.likelihood}, "plain-VAE", seed)
        vae_rows.append(row)
        if args.kmeans_restarts:
            spread = row["restart_spread"] = restart_spread(*codes, test_y, k, args.kmeans_restarts)
            spread["reference_restarts"] = restarts
            print(f"  {spread['restarts']} single k-means runs on these codes: accuracy {spread['mean']:.3f} +- "
                  f"{spread['sd']:.3f} (range {spread['min']:.3f}-{spread['max']:.3f}; least inertia "
                  f"{spread['least_inertia']:.3f})", flush=True)
    rows.append(mean_row(vae_rows, f"k-means on plain-VAE latent means, mean of {len(vae_rows)} seeds"))
    for seed in args.seeds:
        default_rows.append(vae_reference({}, default_label, seed)[0])
    rows.append(mean_row(default_rows, f"k-means on {default_label} latent means, mean of {len(default_rows)} seeds"))

    gmvae_rows, figure = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            command = ["train", "gmvae", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                       "--seed", str(seed), "--out", f"{tmp}/gmvae-{seed}", "--quiet", *shlex.split(args.gmvae_options)]
            if args.z_dim != gmvae_defaults["z_dim"]:
                command += ["--arg", f"z_dim={args.z_dim}"]
            if args.init_restarts != gmvae_defaults["init_restarts"]:
                command += ["--arg", f"init_restarts={args.init_restarts}"]
            if args.likelihood != gmvae_defaults["likelihood"]:
                command += ["--arg", f"likelihood={args.likelihood}"]
            if args.hidden != list(gmvae_defaults["hidden"]):
                command += ["--arg", f"hidden={json.dumps(args.hidden, separators=(',', ':'))}"]
            if args.train_size:
                command += ["--train-size", str(args.train_size)]
            if args.test_size:
                command += ["--test-size", str(args.test_size)]
            if args.device != "cpu":
                command += ["--device", args.device]
            t0 = time.perf_counter()
            if pyrovae_cli(command) != 0:
                raise SystemExit(f"pyrovae {' '.join(command)} failed")
            seconds = time.perf_counter() - t0
            run = load_run(f"{tmp}/gmvae-{seed}", args.device)
            clusters = run.pair.cluster(test_x)
            epoch_seconds = [m["seconds"] for m in run.metrics]
            row = {"method": f"GMVAE, seed {seed}", **scores(clusters, test_y), "test_elbo": run.metrics[-1]["test_elbo"],
                   "seconds": seconds, "components_used": int(clusters.unique().numel()),
                   "command": "pyrovae " + " ".join(c for c in command if not c.startswith(tmp)).replace(" --out", ""),
                   "epoch_seconds": epoch_seconds, "model_args": run.config["model_args"]}
            report(row)
            gmvae_rows.append(row)
            if figure is None:
                figure = save_rows(run.pair.sample_by_component(10), out / "gmvae_clustering_components.png",
                                   "GMVAE samples, one row per component", [f"component {i}" for i in range(run.pair.k)])
    rows.append(mean_row(gmvae_rows, f"GMVAE, mean of {len(gmvae_rows)} seeds ({args.epochs} epochs)"))

    total = time.perf_counter() - t_all
    pretrain = gmvae_rows[0]["model_args"]["pretrain_examples"]

    def against(refs: list[dict]) -> tuple[int, list[float], float]:
        """Seeds where the GMVAE beats raw pixels and ``refs`` (same seed), its gains over ``refs``, their SE."""
        beat = sum(g["accuracy"] > max(rows[0]["accuracy"], v["accuracy"]) for g, v in zip(gmvae_rows, refs))
        gains = [g["accuracy"] - v["accuracy"] for g, v in zip(gmvae_rows, refs)]
        return beat, gains, statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")

    beat, gains, gain_se = against(vae_rows)
    beat_default, gains_default, gain_default_se = against(default_rows)
    late = [s for r in gmvae_rows for s in r["epoch_seconds"][-3:]]
    md = "\n".join([
        "# GMVAE clustering on Fashion-MNIST", "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', 'benchmarks/gmvae_clustering.py', *(argv if argv is not None else sys.argv[1:])])}`  ",
        f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; torch {torch.__version__}, pyro {pyro.__version__}; "
        f"{platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs  ",
        f"Data: {len(data.train)} training images (fit), {len(data.test)} test images (scored); K = {k}, "
        f"z_dim = {z_dim}, hidden = {hidden}, batch {args.batch_size}; "
        f"{args.likelihood} likelihood on "
        f"{'dynamically binarized pixels' if LIKELIHOODS[args.likelihood].binarize else 'grey levels'}. "
        f"Total {total / 60:.1f} min.  ",
        f"GMVAE: `{gmvae_rows[0]['command'].replace(f'--seed {args.seeds[0]}', '--seed S')}`, "
        f"seeds {', '.join(map(str, args.seeds))}; the first {pretrain} training examples "
        f"({pretrain / len(data.train):g} epochs) pretrain it as the plain VAE, then k-means on its codes starts "
        "the mixture.", "",
        table(rows), "",
        "Accuracy: Hungarian matching of clusters to the 10 classes; NMI: arithmetic normalization. "
        "GMVAE seconds are the whole `pyrovae train` command (pretraining and test ELBO each epoch included). "
        "Published anchors: ClusterGAN 0.61 (Fashion-MNIST), VaDE 0.945 (MNIST).", "",
        f"The GMVAE beat k-means on raw pixels and on the same-size plain VAE's codes (the same seed's) in {beat} of "
        f"{len(gmvae_rows)} seeds; "
        f"its accuracy minus the same seed's VAE reference: {', '.join(f'{g:+.3f}' for g in gains)}, mean "
        f"{statistics.fmean(gains):+.3f} +- {gain_se:.3f} (standard error). Against raw pixels and the "
        f"{default_label} of the same seed it was ahead in {beat_default} of {len(gmvae_rows)} seeds, by "
        f"{', '.join(f'{g:+.3f}' for g in gains_default)} over that VAE, mean {statistics.fmean(gains_default):+.3f} "
        f"+- {gain_default_se:.3f}. Accuracy sd over seeds "
        f"{rows[-1]['accuracy_sd']:.3f}; components used on the test set: "
        f"{', '.join(str(r['components_used']) for r in gmvae_rows)}. Seconds per epoch, last three epochs of each seed "
        f"(median, to show no late slowdown): {statistics.median(late):.1f}; first epochs: "
        f"{statistics.median([r['epoch_seconds'][0] for r in gmvae_rows]):.1f}.", "",
        *restart_lines(vae_rows, gmvae_rows),
        f"![samples per component]({figure.name})", "",
    ])
    (out / "gmvae_clustering.md").write_text(md)
    (out / "gmvae_clustering.json").write_text(json.dumps({"args": vars(args), "rows": rows, "total_seconds": total},
                                                           indent=2) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
