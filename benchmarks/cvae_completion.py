"""Image completion on Fashion-MNIST: the CVAE against the deterministic baseline.

Question: given 1, 2 or 3 visible quadrants of a test image, how well does each pair
predict the hidden pixels? As in Sohn, Lee and Yan (2015) and Pyro's CVAE tutorial,
the score is the conditional negative log-likelihood ``-log p(x_hidden | x_visible)`` in
nats per image, here estimated by importance sampling with the CVAE's recognition
network as proposal (:func:`pyrovae.evaluate.importance_log_likelihood`, K samples per
image; the estimate of log p is a lower bound in expectation, so the printed NLL is an
upper bound in expectation). The baseline has no latent, so its NLL is exact. The CVAE's
single-sample ELBO bound (what Pyro's tutorial reports) is printed beside it.

Both pairs train with :func:`pyrovae.train` (Trace_ELBO, Adam, dynamic binarization)
and are evaluated on the fixed binarization of the first ``--test-size`` test images.

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/cvae_completion.py [--epochs 5] [--train-size N]
        [--test-size 1000] [--k 1000] [--hidden 500 500] [--z-dim 20] [--seed 0] [--device cuda]

Prints the table quadrants x {baseline, CVAE}; writes benchmarks/results/cvae_completion.md,
.json and cvae_completion.png (per quadrant count, rows: input with the hidden part grey,
truth, baseline prediction, CVAE samples).
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
from pyro.infer import Trace_ELBO
from torchvision.utils import make_grid

from pyrovae import load_dataset, train
from pyrovae.data import Split, evaluation_split
from pyrovae.evaluate import importance_log_likelihood, mean_elbo
from pyrovae.models import CVAE, CVAEBaseline
from pyrovae.models.cvae import visible_mask

RESULTS = Path(__file__).parent / "results"


def _rows(cvae: CVAE, baseline: CVAEBaseline, x: torch.Tensor, samples: int) -> torch.Tensor:
    """Image rows (2 + 1 + samples, n, 1, 28, 28): input, truth, baseline, CVAE samples."""
    visible = cvae.masks.visible
    shown = torch.where(visible, x, torch.full_like(x, 0.5))
    return torch.cat([shown[None], x[None], baseline.complete(x, 1), cvae.complete(x, samples)]).cpu()


def _figure(panels: list[tuple[int, torch.Tensor]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.2 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (q, rows) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        n = rows.shape[1]
        grid = make_grid(rows.flatten(0, 1).clamp(0, 1).float(), nrow=n, padding=2, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        labels = ["input", "truth", "baseline"] + [f"CVAE {s + 1}" for s in range(rows.shape[0] - 3)]
        ax.set_yticks([2 + r * 30 + 15 for r in range(len(labels))], labels)
        ax.set_xticks([])
        ax.set_title(f"{q} visible quadrant{'s' if q > 1 else ''}")
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quadrants", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=None, help="first N training images (default all 60000)")
    parser.add_argument("--test-size", type=int, default=1000, help="first N test images evaluated")
    parser.add_argument("--k", type=int, default=1000, help="importance samples per test image")
    parser.add_argument("--hidden", type=int, nargs="+", default=[500, 500])
    parser.add_argument("--z-dim", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=4, help="CVAE samples per image in the figure")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()

    data = load_dataset("fashion-mnist", train_size=args.train_size)
    test = evaluation_split(data.test, True)
    test = Split(test.x[: args.test_size], test.y[: args.test_size]).to(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "pyro": pyro.__version__,
                    "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "train_images": len(data.train), "test_images": len(test)},
        "rows": [],
    }
    panels = []
    for q in args.quadrants:
        row: dict = {"quadrants": q, "hidden_pixels": int((~visible_mask(q)).sum())}
        pairs, per_example = {}, {}
        for name, make in (("baseline", lambda: CVAEBaseline(quadrants=q, hidden=args.hidden)),
                           ("cvae", lambda: CVAE(task="complete", quadrants=q, z_dim=args.z_dim, hidden=args.hidden))):
            pyro.set_rng_seed(args.seed)
            pair = make()
            t0 = time.perf_counter()
            run = train(pair, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        device=args.device, quiet=True)
            seconds_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            with run.param_scope():
                pyro.set_rng_seed(args.seed)
                k = 1 if name == "baseline" else args.k  # no latent: one sample is exact
                ll = importance_log_likelihood(pair, test, k=k)
                elbo = mean_elbo(pair, test, Trace_ELBO())
            row[name] = {"nll": -ll.mean, "nll_stderr": ll.stderr, "k": ll.k, "elbo_bound_nll": -elbo,
                         "final_train_elbo": run.metrics[-1]["train_elbo"], "seconds_train": seconds_train,
                         "seconds_eval": time.perf_counter() - t0}
            pairs[name] = pair
            per_example[name] = ll.per_example
            print(f"quadrants {q} {name:<8}: NLL {-ll.mean:.2f} +- {ll.stderr:.2f} (K={ll.k}), "
                  f"-ELBO {-elbo:.2f}; train {seconds_train:.0f} s", flush=True)
        gain = per_example["cvae"] - per_example["baseline"]  # paired over the same test images
        row["gain"], row["gain_stderr"] = gain.mean().item(), gain.std().item() / len(gain) ** 0.5
        result["rows"].append(row)
        with torch.no_grad():
            pyro.set_rng_seed(args.seed)
            panels.append((q, _rows(pairs["cvae"], pairs["baseline"], test.x[:10], args.samples)))
        (args.out / "cvae_completion.json").write_text(json.dumps(result, indent=2) + "\n")  # after each row

    figure = args.out / "cvae_completion.png"
    _figure(panels, figure)
    table = [
        "| visible quadrants | hidden pixels | baseline NLL (exact) | CVAE NLL (IS, K={}) | CVAE -ELBO (bound) | CVAE gain (paired) |".format(args.k),
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        b, c = r["baseline"], r["cvae"]
        table.append(f"| {r['quadrants']} | {r['hidden_pixels']} | {b['nll']:.2f} +- {b['nll_stderr']:.2f} | "
                     f"{c['nll']:.2f} +- {c['nll_stderr']:.2f} | {c['elbo_bound_nll']:.2f} | {r['gain']:.2f} +- {r['gain_stderr']:.2f} |")
    s = result["settings"]
    md = "\n".join([
        "# CVAE image completion on Fashion-MNIST",
        "",
        f"Conditional negative log-likelihood of the hidden pixels, nats per image (lower is better), on the fixed "
        f"binarization of the first {s['test_images']} test images. CVAE: importance sampling with the recognition "
        f"network as proposal, K={args.k} samples per image; baseline: exact (no latent). Both trained "
        f"{args.epochs} epochs on {s['train_images']} training images (dynamic binarization, batch {args.batch_size}, "
        f"Adam lr {args.lr}, Trace_ELBO), hidden layers {args.hidden}, CVAE z_dim {args.z_dim}, seed {args.seed}. "
        "+- is the standard error over test images; the gain (baseline NLL minus CVAE NLL) is paired over the same images.",
        "",
        *table,
        "",
        f"Figure: `{figure.name}` (rows: input with hidden part grey, truth, baseline, {args.samples} CVAE samples).",
        "",
        f"Command: `{result['command']}` ({result['date']}, {result['machine']['platform']}, "
        f"torch {torch.__version__}, pyro {pyro.__version__}, {torch.get_num_threads()} thread(s)).",
        "",
    ])
    (args.out / "cvae_completion.md").write_text(md)
    (args.out / "cvae_completion.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + "\n".join(table))
    print(f"\nwrote {args.out / 'cvae_completion.md'}, .json and {figure}")


if __name__ == "__main__":
    main()
