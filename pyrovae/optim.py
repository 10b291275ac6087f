"""Adam for all of a run's parameters at once, as a drop-in ``pyro.optim`` optimizer.

``pyro.optim.Adam`` builds one ``torch.optim.Adam`` per parameter tensor, so each SVI step
pays the optimizer's Python overhead once per tensor (eight times for an MLP VAE), and
the updates cannot be fused. :class:`JointAdam` keeps one ``torch.optim.Adam`` with every
parameter SVI has seen, using PyTorch's fused kernel where the parameters allow it. The
update of each coordinate is the same as ``pyro.optim.Adam``'s (Adam is per-coordinate
and each tensor keeps its own step count), and :meth:`get_state` / :meth:`set_state`
read and write the same per-parameter format, so checkpoints move between the two.
"""

from __future__ import annotations

from typing import Any, Iterable

import pyro
import torch
from pyro.optim import PyroOptim

__all__ = ["JointAdam"]


def _fusable(param: torch.Tensor) -> bool:
    return param.device.type in ("cpu", "cuda") and param.dtype in (torch.float16, torch.bfloat16, torch.float32,
                                                                     torch.float64)


class JointAdam(PyroOptim):
    """One ``torch.optim.Adam`` over every parameter passed to :meth:`__call__`.

    :param lr: learning rate; ``adam_args`` are passed to ``torch.optim.Adam`` (betas, eps, ...).
    """

    def __init__(self, lr: float = 1e-3, **adam_args: Any) -> None:
        super().__init__(torch.optim.Adam, {"lr": lr, **adam_args})
        self.adam_args = {"lr": lr, **adam_args}
        self.optimizer: torch.optim.Adam | None = None
        self.fused: bool | None = None

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        """One Adam step for ``params`` (new ones join the optimizer, with any state
        waiting for them from :meth:`set_state`)."""
        params = list(params)
        new = [p for p in params if p not in self.optim_objs]
        if new:
            self._add(new)
        if self.optimizer is None:
            return
        everything = self.optimizer.param_groups[0]["params"]
        if len(everything) != len(params):
            # like pyro.optim.Adam, step only this step's parameters: Adam skips a tensor without grad
            stepped = set(params)
            for p in everything:
                if p not in stepped:
                    p.grad = None
        self.optimizer.step()
        # like torch's zero_grad(): the next backward pass then writes the gradients instead of
        # adding them to the zero tensors that SVI's zero_grads would put there
        self.optimizer.zero_grad(set_to_none=True)

    def _add(self, params: list[torch.Tensor]) -> None:
        # torch.optim raises on a parameter listed twice, and a fused step needs one device and dtype
        if self.optimizer is None:
            self.fused = all(_fusable(p) for p in params) and len({(p.device, p.dtype) for p in params}) == 1
            self.optimizer = torch.optim.Adam(params, **self.adam_args, fused=self.fused or None)
        else:
            known = self.optimizer.param_groups[0]["params"][0]
            if self.fused and any(not _fusable(p) or (p.device, p.dtype) != (known.device, known.dtype) for p in params):
                self.optimizer = self._rebuilt(fused=False)
                self.fused = False
            self.optimizer.param_groups[0]["params"].extend(params)
        store = pyro.get_param_store()
        for p in params:
            self.optim_objs[p] = self.optimizer
            self.grad_clip[p] = None
            state = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
            if state is not None:
                self._load_one(p, state)

    def _rebuilt(self, fused: bool) -> torch.optim.Adam:
        old = self.optimizer
        assert old is not None
        params = list(old.param_groups[0]["params"])
        optimizer = torch.optim.Adam(params, **self.adam_args, fused=fused or None)
        for p in params:
            if p in old.state:
                optimizer.state[p] = old.state[p]
                if torch.is_tensor(optimizer.state[p].get("step")):
                    optimizer.state[p]["step"] = optimizer.state[p]["step"].to("cpu" if not fused else p.device)
        return optimizer

    def _load_one(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        """Load one parameter's state written by ``pyro.optim.Adam`` or :meth:`get_state`."""
        per_param = state.get("state", {})
        if per_param:
            (entry,) = per_param.values()
            self.optimizer.state[param] = {
                k: v.to(param.device) if torch.is_tensor(v) and k != "step" else v for k, v in entry.items()
            }
            step = self.optimizer.state[param].get("step")
            if torch.is_tensor(step):
                # fused Adam keeps the step on the parameter's device, the plain one on the CPU
                self.optimizer.state[param]["step"] = step.to(param.device if self.fused else "cpu",
                                                              dtype=torch.float32)

    def get_state(self) -> dict[str, Any]:
        """``{param name: state dict of a one-parameter Adam}``, as ``pyro.optim.Adam`` writes it."""
        if self.optimizer is None:
            return {}
        store = pyro.get_param_store()
        group = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
        out = {}
        for p in self.optimizer.param_groups[0]["params"]:
            entry = self.optimizer.state.get(p)
            out[store.param_name(p)] = {"state": {0: dict(entry)} if entry else {},
                                        "param_groups": [{**group, "params": [0]}]}
        return out
