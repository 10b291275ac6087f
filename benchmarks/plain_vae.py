"""The reference the speed and quality benchmarks compare with: the default VAE trained by a
hand-written PyTorch loop, with no Pyro in it.

Same networks as ``pyrovae.models.VAE()`` (built from :mod:`pyrovae.nets`, so the same
initial weights under the same seed), the same single-sample estimator as ``Trace_ELBO``
(``log p(x|z) + log p(z) - log q(z|x)`` at one reparameterized draw, summed over the
batch), the same shuffles and dynamic binarizations per epoch as :func:`pyrovae.train`
(its per-epoch generators), and ``torch.optim.Adam`` over all parameters. An epoch's
seconds cover training and the test-ELBO pass, as in pyrovae's metrics.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributions import Normal

from pyrovae.data import Dataset, Split, batches, fixed_binarization
from pyrovae.models import VAE
from pyrovae.nets import Decoder, Encoder
from pyrovae.train import epoch_generator

__all__ = ["PlainVAE", "elbo"]

X_SHAPE, HIDDEN, Z_DIM = (1, 28, 28), [400], 50
TEST_BATCH_SIZE = 1000  # pyrovae.train evaluates in batches of max(batch_size, 1000)


def elbo(encoder: Encoder, decoder: Decoder, x: torch.Tensor) -> torch.Tensor:
    """Single-sample ELBO per image: log p(x|z) + log p(z) - log q(z|x) at a reparameterized z."""
    loc, scale = encoder(x)
    z = loc + scale * torch.randn_like(loc)
    log_lik = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(dim=(1, 2, 3))
    log_prior = Normal(torch.zeros_like(z), 1.0).log_prob(z).sum(-1)
    log_q = Normal(loc, scale).log_prob(z).sum(-1)
    return log_lik + log_prior - log_q


class PlainVAE:
    """The hand-written loop, one epoch per :meth:`epoch` call.

    :param fused_adam: ``None`` is ``torch.optim.Adam``'s default (what a user writes);
        ``True`` asks for PyTorch's fused Adam kernel.
    :param compiled: run the encoder and decoder through ``torch.compile`` (its default
        backend; compilation happens in the first epoch).
    """

    def __init__(self, data: Dataset, seed: int = 0, batch_size: int = 256, lr: float = 1e-3,
                 fused_adam: bool | None = None, device: str = "cpu", compiled: bool = False) -> None:
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.encoder = Encoder(X_SHAPE, HIDDEN, Z_DIM).to(self.device)
        self.decoder = Decoder(Z_DIM, HIDDEN, X_SHAPE).to(self.device)
        self.optim = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=lr,
                                      fused=fused_adam)
        if compiled:
            self.encoder, self.decoder = torch.compile(self.encoder), torch.compile(self.decoder)
        self.data, self.seed, self.batch_size = data.to(self.device), seed, batch_size
        self.test_x = fixed_binarization(data.test.x).to(self.device)
        self.epochs_done = 0
        torch.manual_seed(seed)  # pyrovae.train reseeds before its first step too

    def epoch(self) -> dict[str, Any]:
        """Train one epoch and return its record: epoch, train_elbo, test_elbo, seconds."""
        t0 = time.perf_counter()
        self.epochs_done += 1
        epoch = self.epochs_done
        self.encoder.train()
        self.decoder.train()
        shuffle = epoch_generator(self.seed, epoch, 0, torch.device("cpu"))
        flips = epoch_generator(self.seed, epoch, 1, self.device)
        total = 0.0
        for x, _ in batches(self.data.train, self.batch_size, shuffle=shuffle, binarize_with=flips):
            loss = -elbo(self.encoder, self.decoder, x).sum()
            self.optim.zero_grad()
            loss.backward()
            self.optim.step()
            total += loss.item()
        self.encoder.eval()
        self.decoder.eval()
        test = self.test_elbo()
        return {"epoch": epoch, "train_elbo": -total / len(self.data.train), "test_elbo": test,
                "seconds": time.perf_counter() - t0}

    @torch.no_grad()
    def test_elbo(self) -> float:
        """Mean single-sample ELBO over the fixed binarization of the test split."""
        split = Split(self.test_x, self.test_x)
        return sum(elbo(self.encoder, self.decoder, x).sum().item()
                   for x, _ in batches(split, TEST_BATCH_SIZE)) / self.test_x.shape[0]

    def as_pair(self) -> VAE:
        """A ``pyrovae.models.VAE`` holding these weights, for pyrovae's evaluation."""
        pair = VAE(z_dim=Z_DIM, hidden=HIDDEN)
        for mine, theirs in ((self.encoder, pair.encoder), (self.decoder, pair.decoder)):
            theirs.load_state_dict(getattr(mine, "_orig_mod", mine).state_dict())  # compiled or not
        return pair.to(self.device).eval()
