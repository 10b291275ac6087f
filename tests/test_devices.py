"""Every command on each device this machine has: the CPU always, a CUDA GPU when one is
visible (those cases are skipped otherwise). On a machine with a GPU,
``python -m pytest tests/test_devices.py`` checks that ``--device cuda`` works for train,
resume, eval, sample, plot and compare, and that each bundled pair trains there."""

from __future__ import annotations

import csv
import json
import math

import pyro
import pytest
import torch

from pyrovae import load_dataset, load_run, train
from pyrovae.cli import main
from pyrovae.models import CVAE, GMVAE
from pyrovae.runs import read_metrics

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
]
TINY = ["--train-size", "300", "--test-size", "100", "--batch-size", "50", "--quiet"]
SMALL_VAE = ["--arg", "z_dim=4", "--arg", "hidden=[16]"]


def _eval(run, device: str) -> dict:
    assert main(["eval", str(run), "--device", device, "--iwae-k", "30", "--posterior", "1", "--nuts-samples", "20",
                 "--nuts-warmup", "20", "--gap-steps", "10"]) == 0
    return json.loads((run / "eval.json").read_text())


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_trains_resumes_and_is_evaluated_sampled_and_plotted_on(device, tmp_path):
    run = tmp_path / "vae"
    assert main(["train", "vae", "--epochs", "1", "--device", device, "--out", str(run), *TINY, *SMALL_VAE]) == 0
    assert main(["train", "vae", "--epochs", "2", "--device", device, "--resume", "--out", str(run), *TINY,
                 *SMALL_VAE]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert json.loads((run / "config.json").read_text())["device"] == device

    here = _eval(run, device)
    assert math.isfinite(here["log_likelihood"]) and here["gap"] >= 0 and len(here["posterior"]) == 1
    # the same run evaluated on the CPU: the same quantity, up to the estimators' Monte Carlo error
    on_cpu = _eval(run, "cpu")
    assert abs(here["test_elbo"] - on_cpu["test_elbo"]) < 10
    tolerance = 4 * math.hypot(here["log_likelihood_stderr"], on_cpu["log_likelihood_stderr"])
    assert abs(here["log_likelihood"] - on_cpu["log_likelihood"]) < tolerance

    assert main(["sample", str(run), "-n", "4", "--device", device]) == 0
    assert (run / "sample.png").stat().st_size > 0
    assert main(["plot", str(run), "--device", device]) == 0
    assert any((run / "plots").glob("*.png"))


@pytest.mark.parametrize("device", DEVICES)
def test_compare_runs_on(device, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "vae", "--elbos", "trace,dreg-2", "--seeds", "1", "--epochs", "1", "--device", device,
                 "--iwae-k", "10", "--ll-size", "50", "--snr-draws", "5", "--snr-batch", "8", "--out", str(out),
                 *TINY, *SMALL_VAE]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["estimator"] for r in rows] == ["trace", "dreg-2"]
    assert all(math.isfinite(float(value)) for r in rows for key, value in r.items() if key != "estimator")


def _on(pair: torch.nn.Module, device: str) -> bool:
    return all(p.device.type == device for p in pair.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_each_bundled_pair_trains_on(device, data):
    settings = {"epochs": 2, "batch_size": 100, "device": device, "quiet": True}
    x = data.test.x[:8].to(device)

    pyro.set_rng_seed(0)
    run = train(CVAE(z_dim=3, hidden=[16]), data, **settings)
    label = run.pair
    assert _on(label, device) and all(math.isfinite(r["test_elbo"]) for r in run.metrics)
    images = label.sample_by_label(2)
    assert images.device.type == device and images.shape == (10, 2, 1, 28, 28)

    pyro.set_rng_seed(0)
    complete = train(CVAE(task="complete", quadrants=2, z_dim=3, hidden=[16]), data, **settings).pair
    filled = complete.complete(x, n=3)
    assert _on(complete, device) and filled.device.type == device and filled.shape == (3, *x.shape)
    visible = complete.masks.visible.expand_as(x)
    assert torch.equal(filled[:, visible], x.expand_as(filled)[:, visible])  # the visible quadrants as given
    assert 0 <= filled.min() and filled.max() <= 1

    pyro.set_rng_seed(0)
    gmvae = GMVAE(k=3, z_dim=2, hidden=[16], pretrain_examples=600, init_codes=300)
    run = train(gmvae, data, **settings)  # pretrains the first epoch; k-means on the device starts the mixture
    assert bool(run.pair.mixture_on) and _on(run.pair, device)
    clusters = run.pair.cluster(x)
    assert clusters.device.type == device and clusters.min() >= 0 and clusters.max() < 3
    assert all(math.isfinite(r["test_elbo"]) for r in run.metrics)



@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")),
])
def test_two_processes_train_one_run_on(device, tmp_path):
    """``--nproc 2`` for real, through torch's elastic launcher: gloo on the CPU, NCCL on two GPUs."""
    run = tmp_path / "ddp"
    assert main(["train", "vae", "--nproc", "2", "--epochs", "1", "--device", device, "--out", str(run), *TINY,
                 *SMALL_VAE]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["processes"] == 2 and torch.device(config["device"]).type == device  # rank 0's: cuda:0 on GPUs
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    resumed = train(load_run(run).pair, load_dataset(train_size=300, test_size=100), epochs=2, batch_size=50,
                    device=device, out=run, resume=True, quiet=True)
    assert [r["epoch"] for r in resumed.metrics] == [1, 2] and resumed.config["processes"] == 1
