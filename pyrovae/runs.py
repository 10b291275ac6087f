"""The run directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` and images.

Checkpoints are written to a temporary file and renamed over the old one, so a run
stopped at any moment (Ctrl-C, SIGTERM, a crash) leaves the last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyro
import torch
from torch import nn

from pyrovae.errors import PyrovaeError, brief
from pyrovae.pairs import build

__all__ = [
    "CONFIG",
    "METRICS",
    "CHECKPOINT",
    "Run",
    "prepare_dir",
    "append_metrics",
    "read_metrics",
    "save_checkpoint",
    "load_checkpoint",
    "load_pair_state",
    "load_run",
    "check_writable",
    "write_file",
]

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.jsonl", "checkpoint.pt"
# configuration keys a resumed run may change: how long to train, and where
MAY_CHANGE_ON_RESUME = frozenset({"epochs", "device", "data_root", "processes"})  # any number of processes resumes
_MODULE_DIVIDER = "$$$"  # how pyro.module names a network's parameters in the param store


@dataclass
class Run:
    """A trained pair with its configuration and per-epoch metrics.

    ``param_state`` holds Pyro parameters declared with ``pyro.param`` outside any
    network (network parameters live in ``pair``); use :meth:`param_scope` to
    evaluate the pair with them, isolated from Pyro's global parameter store.
    """

    pair: nn.Module
    config: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None
    param_state: dict[str, Any] = field(default_factory=lambda: {"params": {}, "constraints": {}})

    @contextmanager
    def param_scope(self) -> Iterator[dict[str, Any]]:
        """A param store holding only this run's parameters, for the duration of the block."""
        with pyro.get_param_store().scope(self.param_state) as state:
            yield state


def free_param_state(state: dict[str, Any]) -> dict[str, Any]:
    """The part of a param store state that is not a network registered with ``pyro.module``,
    copied as trainable leaves (``set_state`` stores tensors as given, so a detached copy
    would never train again after a resume)."""
    keep = [name for name in state["params"] if _MODULE_DIVIDER not in name]
    return {
        "params": {n: state["params"][n].detach().clone().requires_grad_(True) for n in keep},
        "constraints": {n: state["constraints"][n] for n in keep},
    }


def prepare_dir(out: Path, config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """Create or reopen ``out``; return the checkpoint to resume from, if any.

    Refuses to overwrite a run that has a checkpoint unless ``resume`` is set, to resume
    where there is none, and to resume with a different configuration.
    """
    ckpt_path = out / CHECKPOINT
    if resume:
        if not ckpt_path.exists():
            raise PyrovaeError(f"--resume: no checkpoint in {out}; start the run without --resume")
        ckpt = load_checkpoint(out, map_location=config["device"])
        old = ckpt["config"]
        changed = sorted(k for k in set(old) | set(config) if k not in MAY_CHANGE_ON_RESUME and old.get(k) != config.get(k))
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {config.get(k)!r} now" for k in changed)
            raise PyrovaeError(f"--resume: {out} was trained with a different configuration ({diffs}); "
                               "use the same options or another --out")
        if config["epochs"] < ckpt["epoch"]:
            raise PyrovaeError(f"--resume: the run in {out} has done {ckpt['epoch']} epochs, more than --epochs "
                               f"{config['epochs']}; ask for {ckpt['epoch']} or more")
        return ckpt
    if ckpt_path.exists():
        raise PyrovaeError(f"{out} already holds a run (checkpoint.pt); pass --resume to continue it, "
                           "or choose another --out")
    _refuse_foreign_files(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (out / METRICS).write_text("")
    except OSError as err:
        raise PyrovaeError(f"cannot write the run directory {out}: {err.strerror or err}; choose another --out") from err
    return None


def _refuse_foreign_files(out: Path) -> None:
    """A folder without a checkpoint may hold a run stopped before its first epoch ended,
    whose ``config.json`` and ``metrics.jsonl`` a new run may replace; files of those names
    that pyrovae did not write are the user's, and are not overwritten."""
    for name, ours in ((CONFIG, _is_run_config), (METRICS, _is_metrics)):
        path = out / name
        if path.exists() and not ours(path):
            raise PyrovaeError(f"{path} was not written by pyrovae, and a run would overwrite it; "
                               "choose another --out")


def _is_run_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and {"model", "elbo", "epochs"} <= config.keys()


def _is_metrics(path: Path) -> bool:
    try:
        read_metrics(path.parent)
    except (OSError, UnicodeDecodeError, PyrovaeError):
        return False
    return True


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    try:
        with open(out / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:
        raise PyrovaeError(f"cannot write {out / METRICS}: {err.strerror or err}") from err


def read_metrics(out: Path, last_epoch: int | None = None) -> list[dict[str, Any]]:
    """The metrics records of ``out``, keeping only epochs up to ``last_epoch`` when given."""
    path = out / METRICS
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            record = err
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise PyrovaeError(f"{path}, line {number}, is not an epoch's record ({line[:60]!r}); the checkpoint "
                               "does not depend on it: delete the line, or the file, to go on")
        records.append(record)
    return [r for r in records if last_epoch is None or r["epoch"] <= last_epoch]


def rewrite_metrics(out: Path, records: list[dict[str, Any]]) -> None:
    write_file(out / METRICS, "".join(json.dumps(r) + "\n" for r in records))


def save_checkpoint(out: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``out/checkpoint.pt`` atomically; on failure (a full disk) the
    temporary file is removed and the previous checkpoint kept."""
    path, tmp = out / CHECKPOINT, out / (CHECKPOINT + ".tmp")
    with _writing(tmp, "the previous checkpoint is kept"):
        torch.save(state, tmp)
        os.replace(tmp, path)
    return path


def check_writable(path: Path) -> None:
    """Fail now, before long work, when ``path`` could not be written (a probe file beside it
    is created and removed)."""
    tmp = path.with_name(path.name + ".tmp")
    with _writing(tmp):
        tmp.write_text("")
        tmp.unlink()


def write_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so that a failed write leaves the
    old file as it was."""
    tmp = path.with_name(path.name + ".tmp")
    with _writing(tmp, f"{path.name} is as it was"):
        tmp.write_text(text)
        os.replace(tmp, path)


@contextmanager
def _writing(tmp: Path, kept: str = "") -> Iterator[None]:
    """Turn a failed write into a :class:`PyrovaeError` naming the file, the free space and
    what is kept, with the temporary file ``tmp`` removed."""
    try:
        yield
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        try:
            free = f"{shutil.disk_usage(tmp.parent).free / 2**20:.0f} MiB free there"
        except OSError:
            free = "its folder is unreadable"
        why = err.strerror if isinstance(err, OSError) and err.strerror else brief(err)
        raise PyrovaeError(f"cannot write {tmp.with_suffix('')}: {why} ({free})" + (f"; {kept}" if kept else "")) from err


def load_checkpoint(out: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(out) / CHECKPOINT
    if not path.exists():
        if (Path(out) / CONFIG).exists():
            raise PyrovaeError(f"no checkpoint in {out}: the run stopped before its first epoch ended")
        raise PyrovaeError(f"no checkpoint in {out}: is it a run directory written by `pyrovae train`?")
    try:
        # our own files: they hold optimizer states and Pyro constraint objects, not only tensors
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise PyrovaeError(f"cannot read {path}: {err}") from err
    missing = [k for k in ("epoch", "config", "pair", "params") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise PyrovaeError(f"{path} is not a checkpoint written by `pyrovae train` (it has no {', '.join(missing)})")
    return ckpt


def load_pair_state(pair: nn.Module, state: dict[str, Any], out: Path) -> None:
    """Load a checkpoint's ``pair`` state into ``pair``; a :class:`PyrovaeError` naming the
    missing and unexpected entries when they do not fit (a checkpoint written by another
    version of the pair)."""
    try:
        pair.load_state_dict(state)
    except RuntimeError as err:
        mine, theirs = set(pair.state_dict()), set(state)
        missing, unexpected = sorted(mine - theirs), sorted(theirs - mine)
        what = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                           f"unexpected {', '.join(unexpected)}" if unexpected else "") if part)
        raise PyrovaeError(f"the checkpoint in {out} does not fit {type(pair).__name__} as it is now "
                           f"({what or err}); it was written by another version of the pair: train it "
                           "again, or load it with the pyrovae that wrote it") from err


def load_run(out: str | Path, device: str | torch.device = "cpu", pair: nn.Module | None = None) -> Run:
    """Rebuild the trained pair of a run directory from its last checkpoint.

    :param pair: a pair to load the weights into, built as the run's was; by default the one
        the run's ``config.json`` names (a class defined in the training script or notebook
        cannot be named so: pass the pair).
    """
    out = Path(out)
    ckpt = load_checkpoint(out, map_location=device)
    config = ckpt["config"]
    pair = pair if pair is not None else build(config["model"], config["model_args"])
    load_pair_state(pair, ckpt["pair"], out)
    pair.to(device).eval()
    return Run(pair, config, read_metrics(out, ckpt["epoch"]), out, ckpt["params"])
