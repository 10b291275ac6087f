"""Clustering metrics against hand-computed values, and k-means on separated blobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyrovae.clustering import clustering_accuracy, contingency, kmeans, normalized_mutual_info
from pyrovae.errors import UsageError

LABELS = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3])


def test_a_perfect_assignment_scores_one():
    assert clustering_accuracy(LABELS, LABELS) == 1.0
    assert normalized_mutual_info(LABELS, LABELS) == pytest.approx(1.0)


def test_a_permuted_assignment_still_scores_one():
    permutation = torch.tensor([2, 0, 3, 1])
    clusters = permutation[LABELS]
    assert not torch.equal(clusters, LABELS)
    assert clustering_accuracy(clusters, LABELS) == 1.0
    assert normalized_mutual_info(clusters, LABELS) == pytest.approx(1.0)


def test_accuracy_uses_the_best_one_to_one_matching():
    labels = np.array([0, 0, 0, 1, 1, 1])
    clusters = np.array([1, 1, 0, 0, 0, 0])  # best map: 1 -> 0, 0 -> 1: 2 + 3 right of 6
    assert contingency(clusters, labels).tolist() == [[1, 3], [2, 0]]
    assert clustering_accuracy(clusters, labels) == pytest.approx(5 / 6)
    # two clusters may not both map to one label: one of them counts as wrong
    assert clustering_accuracy(np.array([0, 1, 2, 2]), np.array([0, 0, 1, 1])) == pytest.approx(3 / 4)


def test_nmi_matches_a_hand_computed_value():
    # H(L) = log 2, H(C) = 1.5 log 2, I = log 2 (C refines L): NMI = 1 / 1.25
    assert normalized_mutual_info([0, 0, 1, 2], [0, 0, 1, 1]) == pytest.approx(0.8)
    # independent partitions share no information
    assert normalized_mutual_info([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-12)


def test_bad_labels_are_refused():
    with pytest.raises(UsageError, match="of equal length, got 2 and 3"):
        clustering_accuracy([0, 1], [0, 1, 1])
    with pytest.raises(UsageError, match="integer"):
        normalized_mutual_info(np.array([0.5, 1.0]), np.array([0, 1]))


def test_kmeans_recovers_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(50)
    x = centers[truth] + torch.randn(200, 2, generator=g)
    assign, found = kmeans(x, 4, n_init=2, seed=1)
    assert assign.shape == (200,) and found.shape == (4, 2)
    assert clustering_accuracy(assign, truth) == 1.0
    assert torch.cdist(found, centers).min(1).values.max() < 0.5
    with pytest.raises(UsageError, match="1 <= k <= N"):
        kmeans(x, 0)


def test_kmeans_keeps_the_restart_of_least_inertia():
    # ten overlapping blobs in two dimensions: single k-means runs end in different local optima
    x = torch.randn(600, 2, generator=torch.Generator().manual_seed(3)) + 2.5 * torch.randn(
        10, 2, generator=torch.Generator().manual_seed(4)).repeat_interleave(60, 0)

    def inertia(n_init: int, seed: int) -> float:
        assign, centers = kmeans(x, 10, n_init=n_init, seed=seed)
        return float((x - centers[assign]).pow(2).sum())

    singles = [inertia(1, seed) for seed in range(8)]
    assert len({round(v, 3) for v in singles}) > 1  # the data has several local optima
    best_of_8 = [inertia(8, seed) for seed in range(8)]
    # the first of 8 restarts is the single run: never worse, and better where a later one is
    assert all(b <= s + 1e-6 for b, s in zip(best_of_8, singles))
    assert any(b < s - 1e-3 for b, s in zip(best_of_8, singles))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kmeans_on_a_gpu_picks_what_it_picks_on_the_cpu():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g) + 6.0 * torch.arange(3).repeat_interleave(100)[:, None]
    cpu_assign, cpu_centers = kmeans(x, 3, n_init=3, seed=2)
    gpu_assign, gpu_centers = kmeans(x.cuda(), 3, n_init=3, seed=2)
    assert gpu_assign.is_cuda and torch.equal(gpu_assign.cpu(), cpu_assign)
    torch.testing.assert_close(gpu_centers.cpu(), cpu_centers, rtol=1e-4, atol=1e-4)
