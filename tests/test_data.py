"""Data: shapes, ranges, the Debian copy, errors, binarization and batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pyrovae.data import DATASETS, Split, batches, binarize, fixed_binarization, load_dataset
from pyrovae.errors import PyrovaeError, UsageError


def test_splits_have_image_shape_unit_range_and_labels(data):
    assert data.x_shape == (1, 28, 28)
    assert (len(data.train), len(data.test)) == (600, 200)
    for split in (data.train, data.test):
        assert split.x.dtype == torch.float32
        assert split.x.min() >= 0 and split.x.max() <= 1
        assert split.x.max() == 1  # scaled by 255, not left as bytes or standardized
        assert split.y.dtype == torch.int64 and set(split.y.tolist()) <= set(range(10))
    assert len(data.classes) == 10 and data.classes[9] == "Ankle boot"
    assert data.train.y[:4].tolist() == [9, 0, 0, 3]  # Fashion-MNIST's first training labels


def test_debian_copy_is_unpacked_into_the_cache(tmp_path, monkeypatch, data):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path))
    fresh = load_dataset("fashion-mnist", train_size=600, test_size=200, download=False)
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").stat().st_size == 47040016
    assert torch.equal(fresh.train.x, data.train.x) and torch.equal(fresh.test.y, data.test.y)
    assert not list(tmp_path.rglob("*.partial*"))


def test_missing_data_error_names_every_way_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "empty"))
    monkeypatch.setitem(DATASETS, "fashion-mnist", (DATASETS["fashion-mnist"][0], tmp_path / "no-package"))
    with pytest.raises(PyrovaeError) as err, pytest.warns(UserWarning, match="nowhere holds no fashion-mnist files"):
        load_dataset("fashion-mnist", root=tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert message.index("the cache") < message.index("Ways")
    for way in ("--data-root", "PYROVAE_DATA", "dataset-fashion-mnist", "download"):
        assert way in message


def test_damaged_idx_files_and_archives_are_one_message(tmp_path, monkeypatch, data):
    raw = tmp_path / "root" / "FashionMNIST" / "raw"  # a copy of the files, the training images cut short
    raw.mkdir(parents=True)
    for f in (Path(data.root) / "FashionMNIST" / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes()[:1_000_000] if f.name.startswith("train-images") else f.read_bytes())
    with pytest.raises(PyrovaeError, match="cannot read the fashion-mnist files in .*root/FashionMNIST/raw"):
        load_dataset("fashion-mnist", root=tmp_path / "root", download=False)

    system = tmp_path / "package"  # a distribution package whose archives are damaged
    system.mkdir()
    for gz in Path(DATASETS["fashion-mnist"][1]).iterdir():
        (system / gz.name).write_bytes(b"\x1f\x8b not really gzip")
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(DATASETS, "fashion-mnist", (DATASETS["fashion-mnist"][0], system))
    with pytest.raises(PyrovaeError, match="cannot unpack"):
        load_dataset("fashion-mnist", download=False)
    assert not list((tmp_path / "cache").rglob("*.partial*"))


@pytest.mark.parametrize("kwargs, message", [({"name": "cifar10"}, "unknown dataset 'cifar10'"),
                                             ({"train_size": 0}, "train_size must be a positive"),
                                             ({"test_size": -3}, "test_size must be a positive")])
def test_bad_arguments_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        load_dataset(**kwargs)


def test_test_binarization_is_fixed_and_unbiased(data):
    a, b = fixed_binarization(data.test.x), fixed_binarization(data.test.x)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(a, fixed_binarization(data.test.x, seed=1))
    # E[binarized] = x: the mean over 156,800 pixels agrees within 5 standard errors
    se = (data.test.x * (1 - data.test.x)).sum().sqrt() / data.test.x.numel()
    assert abs(a.mean() - data.test.x.mean()) < 5 * se


def test_dynamic_binarization_is_redrawn_each_epoch(data):
    first = binarize(data.train.x, torch.Generator().manual_seed(1))
    second = binarize(data.train.x, torch.Generator().manual_seed(2))
    assert not torch.equal(first, second)
    assert torch.equal(first, binarize(data.train.x, torch.Generator().manual_seed(1)))


def test_shuffled_batches_visit_every_example_once_with_its_label():
    split = Split(torch.arange(10.0).reshape(10, 1, 1, 1), torch.arange(10))
    seen = list(batches(split, 4, shuffle=torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in seen] == [4, 4, 2]
    ys = torch.cat([y for _, y in seen])
    assert sorted(ys.tolist()) == list(range(10)) and ys.tolist() != list(range(10))
    for x, y in seen:
        assert torch.equal(x.flatten().long(), y)


def test_dynamic_binarization_has_the_grey_level_as_probability():
    # each of the 256 grey levels k / 255, 40,000 times: the frequency of ones agrees with the
    # level within 5 standard errors; levels 0 and 1 are exact; any count of pixels works
    levels = torch.arange(256.0) / 255
    x = levels.repeat(40_001)[:-3]  # not a multiple of 4
    ones = binarize(x, torch.Generator().manual_seed(0))
    assert ones.shape == x.shape and ones.dtype == x.dtype and set(ones.unique().tolist()) == {0.0, 1.0}
    freq = ones[: 256 * 40_000].view(40_000, 256).mean(0)
    se = (levels * (1 - levels) / 40_000).sqrt()
    assert ((freq - levels).abs() <= 5 * se + 2**-15).all()  # level by level (16-bit thresholds)
    assert freq[0] == 0 and freq[-1] == 1
