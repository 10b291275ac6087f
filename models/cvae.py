"""The conditional VAE (Sohn, Lee and Yan, 2015, "Learning Structured Output
Representation using Deep Conditional Generative Models") as Pyro model/guide pairs.

One pair, :class:`CVAE`, with a condition ``c`` and two tasks:

``task="label"`` (class-conditional generation; ``c`` is the label ``y``)::

    z ~ Normal(0, I)
    x | z, y ~ Bernoulli(decoder(z, onehot(y)))
    guide: z | x, y ~ Normal(recognition(x, onehot(y)))

``task="complete"`` (structured output prediction; ``c`` is the visible part of the
image, 1, 2 or 3 quadrants, and the target is the hidden rest)::

    z | c ~ Normal(prior_net(c))                       (the prior network)
    x_hidden | z, c ~ Bernoulli(generation(z, c))      (only hidden pixels are observed)
    guide: z | x, c ~ Normal(recognition(x))           (the recognition network sees the whole image)

The observation site ``"x"`` is a Bernoulli over the whole image masked to the hidden
pixels, so ``log p(x_hidden | z, c)`` counts hidden pixels only and the ELBO and the
importance-weighted estimate of :func:`pyrovae.evaluate.importance_log_likelihood`
are bounds on, and estimates of, the conditional log-likelihood ``log p(x_hidden | c)``.
The quadrants visible follow Pyro's CVAE tutorial: 1 is the bottom left quadrant, 2
adds the top right one, 3 adds the bottom right one; the top left is always hidden.

:class:`CVAEBaseline` (``"cvae-baseline"``) is the deterministic baseline network of
the paper: ``x_hidden ~ Bernoulli(net(c))``, no latent, an empty guide, trained with the
same masked loss, so its ELBO is its exact conditional log-likelihood.
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.errors import UsageError
from pyrovae.likelihoods import Bernoulli
from pyrovae.nets import Decoder, Encoder
from pyrovae.pairs import register

__all__ = ["CVAE", "CVAEBaseline", "visible_mask", "TASKS"]

TASKS = ("label", "complete")


def visible_mask(quadrants: int, x_shape: Sequence[int] = (1, 28, 28)) -> torch.Tensor:
    """Boolean mask of shape ``x_shape``, true on the ``quadrants`` visible quadrants
    (1: bottom left; 2: and top right; 3: and bottom right)."""
    if quadrants not in (1, 2, 3):
        raise UsageError(f"quadrants must be 1, 2 or 3 (the number of visible quadrants), got {quadrants!r}")
    if len(x_shape) < 2:
        raise UsageError(f"image completion needs images of shape (..., H, W), got x_shape={tuple(x_shape)}")
    mask = torch.zeros(tuple(x_shape), dtype=torch.bool)
    h, w = x_shape[-2] // 2, x_shape[-1] // 2
    mask[..., h:, :w] = True
    if quadrants > 1:
        mask[..., :h, w:] = True
    if quadrants > 2:
        mask[..., h:, w:] = True
    return mask


def _check_hidden(z_dim: int, hidden: Sequence[int]) -> list[int]:
    if not hidden or z_dim < 1 or any(int(h) < 1 for h in hidden):
        raise UsageError(f"needs z_dim >= 1 and at least one positive hidden layer size, got z_dim={z_dim}, hidden={hidden}")
    return [int(h) for h in hidden]


class _Masks(nn.Module):
    """Holds the visible mask as a buffer (moves with the pair, not trained)."""

    def __init__(self, quadrants: int, x_shape: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("visible", visible_mask(quadrants, x_shape), persistent=False)

    def condition(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the hidden pixels set to 0, flattened: the condition ``c``."""
        return (x * self.visible).flatten(-len(self.visible.shape))


@register("cvae")
class CVAE(nn.Module):
    """The conditional VAE: class-conditional generation (task label) or image completion
    from 1, 2 or 3 visible quadrants (task complete).

    :param task: ``"label"`` (the condition is the class label, passed as ``y``) or
        ``"complete"`` (the condition is the visible part of the image).
    :param quadrants: visible quadrants for task complete (1, 2 or 3).
    :param z_dim: number of latent dimensions.
    :param hidden: hidden layer sizes of each network.
    :param num_classes: number of labels for task label.
    :param x_shape: shape of one example.
    """

    def __init__(
        self,
        task: str = "label",
        quadrants: int = 1,
        z_dim: int = 20,
        hidden: Sequence[int] = (400,),
        num_classes: int = 10,
        x_shape: Sequence[int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise UsageError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
        hidden = _check_hidden(z_dim, hidden)
        if num_classes < 1:
            raise UsageError(f"num_classes must be positive, got {num_classes}")
        self.task, self.z_dim, self.num_classes = task, z_dim, num_classes
        self.x_shape = tuple(x_shape)
        self.hparams = {"task": task, "quadrants": quadrants, "z_dim": z_dim, "hidden": hidden,
                        "num_classes": num_classes, "x_shape": list(x_shape)}
        self.likelihood = Bernoulli()
        self.uses_labels = task == "label"
        x_size = int(torch.tensor(self.x_shape).prod())
        if task == "label":
            self.recognition = Encoder(self.x_shape, hidden, z_dim, extra_features=num_classes)
            self.generation = Decoder(z_dim + num_classes, list(reversed(hidden)), self.x_shape)
            self.reconstruct = None  # it would need labels: the plots skip reconstructions
        else:
            self.masks = _Masks(quadrants, self.x_shape)
            self.prior_net = Encoder(self.x_shape, hidden, z_dim)
            self.recognition = Encoder(self.x_shape, hidden, z_dim)
            self.generation = Decoder(z_dim + x_size, list(reversed(hidden)), self.x_shape)
            # unconditional sampling and per-label samples mean nothing here, and a latent decodes only
            # beside the visible part of an input: the plots skip them
            self.sample = None
            self.sample_by_label = None
            self.decode = None

    # -- the condition -------------------------------------------------------------------

    def _onehot(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise UsageError("the CVAE with task 'label' needs the labels y (pass y, or train with labels)")
        y = torch.as_tensor(y, device=x.device)
        if y.shape != x.shape[:1]:
            raise UsageError(f"expected one label per example ({x.shape[0]}), got labels of shape {tuple(y.shape)}")
        if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
            raise UsageError(f"labels must lie in 0..{self.num_classes - 1}, got values from {y.min().item()} to {y.max().item()}")
        return F.one_hot(y.long(), self.num_classes).to(x.dtype)

    def _logits(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Generation network on ``z`` (shape (..., batch, z_dim)) and ``c`` (batch, features)."""
        return self.generation(torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], dim=-1))

    def _observe(self, logits: torch.Tensor, x: torch.Tensor) -> dist.Distribution:
        p = self.likelihood(logits)
        if self.task == "complete":
            p = p.mask(~self.masks.visible)  # only hidden pixels count
        return p.to_event(len(self.x_shape))

    # -- the pair ------------------------------------------------------------------------

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("generation", self.generation)
        if self.task == "label":
            c = self._onehot(x, y)
        else:
            pyro.module("prior_net", self.prior_net)
            c = self.masks.condition(x)
        with pyro.plate("data", x.shape[0]):
            if self.task == "label":
                prior = dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1)
            else:
                prior = dist.Normal(*self.prior_net(x * self.masks.visible)).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self._observe(self._logits(z, c), x), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("recognition", self.recognition)
        with pyro.plate("data", x.shape[0]):
            if self.task == "label":
                loc, scale = self.recognition(x, self._onehot(x, y))
            else:
                loc, scale = self.recognition(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- pictures ------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return self.generation.net[0].weight.device

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:  # replaced by None for task complete
        """``n`` images of random labels (task label), the likelihood's mean."""
        y = torch.randint(self.num_classes, (n,), device=self._device())
        return self.sample_labels(y)

    @torch.no_grad()
    def sample_labels(self, y: torch.Tensor) -> torch.Tensor:
        """One image per label in ``y`` (task label)."""
        if self.task != "label":
            raise UsageError("sampling by label needs a CVAE trained with task 'label'")
        y = torch.as_tensor(y, device=self._device())
        z = torch.randn(y.shape[0], self.z_dim, device=self._device())
        c = self._onehot(z.new_zeros(y.shape[0], *self.x_shape), y)
        return self.likelihood.mean(self._logits(z, c))

    @torch.no_grad()
    def sample_by_label(self, n: int) -> torch.Tensor:
        """``n`` images per label: shape (num_classes, n, *x_shape)."""
        y = torch.arange(self.num_classes, device=self._device()).repeat_interleave(n)
        return self.sample_labels(y).reshape(self.num_classes, n, *self.x_shape)

    @torch.no_grad()
    def complete(self, x: torch.Tensor, n: int = 1) -> torch.Tensor:
        """``n`` completions of each image of ``x`` (task complete): visible pixels kept, hidden
        ones the likelihood's mean given ``z ~ p(z | c)``; shape (n, batch, *x_shape)."""
        if self.task != "complete":
            raise UsageError("complete(x, n) needs a CVAE trained with task 'complete'")
        loc, scale = self.prior_net(x * self.masks.visible)
        z = dist.Normal(loc, scale).sample((n,))
        mean = self.likelihood.mean(self._logits(z, self.masks.condition(x)))
        return torch.where(self.masks.visible, x, mean)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Task complete: one completion from the prior network's mean (replaced by None for task label)."""
        z = self.prior_net(x * self.masks.visible)[0]
        mean = self.likelihood.mean(self._logits(z, self.masks.condition(x)))
        return torch.where(self.masks.visible, x, mean)


@register("cvae-baseline")
class CVAEBaseline(nn.Module):
    """The deterministic baseline for image completion: hidden pixels ~ Bernoulli(net(visible pixels)).

    :param quadrants: visible quadrants (1, 2 or 3).
    :param hidden: hidden layer sizes of the network.
    :param x_shape: shape of one example.
    """

    def __init__(self, quadrants: int = 1, hidden: Sequence[int] = (400,), x_shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__()
        hidden = _check_hidden(1, hidden)
        self.x_shape = tuple(x_shape)
        self.hparams = {"quadrants": quadrants, "hidden": hidden, "x_shape": list(x_shape)}
        self.masks = _Masks(quadrants, self.x_shape)
        x_size = int(torch.tensor(self.x_shape).prod())
        self.net = Decoder(x_size, hidden, self.x_shape)
        self.likelihood = Bernoulli()

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("baseline", self.net)
        with pyro.plate("data", x.shape[0]):
            p = self.likelihood(self.net(self.masks.condition(x))).mask(~self.masks.visible)
            pyro.sample("x", p.to_event(len(self.x_shape)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """No latent variables: the ELBO is the exact conditional log-likelihood."""

    @torch.no_grad()
    def complete(self, x: torch.Tensor, n: int = 1) -> torch.Tensor:
        """The prediction for each image (the same for every one of the ``n``): shape (n, batch, *x_shape)."""
        mean = self.likelihood.mean(self.net(self.masks.condition(x)))
        return torch.where(self.masks.visible, x, mean).expand(n, *x.shape)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction: visible pixels kept, hidden ones the predicted probabilities."""
        return self.complete(x, 1)[0]
