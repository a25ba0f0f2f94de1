"""Clusters: the clusters in SAE space with their features and label means, the k sweep, the
near-duplicate groups, and one cluster's examples on a small map."""

from shlex import quote

import pandas as pd
import streamlit as st

from core.signals import clustering_table
from ui.charts import map_figure, sweep_figure
from ui.common import guarded, open_dataset, page_setup, provenance
from ui.loaders import (
    load_cluster_examples,
    load_cluster_summary,
    load_duplicate_groups,
    load_map,
    load_run,
)
from ui.text import code, md


def _features(top: list[dict]) -> str:
    return " · ".join(
        f"f{t['feature']} ({t['tokens']})" if t.get("tokens") else f"f{t['feature']}" for t in top
    )


def render() -> None:
    ctx = open_dataset("Clusters")
    if ctx is None:
        return
    dataset, path, tok, views = ctx.dataset, ctx.path, ctx.tok, ctx.views
    ds = quote(dataset)  # as the commands below take it
    if views.cluster_run is None:
        st.info(
            f"Dataset '{md(dataset)}' has no clusters yet: "
            f"{code(f'python -m core cluster --dataset {ds}')}."
        )
        return
    summary = guarded(lambda: load_cluster_summary(path, tok, dataset))
    run = guarded(lambda: load_run(path, tok, views.cluster_run or 0))
    if summary is None or run is None:
        return
    dups = load_duplicate_groups(path, tok, views.dedup_run) if views.dedup_run else None

    m1, m2, m3 = st.columns(3)
    m1.metric("Clusters", f"{len(summary):,}")
    m2.metric("Examples", f"{int(summary['size'].sum()):,}")
    if views.dedup_run is not None and dups is not None:
        dedup = load_run(path, tok, views.dedup_run)
        m3.metric(
            "Near-duplicate groups",
            f"{dedup['summary'].get('n_groups', 0):,}",
            help=f"cosine >= {dedup['config'].get('threshold')} between SAE vectors; "
            f"{dedup['summary'].get('n_duplicates', 0):,} extra copies "
            "(export with `--where is_duplicate=0` to drop them)",
        )
    else:
        m3.metric("Near-duplicate groups", "–", help="`python -m core dedup --dataset NAME`")

    table = summary.copy()
    table["top_features"] = [_features(t) for t in table["top_features"]]
    means = [c for c in table.columns if c.startswith("mean_")]
    shown = ["cluster", "size", "label", "top_features", *means]
    shown += ["n_duplicates"] if "n_duplicates" in table.columns else []
    left, right = st.columns([3, 2])
    with left:
        event = st.dataframe(
            table[shown],
            key="clusters_table",
            on_select="rerun",
            selection_mode="single-row",
            hide_index=True,
            width="stretch",
            column_config={
                "label": st.column_config.TextColumn(
                    help="Most distinctive SAE features of the cluster (c-TF-IDF)"
                ),
                "top_features": st.column_config.TextColumn(
                    "top features", help="Each feature with its top-activating tokens"
                ),
                **{c: st.column_config.NumberColumn(f"mean {c[5:]}", format="%.3f") for c in means},
            },
        )
        st.caption(provenance(views))
    with right:
        sweep = run["summary"].get("sweep")
        if sweep:
            st.plotly_chart(
                sweep_figure(pd.DataFrame(sweep), chosen=run["summary"].get("k")),
                key="clusters_sweep",
                width="stretch",
            )
            if run["summary"].get("sweep_note"):
                st.warning(f"k = {run['summary'].get('k')}: {md(run['summary']['sweep_note'])}.")
        else:
            st.info(
                "No k sweep for this clustering: "
                f"{code(f'python -m core cluster --dataset {ds} --sweep auto')} scores k by "
                "silhouette and picks the best."
            )
        if dups is not None and not dups.empty:
            st.markdown("**Largest near-duplicate groups**")
            st.dataframe(dups, key="clusters_dups", hide_index=True, width="stretch", height=240)

    evidence = run["summary"].get("baselines")
    if evidence:
        st.markdown("**SAE clusters beside the baselines** (same k-means, same k)")
        st.dataframe(
            clustering_table(evidence),
            key="clusters_evidence",
            hide_index=True,
            width="stretch",
            column_config={
                c: st.column_config.NumberColumn(format="%.3f")
                for c in clustering_table(evidence).columns
                if c not in ("representation", "note")
            },
        )
        cats = ", ".join(md(c) for c in evidence.get("categories", [])) or "none"
        st.caption(
            "Silhouette (cosine, seeded sample) is measured in each representation's own space, "
            "so compare it within a row, not across rows. NMI/AMI measure how well the clusters "
            f"recover the dataset's categorical tags ({cats}): 1 = the same partition, "
            "0 = unrelated. Dense = mean-pooled hidden state of the feature run's layer; "
            "TF-IDF = word uni- and bigrams of the text."
        )
    else:
        st.caption(
            "No baseline comparison in this clustering: "
            f"{code(f'python -m core cluster --dataset {ds} --baselines dense,tfidf')}."
        )

    rows = event.selection.rows if event and event.selection else []
    options = summary["cluster"].tolist()
    labels = dict(zip(summary["cluster"], summary["label"], strict=True))
    picked = st.selectbox(
        "Cluster (or select a row above)",
        options,
        key="clusters_pick",
        format_func=lambda c: f"{c} · {labels.get(c, '')}"[:90],
    )
    cluster = int(options[rows[0]]) if rows else int(picked)
    st.subheader(f"Cluster {cluster} · {md(labels.get(cluster, ''))}")
    examples = guarded(lambda: load_cluster_examples(path, tok, dataset, cluster))
    if examples is None:
        return
    ex_left, ex_right = st.columns([3, 2])
    with ex_left:
        cols = [c for c in examples.columns if c not in ("idx", "x", "y", "cluster")]
        st.dataframe(
            examples[cols], key="clusters_examples", hide_index=True, width="stretch", height=420
        )
    with ex_right:
        if views.projection_run is None:
            st.info(f"No map yet: {code(f'python -m core project --dataset {ds}')}.")
        else:
            points = guarded(lambda: load_map(path, tok, dataset))
            if points is not None:
                part = points[points["cluster"] == cluster]
                colour = next(
                    (c for c in ("difficulty", "quality") if c in part.columns), "cluster"
                )
                st.plotly_chart(
                    map_figure(part, color_by=colour, cluster_labels=labels, height=420),
                    key="clusters_map",
                    width="stretch",
                )


page_setup()
render()
