"""App-side plumbing shared by the pages: which database, session state, cached loaders.

Session state is set up here and only here (:func:`init_state`). Loaders are ``st.cache_data``
functions keyed on the database's version token, so a CLI command that writes the file shows up
on the next rerun; no connection is held across reruns (see core.store on DuckDB's file lock).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from core.defaults import DEMO_DB
from core.defaults import export_dir as default_export_dir
from core.errors import StudioError
from core.store import Store, Views
from ui.text import md

T = TypeVar("T")

# Session-state keys, all in one place.
DATASET = "dataset"
SELECTION = "selection"  # {dataset: [example ids]} from the Map's box/lasso
OPEN_FEATURE = "open_feature"  # {dataset: feature id} shown on the Features page
OPEN_EXAMPLE = "open_example"  # {dataset: example id} shown on the Features page


def _app_args() -> argparse.Namespace:
    """The app's own options: `streamlit run app.py -- --db PATH --export-dir DIR`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db")
    parser.add_argument("--export-dir")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args


def db_path() -> str:
    """--db from `streamlit run app.py -- --db PATH`, else $SAERL_DB, else the demo."""
    return _app_args().db or os.environ.get("SAERL_DB") or DEMO_DB


def export_dir() -> str:
    """The one folder the Export page writes into: --export-dir from `streamlit run app.py --
    --export-dir DIR`, else $SAERL_EXPORT_DIR, else core.defaults.DEFAULT_EXPORT_DIR. Anything
    else a user wants goes through the page's download buttons, so a visitor of the page cannot
    write anywhere the app's process may."""
    return str(default_export_dir(_app_args().export_dir))


def page_setup() -> None:
    """What every page needs before it draws, set by app.py and again by each page: a page
    also runs on its own (Streamlit's pages-folder mode runs pages/x.py without app.py on a
    fresh server's first session), so none may rely on app.py having run."""
    st.set_page_config(page_title="SAERL Studio", page_icon="🔬", layout="wide")
    init_state()


def init_state() -> None:
    st.session_state.setdefault(DATASET, None)
    st.session_state.setdefault(SELECTION, {})
    st.session_state.setdefault(OPEN_FEATURE, {})
    st.session_state.setdefault(OPEN_EXAMPLE, {})


def store() -> Store:
    return Store(db_path(), lock_timeout_s=5.0)


def token() -> tuple[float, float]:
    return store().version_token()


def error(exc: BaseException | str) -> None:
    """A StudioError (or any message) as one st.error line, shown literally: messages quote
    paths, names and values from the user's files, which must not render as markdown."""
    st.error(md(exc))


def guarded(fn: Callable[[], T]) -> T | None:
    """Run a loader; show a StudioError (missing file, busy lock, not a store ...) as one line,
    not a trace."""
    try:
        return fn()
    except StudioError as exc:
        error(exc)
        return None


@st.cache_data(show_spinner=False, max_entries=32)
def load_datasets(path: str, tok: tuple[float, float]) -> pd.DataFrame:
    s = Store(path, lock_timeout_s=5.0)
    s.check_readable()
    return s.list_datasets()


@st.cache_data(show_spinner=False, max_entries=32)
def load_feature_runs(path: str, tok: tuple[float, float]) -> pd.DataFrame:
    return Store(path, lock_timeout_s=5.0).feature_runs()


@st.cache_data(show_spinner=False, max_entries=32)
def load_runs(path: str, tok: tuple[float, float], dataset: str | None) -> pd.DataFrame:
    return Store(path, lock_timeout_s=5.0).list_runs(dataset=dataset)


@st.cache_data(show_spinner=False, max_entries=32)
def load_views(path: str, tok: tuple[float, float], dataset: str) -> Views:
    return Store(path, lock_timeout_s=5.0).views(dataset)


@st.cache_data(show_spinner="Loading the map…", max_entries=8)
def load_map(path: str, tok: tuple[float, float], dataset: str) -> pd.DataFrame:
    s = Store(path, lock_timeout_s=5.0)
    return s.map_points(dataset, views=s.views(dataset))


@st.cache_data(show_spinner=False, max_entries=32)
def load_clusters(path: str, tok: tuple[float, float], cluster_run: int) -> pd.DataFrame:
    return Store(path, lock_timeout_s=5.0).clusters(cluster_run)


@st.cache_data(show_spinner=False, max_entries=64)
def load_run(path: str, tok: tuple[float, float], run_id: int) -> dict[str, Any]:
    return Store(path, lock_timeout_s=5.0).run(run_id)


@st.cache_data(show_spinner=False, max_entries=32)
def load_label_names(path: str, tok: tuple[float, float], dataset: str) -> list[str]:
    return Store(path, lock_timeout_s=5.0).label_names(dataset)


def pick_dataset() -> str | None:
    """The sidebar's dataset picker; returns the chosen name or None (after telling the user)."""
    path = db_path()
    st.sidebar.caption(f"Database: {md(path)}")
    datasets = guarded(lambda: load_datasets(path, token()))
    if datasets is None:
        return None
    if datasets.empty:
        st.info("The database has no datasets yet: `python -m core ingest FILE --dataset NAME`.")
        return None
    names = datasets["name"].tolist()
    current = st.session_state.get(DATASET)
    index = names.index(current) if current in names else 0
    choice = st.sidebar.selectbox("Dataset", names, index=index)
    st.session_state[DATASET] = choice
    return choice


@dataclass(frozen=True)
class PageContext:
    """What every dataset page starts from: the chosen dataset, the database path, its version
    token (the cache key) and the runs the page's views are built from."""

    dataset: str
    path: str
    tok: tuple[float, float]
    views: Views


def open_dataset(title: str) -> PageContext | None:
    """A dataset page's preamble: title, sidebar dataset picker, views. None (after telling the
    user why) when there is nothing to show."""
    st.title(title)
    dataset = pick_dataset()
    if dataset is None:
        return None
    path, tok = db_path(), guarded(token)
    if tok is None:
        return None
    views = guarded(lambda: load_views(path, tok, dataset))
    if views is None:
        return None
    return PageContext(dataset, path, tok, views)


def selection(dataset: str) -> list[str]:
    return list(st.session_state[SELECTION].get(dataset, []))


def set_selection(dataset: str, ids: list[str]) -> None:
    st.session_state[SELECTION] = {**st.session_state[SELECTION], dataset: ids}


def open_feature(dataset: str) -> int | None:
    return st.session_state[OPEN_FEATURE].get(dataset)


def set_open_feature(dataset: str, feature_id: int | None) -> None:
    st.session_state[OPEN_FEATURE] = {**st.session_state[OPEN_FEATURE], dataset: feature_id}


def open_example(dataset: str) -> str | None:
    return st.session_state[OPEN_EXAMPLE].get(dataset)


def set_open_example(dataset: str, example_id: str | None) -> None:
    st.session_state[OPEN_EXAMPLE] = {**st.session_state[OPEN_EXAMPLE], dataset: example_id}


def provenance(views: Views) -> str:
    """A caption that says where the map's numbers come from (markdown; every value read from
    a run's config is escaped: model and SAE paths, label and score names come from the user)."""
    path, tok = db_path(), token()
    if views.feature_run is None:
        return "No feature run yet."
    fr = load_run(path, tok, views.feature_run)
    c = {k: md(v) for k, v in fr["config"].items()}
    parts = [
        f"Features: run {views.feature_run} — {c.get('model')} layer {c.get('layer')} "
        f"({c.get('hook')}), SAE {c.get('sae')}, {c.get('pooling')} pooling, top {c.get('top_k')}."
    ]
    if views.cluster_run:
        cr = {k: md(v) for k, v in load_run(path, tok, views.cluster_run)["config"].items()}
        parts.append(
            f"Clusters: run {views.cluster_run} — k-means (k={cr.get('k')}, seed {cr.get('seed')}) "
            "on L2-normalised SAE vectors; labels = most distinctive features (c-TF-IDF), "
            "each named by its top-activating tokens."
        )
    if views.projection_run:
        pr = {k: md(v) for k, v in load_run(path, tok, views.projection_run)["config"].items()}
        parts.append(
            f"Positions: run {views.projection_run} — UMAP ({pr.get('metric')}, "
            f"n_neighbors {pr.get('n_neighbors')}, min_dist {pr.get('min_dist')})."
        )
    for name, rid in views.score_runs:
        c = {k: md(v) for k, v in load_run(path, tok, rid)["config"].items()}
        parts.append(
            f"**{md(name)}**: run {rid} — {c.get('kind')} probe on the SAE features, trained on "
            f"the label '{c.get('label')}' ({c.get('signal')}; higher = {c.get('higher_is')})."
        )
    parts.append(
        "Other numeric columns are labels ingested with the dataset or derived from its rollouts."
    )
    return "  \n".join(parts)


@st.cache_data(show_spinner=False, max_entries=32)
def load_label_ranges(path: str, tok: tuple[float, float], dataset: str) -> pd.DataFrame:
    """Numeric labels and the latest probe scores, with their ranges (kind: label / score)."""
    s = Store(path, lock_timeout_s=5.0)
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
    from core.steps.export import export_columns

    return export_columns(
        Store(path, lock_timeout_s=5.0),
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

    from core.export import to_layout
    from core.steps.export import export_rows

    s = Store(path, lock_timeout_s=5.0)
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
    return Store(path, lock_timeout_s=5.0).tag_values(dataset)


# --- the Features page ----------------------------------------------------------------------------
@st.cache_data(show_spinner="Reading the features…", max_entries=8)
def load_feature_table(path: str, tok: tuple[float, float], run_id: int) -> pd.DataFrame:
    """Every feature of a run with its statistics and label (description or top tokens)."""
    from core.feature_info import with_labels

    return with_labels(Store(path, lock_timeout_s=5.0).feature_summary(run_id))


@st.cache_data(show_spinner=False, max_entries=64)
def load_feature_search(
    path: str, tok: tuple[float, float], run_id: int, query: str
) -> pd.DataFrame:
    from core.feature_info import search_features

    return search_features(load_feature_table(path, tok, run_id), query)


@st.cache_data(show_spinner=False, max_entries=64)
def load_feature_detail(
    path: str, tok: tuple[float, float], run_id: int, feature_id: int, n_examples: int
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """(top examples by pooled value, pooled values in the stored top-k, top token occurrences)."""
    s = Store(path, lock_timeout_s=5.0)
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
    feats = Store(path, lock_timeout_s=5.0).example_features(run_id, list(example_ids))
    table = load_feature_table(path, tok, run_id)[["feature_id", "label", "freq"]]
    return feats.merge(table, on="feature_id", how="left")


@st.cache_data(show_spinner=False, max_entries=64)
def load_example_search(
    path: str, tok: tuple[float, float], dataset: str, query: str
) -> pd.DataFrame:
    return Store(path, lock_timeout_s=5.0).find_examples(dataset, query)


@st.cache_data(show_spinner=False, max_entries=64)
def load_example(path: str, tok: tuple[float, float], dataset: str, example_id: str) -> dict | None:
    """One example's row of the wide view (text, cluster, labels, tags), or None."""
    s = Store(path, lock_timeout_s=5.0)
    rows = s.wide(dataset, views=s.views(dataset), ids=[example_id]).to_pylist()
    return rows[0] if rows else None


# --- the Clusters page ----------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def load_cluster_summary(path: str, tok: tuple[float, float], dataset: str) -> pd.DataFrame:
    """The latest clusters with size, label, top features, mean_<label> and n_duplicates."""
    s = Store(path, lock_timeout_s=5.0)
    return s.cluster_summary(dataset, views=s.views(dataset))


@st.cache_data(show_spinner=False, max_entries=32)
def load_duplicate_groups(path: str, tok: tuple[float, float], dedup_run: int) -> pd.DataFrame:
    return Store(path, lock_timeout_s=5.0).duplicate_groups(dedup_run)


@st.cache_data(show_spinner=False, max_entries=64)
def load_cluster_examples(
    path: str, tok: tuple[float, float], dataset: str, cluster: int
) -> pd.DataFrame:
    """The examples of one cluster (wide view, without text/extra/tags)."""
    from core.filters import Filter

    s = Store(path, lock_timeout_s=5.0)
    wide = s.wide(dataset, views=s.views(dataset), filters=[Filter("cluster", "=", cluster)])
    return wide.to_pandas().drop(columns=["text", "extra", "tags"])


# --- the Difficulty and Quality pages -------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def load_probe_runs(path: str, tok: tuple[float, float], dataset: str, signal: str) -> list[dict]:
    """Finished probe runs of one signal, newest first (config and summary parsed)."""
    runs = Store(path, lock_timeout_s=5.0).list_runs(dataset=dataset, step="probe")
    runs = runs[runs["status"] == "done"]
    return [r for r in runs.to_dict("records") if r["config"].get("signal") == signal]


@st.cache_data(show_spinner="Reading the scores…", max_entries=16)
def load_probe_frame(
    path: str, tok: tuple[float, float], dataset: str, run_id: int
) -> pd.DataFrame:
    """id, prompt, cluster, the probe's label, its score (``score``) and out-of-fold score
    (``oof``, labelled rows only) for every example."""
    s = Store(path, lock_timeout_s=5.0)
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
    from core.filters import Filter

    s = Store(path, lock_timeout_s=5.0)
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
    s = Store(path, lock_timeout_s=5.0)
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
    from core.steps.rewards import reward_sources

    return reward_sources(Store(path, lock_timeout_s=5.0), dataset=dataset)


@st.cache_data(show_spinner="Reading the reward scores…", max_entries=16)
def load_reward_frame(path: str, tok: tuple[float, float], dataset: str) -> pd.DataFrame:
    """core.steps.reward_frame: one row per scored candidate, ``score:<name>`` per source, and
    the response's cluster, cluster_label, x, y on the responses map (NaN without one)."""
    from core.steps.rewards import reward_frame

    return reward_frame(Store(path, lock_timeout_s=5.0), dataset=dataset)


@st.cache_data(show_spinner=False, max_entries=64)
def load_reward_scores(
    path: str, tok: tuple[float, float], dataset: str, name: str
) -> pd.DataFrame:
    """One source's stored scores as core.rewards reads them: example_id, response_idx, role,
    score (chats: no role, as their one response per example forms no preference pair)."""
    s = Store(path, lock_timeout_s=5.0)
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
    from core.rewards import best_of_n_picks

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
def load_reward_accuracy(path: str, tok: tuple[float, float], dataset: str, name: str) -> tuple:
    """(pairwise accuracy, StoryRMB 1-of-N accuracy) of one source on a preference set, each a
    core.rewards.Accuracy with its 95% bootstrap interval over prompts and chance."""
    from core.rewards import one_of_n_accuracy, pairwise_accuracy

    scores = load_reward_scores(path, tok, dataset, name)
    return pairwise_accuracy(scores), one_of_n_accuracy(scores)


@st.cache_data(show_spinner=False, max_entries=32)
def load_reward_categories(path: str, tok: tuple[float, float], dataset: str) -> list[str]:
    """The tags and labels of a dataset with few enough values (2..50) to judge per value."""
    from core.steps.judge import category_values

    s = Store(path, lock_timeout_s=5.0)
    names = s.tag_names(dataset) + s.label_names(dataset)
    if not names:
        return []
    values = category_values(s, dataset=dataset, columns=names)
    return [c for c in values.columns if 2 <= int(values[c].nunique()) <= 50]


@st.cache_data(show_spinner="Accuracy per category…", max_entries=64)
def load_accuracy_by(
    path: str, tok: tuple[float, float], dataset: str, name: str, column: str, side: str
) -> pd.DataFrame:
    """core.rewards.accuracy_by of one source, grouped by a tag or label of the examples (side
    ``example``) or by ``response_cluster``, each response's cluster on the responses map (side
    ``chosen`` / ``rejected``), as `python -m core judge --by` reads them. The group column is
    ``value``."""
    from core.rewards import RESPONSE_CLUSTER, accuracy_by
    from core.steps.judge import category_values, response_clusters

    s = Store(path, lock_timeout_s=5.0)
    scores = load_reward_scores(path, tok, dataset, name)
    if column == RESPONSE_CLUSTER:
        at = pd.MultiIndex.from_frame(scores[["example_id", "response_idx"]])
        value = response_clusters(s, dataset=dataset).reindex(at).to_numpy()
    else:
        values = category_values(s, dataset=dataset, columns=[column])[column]
        value = scores["example_id"].map(values).to_numpy()
    return accuracy_by(scores.assign(value=value), by="value", side=side)  # type: ignore[arg-type]


@st.cache_data(show_spinner=False, max_entries=32)
def load_margin_curve(
    path: str, tok: tuple[float, float], dataset: str, name: str, points: int = 20
) -> pd.DataFrame:
    """core.rewards.margin_curve of one source at margins spread over its own pairs' |margin|
    (0, then quantiles), so sources on different scales meet on the kept-share axis."""
    from core.rewards import margin_curve, margin_grid

    scores = load_reward_scores(path, tok, dataset, name)
    return margin_curve(scores, margins=margin_grid(scores, points=points))


@st.cache_data(show_spinner="Comparing the two sources…", max_entries=32)
def load_reward_agreement(
    path: str, tok: tuple[float, float], dataset: str, a: str, b: str
) -> tuple[Any, pd.DataFrame | None]:
    """(core.rewards.agreement of sources a and b, core.rewards.agreement_by the responses
    map's cluster, or None without a responses map)."""
    from core.rewards import agreement, agreement_by

    sa, sb = (load_reward_scores(path, tok, dataset, n) for n in (a, b))
    frame = load_reward_frame(path, tok, dataset)
    by = None
    if bool(frame["cluster"].notna().any()):
        groups = frame[["example_id", "response_idx", "cluster"]].rename(
            columns={"cluster": "group"}
        )
        by = agreement_by(sa, sb, groups)
    return agreement(sa, sb), by


@st.cache_data(show_spinner=False, max_entries=16)
def load_preference_pairs(
    path: str, tok: tuple[float, float], dataset: str, name: str
) -> pd.DataFrame:
    """core.rewards.preference_pairs of one source with each response's place on the
    responses map (x, y and cluster of the chosen and of the rejected response)."""
    from core.rewards import preference_pairs

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
    from core.steps.rewards import preference_shift

    return preference_shift(Store(path, lock_timeout_s=5.0), dataset=dataset, top=top)


@st.cache_data(show_spinner="Fitting the disagreement probe…", max_entries=16)
def load_disagreement_probe(
    path: str, tok: tuple[float, float], dataset: str, a: str, b: str
) -> Any:
    """core.steps.disagreement_probe of sources a and b (a DisagreementProbe)."""
    from core.steps.rewards import disagreement_probe

    return disagreement_probe(Store(path, lock_timeout_s=5.0), dataset=dataset, a=a, b=b)


@st.cache_data(show_spinner="Calibrating…", max_entries=16)
def load_reward_calibration(
    path: str, tok: tuple[float, float], dataset: str, name: str, label: str, n_bins: int = 10
) -> dict[str, Any]:
    """core.reward_models.calibration of an ordinal reward source against a feedback label."""
    from core.steps.judge import calibration

    return calibration(
        Store(path, lock_timeout_s=5.0), dataset=dataset, name=name, label=label, n_bins=n_bins
    )
