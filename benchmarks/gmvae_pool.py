"""Pool the seeds of several ``gmvae_clustering.py`` results into one paired comparison.

``gmvae_clustering.py`` runs its seeds one after another; two processes with disjoint
``--seeds`` and ``--results`` directories use both cores. This script reads their
``gmvae_clustering.json`` files and prints, over all seeds: the GMVAE's mean test accuracy,
the mean of the same-seed references (k-means on the codes of the same-size plain VAE, and
of the default plain VAE where the files have it), the paired differences with their
standard errors, how many seeds the GMVAE is above each reference, and the raw-pixel k-means
accuracy of each file; the same for NMI.

Run from the repository root::

    python benchmarks/gmvae_pool.py benchmarks/results benchmarks/results/gmvae_clustering_seeds5-9

Prints the figures and writes them to benchmarks/results/gmvae_pool.md (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
lines: list[str] = []


def say(line: str) -> None:
    """Print ``line`` and keep it for the results file."""
    print(line)
    lines.append(line)


def per_seed(rows: list[dict], prefix: str, score: str) -> dict[int, float]:
    """``{seed: score}`` of the rows whose method starts with ``prefix`` and ends with ``seed S``."""
    out = {}
    for row in rows:
        match = re.search(r"seed (\d+)$", row["method"])
        if row["method"].startswith(prefix) and match:
            out[int(match.group(1))] = row[score]
    return out


def paired(name: str, gmvae: dict[int, float], reference: dict[int, float], label: str) -> None:
    """Print the reference's mean ``name`` over the GMVAE's seeds, and the GMVAE's paired difference."""
    seeds = sorted(gmvae)
    if set(seeds) - set(reference):
        say(f"{name}: {label}: missing for seeds {sorted(set(seeds) - set(reference))}")
        return
    gains = [gmvae[s] - reference[s] for s in seeds]
    se = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
    say(f"{name}: {label} {statistics.fmean(reference[s] for s in seeds):.3f} "
          f"({', '.join(f'{reference[s]:.3f}' for s in seeds)})")
    say(f"{name}: GMVAE minus that {statistics.fmean(gains):+.3f} +- {se:.3f} (standard error), "
          f"above it in {sum(g > 0 for g in gains)} of {len(gains)} seeds")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", help="directories holding gmvae_clustering.json")
    p.add_argument("--out", type=Path, default=RESULTS / "gmvae_pool.md", help="where to write the figures")
    args = p.parse_args(argv)
    scores = ("accuracy", "nmi")
    gmvae: dict[str, dict[int, float]] = {k: {} for k in scores}
    references = {"k-means on plain-VAE latent means": "k-means on same-size plain-VAE codes",
                  "k-means on default plain-VAE": "k-means on default plain-VAE codes"}
    reference: dict[tuple[str, str], dict[int, float]] = {(k, r): {} for k in scores for r in references}
    pixels = []
    for d in args.dirs:
        rows = json.loads((Path(d) / "gmvae_clustering.json").read_text())["rows"]
        repeated = set(per_seed(rows, "GMVAE, seed ", "accuracy")) & set(gmvae["accuracy"])
        if repeated:
            p.error(f"{d} repeats seeds {sorted(repeated)}")
        for k in scores:
            gmvae[k].update(per_seed(rows, "GMVAE, seed ", k))
            for prefix in references:
                reference[k, prefix].update(per_seed(rows, prefix, k))
        pixels.append(rows[0])
    say(f"seeds: {', '.join(map(str, sorted(gmvae['accuracy'])))}")
    for k in scores:
        seeds = sorted(gmvae[k])
        say(f"{k}: GMVAE {statistics.fmean(gmvae[k].values()):.3f} ({', '.join(f'{gmvae[k][s]:.3f}' for s in seeds)})")
        for prefix, label in references.items():
            paired(k, gmvae[k], reference[k, prefix], label)
    say("k-means on raw pixels, one per file: " + ", ".join(f"accuracy {r['accuracy']:.3f} (NMI {r['nmi']:.3f})"
                                                           for r in pixels))
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/gmvae_pool.py",
                                                *(argv if argv is not None else sys.argv[1:])])
    args.out.write_text("\n".join(["# GMVAE clustering, seeds pooled", "", f"Command: `{command}`  ",
                                   f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; read from "
                                   + ", ".join(f"{d}/gmvae_clustering.json" for d in args.dirs), "", "```",
                                   *lines, "```", ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
