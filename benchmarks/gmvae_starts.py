"""Which k-means start should the GMVAE's mixture begin from? Inertia against the mixture ELBO.

Question: at the switch from pretraining to the mixture, the GMVAE (``models/gmvae.py``)
runs k-means on its last pretraining codes and keeps the run of least inertia. Its test
clustering accuracy varies more between k-means runs than between methods, so would an
unsupervised score that is the model's own, the mixture ELBO at the switch, choose better
starts than inertia does?

For each seed the script pretrains the pair as ``pyrovae train gmvae`` does (the same seed,
batch and ``pretrain_examples``; the epochs that hold them), then makes ``--starts``
single k-means runs on the kept codes. For each it sets the mixture from that run
(:meth:`MixturePrior.fit` with one restart) and records:

- the k-means inertia on the codes;
- the part of the mixture ELBO that depends on the start, averaged over the codes: with
  the guide as it is at the switch (shifts zero, ``q(y | x) = p(y | loc(x))``),
  ``E_q[log p(z | y)] + log p(y) - log q(y | x) + H(q(z | x))`` in closed form (the decoder term
  is the same for every start);
- the test clustering accuracy of the start, ``argmax_k p(k | loc(x))`` on the test images.

Prints per seed the mean accuracy of a start, the accuracy of the start each score picks
(least inertia among all, and among the first 4, the pair's default before it was 16;
highest ELBO), and each score's correlation with accuracy.

Run from the repository root (about two minutes per seed on one core)::

    OMP_NUM_THREADS=1 python benchmarks/gmvae_starts.py [--seeds 0 1 5 9] [--starts 16]

Writes benchmarks/results/gmvae_starts.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyrovae  # noqa: E402
from machine import describe  # noqa: E402
from pyrovae.clustering import clustering_accuracy  # noqa: E402
from pyrovae.models import GMVAE  # noqa: E402
from pyrovae.models.gmvae import MixturePrior  # noqa: E402
from pyrovae.nets import MIN_SCALE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def switch_elbo(prior: MixturePrior, loc: torch.Tensor, scale: torch.Tensor) -> float:
    """Mean over codes of the start-dependent part of the mixture ELBO at the switch."""
    k = prior.loc.shape[0]
    mu, sigma = prior.loc, F.softplus(prior.raw_scale) + MIN_SCALE
    q = prior.log_posterior(loc).softmax(-1)  # the guide's q(y | x) at the switch
    sq = ((loc.unsqueeze(1) - mu) ** 2 + scale.unsqueeze(1) ** 2) / (2 * sigma**2)
    expected_log_pz = (-0.5 * math.log(2 * math.pi) - sigma.log() - sq).sum(-1)  # (N, K)
    entropy_z = (0.5 * math.log(2 * math.pi * math.e) + scale.log()).sum(-1)
    entropy_y = -(q * q.clamp_min(1e-30).log()).sum(-1)
    return float(((q * expected_log_pz).sum(-1) - math.log(k) + entropy_y + entropy_z).mean())


def one_seed(data: pyrovae.Dataset, seed: int, starts: int, batch_size: int) -> dict:
    pyro.set_rng_seed(seed)
    pair = GMVAE()
    epochs = math.ceil(pair.pretrain_examples / len(data.train))
    pyrovae.train(pair, data, epochs=epochs, batch_size=batch_size, seed=seed, quiet=True)
    assert not pair.mixture_on, "pretraining should still be on: the switch comes at the next step"
    n = min(int(pair.codes_seen), len(pair.codes))
    loc, scale = pair.codes[:n].split(pair.z_dim, -1)
    test_loc = pair.encode(data.test.x)
    rows = []
    with torch.no_grad():
        for r in range(starts):
            pair.prior.fit(loc, scale, restarts=1, seed=1000 + r)
            centers = pair.prior.loc
            inertia = float(torch.cdist(loc, centers).min(1).values.pow(2).sum())
            accuracy = clustering_accuracy(pair.prior.log_posterior(test_loc).argmax(-1), data.test.y)
            rows.append({"start": r, "inertia": inertia, "elbo": switch_elbo(pair.prior, loc, scale),
                         "accuracy": accuracy})
            print(f"  seed {seed} start {r}: inertia {inertia:.0f}, switch ELBO part {rows[-1]['elbo']:.3f}, "
                  f"test accuracy {accuracy:.3f}", flush=True)
    accs = [r["accuracy"] for r in rows]
    pick = lambda rs, key: min(rs, key=key)["accuracy"]  # noqa: E731
    return {"seed": seed, "starts": rows, "mean": statistics.fmean(accs), "min": min(accs), "max": max(accs),
            "least_inertia": pick(rows, lambda r: r["inertia"]),
            "least_inertia_of_4": pick(rows[:4], lambda r: r["inertia"]),
            "best_elbo": pick(rows, lambda r: -r["elbo"]),
            "corr_inertia": statistics.correlation([-r["inertia"] for r in rows], accs),
            "corr_elbo": statistics.correlation([r["elbo"] for r in rows], accs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 5, 9])
    p.add_argument("--starts", type=int, default=16, help="single k-means runs per seed")
    p.add_argument("--batch-size", type=int, default=128, help="as gmvae_clustering.py trains")
    args = p.parse_args(argv)
    if args.starts < 4:
        p.error("--starts must be at least 4")
    data = pyrovae.load_dataset("fashion-mnist")
    seeds = [one_seed(data, s, args.starts, args.batch_size) for s in args.seeds]
    lines = [f"| seed | mean of a start (range) | least inertia of {args.starts} | least inertia of the first 4 "
             f"| highest ELBO | corr(-inertia, acc) | corr(ELBO, acc) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['seed']} | {s['mean']:.3f} ({s['min']:.3f}-{s['max']:.3f}) | {s['least_inertia']:.3f} | "
              f"{s['least_inertia_of_4']:.3f} | {s['best_elbo']:.3f} | {s['corr_inertia']:+.2f} | "
              f"{s['corr_elbo']:+.2f} |" for s in seeds]
    mean = lambda key: statistics.fmean(s[key] for s in seeds)  # noqa: E731
    lines.append(f"| mean | {mean('mean'):.3f} | {mean('least_inertia'):.3f} | {mean('least_inertia_of_4'):.3f} | "
                 f"{mean('best_elbo'):.3f} | {mean('corr_inertia'):+.2f} | {mean('corr_elbo'):+.2f} |")
    print("\n".join(lines))
    info = describe()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gmvae_starts.json").write_text(json.dumps({**info, "args": vars(args), "seeds": seeds}, indent=2) + "\n")
    (RESULTS / "gmvae_starts.md").write_text(
        f"# GMVAE: choosing the k-means start of the mixture\n\nCommand: `{info['command']}`  \nDate: {info['date']}; "
        f"torch {info['versions']['torch']}, pyro {info['versions']['pyro']}; {info['machine']['cpu']}, "
        f"{info['machine']['torch_threads']} torch thread(s)  \n"
        f"Default GMVAE pretrained as `pyrovae train gmvae --batch-size {args.batch_size} --seed S` does, then "
        f"{args.starts} single k-means runs (seeds 1000, 1001, ...) on its last pretraining codes; test clustering "
        "accuracy of each start (Hungarian matching), and of the start that each unsupervised score picks.\n\n"
        + "\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'gmvae_starts.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
