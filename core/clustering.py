"""Clusters in SAE space: k-means on L2-normalised sparse feature vectors, labelled by c-TF-IDF.

Raw SAE vectors differ hugely in norm (long prompts fire more), and k-means on them collapses into
one big cluster; normalising rows makes k-means behave like spherical k-means (cosine).

Example:
    >>> X = csr_matrix(...)                       # [n_examples, d_sae], pooled SAE activations
    >>> res = kmeans_clusters(X, k=8, seed=0)
    >>> top = distinctive_features(X, res.labels, k=8, top_n=5)
    >>> sweep_k(X, [4, 8, 12], seed=0)         # silhouette per k: the best one is a good k
    >>> near_duplicate_groups(X, threshold=0.95)  # group id per row, -1 where it has no copy
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import normalize

from core.errors import StudioError


@dataclass(frozen=True)
class ClusterConfig:
    """Options of the cluster step. ``sweep`` (a list of k, or "auto" for :func:`auto_ks`) scores
    each k by silhouette; ``k=None`` then takes the best one, else :func:`default_k`."""

    k: int | None = None
    seed: int = 0
    n_init: int = 3
    top_features: int = 5
    sweep: tuple[int, ...] | Literal["auto"] | None = None
    sweep_sample: int = 3000

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 2:
            raise StudioError(f"{{field}} must be at least 2, got {self.k}", field="k")
        if isinstance(self.sweep, tuple) and (not self.sweep or min(self.sweep) < 2):
            raise StudioError(
                f"{{field}} needs values of k of at least 2, got {list(self.sweep)}", field="sweep"
            )
        if self.sweep_sample < 10:
            raise StudioError("sweep_sample must be at least 10")
        if self.top_features < 1:
            raise StudioError("top_features must be at least 1")


@dataclass(frozen=True)
class ClusterResult:
    labels: np.ndarray  # [n] int32
    centroids: np.ndarray  # [k, d_sae] float32, in normalised space
    inertia: float


def check_k(k: int, n: int) -> None:
    """A clear error for a k that cannot cluster ``n`` examples."""
    if k < 2:
        raise StudioError(f"k must be at least 2, got {k}")
    if k > n:
        raise StudioError(f"k={k} is larger than the dataset's {n} examples: pick k <= {n}")


def default_k(n: int) -> int:
    """A size-aware default: about sqrt(n/20) clusters, between 2 and 50 (3,000 rows -> 12)."""
    return int(min(50, max(2, round(math.sqrt(n / 20)))))


def parse_sweep(text: str) -> tuple[int, ...] | Literal["auto"]:
    """``"4,8,12"`` -> ``(4, 8, 12)``; ``"auto"`` stays "auto"."""
    if text.strip() == "auto":
        return "auto"
    try:
        ks = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError as exc:
        raise StudioError(
            f"{{field}} {text!r}: expected 'auto' or k values like 4,8,12", field="sweep"
        ) from exc
    if not ks:
        raise StudioError(
            f"{{field}} {text!r}: expected 'auto' or k values like 4,8,12", field="sweep"
        )
    return ks


def auto_ks(n: int) -> list[int]:
    """A small default grid of k for ``n`` rows: clusters of at least ~5 rows on average.

    >>> auto_ks(200), auto_ks(3000)
    ([4, 6, 8, 12, 16, 24, 32], [4, 6, 8, 12, 16, 24, 32, 48])
    """
    ks = [k for k in (4, 6, 8, 12, 16, 24, 32, 48) if k <= n // 5]
    return ks or [k for k in (2, 3) if k < n]


def sweep_k(
    X: sparse.csr_matrix,
    ks: list[int] | tuple[int, ...],
    *,
    seed: int = 0,
    sample: int = 3000,
    n_init: int = 3,
) -> list[dict[str, float]]:
    """k-means for each k on the L2-normalised rows; silhouette (cosine) on a seeded sample of
    at most ``sample`` rows, so a big dataset costs one k-means per k plus a fixed-size score.

    Returns ``[{"k": 4, "silhouette": 0.31, "inertia": 812.0}, ...]`` in the order of ``ks``;
    values of k that are not smaller than the number of rows are refused.
    """
    n = len(X.indptr) - 1
    bad = [k for k in ks if k >= n or k < 2]
    if bad:
        raise StudioError(
            f"{{field}}: k={bad[0]} needs 2 <= k < {n} (the dataset's size)", field="sweep"
        )
    Xn = normalize(X.astype(np.float32), norm="l2", axis=1)
    out = []
    for k in ks:
        res = kmeans_clusters(X, k=k, seed=seed, n_init=n_init)
        n_labels = len(np.unique(res.labels))
        score = (
            float(
                silhouette_score(
                    Xn,
                    res.labels,
                    metric="cosine",
                    sample_size=min(sample, n),
                    random_state=seed,
                )
            )
            if 2 <= n_labels < n
            else float("nan")
        )
        out.append({"k": int(k), "silhouette": score, "inertia": res.inertia})
    return out


def best_k(sweep: list[dict[str, float]]) -> int:
    """The k with the highest silhouette (the smallest such k on ties)."""
    scored = [p for p in sweep if not math.isnan(p["silhouette"])]
    if not scored:
        raise StudioError(
            "{field}: no k gave a silhouette score (too few distinct rows)", field="sweep"
        )
    return int(max(scored, key=lambda p: (p["silhouette"], -p["k"]))["k"])


def sweep_edge_note(sweep: list[dict[str, float]], k: int) -> str | None:
    """A warning when the chosen k is the smallest or largest k the sweep scored: the silhouette
    curve has not turned there, so a k outside the grid may score better (often on templated
    data, where silhouette keeps rising as clusters shrink to near-copies).

    >>> sweep_edge_note([{"k": 4, "silhouette": 0.2}, {"k": 8, "silhouette": 0.3}], 8)
    'the best silhouette is at the largest k tried (8 of 4..8): the curve has not peaked, so the clusters may be finer than the data needs; look at the sweep, or pass --k or a wider --sweep'
    """
    ks = sorted(int(p["k"]) for p in sweep if not math.isnan(p["silhouette"]))
    if len(ks) < 2 or k not in (ks[0], ks[-1]):
        return None
    where = "largest" if k == ks[-1] else "smallest"
    finer = "finer" if k == ks[-1] else "coarser"
    return (
        f"the best silhouette is at the {where} k tried ({k} of {ks[0]}..{ks[-1]}): the curve "
        f"has not peaked, so the clusters may be {finer} than the data needs; look at the sweep, "
        "or pass --k or a wider --sweep"
    )


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


def feature_names(
    top_tokens: dict[int, list[str]],
    *,
    descriptions: dict[int, str] | None = None,
    n_tokens: int = 3,
    max_chars: int = 48,
) -> dict[int, str]:
    """A short name per feature: its description where the run has one (imported from
    Neuronpedia or an auto-interp run, cut to ``max_chars``), else its top-activating tokens.

    >>> feature_names({12: ["sum", "total", "add", "plus"], 7: ["cat"]}, descriptions={7: "felines"})
    {12: 'sum total add', 7: 'felines'}
    """
    names = {fid: " ".join(toks[:n_tokens]) for fid, toks in top_tokens.items()}
    for fid, text in (descriptions or {}).items():
        text = " ".join(text.split())
        if text:
            names[fid] = text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"
    return names


def cluster_label(top: list[tuple[int, float]], names: dict[int, str], *, n: int = 3) -> str:
    """A readable label: the cluster's top features, each shown by its top tokens."""
    parts = []
    for fid, _ in top[:n]:
        name = names.get(fid, "")
        parts.append(f"f{fid} ({name})" if name else f"f{fid}")
    return " · ".join(parts) if parts else "(no active features)"


def near_duplicate_groups(
    X: sparse.csr_matrix, *, threshold: float = 0.95, block_entries: int = 1 << 24
) -> np.ndarray:
    """Groups of rows whose L2-normalised vectors have cosine >= ``threshold`` with another member
    (transitively: single linkage). Returns ``group[n]`` int64: -1 for rows with no near copy,
    else groups numbered 0, 1, ... by their first row. Empty rows are never duplicates.

    Cosines come from a sparse product in blocks of rows (about ``block_entries`` cells each), so
    memory stays bounded; pairs are joined with connected components (union-find).

    >>> near_duplicate_groups(csr_matrix([[1, 0], [2, 0], [0, 1]]))
    array([ 0,  0, -1])
    """
    if not 0.0 < threshold <= 1.0:
        raise StudioError(f"{{field}} must be in (0, 1], got {threshold}", field="threshold")
    n = len(X.indptr) - 1
    Xn = sparse.csr_matrix(normalize(X.astype(np.float32), norm="l2", axis=1))
    XnT = sparse.csr_matrix(Xn.T)
    step = max(1, block_entries // max(n, 1))
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    # float32 products of a row with itself can land just under 1.0
    tol = threshold - 1e-6
    for start in range(0, n, step):
        sims = sparse.coo_matrix(Xn[start : start + step] @ XnT)
        keep = (sims.data >= tol) & (sims.col > sims.row + start)
        rows.append(sims.row[keep] + start)
        cols.append(sims.col[keep])
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    graph = sparse.coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp, minlength=n)
    group = np.full(n, -1, dtype=np.int64)
    next_id = 0
    seen: dict[int, int] = {}
    for i in np.flatnonzero(sizes[comp] > 1):
        cid = int(comp[i])
        if cid not in seen:
            seen[cid] = next_id
            next_id += 1
        group[i] = seen[cid]
    return group
