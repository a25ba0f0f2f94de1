"""Plotly figures for the pages (presentation only: data arrives computed)."""

from __future__ import annotations

import html
import textwrap

import numpy as np
import pandas as pd
import plotly.graph_objects as go

MAX_HOVER_CHARS = 280


def hover_text(text: str | None, *, width: int = 70) -> str:
    """Escape user text for a Plotly hover (it renders HTML) and wrap it."""
    if not isinstance(text, str):
        return ""
    short = text if len(text) <= MAX_HOVER_CHARS else text[:MAX_HOVER_CHARS] + "…"
    lines = textwrap.wrap(short, width=width, replace_whitespace=True) or [""]
    return "<br>".join(html.escape(line) for line in lines[:6])


def _custom(df: pd.DataFrame) -> np.ndarray:
    prompts = [hover_text(t) for t in df["prompt"].tolist()]
    cluster = df["cluster"].astype("Int64").astype(str).replace("<NA>", "–").tolist()
    return np.column_stack(
        [df["id"].astype(str).tolist(), prompts, cluster, df["top_features"].astype(str).tolist()]
    )


HOVER = (
    "<b>%{customdata[0]}</b> · cluster %{customdata[2]}<br>%{customdata[1]}"
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
                    name=str(name)[:28],
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
                name=color_by,
                marker={
                    **marker,
                    "color": numeric[has],
                    "colorscale": "Viridis",
                    "showscale": True,
                    "colorbar": {"title": {"text": color_by}},
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
                name=f"no {color_by}",
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
    frame["cluster name"] = frame["cluster"].map(lambda c: f"{c} · {labels.get(c, '')}"[:40])
    names = [f"{c} · {labels.get(c, '')}"[:40] for c in order]
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
    """A bar per row (e.g. zero-signal share per cluster)."""
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
    names = [f"{k} · {labels.get(int(k), '')}"[:28] if k >= 0 else "no cluster" for k in keys]
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
