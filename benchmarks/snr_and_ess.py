"""Why IWAE's guide SNR falls with K on one pair and not on another.

1. On the float64 linear Gaussian pair of the tests (guide moved off the exact
   posterior), the guide's and the model's gradient SNR of ``iwae-K`` and ``dreg-K``
   for K from 1 to 1000: the regime of Rainforth et al. (2018), where weights are balanced.
2. On a trained VAE run (by default the ``trace`` run of ``benchmarks/compare_estimators.py``),
   the effective sample size ``1 / sum_k w~_k^2`` of the normalized importance weights on
   64 fixed training images: how degenerate the weights are at each K.

Run from the repository root (a minute or two on 2 cores)::

    python benchmarks/snr_and_ess.py [--run runs/cmp/trace-seed0]

Writes ``benchmarks/results/snr_and_ess.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from example_pairs import linear_pair  # noqa: E402  (the pair the tests check)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from pyrovae import load_dataset  # noqa: E402
from pyrovae.compare import gradient_snr  # noqa: E402
from pyrovae.data import Split, evaluation_split  # noqa: E402
from pyrovae.estimators import make_estimator  # noqa: E402
from pyrovae.evaluate import log_weights  # noqa: E402
from pyrovae.runs import load_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "snr_and_ess.md"


def linear_sweep(ks: list[int], draws: int) -> list[str]:
    pair = linear_pair(perturb=True)
    torch.manual_seed(1)
    x = pair.marginal().sample((8,)).detach()
    lines = ["| K | guide SNR, iwae-K | guide SNR, dreg-K | model SNR |", "|---|---|---|---|"]
    with pyro.get_param_store().scope():
        for k in ks:
            snr = {}
            for family in ("iwae", "dreg"):
                pyro.set_rng_seed(0)
                snr[family] = gradient_snr(pair, make_estimator(f"{family}-{k}"), x, draws=draws)
            lines.append(f"| {k} | {snr['iwae'].guide:.3f} | {snr['dreg'].guide:.3f} | {snr['iwae'].model:.3f} |")
            print(lines[-1], flush=True)
    return lines


def weight_ess(run_dir: str, ks: list[int]) -> list[str]:
    run = load_run(run_dir)
    data = load_dataset(train_size=64, test_size=1)
    x = evaluation_split(Split(data.train.x, data.train.y), True).x
    lines = ["| K | ESS median | ESS mean | largest weight, median |", "|---|---|---|---|"]
    with run.param_scope():
        pyro.set_rng_seed(0)
        for k in ks:
            w = torch.softmax(log_weights(run.pair, x, num_samples=k), dim=0)
            ess = 1 / (w**2).sum(0)
            lines.append(f"| {k} | {ess.median():.2f} | {ess.mean():.2f} | {w.max(0).values.median():.2f} |")
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/cmp/trace-seed0", help="a trained VAE run directory")
    p.add_argument("--draws", type=int, default=400)
    args = p.parse_args(argv)
    linear = linear_sweep([1, 10, 100, 1000], args.draws)
    ess = weight_ess(args.run, [5, 50, 200, 1000])
    info = describe()
    machine = info["machine"]
    RESULTS.write_text(
        f"# Gradient SNR and weight degeneracy\n\n`{info['command']}`, {info['date']}, torch {torch.__version__}, "
        f"pyro {pyro.__version__}; {machine['cpu']} ({machine['cpu_count']} CPUs, {machine['torch_threads']} torch "
        f"threads)\n\n## Linear Gaussian pair, {args.draws} gradient draws on 8 examples\n\n"
        + "\n".join(linear) + f"\n\n## Normalized importance weights of the VAE in `{args.run}`, 64 training images\n\n"
        + "\n".join(ess) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
