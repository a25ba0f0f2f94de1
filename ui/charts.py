"""Plotly figures for the pages (presentation only: data arrives computed).

Plotly renders a subset of HTML (``<a href>``, ``<b>``, ``<br>``, entities) in every text it
draws: hovers, legend entries, tick labels, titles. So, in every function here:

- what comes from the data (frame values, the ``labels`` / ``cluster_labels`` dicts, source and
  column names passed as ``color_by``, ``a``, ``b``, ``source``) is user text and is escaped here
  with :func:`ui.text.html_text`;
- ``title``, ``xaxis`` and ``label`` arguments, the ``score`` / ``color`` column names of
  :func:`score_histogram`, and the x values of :func:`share_bars` are HTML already: the page
  escapes any user text in them (it may add its own ``<b>``);
- no user text is pasted into a ``hovertemplate`` (``%{...}`` in it would be read as a
  variable): it travels in ``customdata`` / ``text`` or as the trace's name (``%{fullData.name}``).
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ui.text import html_text

MAX_HOVER_CHARS = 280


def hover_text(text: str | None, *, width: int = 70) -> str:
    """Escape user text for a Plotly hover (it renders HTML) and wrap it; not text: empty."""
    if not isinstance(text, str):
        return ""
    short = text if len(text) <= MAX_HOVER_CHARS else text[:MAX_HOVER_CHARS] + "…"
    lines = textwrap.wrap(short, width=width, replace_whitespace=True) or [""]
    return "<br>".join(html_text(line) for line in lines[:6])


def _custom(df: pd.DataFrame) -> np.ndarray:
    """The map's customdata: [id as stored (the Map's selection reads it back, never drawn),
    prompt, cluster, top features, id escaped for the hover]."""
    ids = df["id"].astype(str).tolist()
    prompts = [hover_text(t) for t in df["prompt"].tolist()]
    cluster = df["cluster"].astype("Int64").astype(str).replace("<NA>", "–").tolist()
    # the store joins each point's features with <br> (one a line): escape each, keep the breaks
    top = ["<br>".join(map(html_text, t.split("<br>"))) for t in df["top_features"].astype(str)]
    return np.column_stack([ids, prompts, cluster, top, [html_text(i) for i in ids]])


HOVER = (
    "<b>%{customdata[4]}</b> · cluster %{customdata[2]}<br>%{customdata[1]}"
    "<br><br><b>top SAE features</b><br>%{customdata[3]}<extra></extra>"
)


def map_figure(
    df: pd.DataFrame,
    *,
    color_by: str,
    cluster_labels: dict[int, str],
    height: int = 640,
) -> go.Figure:
    """The UMAP scatter (WebGL). Coloured by cluster or a tag (one trace per value, fixed order so
    colours stay put when filters change) or by a numeric column (missing values in grey)."""
    fig = go.Figure()
    marker = {"size": 5 if len(df) < 20_000 else 3, "opacity": 0.8}
    values = df[color_by]
    if color_by == "cluster" or not pd.api.types.is_numeric_dtype(values):
        # categorical: one trace per value, in a fixed order so colours stay put under filters
        palette = _palette()
        cats = sorted(values.dropna().unique().tolist())
        for i, cat in enumerate(cats):
            part = df[values == cat]
            name = f"{cat} · {cluster_labels.get(int(cat), '')}" if color_by == "cluster" else cat
            color = palette[(int(cat) if color_by == "cluster" else i) % len(palette)]
            fig.add_trace(
                go.Scattergl(
                    x=part["x"],
                    y=part["y"],
                    mode="markers",
                    name=html_text(str(name)[:28]),
                    marker={**marker, "color": color},
                    customdata=_custom(part),
                    hovertemplate=HOVER,
                )
            )
        has = values.notna()
    else:
        numeric = pd.to_numeric(values, errors="coerce")
        has = numeric.notna()
        part = df[has]
        fig.add_trace(
            go.Scattergl(
                x=part["x"],
                y=part["y"],
                mode="markers",
                name=html_text(color_by),
                marker={
                    **marker,
                    "color": numeric[has],
                    "colorscale": "Viridis",
                    "showscale": True,
                    "colorbar": {"title": {"text": html_text(color_by)}},
                },
                customdata=_custom(part),
                hovertemplate=HOVER,
            )
        )
    if not bool(has.all()):
        rest = df[~has]
        fig.add_trace(
            go.Scattergl(
                x=rest["x"],
                y=rest["y"],
                mode="markers",
                name=html_text(f"no {color_by}"),
                marker={**marker, "color": "#bbbbbb"},
                customdata=_custom(rest),
                hovertemplate=HOVER,
            )
        )
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        dragmode="lasso",
        legend={
            "itemsizing": "constant",
            "font": {"size": 10},
            "orientation": "h",
            "yanchor": "top",
            "y": -0.02,
            "xanchor": "left",
            "x": 0,
        },
        xaxis={"showticklabels": False, "zeroline": False},
        yaxis={"showticklabels": False, "zeroline": False},
        uirevision="map",
    )
    return fig


def _palette() -> list[str]:
    import plotly.express as px

    return px.colors.qualitative.Dark24 + px.colors.qualitative.Light24


def histogram(values: pd.Series, *, title: str, selected: pd.Series | None = None) -> go.Figure:
    """Distribution of a column for the whole dataset, with the kept rows overlaid."""
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=values, name="all rows", opacity=0.5))
    if selected is not None:
        fig.add_trace(go.Histogram(x=selected, name="exported", opacity=0.8))
    fig.update_layout(
        barmode="overlay",
        height=220,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title={"text": title, "font": {"size": 13}},
        showlegend=False,
    )
    return fig


def activation_histogram(values: np.ndarray, *, title: str) -> go.Figure:
    """Distribution of one feature's pooled activations."""
    fig = go.Figure(go.Histogram(x=values, nbinsx=40, marker={"color": "#ff8c00"}))
    fig.update_layout(
        height=200,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title={"text": title, "font": {"size": 13}},
        xaxis_title="pooled activation",
        yaxis_title="examples",
        bargap=0.05,
    )
    return fig


def sweep_figure(sweep: pd.DataFrame, *, chosen: int | None) -> go.Figure:
    """Silhouette against k from a cluster run's sweep, the k that was used marked."""
    fig = go.Figure(
        go.Scatter(x=sweep["k"], y=sweep["silhouette"], mode="lines+markers", name="silhouette")
    )
    if chosen is not None and chosen in set(sweep["k"]):
        y = float(sweep.loc[sweep["k"] == chosen, "silhouette"].iloc[0])
        fig.add_trace(
            go.Scatter(
                x=[chosen],
                y=[y],
                mode="markers",
                name=f"used: k={chosen}",
                marker={"size": 12, "color": "#d62728"},
            )
        )
    fig.update_layout(
        height=240,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title={"text": "Silhouette (cosine) by k", "font": {"size": 13}},
        xaxis_title="k",
        yaxis_title="silhouette",
        showlegend=False,
    )
    return fig


def score_histogram(
    df: pd.DataFrame,
    *,
    score: str,
    title: str,
    color: str | None = None,
    threshold: float | None = None,
    label: str | None = None,
) -> go.Figure:
    """Distribution of a probe score, optionally split by a label and with a threshold line."""
    import plotly.express as px

    frame = df.copy()
    if color is not None:
        frame[color] = frame[color].map(lambda v: "unlabelled" if pd.isna(v) else f"{v:g}")
    # split by a label, each group is normalised to its own size: a rare class (bad items)
    # would otherwise be invisible beside the common one
    fig = px.histogram(
        frame,
        x=score,
        color=color,
        nbins=50,
        barmode="overlay",
        opacity=0.7,
        title=title,
        histnorm="percent" if color is not None else None,
    )
    if threshold is not None:
        fig.add_vline(x=threshold, line_color="#d62728", line_dash="dash")
    fig.update_layout(
        height=280,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        xaxis_title=label or score,
        yaxis_title=f"% of rows with that {color}" if color is not None else "examples",
    )
    return fig


def cluster_box(df: pd.DataFrame, *, score: str, labels: dict[int, str], title: str) -> go.Figure:
    """A probe score's distribution per cluster (clusters ordered by their median)."""
    import plotly.express as px

    frame = df.dropna(subset=["cluster"]).copy()
    frame["cluster"] = frame["cluster"].astype(int)
    order = frame.groupby("cluster")[score].median().sort_values().index.tolist()
    # cut, then escaped (an entity is never cut in half)
    frame["cluster name"] = frame["cluster"].map(
        lambda c: html_text(f"{c} · {labels.get(c, '')}"[:40])
    )
    names = [html_text(f"{c} · {labels.get(c, '')}"[:40]) for c in order]
    fig = px.box(
        frame,
        x="cluster name",
        y=score,
        category_orders={"cluster name": names},
        points=False,
        title=title,
    )
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title=None)
    return fig


def proxy_scatter(df: pd.DataFrame, *, label: str, title: str) -> go.Figure:
    """Out-of-fold proxy against the label for labelled rows, coloured by cluster, with y = x.
    Integer labels (difficulty levels) are jittered so their points do not stack."""
    frame = df.dropna(subset=["oof", label]).copy()
    x = frame[label].to_numpy(dtype=float)
    if len(x) and np.allclose(x, np.round(x)):
        rng = np.random.default_rng(0)
        x = x + rng.uniform(-0.15, 0.15, size=len(x))
    palette = _palette()
    colours = [palette[int(c) % len(palette)] if pd.notna(c) else "#888" for c in frame["cluster"]]
    fig = go.Figure(
        go.Scattergl(
            x=x,
            y=frame["oof"],
            mode="markers",
            marker={"size": 4, "color": colours, "opacity": 0.6},
            text=[hover_text(p) for p in frame["prompt"]],
            hovertemplate="label %{x:.2f}<br>proxy %{y:.3f}<br>%{text}<extra></extra>",
        )
    )
    if len(frame):
        lo = float(min(frame[label].min(), frame["oof"].min()))
        hi = float(max(frame[label].max(), frame["oof"].max()))
        fig.add_trace(
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "#999"})
        )
    fig.update_layout(
        height=360,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": title, "font": {"size": 13}},
        xaxis_title=f"{label} (label)",
        yaxis_title="proxy (out-of-fold)",
        showlegend=False,
    )
    return fig


def share_bars(df: pd.DataFrame, *, x: str, y: str, title: str) -> go.Figure:
    """A bar per row (e.g. zero-signal share per cluster); ``x`` values are drawn as given
    (HTML: the page escapes user text in them)."""
    fig = go.Figure(go.Bar(x=df[x], y=df[y], marker={"color": "#4c78a8"}))
    fig.update_layout(
        height=280,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": title, "font": {"size": 13}},
        yaxis_tickformat=".0%",
    )
    return fig


def kept_bars(
    all_counts: pd.Series, kept_counts: pd.Series, *, labels: dict[int, str], title: str
) -> go.Figure:
    """Rows per cluster: the whole dataset beside what is exported."""
    keys = sorted(set(all_counts.index) | set(kept_counts.index))
    names = [
        html_text(f"{k} · {labels.get(int(k), '')}"[:28]) if k >= 0 else "no cluster" for k in keys
    ]
    fig = go.Figure(
        [
            go.Bar(x=names, y=[int(all_counts.get(k, 0)) for k in keys], name="all rows"),
            go.Bar(x=names, y=[int(kept_counts.get(k, 0)) for k in keys], name="exported"),
        ]
    )
    fig.update_layout(
        barmode="group",
        height=260,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": title, "font": {"size": 13}},
        legend={"orientation": "h", "y": 1.12},
    )
    return fig


# --- the Rewards page -----------------------------------------------------------------------------
OUTCOME_COLOURS = {"right": "#2ca02c", "wrong": "#d62728", "tie": "#9e9e9e"}
ROLE_SYMBOLS = {"chosen": "circle", "rejected": "x", "response": "circle"}


def _short(text: object, n: int = 48) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def accuracy_bars(table: pd.DataFrame, *, title: str, xaxis: str) -> go.Figure:
    """Accuracy per category value: a bar per reward source in each value's group, its 95%
    interval as an error bar, chance as a black dash. ``table``: source, group (text), acc,
    low, high, chance, n (pairs or prompts)."""
    fig = go.Figure()
    # long names (cluster labels) would take the chart's height: ticks show their first words,
    # the hover the whole name
    names = table["group"].astype(str)
    ticks = names.map(lambda t: _short(t, 14))
    if int(ticks.nunique()) < int(names.nunique()):  # cutting would merge two categories
        ticks = names
    table = table.assign(tick=ticks.map(html_text))
    for name, part in table.groupby("source", sort=False):
        acc = part["acc"].to_numpy(dtype=float)
        fig.add_trace(
            go.Bar(
                x=part["tick"],
                y=acc,
                name=html_text(name),
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": part["high"].to_numpy(dtype=float) - acc,
                    "arrayminus": acc - part["low"].to_numpy(dtype=float),
                    "thickness": 1,
                },
                customdata=np.column_stack(
                    [
                        part["low"],
                        part["high"],
                        part["n"],
                        part["group"].astype(str).map(html_text),
                    ]
                ),
                hovertemplate=(
                    "<b>%{fullData.name}</b> · %{customdata[3]}<br>accuracy %{y:.3f} "
                    "[%{customdata[0]:.3f}, %{customdata[1]:.3f}]<br>n %{customdata[2]}"
                    "<extra></extra>"
                ),
            )
        )
    chance = table.drop_duplicates("group")
    fig.add_trace(
        go.Scatter(
            x=chance["tick"],
            y=chance["chance"],
            mode="markers",
            name="chance",
            marker={"symbol": "line-ew", "size": 28, "line": {"width": 2, "color": "#222"}},
            hovertemplate="chance %{y:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        barmode="group",
        height=360,
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
        title={"text": title, "font": {"size": 13}},
        xaxis_title=xaxis,
        yaxis={"title": "accuracy", "range": [0, 1.05]},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
    )
    return fig


def margin_figure(curves: pd.DataFrame, *, title: str) -> go.Figure:
    """Pairwise accuracy against the share of pairs kept when only pairs with a score margin
    above m are kept, one line per source. ``curves``: source, margin, accuracy, n_pairs,
    kept_share."""
    fig = go.Figure()
    for name, part in curves.groupby("source", sort=False):
        fig.add_trace(
            go.Scatter(
                x=part["kept_share"],
                y=part["accuracy"],
                mode="lines+markers",
                name=html_text(name),
                customdata=np.column_stack([part["margin"], part["n_pairs"]]),
                hovertemplate=(
                    "<b>%{fullData.name}</b><br>margin > %{customdata[0]:.3g}: "
                    "%{customdata[1]} pairs (%{x:.1%})<br>accuracy %{y:.3f}<extra></extra>"
                ),
            )
        )
    fig.add_hline(y=0.5, line_dash="dot", line_color="#999", annotation_text="chance")
    fig.update_layout(
        height=340,
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
        title={"text": title, "font": {"size": 13}},
        xaxis={"title": "share of pairs kept", "tickformat": ".0%", "range": [1.02, -0.02]},
        yaxis={"title": "pairwise accuracy", "range": [0, 1.05]},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
    )
    return fig


def reward_scatter(df: pd.DataFrame, *, a: str, b: str) -> go.Figure:
    """Every response's score under source a (x) against source b (y), coloured by its
    cluster on the responses map, chosen as circles and rejected as crosses; the hover shows
    the cluster label, the response and its prompt (escaped). ``df``: score_a, score_b, role,
    cluster, cluster_label, prompt, response."""
    fig = go.Figure()
    palette = _palette()
    has = df["cluster"].notna()
    groups = [(int(c), df[df["cluster"] == c]) for c in sorted(df.loc[has, "cluster"].unique())]
    if not bool(has.all()):
        groups.append((-1, df[~has]))
    for cluster, part in groups:
        label = "" if cluster < 0 else str(part["cluster_label"].iloc[0])
        name = "no cluster" if cluster < 0 else f"{cluster} · {label}"
        custom = np.column_stack(
            [
                part["role"].astype(str),
                [html_text(name)] * len(part),
                [hover_text(t) for t in part["response"]],
                [hover_text(t) for t in part["prompt"]],
                [html_text(a)] * len(part),
                [html_text(b)] * len(part),
            ]
        )
        fig.add_trace(
            go.Scattergl(
                x=part["score_a"],
                y=part["score_b"],
                mode="markers",
                name=html_text(_short(name, 28)),
                marker={
                    "size": 7,
                    "opacity": 0.7,
                    "color": "#888" if cluster < 0 else palette[cluster % len(palette)],
                    "symbol": [ROLE_SYMBOLS.get(r, "circle") for r in part["role"]],
                },
                customdata=custom,
                hovertemplate=(
                    "<b>%{customdata[0]}</b> · cluster %{customdata[1]}<br>"
                    "%{customdata[4]}: %{x:.4g} · %{customdata[5]}: %{y:.4g}<br>"
                    "<b>response</b> %{customdata[2]}<br><b>prompt</b> %{customdata[3]}"
                    "<extra></extra>"
                ),
            )
        )
    fig.update_layout(
        height=460,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis_title=html_text(f"score under {a}"),
        yaxis_title=html_text(f"score under {b}"),
        legend={"itemsizing": "constant", "font": {"size": 10}, "title": {"text": "cluster"}},
        meta="rewards-scatter",
    )
    return fig


def pairs_map(points: pd.DataFrame, pairs: pd.DataFrame, *, source: str) -> go.Figure:
    """The responses map with preference pairs drawn as arrows from the chosen response to
    each rejected one, coloured by whether ``source`` orders the pair right (margin > 0),
    wrong (< 0) or ties it. ``points``: x, y, role, cluster, cluster_label, response (every
    response, faint, coloured by cluster); ``pairs``: x_chosen, y_chosen, x_rejected,
    y_rejected, margin, example_id."""
    fig = go.Figure()
    palette = _palette()
    has = points["cluster"].notna()
    groups = [
        (int(c), points[points["cluster"] == c])
        for c in sorted(points.loc[has, "cluster"].unique())
    ]
    if not bool(has.all()):
        groups.append((-1, points[~has]))
    for cluster, part in groups:
        name = "no cluster" if cluster < 0 else f"{cluster} · {part['cluster_label'].iloc[0]}"
        fig.add_trace(
            go.Scattergl(
                x=part["x"],
                y=part["y"],
                mode="markers",
                name=html_text(_short(name, 28)),
                legendgroup="clusters",
                legendgrouptitle={"text": "responses by cluster"},
                marker={
                    "size": 5,
                    "opacity": 0.35,
                    "color": "#bbbbbb" if cluster < 0 else palette[cluster % len(palette)],
                },
                customdata=np.column_stack(
                    [
                        part["role"].astype(str),
                        [html_text(name)] * len(part),
                        [hover_text(t) for t in part["response"]],
                    ]
                ),
                hovertemplate="<b>%{customdata[0]}</b> · cluster %{customdata[1]}<br>"
                "%{customdata[2]}<extra></extra>",
            )
        )
    placed = pairs.dropna(subset=["x_chosen", "y_chosen", "x_rejected", "y_rejected"])
    margin = placed["margin"].to_numpy(dtype=float)
    outcome = np.where(margin > 0, "right", np.where(margin < 0, "wrong", "tie"))
    names = {"right": "ordered right", "wrong": "ordered wrong", "tie": "tie"}
    for key in ("right", "wrong", "tie"):
        part = placed[outcome == key]
        if part.empty:
            continue
        n = len(part)
        xs = np.column_stack([part["x_chosen"], part["x_rejected"], np.full(n, np.nan)]).ravel()
        ys = np.column_stack([part["y_chosen"], part["y_rejected"], np.full(n, np.nan)]).ravel()
        text = np.repeat(
            [
                f"{html_text(e)}: {html_text(source)} margin {m:.3g}"
                for e, m in zip(part["example_id"], part["margin"], strict=True)
            ],
            3,
        )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=f"{names[key]} ({n})",
                legendgroup="pairs",
                legendgrouptitle={"text": html_text(f"pairs under {source}")},
                line={"color": OUTCOME_COLOURS[key], "width": 1},
                opacity=0.75,
                marker={
                    "symbol": ["circle", "arrow", "circle"] * n,
                    "size": [5, 9, 0] * n,
                    "angleref": "previous",
                    "color": OUTCOME_COLOURS[key],
                },
                text=text,
                hovertemplate="%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        height=600,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={"showticklabels": False, "zeroline": False},
        yaxis={"showticklabels": False, "zeroline": False},
        legend={"itemsizing": "constant", "font": {"size": 10}, "groupclick": "toggleitem"},
        meta="rewards-pairs",
    )
    return fig


def signed_bars(
    df: pd.DataFrame, *, value: str, title: str, xaxis: str, height: int | None = None
) -> go.Figure:
    """A horizontal bar per SAE feature (``feature_id``, ``label``), the signed ``value``
    sorted, positive in blue and negative in orange."""
    frame = df.sort_values(value)
    names = [
        f"f{int(f)} · {html_text(_short(lab, 32))}"
        for f, lab in zip(frame["feature_id"], frame["label"], strict=True)
    ]
    values = frame[value].to_numpy(dtype=float)
    fig = go.Figure(
        go.Bar(
            x=values,
            y=names,
            orientation="h",
            marker={"color": np.where(values >= 0, "#4c78a8", "#f58518").tolist()},
            hovertemplate="%{y}<br>%{x:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        height=height or max(260, 18 * len(frame) + 80),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": title, "font": {"size": 13}},
        xaxis_title=xaxis,
        yaxis={"tickfont": {"size": 10}},
    )
    return fig


def reliability_figure(table: pd.DataFrame, *, title: str) -> go.Figure:
    """A reliability diagram: per confidence bin (``lo``, ``hi``, ``confidence``,
    ``accuracy``, ``count``), how often the most likely class is the label, against the
    diagonal of perfect calibration."""
    used = table[table["count"] > 0]
    fig = go.Figure(
        [
            go.Bar(
                x=(used["lo"] + used["hi"]) / 2,
                y=used["accuracy"],
                width=(used["hi"] - used["lo"]) * 0.9,
                name="accuracy",
                customdata=np.column_stack([used["confidence"], used["count"]]),
                hovertemplate="accuracy %{y:.3f}<br>mean confidence %{customdata[0]:.3f}"
                "<br>n %{customdata[1]}<extra></extra>",
            ),
            go.Scatter(
                x=used["confidence"],
                y=used["confidence"],
                mode="markers",
                name="mean confidence",
                marker={"color": "#d62728", "size": 8},
            ),
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                name="calibrated",
                line={"dash": "dot", "color": "#888"},
            ),
        ]
    )
    fig.update_layout(
        height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": title, "font": {"size": 13}},
        xaxis={"title": "confidence (top class probability)", "range": [0, 1]},
        yaxis={"title": "accuracy", "range": [0, 1.05]},
        meta="rewards-reliability",
    )
    return fig
