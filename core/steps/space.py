"""Steps over the SAE feature space: clusters (with their evidence against baselines), near-duplicate
groups and the 2-D map projection.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from core.clustering import (
    ClusterConfig,
    auto_ks,
    best_k,
    check_k,
    cluster_label,
    default_k,
    distinctive_features,
    kmeans_clusters,
    near_duplicate_groups,
    sweep_edge_note,
    sweep_k,
)
from core.export import cluster_distances
from core.probes import (
    compare_clusterings,
)
from core.projection import ProjectConfig, umap_2d
from core.signals import BASELINES, MAX_CATEGORY_VALUES
from core.steps.base import (
    feature_labels,
    feature_matrix,
    need_feature_run,
    versions,
)
from core.steps.probes import representations
from core.store import RunRecord, Store, Views


def cluster(
    store: Store,
    *,
    dataset: str,
    cfg: ClusterConfig,
    feature_run: int | None = None,
    baselines: Sequence[str] = (),
) -> int:
    """k-means in SAE space; each cluster labelled by its most distinctive features (named by
    their imported descriptions where the run has them, else their top tokens). With
    ``cfg.sweep`` the silhouette of each k is stored in the run's summary, and without ``cfg.k``
    the best k is used. ``baselines`` ("dense", "tfidf") clusters those representations with
    the same k and stores how each compares (silhouette, NMI/AMI against the dataset's tags)."""
    fr = need_feature_run(store, dataset, feature_run)
    ids, X = feature_matrix(store, fr)
    if cfg.k is not None:
        check_k(cfg.k, len(ids))
    sweep: list[dict[str, float]] | None = None
    ks: list[int] | None = None
    if cfg.sweep is not None:
        ks = auto_ks(len(ids)) if cfg.sweep == "auto" else list(cfg.sweep)
        for k_ in ks:
            check_k(k_, len(ids))
        sweep = sweep_k(X, ks, seed=cfg.seed, sample=cfg.sweep_sample, n_init=cfg.n_init)
    k = cfg.k or (best_k(sweep) if sweep else default_k(len(ids)))
    note = sweep_edge_note(sweep, k) if sweep and cfg.k is None else None
    res = kmeans_clusters(X, k=k, seed=cfg.seed, n_init=cfg.n_init)
    top = distinctive_features(X, res.labels, k=k, top_n=cfg.top_features)
    names = feature_labels(store, fr)
    evidence = None
    if baselines:
        evidence = cluster_evidence(
            store,
            dataset=dataset,
            feature_run=fr,
            labels=res.labels,
            k=k,
            seed=cfg.seed,
            baselines=baselines,
        )
    sizes = np.bincount(res.labels, minlength=k)
    clusters = pd.DataFrame(
        {
            "cluster": np.arange(k, dtype=np.int32),
            "size": sizes.astype(np.int64),
            "label": [cluster_label(t, names) for t in top],
            "top_features": [
                json.dumps(
                    [{"feature": f, "score": round(s, 6), "tokens": names.get(f, "")} for f, s in t]
                )
                for t in top
            ],
        }
    )
    return store.add_run(
        RunRecord(
            "cluster",
            dataset,
            {**asdict(cfg), "k": k, "sweep": ks, "feature_run": fr},
            versions(),
            {
                "k": k,
                "inertia": res.inertia,
                "sizes": sizes.tolist(),
                # cosine distances between centroids: which clusters lend rows to a batch first
                "centroid_distances": np.round(cluster_distances(res.centroids), 6).tolist(),
                **({"sweep": sweep} if sweep is not None else {}),
                **({"sweep_note": note} if note else {}),
                **({"baselines": evidence} if evidence is not None else {}),
            },
            parent_run=fr,
        ),
        assignments=pa.table({"example_id": ids, "cluster": pa.array(res.labels, pa.int32())}),
        clusters=clusters,
    )


def dedup(
    store: Store, *, dataset: str, threshold: float = 0.95, feature_run: int | None = None
) -> int:
    """Near-duplicate groups in SAE space (cosine >= threshold); the member with the lowest
    ingest index represents its group, the others are marked ``is_duplicate`` in the wide view."""
    fr = need_feature_run(store, dataset, feature_run)
    ids, X = feature_matrix(store, fr)  # ingest order, so a group's first row is its lowest idx
    group = near_duplicate_groups(X, threshold=threshold)
    members = np.flatnonzero(group >= 0)
    _, first = np.unique(group[members], return_index=True)
    is_rep = np.zeros(len(members), dtype=bool)
    is_rep[first] = True
    n_groups = int(group.max() + 1) if len(members) else 0
    return store.add_run(
        RunRecord(
            "dedup",
            dataset,
            {"threshold": threshold, "feature_run": fr},
            versions(),
            {
                "n_groups": n_groups,
                "n_in_groups": len(members),
                "n_duplicates": len(members) - n_groups,
            },
            parent_run=fr,
        ),
        groups=pa.table(
            {
                "example_id": pa.array([ids[i] for i in members], pa.string()),
                "group_id": pa.array(group[members], pa.int64()),
                "is_representative": pa.array(is_rep, pa.bool_()),
            }
        ),
    )


def project(
    store: Store, *, dataset: str, cfg: ProjectConfig, feature_run: int | None = None
) -> int:
    """UMAP of the SAE vectors to 2-D, stored as (example_id, x, y)."""
    fr = need_feature_run(store, dataset, feature_run)
    ids, X = feature_matrix(store, fr)
    t0 = time.perf_counter()
    xy = umap_2d(X, cfg)
    return store.add_run(
        RunRecord(
            "project",
            dataset,
            {**asdict(cfg), "feature_run": fr},
            versions(),
            {"n": len(ids), "seconds": round(time.perf_counter() - t0, 1)},
            parent_run=fr,
        ),
        points=pa.table({"example_id": ids, "x": pa.array(xy[:, 0]), "y": pa.array(xy[:, 1])}),
    )


def cluster_evidence(
    store: Store,
    *,
    dataset: str,
    feature_run: int,
    labels: np.ndarray,
    k: int,
    seed: int = 0,
    baselines: Sequence[str] = BASELINES,
) -> dict[str, Any]:
    """The SAE clustering judged beside the same k-means on each baseline: silhouette in each
    space, and NMI/AMI against every categorical tag of the dataset (e.g. the task family)."""
    ids, reps, missing = representations(
        store, dataset=dataset, feature_run=feature_run, baselines=baselines
    )
    categories = category_columns(store, dataset, ids)
    compared = compare_clusterings(
        reps, k=k, seed=seed, categories=categories, labels={"sae": labels}
    )
    return {
        **compared,
        **{name: {"missing": why} for name, why in missing.items()},
        "categories": sorted(categories),
    }


def category_columns(store: Store, dataset: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The dataset's string tags with 2..MAX_CATEGORY_VALUES values, aligned to ``ids``."""
    tags = store.tag_values(dataset, max_values=MAX_CATEGORY_VALUES)
    if tags.empty:
        return {}
    counts = tags.dropna(subset=["value"]).groupby("name")["value"].nunique()
    names = [str(n) for n, c in counts.to_dict().items() if int(c) >= 2]
    if not names:
        return {}
    views = Views(None, None, None)
    wide = store.wide(dataset, views=views, columns=["id", *names]).to_pandas().set_index("id")
    wide = wide.reindex(list(ids))
    return {n: wide[n].to_numpy(dtype=object) for n in names}
