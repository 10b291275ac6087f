"""The trainer: files, exact resume, stopping, and each bad input."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch

from example_pairs import OffsetVAE, PoisonedVAE, linear_pair
from pyrovae import Callback, load_run, train
from pyrovae.data import Dataset, Split
from pyrovae.errors import NonFiniteLossError, PyrovaeError, UsageError
from pyrovae.models import VAE
from pyrovae.runs import load_checkpoint, read_metrics

SMALL = {"epochs": 3, "batch_size": 100, "quiet": True}


class StopAt(Callback):
    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        if (epoch, step) == (self.epoch, self.step):
            raise KeyboardInterrupt


def _pair(cls=VAE, seed=0, **kwargs):
    pyro.set_rng_seed(seed)
    return cls(**kwargs) if kwargs or cls is not VAE else cls(z_dim=4, hidden=[16])


def test_run_directory_holds_config_metrics_checkpoint_and_images(tmp_path, data):
    run = train(_pair(), data, out=tmp_path / "run", **SMALL)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["checkpoint.pt", "config.json", "metrics.jsonl", "reconstructions.png", "samples.png"]
    records = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2, 3] and records == run.metrics
    assert set(records[0]) == {"epoch", "train_elbo", "test_elbo", "seconds"}
    assert all(r["test_elbo"] < 0 for r in records)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "vae" and config["model_args"]["z_dim"] == 4 and config["elbo"] == "trace"
    assert config["processes"] == 1
    loaded = load_run(tmp_path / "run")
    for name, value in run.pair.state_dict().items():
        assert torch.equal(loaded.pair.state_dict()[name], value)


@pytest.mark.parametrize("cls, elbo", [(VAE, "trace"), (OffsetVAE, "trace"), (VAE, "iwae-3"), (VAE, "jit-trace"),
                                       (VAE, "jit-graph")])
def test_interrupted_then_resumed_run_ends_with_identical_parameters(cls, elbo, tmp_path, data):
    # iwae-3 draws its particles vectorized, after guessing its plate nesting with the RNG put back;
    # a JIT estimator compiles in each process, with the RNG put back too
    whole = train(_pair(cls), data, out=tmp_path / "whole", elbo=elbo, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        train(_pair(cls), data, out=tmp_path / "cut", callbacks=[StopAt(epoch=2, step=3)], elbo=elbo, **SMALL)
    assert load_checkpoint(tmp_path / "cut")["epoch"] == 1
    # a different initialization: the checkpoint, not the seed, must carry the state
    resumed = train(_pair(cls, seed=123), data, out=tmp_path / "cut", resume=True, elbo=elbo, **SMALL)
    for name, value in whole.pair.state_dict().items():
        assert torch.equal(resumed.pair.state_dict()[name], value), name
    for name, value in whole.param_state["params"].items():
        assert torch.equal(resumed.param_state["params"][name], value), name
    strip = lambda rs: [(r["epoch"], r["train_elbo"], r["test_elbo"]) for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "cut")) == strip(whole.metrics)
    if cls is OffsetVAE:
        assert whole.param_state["params"]["logit_offset"] != 0  # the free parameter trained


def test_resume_continues_to_more_epochs(tmp_path, data):
    train(_pair(), data, out=tmp_path / "r", **SMALL)
    run = train(_pair(), data, out=tmp_path / "r", resume=True, **{**SMALL, "epochs": 4})
    assert [r["epoch"] for r in run.metrics] == [1, 2, 3, 4]


def test_a_checkpoint_of_another_version_of_the_pair_is_refused_by_name(tmp_path, data):
    """A checkpoint whose pair state lacks an entry the pair now has (written before the pair
    gained a network) fails to load and to resume with a message naming the entry."""
    train(_pair(), data, out=tmp_path / "old", **{**SMALL, "epochs": 1})
    ckpt = load_checkpoint(tmp_path / "old")
    del ckpt["pair"]["decoder.net.0.bias"]
    torch.save(ckpt, tmp_path / "old" / "checkpoint.pt")
    with pytest.raises(PyrovaeError, match=r"missing decoder\.net\.0\.bias.*another version of the pair"):
        load_run(tmp_path / "old")
    with pytest.raises(PyrovaeError, match=r"does not fit VAE"):
        train(_pair(), data, out=tmp_path / "old", resume=True, **SMALL)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data):
    # epoch 1 calls the model 6 times (steps) + 1 (test ELBO): the 9th call is epoch 2, step 2
    pair = _pair(PoisonedVAE, poison_at=9, z_dim=4, hidden=[16])
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 2") as err:
        train(pair, data, out=tmp_path / "nan", **SMALL)
    assert "checkpoint.pt" in str(err.value)
    ckpt = load_checkpoint(tmp_path / "nan")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["pair"].values())


def _shifted(data: Dataset, scale: float = 1.0, shape=None) -> Dataset:
    def change(s: Split) -> Split:
        x = s.x * scale
        return Split(x.reshape(x.shape[0], *shape) if shape else x, s.y)

    return Dataset(data.name, change(data.train), change(data.test), data.classes)


def test_wrong_example_shape_names_both_shapes(data):
    with pytest.raises(PyrovaeError, match=r"\(1, 28, 28\).*\(1, 14, 56\)"):
        train(_pair(), _shifted(data, shape=(1, 14, 56)), **SMALL)


def test_bernoulli_refuses_values_outside_the_unit_interval(data):
    with pytest.raises(PyrovaeError, match=r"\[0, 1\].*x / 255"):
        train(_pair(), _shifted(data, scale=255.0), **SMALL)


def test_bad_run_directories_are_refused(tmp_path, data):
    with pytest.raises(PyrovaeError, match="no checkpoint"):
        train(_pair(), data, out=tmp_path / "none", resume=True, **SMALL)
    train(_pair(), data, out=tmp_path / "done", **SMALL)
    with pytest.raises(PyrovaeError, match="already holds a run"):
        train(_pair(), data, out=tmp_path / "done", **SMALL)
    with pytest.raises(PyrovaeError, match=r"lr: 0.001 in the checkpoint, 0.01 now"):
        train(_pair(), data, out=tmp_path / "done", resume=True, lr=0.01, **SMALL)
    (tmp_path / "file").write_text("")
    with pytest.raises(PyrovaeError, match="cannot write the run directory"):
        train(_pair(), data, out=tmp_path / "file" / "run", **SMALL)


@pytest.mark.parametrize(
    "kwargs, error",
    [({"elbo": "nope"}, "unknown estimator"), ({"device": "tpu"}, "unknown device"), ({"epochs": 0}, "epochs"),
     ({"lr": -1.0}, "lr > 0"), ({"resume": True}, "resume=True needs"), ({"seed": -1}, "seed must be an integer"),
     ({"lr": float("inf")}, "lr > 0 and finite")],
)
def test_bad_options_are_usage_errors(kwargs, error, data):
    with pytest.raises(UsageError, match=error):
        train(_pair(), data, **{**SMALL, **kwargs})


def test_a_class_instead_of_a_pair_is_a_usage_error(data):
    with pytest.raises(UsageError, match="a class: build one"):
        train(VAE, data, **SMALL)


def test_a_pair_defined_in_the_running_script_trains_and_loads_when_passed_again(tmp_path, data):
    Inline = type("Inline", (VAE,), {"__module__": "__main__"})  # as a class of a script or notebook cell is
    run = train(Inline(z_dim=4, hidden=[16]), data, out=tmp_path / "inline", **{**SMALL, "epochs": 1})
    assert run.config["model"] == "__main__:Inline"
    with pytest.raises(UsageError, match="cannot import again.*load_run\\(out, pair=Inline"):
        load_run(tmp_path / "inline")
    loaded = load_run(tmp_path / "inline", pair=Inline(z_dim=4, hidden=[16]))
    for name, value in run.pair.state_dict().items():
        assert torch.equal(loaded.pair.state_dict()[name], value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_so(data):
    with pytest.raises(PyrovaeError, match="CUDA is not available"):
        train(_pair(), data, device="cuda", **SMALL)


class NegativeScaleVAE(VAE):
    """A guide whose scale turns negative at one step: Pyro's argument checks name the
    constraint; without them the loss is NaN."""

    def __init__(self, bad_step: int) -> None:
        super().__init__(z_dim=4, hidden=[16])
        self.bad_step, self.calls = bad_step, 0

    def guide(self, x, y=None):
        self.calls += 1
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            sign = -1.0 if self.calls == self.bad_step else 1.0
            pyro.sample("z", pyro.distributions.Normal(loc, sign * scale).to_event(1))


def test_first_step_of_an_epoch_runs_pyros_checks_later_steps_do_not(data):
    # 600 images in batches of 100, then one test batch: step 1 of epoch 2 is the 8th call
    with pytest.raises(PyrovaeError, match=r"epoch 2, step 1.*GreaterThan") as err:
        train(NegativeScaleVAE(bad_step=8), data, epochs=2, batch_size=100, quiet=True)
    assert not isinstance(err.value, NonFiniteLossError)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 3"):
        train(NegativeScaleVAE(bad_step=3), data, epochs=2, batch_size=100, quiet=True)


def test_an_estimator_that_guesses_its_plate_nesting_does_so_silently(data, caplog):
    # Pyro logs the guess at INFO through a handler of its own, on stderr
    train(_pair(), data, epochs=1, batch_size=100, elbo="iwae-2", quiet=True)
    assert not [r for r in caplog.records if "max_plate_nesting" in r.getMessage()]


def _linear_data(pair, n_train: int = 170, n_test: int = 80) -> Dataset:
    torch.manual_seed(1)
    x = pair.marginal().sample((n_train + n_test,)).detach()
    return Dataset("linear", Split(x[:n_train], torch.zeros(n_train)), Split(x[n_train:], torch.zeros(n_test)), ())


def test_reported_elbos_are_the_exact_log_likelihoods_at_the_exact_posterior():
    """With the guide at the exact posterior, log p(x, z) - log q(z | x) = log p(x) for every
    z: an epoch's train and test ELBO are then the mean exact log-likelihoods of the splits
    (a learning rate of 1e-12 keeps the parameters where they are)."""
    pair = linear_pair()  # float64, orthogonal columns: its optimal guide is the exact posterior
    data = _linear_data(pair)  # 170 = 2 x 64 + 42: the last batch is short
    run = train(pair, data, epochs=1, batch_size=64, lr=1e-12, quiet=True)
    with torch.no_grad():
        train_ll, test_ll = pair.log_marginal(data.train.x).mean().item(), pair.log_marginal(data.test.x).mean().item()
    assert run.metrics[0]["train_elbo"] == pytest.approx(train_ll, abs=1e-6)
    assert run.metrics[0]["test_elbo"] == pytest.approx(test_ll, abs=1e-6)


def test_a_run_trained_on_a_k_sample_bound_reports_the_elbo():
    """iwae-50 trains on the 50-sample bound, but the reported test ELBO is the ELBO
    (closed form here), several nats below the bound with this imperfect guide."""
    from test_estimators import closed_form_elbo, direct_log_weights

    pair = linear_pair(perturb=True)
    data = _linear_data(pair)
    x = data.test.x
    elbo = closed_form_elbo(pair, x) / len(x)
    log_w = direct_log_weights(pair, x, 50 * 200).reshape(200, 50, len(x))
    bound = (torch.logsumexp(log_w, 1) - math.log(50)).mean().item()
    se = log_w.flatten(0, 1).var(0).mean().sqrt().item() / len(x) ** 0.5  # one draw per image
    run = train(pair, data, epochs=1, batch_size=64, lr=1e-12, elbo="iwae-50", quiet=True)
    assert bound - elbo > 6 * se  # far apart at this guide (about 8 standard errors)
    assert abs(run.metrics[0]["test_elbo"] - elbo) < 4 * se, (run.metrics[0]["test_elbo"], elbo, bound, se)
