"""Difficulty: the SAE difficulty proxy with its evidence beside the baselines, its distribution
overall and per cluster, proxy vs label, and the rollouts' zero-signal prompts. Scores of
labelled rows are out-of-fold (core.signals), so the histogram shows no memorised labels."""

import shlex

import pandas as pd
import streamlit as st

from core.signals import score_source
from ui.charts import cluster_box, proxy_scatter, score_histogram, share_bars
from ui.common import guarded, open_dataset, page_setup
from ui.evidence import pick_probe_run, show_evidence, weights_table
from ui.loaders import load_cluster_summary, load_probe_frame, load_rollout_view
from ui.text import html_text, md


def _rollouts(dataset: str, path: str, tok: tuple[float, float], labels: dict[int, str]) -> None:
    st.subheader("Rollouts: pass rate and zero-signal prompts")
    got = guarded(lambda: load_rollout_view(path, tok, dataset))
    if got is None:
        return
    run, zero = got
    if run is None:
        st.info(
            "No rollouts ingested. The command below reads n samples per prompt with pass/fail "
            "and adds pass_rate, pass_at_k and zero_signal (all pass or all fail: GRPO gets zero "
            "advantage from the whole group) to every prompt."
        )
        st.code(
            f"python -m core rollouts --dataset {shlex.quote(dataset)} FILE.jsonl", language="bash"
        )
        return
    s = run["summary"]
    m = st.columns(4)
    m[0].metric("Prompts with rollouts", f"{s.get('n_prompts', 0):,}")
    m[1].metric("Rollouts", f"{s.get('n_rollouts', 0):,}")
    m[2].metric("Mean pass rate", f"{s.get('mean_pass_rate', 0):.3f}")
    m[3].metric(
        "Zero-signal prompts",
        f"{s.get('zero_signal_share', 0):.1%}",
        help=f"all pass: {s.get('n_all_pass', 0):,}, all fail: {s.get('n_all_fail', 0):,}",
    )
    st.caption(f"Source: {md(run['config'].get('source'))} (rollouts run {run['run_id']}).")
    summary = load_cluster_summary(path, tok, dataset)
    left, right = st.columns([2, 3])
    if summary is not None and "mean_zero_signal" in summary.columns:
        bars = summary[["cluster", "mean_zero_signal"]].copy()
        # cluster labels are words from the data: escaped after the cut (never mid-entity)
        bars["cluster"] = [html_text(f"{c} · {labels.get(c, '')}"[:30]) for c in bars["cluster"]]
        left.plotly_chart(
            share_bars(bars, x="cluster", y="mean_zero_signal", title="Zero-signal share"),
            key="diff_zero_bars",
            width="stretch",
        )
    with right:
        st.markdown(f"**Zero-signal prompts** ({len(zero):,})")
        st.dataframe(zero, key="diff_zero", hide_index=True, width="stretch", height=280)


def render() -> None:
    ctx = open_dataset("Difficulty")
    if ctx is None:
        return
    dataset, path, tok, views = ctx.dataset, ctx.path, ctx.tok, ctx.views
    summary = load_cluster_summary(path, tok, dataset) if views.cluster_run else pd.DataFrame()
    labels = (
        dict(zip(summary["cluster"], summary["label"], strict=True)) if not summary.empty else {}
    )
    run = pick_probe_run(
        ctx,
        "difficulty",
        command=f"python -m core difficulty --dataset {shlex.quote(dataset)} --label LABEL",
    )
    if run is not None:
        cfg = run["config"]
        show_evidence(
            run,
            headline=[
                ("in_distribution", "r2", "R² (cross-validated)"),
                ("in_distribution", "spearman", "Spearman"),
                ("by_cluster", "r2", "R² (held-out clusters)"),
                ("by_cluster", "spearman", "Spearman (held-out clusters)"),
            ],
        )
        frame = guarded(lambda: load_probe_frame(path, tok, dataset, int(run["run_id"])))
        if frame is not None:
            name, label = cfg["name"], cfg["label"]
            summ = run["summary"]
            unscored = int(summ.get("n_unscored") or 0)
            about = (
                f"{md(name)} predicts the label {md(label)} (higher = "
                f"{md(cfg.get('higher_is'))}). {score_source(summ)}"
                + (
                    f" {unscored:,} labelled rows of skipped folds have no score."
                    if unscored
                    else ""
                )
            )
            if summ.get("labelled_scores") == "out_of_fold":
                st.caption(about)
            else:
                st.warning(about)
            # Plotly renders HTML in titles and axis labels: names go in escaped, and the label's
            # column under its escaped name (the scatter titles its axis with the column)
            shown = frame.rename(columns={label: html_text(label)})
            left, right = st.columns(2)
            left.plotly_chart(
                score_histogram(
                    shown,
                    score="score",
                    title=html_text(f"{name}: all examples"),
                    label=html_text(name),
                ),
                key="diff_hist",
                width="stretch",
            )
            right.plotly_chart(
                proxy_scatter(
                    shown,
                    label=html_text(label),
                    title=html_text(f"{name} (out-of-fold) vs {label}"),
                ),
                key="diff_scatter",
                width="stretch",
            )
            if bool(frame["cluster"].notna().any()):
                st.plotly_chart(
                    cluster_box(
                        frame,
                        score="score",
                        labels=labels,
                        title=html_text(f"{name} per cluster"),
                    ),
                    key="diff_box",
                    width="stretch",
                )
            with st.expander("Strongest SAE features of the probe"):
                st.dataframe(weights_table(run), hide_index=True, width="stretch")
    _rollouts(dataset, path, tok, labels)


page_setup()
render()
