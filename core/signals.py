"""The signals the probes learn (difficulty, quality, and the next ones) and what is said about
their runs: a registry of each signal's probe kinds, label directions, defaults and help, which
the CLI's command of that name, the probe step and the pages read; and the pure readers of a probe
run's summary (where its scores come from, its evidence table, its classes, threshold reports).

A probe run (core.steps.probes.probe) stores one score per example (column ``<label>_proxy``): for
a labelled example its out-of-fold prediction (from a model that never saw its label), for an
unlabelled one the final model's (fit on every label). The final model's prediction for a row it
was fit on is never stored: it can recite the label it memorised (AUC 1.0 in sample against 0.65
out of fold), so a histogram, a threshold or an export rule on it would be judged on memorised
labels. The run's summary says so (``"labelled_scores": "out_of_fold"``) and holds the evidence
(cross-validated, in distribution and held out by cluster) for the SAE features and, in the same
run, for the baselines: the dense mean-pooled hidden state of the same layer (when featurize stored
it with ``--dense``) and TF-IDF of the text. A 0/1 quality label names its classes (bad, good) so
precision and average precision are reported for the bad rows a filter removes, beside their base
rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from core.probes import ProbeKind
from core.signal_registry import Signal

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
