"""The judge step: how well each reward source orders chosen over rejected responses, per category,
by margin and (ordinal RMs) calibration, read from the store; the CLI's `judge` and the Rewards page
call it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, get_args

import numpy as np
import pandas as pd

from core import rewards
from core.errors import StudioError
from core.reward_models import CALIBRATION_RESPONSES, NO_LOGITS
from core.rewards import RESPONSE_CLUSTER
from core.store import RESPONSES_SUFFIX, Store, Views


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """A frame cell as plain Python for JSON: numpy scalars unwrapped, NaN/NA as None."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if _missing(value) else value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {str(k): _plain(v) for k, v in row.items()}
        for row in frame.astype(object).to_dict("records")
    ]


def category_values(store: Store, *, dataset: str, columns: Sequence[str]) -> pd.DataFrame:
    """One row per example of ``dataset`` (index ``example_id``), one column per name in
    ``columns``: a numeric label, a string tag, or ``cluster`` (the latest cluster run's
    assignment). A name that is none of these is a one-line error listing what exists.
    ``response_cluster`` is per response, not per example: it is skipped here (see
    :func:`response_clusters`)."""

    labels, tags = store.label_names(dataset), store.tag_names(dataset)
    cluster_run = store.latest_run(dataset=dataset, step="cluster")
    columns = [c for c in columns if c != RESPONSE_CLUSTER]
    for col in columns:
        if col == "cluster" and cluster_run is None:
            raise StudioError(
                f"--by cluster: dataset '{dataset}' has no cluster run yet (run `python -m core "
                f"cluster --dataset {dataset}`); labels: {', '.join(labels) or 'none'}; tags: "
                f"{', '.join(tags) or 'none'}"
            )
        if col != "cluster" and col not in labels and col not in tags:
            resp = dataset + RESPONSES_SUFFIX
            has_resp = store.has_dataset(resp) and store.latest_run(dataset=resp, step="cluster")
            raise StudioError(
                f"--by {col}: dataset '{dataset}' has no label, tag or cluster of that name; "
                f"labels: {', '.join(labels) or 'none'}; tags: {', '.join(tags) or 'none'}; "
                f"cluster: {'yes' if cluster_run is not None else 'none (no cluster run)'}; "
                f"{RESPONSE_CLUSTER}: {'yes' if has_resp else 'none (no clustered responses)'}"
            )
    cols = list(dict.fromkeys(columns))
    views = Views(None, cluster_run, None)
    wide = store.wide(dataset, views=views, columns=["id", *cols]).to_pandas()
    return wide.set_index("id").rename_axis("example_id")[cols]


def response_clusters(store: Store, *, dataset: str) -> pd.Series:
    """Each response's cluster, indexed by (example_id, response_idx), from the latest cluster
    run of the preference set's responses dataset (``python -m core responses``)."""

    resp = dataset + RESPONSES_SUFFIX
    run = store.latest_run(dataset=resp, step="cluster") if store.has_dataset(resp) else None
    if run is None:
        raise StudioError(
            f"--by {RESPONSE_CLUSTER}: '{resp}' has no cluster run (run `python -m core "
            f"responses --dataset {dataset}`, featurize and cluster '{resp}')"
        )
    keys = store.response_keys(resp).to_pandas()
    wide = store.wide(resp, views=Views(None, run, None), columns=["id", "cluster"]).to_pandas()
    keys = keys.merge(wide, on="id", how="left")
    return keys.set_index(["example_id", "response_idx"])["cluster"]


def _has_logits(frame: pd.DataFrame) -> bool:
    """Whether every stored score of a reward run has its logits (an ordinal head's)."""
    return bool(len(frame)) and not bool(frame["logits"].isna().any())


def _calibrate(
    frame: pd.DataFrame, labels: pd.Series, *, name: str, label: str, n_bins: int
) -> dict[str, Any]:
    """Calibration of one reward source's stored scores (a ``reward_scores`` frame) against
    ``labels`` (example_id -> value, unlabelled examples left out)."""

    if not _has_logits(frame):
        raise StudioError(f"reward '{name}' has {NO_LOGITS}")
    matched = frame[frame["response_idx"].isin(CALIBRATION_RESPONSES)]
    value = matched["example_id"].map(labels)
    n_unlabelled = int(value.isna().sum())
    matched, value = matched[value.notna()], value[value.notna()]
    if matched.empty:
        raise StudioError(
            f"reward '{name}': no scored response carries the label '{label}' (only a chat's "
            "response or a preference set's chosen response is matched to its example's label)"
        )
    cal = rewards.ordinal_calibration(
        np.stack([np.asarray(z, dtype=np.float64) for z in matched["logits"]]),
        value.to_numpy(np.float64),
        ids=matched["example_id"].tolist(),
        n_bins=n_bins,
    )
    out = cal.to_dict()
    out.update(
        label=label,
        n_unlabelled=n_unlabelled,
        n_other_responses=len(frame) - len(matched) - n_unlabelled,
    )
    return out


def _label_series(store: Store, dataset: str, label: str) -> pd.Series:
    names = store.label_names(dataset)
    if label not in names:
        raise StudioError(
            f"dataset '{dataset}' has no label '{label}'; labels: {', '.join(names) or 'none'}"
        )
    tbl = store.labels(dataset, label).to_pandas().dropna(subset=["value"])
    return tbl.set_index("example_id")["value"]


def calibration(
    store: Store, *, dataset: str, name: str, label: str, n_bins: int = 10
) -> dict[str, Any]:
    """How well the ordinal reward run ``name`` is calibrated against the feedback label
    ``label`` (integers 1..K, WildReward's ratings): top-label ``ece``, the reliability
    ``table`` (one dict per confidence bin), ``n``, ``k``, ``label_counts``,
    ``predicted_counts``, ``accuracy`` (the most likely class is the label), ``mean_label``,
    ``mean_reward``; ``n_unlabelled`` (matched responses without the label) and
    ``n_other_responses`` (not matched, see below).

    The label belongs to an example, so each example contributes one response: its chat
    response (response_idx -1) or its chosen response (0); rejected responses are left out.
    A run without logits (a scalar head, imported scores) is refused, and so is a label
    outside 1..K (naming the example), in one line each."""
    frames = store.reward_frames(dataset, [name])
    labels = _label_series(store, dataset, label)
    out = _calibrate(frames[name], labels, name=name, label=label, n_bins=n_bins)
    return {"name": name, "run_id": store.reward_runs(dataset)[name], **out}


@dataclass(frozen=True)
class JudgeRequest:
    """What to judge on ``dataset``, checked on construction: the reward sources ``names``
    (None: all), accuracies per value of each ``by`` column read on ``side``, the margin curve
    at ``margins``, and the calibration of ordinal sources against ``calibration_label`` in
    ``n_bins`` confidence bins. The CLI's judge and the Rewards page build the same request.
    ``headline`` False leaves out each source's pairwise and 1-of-N accuracies (their bootstraps
    cost ~47 CPU-s at 1M prompts): the page reads them once and then asks for a per-category
    table or a margin curve alone."""

    dataset: str
    names: Sequence[str] | None = None
    by: Sequence[str] = ()
    side: str = "example"
    margins: Sequence[float] | None = None
    calibration_label: str | None = None
    n_bins: int = 10
    headline: bool = True

    def __post_init__(self) -> None:
        if self.side not in get_args(rewards.Side):
            raise StudioError(
                f"side must be one of {list(get_args(rewards.Side))}, got {self.side!r} (--side)"
            )
        if self.n_bins < 1:
            raise StudioError(f"n_bins must be at least 1, got {self.n_bins} (--bins)")


def judge(store: Store, request: JudgeRequest) -> dict[str, Any]:
    """Every named reward source of a preference set judged on it (pairwise accuracy and
    StoryRMB 1-of-N, with chance and 95% intervals) and every two sources compared
    (Spearman, Kendall, pair agreement, best-of-n agreement): what `python -m core judge`
    prints.

    Optional, per source (``sources[name]``): ``by[column]``, the accuracies per value of each
    column in ``by`` (a label, a tag, ``cluster`` or ``response_cluster``;
    core.rewards.accuracy_by with ``side``, rows with ``value``); ``margins``, the margin curve (core.rewards.margin_curve);
    ``calibration``, the calibration against ``calibration_label`` (:func:`calibration`), or
    ``{"skipped": why}`` for a source without logits. Plain data throughout (NaN as None)."""

    kind = store.dataset(request.dataset)["kind"]  # an unknown dataset: one line naming the known
    frames = store.reward_frames(request.dataset, request.names)
    runs = store.reward_runs(request.dataset)
    names = list(frames)
    if (request.by or request.margins is not None) and kind != "preferences":
        what = "--by" if request.by else "--margins"
        raise StudioError(
            f"{what}: dataset '{request.dataset}' holds {kind}; accuracy per category and by margin "
            "need a preference set (a chosen and rejected responses)"
        )
    if not frames:
        raise StudioError(
            f"dataset '{request.dataset}' has no reward scores to judge: score it first with "
            "`reward`, `verify`, `import-rewards` or `reward-probe`"
        )
    values = (
        category_values(store, dataset=request.dataset, columns=request.by) if request.by else None
    )
    per_response = (
        response_clusters(store, dataset=request.dataset)
        if RESPONSE_CLUSTER in (request.by or ())
        else None
    )
    labels = (
        _label_series(store, request.dataset, request.calibration_label)
        if request.calibration_label is not None
        else None
    )
    out: dict[str, Any] = {"dataset": request.dataset, "sources": {}, "agreement": {}}
    if request.by:
        out["by_side"] = request.side
    for n, f in frames.items():
        row: dict[str, Any] = {"run_id": runs[n], "n_scores": len(f)}
        if kind == "preferences" and request.headline:
            row["pairwise"] = rewards.pairwise_accuracy(f).to_dict()
            row["one_of_n"] = rewards.one_of_n_accuracy(f).to_dict()
        if values is not None:
            base = f[["example_id", "response_idx", "role", "score"]]
            row["by"] = {}
            for col in request.by:
                if col == RESPONSE_CLUSTER:
                    assert per_response is not None
                    at = pd.MultiIndex.from_frame(base[["example_id", "response_idx"]])
                    value = per_response.reindex(at).to_numpy()
                else:
                    value = base["example_id"].map(values[col]).to_numpy()
                g = base.assign(value=value)
                table = rewards.accuracy_by(g, by="value", side=request.side)  # type: ignore[arg-type]
                row["by"][col] = _records(table)
        if request.margins is not None:
            row["margins"] = _records(rewards.margin_curve(f, margins=request.margins))
        if labels is not None:
            assert request.calibration_label is not None
            if not _has_logits(f):
                row["calibration"] = {"skipped": NO_LOGITS}
            else:
                row["calibration"] = _calibrate(
                    f, labels, name=n, label=request.calibration_label, n_bins=request.n_bins
                )
        out["sources"][n] = row
    # chats: one response per example, no chosen/rejected roles to pair by
    keep = ["example_id", "response_idx", "score", *(["role"] if kind == "preferences" else [])]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            agree = rewards.agreement(frames[a][keep], frames[b][keep])
            out["agreement"][f"{a} vs {b}"] = asdict(agree)
    return out
