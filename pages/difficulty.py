"""Difficulty: the SAE difficulty proxy with its evidence beside the baselines, its distribution
overall and per cluster, proxy vs label, and the rollouts' zero-signal prompts."""

import pandas as pd
import streamlit as st

from pages.charts import cluster_box, proxy_scatter, score_histogram, share_bars
from pages.common import (
    guarded,
    load_cluster_summary,
    load_probe_frame,
    load_rollout_view,
    open_dataset,
)
from pages.evidence import pick_probe_run, show_evidence, weights_table


def _rollouts(dataset: str, path: str, tok: tuple[float, float], labels: dict[int, str]) -> None:
    st.subheader("Rollouts: pass rate and zero-signal prompts")
    got = guarded(lambda: load_rollout_view(path, tok, dataset))
    if got is None:
        return
    run, zero = got
    if run is None:
        st.info(
            "No rollouts ingested. `python -m core rollouts --dataset "
            f"{dataset} FILE.jsonl` reads n samples per prompt with pass/fail and adds "
            "pass_rate, pass_at_k and zero_signal (all pass or all fail: GRPO gets zero "
            "advantage from the whole group) to every prompt."
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
    st.caption(f"Source: {run['config'].get('source')} (rollouts run {run['run_id']}).")
    summary = load_cluster_summary(path, tok, dataset)
    left, right = st.columns([2, 3])
    if summary is not None and "mean_zero_signal" in summary.columns:
        bars = summary[["cluster", "mean_zero_signal"]].copy()
        bars["cluster"] = [f"{c} · {labels.get(c, '')}"[:30] for c in bars["cluster"]]
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
        ctx, "difficulty", command=f"python -m core difficulty --dataset {dataset} --label LABEL"
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
            st.caption(
                f"`{name}` predicts the label `{label}` (higher = {cfg.get('higher_is')}); every "
                "example gets the final model's score, and labelled ones also an out-of-fold "
                "score, shown against the label below."
            )
            left, right = st.columns(2)
            left.plotly_chart(
                score_histogram(frame, score="score", title=f"{name}: all examples", label=name),
                key="diff_hist",
                width="stretch",
            )
            right.plotly_chart(
                proxy_scatter(frame, label=label, title=f"{name} (out-of-fold) vs {label}"),
                key="diff_scatter",
                width="stretch",
            )
            if bool(frame["cluster"].notna().any()):
                st.plotly_chart(
                    cluster_box(frame, score="score", labels=labels, title=f"{name} per cluster"),
                    key="diff_box",
                    width="stretch",
                )
            with st.expander("Strongest SAE features of the probe"):
                st.dataframe(weights_table(run), hide_index=True, width="stretch")
    _rollouts(dataset, path, tok, labels)


render()
