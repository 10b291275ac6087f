"""Figures: ``pyrovae plot`` writes every PNG it lists; per-label and per-component grids
from optional pair methods; latent codes and decoded images read from traces of the pair."""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest
import torch
from PIL import Image

from pyrovae import train
from pyrovae.cli import main
from pyrovae.data import evaluation_split
from pyrovae.models import GMVAE, VAE
from pyrovae.plots import decode_means, encode_means, save_figures, save_interpolations, save_manifold

TINY = ["--train-size", "300", "--test-size", "100", "--batch-size", "50", "--quiet"]


def _is_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.load()
        return image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0


def test_plot_writes_every_figure_it_lists_as_a_valid_png(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["--arg", "z_dim=2", "--arg", "hidden=[16]"]
    assert main(["train", "vae", "--epochs", "2", "--out", str(run), *TINY, *small]) == 0
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    written = [Path(line.removeprefix("wrote ")) for line in lines if line.startswith("wrote ")]
    assert {p.name for p in written} == {"curves.png", "samples.png", "reconstructions.png", "interpolations.png",
                                         "latent_scatter.png", "manifold.png"}
    assert all(p.parent == run / "plots" and p.stat().st_size > 0 and _is_png(p) for p in written)
    assert any(line.startswith("skipped samples_by_label.png: VAE has no sample_by_label") for line in lines)
    with Image.open(run / "plots" / "manifold.png") as image:
        assert image.size == (20 * 29 + 1, 20 * 29 + 1)  # 20 x 20 images of 28 px, 1 px padding


class LabelledVAE(VAE):
    """A VAE with the optional per-label and per-component samplers of CVAE- and GMVAE-like
    pairs (here: prior samples, as if there were 10 labels and 3 components)."""

    def __init__(self) -> None:
        super().__init__(z_dim=3, hidden=[16])
        self.calls: list[tuple[str, int]] = []

    def sample_by_label(self, n_per_label: int) -> torch.Tensor:
        self.calls.append(("label", n_per_label))
        return self.sample(10 * n_per_label).reshape(10, n_per_label, *self.x_shape)

    def sample_by_component(self, n_per_component: int) -> torch.Tensor:
        self.calls.append(("component", n_per_component))
        return self.sample(3 * n_per_component).reshape(3, n_per_component, *self.x_shape)


def test_pairs_with_per_label_and_per_component_samplers_get_one_row_each(data, tmp_path):
    pair = LabelledVAE()
    run = train(pair, data, epochs=1, batch_size=100, quiet=True)
    with run.param_scope():
        figures = save_figures(pair, evaluation_split(data.test, True), tmp_path, metrics=run.metrics,
                               classes=data.classes)
    names = {p.name for p in figures.written}
    assert {"samples_by_label.png", "samples_by_component.png", "latent_scatter.png"} <= names
    assert "2-D latent" in figures.skipped["manifold.png"]  # z_dim = 3: the scatter is a PCA projection
    assert pair.calls == [("label", 8), ("component", 8)]
    assert all(_is_png(p) for p in figures.written)
    with Image.open(tmp_path / "samples_by_label.png") as by_label, \
            Image.open(tmp_path / "samples_by_component.png") as by_component:
        assert by_label.size[1] > by_component.size[1]  # 10 rows against 3
    assert not list(pyro.get_param_store().keys())


def test_latents_and_decoded_images_from_traces_match_the_pairs_networks(data):
    pair = VAE(z_dim=3, hidden=[16]).eval()
    x = evaluation_split(data.test, True).x[:5]
    with pyro.get_param_store().scope():
        from_trace = encode_means(pair, x, y=torch.zeros(5))  # labels force the guide-trace route
        z = torch.randn(7, 3)
        decoded = decode_means(pair, z, x)
    assert torch.allclose(from_trace, pair.encode(x), atol=1e-6)
    assert torch.allclose(decoded, pair.likelihood.mean(pair.decoder(z)), atol=1e-6)
    assert decoded.shape == (7, 1, 28, 28)


def test_the_manifold_of_a_pair_with_its_own_decode(tmp_path):
    # the quantile grid is built in float64; a pair's decode gets it in the images' dtype
    pair = GMVAE(k=2, z_dim=2, hidden=[8], pretrain_examples=0).eval()
    x = torch.rand(3, 1, 28, 28)
    path = save_manifold(pair, x, tmp_path / "manifold.png", n=4)
    assert _is_png(path)
    with Image.open(path) as image:
        assert image.size == (4 * 29 + 1, 4 * 29 + 1)


def test_a_run_directory_that_is_not_a_run_is_one_message(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "Traceback" not in err


class ZProbe(torch.nn.Module):
    """Images that show their code: the left half is sigmoid(z[0]) grey, the right half sigmoid(z[1])."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, -1]], 1).logit()  # inverts decode on its own images

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        halves = torch.sigmoid(z)[:, :, None, None].expand(-1, -1, 28, 14)
        return torch.cat([halves[:, :1], halves[:, 1:]], -1)


def _tile(path: Path, row: int, col: int, padding: int) -> tuple[float, float]:
    """The grey levels of the left and right halves of one tile of a saved grid."""
    with Image.open(path) as image:
        grid = torch.tensor(list(image.convert("L").getdata()), dtype=torch.float64).view(image.size[1], image.size[0])
    top, left = padding + row * (28 + padding), padding + col * (28 + padding)
    tile = grid[top:top + 28, left:left + 28] / 255
    return tile[:, :14].mean().item(), tile[:, 14:].mean().item()


def test_the_manifold_puts_prior_quantiles_on_a_grid_z0_rightwards_z1_upwards(tmp_path):
    n = 4
    path = save_manifold(ZProbe(), torch.full((2, 1, 28, 28), 0.5), tmp_path / "m.png", n=n)
    ticks = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    for row in range(n):
        for col in range(n):
            left, right = _tile(path, row, col, padding=1)
            assert left == pytest.approx(torch.sigmoid(ticks[col]).item(), abs=1 / 255)
            assert right == pytest.approx(torch.sigmoid(ticks[n - 1 - row]).item(), abs=1 / 255)


def test_an_interpolation_row_runs_from_one_code_to_the_other(tmp_path):
    codes = torch.tensor([[-2.0, 1.0], [2.0, -1.0]])
    images = ZProbe().decode(codes)
    path = save_interpolations(ZProbe(), images[:1], images[1:], tmp_path / "i.png", steps=5)
    for col, t in enumerate(torch.linspace(0, 1, 5).tolist(), 1):  # column 0 is the first input
        expected = torch.sigmoid(codes[0] + t * (codes[1] - codes[0]))
        assert _tile(path, 0, col, padding=2) == pytest.approx(expected.tolist(), abs=1 / 255)
    assert _tile(path, 0, 6, padding=2) == pytest.approx(torch.sigmoid(codes[1]).tolist(), abs=1 / 255)


def test_a_single_test_image_skips_the_interpolations_with_a_reason(data, tmp_path):
    pair = VAE(z_dim=2, hidden=[8]).eval()
    one = evaluation_split(data.test, True)
    one = type(one)(one.x[:1], one.y[:1])
    with pyro.get_param_store().scope():
        figures = save_figures(pair, one, tmp_path, n=1)
    assert "at least 2" in figures.skipped["interpolations.png"]
    assert "manifold.png" in {p.name for p in figures.written}
