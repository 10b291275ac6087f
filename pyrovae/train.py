"""The SVI loop: any model/guide pair, any registered estimator, Adam.

The trainer knows nothing about a particular model. It reads a few optional
attributes of the pair: ``x_shape`` (checked against the data), ``likelihood``
(binarization and the range of the data), ``uses_labels`` (labels are passed as
``y``), ``default_elbo`` (the estimator when none is named) and ``hparams`` (recorded
so that the pair can be rebuilt). Extend it with
:class:`Callback` objects.

Each epoch appends ``epoch``, ``train_elbo``, ``test_elbo`` (nats per example) and
``seconds`` to ``metrics.jsonl`` and writes ``checkpoint.pt`` atomically: network
weights, free Pyro parameters, optimizer state, epoch and RNG states. A stopped run
continues with ``resume=True`` and ends with the same parameters as one that never
stopped (same device, same seed; on a GPU up to the last bits that its atomic-add
kernels leave to chance).

Started by ``torchrun`` (or ``pyrovae train --nproc N``), with a process group of two or
more ranks, it trains data-parallel: each rank on its slice of every batch, gradients
summed over ranks, rank 0 alone writing the run directory (:mod:`pyrovae.distributed`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO, TraceEnum_ELBO
from torch import nn
from tqdm.auto import tqdm

from pyrovae.data import Dataset, batches, evaluation_split
from pyrovae.errors import NonFiniteLossError, PyrovaeError, UsageError
from pyrovae.estimators import make_estimator, make_evaluator
from pyrovae.evaluate import mean_elbo
from pyrovae.optim import JointAdam
from pyrovae.pairs import spec_of
from pyrovae.plots import save_reconstructions, save_samples
from pyrovae.rng import forked_rng, rng_state, set_rng_state
from pyrovae import distributed, runs
from pyrovae.runs import Run

__all__ = ["Callback", "train", "resolve_device", "check_data", "epoch_generator"]


class Callback:
    """Hooks called by :func:`train`; override the ones you need."""

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        """After each SVI step; ``loss`` is the batch's negative ELBO sum."""

    def on_epoch(self, record: dict[str, Any]) -> None:
        """After each epoch, with the record appended to ``metrics.jsonl``."""


def resolve_device(device: str | torch.device) -> torch.device:
    """A ``torch.device``, with a clear error for unknown or unavailable devices."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PyrovaeError(f"device {device!r} asked for, but CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PyrovaeError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise UsageError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")
    return dev


def check_data(pair: nn.Module, data: Dataset) -> None:
    """Refuse data the pair cannot take: a wrong example shape, or values outside [0, 1]
    for a likelihood on the unit interval."""
    expected = getattr(pair, "x_shape", None)
    if expected is not None and tuple(expected) != data.x_shape:
        raise PyrovaeError(
            f"{type(pair).__name__} expects examples of shape {tuple(expected)}, but {data.name} "
            f"examples have shape {data.x_shape}; build the pair with x_shape={list(data.x_shape)}"
        )
    likelihood = getattr(pair, "likelihood", None)
    if getattr(likelihood, "unit_interval", False):
        for label, split in (("train", data.train), ("test", data.test)):
            lo, hi = split.x.min().item(), split.x.max().item()
            if lo < 0 or hi > 1:
                raise PyrovaeError(
                    f"the {likelihood.name} likelihood needs pixel values in [0, 1], but the {label} "
                    f"split has values in [{lo:g}, {hi:g}]; rescale the data (for 8-bit images, x / 255)"
                )


def epoch_generator(seed: int, epoch: int, salt: int, device: torch.device) -> torch.Generator:
    """A generator that depends only on (seed, epoch, salt): data order and binarization
    of an epoch are the same whether or not the run was resumed."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + epoch) * 7 + salt)


def _is_nonfinite_failure(err: Exception, pair: nn.Module) -> bool:
    """NaN or infinite numbers in the parameters, or in a distribution's arguments
    (rejected by Pyro's argument validation before any loss is computed)."""
    text = str(err)
    if "invalid values" in text and re.search(r"\b-?(nan|inf)\b", text.split("invalid values", 1)[1]):
        return True
    return any(not torch.isfinite(p).all() for p in pair.parameters())


def train(
    pair: nn.Module,
    data: Dataset,
    *,
    epochs: int = 10,
    elbo: str | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    callbacks: Sequence[Callback] = (),
) -> Run:
    """Train ``pair`` on ``data`` by SVI and return the :class:`~pyrovae.runs.Run`.

    :param elbo: an estimator name (:func:`pyrovae.estimators.valid_forms`); by default the
        pair's ``default_elbo`` attribute, else ``trace``. The reported
        test ELBO is always the ELBO (:func:`pyrovae.estimators.make_evaluator`).
    :param out: run directory for config, metrics, checkpoint and images; ``None`` keeps
        everything in memory.
    :param resume: continue the run in ``out`` from its checkpoint, up to ``epochs``.
    :param quiet: print nothing. Otherwise a progress bar (on a terminal) and a line per epoch.

    ``seed`` fixes the data order, the binarizations and the SVI samples; the networks'
    initial weights are drawn when the pair is built, so call ``pyro.set_rng_seed(seed)``
    before building it for a fully repeatable run (the CLI does).
    """
    if not isinstance(pair, nn.Module) or not callable(getattr(pair, "model", None)):
        raise UsageError(f"train() takes a pair, an nn.Module instance with model() and guide(); got {pair!r}"
                         + (" (a class: build one, e.g. VAE())" if isinstance(pair, type) else ""))
    if not (isinstance(seed, int) and 0 <= seed < 2**32):
        raise UsageError(f"seed must be an integer in 0..{2**32 - 1} (NumPy's range, which Pyro seeds too), got {seed!r}")
    if epochs < 1 or batch_size < 1 or not 0 < lr < math.inf:
        raise UsageError(f"epochs and batch size must be positive and lr > 0 and finite; got epochs={epochs}, "
                         f"batch_size={batch_size}, lr={lr}")
    if resume and out is None:
        raise UsageError("resume=True needs the run directory out=")
    elbo = elbo or getattr(pair, "default_elbo", "trace")
    estimator, evaluator = make_estimator(elbo), make_evaluator(elbo)
    dev = resolve_device(device)
    group = distributed.current()  # None in a single process
    check_data(pair, data)
    config = json.loads(json.dumps({
        "model": spec_of(pair), "model_args": getattr(pair, "hparams", {}),
        "dataset": data.name, "data_root": data.root,
        "train_size": len(data.train), "test_size": len(data.test),
        "elbo": elbo, "batch_size": batch_size, "lr": lr, "seed": seed,
        "epochs": epochs, "device": str(dev), "processes": 1 if group is None else group.world,
    }))
    out = Path(out) if out is not None else None
    if out is None:
        ckpt, metrics = None, []
    elif group is None:
        ckpt, metrics = _open_run(out, config, resume)
    else:  # rank 0 opens the run and sends the checkpoint: other machines need no copy of the directory
        ckpt, metrics = group.from_rank0(lambda: _open_run(out, config, resume), dev)
    writes = out is not None and (group is None or group.is_main)

    pair.to(dev)
    data = data.to(dev)
    likelihood = getattr(pair, "likelihood", None)
    binarize = getattr(likelihood, "binarize", False)
    uses_labels = getattr(pair, "uses_labels", False)
    test = evaluation_split(data.test, binarize)

    optim = JointAdam(lr)
    if ckpt is None:
        start, store = 0, None
        pyro.set_rng_seed(seed)
    else:
        start, store = ckpt["epoch"], ckpt["params"]
        runs.load_pair_state(pair, ckpt["pair"], out)
        optim.set_state(ckpt["optim"])
        set_rng_state(ckpt["rng"])
    quiet = quiet or (group is not None and not group.is_main)
    say = (lambda msg: None) if quiet else (lambda msg: tqdm.write(msg, file=sys.stderr))
    show_bar = not quiet and sys.stderr.isatty()
    n_train = len(data.train)
    validate = pyro.distributions.is_validation_enabled()

    with pyro.get_param_store().scope(store):
        svi = SVI(pair.model, pair.guide, optim, loss=estimator)
        svi_step = svi.step if group is None else distributed.DataParallelStep(pair, estimator, optim, dev)
        for elbo_object in (estimator, evaluator):
            _settle_plate_nesting(elbo_object, pair, data.train, batch_size, uses_labels)
        if group is None:
            _compile_now(estimator, svi, pair, data.train, batch_size, uses_labels)
        for epoch in range(start + 1, epochs + 1):
            t0 = time.perf_counter()
            pair.train()
            shuffle = epoch_generator(seed, epoch, 0, torch.device("cpu"))
            flips = epoch_generator(seed, epoch, 1, dev) if binarize else None
            total, seen = 0.0, 0
            bar = tqdm(total=math.ceil(n_train / batch_size), desc=f"epoch {epoch}/{epochs}",
                       disable=not show_bar, leave=False, file=sys.stderr)
            if group is None:
                epoch_batches = batches(data.train, batch_size, shuffle=shuffle, binarize_with=flips)
            else:  # this rank's slice of each global batch, and its own SVI noise
                epoch_batches = group.shards(data.train, batch_size, seed, epoch, binarize, dev)
                group.seed_epoch(seed, epoch)
            for step, (x, y) in enumerate(epoch_batches, 1):
                try:
                    # Pyro's argument and shape checks run on an epoch's first step only: they cost
                    # about a tenth of a step, and a NaN they would catch also makes the loss NaN
                    with pyro.validation_enabled(validate and step == 1):
                        loss = svi_step(x, y) if uses_labels else svi_step(x)
                except (ValueError, RuntimeError) as err:
                    if _is_nonfinite_failure(err, pair):
                        raise NonFiniteLossError(epoch, step, float("nan"), _last_checkpoint(out)) from err
                    raise PyrovaeError(f"{type(pair).__name__} failed at epoch {epoch}, step {step}, on a batch "
                                       f"of shape {tuple(x.shape)}: {err}") from err
                if not math.isfinite(loss):
                    raise NonFiniteLossError(epoch, step, loss, _last_checkpoint(out))
                total, seen = total + loss, min(step * batch_size, n_train)
                for cb in callbacks:
                    cb.on_step(epoch, step, loss)
                if show_bar:
                    bar.update()
                    bar.set_postfix(elbo=f"{-total / seen:.2f}", refresh=False)
            bar.close()
            pair.eval()
            record = {
                "epoch": epoch,
                "train_elbo": -total / n_train,
                "test_elbo": (mean_elbo if group is None else group.mean_elbo)(
                    pair, test, evaluator, max(batch_size, 1000), uses_labels),
                "seconds": time.perf_counter() - t0,
            }
            metrics.append(record)
            say(f"epoch {epoch}/{epochs}  train ELBO {record['train_elbo']:.2f}  "
                f"test ELBO {record['test_elbo']:.2f}  ({record['seconds']:.1f} s)")
            if writes:
                runs.append_metrics(out, record)
                runs.save_checkpoint(out, {
                    "epoch": epoch, "config": config, "pair": pair.state_dict(),
                    "params": runs.free_param_state(pyro.get_param_store().get_state()),
                    "optim": optim.get_state(), "rng": rng_state(),
                })
            for cb in callbacks:
                cb.on_epoch(record)
        params = runs.free_param_state(pyro.get_param_store().get_state())
    pair.eval()
    if writes:
        _save_images(pair, test.x[:32], out)
    return Run(pair, config, metrics, out, params)


def _open_run(out: Path, config: dict[str, Any], resume: bool) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Prepare the run directory; on resume, the checkpoint and the metrics up to it (later
    records dropped from the file), and the new configuration written."""
    ckpt = runs.prepare_dir(out, config, resume)
    if ckpt is None:
        return None, []
    metrics = runs.read_metrics(out, ckpt["epoch"])
    runs.rewrite_metrics(out, metrics)
    runs.write_file(out / runs.CONFIG, json.dumps(config, indent=2) + "\n")
    return ckpt, metrics


def _settle_plate_nesting(estimator: Any, pair: nn.Module, split: Any, batch_size: int, uses_labels: bool) -> None:
    """Let an estimator that guesses ``max_plate_nesting`` (``TraceEnum_ELBO`` does) do so now,
    with the random number state put back: its guess runs the model and guide once, and
    if it drew from the RNG at the first step, a resumed run would draw differently from
    an unbroken one."""
    guesses = isinstance(estimator, TraceEnum_ELBO) or getattr(estimator, "vectorize_particles", False)
    if not guesses or getattr(estimator, "max_plate_nesting", None) != float("inf"):
        return
    x = split.x[:batch_size]
    args = (x, split.y[:batch_size]) if uses_labels else (x,)
    with forked_rng(x.device), poutine.block(), pyro.validation_enabled(False), pyro_info_silenced():
        estimator._guess_max_plate_nesting(pair.model, pair.guide, args, {})


def _compile_now(estimator: Any, svi: SVI, pair: nn.Module, split: Any, batch_size: int, uses_labels: bool) -> None:
    """Compile a JIT estimator now, leaving no trace of it: at its first step it runs the model
    and guide twice more to compile them, drawing from the RNG, so a resumed run, which
    compiles again, would draw differently from an unbroken one. The RNG, the gradients and
    the pair's state (buffers a gradient hook may change) are put back."""
    if not isinstance(estimator, (JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO)):
        return
    x = split.x[:batch_size]
    args = (x, split.y[:batch_size]) if uses_labels else (x,)
    state = {k: v.detach().clone() for k, v in pair.state_dict().items()}
    pair.train()  # the trace keeps the mode it was compiled in
    with forked_rng(x.device), pyro.validation_enabled(False), pyro_info_silenced():
        estimator.loss_and_grads(svi.model, svi.guide, *args)  # the callables SVI keys its compilation on
    pair.load_state_dict(state)
    for p in [*pair.parameters(), *(v.unconstrained() for v in pyro.get_param_store().values())]:
        p.grad = None


@contextmanager
def pyro_info_silenced() -> Iterator[None]:
    """Pyro's own log handler prints INFO lines (``Guessed max_plate_nesting = 1``) on
    stderr; within this context only its warnings pass."""
    logger = logging.getLogger("pyro")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _last_checkpoint(out: Path | None) -> str | None:
    return str(out / runs.CHECKPOINT) if out is not None and (out / runs.CHECKPOINT).exists() else None


def _save_images(pair: nn.Module, x: torch.Tensor, out: Path) -> None:
    if callable(getattr(pair, "sample", None)):
        save_samples(pair, out / "samples.png")
    if callable(getattr(pair, "reconstruct", None)):
        save_reconstructions(pair, x, out / "reconstructions.png")
