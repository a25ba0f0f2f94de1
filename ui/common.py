"""App-side plumbing shared by the pages: which database, session state, cached loaders.

Session state is set up here and only here (:func:`init_state`). Loaders are ``st.cache_data``
functions keyed on the database's version token, so a CLI command that writes the file shows up
on the next rerun; no connection is held across reruns (see core.store on DuckDB's file lock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import streamlit as st

from core.errors import StudioError
from core.store.sql import Views
from ui.loaders import load_datasets, load_run, load_views, token
from ui.state import DATASET, db_path, init_state
from ui.text import md

T = TypeVar("T")


def page_setup() -> None:
    """What every page needs before it draws, set by app.py and again by each page: a page
    also runs on its own (Streamlit's pages-folder mode runs pages/x.py without app.py on a
    fresh server's first session), so none may rely on app.py having run."""
    st.set_page_config(page_title="SAERL Studio", page_icon="🔬", layout="wide")
    init_state()


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
