"""Export: rules and rule sets, what each removes, order and batches, the format; live counts,
the exported rows beside the whole dataset, and a preview of the file; write or download.

The page writes only inside one export folder (ui.common.export_dir: `--export-dir`,
$SAERL_EXPORT_DIR or data/exports): its text box takes a file name there, checked by
core.export.path_under. Any other destination is the browser's: the download buttons. Whoever
can open the page can then not overwrite the database or any file the app's process may write.
"""

import re
import tempfile
from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from core.defaults import DEFAULT_MIX
from core.errors import StudioError
from core.export import (
    FORMATS,
    LAYOUTS,
    ORDERS,
    ExportConfig,
    format_table,
    path_under,
    side_path,
)
from core.filters import Filter
from ui.charts import histogram, kept_bars
from ui.common import error, guarded, open_dataset, page_setup, provenance
from ui.loaders import (
    load_clusters,
    load_datasets,
    load_export_columns,
    load_label_ranges,
    load_layout_preview,
    load_tag_values,
    write_export,
)
from ui.rules_panel import rule_set_panel
from ui.state import export_dir, selection
from ui.text import html_text, md

RULES_DIR = Path("data/rules")
SUFFIX = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}
ORDER_HELP = (
    "curriculum (SAERL): easy-to-hard by difficulty within each cluster, clusters interleaved; "
    "easy-to-hard: the whole set sorted by difficulty; random: a seeded shuffle; none: as ingested"
)


def format_help() -> str:
    """The Format box's help, from the layout registry: each layout's --format names and what
    it is for ("jsonl / parquet / hf: every column; verl: verl's RL Parquet; ...")."""
    return "; ".join(
        f"{' / '.join(layout.formats())}: {layout.summary}" for layout in LAYOUTS.values()
    )


def widget_filters(ctx, ranges: pd.DataFrame, tag_values: pd.DataFrame) -> list[Filter]:
    """The quick filters: clusters in or out, tags, near-duplicates, label and score ranges."""
    views = ctx.views
    filters: list[Filter] = []
    cols = st.columns(2)
    with cols[0]:
        if views.cluster_run:
            clusters = load_clusters(ctx.path, ctx.tok, views.cluster_run)
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
                filters.append(Filter("cluster", "in", [float(c) for c in drop], action="drop"))
        for name, part in tag_values.groupby("name", sort=True):
            counts = dict(zip(part["value"], part["n"], strict=True))
            keep_tags = st.multiselect(
                f"{md(name)} (tag; empty = all)",
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
            filters.append(Filter("is_duplicate", "=", 1, action="drop"))
    with cols[1]:
        for row in ranges.itertuples():
            lo, hi = float(row.min), float(row.max)
            if lo == hi:
                continue
            value = st.slider(
                f"{md(row.name)} ({row.kind}, {row.n:,} rows)",
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
    return filters


def export_options(dataset: str, kind: str, numeric: list[str]) -> tuple[ExportConfig, str]:
    """Order, difficulty column, batches, format and container; returns the config and the
    default file name (inside the export folder)."""
    c1, c2, c3, c4 = st.columns(4)
    order = c1.selectbox("Order", list(ORDERS), key="exp_order", help=ORDER_HELP)
    diff = c2.selectbox(
        "Difficulty column",
        ["(auto)", *numeric],
        key="exp_diffcol",
        help="auto: the label 'difficulty', else a difficulty probe's score, else a pass rate "
        "(higher = easier). A probe score's direction comes from its run.",
    )
    seed = int(c3.number_input("Seed", value=0, step=1, key="exp_seed"))
    batch_size = int(
        c4.number_input(
            "Batch size (0 = no batches)",
            min_value=0,
            value=0,
            step=8,
            key="exp_batch",
            help="Write cluster-first batches of the trainer's batch size: each batch takes one "
            "cluster's next rows and a share of its slots from the nearest clusters.",
        )
    )
    f1, f2, f3 = st.columns(3)
    mix = f1.slider(
        "Mixing ratio",
        0.0,
        1.0,
        DEFAULT_MIX,
        step=0.05,
        key="exp_mix",
        disabled=batch_size == 0,
        help=f"0 = pure-cluster batches, 1 = a plain shuffle; {DEFAULT_MIX} is SAERL's "
        "moderate mixing",
    )
    fmt = f2.selectbox("Format", list(FORMATS), key="exp_fmt", help=format_help())
    layout, default_container = format_table()[fmt]
    containers = list(layout.containers)
    container = f3.selectbox(
        "Container",
        containers,
        index=containers.index(default_container),
        key=f"exp_container_{fmt}",
        help="hf: a folder `datasets.load_from_disk` opens",
    )
    responses = "chosen"
    if kind == "responses" and layout.picks_responses:
        every = st.checkbox(
            "Rejected responses too",
            key="exp_all_responses",
            help="SFT trains on the chosen responses by default: a rejected response is what "
            "the model should not say (the CLI's --responses all)",
        )
        responses = "all" if every else "chosen"
    cfg = ExportConfig(
        order=order,  # type: ignore[arg-type]
        fmt=fmt,
        container=container,
        seed=seed,
        difficulty_column=None if diff == "(auto)" else diff,
        batch_size=batch_size or None,
        mix=float(mix),
        responses=responses,  # type: ignore[arg-type]
    )
    stem = dataset if layout.by_container else f"{dataset}.{fmt}"
    return cfg, safe_name(stem) + SUFFIX[container]


def show_train(m: dict) -> None:
    """How to train on a written export: the manifest's ``train`` recipe (verl's command with
    its overrides, or TRL's config and snippet), with what the export left out."""
    train = m.get("train")
    if m.get("responses") and m["responses"]["kept"] == "chosen":
        st.info(md(m["responses"]["why"]))
    if not train:
        return
    st.markdown(f"**Train on it** with {md(train['trainer'])}: {md(train['batches'])}.")
    verl = "overrides" in train
    st.code(
        train["command"] if verl else train["snippet"],
        language="bash" if verl else "python",
        wrap_lines=True,
    )
    for key in ("placeholders", "rebatching", "last_batch"):
        if train.get(key):
            st.caption(md(f"{key.replace('_', ' ')}: {train[key]}"))


def safe_name(text: str) -> str:
    """``text`` as a file name: runs of anything but letters, digits, '.', '-', '_' become one
    '-' (a dataset may be named anything; its default file name must stay in the folder).

        >>> safe_name("../my set")
        'my-set'
    """
    return re.sub(r"[^\w.-]+", "-", text).strip("-.") or "export"


def render() -> None:
    ctx = open_dataset("Export")
    if ctx is None:
        return
    dataset, path, tok, views = ctx.dataset, ctx.path, ctx.tok, ctx.views
    ranges = guarded(lambda: load_label_ranges(path, tok, dataset))
    tag_values = guarded(lambda: load_tag_values(path, tok, dataset))
    if ranges is None or tag_values is None:
        return

    st.subheader("Rules")
    quick = widget_filters(ctx, ranges, tag_values)
    sel = selection(dataset)
    use_sel = st.checkbox(
        f"Only the map selection ({len(sel):,} points)", key="exp_sel", disabled=not sel
    )
    try:
        request = rule_set_panel(
            ctx, quick, ids=list(sel) if use_sel else None, rules_dir=RULES_DIR
        )
        filters, ids = request.kept_filters(), request.kept_ids()
    except StudioError as exc:
        error(exc)
        return

    st.subheader("Order, batches and format")
    kind = str(load_datasets(path, tok).set_index("name").at[dataset, "kind"])
    cfg, default_name = export_options(dataset, kind, ranges["name"].astype(str).tolist())
    try:
        key_ids = tuple(ids) if ids is not None else None
        # only what the charts read: cluster and the numeric labels and scores
        charted = (("cluster",) if views.cluster_run else ()) + tuple(
            ranges["name"].astype(str).tolist()
        )
        df = load_export_columns(path, tok, dataset, charted, tuple(filters), key_ids, cfg)
        all_rows = load_export_columns(path, tok, dataset, charted, (), None, None)
    except StudioError as exc:
        error(exc)
        return
    difficulty = df.attrs.get("difficulty_column")
    m3, m4 = st.columns(2)  # the rows kept and removed are counted by the rules panel above
    if difficulty:
        m3.metric(
            "Difficulty",
            md(difficulty),
            help=f"higher is {df.attrs.get('higher_is')}; orders and bands read this column",
        )
    if "batch" in df.columns and not df.empty:
        share = float(df.attrs.get("cross_cluster_share", 0.0))
        m4.metric(
            "Rows from other clusters",
            f"{share:.1%}",
            help="measured share of rows sitting in a batch whose home is another cluster",
        )
        first = df[df["batch"] < 5].groupby(["batch", "cluster"]).size().unstack(fill_value=0)
        st.markdown("**First batches: rows per cluster** (columns: clusters)")
        st.dataframe(first, width="stretch")

    st.subheader("What is exported, beside the whole dataset")
    if views.cluster_run and "cluster" in df.columns:
        clusters = load_clusters(path, tok, views.cluster_run)
        labels = dict(zip(clusters["cluster"], clusters["label"], strict=True))
        st.plotly_chart(
            kept_bars(
                all_rows["cluster"].fillna(-1).astype(int).value_counts(),
                df["cluster"].fillna(-1).astype(int).value_counts(),
                labels=labels,
                title="Rows per cluster",
            ),
            width="stretch",
        )
    # probe scores (and reward scores) first, then labels; a constant column has nothing to show
    shown = ranges[ranges["min"] < ranges["max"]].sort_values("kind", ascending=False)
    names = [n for n in shown["name"].tolist() if n in df.columns]
    for start in range(0, len(names), 3):
        hcols = st.columns(3)
        for i, name in enumerate(names[start : start + 3]):
            hcols[i].plotly_chart(
                histogram(
                    all_rows[name],
                    title=html_text(f"{name}: all vs exported"),
                    selected=df[name],
                ),
                width="stretch",
            )
    st.caption(provenance(views))

    st.subheader(f"The file: {cfg.fmt}")
    try:
        preview = load_layout_preview(path, tok, dataset, tuple(filters), key_ids, cfg)
    except StudioError as exc:
        error(exc)
        return
    st.caption(f"The first {len(preview)} rows exactly as they will be written.")
    st.dataframe(preview, hide_index=True, width="stretch")

    st.subheader("Write")
    folder = export_dir()
    typed = st.text_input(
        "File name",
        value=default_name,
        key=f"exp_name_{cfg.fmt}_{cfg.container}",
        help="a name inside the export folder (subfolders allowed, no '..'); any other place: "
        "download the file",
    )
    st.caption(
        f"Written inside the export folder {md(Path(folder).resolve())} (the app's "
        "`--export-dir DIR` or `$SAERL_EXPORT_DIR`); to put the file anywhere else, download it."
    )
    w1, w2, w3 = st.columns(3)
    # the button and the downloads write through the same call, the CLI's export step
    write = partial(write_export, request=request, cfg=cfg)
    if w1.button("Write file + manifest", type="primary", key="exp_write"):
        try:
            out = path_under(folder, typed)
            m = write(out)
            st.success(
                f"Wrote {m['rows']:,} rows to {md(out)} and {md(out.name)}.manifest.json "
                f"(sha256 {m['sha256'][:12]}…)"
            )
            show_train(m)
        except (StudioError, OSError) as exc:
            error(exc)
    # the browser saves a download where the user says; the typed name's last part, made safe,
    # names it (and the temporary file it is built in: never '..' or empty)
    name = safe_name(Path(typed.strip()).name)

    def payload(part: str) -> bytes:
        # into a temporary folder
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            write(target)
            return (target if part == "file" else side_path(target, part)).read_bytes()

    if cfg.container == "hf":
        w2.caption(
            "An hf folder is only written (into the export folder); downloads take jsonl "
            "or parquet."
        )
    else:
        # Deferred: the bytes are built only when a download button is clicked.
        w2.download_button(
            "Download file", lambda: payload("file"), file_name=name, on_click="ignore"
        )
    w3.download_button(
        "Download manifest",
        lambda: payload("manifest"),
        file_name=name + ".manifest.json",
        on_click="ignore",
    )
    if cfg.layout_spec.reward_file:
        w3.download_button(
            "Download reward function",
            lambda: payload("reward"),
            file_name=name + ".reward.py",
            on_click="ignore",
            help="the studio's verifier (reasoning-gym's checker where the task is one, else "
            "the normalised match): compute_score for verl's reward.custom_reward_function, "
            "verifier_reward for TRL's reward_funcs",
        )
    st.caption(
        "Row order is the training order and trainers shuffle by default. To keep it: "
        f"{cfg.layout_spec.keep_order}. The manifest records this and the batch size."
    )


page_setup()
render()
