"""The ``pyrovae`` command: ``models``, ``train``, ``check``, ``compare``, ``eval``, ``plot`` and ``sample``.

Errors a user can fix print one line and exit non-zero (2 for unknown names and bad
options, 1 for everything else, 130 when stopped by Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

import pyro
import torch

from pyrovae import distributed
from pyrovae.data import DATASETS, Split, evaluation_split, load_dataset
from pyrovae.errors import PyrovaeError, UsageError
from pyrovae.estimators import FORMS, make_estimator, make_evaluator, valid_forms
from pyrovae.evaluate import check_importance, mean_elbo
from pyrovae.likelihoods import LIKELIHOODS
from pyrovae.pairs import build, bundled, parse_model_args, parse_model_options
from pyrovae.plots import save_samples
from pyrovae.runs import CHECKPOINT, METRICS, Run, check_writable, load_run, write_file
from pyrovae.train import pyro_info_silenced, resolve_device, train

__all__ = ["main", "build_parser"]


class Stopped(PyrovaeError):
    exit_code = 130


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:  # numpy's range, which Pyro's seeding shares
        raise argparse.ArgumentTypeError(f"must lie in 0..{2**32 - 1}, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _summary(obj: object) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join((obj.__doc__ or "").strip().split("\n\n")[0].split())


def _training_options(p: argparse.ArgumentParser) -> None:
    """The data and optimization options that train and compare share."""
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-root", default=None, help="folder holding <ClassName>/raw/ idx files")
    p.add_argument("--train-size", type=_positive_int, default=None, help="use only the first N training images")
    p.add_argument("--test-size", type=_positive_int, default=None, help="use only the first N test images")
    p.add_argument("--epochs", type=_positive_int, default=10, help="epochs to train")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="examples per SVI step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


class _Help(argparse.HelpFormatter):
    """Help that shows an option's default where it has one and its help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        if action.option_strings and not unset and "default" not in text:
            text = f"{text} (default: %(default)s)".strip()
        return text


def cmd_models(args: argparse.Namespace) -> int:
    pairs = bundled()
    width = max(map(len, pairs))
    for name, cls in pairs.items():
        print(f"{name:<{width}}  {cls.__module__}.{cls.__name__}: {_summary(cls)}")
    print(f"\nlikelihoods (--arg likelihood=NAME): {', '.join(LIKELIHOODS)}")
    print("estimators (--elbo NAME):")
    for form in FORMS:
        print(f"  {form.pattern:<14} {form.doc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    model_args = {**parse_model_options(args.extra), **parse_model_args(args.arg)}
    if args.elbo is not None:
        make_estimator(args.elbo)  # fail on a bad name before loading data
    resolve_device(args.device)
    out = Path(args.out or f"runs/{Path(args.model.split(':')[-1]).name.lower()}")
    if args.nproc > 1:
        if "WORLD_SIZE" in os.environ:
            raise UsageError("--nproc starts its own processes; under torchrun leave it out")
        if args.batch_size < args.nproc:  # refused here once, not by every process
            raise UsageError(f"--batch-size {args.batch_size} cannot be shared by {args.nproc} processes; give "
                             f"{args.nproc} or more")
        # so are the pair's arguments and missing data; and the data is unpacked once, not by every process
        build(args.model, model_args)
        load_dataset(args.dataset, root=args.data_root, train_size=1, test_size=1)
        return distributed.launch(args.nproc, _worker_argv(args, out))  # each process prints its own messages
    pyro.set_rng_seed(args.seed)  # the networks' initial weights depend on the seed too
    pair = build(args.model, model_args)
    data = load_dataset(args.dataset, root=args.data_root, train_size=args.train_size, test_size=args.test_size)
    device = distributed.join_from_env(args.device)  # under torchrun: this process's place and device
    speaks = (group := distributed.current()) is None or group.is_main
    try:
        run = train(pair, data, epochs=args.epochs, elbo=args.elbo, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, device=device, out=out, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt:
        if not speaks:
            return 130  # rank 0 says where the checkpoint is
        if not (out / CHECKPOINT).exists():
            raise Stopped("stopped before the first epoch ended, so there is no checkpoint; start again with the "
                          "same command, without --resume") from None
        raise Stopped(f"stopped; the last complete checkpoint is {out / CHECKPOINT}. Continue with the same "
                      "command and --resume") from None
    except distributed.FailedOnRankZero as err:
        return err.exit_code  # rank 0 reports it
    finally:
        distributed.leave()
    if speaks and not run.metrics:
        print(f"run in {out}: no epoch's record in its {METRICS}")
    elif speaks:
        final = run.metrics[-1]
        print(f"final test ELBO: {final['test_elbo']:.2f} nats per image after {final['epoch']} epoch{'s' * (final['epoch'] != 1)} (run in {out})")
    return 0


def _worker_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """The train command that each process of ``--nproc`` runs: the same options, without ``--nproc``."""
    argv = ["train", args.model, "--out", str(out), "--dataset", args.dataset, "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--lr", repr(args.lr), "--seed", str(args.seed),
            "--device", args.device]
    for option, value in (("--data-root", args.data_root), ("--train-size", args.train_size),
                          ("--test-size", args.test_size), ("--elbo", args.elbo)):
        argv += [option, str(value)] if value is not None else []
    argv += [flag for flag, on in (("--resume", args.resume), ("--quiet", args.quiet)) if on]
    for arg in args.arg:
        argv += ["--arg", arg]
    return argv + args.extra


def _test_split(run: Run, dev: torch.device) -> tuple[Split, tuple[str, ...]]:
    """The run's test split as it is evaluated (the fixed binarization for Bernoulli pairs), and the class names."""
    cfg = run.config
    data = load_dataset(cfg["dataset"], root=cfg["data_root"], train_size=1, test_size=cfg["test_size"], device=dev)
    return evaluation_split(data.test, getattr(getattr(run.pair, "likelihood", None), "binarize", False)), data.classes


def cmd_eval(args: argparse.Namespace) -> int:
    for name in ("iwae_k", "posterior", "nuts_warmup", "gap_steps"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    dev = resolve_device(args.device)
    run = load_run(args.run, dev)
    path = Path(args.run) / "eval.json"
    check_writable(path)  # before the long parts, not after
    cfg = run.config
    test, _ = _test_split(run, dev)
    if args.test_size is not None:
        test = Split(test.x[: args.test_size], test.y[: args.test_size])
    if args.posterior > len(test):
        raise UsageError(f"--posterior {args.posterior} asks for more inputs than the {len(test)} test images")
    uses_labels = getattr(run.pair, "uses_labels", False)
    t0 = time.perf_counter()
    with run.param_scope(), pyro_info_silenced():  # not Pyro's "Guessed max_plate_nesting" line
        # a pair that importance sampling or NUTS cannot run is refused before the long parts, not after
        if args.iwae_k or args.posterior:
            check_importance(run.pair, test.x[:1], test.y[:1] if uses_labels else None)
        if args.posterior:
            from pyrovae.posterior import check_comparable
            check_comparable(run.pair, test.x[:1], test.y[:1] if uses_labels else None)
        for figure in [Path(args.run) / "worst_khat.png", *Path(args.run).glob("posterior_*.png")]:
            figure.unlink(missing_ok=True)  # an earlier eval's: the figures left are those eval.json names
        pyro.set_rng_seed(args.seed)
        elbo = mean_elbo(run.pair, test, make_evaluator(cfg["elbo"]), args.batch_size, uses_labels)
        result = {"test_elbo": elbo, "estimator": cfg["elbo"], "num_examples": len(test),
                  "epoch": run.metrics[-1]["epoch"] if run.metrics else None}
        print(f"test ELBO: {elbo:.2f} nats per image over {len(test)} test images")
        if callable(getattr(run.pair, "cluster", None)):
            result.update(_eval_clusters(run.pair, test, args.batch_size))
        if args.iwae_k:
            result.update(_eval_importance(run.pair, test, args, uses_labels))
        if args.posterior:
            result["posterior"] = _eval_posteriors(run.pair, test, args, uses_labels)
    result["seconds"] = time.perf_counter() - t0
    write_file(path, json.dumps(_finite_or_none(result), indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def _finite_or_none(value: object) -> object:
    """``value`` with NaN and infinite numbers replaced by None, so that the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _eval_clusters(pair: object, test: Split, batch_size: int) -> dict:
    """Clustering accuracy (Hungarian matching) and NMI of ``pair.cluster(x)`` against the labels."""
    from pyrovae.clustering import clustering_accuracy, normalized_mutual_info
    from pyrovae.data import batches

    clusters = torch.cat([pair.cluster(x) for x, _ in batches(test, batch_size)])
    result = {"clustering_accuracy": clustering_accuracy(clusters, test.y),
              "nmi": normalized_mutual_info(clusters, test.y)}
    print(f"clustering accuracy {result['clustering_accuracy']:.3f}, NMI {result['nmi']:.3f} "
          f"over {len(test)} test images")
    return result


def _eval_importance(pair: object, test: object, args: argparse.Namespace, uses_labels: bool) -> dict:
    """log p(x) by importance sampling, the gap and PSIS k-hat, for ``pyrovae eval``."""
    from pyrovae.evaluate import KHAT_MIN_SAMPLES, importance_evaluation, khat_shares
    from pyrovae.plots import FigureUnavailable, save_worst_khat

    t0 = time.perf_counter()
    iw = importance_evaluation(pair, test, args.iwae_k, chunk_size=args.chunk_size, batch_size=args.batch_size,
                               uses_labels=uses_labels, progress=sys.stderr.isatty())
    ll, n = iw.log_likelihood, len(test)
    result = {"k": ll.k, "log_likelihood": ll.mean, "log_likelihood_stderr": ll.stderr,
              "elbo_same_draws": iw.elbo.mean().item(), "gap": iw.gap.mean().item(),
              "gap_stderr": iw.gap.std().item() / math.sqrt(n) if n > 1 else None,
              "khat_shares": None, "khat_max": None}
    print(f"log-likelihood (K={ll.k}): {ll.mean:.2f} +- {ll.stderr:.2f} nats per image; gap to the ELBO "
          f"of the same draws: {result['gap']:.2f} nats")
    if args.iwae_k < KHAT_MIN_SAMPLES:
        print(f"PSIS k-hat needs --iwae-k {KHAT_MIN_SAMPLES} or more; not computed")
    else:
        shares = result["khat_shares"] = khat_shares(iw.khat)
        result["khat_max"] = iw.khat.max().item()
        print("PSIS k-hat: " + ", ".join(f"{share:.1%} {band.replace('_', ' ')}" for band, share in shares.items()))
        try:
            result["worst_khat_figure"] = str(save_worst_khat(test.x, iw.khat, Path(args.run) / "worst_khat.png"))
        except FigureUnavailable as err:
            print(f"no k-hat figure: {err}")
    result["seconds_log_likelihood"] = time.perf_counter() - t0
    return result


def _eval_posteriors(pair: object, test: object, args: argparse.Namespace, uses_labels: bool) -> list[dict]:
    """NUTS against the guide, and the gap split, for the first ``--posterior`` test images."""
    from pyrovae.plots import save_posterior_comparison
    from pyrovae.posterior import compare_posterior

    results = []
    for i in range(args.posterior):
        t0 = time.perf_counter()
        comparison = compare_posterior(
            pair, test.x[i : i + 1], test.y[i : i + 1] if uses_labels else None, num_samples=args.nuts_samples,
            warmup_steps=args.nuts_warmup, k=max(args.iwae_k, 5000), gap_steps=args.gap_steps, seed=args.seed + 100 * i)
        figure = save_posterior_comparison(comparison.nuts, comparison.guide, comparison.names,
                                           Path(args.run) / f"posterior_{i}.png", title=f"test input {i}")
        summary = {"index": i, **comparison.summary(), "figure": str(figure), "seconds": time.perf_counter() - t0}
        results.append(summary)
        gaps = (f"; approximation gap {summary['approximation_gap']:.2f}, amortization gap "
                f"{summary['amortization_gap']:.2f} nats" if comparison.gaps is not None else "")
        print(f"posterior of test input {i}: r-hat {comparison.rhat_max:.3f}, bulk ESS "
              f"{comparison.ess_bulk_min:.0f}{gaps} ({figure})")
        for warning in summary["warnings"]:
            print(f"  warning: {warning}")
    return results


def cmd_plot(args: argparse.Namespace) -> int:
    from pyrovae.plots import save_figures

    dev = resolve_device(args.device)
    run = load_run(args.run, dev)
    test, classes = _test_split(run, dev)
    out = Path(args.out or Path(args.run) / "plots")
    pyro.set_rng_seed(args.seed)
    try:
        with run.param_scope():
            figures = save_figures(run.pair, test, out, metrics=run.metrics, classes=classes,
                                   uses_labels=getattr(run.pair, "uses_labels", False))
    except OSError as err:
        raise PyrovaeError(f"cannot write the figures to {out}: {err.strerror or err}") from err
    for path in figures.written:
        print(f"wrote {path}")
    for name, reason in figures.skipped.items():
        print(f"skipped {name}: {reason}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from torchvision.utils import save_image

    from pyrovae.plots import save_rows

    if args.label is not None and args.per_label is not None:
        raise UsageError("give --label L or --per-label N, not both")
    run = load_run(args.run, resolve_device(args.device))
    # by default beside the run's files, named for the request: not over the samples.png training drew
    kind = "" if args.label is None and args.per_label is None else \
        f"_label{args.label}" if args.label is not None else "_per_label"
    out = Path(args.out or Path(args.run) / f"sample{kind}.png")
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out names the PNG file to write, such as {out.with_suffix('.png')}; got {args.out}")
    labels = getattr(run.pair, "num_classes", None)
    if args.label is not None and isinstance(labels, int) and not 0 <= args.label < labels:
        raise UsageError(f"--label must lie in 0..{labels - 1}, got {args.label}")
    pyro.set_rng_seed(args.seed)
    by_label = getattr(run.pair, "sample_by_label", None)
    if (args.label is not None or args.per_label is not None) and not callable(by_label):
        raise UsageError(f"{type(run.pair).__name__} has no sample_by_label(n) method, so it cannot draw images "
                         "by label (for the CVAE, train it with --task label)")
    try:
        with run.param_scope():
            if args.per_label is not None:
                images = by_label(args.per_label)
                cls = DATASETS.get(run.config.get("dataset"), (None,))[0]
                names = list(getattr(cls, "classes", []))
                names = names if len(names) == images.shape[0] else [str(r) for r in range(images.shape[0])]
                path = save_rows(images, out, f"Samples, one row per label ({args.per_label} each)",
                                 [f"{r}: {name}" for r, name in enumerate(names)])
                what = f"{args.per_label} samples for each of {images.shape[0]} labels"
            elif args.label is not None:
                images = by_label(args.n)
                if not 0 <= args.label < images.shape[0]:
                    raise UsageError(f"--label must lie in 0..{images.shape[0] - 1}, got {args.label}")
                save_image(images[args.label].clamp(0, 1).cpu(), out,
                           nrow=args.nrow or math.ceil(math.sqrt(args.n)), padding=2, pad_value=1.0)
                path, what = out, f"{args.n} samples of label {args.label}"
            else:
                path = save_samples(run.pair, out, n=args.n, nrow=args.nrow or math.ceil(math.sqrt(args.n)))
                what = f"{args.n} samples"
    except TypeError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise PyrovaeError(f"cannot write {out}: {err.strerror or err}") from err
    print(f"wrote {what} to {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pyrovae.compare import Settings, compare, summarize

    settings = Settings(
        model=args.model, model_args={**parse_model_options(args.extra), **parse_model_args(args.arg)},
        estimators=tuple(n.strip() for n in args.elbos.split(",") if n.strip()),
        seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=args.device,
        iwae_k=args.iwae_k, ll_size=args.ll_size, snr_draws=args.snr_draws, snr_batch=args.snr_batch,
    )  # checks the estimators, the numbers and the device
    build(settings.model, settings.model_args)  # a bad model or argument fails before loading data
    data = load_dataset(args.dataset, root=args.data_root, train_size=args.train_size, test_size=args.test_size)
    try:
        rows = compare(settings, data, args.out, quiet=args.quiet)
    except KeyboardInterrupt:
        raise Stopped(f"stopped; finished runs are kept in {args.out}. Run the same command again to go on") from None
    print(summarize(rows, settings))
    print(f"\nwrote results.csv, results.md, curves.png and snr.png to {args.out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from pyrovae.check import check_pair, load_batch

    if args.batch < 2:
        raise UsageError(f"--batch must be 2 or more (the check also runs the pair on batch - 1), got {args.batch}")
    model_args = {**parse_model_options(args.extra), **parse_model_args(args.arg)}
    pyro.set_rng_seed(args.seed)
    x, y = load_batch(build(args.model, model_args), args.dataset, args.batch, args.data_root, args.seed)
    report = check_pair(lambda: build(args.model, model_args), x, y, name=args.model)
    print(report.format())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyrovae", description="Variational autoencoders as Pyro model/guide pairs.")
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_Help))

    p = sub.add_parser("models", help="list the bundled model/guide pairs, likelihoods and estimators")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a pair by SVI")
    p.add_argument("model", help="a bundled pair's name (see `pyrovae models`) or path/to/file.py:ClassName")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the pair's constructor, e.g. --arg z_dim=2 --arg hidden=[512,256]; "
                   "options the command does not know, such as --task complete, are passed the same way")
    _training_options(p)
    p.add_argument("--elbo", default=None, help=f"estimator (default: the pair's default_elbo, else trace): {valid_forms()}")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.add_argument("--out", default=None, help="run directory (default runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="print only the final result")
    p.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                   help="train on N processes of this machine with DistributedDataParallel (gloo on the CPU, NCCL "
                   "with one GPU each), each on its share of every --batch-size batch; same as torchrun "
                   "--standalone --nproc-per-node N -m pyrovae train ...")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="compare ELBO estimators on one pair: bounds, gradient SNR, time")
    p.add_argument("model", help="a bundled pair's name or path/to/file.py:ClassName")
    p.add_argument("--elbos", required=True, help=f"comma-separated estimator names: {valid_forms()}")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds 0..N-1, the same for every estimator")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="as for train")
    _training_options(p)
    p.add_argument("--iwae-k", type=_positive_int, default=1000, help="importance samples for log p(x)")
    p.add_argument("--ll-size", type=_positive_int, default=1000, help="test examples for log p(x)")
    p.add_argument("--snr-draws", type=_positive_int, default=100, help="gradient draws for the SNR")
    p.add_argument("--snr-batch", type=_positive_int, default=64, help="size of the fixed SNR minibatch")
    p.add_argument("--out", required=True, help="folder for the runs, tables and figures")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("eval", help="test ELBO, importance-weighted log-likelihood, PSIS k-hat, NUTS posteriors; "
                                    "into RUN/eval.json")
    p.add_argument("run", help="a run directory written by `pyrovae train`")
    p.add_argument("--iwae-k", type=int, default=100, metavar="K",
                   help="importance samples per test image for log p(x) and k-hat (default 100; 5000 is the IWAE "
                        "paper's standard and takes minutes on a CPU; 0 skips)")
    p.add_argument("--chunk-size", type=_positive_int, default=None,
                   help="importance samples per image drawn at once (default 50 on the CPU, where larger chunks run "
                        "slower, 500 on a GPU); memory grows with chunk size x batch size")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="test images per batch")
    p.add_argument("--test-size", type=_positive_int, default=None, help="evaluate only the first N test images")
    p.add_argument("--posterior", type=int, default=0, metavar="N",
                   help="compare the guide with a NUTS posterior, and split the gap, for the first N test images")
    p.add_argument("--nuts-samples", type=_positive_int, default=500, help="NUTS draws per chain (2 chains)")
    p.add_argument("--nuts-warmup", type=int, default=300, help="NUTS warm-up steps per chain")
    p.add_argument("--gap-steps", type=int, default=500,
                   help="Adam steps fitting the best per-input guide for the gap split (0 skips the split)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="draw a run's figures (curves, samples, latents, manifold) as PNGs")
    p.add_argument("run", help="a run directory written by `pyrovae train`")
    p.add_argument("--out", default=None, help="folder for the PNGs (default RUN/plots)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("sample", help="draw images from a trained run's model")
    p.add_argument("run", help="a run directory written by `pyrovae train`")
    p.add_argument("-n", type=_positive_int, default=64, help="number of images")
    p.add_argument("--nrow", type=_positive_int, default=None, help="images per row (default: a square grid)")
    p.add_argument("--label", type=int, default=None, metavar="L",
                   help="draw the -n images of label L (a pair with sample_by_label, such as cvae)")
    p.add_argument("--per-label", type=_positive_int, default=None, metavar="N",
                   help="draw a grid with one row of N images per label (a pair with sample_by_label)")
    p.add_argument("--out", default=None, help="PNG file (default RUN/sample.png, RUN/sample_labelL.png or "
                   "RUN/sample_per_label.png; RUN/samples.png is training's grid)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("check", help="run a pair once on a small batch and report common Pyro mistakes "
                                     "(exit status 1 when it finds one)")
    p.add_argument("model", help="a bundled pair's name or path/to/file.py:ClassName")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="as for train")
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-root", default=None, help="folder holding <ClassName>/raw/ idx files")
    p.add_argument("--batch", type=int, default=8, help="examples in the batch the pair runs on")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.set_defaults(func=cmd_check)
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("train", "compare", "check"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops like Ctrl-C
    try:
        return args.func(args)
    except Stopped as err:  # a stop asked for is no error
        print(f"pyrovae {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except PyrovaeError as err:
        print(f"pyrovae {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"pyrovae {args.command}: stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
