"""Clustering: normalised k-means finds planted clusters; c-TF-IDF names their features."""

import numpy as np
import pytest
from scipy import sparse

from core.clustering import (
    ClusterConfig,
    auto_ks,
    best_k,
    cluster_label,
    default_k,
    distinctive_features,
    kmeans_clusters,
    near_duplicate_groups,
    parse_sweep,
    sweep_edge_note,
    sweep_k,
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


@pytest.mark.parametrize("planted", [3, 5])
def test_sweep_picks_the_planted_k(planted):
    X, _ = _planted(n_per=30, k=planted)
    sweep = sweep_k(X, [2, 3, 4, 5, 6, 8], seed=0, sample=100)
    assert [p["k"] for p in sweep] == [2, 3, 4, 5, 6, 8]
    assert best_k(sweep) == planted
    inertia = [p["inertia"] for p in sweep]
    assert inertia[0] > inertia[-1]  # more clusters fit tighter


@pytest.mark.parametrize("planted", [3, 5])
def test_sweep_edge_note_only_at_the_ends_of_the_grid(planted):
    X, _ = _planted(n_per=30, k=planted)
    inside = sweep_k(X, [2, 3, 4, 5, 6, 8], seed=0, sample=100)
    assert sweep_edge_note(inside, best_k(inside)) is None  # the planted k is inside the grid
    below = sweep_k(X, [2, planted - 1], seed=0, sample=100)  # the grid stops short of it
    note = sweep_edge_note(below, best_k(below))
    assert note is not None and note.startswith(
        f"the best silhouette is at the largest k tried ({planted - 1} of 2.."
    )
    low = [
        {"k": 3, "silhouette": 0.5},
        {"k": 6, "silhouette": 0.2},
        {"k": 9, "silhouette": float("nan")},
    ]
    assert "smallest k tried (3 of 3..6)" in (sweep_edge_note(low, 3) or "")
    assert sweep_edge_note([{"k": 4, "silhouette": 0.3}], 4) is None  # one k: nothing to compare


def test_sweep_input_is_checked():
    X, _ = _planted(n_per=2)  # 6 rows
    with pytest.raises(StudioError, match="k=6 needs"):
        sweep_k(X, [2, 6])
    assert parse_sweep("8, 4,4") == (4, 8) and parse_sweep("auto") == "auto"
    with pytest.raises(StudioError, match="expected 'auto'"):
        parse_sweep("four")
    with pytest.raises(StudioError, match="at least 2"):
        ClusterConfig(sweep=(1, 4))
    assert auto_ks(200) == [4, 6, 8, 12, 16, 24, 32] and auto_ks(10) == [2, 3]
    assert max(auto_ks(3000)) == 48 and auto_ks(2) == []


def test_near_duplicates_group_copies_and_respect_the_threshold():
    rng = np.random.default_rng(0)
    base = rng.random((6, 40))
    base[base < 0.6] = 0
    X = np.vstack(
        [
            base,
            base[1] * 3.0,  # row 6: an exact copy of row 1, scaled (cosine 1)
            base[4],  # row 7: a copy of row 4
            base[4] + 0.15 * (base[4] > 0),  # row 8: almost row 4, joins the same group
            np.zeros(40),  # row 9 and 10: empty rows are never duplicates
            np.zeros(40),
        ]
    )
    group = near_duplicate_groups(sparse.csr_matrix(X), threshold=0.95, block_entries=7)
    assert group[1] == group[6] == 0  # numbered by first row
    assert group[4] == group[7] == group[8] == 1
    assert (group[[0, 2, 3, 5, 9, 10]] == -1).all()
    # a threshold above the near copy's cosine splits it off; exact copies stay together
    cos = float(X[4] @ X[8] / np.linalg.norm(X[4]) / np.linalg.norm(X[8]))
    assert 0.95 < cos < 0.9999
    strict = near_duplicate_groups(sparse.csr_matrix(X), threshold=(cos + 1) / 2)
    assert strict[8] == -1 and strict[4] == strict[7] >= 0
    with pytest.raises(StudioError, match="threshold"):
        near_duplicate_groups(sparse.csr_matrix(X), threshold=0)
