"""Quality: the SAE quality probe with its evidence beside the baselines, a threshold slider that
lists exactly the rows it would remove, and good/bad marks that train a probe from the app."""

import numpy as np
import pandas as pd
import pyarrow as pa
import streamlit as st

from core.errors import StudioError
from core.signals import probe, threshold_report
from pages.charts import score_histogram
from pages.common import (
    guarded,
    load_example_search,
    load_label_names,
    load_probe_frame,
    open_dataset,
    store,
    token,
)
from pages.evidence import pick_probe_run, show_evidence, weights_table

MARK = "quality_mark"  # the label the app's marks are stored under (1 good, 0 bad)
MARK_VALUES = {"good": 1.0, "bad": 0.0}


def _threshold(frame: pd.DataFrame, run: dict, label: str) -> None:
    cfg = run["config"]
    name = cfg["name"]
    scores = frame["score"].to_numpy(dtype=float)
    lo, hi = float(np.nanmin(scores)), float(np.nanmax(scores))
    if cfg.get("kind") == "logistic":
        lo, hi, default = 0.0, 1.0, 0.5
    else:
        default = float(np.nanquantile(scores, 0.1))
    if hi <= lo:
        st.info("Every example has the same score: no threshold to set.")
        return
    t = st.slider(
        f"Remove rows with {name} below",
        lo,
        hi,
        default,
        step=(hi - lo) / 200,
        key=f"quality_threshold_{run['run_id']}",
    )
    labelled = frame["oof"].notna()
    rep_all = threshold_report(scores, threshold=t)
    rep_oof = threshold_report(
        frame.loc[labelled, "oof"].to_numpy(dtype=float),
        threshold=t,
        labels=frame.loc[labelled, label].to_numpy(dtype=float),
    )
    m = st.columns(4)
    m[0].metric("Removed", f"{rep_all['n_removed']:,}", help=f"of {rep_all['n']:,} examples")
    m[1].metric("Share removed", f"{rep_all['share_removed']:.1%}")
    prec, rec = rep_oof.get("precision"), rep_oof.get("recall")
    m[2].metric(
        f"Precision (label {label} = 0)",
        "–" if prec is None else f"{prec:.3f}",
        help="Of the labelled rows this threshold removes (scored out-of-fold), the share "
        "labelled bad.",
    )
    m[3].metric(
        "Recall of bad rows",
        "–" if rec is None else f"{rec:.3f}",
        help="Of the rows labelled bad, the share this threshold removes (out-of-fold scores).",
    )
    st.plotly_chart(
        score_histogram(
            frame,
            score="score",
            color=label,
            threshold=t,
            title=f"{name} by label {label}",
            label=name,
        ),
        key="quality_hist",
        width="stretch",
    )
    removed = frame[frame["score"] < t].sort_values("score")
    st.markdown(f"**Rows this threshold removes** ({len(removed):,}, lowest score first)")
    st.dataframe(
        removed[["id", "prompt", "score", label, "cluster"]],
        key="quality_removed",
        hide_index=True,
        width="stretch",
        height=320,
        column_config={"score": st.column_config.NumberColumn(name, format="%.3f")},
    )
    st.caption(
        f"Export with this rule: `python -m core export --dataset DATASET --where '{name}>={t:.3f}'` "
        f"or the `{name}` slider on the Export page. Removed rows are scored by the final probe; "
        "precision and recall use the out-of-fold scores of the labelled rows, so they are not "
        "inflated by rows the probe was trained on."
    )


def _marks(dataset: str, path: str, tok: tuple[float, float], frame: pd.DataFrame | None) -> None:
    st.subheader("Mark examples good or bad")
    st.caption(
        f"Marks are stored as the label `{MARK}` (1 good, 0 bad) in the database and can train "
        "a quality probe here or with "
        f"`python -m core quality --dataset {dataset} --label {MARK}`."
    )
    source = st.radio(
        "Rows to mark",
        ["lowest scores", "search"] if frame is not None else ["search"],
        horizontal=True,
        key="quality_mark_source",
    )
    if source == "search":
        query = st.text_input("Search prompts", key="quality_mark_query")
        rows = load_example_search(path, tok, dataset, query) if query else pd.DataFrame()
        rows = rows[["id", "prompt"]] if not rows.empty else pd.DataFrame(columns=["id", "prompt"])
    else:
        assert frame is not None
        rows = frame.sort_values("score").head(50)[["id", "prompt", "score"]]
    if rows.empty:
        return
    table = rows.assign(mark="").reset_index(drop=True)
    edited = st.data_editor(
        table,
        key=f"quality_marks_{source}",
        hide_index=True,
        width="stretch",
        height=300,
        disabled=[c for c in table.columns if c != "mark"],
        column_config={
            "mark": st.column_config.SelectboxColumn(options=["", "good", "bad"], required=False),
            "score": st.column_config.NumberColumn(format="%.3g"),
        },
    )
    marked = edited[edited["mark"].isin(list(MARK_VALUES))]
    c1, c2 = st.columns(2)
    if c1.button(f"Save {len(marked)} marks", disabled=marked.empty, key="quality_save"):
        values = pa.table(
            {
                "example_id": pa.array(marked["id"].astype(str).tolist(), pa.string()),
                "value": pa.array([MARK_VALUES[m] for m in marked["mark"]], pa.float64()),
            }
        )
        try:
            store().set_labels(dataset, MARK, values)
            st.success(f"Saved {len(marked)} marks as label `{MARK}`.")
        except StudioError as exc:
            st.error(str(exc))
    # a fresh token: a save just above changed the file after this page's token was taken
    has_marks = MARK in (load_label_names(path, token(), dataset) or [])
    if c2.button("Train a quality probe on the marks", disabled=not has_marks, key="quality_train"):
        with st.spinner("Training the probe and its baselines…"):
            try:
                rid = probe(store(), dataset=dataset, signal="quality", label=MARK)
                st.success(f"Probe run {rid} stored as `{MARK}_proxy`; pick it above.")
            except StudioError as exc:
                st.error(str(exc))


def render() -> None:
    ctx = open_dataset("Quality")
    if ctx is None:
        return
    dataset, path, tok = ctx.dataset, ctx.path, ctx.tok
    run = pick_probe_run(
        ctx, "quality", command=f"python -m core quality --dataset {dataset} --label LABEL"
    )
    frame = None
    if run is not None:
        cfg = run["config"]
        logistic = cfg.get("kind") == "logistic"
        show_evidence(
            run,
            headline=[
                ("in_distribution", "auc" if logistic else "r2", "AUC" if logistic else "R²"),
                (
                    "in_distribution",
                    "average_precision" if logistic else "spearman",
                    "Average precision" if logistic else "Spearman",
                ),
                (
                    "by_cluster",
                    "auc" if logistic else "r2",
                    "AUC (held-out clusters)" if logistic else "R² (held-out clusters)",
                ),
            ],
        )
        frame = guarded(lambda: load_probe_frame(path, tok, dataset, int(run["run_id"])))
        if frame is not None:
            _threshold(frame, run, cfg["label"])
            with st.expander("Strongest SAE features of the probe"):
                st.dataframe(weights_table(run), hide_index=True, width="stretch")
    _marks(dataset, path, tok, frame)


render()
