"""Features: what an SAE feature means (stats, activations, top examples with the firing tokens
marked) and which features an example holds, each side linking to the other and to the Map."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.feature_info import highlight_html, marks_for, snippet_html
from ui.charts import activation_histogram
from ui.common import guarded, open_dataset, page_setup
from ui.loaders import (
    load_example,
    load_example_features,
    load_example_search,
    load_feature_detail,
    load_feature_search,
    load_feature_table,
    load_run,
    token,
)
from ui.state import (
    db_path,
    open_example,
    open_feature,
    selection,
    set_open_example,
    set_open_feature,
    set_selection,
)
from ui.text import code, html_text, md

N_TOP_EXAMPLES = 10
MAX_PICK = 500  # Map selections longer than this are not offered one by one
FEATURE_COLUMNS = {
    "feature_id": st.column_config.NumberColumn("feature", width="small"),
    "label": st.column_config.TextColumn(
        "description / top tokens",
        width="medium",
        help="The imported description, else the feature's top-activating tokens",
    ),
    "freq": st.column_config.NumberColumn(
        "frequency",
        format="percent",
        help="Share of examples whose stored top-k features include this one",
    ),
    "mean_act": st.column_config.NumberColumn(
        "mean act.", format="%.3f", help="Mean pooled activation where it is in the top-k"
    ),
    "n_fire": st.column_config.NumberColumn(
        "fires in", help="Examples with a pooled value > 0 (before the top-k cut)"
    ),
    "mean_value": st.column_config.NumberColumn("activation", format="%.3f"),
    "n_examples": st.column_config.NumberColumn("examples", width="small"),
}


def _select_row(key: str, frame: pd.DataFrame, column: str, setter) -> None:
    """on_select callback of a single-row table: open the picked row's ``column`` value."""
    rows = st.session_state[key].selection.rows
    if rows:
        setter(frame.iloc[rows[0]][column])


def _feature_table(frame: pd.DataFrame, *, key: str, dataset: str, height: int = 240) -> None:
    """A table of features; picking a row opens that feature."""
    cols = [c for c in FEATURE_COLUMNS if c in frame.columns]
    frame = pd.DataFrame(frame[cols]).reset_index(drop=True)
    st.dataframe(
        frame,
        key=key,
        hide_index=True,
        width="stretch",
        height=height,
        column_config=FEATURE_COLUMNS,
        selection_mode="single-row",
        on_select=lambda: _select_row(
            key, frame, "feature_id", lambda f: set_open_feature(dataset, int(f))
        ),
    )


def _apply_query_params(dataset: str) -> None:
    """Deep links: ?feature=12 and ?example=ID open them once, then leave the URL."""
    params = st.query_params
    if "feature" in params and params["feature"].isdigit():
        set_open_feature(dataset, int(params["feature"]))
    if "example" in params:
        set_open_example(dataset, params["example"])
    for name in ("feature", "example"):
        if name in params:
            del params[name]


def _feature_panel(dataset: str, run_id: int, features: pd.DataFrame) -> None:
    path, tok = db_path(), token()
    st.subheader("Features")
    query = st.text_input(
        "Search features", key="feat_query", placeholder="description, token, or id (f123)"
    )
    found = load_feature_search(path, tok, run_id, query)
    st.caption(f"{len(found):,} shown of {len(features):,} features that fired · pick a row")
    _feature_table(found, key="feat_results", dataset=dataset)

    fid = open_feature(dataset)
    if fid is None:
        st.info("Pick a feature above, or one of an example's features on the right.")
        return
    row = features[features["feature_id"] == fid]
    if row.empty:
        st.warning(f"Feature {fid} never fired in this run.")
        return
    f = row.iloc[0]
    st.markdown(f"#### Feature {fid}")
    if isinstance(f["description"], str):
        st.markdown(f"**{md(f['description'])}**")
        st.caption(f"Description imported from {code(f['source'])}")
    tokens = ", ".join(f["tokens"][:8])
    st.caption(f"Top-activating tokens: {md(tokens) or '—'}")
    m = [*st.columns(2), *st.columns(2)]
    m[0].metric(
        "Frequency",
        f"{f['freq']:.1%}",
        help="Share of examples whose stored top-k features include this one "
        f"({int(f['n_topk']):,} examples)",
    )
    m[1].metric(
        "Fires in",
        f"{f['fire_rate']:.1%}",
        help=f"{int(f['n_fire']):,} examples with a pooled value > 0, counted over all SAE "
        "features before the top-k cut",
    )
    m[2].metric("Mean activation", _num(f["mean_act"]), help="Mean pooled value in the top-k")
    m[3].metric(
        "Max activation",
        _num(f["max_act"]),
        help=f"Largest pooled value; largest single-token value {_num(f['max_token_act'])}",
    )
    top, acts, occ = load_feature_detail(path, tok, run_id, fid, N_TOP_EXAMPLES)
    if len(acts):
        st.plotly_chart(
            activation_histogram(
                acts, title="Pooled activations (examples whose stored top-k holds it)"
            ),
            key="feat_hist",
            width="stretch",
        )
    if not top.empty and st.button(
        f"Show its top {len(top)} examples on the Map", key="feat_to_map", icon=":material/map:"
    ):
        set_selection(dataset, top["example_id"].tolist())
        st.switch_page("pages/map.py")
    if not occ.empty:
        with st.expander(f"Strongest single tokens ({len(occ)})", expanded=True):
            st.html("".join(_occurrence_html(r) for r in occ.itertuples()))
    st.markdown("**Top examples** (by pooled activation; firing tokens marked)")
    if not bool(occ["char_start"].notna().to_numpy().any()):
        st.caption("No character spans stored for this run: its top tokens are marked by string.")
    for r in top.itertuples():
        text = r.text if isinstance(r.text, str) else ""
        spans, toks = marks_for(occ, str(r.example_id))
        c1, c2 = st.columns([6, 1])
        c1.html(
            f'<div style="font-size: 0.9em; line-height: 1.5"><b>{html_text(r.example_id)}</b> · '
            f"{float(r.value):.3f}<br>{highlight_html(_clip(text), spans=spans, tokens=toks)}"
            "</div>"
        )
        c2.button(
            "Open",
            key=f"feat_open_ex_{r.rank}",
            help="Show this example's features",
            on_click=set_open_example,
            args=(dataset, str(r.example_id)),
        )


def _occurrence_html(r) -> str:
    """One top token occurrence: the token in its context when its span is known."""
    text = r.text if isinstance(r.text, str) else ""
    if pd.notna(r.char_start) and pd.notna(r.char_end):
        body = snippet_html(text, int(r.char_start), int(r.char_end), value=float(r.value))
    else:
        body = f"<mark>{html_text(r.token)}</mark> in " + highlight_html(
            _clip(text, 160), tokens=[r.token]
        )
    return (
        f'<div style="font-size: 0.85em; margin-bottom: 0.3em"><code>{float(r.value):.3f}</code> '
        f"<b>{html_text(r.example_id)}</b> · {body}</div>"
    )


def _example_panel(dataset: str, run_id: int) -> None:
    path, tok = db_path(), token()
    st.subheader("Examples")
    sel = selection(dataset)
    if sel:
        st.selectbox(
            f"From the Map selection ({len(sel):,})",
            sel[:MAX_PICK],
            index=None,
            key="feat_map_pick",
            placeholder="pick an example",
            on_change=lambda: set_open_example(dataset, st.session_state["feat_map_pick"]),
        )
    query = st.text_input("Find an example", key="ex_query", placeholder="id or text")
    if query:
        found = load_example_search(path, tok, dataset, query)
        if found.empty:
            st.caption("No example matches.")
        else:
            shown = found[["id", "prompt"]].reset_index(drop=True)
            st.dataframe(
                shown,
                key="ex_results",
                hide_index=True,
                width="stretch",
                height=180,
                selection_mode="single-row",
                on_select=lambda: _select_row(
                    "ex_results", shown, "id", lambda e: set_open_example(dataset, str(e))
                ),
            )
    eid = open_example(dataset)
    if eid is not None:
        _example_detail(dataset, run_id, eid)
    elif not sel and not query:
        st.info(
            "Search for an example, open one of a feature's top examples, or select on the Map."
        )
    if len(sel) > 1:
        with st.expander(f"Features shared by the {len(sel):,} selected examples"):
            shared = load_example_features(path, tok, run_id, tuple(sel))
            _feature_table(shared.head(200), key="sel_features", dataset=dataset, height=300)


def _example_detail(dataset: str, run_id: int, eid: str) -> None:
    path, tok = db_path(), token()
    ex = load_example(path, tok, dataset, eid)
    if ex is None:
        st.warning(f"No example '{md(eid)}' in dataset '{md(dataset)}'.")
        return
    cluster = ex.get("cluster")
    st.markdown(
        f"#### Example {md(eid)}" + (f" · cluster {int(cluster)}" if cluster is not None else "")
    )
    fid = open_feature(dataset)
    spans: list[tuple[int, int, float]] = []
    toks: list[str] = []
    feats = load_example_features(path, tok, run_id, (eid,))
    if fid is not None:
        _, _, occ = load_feature_detail(path, tok, run_id, fid, N_TOP_EXAMPLES)
        if fid in set(feats["feature_id"]) or eid in set(occ["example_id"]):
            spans, toks = marks_for(occ, eid)
            st.caption(f"Marked: where feature {fid} fires most (or its top tokens)")
    st.html(
        '<div style="font-size: 0.9em; line-height: 1.5; max-height: 16em; overflow: auto">'
        f"{highlight_html(ex.get('text') or '', spans=spans, tokens=toks)}</div>"
    )
    c1, c2 = st.columns([3, 2])
    c1.markdown(f"**Its top features** ({len(feats)} stored) · pick a row to open one")
    if c2.button("Show on the Map", key="ex_to_map", icon=":material/map:"):
        set_selection(dataset, [eid])
        st.switch_page("pages/map.py")
    _feature_table(feats, key="ex_features", dataset=dataset, height=320)


def _num(x: object) -> str:
    return "—" if x is None or pd.isna(x) else f"{float(x):.3f}"  # type: ignore[arg-type]


def _clip(text: str, n: int = 600) -> str:
    return text if len(text) <= n else text[:n] + "…"


def render() -> None:
    ctx = open_dataset("Features")
    if ctx is None:
        return
    dataset, path, tok, views = ctx.dataset, ctx.path, ctx.tok, ctx.views
    if views.feature_run is None:
        st.info(f"Dataset '{dataset}' has no feature run yet: run `python -m core featurize`.")
        return
    run_id = views.feature_run
    features = guarded(lambda: load_feature_table(path, tok, run_id))
    if features is None:
        return
    _apply_query_params(dataset)
    cfg = load_run(path, tok, run_id)["config"]
    n_desc = int(features["description"].notna().sum())
    st.caption(
        f"Feature run {run_id} — {md(cfg.get('model'))} layer {md(cfg.get('layer'))}, SAE "
        f"{code(cfg.get('sae'))}, {md(cfg.get('pooling'))} pooling, top {md(cfg.get('top_k'))} "
        "kept per example. Frequency, mean and max activation and the histogram are computed "
        "over the stored top-k per example; 'fires in' counts pooled > 0 over all features. "
        + (
            f"{n_desc:,} features carry imported descriptions; the rest are labelled by their "
            "top-activating tokens."
            if n_desc
            else "Features are labelled by their top-activating tokens (import descriptions "
            "with `python -m core import-descriptions`)."
        )
    )
    left, right = st.columns(2, gap="large")
    with left:
        _feature_panel(dataset, run_id, features)
    with right:
        _example_panel(dataset, run_id)


page_setup()
render()
