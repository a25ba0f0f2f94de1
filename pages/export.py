"""Export: pick filters, see the live count and a preview, write or download the file."""

from pathlib import Path

import streamlit as st

from core.errors import StudioError
from core.export import FORMATS, ExportConfig, build_payload, manifest_bytes
from core.steps import export, export_manifest
from core.store import Filter
from pages.charts import histogram
from pages.common import (
    guarded,
    load_clusters,
    load_datasets,
    load_export_rows,
    load_label_ranges,
    load_tag_values,
    open_dataset,
    provenance,
    selection,
    store,
)


def render() -> None:
    ctx = open_dataset("Export")
    if ctx is None:
        return
    dataset, path, tok, views = ctx.dataset, ctx.path, ctx.tok, ctx.views
    ranges = guarded(lambda: load_label_ranges(path, tok, dataset))
    tag_values = guarded(lambda: load_tag_values(path, tok, dataset))
    if ranges is None or tag_values is None:
        return

    filters: list[Filter] = []
    st.subheader("Filters")
    cols = st.columns(2)
    with cols[0]:
        if views.cluster_run:
            clusters = load_clusters(path, tok, views.cluster_run)
            labels = dict(zip(clusters["cluster"], clusters["label"], strict=True))
            keep = st.multiselect(
                "Keep clusters (empty = all)",
                list(labels),
                key="exp_keep",
                format_func=lambda c: f"{c} · {labels[c]}"[:70],
            )
            drop = st.multiselect(
                "Drop clusters",
                list(labels),
                key="exp_drop",
                format_func=lambda c: f"{c} · {labels[c]}"[:70],
            )
            if keep:
                filters.append(Filter("cluster", "in", [float(c) for c in keep]))
            if drop:
                filters.append(Filter("cluster", "not in", [float(c) for c in drop]))
        for name, part in tag_values.groupby("name", sort=True):
            counts = dict(zip(part["value"], part["n"], strict=True))
            keep_tags = st.multiselect(
                f"{name} (tag; empty = all)",
                list(counts),
                key=f"exp_tag_{name}",
                format_func=lambda v, c=counts: f"{v} ({c[v]:,})",
            )
            if keep_tags:
                filters.append(Filter(str(name), "in", keep_tags))
        if views.dedup_run is not None and st.checkbox(
            "Keep one per near-duplicate group",
            key="exp_dedup",
            help="Drops the extra copies of each group of near-identical SAE vectors "
            "(the lowest-index member stays): `--where is_duplicate=0`.",
        ):
            filters.append(Filter("is_duplicate", "=", 0))
        sel = selection(dataset)
        use_sel = st.checkbox(
            f"Only the map selection ({len(sel):,} points)", key="exp_sel", disabled=not sel
        )
    with cols[1]:
        for row in ranges.itertuples():
            lo, hi = float(row.min), float(row.max)
            if lo == hi:
                continue
            value = st.slider(
                f"{row.name} ({row.kind}, {row.n:,} rows)",
                lo,
                hi,
                (lo, hi),
                key=f"exp_range_{row.name}",
                help="a probe score (see the Difficulty and Quality pages)"
                if row.kind == "score"
                else "a label of the dataset",
            )
            if value[0] > lo:
                filters.append(Filter(str(row.name), ">=", value[0]))
            if value[1] < hi:
                filters.append(Filter(str(row.name), "<=", value[1]))

    st.subheader("Order and format")
    c1, c2, c3 = st.columns(3)
    order = c1.selectbox(
        "Order",
        ["none", "curriculum", "random"],
        key="exp_order",
        help="curriculum: easy-to-hard by difficulty within each cluster, clusters interleaved",
    )
    fmt = c2.selectbox("Format", list(FORMATS), key="exp_fmt")
    seed = int(c3.number_input("Seed", value=0, step=1, key="exp_seed"))
    b1, b2, _ = st.columns(3)
    batch_size = int(
        b1.number_input(
            "Batch size (0 = no batches)",
            min_value=0,
            value=0,
            step=8,
            key="exp_batch",
            help="Write cluster-first batches of the trainer's batch size: each batch takes one "
            "cluster's next rows and a share of its slots from the nearest clusters.",
        )
    )
    mix = b2.slider(
        "Mixing ratio",
        0.0,
        1.0,
        0.2,
        step=0.05,
        key="exp_mix",
        disabled=batch_size == 0,
        help="0 = pure-cluster batches, 1 = a plain shuffle; 0.2 is SAERL's moderate mixing",
    )
    try:
        cfg = ExportConfig(
            order=order,  # type: ignore[arg-type]
            fmt=fmt,  # type: ignore[arg-type]
            seed=seed,
            batch_size=batch_size or None,
            mix=float(mix),
        )
        ids = tuple(sel) if use_sel else None
        df = load_export_rows(path, tok, dataset, tuple(filters), ids, cfg)
    except StudioError as exc:
        st.error(str(exc))
        return
    datasets = load_datasets(path, tok)
    total = int(datasets.set_index("name").loc[dataset, "n_examples"])
    m1, m2, m3 = st.columns(3)
    m1.metric("Rows to export", f"{len(df):,}")
    m2.metric("Removed by the rules", f"{total - len(df):,}", help=f"of {total:,} rows")
    if "batch" in df.columns and not df.empty:
        share = float(df.attrs.get("cross_cluster_share", 0.0))
        m3.metric(
            "Rows from other clusters",
            f"{share:.1%}",
            help="measured share of rows sitting in a batch whose home is another cluster",
        )
        first = df[df["batch"] < 5].groupby(["batch", "cluster"]).size().unstack(fill_value=0)
        st.markdown("**First batches: rows per cluster**")
        st.dataframe(first, width="stretch")
    if filters:
        st.caption(
            "Rules: "
            + " AND ".join(f.describe() for f in filters)
            + (" AND in map selection" if use_sel else "")
        )
    st.dataframe(df.head(100), hide_index=True, width="stretch")
    st.caption(provenance(views))

    if not ranges.empty:
        all_rows = load_export_rows(path, tok, dataset, (), None, ExportConfig())
        # probe scores first, then labels; a constant column has nothing to show
        shown = ranges[ranges["min"] < ranges["max"]].sort_values("kind", ascending=False)
        names = shown["name"].tolist()[:3]
        hcols = st.columns(max(1, len(names)))
        for i, name in enumerate(names):
            hcols[i].plotly_chart(
                histogram(all_rows[name], title=f"{name}: all vs exported", selected=df[name]),
                width="stretch",
            )

    st.subheader("Write")
    out = st.text_input("Output path", value=f"data/exports/{dataset}.{fmt}", key="exp_out")
    w1, w2, w3 = st.columns(3)
    if w1.button("Write file + manifest", type="primary"):
        try:
            m = export(
                store(),
                dataset=dataset,
                out=out,
                filters=filters,
                ids=list(ids) if ids else None,
                cfg=cfg,
                record=False,
            )
            st.success(
                f"Wrote {m['rows']:,} rows to {out} and {out}.manifest.json "
                f"(sha256 {m['sha256'][:12]}…)"
            )
        except StudioError as exc:
            st.error(str(exc))
    name = Path(out).name

    def payload() -> tuple[bytes, dict]:
        manifest = export_manifest(
            store(),
            dataset=dataset,
            df=df,
            filters=filters,
            ids=list(ids) if ids else None,
            cfg=cfg,
            views=views,
        )
        return build_payload(df, out_name=name, fmt=fmt, manifest=manifest)

    # Deferred: the bytes are built only when a download button is clicked.
    w2.download_button("Download file", lambda: payload()[0], file_name=name, on_click="ignore")
    w3.download_button(
        "Download manifest",
        lambda: manifest_bytes(payload()[1]),
        file_name=name + ".manifest.json",
        on_click="ignore",
    )
    st.caption(
        "Row order is the training order. Trainers shuffle by default: with verl set "
        "`data.shuffle=False`; with TRL, turn the sampler's shuffling off."
    )


render()
