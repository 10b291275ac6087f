"""``pyrovae check``: each deliberately broken pair is caught with the right finding, the
bundled pairs come out clean, the command's exit status, and the README's example pair."""

from __future__ import annotations

import re
from pathlib import Path

import pyro
import pytest
import torch

import broken_pairs as broken
from example_pairs import BatchNormVAE
from pyrovae.check import check_pair
from pyrovae.cli import main
from pyrovae.data import binarize
from pyrovae.pairs import build, bundled

BROKEN = Path(__file__).parent / "broken_pairs.py"
README = Path(__file__).parent.parent / "README.md"


@pytest.fixture(scope="module")
def batch(data):
    """8 training images, binarized (the broken pairs have a Bernoulli likelihood), and their labels."""
    return binarize(data.train.x[:8], torch.Generator().manual_seed(0)), data.train.y[:8]


@pytest.mark.parametrize("cls, kind, site, words", [
    (broken.Unregistered, "unregistered-network", "decoder", "pyro.module('decoder', self.decoder)"),
    (broken.Misnamed, "site-mismatch", "q_z", "model() has no site"),
    (broken.WrongLatentSize, "site-mismatch", "z", "event shape (3,)"),
    (broken.OutsidePlate, "outside-plate", "z", "pyro.plate('data'"),
    (broken.BatchInEvent, "batch-in-event", "z", "event shape (8, 4)"),
    (broken.MissingToEvent, "plate-shape", "z", ".to_event"),
    (broken.Discrete, "not-reparameterized", "c", "meanfield, stl, iwae-K, dreg-K, renyi-A-K refuse"),
    (broken.WrongObservation, "obs-shape", "x", "gets shape (8, 8)"),
    (broken.NoObservation, "no-observation", "x", "obs=x"),
    (broken.FreeParam, "param-leak", "offset", "second instance"),
    (broken.SharedDecoder, "param-leak", "shared", "shared by every instance"),
    (broken.Crashing, "trace-error", "model", "mat1 and mat2"),
    (broken.FlattensTheSampleDim, "sample-dim", "model/guide", "leading sample dimension"),
    (broken.ChangesInput, "changes-input", "guide", "x.mul_(0.5)"),
    (broken.PlateOfOne, "plate-size", "z", "has size 1, but the batch holds 8"),
    (broken.ScaledGuideOnly, "scale-mismatch", "z", "by 1 and guide() by 10"),
])
def test_each_broken_pair_is_caught_with_its_message(batch, cls, kind, site, words):
    report = check_pair(cls, batch[0])
    assert not report.ok
    assert {f.kind for f in report.findings} == {kind} and (kind, site) in [(f.kind, f.site) for f in report.findings]
    finding = next(f for f in report.findings if (f.kind, f.site) == (kind, site))
    assert words in finding.message + " " + finding.fix and finding.fix
    assert f"[{kind}] {site}:" in report.format()


def test_a_correct_pair_and_an_instance_work_too(batch):
    assert check_pair(broken.Small, batch[0]).ok
    assert check_pair(lambda: BatchNormVAE(z_dim=3, hidden=[16]), batch[0]).ok  # probed in eval mode, as eval runs it
    report = check_pair(broken.FreeParam(), batch[0])  # the leak check's second instance is a deep copy
    assert [f.kind for f in report.findings] == ["param-leak"]


SMALL = {"z_dim": 3, "hidden": [16]}


@pytest.mark.parametrize("spec, args", [
    ("vae", SMALL),
    ("vae", {**SMALL, "likelihood": "gaussian-learned"}),
    ("linear", {"z_dim": 3}),
    ("cvae", SMALL),
    ("cvae", {**SMALL, "task": "complete", "quadrants": 2}),
    ("cvae-baseline", {"hidden": [16]}),
    ("gmvae", {**SMALL, "k": 3, "init_codes": 3}),  # pretraining: the plain VAE
    ("gmvae", {**SMALL, "k": 3, "init_codes": 3, "pretrain_examples": 0}),  # the mixture, y enumerated
    ("autoencoder", SMALL),  # an improper prior: the model runs replayed on the guide's codes
])
def test_the_bundled_pairs_are_clean(data, spec, args):
    if spec not in bundled():
        pytest.skip(f"no bundled pair {spec!r}")
    pair = build(spec, args)
    x = data.train.x[:8]
    x = binarize(x, torch.Generator().manual_seed(0)) if getattr(getattr(pair, "likelihood", None), "binarize", False) else x
    report = check_pair(lambda: build(spec, args), x, data.train.y[:8] if getattr(pair, "uses_labels", False) else None)
    assert report.ok, report.format()
    assert sum(n.size for n in report.networks) == sum(p.numel() for p in pair.parameters())
    assert any(s.name == "x" and s.observed and s.batch_shape == (8,) for s in report.sites)
    assert report.estimators["trace"] is None and "sites (batch | event shape)" in report.format()
    if spec == "gmvae" and args.get("pretrain_examples") == 0:
        assert report.estimators["enum"] is None and report.estimators["stl"] is not None
        assert any(s.name == "y" and s.enumerated for s in report.sites)
    elif spec not in ("cvae-baseline", "autoencoder"):
        assert report.estimators["stl"] is None and report.estimators["dreg-K"] is None


def test_the_check_leaves_the_param_store_and_the_random_state_alone(batch):
    pyro.param("mine", torch.ones(2))
    state = torch.get_rng_state()
    check_pair(broken.FreeParam, batch[0])
    assert list(pyro.get_param_store().keys()) == ["mine"]
    assert torch.equal(torch.get_rng_state(), state)


def test_the_command_exits_0_for_a_clean_pair_and_1_for_a_broken_one(capsys):
    assert main(["check", "vae"]) == 0
    out = capsys.readouterr().out
    assert "vae: no problems found" in out and "pyro.module 'encoder'" in out and "stl" in out
    assert main(["check", f"{BROKEN}:Unregistered", "--batch", "5"]) == 1
    out = capsys.readouterr().out
    assert "1 problem on a batch of 5" in out and "[unregistered-network] decoder" in out
    assert main(["check", "cvae", "--task", "complete", "--z-dim", "3", "--hidden", "[16]"]) == 0
    assert main(["check", "gmvae", "--arg", "pretrain_examples=0"]) == 0
    capsys.readouterr()
    assert main(["check", f"{BROKEN}:GreyBernoulli"]) == 1  # no likelihood attribute: grey images reach a Bernoulli
    out = capsys.readouterr().out
    assert "[trace-error] x:" in out and "within the support" in out and "likelihood = pyrovae.likelihoods.Bernoulli()" in out


@pytest.mark.parametrize("argv, status, message", [
    (["check", "nope"], 2, "unknown model"),
    (["check", "vae", "--batch", "1"], 2, "--batch must be 2 or more"),
    (["check", "vae", "--arg", "x_shape=[784]"], 1, "x_shape=[1, 28, 28]"),
])
def test_bad_input_to_the_check(argv, status, message, capsys):
    assert main(argv) == status
    assert message in capsys.readouterr().err


def _readme_pair() -> str | None:
    """The README's example pair: the fenced Python block whose first line is ``# my_vae.py``."""
    match = re.search(r"```python\n(# my_vae\.py\n.*?)```", README.read_text(), re.S)
    return match.group(1) if match else None


def test_the_readme_example_pair_checks_clean_trains_evaluates_and_compares(tmp_path, capsys):
    pair_code = _readme_pair()
    assert pair_code is not None, "README.md lost its example pair, the Python block starting '# my_vae.py'"
    path = tmp_path / "my_vae.py"
    path.write_text(pair_code)
    assert main(["check", f"{path}:LaplaceVAE"]) == 0, capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", f"{path}:LaplaceVAE", "--epochs", "1", "--train-size", "256", "--test-size", "64",
                 "--batch-size", "64", "--out", str(run), "--quiet"]) == 0
    assert "final test ELBO" in capsys.readouterr().out and (run / "checkpoint.pt").exists()
    assert main(["eval", str(run), "--iwae-k", "8", "--test-size", "16"]) == 0
    assert "log-likelihood (K=8)" in capsys.readouterr().out and (run / "eval.json").exists()
    cmp = tmp_path / "cmp"
    assert main(["compare", f"{path}:LaplaceVAE", "--elbos", "trace,stl", "--seeds", "1", "--epochs", "1",
                 "--train-size", "256", "--test-size", "64", "--batch-size", "64", "--iwae-k", "8",
                 "--ll-size", "16", "--snr-draws", "4", "--snr-batch", "8", "--out", str(cmp), "--quiet"]) == 0
    assert {"trace", "stl"} <= {row.split("|")[1].strip() for row in capsys.readouterr().out.splitlines()
                                if row.startswith("|")}
