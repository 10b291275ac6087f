"""Estimator comparison: the SNR measure, the literature's SNR finding, and the command end to end."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import pyro
import pytest
import torch

from pyrovae import compare as compare_module
from pyrovae.cli import main
from pyrovae.data import Dataset, Split
from pyrovae.compare import Settings, compare, gradient_snr
from pyrovae.errors import PyrovaeError, UsageError
from pyrovae.estimators import make_estimator
from pyrovae.models import VAE
from pyrovae.runs import load_run, read_metrics
from test_estimators import _linear_pair, grad_draws, guide_slice

TINY = dict(model="vae", model_args={"z_dim": 4, "hidden": [16]}, epochs=1, batch_size=100,
            iwae_k=10, ll_size=50, snr_draws=5, snr_batch=16)


@pytest.fixture
def linear():
    pair = _linear_pair()
    torch.manual_seed(1)
    return pair, pair.marginal().sample((8,)).detach()


def test_snr_is_mean_over_entries_of_abs_mean_over_sd(linear):
    pair, x = linear
    pyro.set_rng_seed(3)
    with pyro.get_param_store().scope():
        snr = gradient_snr(pair, make_estimator("trace"), x, draws=50)
    pyro.set_rng_seed(3)
    draws = grad_draws(make_estimator("trace"), pair, x, 50)  # same draws, kept whole
    ratio = draws.mean(0).abs() / draws.std(0)
    g = guide_slice(pair)
    assert snr.guide == pytest.approx(ratio[g].mean().item(), rel=1e-6)
    assert snr.model == pytest.approx(ratio[: g.start].mean().item(), rel=1e-6)


def test_guide_snr_collapses_with_k_for_iwae_but_not_for_dreg(linear):
    """Rainforth et al. (2018): IWAE's inference-network SNR decays like 1/sqrt(K);
    Tucker et al. (2018): DReG's does not. On this pair over K = 1..1000 with 400 draws
    (benchmarks/snr_and_ess.py): IWAE 2.1 -> 0.86 (K=100) -> 0.39; DReG 3.2 -> 2.4 -> 1.9."""
    pair, x = linear
    snr = {}
    with pyro.get_param_store().scope():
        for name in ("iwae-1", "iwae-100", "dreg-1", "dreg-100"):
            pyro.set_rng_seed(0)
            snr[name] = gradient_snr(pair, make_estimator(name), x, draws=200).guide
    assert snr["iwae-100"] < 0.5 * snr["iwae-1"], snr
    assert snr["dreg-100"] > 0.5 * snr["dreg-1"], snr
    assert snr["dreg-100"] > 2 * snr["iwae-100"], snr


def test_compare_writes_tables_and_figures_and_resumes(tmp_path, data, monkeypatch, capsys):
    settings = Settings(estimators=("trace", "iwae-2"), seeds=2, **TINY)
    rows = compare(settings, data, tmp_path, quiet=True)
    assert [(r["estimator"], r["seed"]) for r in rows] == [("trace", 0), ("iwae-2", 0), ("trace", 1), ("iwae-2", 1)]
    for r in rows:
        assert r["log_likelihood"] >= r["test_elbo"] - 5 * r["log_likelihood_stderr"] - 5  # a bound at least as tight
        metrics = read_metrics(tmp_path / f"{r['estimator']}-seed{r['seed']}")  # the row is its run's record
        assert r["test_elbo"] == metrics[-1]["test_elbo"] and r["curve"] == [m["test_elbo"] for m in metrics]
        assert r["k"] == 10 and r["ll_examples"] == 50 and r["snr_examples"] == 16 and r["snr_guide_init"] > 0
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    table = (tmp_path / "results.md").read_text()
    assert "| trace |" in table and "| iwae-2 |" in table and "±" in table
    for png in ("curves.png", "snr.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second call finds every run finished and trains nothing
    monkeypatch.setattr(compare_module, "train", lambda *a, **k: pytest.fail("retrained a finished run"))
    capsys.readouterr()
    assert compare(settings, data, tmp_path) == rows
    assert capsys.readouterr().err.splitlines()[-1] == "compare: iwae-2, seed 1 done (4 of 4)"  # not a terminal: lines
    with pytest.raises(UsageError, match="other settings"):
        compare(Settings(estimators=("trace",), seeds=2, **TINY), data, tmp_path, quiet=True)
    fewer = Dataset(data.name, Split(data.train.x[:300], data.train.y[:300]), data.test, data.classes)
    with pytest.raises(UsageError, match="other settings"):  # same settings, other data
        compare(settings, fewer, tmp_path, quiet=True)


def test_each_run_of_a_comparison_rebuilds_a_users_pair_with_its_arguments(tmp_path, data):
    spec = f"{Path(__file__).parent / 'example_pairs.py'}:OffsetVAE"  # keeps no hparams of its own
    settings = Settings(**{**TINY, "model": spec, "model_args": {"z_dim": 3, "hidden": 16}, "estimators": ("trace",)})
    compare(settings, data, tmp_path, quiet=True)
    pair = load_run(tmp_path / "trace-seed0").pair
    assert pair.z_dim == 3 and pair.decoder.net[0].in_features == 3


def test_an_estimator_the_pair_refuses_stops_the_comparison_before_any_training(tmp_path, data):
    args = {**TINY["model_args"], "reparameterized": False}
    with pytest.raises(UsageError, match="stl cannot train vae: NotReparameterizedError"):
        compare(Settings(**{**TINY, "model_args": args, "estimators": ("trace", "stl")}), data, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_a_pair_with_an_improper_prior_compares_and_a_nan_statistic_is_shown_as_nan(tmp_path, data):
    # the autoencoder's model cannot draw its own latent (a flat prior), and its deterministic guide
    # has gradients that never vary, so its SNRs are NaN by design
    settings = Settings(**{**TINY, "model": "autoencoder", "model_args": {"z_dim": 2, "hidden": [16]},
                           "estimators": ("trace",), "seeds": 2})
    rows = compare(settings, data, tmp_path, quiet=True)
    assert all(math.isnan(r["snr_guide_init"]) for r in rows)
    assert "| trace |" in (tmp_path / "results.md").read_text() and "nan" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("kwargs, message", [({"estimators": ("trace", "iwae-0")}, "unknown estimator 'iwae-0'"),
                                             ({"estimators": ()}, "estimator"), ({"snr_draws": 1}, "snr"),
                                             ({"device": "tpu"}, "unknown device"),
                                             ({"estimators": ("trace", "iwae-2", "trace")}, "trace more than once")])
def test_bad_settings_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Settings(**{**TINY, "estimators": ("trace",), **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_settings_for_a_gpu_this_machine_lacks_fail_before_anything_is_written(tmp_path):
    with pytest.raises(PyrovaeError, match="CUDA is not available"):
        compare(Settings(**{**TINY, "estimators": ("trace",), "device": "cuda"}), None, tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_compare_command_rejects_an_unknown_estimator(tmp_path, capsys):
    assert main(["compare", "vae", "--elbos", "trace,bogus", "--out", str(tmp_path)]) == 2
    assert "valid forms" in capsys.readouterr().err


def test_snr_draws_leave_a_pairs_step_counter_alone():
    from pyrovae.models.gmvae import GMVAE

    pair = GMVAE(k=3, z_dim=2, hidden=[16], pretrain_examples=1000)
    x = torch.bernoulli(torch.rand(8, 1, 28, 28))
    before = {name: b.clone() for name, b in pair.named_buffers()}
    gradient_snr(pair, make_estimator("enum"), x, draws=3)
    assert int(pair.examples_seen) == 0
    assert all(torch.equal(b, before[name]) for name, b in pair.named_buffers())


def test_snr_of_an_estimator_that_guesses_its_plate_nesting_logs_nothing(caplog):
    # iwae-K vectorizes its draws, so its first call guesses max_plate_nesting, which Pyro logs at INFO
    pair = VAE(z_dim=2, hidden=[8])
    x = torch.bernoulli(torch.rand(4, 1, 28, 28))
    with caplog.at_level(logging.INFO, logger="pyro"), pyro.get_param_store().scope():
        gradient_snr(pair, make_estimator("iwae-2"), x, draws=2)
    assert not [r for r in caplog.records if "max_plate_nesting" in r.getMessage()]
