"""The ``pyrovae`` command: ``models``, ``train``, ``eval`` and ``sample``.

Errors a user can fix print one line and exit non-zero (2 for unknown names and bad
options, 1 for everything else, 130 when stopped by Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

import pyro

from pyrovae.data import DATASETS, evaluation_split, load_dataset
from pyrovae.errors import PyrovaeError, UsageError
from pyrovae.estimators import FORMS, make_estimator, make_evaluator, valid_forms
from pyrovae.evaluate import mean_elbo
from pyrovae.likelihoods import LIKELIHOODS
from pyrovae.pairs import build, bundled, parse_model_args
from pyrovae.plots import save_samples
from pyrovae.runs import CHECKPOINT, load_run
from pyrovae.train import resolve_device, train

__all__ = ["main", "build_parser"]


class Stopped(PyrovaeError):
    exit_code = 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _summary(obj: object) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join((obj.__doc__ or "").strip().split("\n\n")[0].split())


def cmd_models(args: argparse.Namespace) -> int:
    for name, cls in bundled().items():
        print(f"{name:<12} {cls.__module__}.{cls.__name__}: {_summary(cls)}")
    print(f"\nlikelihoods (--arg likelihood=NAME): {', '.join(LIKELIHOODS)}")
    print("estimators (--elbo NAME):")
    for form in FORMS:
        print(f"  {form.pattern:<14} {form.doc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    model_args = parse_model_args(args.arg)
    make_estimator(args.elbo)  # fail on a bad name before loading data
    resolve_device(args.device)
    out = Path(args.out or f"runs/{Path(args.model.split(':')[-1]).name.lower()}")
    pyro.set_rng_seed(args.seed)  # the networks' initial weights depend on the seed too
    pair = build(args.model, model_args)
    if not hasattr(pair, "hparams"):
        pair.hparams = model_args  # so that eval and sample can rebuild a user's pair
    data = load_dataset(args.dataset, root=args.data_root, train_size=args.train_size, test_size=args.test_size)
    try:
        run = train(pair, data, epochs=args.epochs, elbo=args.elbo, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, device=args.device, out=out, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt:
        kept = f"the last complete checkpoint is {out / CHECKPOINT}" if (out / CHECKPOINT).exists() else "no epoch had finished"
        raise Stopped(f"stopped; {kept}. Continue with the same command and --resume") from None
    final = run.metrics[-1]
    print(f"final test ELBO: {final['test_elbo']:.2f} nats per image after {final['epoch']} epochs (run in {out})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    dev = resolve_device(args.device)
    run = load_run(args.run, dev)
    cfg = run.config
    data = load_dataset(cfg["dataset"], root=cfg["data_root"], train_size=1, test_size=cfg["test_size"], device=dev)
    test = evaluation_split(data.test, getattr(getattr(run.pair, "likelihood", None), "binarize", False))
    t0 = time.perf_counter()
    with run.param_scope():
        elbo = mean_elbo(run.pair, test, make_evaluator(cfg["elbo"]), args.batch_size,
                         getattr(run.pair, "uses_labels", False))
    result = {"test_elbo": elbo, "estimator": cfg["elbo"], "num_examples": len(test),
              "epoch": run.metrics[-1]["epoch"] if run.metrics else None, "seconds": time.perf_counter() - t0}
    path = Path(args.run) / "eval.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"test ELBO: {elbo:.2f} nats per image over {len(test)} test images ({path})")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    run = load_run(args.run, resolve_device(args.device))
    out = Path(args.out or Path(args.run) / "samples.png")
    pyro.set_rng_seed(args.seed)
    try:
        path = save_samples(run.pair, out, n=args.n, nrow=args.nrow or math.ceil(math.sqrt(args.n)))
    except TypeError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise PyrovaeError(f"cannot write {out}: {err.strerror or err}") from err
    print(f"wrote {args.n} samples to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyrovae", description="Variational autoencoders as Pyro model/guide pairs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the bundled model/guide pairs, likelihoods and estimators")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a pair by SVI")
    p.add_argument("model", help="a bundled pair's name (see `pyrovae models`) or path/to/file.py:ClassName")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the pair's constructor, e.g. --arg z_dim=2 --arg hidden=[512,256]")
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-root", default=None, help="folder holding <ClassName>/raw/ idx files")
    p.add_argument("--train-size", type=_positive_int, default=None, help="use only the first N training images")
    p.add_argument("--test-size", type=_positive_int, default=None, help="use only the first N test images")
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--elbo", default="trace", help=f"estimator: {valid_forms()}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--out", default=None, help="run directory (default runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="print only the final result")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test ELBO of a trained run, into RUN/eval.json")
    p.add_argument("run", help="a run directory written by `pyrovae train`")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=_positive_int, default=1000)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="draw images from a trained run's model")
    p.add_argument("run", help="a run directory written by `pyrovae train`")
    p.add_argument("-n", type=_positive_int, default=64, help="number of images")
    p.add_argument("--nrow", type=_positive_int, default=None, help="images per row (default: a square grid)")
    p.add_argument("--out", default=None, help="PNG file (default RUN/samples.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_sample)
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops like Ctrl-C
    try:
        return args.func(args)
    except PyrovaeError as err:
        print(f"pyrovae {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"pyrovae {args.command}: stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
