"""Pool the seeds of several ``gmvae_clustering.py`` results into one paired comparison.

``gmvae_clustering.py`` runs its seeds one after another; two processes with disjoint
``--seeds`` and ``--results`` directories use both cores. This script reads their
``gmvae_clustering.json`` files and prints, over all seeds: the GMVAE's mean test accuracy,
the mean of the same-seed references (k-means on plain-VAE codes), the paired difference
with its standard error, how many seeds the GMVAE is above its reference, and the raw-pixel
k-means accuracy of each file; the same for NMI.

Run from the repository root::

    python benchmarks/gmvae_pool.py benchmarks/results benchmarks/results/gmvae_clustering_seeds5-9
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path


def per_seed(rows: list[dict], prefix: str, score: str) -> dict[int, float]:
    """``{seed: score}`` of the rows whose method starts with ``prefix`` and ends with ``seed S``."""
    out = {}
    for row in rows:
        match = re.search(r"seed (\d+)$", row["method"])
        if row["method"].startswith(prefix) and match:
            out[int(match.group(1))] = row[score]
    return out


def paired(name: str, gmvae: dict[int, float], reference: dict[int, float]) -> None:
    """Print the GMVAE's and the references' mean ``name`` over the seeds, and their paired difference."""
    seeds = sorted(gmvae)
    gains = [gmvae[s] - reference[s] for s in seeds]
    se = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
    print(f"{name}: GMVAE {statistics.fmean(gmvae.values()):.3f} ({', '.join(f'{gmvae[s]:.3f}' for s in seeds)})")
    print(f"{name}: k-means on plain-VAE codes {statistics.fmean(reference[s] for s in seeds):.3f} "
          f"({', '.join(f'{reference[s]:.3f}' for s in seeds)})")
    print(f"{name}: GMVAE minus reference {statistics.fmean(gains):+.3f} +- {se:.3f} (standard error), "
          f"above it in {sum(g > 0 for g in gains)} of {len(gains)} seeds")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", help="directories holding gmvae_clustering.json")
    args = p.parse_args(argv)
    scores = ("accuracy", "nmi")
    gmvae: dict[str, dict[int, float]] = {k: {} for k in scores}
    reference: dict[str, dict[int, float]] = {k: {} for k in scores}
    pixels = []
    for d in args.dirs:
        rows = json.loads((Path(d) / "gmvae_clustering.json").read_text())["rows"]
        repeated = set(per_seed(rows, "GMVAE, seed ", "accuracy")) & set(gmvae["accuracy"])
        if repeated:
            p.error(f"{d} repeats seeds {sorted(repeated)}")
        for k in scores:
            gmvae[k].update(per_seed(rows, "GMVAE, seed ", k))
            reference[k].update(per_seed(rows, "k-means on plain-VAE latent means", k))
        pixels.append(rows[0])
    print(f"seeds: {', '.join(map(str, sorted(gmvae['accuracy'])))}")
    for k in scores:
        paired(k, gmvae[k], reference[k])
    print("k-means on raw pixels, one per file: " + ", ".join(f"accuracy {r['accuracy']:.3f} (NMI {r['nmi']:.3f})"
                                                             for r in pixels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
