"""Python cost of one SVI step: pyrovae's step against the hand-written one on networks too
small to cost anything.

Question: how much of ``epoch_time.py``'s gap between pyrovae and the plain loop is Pyro's
per-step bookkeeping (tracing the guide, replaying the model, collecting parameters)
rather than tensor work? Every loop runs the VAE pair's own networks, shrunk to
``z_dim = 2`` and one hidden layer of 4 units, on a batch of 2 images, with one torch
thread, so that what is left is Python:

- ``pyrovae``: ``SVI(pair.model, pair.guide, JointAdam, Trace_ELBO()).step(x)``, what the
  trainer runs each step with the default estimator;
- ``pyrovae jit-trace``: the same with ``JitTrace_ELBO`` (the ``jit-trace`` estimator), whose
  compiled loss replays a traced graph instead of running the model and guide through
  Pyro's handlers;
- ``plain``: ``benchmarks/plain_vae.py``'s single-sample ELBO, ``backward`` and a fused
  Adam step over the same parameters.

Two more split the pyrovae step's excess over the plain one:

- ``Trace_ELBO alone``: ``Trace_ELBO().loss_and_grads`` (trace the guide, replay the model,
  ``backward``) and the plain loop's fused Adam step, without ``SVI.step`` around it; what
  ``pyrovae`` adds to this is ``SVI.step``'s own work (capturing the parameters through a
  trace, the optimizer wrapper, zeroing the gradients);
- ``pair through handlers``: the first half of ``Trace_ELBO``'s work, running the guide
  under ``poutine.trace`` and the model under ``poutine.trace(poutine.replay(...))`` (its
  ``pyro.module``, ``pyro.plate`` and ``pyro.sample`` calls and its networks), with no
  log-density, loss or ``backward``; ``plain forward`` is the same tensor work by hand (the
  encoder, one reparameterized draw, the decoder), so their difference is what running the
  pair as a Pyro program costs. The rest of the excess is in turning the traces into a loss
  (log-densities site by site, the surrogate loss, Pyro's checks) and its ``backward``.

All run with distribution argument checks off (Pyro's and torch's), as the trainer runs
every step but an epoch's first.

The loops take turns, ``--reps`` blocks of ``--steps`` steps each; prints the median
milliseconds per step of each, how much each Pyro step exceeds the hand-written one, and
the three shares of the ``pyrovae`` step's excess.

Run from the repository root::

    python benchmarks/step_overhead.py [--reps 7] [--steps 500]

Writes benchmarks/results/step_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from plain_vae import elbo  # noqa: E402
from pyrovae.estimators import make_estimator  # noqa: E402
from pyrovae.models import VAE  # noqa: E402
from pyrovae.optim import JointAdam  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def steps(pair: VAE, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    """One step of each loop on ``pair``'s networks (each with its own optimizer state)."""
    pyro.clear_param_store()
    svi = SVI(pair.model, pair.guide, JointAdam(1e-3), make_estimator("trace"))
    jit_svi = SVI(pair.model, pair.guide, JointAdam(1e-3), make_estimator("jit-trace"))
    params = [*pair.encoder.parameters(), *pair.decoder.parameters()]
    optim = torch.optim.Adam(params, lr=1e-3, fused=True)

    def pyrovae_step() -> None:
        svi.step(x)

    trace_elbo = make_estimator("trace")
    elbo_optim = torch.optim.Adam(params, lr=1e-3, fused=True)

    def elbo_step() -> None:
        loss = trace_elbo.loss_and_grads(pair.model, pair.guide, x)
        elbo_optim.step()
        elbo_optim.zero_grad()
        float(loss)

    def through_handlers() -> None:
        guide_trace = poutine.trace(pair.guide).get_trace(x)
        poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x)

    def plain_step() -> None:
        loss = -elbo(pair.encoder, pair.decoder, x).sum()
        optim.zero_grad()
        loss.backward()
        optim.step()
        loss.item()

    def plain_forward() -> None:  # what the model and guide compute: the networks and a reparameterized draw
        loc, scale = pair.encoder(x)
        pair.decoder(loc + scale * torch.randn_like(loc))

    return {"pyrovae": pyrovae_step, "pyrovae jit-trace": lambda: jit_svi.step(x), "plain": plain_step,
            "Trace_ELBO alone": elbo_step, "pair through handlers": through_handlers, "plain forward": plain_forward}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7, help="timed blocks per loop, taken in turn")
    p.add_argument("--steps", type=int, default=500, help="steps per block")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    # argument checks off for both (Pyro's switch also sets torch.distributions'), as the trainer
    # runs every step but an epoch's first: the difference left is Pyro's bookkeeping
    pyro.enable_validation(False)
    torch.manual_seed(0)
    pair = VAE(z_dim=2, hidden=[4])
    x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3))
    loops = steps(pair, x)
    for step in loops.values():  # warm-up: optimizer state, first-call costs
        for _ in range(50):
            step()
    ms: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.reps):
        for name, step in loops.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            ms[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    median = {name: statistics.median(v) for name, v in ms.items()}
    extra = {name: median[name] - median["plain"] for name in ("pyrovae", "pyrovae jit-trace")}
    handlers = median["pair through handlers"] - median["plain forward"]
    split = {"SVI.step's own work": median["pyrovae"] - median["Trace_ELBO alone"],
             "running the pair through Pyro's handlers": handlers,
             "the rest of Trace_ELBO (log-densities from the traces, the loss)":
                 median["Trace_ELBO alone"] - median["plain"] - handlers}
    lines = ["| step | ms per step (median) | min-max |", "|---|---|---|"]
    lines += [f"| {name} | {median[name]:.2f} | {min(v):.2f}-{max(v):.2f} |" for name, v in ms.items()]
    summary = "; ".join(f"{name} minus plain: {ms_:.2f} ms per step ({median[name] / median['plain']:.1f}x)"
                        for name, ms_ in extra.items())
    summary += ". Of pyrovae's excess: " + "; ".join(f"{what} {ms_:.2f} ms" for what, ms_ in split.items())
    print("\n".join(lines) + "\n\n" + summary)
    info = describe()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_overhead.json").write_text(json.dumps(
        {**info, "config": {"reps": args.reps, "steps": args.steps, "z_dim": 2, "hidden": [4], "batch": 2,
                            "torch_threads": 1}, "ms_per_step": ms, "median": median, "extra_ms": extra,
         "split_ms": split},
        indent=2) + "\n")
    (RESULTS / "step_overhead.md").write_text(
        f"# Python cost of one SVI step\n\nCommand: `{info['command']}`  \nDate: {info['date']}; torch "
        f"{info['versions']['torch']}, pyro {info['versions']['pyro']}; {info['machine']['cpu']}, 1 torch thread  \n"
        f"The VAE pair with z_dim 2, one hidden layer of 4 units, batch of 2 images; {args.reps} blocks of "
        f"{args.steps} steps per loop, taken in turn.\n\n" + "\n".join(lines) + f"\n\n{summary}.\n")
    print(f"wrote {RESULTS / 'step_overhead.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
