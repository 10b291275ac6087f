"""ELBO estimators compared on the default VAE, and the guide's gradient SNR against K.

1. ``pyrovae compare`` with the given estimators, seeds and epochs (by default the
   estimators issue's first command): test ELBO, importance-weighted log-likelihood,
   seconds per epoch and gradient SNR, mean and spread over seeds.
2. On the pair trained with ``trace`` (seed 0): the guide's and the model's gradient
   SNR for ``iwae-K`` and ``dreg-K`` at several K on one fixed minibatch, the measurement
   behind Rainforth et al. (2018) and Tucker et al. (2018).

Run from the repository root (about 20 minutes on 2 cores with the defaults)::

    python benchmarks/compare_estimators.py [--seeds 3] [--epochs 10] [--out runs/cmp] [--device cuda]

Writes ``benchmarks/results/compare_estimators.md`` and ``.json``; finished runs in
``--out`` are reused when the script is run again.
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

import pyrovae
from pyrovae.compare import Settings, compare, gradient_snr, summarize
from pyrovae.data import Split, evaluation_split
from pyrovae.estimators import make_estimator
from pyrovae.runs import load_run

RESULTS = Path(__file__).resolve().parent / "results"


def snr_against_k(run_dir: Path, data: pyrovae.Dataset, ks: list[int], draws: int, batch: int,
                  device: str = "cpu") -> list[dict]:
    """Guide and model SNR of iwae-K and dreg-K on the trained pair in ``run_dir``."""
    run = load_run(run_dir, device)
    fixed = evaluation_split(Split(data.train.x[:batch], data.train.y[:batch]), True).to(device)
    rows = []
    with run.param_scope():
        for k in ks:
            row = {"k": k}
            for family in ("iwae", "dreg"):
                pyro.set_rng_seed(0)
                snr = gradient_snr(run.pair, make_estimator(f"{family}-{k}"), fixed.x, draws=draws)
                row[f"{family}_guide"], row[f"{family}_model"] = snr.guide, snr.model
            rows.append(row)
            print(f"K={k:>4}  guide SNR: iwae {row['iwae_guide']:.3f}, dreg {row['dreg_guide']:.3f}   "
                  f"model SNR: iwae {row['iwae_model']:.3f}, dreg {row['dreg_model']:.3f}", flush=True)
    return rows


def snr_table(rows: list[dict], draws: int, batch: int) -> str:
    lines = ["| K | guide SNR, iwae-K | guide SNR, dreg-K | model SNR, iwae-K | model SNR, dreg-K |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['k']} | {r['iwae_guide']:.3f} | {r['dreg_guide']:.3f} | {r['iwae_model']:.3f} | "
              f"{r['dreg_model']:.3f} |" for r in rows]
    lines.append(f"\nOn the VAE trained with trace (seed 0); {draws} gradient draws on {batch} fixed training images.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--elbos", default="trace,meanfield,stl,iwae-5,dreg-5")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--iwae-k", type=int, default=1000)
    p.add_argument("--ll-size", type=int, default=1000)
    p.add_argument("--ks", default="1,5,20,50,200")
    p.add_argument("--snr-draws", type=int, default=100)
    p.add_argument("--out", default="runs/cmp")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    data = pyrovae.load_dataset("fashion-mnist", train_size=args.train_size)
    estimators = tuple(args.elbos.split(","))
    if "trace" not in estimators:
        p.error("--elbos must include trace: the SNR sweep uses the pair trained with it")
    settings = Settings(model="vae", model_args={}, estimators=estimators, seeds=args.seeds,
                        epochs=args.epochs, iwae_k=args.iwae_k, ll_size=args.ll_size, snr_draws=args.snr_draws,
                        device=args.device)
    rows = compare(settings, data, args.out)
    table = summarize(rows, settings)
    print(table, flush=True)
    ks = [int(k) for k in args.ks.split(",")]
    sweep = snr_against_k(Path(args.out) / "trace-seed0", data, ks, args.snr_draws, settings.snr_batch,
                          args.device)
    sweep_md = snr_table(sweep, args.snr_draws, settings.snr_batch)
    print(sweep_md)

    command = shlex.join(["python", *sys.argv])
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    versions = {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
                "pyrovae": pyrovae.__version__}
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compare_estimators.md").write_text(
        f"# ELBO estimators on the default VAE\n\n`{command}`, {date}, {machine}, {versions}\n\n"
        f"## pyrovae compare\n\n{table}\n\n## Gradient SNR against K\n\n{sweep_md}\n")
    (RESULTS / "compare_estimators.json").write_text(json.dumps(
        {"date": date, "command": command, "machine": machine, "versions": versions,
         "settings": settings.__dict__, "rows": rows, "snr_against_k": sweep,
         "seconds": time.perf_counter() - t0}, indent=2, default=list) + "\n")
    print(f"wrote {RESULTS / 'compare_estimators.md'} ({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
