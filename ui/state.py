"""The app's options (--db, --export-dir) and its session state: the chosen dataset, the Map's
selection and the feature or example open on the Features page, with their keys in one place.
"""

from __future__ import annotations

import argparse
import os
import sys

import streamlit as st

from core.defaults import DEMO_DB
from core.defaults import export_dir as default_export_dir

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


def init_state() -> None:
    st.session_state.setdefault(DATASET, None)
    st.session_state.setdefault(SELECTION, {})
    st.session_state.setdefault(OPEN_FEATURE, {})
    st.session_state.setdefault(OPEN_EXAMPLE, {})


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
