"""The CVAE pairs: shapes and a training step for both tasks, the completion loss counts
only hidden pixels, the baseline's bound is exact, bad input is refused, and the command
line draws samples by label."""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from PIL import Image
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from pyrovae.cli import main
from pyrovae.data import Split, fixed_binarization
from pyrovae.errors import UsageError
from pyrovae.evaluate import importance_log_likelihood, mean_elbo
from pyrovae.models import CVAE, CVAEBaseline
from pyrovae.models.cvae import visible_mask
from pyrovae.pairs import bundled

TINY = ["--train-size", "200", "--test-size", "50", "--batch-size", "50", "--epochs", "1", "--quiet"]
SMALL = ["--z-dim", "3", "--hidden", "[16]"]


def _step_changes_parameters(pair, x, y=None) -> None:
    args = (x,) if y is None else (x, y)
    with pyro.get_param_store().scope():
        svi = SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        before = {k: v.detach().clone() for k, v in pair.state_dict().items()}
        loss = svi.step(*args)
    assert torch.isfinite(torch.tensor(loss))
    moved = [k for k, v in pair.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, "one SVI step moved no parameter"


def test_registry_names_both_pairs():
    assert bundled()["cvae"] is CVAE and bundled()["cvae-baseline"] is CVAEBaseline


def test_label_task_shapes_and_one_training_step(data):
    pair = CVAE(z_dim=3, hidden=[16])
    assert pair.uses_labels
    x, y = fixed_binarization(data.train.x[:20]), data.train.y[:20]
    assert pair.sample(6).shape == (6, 1, 28, 28)
    by_label = pair.sample_by_label(4)
    assert by_label.shape == (10, 4, 1, 28, 28) and 0 <= by_label.min() and by_label.max() <= 1
    trace = poutine.trace(pair.guide).get_trace(x, y)
    assert trace.nodes["z"]["value"].shape == (20, 3)
    _step_changes_parameters(pair, x, y)


@pytest.mark.parametrize("quadrants", [1, 2, 3])
def test_complete_task_shapes_and_one_training_step(quadrants, data):
    pair = CVAE(task="complete", quadrants=quadrants, z_dim=3, hidden=[16])
    assert not pair.uses_labels and pair.sample is None and pair.sample_by_label is None
    x = fixed_binarization(data.train.x[:20])
    completions = pair.complete(x, 5)
    visible = visible_mask(quadrants)
    assert completions.shape == (5, 20, 1, 28, 28)
    assert torch.equal(completions[:, :, visible], x[:, visible].expand(5, -1, -1))  # visible pixels kept
    assert visible.sum() == quadrants * 14 * 14
    _step_changes_parameters(pair, x)
    _step_changes_parameters(CVAEBaseline(quadrants=quadrants, hidden=[16]), x)


@pytest.mark.parametrize("make", [lambda: CVAE(task="complete", quadrants=1, z_dim=3, hidden=[16]),
                                  lambda: CVAEBaseline(quadrants=1, hidden=[16])])
def test_completion_loss_counts_only_hidden_pixels(make, data):
    """The observation's log density, for the same condition and z, ignores the target's visible
    pixels, changes with its hidden ones, and is the Bernoulli sum over hidden pixels."""
    pair = make()
    x = fixed_binarization(data.test.x[:8])
    visible = visible_mask(1)
    with pyro.get_param_store().scope():
        trace = poutine.trace(poutine.replay(pair.model, poutine.trace(pair.guide).get_trace(x))).get_trace(x)
    p_x = trace.nodes["x"]["fn"]
    flip_visible = torch.where(visible, 1 - x, x)
    flip_hidden = torch.where(visible, x, 1 - x)
    assert torch.equal(p_x.log_prob(flip_visible), p_x.log_prob(x))
    assert (p_x.log_prob(flip_hidden) != p_x.log_prob(x)).all()
    logits = p_x.base_dist.base_dist.logits if hasattr(p_x.base_dist, "base_dist") else p_x.base_dist.logits
    per_pixel = torch.distributions.Bernoulli(logits=logits.expand_as(x)).log_prob(x)
    assert torch.allclose(p_x.log_prob(x), (per_pixel * ~visible).flatten(1).sum(1))


@pytest.mark.parametrize("quadrants", [1, 2, 3])
def test_completion_sees_no_hidden_pixel_but_through_the_guide(quadrants, data):
    """Flipping the hidden pixels changes neither the prior p(z | c), nor the decoded logits
    at the same z, nor the completions drawn with the same seed, nor the baseline's logits."""
    pair = CVAE(task="complete", quadrants=quadrants, z_dim=3, hidden=[16])
    baseline = CVAEBaseline(quadrants=quadrants, hidden=[16])
    x = fixed_binarization(data.test.x[:8])
    flipped = torch.where(visible_mask(quadrants), x, 1 - x)
    with pyro.get_param_store().scope():
        guide = poutine.trace(pair.guide).get_trace(x)
        traces = [poutine.trace(poutine.replay(pair.model, guide)).get_trace(v) for v in (x, flipped)]
        completions = []
        for v in (x, flipped):
            pyro.set_rng_seed(4)
            completions.append(pair.complete(v, 3))
        base = [poutine.trace(baseline.model).get_trace(v).nodes["x"]["fn"] for v in (x, flipped)]
    prior = [t.nodes["z"]["fn"].base_dist for t in traces]
    assert torch.equal(prior[0].loc, prior[1].loc) and torch.equal(prior[0].scale, prior[1].scale)
    logits = [t.nodes["x"]["fn"].base_dist.base_dist.logits for t in traces]
    assert torch.equal(logits[0], logits[1])
    assert torch.equal(completions[0][:, :, ~visible_mask(quadrants)], completions[1][:, :, ~visible_mask(quadrants)])
    assert torch.equal(base[0].base_dist.base_dist.logits, base[1].base_dist.base_dist.logits)


def test_baseline_bound_is_its_exact_conditional_likelihood(data):
    """No latents: the ELBO and the importance-sampled log-likelihood coincide for any K."""
    pair = CVAEBaseline(quadrants=2, hidden=[16])
    test = Split(fixed_binarization(data.test.x[:50]), data.test.y[:50])
    with pyro.get_param_store().scope():
        elbo = mean_elbo(pair, test, Trace_ELBO())
        ll = importance_log_likelihood(pair, test, k=3)
    assert abs(ll.mean - elbo) < 1e-3
    hidden = ~visible_mask(2)  # 392 pixels
    logits = pair.net((test.x * ~hidden).flatten(1))
    by_hand = -torch.nn.functional.binary_cross_entropy_with_logits(logits, test.x, reduction="none")
    assert elbo == pytest.approx((by_hand * hidden).flatten(1).sum(1).mean().item(), rel=1e-5)


def test_cvae_importance_estimate_is_above_its_elbo(data):
    pair = CVAE(task="complete", quadrants=1, z_dim=3, hidden=[16])
    test = Split(fixed_binarization(data.test.x[:50]), data.test.y[:50])
    with pyro.get_param_store().scope():
        elbo = mean_elbo(pair, test, Trace_ELBO(num_particles=20, vectorize_particles=True))
        ll = importance_log_likelihood(pair, test, k=20)
    assert ll.k == 20 and ll.mean >= elbo - 0.5


@pytest.mark.parametrize("build, message", [
    (lambda: CVAE(task="complete", quadrants=0), "quadrants must be 1, 2 or 3"),
    (lambda: CVAE(task="complete", quadrants=4), "quadrants must be 1, 2 or 3"),
    (lambda: CVAEBaseline(quadrants=5), "quadrants must be 1, 2 or 3"),
    (lambda: CVAE(task="colour"), "unknown task"),
])
def test_bad_construction_is_one_usage_error(build, message):
    with pytest.raises(UsageError, match=message):
        build()


def test_bad_labels_are_one_usage_error(data):
    pair = CVAE(z_dim=3, hidden=[16])
    x = data.train.x[:4]
    with pytest.raises(UsageError, match="needs the labels"):
        pair.model(x)
    with pytest.raises(UsageError, match=r"labels must lie in 0\.\.9"):
        pair.guide(x, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(UsageError, match=r"labels must lie in 0\.\.9"):
        pair.sample_labels(torch.tensor([-1]))


def test_command_line_trains_completion_and_samples_by_label(tmp_path, capsys):
    complete = tmp_path / "complete"
    assert main(["train", "cvae", "--task", "complete", "--quadrants", "1", "--out", str(complete), *TINY, *SMALL]) == 0
    config = json.loads((complete / "config.json").read_text())
    assert config["model_args"]["task"] == "complete" and config["model_args"]["quadrants"] == 1
    assert main(["eval", str(complete), "--iwae-k", "5"]) == 0
    assert main(["sample", str(complete), "--per-label", "2"]) == 2
    assert "no sample_by_label" in capsys.readouterr().err
    # a latent decodes only beside an input's visible part: no interpolations or manifold from zeros
    assert main(["plot", str(complete), "--out", str(tmp_path / "plots")]) == 0
    written = {p.name for p in (tmp_path / "plots").iterdir()}
    assert "reconstructions.png" in written and not {"interpolations.png", "manifold.png"} & written
    assert "decode = None" in capsys.readouterr().out

    label = tmp_path / "label"
    assert main(["train", "cvae", "--out", str(label), *TINY, *SMALL]) == 0
    assert main(["sample", str(label), "--label", "3", "-n", "4", "--out", str(tmp_path / "three.png")]) == 0
    assert Image.open(tmp_path / "three.png").size == (62, 62)  # 2 x 2 images of 28 pixels, padding 2
    assert main(["sample", str(label), "--per-label", "3", "--out", str(tmp_path / "rows.png")]) == 0
    assert (tmp_path / "rows.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["sample", str(label), "--label", "2", "-n", "4"]) == 0
    assert Image.open(label / "sample_label2.png").size == (62, 62)
    assert main(["sample", str(label), "--label", "10"]) == 2
    assert "--label must lie in 0..9" in capsys.readouterr().err
    for name in ("three", "three.txt", "folder/"):
        assert main(["sample", str(label), "--label", "3", "--out", str(tmp_path / name)]) == 2
        assert "names the PNG file to write" in capsys.readouterr().err
