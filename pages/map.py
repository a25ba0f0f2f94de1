"""Map: the UMAP of SAE features, coloured by cluster or any numeric column, with selection."""

from shlex import quote

import pandas as pd
import streamlit as st

from ui.charts import map_figure
from ui.common import guarded, open_dataset, page_setup, provenance
from ui.loaders import load_clusters, load_map
from ui.state import selection, set_open_example, set_selection
from ui.text import code, md

MAX_OPEN_IN_FEATURES = 1000  # larger selections are for the Export page, not for reading


def render() -> None:
    ctx = open_dataset("Map")
    if ctx is None:
        return
    dataset, path, tok, views = ctx.dataset, ctx.path, ctx.tok, ctx.views
    if views.projection_run is None:
        st.info(
            f"Dataset '{md(dataset)}' has no 2-D projection yet: run `python -m core featurize`, "
            f"then `cluster` and {code(f'python -m core project --dataset {quote(dataset)}')}."
        )
        return
    df = guarded(lambda: load_map(path, tok, dataset))
    if df is None:
        return
    clusters = load_clusters(path, tok, views.cluster_run) if views.cluster_run else pd.DataFrame()
    labels = dict(zip(clusters.get("cluster", []), clusters.get("label", []), strict=True))

    numeric = [
        c
        for c in df.columns
        if c not in ("x", "y", "idx", "cluster") and pd.api.types.is_numeric_dtype(df[c])
    ]
    left, right = st.columns([5, 3])
    with left:
        tags = [
            c
            for c in df.columns
            if c not in ("id", "prompt", "answer", "tags", "top_features")
            and not pd.api.types.is_numeric_dtype(df[c])
            and int(df[c].nunique()) <= 40
        ]
        options = (["cluster"] if views.cluster_run else []) + numeric + tags
        color_by = st.selectbox("Colour by", options, key="map_color") if options else "cluster"
        shown = df
        if views.cluster_run:
            keep = st.multiselect(
                "Show clusters (empty = all)",
                sorted(labels),
                key="map_clusters",
                format_func=lambda c: f"{c} · {labels.get(c, '')}"[:70],
            )
            if keep:
                shown = df[df["cluster"].isin(keep)]
        fig = map_figure(shown, color_by=color_by, cluster_labels=labels)
        event = st.plotly_chart(
            fig,
            key="map_chart",
            on_select="rerun",
            selection_mode=("box", "lasso"),
            width="stretch",
        )
        points = event.selection.points if event and event.selection else []
        if points:
            ids = sorted({p["customdata"][0] for p in points if p.get("customdata")})
            if ids != selection(dataset):
                set_selection(dataset, ids)
        sel = selection(dataset)
        c1, c2 = st.columns([3, 1])
        c1.markdown(
            f"**{len(shown):,}** points shown · **{len(sel):,}** selected "
            "(box or lasso on the map; the Export page can keep just these)"
        )
        if sel and c2.button("Clear selection"):
            set_selection(dataset, [])
            st.rerun()
        if 0 < len(sel) <= MAX_OPEN_IN_FEATURES and c2.button(
            "Open in Features",
            key="map_open_features",
            help="Read the selected examples' SAE features (the first one opened; the others "
            "one pick away)",
        ):
            set_open_example(dataset, sel[0])
            st.switch_page("pages/features.py")
        st.caption(provenance(views))
        if sel:
            st.dataframe(
                df[df["id"].isin(sel)][["id", "cluster", "prompt"]].head(200),
                hide_index=True,
                width="stretch",
            )
    with right:
        st.subheader("Clusters")
        if clusters.empty:
            st.info("No clustering yet: `python -m core cluster`.")
        else:
            st.dataframe(
                clusters[["cluster", "size", "label"]],
                hide_index=True,
                width="stretch",
                height=600,
                column_config={
                    "cluster": st.column_config.NumberColumn(width="small"),
                    "size": st.column_config.NumberColumn(width="small"),
                    "label": st.column_config.TextColumn(
                        width="large",
                        help="Most distinctive SAE features of the cluster (c-TF-IDF), each "
                        "shown by its top-activating tokens",
                    ),
                },
            )


page_setup()
render()
