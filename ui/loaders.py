"""Every read and write a page makes of the store, one cached wrapper per store read or core step.

A page calls these and never a Store: each loader opens a short read-only connection (or one
short write), keyed on the database's version token so a CLI command's new results show on the
next rerun, and calls one core function, the same one the CLI calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import streamlit as st

from core.export import ExportConfig, to_layout
from core.feature_info import search_features, with_labels
from core.filters import Filter
from core.rewards import (
    Accuracy,
    Agreement,
    agreement_by,
    best_of_n_picks,
    margin_grid,
    preference_pairs,
)
from core.rules import RemovalReport, RuleSet, load_rule_set
from core.steps.export import ExportRequest, export, export_columns, export_rows
from core.steps.judge import JudgeRequest, calibration, category_values, judge
from core.steps.probes import ProbeRequest, probe
from core.steps.rewards import disagreement_probe, preference_shift, reward_frame, reward_sources
from core.steps.rules import RemovedViewRequest, check_on_store, removed_view
from core.store import Store, Views
from ui.state import db_path

LOCK_TIMEOUT_S = 5.0  # how long a page waits for a CLI command's write lock before saying so


def _open(path: str) -> Store:
    """The store at ``path`` as a page opens it: short connections, a short wait for a lock."""
    return Store(path, lock_timeout_s=LOCK_TIMEOUT_S)


def store() -> Store:
    return _open(db_path())


def token() -> tuple[float, float]:
    return store().version_token()


@st.cache_data(show_spinner=False, max_entries=32)
def load_datasets(path: str, tok: tuple[float, float]) -> pd.DataFrame:
    s = _open(path)
    s.check_readable()
    return s.list_datasets()


@st.cache_data(show_spinner=False, max_entries=32)
def load_feature_runs(path: str, tok: tuple[float, float]) -> pd.DataFrame:
    return _open(path).feature_runs()


@st.cache_data(show_spinner=False, max_entries=32)
def load_runs(path: str, tok: tuple[float, float], dataset: str | None) -> pd.DataFrame:
    return _open(path).list_runs(dataset=dataset)


@st.cache_data(show_spinner=False, max_entries=32)
def load_views(path: str, tok: tuple[float, float], dataset: str) -> Views:
    return _open(path).views(dataset)


@st.cache_data(show_spinner="Loading the map…", max_entries=8)
def load_map(path: str, tok: tuple[float, float], dataset: str) -> pd.DataFrame:
    s = _open(path)
    return s.map_points(dataset, views=s.views(dataset))


@st.cache_data(show_spinner=False, max_entries=32)
def load_clusters(path: str, tok: tuple[float, float], cluster_run: int) -> pd.DataFrame:
    return _open(path).clusters(cluster_run)


@st.cache_data(show_spinner=False, max_entries=64)
def load_run(path: str, tok: tuple[float, float], run_id: int) -> dict[str, Any]:
    return _open(path).run(run_id)


@st.cache_data(show_spinner=False, max_entries=32)
def load_label_names(path: str, tok: tuple[float, float], dataset: str) -> list[str]:
    return _open(path).label_names(dataset)


@st.cache_data(show_spinner=False, max_entries=32)
def load_label_ranges(path: str, tok: tuple[float, float], dataset: str) -> pd.DataFrame:
    """Numeric labels and the latest probe scores, with their ranges (kind: label / score)."""
    s = _open(path)
    return s.label_ranges(dataset, views=s.views(dataset))


@st.cache_data(show_spinner="Counting…", max_entries=64)
def load_export_columns(
    path: str,
    tok: tuple[float, float],
    dataset: str,
    columns: tuple[str, ...],
    filters: tuple,
    ids: tuple | None,
    cfg: Any,
) -> pd.DataFrame:
    """core.steps.export_columns: the charted columns of the exported rows in written order
    (``cfg`` None: of every row), no text."""

    return export_columns(
        _open(path),
        dataset=dataset,
        columns=list(columns),
        filters=list(filters),
        ids=None if ids is None else list(ids),
        cfg=cfg,
    )


@st.cache_data(show_spinner="Preparing the preview…", max_entries=16)
def load_layout_preview(
    path: str,
    tok: tuple[float, float],
    dataset: str,
    filters: tuple,
    ids: tuple | None,
    cfg: Any,
    n: int = 100,
) -> pd.DataFrame:
    """The first ``n`` rows of the export in the chosen format's layout, as the file holds them."""
    import pyarrow as pa

    s = _open(path)
    rows, _ = export_rows(
        s,
        dataset=dataset,
        filters=list(filters),
        ids=None if ids is None else list(ids),
        cfg=cfg,
        limit=n,
    )
    kind = s.dataset(dataset)["kind"]
    table = pa.Table.from_pandas(rows, preserve_index=False)
    return to_layout(table, cfg.layout, kind=kind, data_source=dataset).to_pandas()


@st.cache_data(show_spinner=False, max_entries=32)
def load_tag_values(path: str, tok: tuple[float, float], dataset: str) -> pd.DataFrame:
    return _open(path).tag_values(dataset)


# --- the Features page ----------------------------------------------------------------------------
@st.cache_data(show_spinner="Reading the features…", max_entries=8)
def load_feature_table(path: str, tok: tuple[float, float], run_id: int) -> pd.DataFrame:
    """Every feature of a run with its statistics and label (description or top tokens)."""

    return with_labels(_open(path).feature_summary(run_id))


@st.cache_data(show_spinner=False, max_entries=64)
def load_feature_search(
    path: str, tok: tuple[float, float], run_id: int, query: str
) -> pd.DataFrame:

    return search_features(load_feature_table(path, tok, run_id), query)


@st.cache_data(show_spinner=False, max_entries=64)
def load_feature_detail(
    path: str, tok: tuple[float, float], run_id: int, feature_id: int, n_examples: int
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """(top examples by pooled value, pooled values in the stored top-k, top token occurrences)."""
    s = _open(path)
    return (
        s.feature_top_examples(run_id, feature_ids=[feature_id], per_feature=n_examples),
        s.feature_activations(run_id, feature_id),
        s.feature_tokens(run_id, feature_ids=[feature_id], with_text=True),
    )


@st.cache_data(show_spinner=False, max_entries=64)
def load_example_features(
    path: str, tok: tuple[float, float], run_id: int, example_ids: tuple[str, ...]
) -> pd.DataFrame:
    """The features of one example (or those shared by several), with their labels."""
    feats = _open(path).example_features(run_id, list(example_ids))
    table = load_feature_table(path, tok, run_id)[["feature_id", "label", "freq"]]
    return feats.merge(table, on="feature_id", how="left")


@st.cache_data(show_spinner=False, max_entries=64)
def load_example_search(
    path: str, tok: tuple[float, float], dataset: str, query: str
) -> pd.DataFrame:
    return _open(path).find_examples(dataset, query)


@st.cache_data(show_spinner=False, max_entries=64)
def load_example(path: str, tok: tuple[float, float], dataset: str, example_id: str) -> dict | None:
    """One example's row of the wide view (text, cluster, labels, tags), or None."""
    s = _open(path)
    rows = s.wide(dataset, views=s.views(dataset), ids=[example_id]).to_pylist()
    return rows[0] if rows else None


# --- the Clusters page ----------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def load_cluster_summary(path: str, tok: tuple[float, float], dataset: str) -> pd.DataFrame:
    """The latest clusters with size, label, top features, mean_<label> and n_duplicates."""
    s = _open(path)
    return s.cluster_summary(dataset, views=s.views(dataset))


@st.cache_data(show_spinner=False, max_entries=32)
def load_duplicate_groups(path: str, tok: tuple[float, float], dedup_run: int) -> pd.DataFrame:
    return _open(path).duplicate_groups(dedup_run)


@st.cache_data(show_spinner=False, max_entries=64)
def load_cluster_examples(
    path: str, tok: tuple[float, float], dataset: str, cluster: int
) -> pd.DataFrame:
    """The examples of one cluster (wide view, without text/extra/tags)."""

    s = _open(path)
    wide = s.wide(dataset, views=s.views(dataset), filters=[Filter("cluster", "=", cluster)])
    return wide.to_pandas().drop(columns=["text", "extra", "tags"])


# --- the Difficulty and Quality pages -------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def load_probe_runs(path: str, tok: tuple[float, float], dataset: str, signal: str) -> list[dict]:
    """Finished probe runs of one signal, newest first (config and summary parsed)."""
    runs = _open(path).list_runs(dataset=dataset, step="probe")
    runs = runs[runs["status"] == "done"]
    return [r for r in runs.to_dict("records") if r["config"].get("signal") == signal]


@st.cache_data(show_spinner="Reading the scores…", max_entries=16)
def load_probe_frame(
    path: str, tok: tuple[float, float], dataset: str, run_id: int
) -> pd.DataFrame:
    """id, prompt, cluster, the probe's label, its score (``score``) and out-of-fold score
    (``oof``, labelled rows only) for every example."""
    s = _open(path)
    run = s.run(run_id)
    label = run["config"]["label"]
    views = s.views(dataset, feature_run=run["config"]["feature_run"])
    wide = s.wide(dataset, views=views, columns=["id", "prompt", "cluster", label]).to_pandas()
    scores = s.probe_scores(run_id).rename(columns={"example_id": "id", "value": "score"})
    return wide.merge(scores, on="id", how="inner")


@st.cache_data(show_spinner=False, max_entries=16)
def load_rollout_view(
    path: str, tok: tuple[float, float], dataset: str
) -> tuple[dict | None, pd.DataFrame]:
    """(the latest rollouts run, the wide rows of the zero-signal prompts)."""

    s = _open(path)
    rid = s.latest_run(dataset=dataset, step="rollouts")
    if rid is None:
        return None, pd.DataFrame()
    views = s.views(dataset)
    cols = ["id", "prompt", "cluster", "pass_rate", "n_rollouts"]
    rows = s.wide(dataset, views=views, filters=[Filter("zero_signal", "=", 1)], columns=cols)
    return s.run(rid), rows.to_pandas()


# --- the Rewards page -----------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def load_reward_datasets(path: str, tok: tuple[float, float]) -> pd.DataFrame:
    """The datasets that have reward sources: name, kind, sources (their names)."""
    s = _open(path)
    s.check_readable()
    rows = []
    for name, kind in s.list_datasets()[["name", "kind"]].itertuples(index=False):
        runs = s.reward_runs(name)
        if runs:
            rows.append({"name": name, "kind": kind, "sources": list(runs)})
    return pd.DataFrame(rows, columns=["name", "kind", "sources"])


@st.cache_data(show_spinner=False, max_entries=32)
def load_reward_sources(path: str, tok: tuple[float, float], dataset: str) -> dict[str, dict]:
    """core.steps.reward_sources: name -> run_id, kind, source (as stored), config, summary."""

    return reward_sources(_open(path), dataset=dataset)


@st.cache_data(show_spinner="Reading the reward scores…", max_entries=16)
def load_reward_frame(path: str, tok: tuple[float, float], dataset: str) -> pd.DataFrame:
    """core.steps.reward_frame: one row per scored candidate, ``score:<name>`` per source, and
    the response's cluster, cluster_label, x, y on the responses map (NaN without one)."""

    return reward_frame(_open(path), dataset=dataset)


@st.cache_data(show_spinner=False, max_entries=64)
def load_reward_scores(
    path: str, tok: tuple[float, float], dataset: str, name: str
) -> pd.DataFrame:
    """One source's stored scores as core.rewards reads them: example_id, response_idx, role,
    score (chats: no role, as their one response per example forms no preference pair)."""
    s = _open(path)
    scores = s.reward_frames(dataset, [name])[name]
    cols = ["example_id", "response_idx", "role", "score"]
    if s.dataset(dataset)["kind"] != "preferences":
        cols.remove("role")
    return scores.loc[:, cols]


@st.cache_data(show_spinner=False, max_entries=32)
def load_best_of_n_picks(
    path: str, tok: tuple[float, float], dataset: str, a: str, b: str
) -> pd.DataFrame:
    """core.rewards.best_of_n_picks of sources a and b with the prompt and both picked
    responses' text, the prompts where the picks differ first."""

    picks = best_of_n_picks(
        *(
            load_reward_scores(path, tok, dataset, n)[["example_id", "response_idx", "score"]]
            for n in (a, b)
        )
    )
    frame = load_reward_frame(path, tok, dataset)
    text = frame.set_index(["example_id", "response_idx"])["response"]
    prompt = frame.drop_duplicates("example_id").set_index("example_id")["prompt"]
    out = picks.assign(
        prompt=picks["example_id"].map(prompt),
        response_a=text.reindex(
            pd.MultiIndex.from_arrays([picks["example_id"], picks["pick_a"]])
        ).to_numpy(),
        response_b=text.reindex(
            pd.MultiIndex.from_arrays([picks["example_id"], picks["pick_b"]])
        ).to_numpy(),
    )
    return out.sort_values(["agree", "example_id"], kind="stable").reset_index(drop=True)


@st.cache_data(show_spinner="Judging the reward sources…", max_entries=32)
def load_judged(
    path: str,
    tok: tuple[float, float],
    dataset: str,
    names: tuple[str, ...],
    by: tuple[str, ...] = (),
    side: str = "example",
    margins: tuple[float, ...] | None = None,
    headline: bool = True,
) -> dict[str, Any]:
    """``python -m core judge --dataset D`` on the named sources (with ``--by``, ``--side``,
    ``--margins``): the page reads its numbers from the same step the CLI prints. Only the
    headline accuracies' own call asks for them (``headline``): each costs a bootstrap."""
    req = JudgeRequest(
        dataset,
        names=list(names),
        by=list(by),
        side=side,
        margins=None if margins is None else list(margins),
        headline=headline,
    )
    return judge(_open(path), req)


def load_reward_accuracy(
    path: str, tok: tuple[float, float], dataset: str, name: str
) -> tuple[Accuracy, Accuracy]:
    """(pairwise accuracy, StoryRMB 1-of-N accuracy) of one source on a preference set, each a
    core.rewards.Accuracy with its 95% bootstrap interval over prompts and chance (judge)."""
    judged = load_judged(path, tok, dataset, (name,))["sources"][name]
    return Accuracy(**judged["pairwise"]), Accuracy(**judged["one_of_n"])


@st.cache_data(show_spinner=False, max_entries=32)
def load_reward_categories(path: str, tok: tuple[float, float], dataset: str) -> list[str]:
    """The tags and labels of a dataset with few enough values (2..50) to judge per value."""

    s = _open(path)
    names = s.tag_names(dataset) + s.label_names(dataset)
    if not names:
        return []
    values = category_values(s, dataset=dataset, columns=names)
    return [c for c in values.columns if 2 <= int(values[c].nunique()) <= 50]


def load_accuracy_by(
    path: str, tok: tuple[float, float], dataset: str, name: str, column: str, side: str
) -> pd.DataFrame:
    """core.rewards.accuracy_by of one source, grouped by a tag or label of the examples (side
    ``example``) or by ``response_cluster``, each response's cluster on the responses map (side
    ``chosen`` / ``rejected``): `python -m core judge --by COLUMN --side SIDE`. The group
    column is ``value``."""
    judged = load_judged(path, tok, dataset, (name,), by=(column,), side=side, headline=False)
    return pd.DataFrame.from_records(judged["sources"][name]["by"][column])


def load_margin_curve(
    path: str, tok: tuple[float, float], dataset: str, name: str, points: int = 20
) -> pd.DataFrame:
    """core.rewards.margin_curve of one source (`judge --margins`) at margins spread over its own
    pairs' |margin| (0, then quantiles), so sources on different scales meet on the kept-share
    axis."""
    grid = margin_grid(load_reward_scores(path, tok, dataset, name), points=points)
    margins = tuple(float(m) for m in grid)
    judged = load_judged(path, tok, dataset, (name,), margins=margins, headline=False)
    return pd.DataFrame.from_records(judged["sources"][name]["margins"])


@st.cache_data(show_spinner="Comparing the two sources…", max_entries=32)
def load_reward_agreement(
    path: str, tok: tuple[float, float], dataset: str, a: str, b: str
) -> tuple[Agreement, pd.DataFrame | None]:
    """(the agreement of sources a and b as `judge` reports it, core.rewards.agreement_by the
    responses map's cluster, or None without a responses map)."""
    agree = Agreement(
        **load_judged(path, tok, dataset, (a, b), headline=False)["agreement"][f"{a} vs {b}"]
    )
    frame = load_reward_frame(path, tok, dataset)
    by = None
    if bool(frame["cluster"].notna().any()):
        groups = frame[["example_id", "response_idx", "cluster"]].rename(
            columns={"cluster": "group"}
        )
        sa, sb = (load_reward_scores(path, tok, dataset, n) for n in (a, b))
        by = agreement_by(sa, sb, groups)
    return agree, by


@st.cache_data(show_spinner=False, max_entries=16)
def load_preference_pairs(
    path: str, tok: tuple[float, float], dataset: str, name: str
) -> pd.DataFrame:
    """core.rewards.preference_pairs of one source with each response's place on the
    responses map (x, y and cluster of the chosen and of the rejected response)."""

    scores = load_reward_scores(path, tok, dataset, name)
    place = load_reward_frame(path, tok, dataset)[
        ["example_id", "response_idx", "x", "y", "cluster"]
    ]
    placed = scores.merge(place, on=["example_id", "response_idx"], how="left")
    return preference_pairs(placed, keep=["x", "y", "cluster"])


@st.cache_data(show_spinner="Ranking features chosen vs rejected…", max_entries=16)
def load_preference_shift(
    path: str, tok: tuple[float, float], dataset: str, top: int
) -> pd.DataFrame:
    """core.steps.preference_shift: the ``top`` SAE features (both ways) by mean chosen-minus-
    rejected activation over every (chosen, rejected) pair, with labels."""

    return preference_shift(_open(path), dataset=dataset, top=top)


@st.cache_data(show_spinner="Fitting the disagreement probe…", max_entries=16)
def load_disagreement_probe(
    path: str, tok: tuple[float, float], dataset: str, a: str, b: str
) -> Any:
    """core.steps.disagreement_probe of sources a and b (a DisagreementProbe)."""

    return disagreement_probe(_open(path), dataset=dataset, a=a, b=b)


@st.cache_data(show_spinner="Calibrating…", max_entries=16)
def load_reward_calibration(
    path: str, tok: tuple[float, float], dataset: str, name: str, label: str, n_bins: int = 10
) -> dict[str, Any]:
    """core.reward_models.calibration of an ordinal reward source against a feedback label."""

    return calibration(_open(path), dataset=dataset, name=name, label=label, n_bins=n_bins)


# --- the page's writes: each one short transaction through the step the CLI runs -------------
def save_labels(dataset: str, name: str, values: pa.Table) -> None:
    """The Quality page's marks, stored as label ``name`` (one transaction)."""
    store().set_labels(dataset, name, values)


def train_probe(dataset: str, *, signal: str, label: str) -> int:
    """``python -m core quality --label LABEL``: the probe step on the page's marks."""
    return probe(store(), ProbeRequest(dataset, signal, label))


def write_export(out: Path, *, request: ExportRequest, cfg: ExportConfig) -> dict[str, Any]:
    """``python -m core export``: the export step, writing ``out`` and its side files (not
    logged in the store, which the app holds read-only)."""
    return export(store(), request, cfg, out=out, record=False)


@st.cache_data(show_spinner=False, max_entries=16)
def load_rule_set_checked(
    path: str, tok: tuple[float, float], dataset: str, rules_file: str, mtime: float
) -> tuple[RuleSet, list[str]]:
    """A rule set file, checked against the dataset: (rule set, warnings)."""
    s = _open(path)
    rule_set = load_rule_set(rules_file)
    return rule_set, check_on_store(s, dataset, rule_set, views=s.views(dataset))


@st.cache_data(show_spinner="Checking the rules…", max_entries=32)
def load_removed_view(
    path: str,
    tok: tuple[float, float],
    dataset: str,
    filters: tuple[Filter, ...],
    ids: tuple[str, ...] | None,
    names: tuple[str, ...],
) -> RemovalReport:
    """The removed view of the rules (one query) with the prompt of each row."""
    s = _open(path)
    req = RemovedViewRequest(
        dataset,
        views=s.views(dataset),
        filters=list(filters),
        ids=None if ids is None else list(ids),
        names=list(names),
        columns=["prompt"],
    )
    return removed_view(s, req)


def check_rule_set_here(path: str, dataset: str, rule_set: RuleSet, views: Views) -> list[str]:
    """An uploaded rule set checked against the dataset (uncached: its bytes are the key)."""
    return check_on_store(_open(path), dataset, rule_set, views=views)
