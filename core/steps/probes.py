"""The signal probes: fit a difficulty or quality probe on a labelled signal over the SAE features
(with dense and TF-IDF baselines) and store its out-of-fold scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import StudioError
from core.probes import (
    ProbeConfig,
    ProbeKind,
    compare_probes,
    fit_probe,
    tfidf_matrix,
)
from core.signal_registry import REGISTRY, SIGNALS, Signal
from core.signals import BASELINES, NO_DENSE, default_kind, quality_classes
from core.steps.base import feature_labels, feature_matrix, need_feature_run, versions
from core.store import RunRecord, Store, Views


def _feature_run(store: Store, dataset: str, feature_run: int | None) -> int:

    return need_feature_run(store, dataset, feature_run)


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


HigherIs = Literal["harder", "easier", "better", "worse"]


@dataclass(frozen=True)
class ProbeRequest:
    """Options of a signal probe on a dataset, checked on construction; the fitting options'
    defaults are ``core.probes.ProbeConfig``'s, written there once.

    ``label``: the labelled column to learn; ``kind`` None: by signal and label
    (``core.signals.default_kind``); ``name``: the score column (default LABEL_proxy);
    ``higher_is`` None: easier for a difficulty label named pass*, else harder, or better;
    ``baselines``: the same probe on these representations; ``feature_run`` None: the
    dataset's latest. Example: ``ProbeRequest("demo", "quality", "quality", folds=3)``.
    """

    dataset: str
    signal: Signal
    label: str
    kind: ProbeKind | None = None
    name: str | None = None
    higher_is: HigherIs | None = None
    folds: int = ProbeConfig.folds
    seed: int = ProbeConfig.seed
    min_labels: int = ProbeConfig.min_labels
    value_range: tuple[float, float] | None = None
    baselines: Sequence[str] = BASELINES
    feature_run: int | None = None

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise StudioError(f"unknown signal {self.signal!r}; choose from {', '.join(SIGNALS)}")
        directions = REGISTRY[self.signal].directions
        if self.higher_is is not None and self.higher_is not in directions:
            raise StudioError(
                f"higher_is must be one of {', '.join(directions)} for the {self.signal} "
                f"probe, got {self.higher_is!r} (--higher)"
            )
        self.fit_config(self.kind or "ridge")  # folds, seed, min_labels, value_range

    def fit_config(self, kind: ProbeKind) -> ProbeConfig:
        """The fitting options, for ``kind`` (the one asked for, else the label's default)."""
        return ProbeConfig(
            kind=kind,
            folds=self.folds,
            seed=self.seed,
            min_labels=self.min_labels,
            value_range=self.value_range,
        )


def probe(store: Store, request: ProbeRequest) -> int:
    """Train a probe on SAE features to predict ``request.label`` where it is known, score every
    example (labelled ones out of fold, see the module docstring), and store the evidence (with
    the same probe on each baseline). Returns the run id.

    Everything is checked (label present, enough labels, not all equal, in range, the score
    name free or already this signal's) before anything is written; a failed check stores
    nothing. When ``request.kind`` is not given and a quality label is not 0/1, the summary's
    ``kind_note`` says ridge was chosen and why.
    """
    dataset, signal, label, baselines = (
        request.dataset,
        request.signal,
        request.label,
        request.baselines,
    )
    higher_is, kind = request.higher_is, request.kind
    fr = _feature_run(store, dataset, request.feature_run)
    views = store.views(dataset, feature_run=fr)
    labels = store.label_names(dataset)
    if label not in labels:
        raise StudioError(
            f"dataset '{dataset}' has no label '{label}'; its labels: "
            f"{', '.join(labels) or '(none)'}"
        )
    name = request.name or f"{label}_proxy"
    if name in labels:
        raise StudioError(f"score name '{name}' is already a label of '{dataset}': pick --name")
    _check_name(store, dataset, name=name, signal=signal)
    if higher_is is None:
        higher_is = REGISTRY[signal].default_direction(label)  # type: ignore[assignment]
    t0 = time.perf_counter()
    ids, reps, missing = representations(
        store, dataset=dataset, feature_run=fr, baselines=baselines
    )
    y = _column(store, dataset, views, label, ids)
    kind_note = None
    if kind is None:
        kind, kind_note = default_kind(signal, y)
    cfg = request.fit_config(kind)
    groups = _clusters(store, dataset, views, ids)
    sae = reps.pop("sae")
    res = fit_probe(sae, y, cfg=cfg, name=label, groups=groups)
    fit_s = time.perf_counter() - t0
    # the same probe on each baseline (labels already checked above)
    compared = compare_probes(reps, y, cfg=cfg, name=label, groups=groups)

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
    return store.add_run(
        RunRecord("probe", dataset, config, versions(), summary, parent_run=fr), scores=scores
    )
