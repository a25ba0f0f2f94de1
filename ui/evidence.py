"""Shared pieces of the signal pages (Difficulty, Quality): picking a probe run and showing its
evidence beside the baselines. Presentation only: the numbers come from the run's summary."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core.signals import evidence_table
from ui.common import PageContext
from ui.loaders import load_probe_runs
from ui.text import code, md


def pick_probe_run(ctx: PageContext, signal: str, *, command: str) -> dict[str, Any] | None:
    """The probe run the page shows (newest by default); tells the user how to make one
    (``command``: plain text, shown as inline code)."""
    runs = load_probe_runs(ctx.path, ctx.tok, ctx.dataset, signal)
    if not runs:
        st.info(f"No {signal} probe for '{md(ctx.dataset)}' yet: {code(command)}.")
        return None
    if len(runs) == 1:
        return runs[0]
    by_id = {int(r["run_id"]): r for r in runs}
    rid = st.selectbox(
        f"{signal.title()} probe run",
        list(by_id),
        key=f"{signal}_run",
        format_func=lambda r: (
            f"run {r}: {by_id[r]['config'].get('kind')} on '{by_id[r]['config'].get('label')}' "
            f"→ {by_id[r]['config'].get('name')}"
        ),
    )
    return by_id[int(rid)]


def show_evidence(run: dict[str, Any], *, headline: list[tuple[str, str, str]]) -> None:
    """Headline metrics of the SAE probe, then the table of every representation side by
    side. ``headline``: (split, metric key, label) triples read from the run's metrics."""
    summ, cfg = run["summary"], run["config"]
    metrics = summ.get("metrics", {})
    cols = st.columns(len(headline) + 1)
    cols[0].metric(
        "Labelled examples",
        f"{summ.get('n_labelled', 0):,}",
        help=f"of {summ.get('n_examples', 0):,}; label '{md(cfg.get('label'))}'",
    )
    for col, (split, key, label) in zip(cols[1:], headline, strict=True):
        value = (metrics.get(split) or {}).get(key)
        col.metric(label, "–" if value is None else f"{value:.3f}")
    table = evidence_table(summ)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            c: st.column_config.NumberColumn(format="%.3f")
            for c in table.columns
            if c not in ("representation", "note")
        },
    )
    held = (
        "held out by cluster: whole clusters left out of training (GroupKFold), so the score "
        "measures transfer to unseen kinds of prompts"
        if summ.get("held_out_by") == "cluster"
        else "no clustering yet, so no held-out-by-cluster evidence"
    )
    params = ", ".join(f"{md(k)}={md(_fmt(v))}" for k, v in summ.get("params", {}).items())
    st.caption(
        f"Run {run['run_id']}: {md(cfg.get('kind'))} probe (chosen by inner cross-validation: "
        f"{params or 'defaults'}) on the SAE features of feature run {cfg.get('feature_run')}, "
        f"label '{md(cfg.get('label'))}', {cfg.get('folds')}-fold cross-validation. In distribution: "
        f"out-of-fold predictions of shuffled folds; {held}. Every representation gets the same "
        "probe and folds in the same run; the dense baseline is the mean-pooled hidden state of "
        "the same layer, TF-IDF is computed from the text."
    )


def weights_table(run: dict[str, Any]) -> pd.DataFrame:
    """The probe's strongest SAE features (coefficient on standardised features)."""
    return pd.DataFrame(run["summary"].get("weights", []))


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
