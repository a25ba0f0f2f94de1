"""Overview: the datasets in the store, their kinds and counts, and the runs behind them."""

import streamlit as st

from ui.common import guarded, page_setup
from ui.loaders import load_datasets, load_feature_runs, load_runs, token
from ui.state import db_path


def render() -> None:
    st.title("SAERL Studio")
    st.caption(
        "Training data seen through a model's sparse-autoencoder features. Every number here is "
        "computed by the pipeline (`python -m core ...`) and stored in the database below."
    )
    path = db_path()
    datasets = guarded(lambda: load_datasets(path, token()))
    if datasets is None:
        return
    st.subheader("Datasets")
    if datasets.empty:
        st.info("No datasets yet: `python -m core ingest FILE --dataset NAME --kind prompts`.")
        return
    st.dataframe(
        datasets.rename(
            columns={
                "n_examples": "examples",
                "n_labels": "label columns",
                "n_responses": "responses",
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.subheader("Feature runs")
    fr = guarded(lambda: load_feature_runs(path, token()))
    if fr is not None and not fr.empty:
        st.dataframe(fr, hide_index=True, width="stretch")
        st.caption(
            "A feature run = the model run up to `layer` (residual stream after that block), an SAE "
            "encoding every non-special token, pooled per example, top-k features kept."
        )
    else:
        st.info("No feature runs yet: `python -m core featurize --dataset NAME ...`.")
    st.subheader("All runs")
    runs = guarded(lambda: load_runs(path, token(), None))
    if runs is not None and not runs.empty:
        show = runs[
            ["run_id", "step", "dataset", "parent_run", "status", "started_at", "finished_at"]
        ].copy()
        show["config"] = [str(c) for c in runs["config"]]
        show["summary"] = [str(s) for s in runs["summary"]]
        st.dataframe(show, hide_index=True, width="stretch")


page_setup()
render()
