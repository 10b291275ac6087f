"""The ``pyrovae`` command end to end on a tiny budget, its errors, and stopping by SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
from PIL import Image
from pyro.infer import Trace_ELBO

from pyrovae.cli import main
from pyrovae.data import evaluation_split, load_dataset
from pyrovae.evaluate import mean_elbo
from pyrovae.compare import Settings, compare
from pyrovae.errors import PyrovaeError
from pyrovae.pairs import build, parse_model_options
from pyrovae.runs import load_checkpoint, load_run, read_metrics

TINY = ["--train-size", "300", "--test-size", "100", "--batch-size", "50", "--quiet"]
SMALL_VAE = ["--arg", "z_dim=4", "--arg", "hidden=[16]"]
EXAMPLES = Path(__file__).parent / "example_pairs.py"


def test_models_lists_pairs_likelihoods_and_estimators(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.split("\n\n")[0].splitlines()]
    assert names == sorted(names) and {"vae", "linear"} <= set(names)
    assert "continuous-bernoulli" in out and "dreg-K" in out


def test_train_eval_sample_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "vae", "--epochs", "2", "--out", str(run), *TINY, *SMALL_VAE]) == 0
    assert "final test ELBO" in capsys.readouterr().out
    metrics = read_metrics(run)
    assert [r["epoch"] for r in metrics] == [1, 2]

    assert main(["eval", str(run)]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["num_examples"] == 100 and result["estimator"] == "trace"
    # the same bound on the same fixed binarization: equal up to single-sample noise
    assert abs(result["test_elbo"] - metrics[-1]["test_elbo"]) < 10
    # and exactly what the trained pair gives there under eval's seed (0) and batch size (100)
    loaded = load_run(run)
    test = evaluation_split(load_dataset(train_size=1, test_size=100).test, True)
    with loaded.param_scope():
        pyro.set_rng_seed(0)
        assert result["test_elbo"] == pytest.approx(mean_elbo(loaded.pair, test, Trace_ELBO(), 100), abs=1e-9)

    png = tmp_path / "samples.png"
    assert main(["sample", str(run), "-n", "9", "--out", str(png)]) == 0
    assert Image.open(png).size == (3 * 30 + 2, 3 * 30 + 2)  # 3 x 3 images of 28 px, 2 px padding


def test_a_users_pair_trains_and_evaluates_from_its_file(tmp_path):
    run = tmp_path / "mine"
    spec = f"{EXAMPLES}:OffsetVAE"
    assert main(["train", spec, "--epochs", "1", "--out", str(run), "--arg", "z_dim=3", *TINY]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == spec and config["model_args"] == {"z_dim": 3}
    assert main(["eval", str(run)]) == 0


def test_the_arguments_that_rebuild_a_pair_are_recorded(tmp_path):
    assert build(f"{EXAMPLES}:OffsetVAE", {"z_dim": 3}).hparams == {"z_dim": 3}  # no hparams of its own
    # a subclass of a bundled pair: its own argument joins the parent's hparams unless left at the default
    assert build(f"{EXAMPLES}:PoisonedVAE", {"poison_at": 7, "z_dim": 3}).hparams["poison_at"] == 7
    assert "poison_at" not in build(f"{EXAMPLES}:PoisonedVAE", {"poison_at": 5}).hparams
    assert "reparameterized" not in build("vae", {"reparameterized": True}).hparams  # older runs still resume
    run = tmp_path / "sub"
    assert main(["train", f"{EXAMPLES}:PoisonedVAE", "--poison-at", "1000", *SMALL_VAE, "--epochs", "1",
                 "--out", str(run), *TINY]) == 0
    assert load_run(run).pair.poison_at == 1000


def test_a_pair_that_importance_sampling_cannot_run_is_refused_before_the_long_parts(tmp_path, data, capsys):
    spec = f"{Path(__file__).parent / 'broken_pairs.py'}:FlattensTheSampleDim"
    run = tmp_path / "flat"
    assert main(["train", spec, "--epochs", "1", "--out", str(run), *TINY]) == 0  # one draw: it trains
    capsys.readouterr()
    assert main(["eval", str(run)]) == 1
    out, err = capsys.readouterr()
    assert "test ELBO" not in out and "sample dimension" in err and "Traceback" not in err
    assert not (run / "eval.json").exists()
    assert main(["eval", str(run), "--iwae-k", "0"]) == 0  # the test ELBO alone needs no draws side by side
    settings = Settings(model=spec, model_args={}, estimators=("trace",), epochs=1, batch_size=100, iwae_k=10, ll_size=50,
                        snr_draws=5, snr_batch=16)
    with pytest.raises(PyrovaeError, match="sample dimension"):
        compare(settings, data, tmp_path / "cmp", quiet=True)
    assert not (tmp_path / "cmp").exists()


def test_a_pair_file_imports_the_modules_beside_it_and_its_import_errors_are_one_line(tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "helpers.py").write_text("from pyrovae.models import VAE as Base\n")
    (folder / "pair.py").write_text("from helpers import Base\n\n\nclass Mine(Base):\n    pass\n")
    (folder / "typo.py").write_text("class Mine(\n")
    (folder / "missing.py").write_text("import no_such_module_here\n")
    assert type(build(f"{folder / 'pair.py'}:Mine", {"z_dim": 3})).__name__ == "Mine"
    for name, words in (("typo", "line 1"), ("missing", "no_such_module_here")):
        assert main(["check", f"{folder / name}.py:Mine"]) == 2
        err = capsys.readouterr().err
        assert f"cannot import {folder / name}.py" in err and words in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, status, message",
    [
        (["train", "resnet"], 2, "valid names: autoencoder, cvae, cvae-baseline, gmvae, linear, vae"),
        (["train", "vae", "--elbo", "iwae-0"], 2, "valid forms: trace, meanfield, graph, enum, stl, iwae-K"),
        (["train", "vae", "--dataset", "cifar10"], 2, "valid names: fashion-mnist, mnist"),
        (["train", "vae", "--device", "tpu"], 2, "unknown device"),
        (["train", "vae", "--device", "cpu:1"], 2, "unsupported device"),
        (["train", "vae", "--arg", "z_dim"], 2, "KEY=VALUE"),
        (["train", "vae", "--arg", "depth=3"], 2, "signature is VAE(z_dim"),
        (["train", "vae", "--arg", "likelihood=poisson"], 2, "unknown likelihood"),
        (["train", "nowhere.py:Pair"], 2, "no such file"),
        (["train", f"{EXAMPLES}:Missing"], 2, "OffsetVAE"),
        (["train", "vae", "--arg", "x_shape=[1,32,32]", *TINY], 1, r"expects examples of shape (1, 32, 32)"),
        (["eval", "."], 1, "no checkpoint"),
    ],
)
def test_bad_input_gets_one_message_and_a_status(argv, status, message, capsys):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert message in err and err.startswith("pyrovae ") and "Traceback" not in err


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_outside_numpys_range_is_refused_by_the_parser(seed, capsys):
    for command in (["train", "vae"], ["sample", "."], ["plot", "."], ["eval", "."]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--seed", seed])
        assert exit_.value.code == 2 and "must lie in 0..4294967295" in capsys.readouterr().err


def test_resume_errors_through_the_command_line(tmp_path, capsys):
    run = str(tmp_path / "r")
    assert main(["train", "vae", "--resume", "--out", run, *TINY]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "vae", "--epochs", "1", "--out", run, *TINY, *SMALL_VAE]) == 0
    assert main(["train", "vae", "--epochs", "2", "--resume", "--out", run, *TINY, "--arg", "z_dim=5"]) == 1
    assert "z_dim" in capsys.readouterr().err
    assert main(["train", "vae", "--epochs", "1", "--out", run, *TINY, *SMALL_VAE]) == 1
    assert "pass --resume" in capsys.readouterr().err


def test_a_file_in_the_way_of_the_run_directory(tmp_path, capsys):
    (tmp_path / "blocker").write_text("")
    assert main(["train", "vae", "--out", str(tmp_path / "blocker" / "run"), *TINY, *SMALL_VAE]) == 1
    assert "cannot write the run directory" in capsys.readouterr().err


def test_unknown_model_in_a_fresh_process_exits_2_without_traceback():
    done = subprocess.run([sys.executable, "-m", "pyrovae", "train", "resnet"], capture_output=True, text=True)
    assert done.returncode == 2 and "valid names: autoencoder, cvae, cvae-baseline, gmvae, linear, vae" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_keeps_the_last_complete_checkpoint_and_resume_continues(tmp_path):
    run = tmp_path / "long"
    argv = ["train", "vae", "--epochs", "100000", "--out", str(run), *TINY, *SMALL_VAE]
    proc = subprocess.Popen([sys.executable, "-m", "pyrovae", *argv], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training never wrote a checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)  # stop it somewhere in a later epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "last complete checkpoint" in err and "--resume" in err and "Traceback" not in err
    epoch = load_checkpoint(run)["epoch"]
    assert epoch >= 1
    resumed = ["train", "vae", "--epochs", str(epoch + 1), "--resume", "--out", str(run), *TINY, *SMALL_VAE]
    assert main(resumed) == 0
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, epoch + 2))


def test_unknown_options_become_the_pairs_constructor_arguments(tmp_path):
    run = tmp_path / "opts"
    assert main(["train", "vae", "--z-dim", "3", "--hidden", "[16]", "--likelihood=gaussian", "--epochs", "1",
                 "--out", str(run), *TINY]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model_args"] == {"z_dim": 3, "hidden": [16], "likelihood": "gaussian", "x_shape": [1, 28, 28]}


def test_pair_option_values_may_be_json_or_python_literals():
    assert parse_model_options(["--reparameterized", "false", "--hidden", "[16, 8]"]) == \
        {"reparameterized": False, "hidden": [16, 8]}
    assert parse_model_options(["--reparameterized", "False", "--hidden=(16, 8)", "--task", "complete"]) == \
        {"reparameterized": False, "hidden": (16, 8), "task": "complete"}


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--depth", "3"], "signature is VAE("),
    (["train", "vae", "--z-dim"], "--z-dim needs a value"),
    (["train", "vae", "stray"], "unexpected argument 'stray'"),
    (["train", "vae", "--hidden", "[0]"], "positive integers"),
    (["train", "vae", "--hidden", "abc"], "positive integers"),
    (["train", "vae", "--reparameterized", "no"], "true or false"),
])
def test_bad_pair_options_are_usage_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_pairs_default_estimator_is_used_when_none_is_named(data):
    from pyrovae import train
    from pyrovae.models import VAE

    pair = VAE(z_dim=2, hidden=[8])
    pair.default_elbo = "meanfield"
    assert train(pair, data, epochs=1, batch_size=200, quiet=True).config["elbo"] == "meanfield"
