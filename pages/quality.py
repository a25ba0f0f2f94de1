"""Quality: the SAE quality probe with its evidence beside the baselines, a threshold slider that
lists exactly the rows it would remove, and good/bad marks that train a probe from the app.

Scores of labelled rows are out-of-fold (core.signals), so the histogram and the threshold are
not drawn on memorised labels; precision and average precision are the bad rows', each beside
the bad rows' base rate."""

import shlex

import numpy as np
import pandas as pd
import pyarrow as pa
import streamlit as st

from core.errors import StudioError
from core.signals import bad_value, score_source, threshold_report
from ui.charts import score_histogram
from ui.common import guarded, open_dataset, page_setup
from ui.evidence import pick_probe_run, show_evidence, weights_table
from ui.loaders import (
    load_example_search,
    load_label_names,
    load_probe_frame,
    save_labels,
    token,
    train_probe,
)
from ui.text import html_text, md

MARK = "quality_mark"  # the label the app's marks are stored under (1 good, 0 bad)
MARK_VALUES = {"good": 1.0, "bad": 0.0}


def _threshold(frame: pd.DataFrame, run: dict, label: str) -> None:
    cfg, summ = run["config"], run["summary"]
    name = cfg["name"]
    # a higher score means a better row unless the label said higher is worse
    above = cfg.get("higher_is") == "worse"
    bad = bad_value(summ)
    scores = frame["score"].to_numpy(dtype=float)
    lo, hi = float(np.nanmin(scores)), float(np.nanmax(scores))
    if cfg.get("kind") == "logistic":
        lo, hi, default = 0.0, 1.0, 0.5
    else:
        default = float(np.nanquantile(scores, 0.9 if above else 0.1))
    if hi <= lo:
        st.info("Every example has the same score: no threshold to set.")
        return
    t = st.slider(
        f"Remove rows with {md(name)} {'above' if above else 'below'}",
        lo,
        hi,
        default,
        step=(hi - lo) / 200,
        key=f"quality_threshold_{run['run_id']}",
    )
    labelled = frame["oof"].notna()
    rep_all = threshold_report(scores, threshold=t, remove_above=above)
    # the out-of-fold column: new runs store it as the score of labelled rows, and runs from
    # before that still have it, so precision is never judged on memorised labels
    rep_oof = threshold_report(
        frame.loc[labelled, "oof"].to_numpy(dtype=float),
        threshold=t,
        labels=frame.loc[labelled, label].to_numpy(dtype=float),
        bad=bad,
        remove_above=above,
    )
    m = st.columns(4)
    m[0].metric("Removed", f"{rep_all['n_removed']:,}", help=f"of {rep_all['n']:,} examples")
    m[1].metric("Share removed", f"{rep_all['share_removed']:.1%}")
    prec, rec, rate = rep_oof.get("precision"), rep_oof.get("recall"), rep_oof.get("base_rate")
    m[2].metric(
        f"Precision, bad rows ({md(label)} = {bad:g})",
        "–" if prec is None else f"{prec:.3f}",
        delta=None if rate is None else f"base rate {rate:.3f}",
        delta_color="off",
        delta_arrow="off",
        help="Of the labelled rows this threshold removes (scored out-of-fold), the share "
        "labelled bad. The base rate is the bad rows' share of all labelled rows: the precision "
        "of removing rows at random.",
    )
    m[3].metric(
        "Recall of bad rows",
        "–" if rec is None else f"{rec:.3f}",
        help="Of the rows labelled bad, the share this threshold removes (out-of-fold scores).",
    )
    # Plotly renders HTML in titles and legends: the label's column and the names go in escaped
    shown = frame.rename(columns={label: html_text(label)})
    st.plotly_chart(
        score_histogram(
            shown,
            score="score",
            color=html_text(label),
            threshold=t,
            title=html_text(f"{name} by label {label}"),
            label=html_text(name),
        ),
        key="quality_hist",
        width="stretch",
    )
    removed = frame[frame["score"] > t if above else frame["score"] < t]
    removed = removed.sort_values("score", ascending=not above)
    order = "highest" if above else "lowest"
    st.markdown(f"**Rows this threshold removes** ({len(removed):,}, {order} score first)")
    st.dataframe(
        removed[["id", "prompt", "score", label, "cluster"]],
        key="quality_removed",
        hide_index=True,
        width="stretch",
        height=320,
        column_config={"score": st.column_config.NumberColumn(name, format="%.3f")},
    )
    st.caption(
        "Precision and recall use the out-of-fold scores of the labelled rows, so they are not "
        f"inflated by rows the probe was trained on. Export with this rule (or the {md(name)} "
        "slider on the Export page):"
    )
    keep = f"{name}<={t:.3f}" if above else f"{name}>={t:.3f}"
    st.code(f"python -m core export --dataset DATASET --where {shlex.quote(keep)}", language="bash")


def _marks(dataset: str, path: str, tok: tuple[float, float], frame: pd.DataFrame | None) -> None:
    st.subheader("Mark examples good or bad")
    st.caption(
        f"Marks are stored as the label `{MARK}` (1 good, 0 bad) in the database and can train "
        "a quality probe here or with:"
    )
    st.code(
        f"python -m core quality --dataset {shlex.quote(dataset)} --label {MARK}", language="bash"
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
            save_labels(dataset, MARK, values)
            st.success(f"Saved {len(marked)} marks as label `{MARK}`.")
        except StudioError as exc:
            st.error(md(exc))
    # a fresh token: a save just above changed the file after this page's token was taken
    has_marks = MARK in (load_label_names(path, token(), dataset) or [])
    if c2.button("Train a quality probe on the marks", disabled=not has_marks, key="quality_train"):
        with st.spinner("Training the probe and its baselines…"):
            try:
                rid = train_probe(dataset, signal="quality", label=MARK)
                st.success(f"Probe run {rid} stored as `{MARK}_proxy`; pick it above.")
            except StudioError as exc:
                st.error(md(exc))


def _second_headline(summ: dict) -> tuple[str, str, str]:
    """Average precision of the bad rows (what a filter removes), its base rate in the label:
    AP means little without it (0.31 is 10x chance at a base rate of 0.03). Runs from before
    per-class metrics stored the AP of label 1 only, and are named so."""
    ind = (summ.get("metrics") or {}).get("in_distribution") or {}
    if not summ.get("classes"):
        return ("in_distribution", "average_precision", "AP of label 1")
    bad = bad_value(summ)
    rate = ind.get(f"base_rate_{bad:g}")
    shown = "" if rate is None else f" (base rate {rate:.3f})"
    return ("in_distribution", f"average_precision_{bad:g}", f"AP of bad rows{shown}")


def _where_scores_come_from(summ: dict) -> None:
    """Out-of-fold scores for labelled rows (or a warning for a run stored before that)."""
    if summ.get("labelled_scores") != "out_of_fold":
        st.warning(score_source(summ))
        return
    unscored = int(summ.get("n_unscored") or 0)
    st.caption(
        score_source(summ)
        + (f" {unscored:,} labelled rows of skipped folds have no score." if unscored else "")
    )


def render() -> None:
    ctx = open_dataset("Quality")
    if ctx is None:
        return
    dataset, path, tok = ctx.dataset, ctx.path, ctx.tok
    run = pick_probe_run(
        ctx,
        "quality",
        command=f"python -m core quality --dataset {shlex.quote(dataset)} --label LABEL",
    )
    frame = None
    if run is not None:
        cfg, summ = run["config"], run["summary"]
        logistic = cfg.get("kind") == "logistic"
        show_evidence(
            run,
            headline=[
                ("in_distribution", "auc" if logistic else "r2", "AUC" if logistic else "R²"),
                _second_headline(summ) if logistic else ("in_distribution", "spearman", "Spearman"),
                (
                    "by_cluster",
                    "auc" if logistic else "r2",
                    "AUC (held-out clusters)" if logistic else "R² (held-out clusters)",
                ),
            ],
        )
        _where_scores_come_from(summ)
        frame = guarded(lambda: load_probe_frame(path, tok, dataset, int(run["run_id"])))
        if frame is not None:
            _threshold(frame, run, cfg["label"])
            with st.expander("Strongest SAE features of the probe"):
                st.dataframe(weights_table(run), hide_index=True, width="stretch")
    _marks(dataset, path, tok, frame)


page_setup()
render()
