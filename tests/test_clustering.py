"""Clustering: normalised k-means finds planted clusters; c-TF-IDF names their features."""

import numpy as np
import pytest
from scipy import sparse

from core.clustering import (
    ClusterConfig,
    cluster_label,
    default_k,
    distinctive_features,
    kmeans_clusters,
)
from core.errors import StudioError


def _planted(n_per=40, k=3, d=60, seed=0):
    """k groups, each firing its own block of features, with very different row norms."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(k):
        block = rng.random((n_per, d)) * 0.05
        block[:, c * 10 : c * 10 + 5] += rng.random((n_per, 5)) + 0.5
        block *= rng.choice([0.1, 10.0], size=(n_per, 1))  # norms differ 100x
        rows.append(block)
    X = np.vstack(rows)
    X[X < 0.04] = 0
    return sparse.csr_matrix(X), np.repeat(np.arange(k), n_per)


def test_kmeans_recovers_planted_clusters_despite_norms():
    X, truth = _planted()
    res = kmeans_clusters(X, k=3, seed=0)
    for c in range(3):
        assert len(set(res.labels[truth == c])) == 1
    assert len(set(res.labels)) == 3


def test_distinctive_features_come_from_each_clusters_block():
    X, truth = _planted()
    res = kmeans_clusters(X, k=3, seed=0)
    top = distinctive_features(X, res.labels, k=3, top_n=3)
    for c in range(3):
        members = truth[res.labels == c]
        block = int(np.bincount(members).argmax())
        assert all(block * 10 <= f < block * 10 + 5 for f, _ in top[c])


def test_labels_are_sorted_by_size_and_stable():
    X, _ = _planted(n_per=30)
    a = kmeans_clusters(X, k=3, seed=0).labels
    b = kmeans_clusters(X, k=3, seed=0).labels
    assert (a == b).all()
    sizes = np.bincount(a)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_k_larger_than_data_is_refused():
    X, _ = _planted(n_per=2)
    with pytest.raises(StudioError, match="larger than the dataset"):
        kmeans_clusters(X, k=10)
    with pytest.raises(StudioError, match="at least 2"):
        ClusterConfig(k=1)


def test_default_k_and_label():
    assert default_k(3000) == 12 and default_k(10) == 2 and default_k(10**7) == 50
    assert cluster_label([(3, 1.0), (7, 0.5)], {3: "sum add"}) == "f3 (sum add) · f7"
