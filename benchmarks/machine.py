"""What the speed benchmarks share: the machine's description, its matmul rate, and the
matmul work of an MLP VAE, from which the "matmul floor" of an epoch follows.

The floor is the time the matrix multiplications alone would take at the rate this
machine reaches on one large float32 matmul; elementwise work, the optimizer and Python
come on top, so no real loop reaches it.
"""

from __future__ import annotations

import os
import platform
import resource
import shlex
import sys
import time
from datetime import datetime, timezone
from typing import Any, Sequence

import pyro
import torch

import pyrovae

__all__ = ["describe", "matmul_gflops", "mlp_macs", "vae_epoch_flops", "vae_epoch_matmul_seconds", "rss_mib",
           "peak_rss_mib", "reset_peak_rss"]


def describe() -> dict[str, Any]:
    """Date, command, machine and versions, for a results file."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        cpu = platform.processor()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]),
        "machine": {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(),
                    "gpu": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or None},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
                     "pyrovae": pyrovae.__version__},
    }


def matmul_gflops(device: torch.device | str = "cpu", n: int = 2048, windows: int = 6, seconds: float = 0.5) -> float:
    """Float32 GFLOP/s of an ``n x n`` by ``n x n`` matmul on ``device`` with the current thread
    count: the best of ``windows`` timed windows, so that a moment of other load does not count."""
    device = torch.device(device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best = 0.0
    for _ in range(windows):
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            count += 1
            sync()
        best = max(best, 2 * n**3 * count / (time.perf_counter() - t0) / 1e9)
    return best


def mlp_macs(sizes: Sequence[int]) -> list[int]:
    """Multiply-accumulates per example of each linear layer of an MLP with these sizes."""
    return [a * b for a, b in zip(sizes[:-1], sizes[1:])]


def vae_epoch_flops(x_dim: int, hidden: Sequence[int], z_dim: int, n_train: int, n_test: int,
                    k_train: int = 1) -> dict[str, float]:
    """Matmul FLOPs of one training epoch (forward and backward, ``k_train`` samples of z
    per example) and of one test-ELBO pass for the MLP VAE.

    Forward is 2 FLOPs per multiply-accumulate; backward is 2 for the weight gradients of
    every layer plus 2 for the input gradients of every layer but the encoder's first (the
    data needs no gradient). The decoder runs once per sample of z.
    """
    encoder = mlp_macs([x_dim, *hidden, 2 * z_dim])
    decoder = mlp_macs([z_dim, *reversed(hidden), x_dim])
    forward = sum(encoder) + k_train * sum(decoder)
    train = 2 * forward + 2 * forward + 2 * (forward - encoder[0])
    test = 2 * (sum(encoder) + sum(decoder))
    return {"train": float(train * n_train), "test": float(test * n_test)}


def vae_epoch_matmul_seconds(x_dim: int, hidden: Sequence[int], z_dim: int, n_train: int, n_test: int,
                             batch_size: int, test_batch_size: int, device: torch.device | str = "cpu",
                             reps: int = 50) -> float:
    """Seconds the matmuls of one epoch take when run alone at the shapes the MLP VAE gives
    them (the same products as :func:`vae_epoch_flops` counts, batch by batch): the floor a
    loop at this batch size can reach, as small products run below the large-matmul rate."""
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    layers = list(zip([x_dim, *hidden], [*hidden, 2 * z_dim])) + list(zip([z_dim, *reversed(hidden)],
                                                                           [*reversed(hidden), x_dim]))

    def per_batch(rows: int, backward: bool) -> float:
        ins = [torch.randn(rows, a, device=device) for a, _ in layers]
        weights = [torch.randn(b, a, device=device) for a, b in layers]
        grads = [torch.randn(rows, b, device=device) for _, b in layers]

        def once() -> None:
            for i, (x, w, g) in enumerate(zip(ins, weights, grads)):
                x @ w.T
                if backward:
                    g.T @ x
                    if i:  # the data needs no gradient
                        g @ w
        for _ in range(5):
            once()
        sync()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                once()
            sync()
            best = min(best, (time.perf_counter() - t0) / reps)
        return best

    return per_batch(batch_size, True) * n_train / batch_size + per_batch(test_batch_size, False) * n_test / test_batch_size


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
    except (OSError, StopIteration):
        return None


def rss_mib() -> float | None:
    """Resident memory of this process now, in MiB (None where /proc is not there)."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak resident memory of this process, in MiB: since the last :func:`reset_peak_rss`
    where Linux allows the reset, else since the start."""
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Start the peak of :func:`peak_rss_mib` again from the current resident memory (Linux
    4.0 and later); False where the system does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
