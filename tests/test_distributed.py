"""Training on two processes (gloo on the CPU): gradients, agreement between ranks, files, resume.

Starting processes is the slow part here (each imports torch, Pyro and torchvision), so
one ``torch.multiprocessing.spawn`` of two ranks does it all: the gradient check, a run
through the library and one through the command line. ``pyrovae train --nproc 2``
(torch's elastic launcher starting ``python -m pyrovae train``) is checked for the
command line it hands to each process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from pyro.infer import Trace_ELBO
from torch.distributions import constraints

from example_pairs import OffsetVAE
from pyrovae import load_dataset, train
from pyrovae import distributed
from pyrovae.cli import build_parser, main
from pyrovae.data import Split
from pyrovae.errors import PyrovaeError, UsageError
from pyrovae.estimators import make_estimator
from pyrovae.evaluate import mean_elbo
from pyrovae.models import GMVAE, AutoEncoder
from pyrovae.train import epoch_generator
from pyrovae.runs import read_metrics

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")

SIZES = {"train_size": 512, "test_size": 128}
RUN = {"epochs": 2, "batch_size": 128, "quiet": True}
# The 2-process run sees the same data order as one process with the same global batch;
# only the binarizations and the SVI draws differ. Over 10 seeds of one process (same
# initial weights) the final test ELBO here spread by 0.7 nats (sd 0.26): 1.5 nats is
# about 6 sd, yet below what half the steps cost (5.4 nats lower after one epoch instead
# of two, as when each rank walks through only its half of the batches). A wrong loss
# scale would not show here (Adam's steps do not change with it): the gradient test checks that.
TOLERANCE = 1.5
ELBOS = ("trace", "graph", "iwae-3", "dreg-3")  # the last two vectorize their particles
CLI_RUN = ["--arg", "z_dim=4", "--arg", "hidden=[32]", "--train-size", "300", "--test-size", "64",
           "--batch-size", "100", "--quiet"]


class NoLatents(nn.Module):
    """A pair without latent sites, so its ELBO is log p(x) and its gradient is the same on
    every draw: a network's parameters (through DDP) and a free ``pyro.param`` (through the
    explicit all-reduce)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 5)

    def model(self, x, y=None):
        pyro.module("net", self.net)
        scale = pyro.param("scale", torch.ones(5), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(self.net(x[:, :3]), scale).to_event(1), obs=x)

    def guide(self, x, y=None):
        pass


class RecordGrads:
    """Stands in for the optimizer: keeps the gradients it is asked to apply."""

    def __call__(self, params):
        store = pyro.get_param_store()
        self.grads = {store.param_name(p): p.grad.clone() for p in params}


def _global_batch() -> torch.Tensor:
    return torch.randn(7, 5, generator=torch.Generator().manual_seed(1))  # 7 = 4 + 3: uneven slices


def _no_latents() -> NoLatents:
    torch.manual_seed(0)
    return NoLatents()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tmp: str) -> None:
    from pyrovae import distributed, runs, train as train_module

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    distributed.join_from_env("cpu")
    results = {}
    for elbo in ELBOS:  # through DDP (trace), and through the explicit all-reduce (the others)
        pyro.clear_param_store()
        pair, optim = _no_latents(), RecordGrads()
        step = distributed.DataParallelStep(pair, make_estimator(elbo), optim, torch.device("cpu"))
        loss = step(_global_batch().tensor_split(2)[rank])
        results[elbo] = {"loss": loss, "grads": optim.grads}
    pyro.clear_param_store()
    jit = make_estimator("jit-trace")  # compiles once, not at every step (it keys its code on the callables)
    step = distributed.DataParallelStep(_no_latents(), jit, RecordGrads(), torch.device("cpu"))
    for _ in range(3):
        step(_global_batch().tensor_split(2)[rank])
    results["jit_compilations"] = len(jit._loss_and_surrogate_loss.compiled)
    if rank == 1:  # everything written goes through these; rank 1 must call none of them
        def refuse(*args, **kwargs):
            raise AssertionError("rank 1 wrote to the run directory")
        runs.append_metrics = runs.save_checkpoint = runs.rewrite_metrics = train_module._save_images = refuse
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = load_dataset("fashion-mnist", **SIZES)
    run = train(OffsetVAE(z_dim=4, hidden=32), data, seed=0, out=Path(tmp) / "two", **RUN)
    results["params"] = {**run.pair.state_dict(), **run.param_state["params"]}
    results["metrics"] = run.metrics
    refusal = distributed.FailedOnRankZero if rank else PyrovaeError
    try:  # a run directory that rank 0 refuses: every rank stops, none waits forever
        train(OffsetVAE(z_dim=4, hidden=32), data, seed=0, out=Path(tmp) / "two", **RUN)
    except refusal as err:
        results["refused"] = str(err)
    for elbo in ("graph", "enum"):  # the explicit all-reduce and DDP: the switch at the one-process step
        pyro.set_rng_seed(0)
        gm = train(GMVAE(k=3, z_dim=2, hidden=[16], pretrain_examples=256, init_restarts=1), data, elbo=elbo,
                   seed=0, epochs=1, batch_size=127, quiet=True).pair
        results[f"gmvae-{elbo}"] = {"examples_seen": int(gm.examples_seen), "mixture_on": bool(gm.mixture_on),
                                    "prior": gm.prior.state_dict()}
    with contextlib.redirect_stdout(io.StringIO()) as said:  # the command line, as under torchrun
        results["cli_status"] = main(["train", "vae", *CLI_RUN, "--epochs", "1", "--out", str(Path(tmp) / "cli")])
    results["cli_said"] = said.getvalue()
    torch.save(results, Path(tmp) / f"rank{rank}.pt")
    distributed.leave()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(tmp)), nprocs=2)
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("elbo", ELBOS)
def test_a_sharded_step_has_the_gradient_of_the_global_batch(elbo, two_ranks):
    pair = _no_latents()
    x = _global_batch()
    loss = make_estimator(elbo).loss_and_grads(pair.model, pair.guide, x)
    store = pyro.get_param_store()
    for rank in two_ranks[1]:
        assert rank[elbo]["loss"] == pytest.approx(loss, rel=1e-5)
        assert set(rank[elbo]["grads"]) == {"scale", "net$$$weight", "net$$$bias"}
        for name, grad in rank[elbo]["grads"].items():
            expected = store.get_param(name).unconstrained().grad
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)  # summed, not averaged


def test_a_jit_estimator_compiles_once_on_each_rank(two_ranks):
    assert [r["jit_compilations"] for r in two_ranks[1]] == [1, 1]


@pytest.mark.parametrize("elbo", ["graph", "enum"])
def test_the_gmvae_counts_every_process_examples_and_all_start_from_the_same_mixture(two_ranks, elbo):
    ranks = [r[f"gmvae-{elbo}"] for r in two_ranks[1]]
    assert [r["examples_seen"] for r in ranks] == [512, 512] and all(r["mixture_on"] for r in ranks)
    for name, value in ranks[0]["prior"].items():
        assert torch.equal(ranks[1]["prior"][name], value), name


def test_both_ranks_end_with_the_same_parameters_and_metrics(two_ranks):
    tmp, (zero, one) = two_ranks
    assert zero["params"].keys() == one["params"].keys() and "logit_offset" in zero["params"]
    for name, value in zero["params"].items():
        assert torch.equal(value, one["params"][name]), name
    strip = lambda rs: [(r["epoch"], r["train_elbo"], r["test_elbo"]) for r in rs]  # noqa: E731
    assert strip(zero["metrics"]) == strip(one["metrics"])
    assert zero["params"]["logit_offset"] != 0  # the free parameter trained


def test_rank_zero_alone_writes_the_run_and_a_refusal_stops_every_rank(two_ranks):
    tmp, (zero, one) = two_ranks
    run = tmp / "two"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert "already holds a run" in zero["refused"] and one["refused"] == zero["refused"]


def test_two_processes_match_one_with_the_same_global_batch_and_resume_in_one(two_ranks, tmp_path):
    tmp, (zero, _) = two_ranks
    data = load_dataset("fashion-mnist", **SIZES)
    pyro.set_rng_seed(0)
    one = train(OffsetVAE(z_dim=4, hidden=32), data, seed=0, **RUN)
    assert abs(zero["metrics"][-1]["test_elbo"] - one.metrics[-1]["test_elbo"]) < TOLERANCE
    assert zero["metrics"][-1]["test_elbo"] > zero["metrics"][0]["test_elbo"]
    # the checkpoint of the 2-process run goes on in one process
    assert json.loads((tmp / "two" / "config.json").read_text())["processes"] == 2
    pyro.clear_param_store()
    pyro.set_rng_seed(123)
    resumed = train(OffsetVAE(z_dim=4, hidden=32), data, seed=0, out=tmp / "two", resume=True, **{**RUN, "epochs": 3})
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    assert resumed.metrics[:2] == zero["metrics"]
    assert resumed.config["processes"] == 1  # the config records the run as it goes on


def test_the_command_line_on_two_ranks_writes_one_run_that_resumes_in_one_process(two_ranks, capsys):
    tmp, (zero, one) = two_ranks
    assert zero["cli_status"] == one["cli_status"] == 0
    assert "final test ELBO" in zero["cli_said"] and one["cli_said"] == ""  # rank 0 alone speaks
    out = tmp / "cli"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl",
                                                     "reconstructions.png", "samples.png"]
    assert main(["train", "vae", *CLI_RUN, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert "after 2 epochs" in capsys.readouterr().out


def test_train_nproc_hands_each_process_the_same_command(monkeypatch, tmp_path):
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: launched.append((nproc, argv)) or 0)
    command = ["train", "cvae", "--task", "complete", "--arg", "z_dim=4", "--train-size", "300", "--epochs", "3",
               "--lr", "0.0003", "--elbo", "stl", "--resume", "--out", str(tmp_path / "r")]
    assert main([*command, "--nproc", "3"]) == 0
    [(nproc, argv)] = launched
    parser = build_parser()
    again, extra = parser.parse_known_args(argv)
    original, original_extra = parser.parse_known_args(command)
    assert nproc == 3 and again.nproc == 1 and extra == original_extra == ["--task", "complete"]
    assert vars(again) == vars(original)


@pytest.mark.parametrize("argv, message", [(["--batch-size", "1"], "cannot be shared by 2 processes"),
                                           (["--arg", "z_dim=0"], "z_dim >= 1")])
def test_what_every_process_would_refuse_is_refused_once_before_launching(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(distributed, "launch", lambda *a: pytest.fail("launched processes"))
    status = main(["train", "vae", "--nproc", "2", *argv])
    err = capsys.readouterr().err
    assert status in (1, 2) and err.count(message) == 1 and "Traceback" not in err


def test_nproc_under_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "vae", "--nproc", "2"]) == 2


def test_each_global_batch_is_shared_out_whole_and_a_tiny_last_batch_joins_the_one_before():
    """Ranks' slices, put together, are the one-process batches in the one-process order;
    10 examples in batches of 4 over 3 ranks: 4, then 6 (a last batch of 2 cannot feed 3 ranks)."""
    split = Split(torch.arange(10.0)[:, None], torch.arange(10))
    order = torch.randperm(10, generator=epoch_generator(5, 2, 0, torch.device("cpu")))
    slices = [list(distributed.Group(rank, 3).shards(split, 4, 5, 2, False, torch.device("cpu"))) for rank in range(3)]
    assert [len(s) for s in slices] == [2, 2, 2]
    for b, (start, stop) in enumerate([(0, 4), (4, 10)]):
        together = torch.cat([slices[rank][b][1] for rank in range(3)])
        assert torch.equal(together, order[start:stop])
    with pytest.raises(UsageError, match="2 training examples cannot be shared by 3 processes"):
        next(distributed.Group(0, 3).shards(Split(split.x[:2], split.y[:2]), 4, 5, 2, False, torch.device("cpu")))
    with pytest.raises(UsageError, match="2 examples a batch cannot be shared by 3 processes"):
        next(distributed.Group(0, 3).shards(split, 2, 5, 2, False, torch.device("cpu")))


def test_the_test_elbo_of_uneven_slices_is_the_mean_over_examples(monkeypatch):
    """7 test examples on 2 ranks (4 and 3): the sum of the ranks' ELBO sums over 7, as one process
    gets, not the mean of the two ranks' means (the autoencoder's ELBO has no randomness)."""
    torch.manual_seed(0)
    pair = AutoEncoder(z_dim=2, hidden=[8])
    x = torch.rand(7, 1, 28, 28).round()
    split = Split(x, torch.zeros(7))
    parts = {}
    monkeypatch.setattr(distributed.Group, "sum", lambda self, value, device: parts.setdefault(self.rank, value))
    with pyro.get_param_store().scope():
        whole = mean_elbo(pair, split, Trace_ELBO(), 100, False)
        for rank in range(2):
            distributed.Group(rank, 2).mean_elbo(pair, split, Trace_ELBO(), 100, False)
        per_rank = [mean_elbo(pair, Split(x[:4], split.y[:4]), Trace_ELBO(), 100, False),
                    mean_elbo(pair, Split(x[4:], split.y[4:]), Trace_ELBO(), 100, False)]
    assert (parts[0] + parts[1]) / 7 == pytest.approx(whole, rel=1e-6)  # float32 sums
    assert abs(sum(per_rank) / 2 - whole) > 1e-3  # averaging the ranks' means would show


def test_the_launcher_returns_the_status_of_a_process_that_said_why(capfd):
    """Real processes through torch's elastic launcher (as --nproc 2 starts them): each refuses
    an unknown model with status 2 and its one-line message, and launch returns that status."""
    assert distributed.launch(2, ["train", "no-such-model", "--quiet"]) == 2
    assert "unknown model 'no-such-model'" in capfd.readouterr().err
