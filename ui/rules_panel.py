"""The rule-set panel of the Export page: load a saved rule set (or upload one), add feature rules,
save the combined rules as a named JSON file, and see what they remove and why.

Thin: widgets -> core.rules -> draw. The store is read through cached loaders; no SQL here.
"""

from __future__ import annotations

from pathlib import Path
from shlex import quote

import pandas as pd
import streamlit as st

from core.errors import StudioError
from core.filters import Filter
from core.rules import (
    RemovalReport,
    Rule,
    RuleSet,
    feature_identity,
    hit_names,
    parse_rule_set,
    rule_set_bytes,
    rule_set_path,
    save_rule_set,
)
from core.steps.export import ExportRequest
from core.store.sql import Views
from ui.common import PageContext, error
from ui.loaders import (
    check_rule_set_here,
    load_clusters,
    load_feature_table,
    load_removed_view,
    load_rule_set_checked,
    load_run,
)
from ui.text import code, md

# The panel's one piece of session state: {dataset: [feature rules added in the editor]}.
FEATURE_RULES = "rules_feature_rules"
NONE = "(none)"
OPS = (">", ">=", "<", "<=")


def _feature_rules(dataset: str) -> list[Filter]:
    st.session_state.setdefault(FEATURE_RULES, {})
    return list(st.session_state[FEATURE_RULES].get(dataset, []))


def _set_feature_rules(dataset: str, rules: list[Filter]) -> None:
    st.session_state[FEATURE_RULES] = {**st.session_state[FEATURE_RULES], dataset: rules}


def _pick_rule_set(ctx: PageContext, rules_dir: Path) -> tuple[RuleSet | None, Path | None]:
    """The rule set chosen from ``rules_dir`` (and its file) or uploaded (and None); (None, None):
    none, or one that cannot apply, after saying why."""
    files = sorted(rules_dir.glob("*.json")) if rules_dir.is_dir() else []
    c1, c2 = st.columns(2)
    choice = c1.selectbox(
        f"Rule set (JSON files in {md(rules_dir)})",
        [NONE, *(f.name for f in files)],
        key="rules_file",
        help="a rule set saved here or committed with your project",
    )
    upload = c2.file_uploader("…or upload one", type=["json"], key="rules_upload")
    path = None
    try:
        if upload is not None:
            rule_set = parse_rule_set(upload.getvalue().decode("utf-8"), source=upload.name)
            warnings = check_rule_set_here(ctx.path, ctx.dataset, rule_set, ctx.views)
        elif choice != NONE:
            path = rules_dir / choice
            rule_set, warnings = load_rule_set_checked(
                ctx.path, ctx.tok, ctx.dataset, str(path), path.stat().st_mtime
            )
        else:
            return None, None
    except (StudioError, UnicodeDecodeError, OSError) as exc:
        error(f"The rule set is not applied: {exc}")
        return None, None
    # the file's own words (description, notes, the rules quoted in warnings): shown literally
    for warning in warnings:
        st.warning(md(warning))
    if rule_set.description:
        st.caption(md(rule_set.description))
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "#": i,
                    "action": r.action,
                    "rule": r.where if r.where is not None else f"{len(r.ids or ())} listed ids",
                    "note": r.note,
                }
                for i, r in enumerate(rule_set.rules, 1)
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    return rule_set, path


def _feature_editor(ctx: PageContext) -> list[Filter]:
    """Add rules on an SAE feature's activation: 'feature F above t: drop' (or keep)."""
    views = ctx.views
    rules = _feature_rules(ctx.dataset)
    if views.feature_run is None:
        st.caption("Feature rules need a feature run (`python -m core featurize`).")
        return rules
    table = load_feature_table(ctx.path, ctx.tok, views.feature_run)
    d_sae = load_run(ctx.path, ctx.tok, views.feature_run)["summary"].get("d_sae")
    labels = dict(zip(table["feature_id"].astype(int), table["label"].astype(str), strict=True))
    c1, c2, c3, c4 = st.columns([2, 1, 2, 2])
    fid = int(
        c1.number_input(
            "Feature",
            min_value=0,
            max_value=int(d_sae) - 1 if d_sae else None,
            value=0,
            step=1,
            key="rules_feat_id",
        )
    )
    op = c2.selectbox("Op", OPS, key="rules_feat_op")
    threshold = float(
        c3.number_input("Activation", value=0.0, step=0.1, format="%.4f", key="rules_feat_t")
    )
    action = c4.radio("Then", ["drop", "keep"], horizontal=True, key="rules_feat_action")
    freq = table.set_index("feature_id")["freq"].get(fid)
    st.caption(
        f"feature {fid}: {md(labels.get(fid) or 'never in a stored top-k')}"
        + (f" · in the top-k of {float(freq):.1%} of examples" if freq is not None else "")
    )
    if st.button("Add feature rule", key="rules_feat_add"):
        rules = [*rules, Filter(f"feature:{fid}", op, threshold, action=action)]  # type: ignore[arg-type]
        _set_feature_rules(ctx.dataset, rules)
    for i, f in enumerate(rules):
        n = int(f.column.split(":")[1])
        r1, r2 = st.columns([6, 1])
        r1.markdown(f"{code(f.describe())} — {md(labels.get(n, ''))}")
        if r2.button("Remove", key=f"rules_feat_del_{i}"):
            _set_feature_rules(ctx.dataset, rules[:i] + rules[i + 1 :])
            st.rerun()
    return rules


def _save(
    ctx: PageContext,
    *,
    loaded: RuleSet | None,
    widget_filters: list[Filter],
    feature_rules: list[Filter],
    ids: list[str] | None,
    rules_dir: Path,
) -> None:
    """Save the combined rules under a name (the loaded set's rules as they were, then the
    widgets', then the feature rules, then the selection as a keep-ids rule)."""
    rules = list(loaded.rules) if loaded else []
    rules += [Rule.from_filter(f, note="Export page") for f in widget_filters]
    rules += [Rule.from_filter(f, note="feature rule") for f in feature_rules]
    if ids is not None:
        rules.append(Rule("keep", ids=tuple(ids), note="map selection"))
    views = ctx.views
    identity = (
        feature_identity(load_run(ctx.path, ctx.tok, views.feature_run))
        if views.feature_run
        else None
    )
    c1, c2 = st.columns([2, 3])
    name = c1.text_input(
        "Save as", value=loaded.name if loaded else f"{ctx.dataset}-rules", key="rules_save_name"
    )
    description = c2.text_input(
        "Description", value=loaded.description if loaded else "", key="rules_save_desc"
    )
    rule_set = RuleSet(name=name, rules=tuple(rules), description=description, feature_run=identity)
    b1, b2 = st.columns(2)
    if b1.button("Save rule set", key="rules_save", disabled=not rules):
        try:
            path = save_rule_set(rule_set_path(rules_dir, name), rule_set)
            st.success(
                f"Saved {len(rules)} rules to {md(path)}: reapply with "
                f"{code(f'--rules {quote(str(path))}')}"
            )
        except (StudioError, OSError) as exc:
            error(exc)
    b2.download_button(
        "Download rule set",
        rule_set_bytes(rule_set),
        file_name=f"{name or 'rules'}.json",
        disabled=not rules,
        on_click="ignore",
    )


def _draw(report: RemovalReport, sources: list[str], views: Views, ctx: PageContext) -> None:
    """The removed view: per rule, per cluster, per band, and the removed rows with why."""
    m1, m2 = st.columns(2)
    m1.metric("Kept by the rules", f"{report.kept:,}")
    m2.metric("Removed", f"{report.total - report.kept:,}", help=f"of {report.total:,} rows")
    if not report.per_rule.empty:
        st.markdown(
            "**Rows removed per rule** — removes: on its own; first: not removed by an earlier "
            "rule; only: removed by no other rule"
        )
        st.dataframe(report.per_rule.assign(source=sources), hide_index=True, width="stretch")
    c1, c2 = st.columns(2)
    if views.cluster_run and not report.per_cluster.empty:
        labels = load_clusters(ctx.path, ctx.tok, views.cluster_run).set_index("cluster")["label"]
        per_cluster = report.per_cluster.assign(label=report.per_cluster["cluster"].map(labels))
        c1.markdown("**Remaining per cluster** (-1: no cluster)")
        c1.dataframe(per_cluster, hide_index=True, width="stretch")
    if report.bands is not None:
        c2.markdown(
            f"**Remaining per difficulty band** ('{md(report.difficulty)}', higher = "
            f"{md(report.bands.higher_is)}; easy first)"
        )
        c2.dataframe(report.per_band, hide_index=True, width="stretch")
    else:
        c2.caption("No difficulty column (label, difficulty probe or pass rate): no bands.")
    removed = report.removed_rows()
    with st.expander(f"Removed rows and why ({len(removed):,})"):
        cols = [c for c in ("id", "cluster", "band", "why", "prompt") if c in removed.columns]
        st.dataframe(removed[cols].head(2000), hide_index=True, width="stretch")


def rule_set_panel(
    ctx: PageContext,
    widget_filters: list[Filter],
    *,
    rules_dir: Path,
    ids: list[str] | None = None,
) -> ExportRequest:
    """Rule sets on the Export page. Returns what the page exports, as the CLI's flags give it:
    the loaded rule set and its file, then ``widget_filters`` and the feature rules, and ``ids``
    (a map selection), so its ``kept_filters()`` are the combined filters and ``kept_ids()`` the
    set's ids and the selection, both."""
    loaded, rules_file = _pick_rule_set(ctx, rules_dir)
    st.markdown("**Feature rules**")
    feature_rules = _feature_editor(ctx)
    request = ExportRequest(
        dataset=ctx.dataset,
        filters=(*widget_filters, *feature_rules),
        ids=None if ids is None else tuple(ids),
        rule_set=loaded,
        rules_path=None if rules_file is None else str(rules_file.absolute()),
    )
    filters, keep_ids = request.kept_filters(), request.kept_ids()
    # where each rule came from, beside the per-rule counts
    sources = (
        [f"rule set: {r.note}" if r.note else "rule set" for r in loaded.filter_rules()]
        if loaded
        else []
    )
    sources += ["Export page"] * len(widget_filters) + ["feature rule"] * len(feature_rules)
    if keep_ids is not None:
        sources.append("rule set and map selection" if loaded and loaded.ids() else "map selection")
    names = hit_names(filters, selection=keep_ids is not None)
    with st.expander("Save these rules as a rule set"):
        _save(
            ctx,
            loaded=loaded,
            widget_filters=widget_filters,
            feature_rules=feature_rules,
            ids=ids,
            rules_dir=rules_dir,
        )
    report = load_removed_view(
        ctx.path,
        ctx.tok,
        ctx.dataset,
        tuple(filters),
        None if keep_ids is None else tuple(keep_ids),
        tuple(names),
    )
    _draw(report, sources, ctx.views, ctx)
    return request
