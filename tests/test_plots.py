"""Figures: ``pyrovae plot`` writes every PNG it lists; per-label and per-component grids
from optional pair methods; latent codes and decoded images read from traces of the pair."""

from __future__ import annotations

from pathlib import Path

import pyro
import torch
from PIL import Image

from pyrovae import train
from pyrovae.cli import main
from pyrovae.data import evaluation_split
from pyrovae.models import GMVAE, VAE
from pyrovae.plots import decode_means, encode_means, save_figures, save_manifold

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
