"""Data-parallel training on several processes, with PyTorch's DistributedDataParallel.

Every process (a *rank*) holds the whole pair. Each epoch all ranks draw the same
permutation of the training set, and rank ``r`` of ``N`` takes the ``r``-th of ``N``
near-equal slices of every global batch of ``batch_size`` examples (binarized with its
own generator). After the backward pass the gradients are *summed* over ranks: a Pyro
loss is a sum over examples, so one step is a step on the whole global batch, as in
one process. Each rank draws its own SVI noise, seeded by (seed, epoch, rank), so the
same seed on the same number of processes gives the same run.

Pyro's ``SVI`` calls the model and guide itself, so the hooks of
``DistributedDataParallel`` (DDP) would never fire; :class:`DataParallelStep` wraps
``estimator.differentiable_loss`` in an ``nn.Module`` instead (as Pyro's
``examples/svi_lightning.py`` does) and gives that module to DDP, then applies the
``pyro.optim`` optimizer to the parameters the step touched, as ``SVI.step`` does.
Free ``pyro.param`` values outside the pair's networks, and every parameter for the
estimators without ``differentiable_loss`` (``graph``, ``iwae-K``, ``renyi-A-K``,
``dreg-K``, ``jit-graph``), are summed with one explicit all-reduce per step, which
also sums the step's loss. Rank 0 alone writes the run directory; the others take the
checkpoint from it, so the directory need not be shared between machines.

:func:`join_from_env` joins the process group that ``torchrun`` describes in the
environment (gloo on the CPU, NCCL on CUDA with one GPU per process), and
:func:`launch` starts ``N`` such processes on this machine (``pyrovae train --nproc N``).
"""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import pyro
import torch
import torch.distributed as dist
from pyro import poutine
from pyro.infer import ELBO
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyrovae.data import Split, binarize
from pyrovae.errors import PyrovaeError, UsageError
from pyrovae.evaluate import mean_elbo
from pyrovae.rng import forked_rng

__all__ = ["Group", "DataParallelStep", "FailedOnRankZero", "current", "join_from_env", "leave", "launch"]

T = TypeVar("T")


class FailedOnRankZero(PyrovaeError):
    """Raised on the other ranks when work that rank 0 alone does (opening the run
    directory) failed there; rank 0 reports the error, the others exit with its status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p % 2**32 for p in parts]).generate_state(1)[0])


@dataclass(frozen=True)
class Group:
    """This process's place in the default process group: ``rank`` of ``world`` ranks."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Seed this rank's SVI noise for ``epoch`` (a resumed run draws the same noise)."""
        pyro.set_rng_seed(_seed(seed, epoch, 2, self.rank))

    def shards(self, split: Split, batch_size: int, seed: int, epoch: int, binarized: bool,
               device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's slice of each global batch of an epoch: the order is the one
        :func:`pyrovae.train.epoch_generator` gives every rank (and one process). A last
        batch too small to give every rank an example joins the batch before it."""
        from pyrovae.train import epoch_generator  # train imports this module

        n = len(split)
        if n < self.world or batch_size < self.world:
            raise UsageError(f"{min(n, batch_size)} {'training examples' if n < batch_size else 'examples a batch'} "
                             f"cannot be shared by {self.world} processes")
        order = torch.randperm(n, generator=epoch_generator(seed, epoch, 0, torch.device("cpu"))).to(split.x.device)
        flips = torch.Generator(device=device).manual_seed(_seed(seed, epoch, 1, self.rank)) if binarized else None
        bounds = [*range(0, n, batch_size), n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < self.world:
            del bounds[-2]
        for start, stop in zip(bounds, bounds[1:]):
            idx = order[start:stop].tensor_split(self.world)[self.rank]
            x, y = split.x[idx], split.y[idx]
            yield (binarize(x, flips) if flips is not None else x), y

    def sum(self, value: float, device: torch.device) -> float:
        total = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.item()

    def mean_elbo(self, pair: nn.Module, split: Split, estimator: ELBO, batch_size: int, uses_labels: bool) -> float:
        """:func:`pyrovae.evaluate.mean_elbo` over ``split``, each rank evaluating one slice."""
        part = Split(split.x.tensor_split(self.world)[self.rank], split.y.tensor_split(self.world)[self.rank])
        local = mean_elbo(pair, part, estimator, batch_size, uses_labels) * len(part) if len(part) else 0.0
        return self.sum(local, split.x.device) / len(split)

    def from_rank0(self, fn: Callable[[], T], device: torch.device) -> T:
        """``fn()`` run on rank 0 alone, its result (or its :class:`PyrovaeError`) sent to
        every rank; tensors arrive on each rank's ``device``."""
        if self.is_main:
            try:
                result = fn()
            except PyrovaeError as err:
                dist.broadcast_object_list([(str(err), err.exit_code)], src=0)
                raise
            buffer = io.BytesIO()
            torch.save(result, buffer)
            dist.broadcast_object_list([buffer.getvalue()], src=0)
            return result
        payload: list[Any] = [None]
        dist.broadcast_object_list(payload, src=0)
        if isinstance(payload[0], tuple):
            raise FailedOnRankZero(*payload[0])
        return torch.load(io.BytesIO(payload[0]), map_location=device, weights_only=False)


def current() -> Group | None:
    """The process group this process trains in, or ``None`` for a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Group(dist.get_rank(), dist.get_world_size())
    return None


class _Loss(nn.Module):
    """The pair's differentiable loss as a module's forward, so that DDP's hooks fire."""

    def __init__(self, pair: nn.Module, estimator: ELBO, model: Callable, guide: Callable) -> None:
        super().__init__()
        self.pair, self.estimator, self.model, self.guide = pair, estimator, model, guide

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.estimator.differentiable_loss(self.model, self.guide, *args)


def _sum_hook(state, bucket):  # no annotations: DDP checks them, and this module's are strings
    """DDP's all-reduce without its division by the number of ranks."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


class DataParallelStep:
    """``SVI.step`` on this rank's slice of a global batch, gradients summed over ranks.

    Returns the global batch's loss (the same number on every rank). The first call
    creates the pair's Pyro parameters and copies rank 0's values to every rank.
    """

    def __init__(self, pair: nn.Module, estimator: ELBO, optim: pyro.optim.PyroOptim, device: torch.device) -> None:
        self.pair, self.estimator, self.optim, self.device = pair, estimator, optim, device
        # the same callables at every step: Pyro's JIT estimators key their compiled code on their ids,
        # and each `pair.model` is a new bound method
        self.model, self.guide = pair.model, pair.guide
        self.ddp: DistributedDataParallel | None = None
        self.by_ddp: set[torch.Tensor] = set()
        self.ready = False

    def _setup(self, args: tuple[torch.Tensor, ...]) -> None:
        """Create the pair's Pyro parameters by one evaluation that leaves the RNG as it was,
        copy rank 0's values to every rank, and hand the pair to DDP where the estimator
        has a differentiable loss (telling DDP whether some networks' parameters go unused)."""
        trained = [p for p in self.pair.parameters() if p.requires_grad]
        use_ddp = hasattr(self.estimator, "differentiable_loss") and bool(trained)
        with forked_rng(self.device), poutine.trace(param_only=True) as capture:
            if use_ddp:
                loss = self.estimator.differentiable_loss(self.model, self.guide, *args)
                unused = not loss.requires_grad or any(
                    g is None for g in torch.autograd.grad(loss, trained, allow_unused=True))
            else:
                self.estimator.loss(self.model, self.guide, *args)
        with torch.no_grad():
            for name in sorted(capture.trace.nodes):  # the same order on every rank
                dist.broadcast(capture.trace.nodes[name]["value"].unconstrained().detach(), src=0)
        if use_ddp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(_Loss(self.pair, self.estimator, self.model, self.guide), device_ids=ids,
                                               find_unused_parameters=unused)
            self.ddp.register_comm_hook(None, _sum_hook)
            self.by_ddp = set(trained)
        self.ready = True

    def __call__(self, *args: torch.Tensor) -> float:
        if not self.ready:
            self._setup(args)
        with poutine.trace(param_only=True) as capture:
            if self.ddp is not None:
                loss = self.ddp(*args)
                loss.backward()
            else:
                loss = self.estimator.loss_and_grads(self.model, self.guide, *args)
        named = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
        rest = [named[name] for name in sorted(named) if named[name] not in self.by_ddp]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in rest]
        loss = torch.as_tensor(loss, device=self.device).detach()
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(grads[0].dtype if grads else loss.dtype)])
        dist.all_reduce(flat)  # the free parameters' gradients and the loss, summed
        for p, g in zip(rest, flat[:-1].split([g.numel() for g in grads])):
            p.grad = g.view_as(p)
        params = set(named.values())
        self.optim(params)
        for p in params:
            p.grad = None
        return flat[-1].item()


def join_from_env(device: str) -> str:
    """Join the process group described by ``torchrun``'s environment variables (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) when there are two or
    more ranks; return the device this process trains on (``cuda:LOCAL_RANK`` for CUDA).

    Unless ``OMP_NUM_THREADS`` is set, each process uses its share of this machine's cores.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2 or dist.is_initialized():
        return device
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", world))
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise UsageError(f"with several processes each one uses the GPU cuda:LOCAL_RANK; give --device cuda, "
                             f"not {device}")
        if local_rank >= torch.cuda.device_count():
            raise PyrovaeError(f"process {local_rank} on this machine has no GPU of its own: the machine has "
                               f"{torch.cuda.device_count()}; start at most that many processes per machine")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // local_world))
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return str(dev)


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m pyrovae ARGV`` in ``nproc`` processes on this machine, as
    ``torchrun --standalone --nproc-per-node NPROC -m pyrovae ARGV`` does, and return the
    exit status: 0, or that of the first process to fail (which printed its error).
    Raises :class:`KeyboardInterrupt` when stopped by a signal."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    # the launcher replaces these handlers and leaves its own; its log repeats what the processes say
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    log = logging.getLogger("torch.distributed.elastic")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "pyrovae", *argv)
        return 0
    except SignalException:
        raise KeyboardInterrupt from None
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        if failure.exitcode in (1, 2, 130):
            return failure.exitcode  # the process said why
        raise PyrovaeError(f"the process of rank {rank} ended with exit status {failure.exitcode} "
                           "(a negative status is the signal that stopped it); the others were stopped") from None
    finally:
        log.setLevel(level)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
