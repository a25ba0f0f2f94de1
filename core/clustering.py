"""Clusters in SAE space: k-means on L2-normalised sparse feature vectors, labelled by c-TF-IDF.

Raw SAE vectors differ hugely in norm (long prompts fire more), and k-means on them collapses into
one big cluster; normalising rows makes k-means behave like spherical k-means (cosine).

Example:
    >>> X = csr_matrix(...)                       # [n_examples, d_sae], pooled SAE activations
    >>> res = kmeans_clusters(X, k=8, seed=0)
    >>> top = distinctive_features(X, res.labels, k=8, top_n=5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.preprocessing import normalize

from core.errors import StudioError


@dataclass(frozen=True)
class ClusterConfig:
    """Options of the cluster step; ``k=None`` picks :func:`default_k`."""

    k: int | None = None
    seed: int = 0
    n_init: int = 3
    top_features: int = 5

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 2:
            raise StudioError(f"--k must be at least 2, got {self.k}")
        if self.top_features < 1:
            raise StudioError("top_features must be at least 1")


@dataclass(frozen=True)
class ClusterResult:
    labels: np.ndarray  # [n] int32
    centroids: np.ndarray  # [k, d_sae] float32, in normalised space
    inertia: float


def default_k(n: int) -> int:
    """A size-aware default: about sqrt(n/20) clusters, between 2 and 50 (3,000 rows -> 12)."""
    return int(min(50, max(2, round(math.sqrt(n / 20)))))


def kmeans_clusters(
    X: sparse.csr_matrix, *, k: int, seed: int = 0, n_init: int = 3
) -> ClusterResult:
    """k-means on the L2-normalised rows of ``X``. Empty rows stay zero and join the nearest."""
    n = len(X.indptr) - 1
    if k > n:
        raise StudioError(f"k={k} is larger than the dataset ({n} examples)")
    Xn = normalize(X.astype(np.float32), norm="l2", axis=1)
    km = KMeans(n_clusters=k, random_state=seed, n_init=n_init)
    labels = km.fit_predict(Xn)
    return ClusterResult(
        labels=_relabel_by_size(labels.astype(np.int32), k),
        centroids=np.asarray(km.cluster_centers_, dtype=np.float32),
        inertia=float(km.inertia_),
    )


def _relabel_by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Renumber clusters so cluster 0 is the largest: stable ids for the same data and seed."""
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    remap = np.empty(k, dtype=np.int32)
    remap[order] = np.arange(k, dtype=np.int32)
    return remap[labels]


def distinctive_features(
    X: sparse.csr_matrix, labels: np.ndarray, *, k: int, top_n: int = 5
) -> list[list[tuple[int, float]]]:
    """Per cluster, the features most specific to it by class-based TF-IDF (as in BERTopic).

    tf[c, f] = activation mass of f in c / total mass in c; idf[f] = log(1 + A / mass of f overall)
    with A the mean total mass per cluster. Returns, per cluster, ``[(feature_id, score), ...]``.
    """
    X = sparse.csr_matrix(X, dtype=np.float64)
    onehot = sparse.csr_matrix(
        (np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(k, len(labels))
    )
    mass = np.asarray((onehot @ X).todense())  # [k, d_sae]
    totals = mass.sum(axis=1, keepdims=True)
    tf = np.divide(mass, totals, out=np.zeros_like(mass), where=totals > 0)
    per_feature = mass.sum(axis=0)
    avg = totals.mean()
    idf = np.log1p(
        np.divide(avg, per_feature, out=np.zeros_like(per_feature), where=per_feature > 0)
    )
    score = tf * idf
    out: list[list[tuple[int, float]]] = []
    for c in range(k):
        row = score[c]
        idx = np.argsort(-row, kind="stable")[:top_n]
        out.append([(int(i), float(row[i])) for i in idx if row[i] > 0])
    return out


def feature_names(top_tokens: dict[int, list[str]], *, n_tokens: int = 3) -> dict[int, str]:
    """A short name per feature from its top-activating tokens: ``{12: "sum total add"}``."""
    return {fid: " ".join(toks[:n_tokens]) for fid, toks in top_tokens.items()}


def cluster_label(top: list[tuple[int, float]], names: dict[int, str], *, n: int = 3) -> str:
    """A readable label: the cluster's top features, each shown by its top tokens."""
    parts = []
    for fid, _ in top[:n]:
        name = names.get(fid, "")
        parts.append(f"f{fid} ({name})" if name else f"f{fid}")
    return " · ".join(parts) if parts else "(no active features)"
