"""The run directory when something goes wrong: damaged or foreign files, failed writes, a run
stopped before its first checkpoint, and what each command then says."""

from __future__ import annotations

import shutil

import pytest
import torch

from pyrovae import cli, runs
from pyrovae.cli import main
from pyrovae.errors import PyrovaeError
from pyrovae.runs import CHECKPOINT, METRICS, check_writable, load_checkpoint, save_checkpoint

TINY = ["--train-size", "300", "--test-size", "100", "--batch-size", "50", "--quiet",
        "--arg", "z_dim=4", "--arg", "hidden=[16]"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 2 epochs, copied by each test that damages it."""
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", "vae", "--epochs", "2", "--out", str(run), *TINY]) == 0
    return run


def _copy(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "run")


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.startswith("pyrovae ") and "Traceback" not in err and all(w in err for w in words), err


@pytest.mark.parametrize("damage", ['{"epoch": 1, "test_', "[1, 2]", '{"no_epoch": 1}'])
def test_a_damaged_metrics_line_is_named_and_the_checkpoint_still_serves(finished, tmp_path, capsys, damage):
    run = _copy(finished, tmp_path)
    lines = (run / METRICS).read_text().splitlines()
    (run / METRICS).write_text(lines[0] + "\n" + damage + "\n")
    for argv in (["eval", str(run), "--iwae-k", "0"], ["train", "vae", "--epochs", "2", "--resume", "--out", str(run), *TINY]):
        assert main(argv) == 1
        _one_line_error(capsys, f"{METRICS}, line 2", "delete the line")
    (run / METRICS).unlink()  # as the message says: without the file, the checkpoint is enough
    assert main(["train", "vae", "--epochs", "2", "--resume", "--out", str(run), *TINY]) == 0
    assert "no epoch's record" in capsys.readouterr().out
    assert main(["eval", str(run), "--iwae-k", "0"]) == 0


def test_a_checkpoint_pyrovae_did_not_write_is_refused(tmp_path, capsys):
    (tmp_path / "foreign").mkdir()
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, tmp_path / "foreign" / CHECKPOINT)
    with pytest.raises(PyrovaeError, match="not a checkpoint written by `pyrovae train` .*epoch, config, pair, params"):
        load_checkpoint(tmp_path / "foreign")
    assert main(["eval", str(tmp_path / "foreign")]) == 1
    _one_line_error(capsys, "not a checkpoint")


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_leaves_no_temporary_file(finished, tmp_path, monkeypatch):
    run = _copy(finished, tmp_path)
    before = (run / CHECKPOINT).read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 320640 vs 320528")

    monkeypatch.setattr(runs.torch, "save", full_disk)
    with pytest.raises(PyrovaeError, match=r"cannot write .*checkpoint.pt: .*unexpected pos.* MiB free there\); the "
                                           "previous checkpoint is kept"):
        save_checkpoint(run, {"epoch": 3})
    assert (run / CHECKPOINT).read_bytes() == before and not (run / (CHECKPOINT + ".tmp")).exists()


def test_a_folder_that_cannot_be_written_is_found_before_the_work(tmp_path):
    with pytest.raises(PyrovaeError, match="cannot write"):
        check_writable(tmp_path / "no such folder" / "eval.json")
    check_writable(tmp_path / "eval.json")
    assert not list(tmp_path.iterdir())  # the probe leaves nothing


def test_resuming_with_fewer_epochs_than_done_is_refused_and_changes_nothing(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    config = (run / "config.json").read_text()
    assert main(["train", "vae", "--epochs", "1", "--resume", "--out", str(run), *TINY]) == 1
    _one_line_error(capsys, "has done 2 epochs, more than --epochs 1")
    assert (run / "config.json").read_text() == config


def test_a_run_stopped_before_its_first_checkpoint_says_to_start_again(tmp_path, monkeypatch, capsys):
    def stopped_at_once(pair, data, *, out, **kwargs):
        runs.prepare_dir(out, {"model": "vae", "elbo": "trace", "epochs": 1}, resume=False)  # train's first write
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", stopped_at_once)
    run = tmp_path / "early"
    assert main(["train", "vae", "--out", str(run), *TINY]) == 130
    err = capsys.readouterr().err
    assert err.startswith("pyrovae train: stopped before the first epoch ended") and "without --resume" in err
    assert "error" not in err
    assert main(["eval", str(run)]) == 1
    _one_line_error(capsys, "the run stopped before its first epoch ended")


def test_a_run_stopped_before_its_first_checkpoint_is_started_again_in_its_folder(tmp_path):
    run = tmp_path / "early"
    runs.prepare_dir(run, {"model": "vae", "elbo": "trace", "epochs": 3}, resume=False)
    (run / METRICS).write_text('{"epoch": 1, "test_elbo": -500.0}\n')  # stopped between metrics and checkpoint
    assert main(["train", "vae", "--epochs", "1", "--out", str(run), *TINY]) == 0
    assert [r["epoch"] for r in runs.read_metrics(run)] == [1] and (run / CHECKPOINT).exists()


@pytest.mark.parametrize("name, text", [("config.json", '{"learning_rate": 0.1}\n'), ("config.json", "lr: 0.1\n"),
                                        ("metrics.jsonl", "step,loss\n1,0.5\n")])
def test_files_pyrovae_did_not_write_are_not_overwritten(tmp_path, capsys, name, text):
    (tmp_path / name).write_text(text)
    assert main(["train", "vae", "--epochs", "1", "--out", str(tmp_path), *TINY]) == 1
    _one_line_error(capsys, f"{tmp_path / name} was not written by pyrovae", "choose another --out")
    assert (tmp_path / name).read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
