"""Batch composition: every row exactly once, within-cluster order kept, the measured
cross-cluster share matches the mixing ratio."""

import numpy as np
import pytest

from core.errors import StudioError
from core.export.batching import cluster_distances, compose_batches, cross_cluster_share


def _cases():
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(1, 9))
        n = int(rng.integers(1, 400))
        yield rng.integers(0, k, size=n), int(rng.integers(1, 40)), float(rng.uniform(0, 0.9))


@pytest.mark.parametrize(("clusters", "batch_size", "mix"), list(_cases()))
def test_every_row_once_and_cluster_order_kept(clusters, batch_size, mix):
    plan = compose_batches(clusters, batch_size=batch_size, mix=mix)
    assert sorted(plan.order.tolist()) == list(range(len(clusters)))
    for c in np.unique(clusters):
        rows = plan.order[clusters[plan.order] == c]
        assert (np.diff(rows) > 0).all()  # each cluster is read from its head, in order
    assert (np.bincount(plan.batch)[:-1] == batch_size).all()


@pytest.mark.parametrize("mix", [0.0, 0.1, 0.2, 0.5])
def test_cross_cluster_share_matches_the_ratio(mix):
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(6), 400)
    rng.shuffle(clusters)
    plan = compose_batches(clusters, batch_size=50, mix=mix)
    # exact while the clusters last; the tail (clusters running out) is a few batches
    assert cross_cluster_share(clusters, plan) == pytest.approx(mix, abs=0.03)
    if mix == 0.0:
        assert cross_cluster_share(clusters, plan) == 0.0


def test_nearest_clusters_lend_first():
    clusters = np.repeat([0, 1, 2], 20)
    centroids = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])  # 2 is next to 0
    plan = compose_batches(clusters, batch_size=10, mix=0.2, distances=cluster_distances(centroids))
    first = clusters[plan.order[:10]]
    assert plan.home[0] == 0 and (first == 0).sum() == 8 and (first == 2).sum() == 2


def test_mix_one_is_a_seeded_shuffle():
    clusters = np.repeat([0, 1], 50)
    a = compose_batches(clusters, batch_size=10, mix=1.0, seed=3)
    b = compose_batches(clusters, batch_size=10, mix=1.0, seed=3)
    assert (a.order == b.order).all() and sorted(a.order.tolist()) == list(range(100))
    assert not (a.order == np.arange(100)).all()


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [({"batch_size": 0}, "batch size"), ({"batch_size": 4, "mix": 1.5}, "mixing ratio")],
)
def test_bad_options(kwargs, msg):
    with pytest.raises(StudioError, match=msg):
        compose_batches(np.zeros(5), **kwargs)
