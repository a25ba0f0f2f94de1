"""Rewards: how each reward source (verifier, reward model, reward probe, imported scores) judges
a preference set, where two sources agree and disagree, pairs on the responses map, the SAE
features that separate chosen from rejected responses, and calibration of ordinal reward models."""

from __future__ import annotations

import math
from shlex import quote
from typing import Any

import pandas as pd
import streamlit as st

from core.errors import StudioError
from core.rewards import RESPONSE_CLUSTER
from core.store.schema import RESPONSES_SUFFIX
from ui.charts import (
    accuracy_bars,
    margin_figure,
    pairs_map,
    reliability_figure,
    reward_scatter,
    signed_bars,
)
from ui.common import error, guarded, page_setup, provenance
from ui.loaders import (
    load_accuracy_by,
    load_best_of_n_picks,
    load_datasets,
    load_disagreement_probe,
    load_label_names,
    load_margin_curve,
    load_preference_pairs,
    load_preference_shift,
    load_reward_accuracy,
    load_reward_agreement,
    load_reward_calibration,
    load_reward_categories,
    load_reward_datasets,
    load_reward_frame,
    load_reward_sources,
    load_views,
    token,
)
from ui.state import DATASET, db_path
from ui.text import code, html_text, md

MAX_PICKS = 1000  # best-of-n rows sent to the browser at most (the table carries the texts)
MAX_PAIRS = 2000  # pairs drawn on the map at most (SVG arrows); the slider picks fewer


def _num(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, fmt)


def _group(value: Any, by: str, labels: pd.Series) -> str:
    """A category value as a chart label: a cluster with its label, whole numbers without .0."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(missing)"
    if by == RESPONSE_CLUSTER:
        return f"{int(value)} · {labels.get(value, '')}"[:40]
    return f"{value:g}" if isinstance(value, float) else str(value)


def _interval(low: float | None, high: float | None) -> str:
    return "n/a" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"


def _named(name: str, sources: dict[str, dict]) -> str:
    """A source's name and what produced its scores, as markdown."""
    return f"{code(name)} — {md(sources[name]['source'])}"


def _failed(name: str, exc: Exception) -> None:
    """One source's loader failed: one line naming it, the others still shown."""
    st.error(f"{code(name)}: {md(exc)}")


def _pick_dataset(path: str, tok: tuple[float, float]) -> tuple[str, str] | None:
    """The sidebar's picker over the datasets that have reward sources: (name, kind).
    Starts from the dataset the other pages show (or the preference set of its responses)."""
    st.sidebar.caption(f"Database: {md(path)}")
    found = guarded(lambda: load_reward_datasets(path, tok))
    if found is None:
        return None
    if found.empty:
        st.info(
            "No dataset has reward scores yet. Score one with a verifier (`python -m core verify "
            "--dataset NAME`), a reward model (`python -m core reward --dataset NAME --model RM "
            "--head scalar|ordinal`), a file of scores (`python -m core import-rewards FILE "
            "--dataset NAME --name NAME`) or a probe on SAE features (`python -m core "
            "reward-probe --dataset NAME`)."
        )
        return None
    names = found["name"].tolist()
    current = str(st.session_state.get(DATASET) or "").removesuffix(RESPONSES_SUFFIX)
    kinds = dict(zip(found["name"], found["kind"], strict=True))
    name = st.sidebar.selectbox(
        "Dataset with reward scores",
        names,
        index=names.index(current) if current in names else 0,
        key="rw_dataset",
        format_func=lambda n: f"{n} ({kinds[n]})",
        # a dataset picked here is the one the other pages open (visiting alone changes nothing)
        on_change=lambda: st.session_state.__setitem__(DATASET, st.session_state["rw_dataset"]),
    )
    return str(name), str(kinds[name])


def _sources_table(sources: dict[str, dict], frame: pd.DataFrame) -> None:
    st.markdown(
        f"**{len(sources)} reward source{'s' if len(sources) != 1 else ''}:** "
        + ", ".join(f"{code(n)} ({md(s['kind'])})" for n, s in sources.items())
    )
    rows = [
        {
            "source": n,
            "kind": s["kind"],
            "run": s["run_id"],
            "scored": int(frame[f"score:{n}"].notna().sum()),
            "distinct scores": int(frame[f"score:{n}"].nunique()),
            "what produced the scores (as stored)": s["source"],
        }
        for n, s in sources.items()
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="rw_sources")


def _judging(path: str, tok: tuple[float, float], dataset: str, sources: dict, frame) -> None:
    st.subheader("How each source judges the preferences")
    rows = []
    for name in sources:
        try:
            pw, one = load_reward_accuracy(path, tok, dataset, name)
        except StudioError as exc:
            _failed(name, exc)
            continue
        rows.append(
            {
                "source": name,
                "kind": sources[name]["kind"],
                "pairwise": pw.value,
                "pairwise 95%": _interval(pw.ci_low, pw.ci_high),
                "pairs": pw.n,
                "1-of-N": one.value,
                "1-of-N 95%": _interval(one.ci_low, one.ci_high),
                "1-of-N chance": one.chance,
                "prompts": one.n,
            }
        )
    if not rows:
        return
    table = pd.DataFrame(rows)
    three = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        key="rw_judging",
        column_config={c: three for c in ("pairwise", "1-of-N", "1-of-N chance")},
    )
    st.caption(
        "Pairwise accuracy: the share of (chosen, rejected) pairs whose chosen response scores "
        "higher (a tie counts ½; chance 0.5). 1-of-N (StoryRMB): a prompt is right when its chosen "
        "response scores strictly above every one of its N rejected responses (a tie is a "
        "miss); chance is the mean of 1/(N+1). 95%: percentile bootstrap interval over prompts "
        "(1,000 resamples). Each source's scores are its newest stored run (table above); the "
        f"CLI prints the same: {code(f'python -m core judge --dataset {quote(dataset)}')}."
    )

    cats = load_reward_categories(path, tok, dataset)
    options = ([RESPONSE_CLUSTER] if frame["cluster"].notna().any() else []) + cats
    if options:
        c1, c2, c3 = st.columns([2, 2, 2])
        by = c1.selectbox(
            "Accuracy per",
            options,
            key="rw_by",
            format_func=lambda c: (
                "cluster of the response (responses map)" if c == RESPONSE_CLUSTER else c
            ),
        )
        if by == RESPONSE_CLUSTER:
            side = c2.radio(
                "Whose cluster",
                ["chosen", "rejected"],
                horizontal=True,
                key="rw_side",
                help="chosen: each prompt goes to its chosen response's cluster; rejected: each "
                "pair goes to its rejected response's cluster (1-of-N is not defined then)",
            )
        else:
            side = "example"
            c2.caption(f"{code(by)} belongs to the prompt: every response of a prompt shares it.")
        metric = c3.radio(
            "Accuracy",
            ["pairwise", "1-of-N"] if side != "rejected" else ["pairwise"],
            horizontal=True,
            key="rw_metric",
        )
        col = "pairwise" if metric == "pairwise" else "one_of_n"
        labels = (
            frame.dropna(subset=["cluster"])
            .drop_duplicates("cluster")
            .set_index("cluster")["cluster_label"]
        )
        parts = []
        for name in sources:
            try:
                t = load_accuracy_by(path, tok, dataset, name, by, side)
            except StudioError as exc:
                _failed(name, exc)
                continue
            parts.append(
                pd.DataFrame(
                    {
                        "source": name,
                        "group": [_group(v, by, labels) for v in t["value"]],
                        "acc": t[col],
                        "low": t[f"{col}_low"],
                        "high": t[f"{col}_high"],
                        "chance": 0.5 if col == "pairwise" else t["one_of_n_chance"],
                        "n": t["n_pairs"] if col == "pairwise" else t["n_examples"],
                    }
                )
            )
        if parts:
            long = pd.concat(parts, ignore_index=True)
            what = "cluster of the response" if by == RESPONSE_CLUSTER else by
            st.plotly_chart(
                accuracy_bars(
                    long,
                    title=html_text(
                        f"{metric} accuracy per {what}"
                        + (f" ({side} response)" if by == RESPONSE_CLUSTER else "")
                    ),
                    xaxis=html_text(what),
                ),
                key="rw_by_chart",
                width="stretch",
            )
            with st.expander("The numbers per category"):
                st.dataframe(long, hide_index=True, width="stretch", key="rw_by_table")

    curves = []
    for name in sources:
        try:
            curves.append(load_margin_curve(path, tok, dataset, name).assign(source=name))
        except StudioError as exc:
            _failed(name, exc)
    if curves:
        st.plotly_chart(
            margin_figure(
                pd.concat(curves, ignore_index=True),
                title="Pairwise accuracy keeping only pairs with |score chosen − score rejected| > m",
            ),
            key="rw_margin_chart",
            width="stretch",
        )
        st.caption(
            "Each source's margins m run from 0 to the 95th percentile of its own pairs' "
            "|margin| (scores are in each source's own units, so sources meet at equal kept "
            "share). Tied pairs are never kept; a source whose every pair is tied has no curve."
        )


def _compare(
    path: str,
    tok: tuple[float, float],
    dataset: str,
    sources: dict,
    frame: pd.DataFrame,
    a: str,
    b: str,
) -> None:
    st.subheader(f"Compare {code(a)} (A) with {code(b)} (B)")
    try:
        agree, by = load_reward_agreement(path, tok, dataset, a, b)
    except StudioError as exc:
        error(f"{a} vs {b}: {exc}")
        return
    constant = [n for n in (a, b) if int(frame[f"score:{n}"].nunique()) <= 1]
    why = (
        f"undefined: {', '.join(code(n) for n in constant)} gives every response the same score"
        if constant
        else "rank correlation over every response both scored"
    )
    m = st.columns(4)
    m[0].metric("Spearman", _num(agree.spearman), help=f"{why} ({agree.n_items:,} responses)")
    m[1].metric("Kendall τ-b", _num(agree.kendall), help=why)
    pair_what = "(chosen, rejected) pairs" if agree.pair_kind == "preference" else "response pairs"
    m[2].metric(
        "Pair agreement",
        _num(agree.pair_agreement),
        help=f"share of {agree.n_pairs:,} {pair_what} both order the same way (a tie in one "
        "source counts ½; chance ½)",
    )
    m[3].metric(
        "Best-of-n agreement",
        _num(agree.top1_agreement),
        delta=None
        if agree.top1_agreement is None or agree.top1_chance is None
        else f"{agree.top1_agreement - agree.top1_chance:+.3f}",
        delta_description=None
        if agree.top1_chance is None
        else f"vs chance {agree.top1_chance:.3f}",
        delta_color="off",
        delta_arrow="off",
        help=f"over {agree.n_prompts:,} prompts: how often both pick the same best response "
        "(ties for best broken at random, so a tie counts its expected agreement); chance = "
        "mean 1/n",
    )
    st.caption(
        f"{agree.n_pairs:,} pairs, {agree.n_items:,} responses scored by both"
        + (f"; {agree.n_only_a:,} only by A" if agree.n_only_a else "")
        + (f"; {agree.n_only_b:,} only by B" if agree.n_only_b else "")
        + f". A = {_named(a, sources)}  \nB = {_named(b, sources)}"
    )
    for n in constant:
        probe = sources[n]["summary"].get("n_nonzero") == 0
        st.caption(
            f"{code(n)} gives every response the same score"
            + (" (the probe kept no feature)" if probe else "")
            + ": every pair is a tie for it, so its rank correlations are undefined and pair "
            "agreement counts ½ for each pair the other source orders."
        )
    if agree.n_prompts:
        with st.expander(f"Best-of-n picks per prompt ({agree.n_prompts:,} prompts)"):
            picks = load_best_of_n_picks(path, tok, dataset, a, b)
            if len(picks) > MAX_PICKS:
                st.caption(
                    f"The first {MAX_PICKS:,} of {len(picks):,} prompts (those where the picks "
                    "differ come first)."
                )
            st.dataframe(
                picks.head(MAX_PICKS)[
                    [
                        "example_id",
                        "n_candidates",
                        "pick_a",
                        "pick_b",
                        "agree",
                        "chance",
                        "prompt",
                        "response_a",
                        "response_b",
                    ]
                ],
                hide_index=True,
                width="stretch",
                key="rw_picks",
                column_config={
                    "pick_a": st.column_config.NumberColumn(f"pick of {a}", format="%d"),
                    "pick_b": st.column_config.NumberColumn(f"pick of {b}", format="%d"),
                    "agree": st.column_config.NumberColumn(format="%.3f"),
                    "chance": st.column_config.NumberColumn(format="%.3f"),
                    "response_a": st.column_config.TextColumn(f"response {a} picks"),
                    "response_b": st.column_config.TextColumn(f"response {b} picks"),
                },
            )
            st.caption(
                "Each source's best response per prompt (response_idx: 0 = chosen; the lowest "
                "index among tied best). agree: 1 when the picks are the same, 0 when not, and "
                "with ties the chance that random tie-breaking makes them equal; chance = 1/n. "
                "Prompts where the picks differ come first."
            )
    both = frame.dropna(subset=[f"score:{a}", f"score:{b}"]).rename(
        columns={f"score:{a}": "score_a", f"score:{b}": "score_b"}
    )
    st.plotly_chart(reward_scatter(both, a=a, b=b), key="rw_scatter", width="stretch")
    st.caption(
        "Each point is a response (circle: chosen, cross: rejected), coloured by its cluster on "
        "the responses map; many responses can share one score, so points may stack."
    )
    if by is not None:
        labels = (
            frame.dropna(subset=["cluster"])
            .drop_duplicates("cluster")
            .set_index("cluster")["cluster_label"]
        )
        table = by.rename(columns={"group": "cluster"})
        table.insert(1, "label", [labels.get(c, "") for c in table["cluster"]])
        st.markdown("**Agreement within each cluster of the responses map**")
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            key="rw_agreement_by",
            column_config={
                "label": st.column_config.TextColumn(width="medium"),
            }
            | {
                c: st.column_config.NumberColumn(format="%.3f")
                for c in ("spearman", "kendall", "pair_agreement", "top1_agreement", "top1_chance")
            },
        )
        st.caption(
            "Within a cluster only its responses count: a pair needs its chosen and rejected "
            "response both in the cluster, best-of-n picks are made among the cluster's responses "
            "of a prompt; empty cells are undefined (constant scores, no pair)."
        )


def _map(
    path: str,
    tok: tuple[float, float],
    dataset: str,
    sources: dict,
    frame: pd.DataFrame,
    a: str,
) -> None:
    st.subheader("Preference pairs on the responses map")
    responses = dataset + RESPONSES_SUFFIX
    if not bool(frame["x"].notna().any()):
        ds, rs = quote(dataset), quote(responses)
        st.info(
            f"'{md(dataset)}' has no responses map yet. Make one: "
            f"{code(f'python -m core responses --dataset {ds}')}, then "
            f"{code(f'python -m core featurize --dataset {rs} --pool-over response ...')}, "
            f"{code(f'python -m core cluster --dataset {rs}')} and "
            f"{code(f'python -m core project --dataset {rs}')}."
        )
        return
    try:
        pairs = load_preference_pairs(path, tok, dataset, a)
    except StudioError as exc:
        _failed(a, exc)
        return
    c1, c2 = st.columns([2, 3])
    show = c1.selectbox(
        f"Pairs to draw (ordered by {code(a)})",
        ["all", "ordered wrong", "ties", "ordered right"],
        key="rw_pairs_show",
    )
    picked = {
        "all": pairs,
        "ordered wrong": pairs[pairs["margin"] < 0],
        "ties": pairs[pairs["margin"] == 0],
        "ordered right": pairs[pairs["margin"] > 0],
    }[show]
    if picked.empty:
        st.info(f"No pair is {show} by {code(a)}.")
        return
    top = min(len(picked), MAX_PAIRS)
    cap = (
        c2.slider(
            "Pairs drawn at most",
            1,
            top,
            min(top, 300),
            key="rw_pairs_cap",
            help="the first pairs in the dataset's order; fewer keeps the map fast",
        )
        if top > 1
        else top
    )
    drawn = picked.head(cap)
    points = frame.dropna(subset=["x", "y"])
    st.plotly_chart(pairs_map(points, drawn, source=a), key="rw_pairs_map", width="stretch")
    st.caption(
        f"{len(drawn):,} of {len(picked):,} pairs ({show}) drawn as arrows from the chosen "
        f"response to each rejected one: green when {code(a)} scores the chosen higher, red when "
        "lower, grey on a tie. Dots are every response of the preference set, coloured by "
        "cluster. " + " ".join(_map_provenance(path, tok, responses))
    )


def _map_provenance(path: str, tok: tuple[float, float], responses: str) -> list[str]:
    """Where the responses map comes from (feature, cluster and UMAP runs)."""
    lines = provenance(load_views(path, tok, responses)).split("  \n")
    return [line for line in lines if not line.startswith("Other numeric columns")]


def _shift(path: str, tok: tuple[float, float], dataset: str) -> None:
    st.subheader("SAE features that fire more in chosen than in rejected responses")
    top = st.slider("Features shown", 10, 100, 30, step=10, key="rw_shift_top")
    shift = guarded(lambda: load_preference_shift(path, tok, dataset, top))
    if shift is None:
        return
    if shift.empty:
        st.info("No SAE feature fires in these responses.")
        return
    st.plotly_chart(
        signed_bars(
            shift,
            value="mean_diff",
            title=f"The {len(shift)} features with the largest |mean chosen − mean rejected|",
            xaxis="mean activation, chosen minus rejected",
        ),
        key="rw_shift_chart",
        width="stretch",
    )
    cols = ["feature_id", "label", "mean_diff", "mean_chosen", "mean_rejected"]
    cols += ["fire_chosen", "fire_rejected", "n_pos", "n_neg", "sign_p", "sign_q"]
    st.dataframe(
        shift.sort_values("mean_diff", ascending=False)[cols],
        hide_index=True,
        width="stretch",
        key="rw_shift_table",
        column_config={
            c: st.column_config.NumberColumn(format="%.4f")
            for c in ("mean_diff", "mean_chosen", "mean_rejected")
        }
        | {
            "fire_chosen": st.column_config.NumberColumn(format="percent"),
            "fire_rejected": st.column_config.NumberColumn(format="percent"),
            "sign_p": st.column_config.NumberColumn(format="%.3g"),
            "sign_q": st.column_config.NumberColumn(format="%.3g"),
        },
    )
    st.caption(
        f"Pooled SAE activations of the responses in '{md(dataset + RESPONSES_SUFFIX)}' (its newest "
        "feature run), compared over every (chosen, rejected) pair. fire_*: share of pairs where "
        "the feature is nonzero; n_pos / n_neg: pairs where it is higher / lower in the chosen "
        "response; sign_p: two-sided exact sign test; sign_q: its Benjamini-Hochberg q-value "
        "over every feature tested (with about a thousand features, dozens of p < 0.05 arise by "
        "chance). A chosen response with N rejected ones appears in N pairs, so the p-values "
        "are a guide, not a verdict. Length, format and hedging features show up here."
    )


def _disagreement(
    path: str, tok: tuple[float, float], dataset: str, sources: dict, a: str, b: str
) -> None:
    st.subheader(f"Where {code(a)} and {code(b)} disagree")
    dp = guarded(lambda: load_disagreement_probe(path, tok, dataset, a, b))
    if dp is None:
        return
    table = dp.table.rename(columns={"score_a": f"score {a}", "score_b": f"score {b}"})
    cols = [f"score {a}", f"score {b}", "rank_diff", "prompt", "response"]
    cols += ["rank_a", "rank_b", "example_id", "response_idx"]
    st.dataframe(
        table[cols].head(100),
        hide_index=True,
        width="stretch",
        height=320,
        key="rw_disagree_table",
        column_config={
            c: st.column_config.NumberColumn(format="%.3f")
            for c in (f"score {a}", f"score {b}", "rank_a", "rank_b", "rank_diff")
        },
    )
    st.caption(
        "The 100 responses the two rank most differently, largest first. Each source's scores "
        "become normalised ranks in [0, 1] (ties share their average rank); rank_diff = rank "
        f"under {code(a)} − rank under {code(b)} (positive: {code(a)} likes the response more)."
    )
    m = st.columns(4)
    by_response = dp.metrics.get("by_response") or {}
    m[0].metric(
        "Probe R² (prompts held out)",
        _num(dp.metrics.get("r2")),
        help=f"shuffled folds of responses instead: {_num(by_response.get('r2'))}",
    )
    m[1].metric(
        "Probe Spearman (prompts held out)",
        _num(dp.metrics.get("spearman")),
        help=f"shuffled folds of responses instead: {_num(by_response.get('spearman'))}",
    )
    m[2].metric("Responses", f"{int(dp.metrics.get('n') or 0):,}")
    n_nonzero = int(dp.params.get("n_nonzero", len(dp.weights)))
    m[3].metric(
        "Nonzero weights",
        f"{n_nonzero:,}",
        help=f"SAE features the probe uses; the {len(dp.weights)} strongest are kept",
    )
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in dp.params.items()
    )
    st.caption(
        "A sparse probe (elastic net, penalty chosen by inner cross-validation: "
        f"{params or 'defaults'}) predicts rank_diff from each response's SAE features; R² and "
        "Spearman are out of fold with each prompt's responses held out together (they share "
        "the prompt's context, so shuffled folds would flatter the probe). Positive weight: the feature goes with "
        f"{code(a)} ranking a response above {code(b)}."
    )
    if dp.weights.empty:
        st.info(
            "The probe kept no feature: the SAE features do not predict where these two "
            "sources disagree."
        )
        return
    w = dp.weights  # core gives them strongest first
    st.plotly_chart(
        signed_bars(
            w.head(30),
            value="weight",
            title=f"The probe's strongest features ({min(30, len(w))} shown, {n_nonzero} nonzero)",
            xaxis=html_text(f"weight (on max-abs scaled features); + = {a} ranks higher"),
        ),
        key="rw_weights_chart",
        width="stretch",
    )
    labels = dict(zip(w["feature_id"], w["label"], strict=True))
    weights = dict(zip(w["feature_id"], w["weight"], strict=True))
    fid = st.selectbox(
        "Top responses of feature",
        w["feature_id"].tolist(),
        key="rw_feature",
        format_func=lambda f: f"f{f} · {labels.get(f, '')} (weight {weights.get(f, 0.0):+.3g})",
    )
    top = dp.top.get(int(fid), pd.DataFrame())
    if top.empty:
        st.info(f"Feature {fid} fires in none of these responses.")
        return
    texts = dp.table[["example_id", "response_idx", "prompt", "response", "score_a", "score_b"]]
    shown = top.merge(texts, on=["example_id", "response_idx"], how="left").rename(
        columns={"score_a": f"score {a}", "score_b": f"score {b}"}
    )
    shown = shown[["activation", "rank_diff", f"score {a}", f"score {b}", "prompt", "response"]]
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        key="rw_feature_top",
        column_config={
            c: st.column_config.NumberColumn(format="%.3f")
            for c in ("activation", "rank_diff", f"score {a}", f"score {b}")
        },
    )
    st.caption(
        f"The responses where feature {fid} fires most (pooled activation), with their rank_diff."
    )


def _calibration(
    path: str, tok: tuple[float, float], dataset: str, kind: str, sources: dict
) -> None:
    st.subheader("Calibration of ordinal reward models")
    ordinal = [n for n, s in sources.items() if s["config"].get("head") == "ordinal"]
    others = ", ".join(f"{code(n)} ({md(sources[n]['kind'])})" for n in sources if n not in ordinal)
    if not ordinal:
        st.info(
            "No calibration to show: it needs an ordinal (CORAL) reward model's K−1 logits "
            "(`python -m core reward --head ordinal`) and feedback labels 1..K on the examples "
            f"(WildReward's ratings). The sources of '{md(dataset)}' store no logits: {others}. "
            "(The demo has no ordinal reward model and no feedback labels: there is no honest "
            "source for either, so it shows no calibration.)"
        )
        return
    labels = load_label_names(path, tok, dataset) or []
    if not labels:
        st.info(
            f"'{md(dataset)}' has no labels to calibrate {', '.join(code(n) for n in ordinal)} "
            "against: ingest feedback ratings (1..K) as a numeric column."
        )
        return
    c1, c2 = st.columns(2)
    name = c1.selectbox("Ordinal reward model", ordinal, key="rw_cal_source")
    label = c2.selectbox(
        "Feedback label (1..K)",
        labels,
        index=None,
        placeholder="pick the label holding the ratings",
        key="rw_cal_label",
    )
    if label is None:
        st.caption(f"Labels of '{md(dataset)}': {', '.join(md(n) for n in labels)}.")
        return
    cal = guarded(lambda: load_reward_calibration(path, tok, dataset, name, label))
    if cal is None:
        return
    m = st.columns(4)
    m[0].metric(
        "ECE (top label)",
        _num(cal["ece"]),
        help="count-weighted mean |accuracy − confidence| over 10 bins",
    )
    m[1].metric("Top-class accuracy", _num(cal["accuracy"]))
    m[2].metric("Responses", f"{cal['n']:,}", help=f"{cal['n_unlabelled']:,} without the label")
    m[3].metric("Mean label / mean reward", f"{cal['mean_label']:.2f} / {cal['mean_reward']:.2f}")
    st.plotly_chart(
        reliability_figure(
            pd.DataFrame(cal["table"]),
            title=html_text(f"Reliability of {name} against {label} (K={cal['k']})"),
        ),
        key="rw_reliability",
        width="stretch",
    )
    what = "chosen response" if kind == "preferences" else "response"
    st.caption(
        f"{_named(name, sources)}. Each example's {what} is matched to its {code(label)} rating; "
        "the class probabilities come from the CORAL logits (reward = 1 + Σ sigmoid)."
    )


def render() -> None:
    st.title("Rewards")
    path, tok = db_path(), guarded(token)
    if tok is None:
        return
    picked = _pick_dataset(path, tok)
    if picked is None:
        return
    dataset, kind = picked
    sources = guarded(lambda: load_reward_sources(path, tok, dataset))
    frame = guarded(lambda: load_reward_frame(path, tok, dataset))
    if sources is None or frame is None:
        return
    _sources_table(sources, frame)
    prefs = kind == "preferences"
    if prefs:
        _judging(path, tok, dataset, sources, frame)
    else:
        st.info(
            f"'{md(dataset)}' holds {kind}: pairwise and 1-of-N accuracy, the pairs map, the feature "
            "shift and the disagreement probe need a preference set (a chosen and one or more "
            "rejected responses per prompt). Sources can still be compared below."
        )

    # A defaults to a ground truth (the verifier), then reward models, imported scores and
    # probes (SAE before dense), so the first view compares something with a reference
    rank = {"verifier": 0, "rm": 1, "imported": 2, "bt-probe": 3}
    names = sorted(
        sources,
        key=lambda n: (
            rank.get(sources[n]["kind"], 9),
            sources[n]["config"].get("features") == "dense",
            n,
        ),
    )
    c1, c2 = st.columns(2)
    a = c1.selectbox("Source A", names, key="rw_a")
    others = [n for n in names if n != a]
    b = c2.selectbox("Source B", others, key="rw_b") if others else None
    if b is None:
        st.info(f"Only one reward source ({code(a)}): add another to compare them.")
    else:
        _compare(path, tok, dataset, sources, frame, a, b)
    if prefs:
        _map(path, tok, dataset, sources, frame, a)
        has_responses = (dataset + RESPONSES_SUFFIX) in set(load_datasets(path, tok)["name"])
        if has_responses:
            _shift(path, tok, dataset)
            if b is not None:
                _disagreement(path, tok, dataset, sources, a, b)
        else:
            st.info(
                "The feature shift and the disagreement probe read the responses' SAE features: "
                f"{code(f'python -m core responses --dataset {quote(dataset)}')} and featurize "
                f"'{md(dataset + RESPONSES_SUFFIX)}' with `--pool-over response`."
            )
    _calibration(path, tok, dataset, kind, sources)


page_setup()
render()
