"""Signal steps: the difficulty and quality probes, rollouts, and the baselines they are judged
against. Each reads the store, computes with the pure modules (core.probes, core.rollouts), and
commits one run, so the CLI and the app share them.

    >>> run = probe(store, dataset="demo", signal="difficulty", label="difficulty")
    >>> store.views("demo").score_runs   # (("difficulty_proxy", run),): a wide-view column now
    >>> ingest_rollouts(store, dataset="demo", path="rollouts.jsonl")  # pass_rate, pass_at_k ...

A probe run stores one score per example (column ``<label>_proxy``): for a labelled example its
out-of-fold prediction (from a model that never saw its label), for an unlabelled one the final
model's (fit on every label). The final model's prediction for a row it was fit on is never
stored: it can recite the label it memorised (AUC 1.0 in sample against 0.65 out of fold), so a
histogram, a threshold or an export rule on it would be judged on memorised labels. The run's
summary says so (``"labelled_scores": "out_of_fold"``) and holds the evidence (cross-validated,
in distribution and held out by cluster) for the SAE features and, in the same run, for the
baselines: the dense mean-pooled hidden state of the same layer (when featurize stored it with
``--dense``) and TF-IDF of the text. A 0/1 quality label names its classes (bad, good) so
precision and average precision are reported for the bad rows a filter removes, beside their
base rate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import StudioError
from core.probes import (
    ProbeConfig,
    ProbeKind,
    compare_clusterings,
    compare_probes,
    fit_probe,
    tfidf_matrix,
)
from core.store import Store, Views

Signal = Literal["difficulty", "quality"]
SIGNALS: tuple[Signal, ...] = ("difficulty", "quality")
BASELINES = ("dense", "tfidf")
# Shown beside each baseline's numbers in the app and the CLI.
REPRESENTATION_NAMES = {
    "sae": "SAE features",
    "dense": "dense hidden state (mean-pooled, same layer)",
    "tfidf": "TF-IDF of the text",
}
NO_DENSE = "not stored: featurize with --dense to compare against the dense hidden state"
# A categorical tag is used to judge clusterings only when it has between 2 and this many values.
MAX_CATEGORY_VALUES = 50


def _feature_run(store: Store, dataset: str, feature_run: int | None) -> int:
    from core.steps import _need_feature_run

    return _need_feature_run(store, dataset, feature_run)


def representations(
    store: Store,
    *,
    dataset: str,
    feature_run: int,
    baselines: Sequence[str] = BASELINES,
) -> tuple[list[str], dict[str, Any], dict[str, str]]:
    """(example ids, {name: matrix} aligned to those ids, {name: why it is missing}).

    ``sae`` is always there (the feature run's pooled top-k vectors); ``dense`` only when the
    run stored it; ``tfidf`` is computed here from the examples' text.
    """
    from core.steps import feature_matrix

    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise StudioError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    ids, X = feature_matrix(store, feature_run)
    if not ids:
        raise StudioError(f"feature run {feature_run} has no stored features")
    reps: dict[str, Any] = {"sae": X}
    missing: dict[str, str] = {}
    if "dense" in baselines:
        got = store.dense_vectors(feature_run)
        if got is None:
            missing["dense"] = NO_DENSE
        else:
            pos = {eid: i for i, eid in enumerate(got[0])}
            if any(eid not in pos for eid in ids):
                missing["dense"] = "stored for only some examples of the run"
            else:
                reps["dense"] = got[1][[pos[eid] for eid in ids]]
    if "tfidf" in baselines:
        texts = store.example_texts(dataset)
        by_id = dict(
            zip(texts.column("id").to_pylist(), texts.column("text").to_pylist(), strict=True)
        )
        reps["tfidf"] = tfidf_matrix([by_id[eid] for eid in ids])
    return ids, reps, missing


def _column(store: Store, dataset: str, views: Views, name: str, ids: Sequence[str]) -> np.ndarray:
    """A numeric wide-view column aligned to ``ids`` (NaN where missing)."""
    tbl = store.wide(dataset, views=views, columns=["id", name]).to_pandas()
    values = pd.to_numeric(tbl[name], errors="coerce").astype("float64")
    s = pd.Series(values.to_numpy(), index=tbl["id"])
    return s.reindex(list(ids)).to_numpy(dtype=np.float64)


def _clusters(store: Store, dataset: str, views: Views, ids: Sequence[str]) -> np.ndarray | None:
    if views.cluster_run is None:
        return None
    c = _column(store, dataset, views, "cluster", ids)
    return None if np.isnan(c).any() else c.astype(np.int64)


# What the pages and the CLI say about where a probe's scores come from.
SCORE_SOURCE = (
    "Scores of labelled rows are out-of-fold predictions (from a model that never saw their "
    "label); unlabelled rows are scored by the model fit on all labels."
)
SCORE_SOURCE_OLD = (
    "This run predates out-of-fold storage: its labelled rows carry the final model's in-sample "
    "prediction, which can recite their labels. Rerun the probe for honest scores."
)


def default_kind(signal: Signal, y: np.ndarray) -> tuple[ProbeKind, str | None]:
    """ElasticNet for difficulty; logistic for a 0/1 quality label, ridge for a quality score.
    The second item is one line when a quality label is not 0/1 and ridge is chosen: a user who
    meant a good/bad flag learns it was read as a score (and why)."""
    if signal == "difficulty":
        return "elasticnet", None
    seen = np.unique(y[~np.isnan(y)])
    if len(seen) and set(seen.tolist()) <= {0.0, 1.0}:
        return "logistic", None
    shown = ", ".join(f"{v:g}" for v in seen[:5]) + (", ..." if len(seen) > 5 else "")
    return "ridge", (
        f"label values are not 0/1 ({len(seen)} distinct: {shown}), so a ridge regression of "
        "the score was fit instead of a logistic probe of good/bad; pass --kind to choose"
    )


def score_source(summary: Mapping[str, Any]) -> str:
    """One sentence on where a probe run's stored scores come from (older runs stored in-sample
    scores for labelled rows, and are named as such)."""
    if summary.get("labelled_scores") == "out_of_fold":
        return SCORE_SOURCE
    return SCORE_SOURCE_OLD


def quality_classes(higher_is: str) -> dict[str, str]:
    """Names of a 0/1 quality label's values (``{"0": "bad", "1": "good"}`` when higher is
    better): the bad class is the one a quality filter removes."""
    return {"0": "good", "1": "bad"} if higher_is == "worse" else {"0": "bad", "1": "good"}


def bad_value(summary: Mapping[str, Any]) -> float:
    """The label value of the bad class of a logistic quality run (0 unless higher is worse)."""
    classes = summary.get("classes") or {}
    return next((float(v) for v, n in classes.items() if n == "bad"), 0.0)


def _check_name(store: Store, dataset: str, *, name: str, signal: Signal) -> None:
    """A score name belongs to the probe signal that first stored it: the wide view keeps the
    newest probe run per name, so a quality probe called ``difficulty_proxy`` would silently
    replace the difficulty probe's column (and be read as difficulty by exports and bands)."""
    runs = store.list_runs(dataset=dataset, step="probe")
    for run in runs[runs["status"] == "done"].to_dict("records"):
        cfg = run["config"]
        other = cfg.get("signal")
        if cfg.get("name") == name and other is not None and other != signal:
            raise StudioError(
                f"score name '{name}' belongs to the {other} probe (run {int(run['run_id'])}) "
                f"of '{dataset}'; pick --name"
            )


def probe(
    store: Store,
    *,
    dataset: str,
    signal: Signal,
    label: str,
    kind: ProbeKind | None = None,
    name: str | None = None,
    higher_is: Literal["harder", "easier", "better", "worse"] | None = None,
    folds: int = 5,
    seed: int = 0,
    min_labels: int = 20,
    value_range: tuple[float, float] | None = None,
    baselines: Sequence[str] = BASELINES,
    feature_run: int | None = None,
) -> int:
    """Train a probe on SAE features to predict ``label`` where it is known, score every
    example (labelled ones out of fold, see the module docstring), and store the evidence (with
    the same probe on each baseline). Returns the run id.

    Everything is checked (label present, enough labels, not all equal, in range, the score
    name free or already this signal's) before anything is written; a failed check stores
    nothing. When ``kind`` is not given and a quality label is not 0/1, the summary's
    ``kind_note`` says ridge was chosen and why.
    """
    if signal not in SIGNALS:
        raise StudioError(f"unknown signal {signal!r}; choose from {', '.join(SIGNALS)}")
    fr = _feature_run(store, dataset, feature_run)
    views = store.views(dataset, feature_run=fr)
    labels = store.label_names(dataset)
    if label not in labels:
        raise StudioError(
            f"dataset '{dataset}' has no label '{label}'; its labels: "
            f"{', '.join(labels) or '(none)'}"
        )
    name = name or f"{label}_proxy"
    if name in labels:
        raise StudioError(f"score name '{name}' is already a label of '{dataset}': pick --name")
    _check_name(store, dataset, name=name, signal=signal)
    if higher_is is None:
        easier = signal == "difficulty" and label.lower().startswith("pass")
        higher_is = ("easier" if easier else "harder") if signal == "difficulty" else "better"
    t0 = time.perf_counter()
    ids, reps, missing = representations(
        store, dataset=dataset, feature_run=fr, baselines=baselines
    )
    y = _column(store, dataset, views, label, ids)
    kind_note = None
    if kind is None:
        kind, kind_note = default_kind(signal, y)
    cfg = ProbeConfig(
        kind=kind, folds=folds, seed=seed, min_labels=min_labels, value_range=value_range
    )
    groups = _clusters(store, dataset, views, ids)
    sae = reps.pop("sae")
    res = fit_probe(sae, y, cfg=cfg, name=label, groups=groups)
    fit_s = time.perf_counter() - t0
    # the same probe on each baseline (labels already checked above)
    compared = compare_probes(reps, y, cfg=cfg, name=label, groups=groups)
    from core.steps import feature_labels, versions

    names = feature_labels(store, fr)
    # Labelled rows are stored out of fold; one whose fold was skipped has no honest score and
    # is left out (NULL in the wide view) rather than given the final model's in-sample one.
    stored = ~np.isnan(res.scores)
    summary: dict[str, Any] = {
        "label": label,
        "kind": kind,
        "kind_note": kind_note,
        "n_examples": len(ids),
        "n_labelled": res.n_labelled,
        "labelled_scores": "out_of_fold",
        "n_unscored": int((~stored).sum()),
        "metrics": res.metrics,
        "params": res.params,
        "weights": [
            {"feature": int(f), "coef": float(c), "name": names.get(int(f), "")}
            for f, c in res.weights
        ],
        "baselines": {
            **{k: {**v} for k, v in compared.items()},
            **{k: {"missing": why} for k, why in missing.items()},
        },
        "held_out_by": "cluster" if groups is not None else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "seconds_sae": round(fit_s, 1),
    }
    if kind == "logistic" and signal == "quality":
        summary["classes"] = quality_classes(higher_is)
    config = {
        "signal": signal,
        "label": label,
        "name": name,
        "higher_is": higher_is,
        "feature_run": fr,
        "cluster_run": views.cluster_run,
        **asdict(cfg),
        "baselines": list(baselines),
    }
    kept = np.flatnonzero(stored)
    scores = pa.table(
        {
            "example_id": pa.array([ids[i] for i in kept], pa.string()),
            "value": pa.array(res.scores[kept], pa.float64()),
            "oof": pa.array(res.oof[kept], pa.float64(), mask=np.isnan(res.oof[kept])),
        }
    )
    return store.add_probe_run(
        dataset=dataset,
        feature_run=fr,
        config=config,
        versions=versions(),
        summary=summary,
        scores=scores,
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


def ingest_rollouts(
    store: Store,
    *,
    dataset: str,
    path: str | Path,
    ks: Sequence[int] = (1, 4, 8),
    threshold: float | None = None,
    id_field: str = "id",
    source: str | None = None,
) -> dict[str, Any]:
    """Read rollout results, check every id belongs to the dataset, and replace the dataset's
    rollouts and their labels (n_rollouts, pass_rate, pass_at_k, zero_signal) in one
    transaction. Returns the summary."""
    from core.rollouts import read_rollouts, rollout_labels, rollout_summary
    from core.steps import versions

    store.dataset(dataset)
    path = Path(path)
    rollouts = read_rollouts(path, id_field=id_field, threshold=threshold)
    known = set(store.example_texts(dataset).column("id").to_pylist())
    rids = rollouts.column("example_id").to_pylist()
    unknown = [i for i in dict.fromkeys(rids) if i not in known]
    if unknown:
        raise StudioError(
            f"{path.name}: {len(unknown)} rollout ids are not examples of '{dataset}' "
            f"(first: '{unknown[0]}')"
        )
    labels = rollout_labels(rollouts, ks=ks)
    summary = rollout_summary(rollouts)
    summary["n_examples_without"] = len(known) - summary["n_prompts"]
    store.write_rollouts(
        dataset=dataset,
        rollouts=rollouts,
        labels=labels,
        config={
            "path": str(path.resolve()),
            "ks": list(ks),
            "threshold": threshold,
            "id_field": id_field,
            "source": source or str(path.name),
        },
        versions=versions(),
        summary=summary,
    )
    return summary


# --- what the pages show --------------------------------------------------------------------
def evidence_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per representation (SAE first) with its in-distribution and held-out-by-cluster
    metrics, from a probe run's summary. For a 0/1 quality label the average precision is the
    bad class's (what a filter removes), each beside that class's base rate (a random
    ranking's AP): ``AP of bad (in distribution)``, ``bad base rate (in distribution)``."""
    metric_names = _metric_names(summary)
    rows = [_evidence_row("sae", {"metrics": summary.get("metrics", {})}, metric_names)]
    for rep, val in summary.get("baselines", {}).items():
        rows.append(_evidence_row(rep, val, metric_names))
    return pd.DataFrame(rows)


def _metric_names(summary: Mapping[str, Any]) -> dict[str, str]:
    """Metric key -> column name. With named classes only the bad class's AP and base rate are
    shown (the good class's stay in the summary); without, each class by its label value. Runs
    stored before per-class metrics had ``average_precision`` and ``positive_rate`` of label 1."""
    classes: Mapping[str, str] = summary.get("classes") or {}
    names = {
        "auc": "auc",
        "r2": "r2",
        "spearman": "spearman",
        "average_precision": "AP of label 1",
        "positive_rate": "label 1 base rate",
    }
    for value in ("0", "1"):
        who = classes.get(value)
        if classes and who != "bad":
            continue
        who = who or f"label {value}"
        names[f"average_precision_{value}"] = f"AP of {who}"
        names[f"base_rate_{value}"] = f"{who} base rate"
    return names


def _evidence_row(
    rep: str, val: Mapping[str, Any], metric_names: Mapping[str, str]
) -> dict[str, Any]:
    row: dict[str, Any] = {"representation": REPRESENTATION_NAMES.get(rep, rep)}
    if "missing" in val:
        row["note"] = val["missing"]
        return row
    metrics = val.get("metrics", val)
    for split in ("in_distribution", "by_cluster"):
        for key, value in (metrics.get(split) or {}).items():
            if key in metric_names:
                row[f"{metric_names[key]} ({split.replace('_', ' ')})"] = value
    return row


def class_line(summary: Mapping[str, Any]) -> str | None:
    """One line naming a 0/1 quality run's bad class with its count and base rate, e.g. "bad
    rows: label 0, 45 of 1,530 labelled (base rate 0.029)"; None for other runs."""
    ind = (summary.get("metrics") or {}).get("in_distribution") or {}
    if not summary.get("classes"):
        return None
    bad = bad_value(summary)
    rate = ind.get(f"base_rate_{bad:g}")
    n = ind.get("n")
    if rate is None or not n:
        return None
    return (
        f"bad rows: label {bad:g}, {round(rate * n):,} of {n:,} labelled (base rate {rate:.3f}); "
        "AP of bad is read against it"
    )


def clustering_table(evidence: Mapping[str, Any]) -> pd.DataFrame:
    """One row per representation from a cluster run's ``baselines`` summary."""
    rows = []
    for rep in ("sae", *BASELINES):
        val = evidence.get(rep)
        if val is None:
            continue
        row: dict[str, Any] = {"representation": REPRESENTATION_NAMES.get(rep, rep)}
        if "missing" in val:
            row["note"] = val["missing"]
        else:
            row["silhouette (own space)"] = val.get("silhouette")
            for cat, m in (val.get("categories") or {}).items():
                row[f"NMI vs {cat}"] = m.get("nmi")
                row[f"AMI vs {cat}"] = m.get("ami")
        rows.append(row)
    return pd.DataFrame(rows)


def threshold_report(
    scores: np.ndarray,
    *,
    threshold: float,
    labels: np.ndarray | None = None,
    bad: float = 0.0,
    remove_above: bool = False,
) -> dict[str, Any]:
    """What a quality threshold removes: rows with score < threshold (> threshold with
    ``remove_above``, when a higher score is worse). Where 0/1 labels are known (``bad`` is the
    bad class's value), how many removed rows are labelled bad (precision), what share of the
    bad rows is removed (recall), and the bad rows' share of the labelled ones (base rate: the
    precision of removing rows at random). Rows without a score (NaN) are never removed."""
    scores = np.asarray(scores, dtype=np.float64)
    removed = scores > threshold if remove_above else scores < threshold
    out: dict[str, Any] = {
        "n": len(scores),
        "n_removed": int(removed.sum()),
        "share_removed": float(removed.mean()) if len(scores) else 0.0,
    }
    if labels is not None:
        y = np.asarray(labels, dtype=np.float64)
        known = ~np.isnan(y)
        is_bad = known & (y == bad)
        n_removed_known = int((removed & known).sum())
        out["n_labelled"] = int(known.sum())
        out["precision"] = (
            float((removed & is_bad).sum() / n_removed_known) if n_removed_known else None
        )
        out["recall"] = float((removed & is_bad).sum() / is_bad.sum()) if is_bad.any() else None
        out["base_rate"] = float(is_bad.sum() / known.sum()) if known.any() else None
    return out
