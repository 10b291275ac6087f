"""Errors a user can act on. The CLI prints their message and exits non-zero."""

from __future__ import annotations

__all__ = ["PyrovaeError", "UsageError", "NonFiniteLossError", "brief"]


class PyrovaeError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""

    exit_code: int = 1


class UsageError(PyrovaeError):
    """An unknown name or a malformed option (exit status 2, like argparse)."""

    exit_code = 2


class NonFiniteLossError(PyrovaeError):
    """Training produced a NaN or infinite loss; the last complete checkpoint is kept."""

    def __init__(self, epoch: int, step: int, loss: float, checkpoint: str | None) -> None:
        kept = (
            f"the last complete checkpoint ({checkpoint}) is kept"
            if checkpoint
            else "no checkpoint was written"
        )
        super().__init__(
            f"the loss became {loss} at epoch {epoch}, step {step}; training stopped and {kept}. "
            "Start a new run (another --out) with a smaller learning rate (--lr) or another likelihood."
        )
        self.epoch, self.step, self.loss = epoch, step, loss


def brief(err: BaseException) -> str:
    """``err``'s type and first line (two when the first ends in a colon), shortened: Pyro
    appends a table of the trace's shapes to errors raised inside a traced program."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or ["(no message)"]
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return f"{type(err).__name__}: {text if len(text) < 200 else text[:197] + '...'}"
