"""Rule sets on a stored dataset: check a rule set against the store, and the removed view (what
each rule removes, what remains per cluster and difficulty band).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import StudioError
from core.filters import Filter
from core.rules import (
    RemovalReport,
    RuleSet,
    check_rule_set,
    difficulty_column,
    feature_identity,
    removal_report,
)
from core.store import Store, Views


# --- on a store (the edge: Store methods, no SQL of its own) --------------------------------------
def check_on_store(store: Store, dataset: str, rule_set: RuleSet, *, views: Views) -> list[str]:
    """:func:`check_rule_set` against a dataset of ``store``; returns the warnings."""
    identity = feature_identity(store.run(views.feature_run)) if views.feature_run else None
    listed = any(r.ids is not None for r in rule_set.rules)
    ids = store.wide(dataset, views=views, columns=["id"])["id"].to_pylist() if listed else None
    return check_rule_set(
        rule_set,
        columns=store.filter_columns(dataset, views=views),
        feature_run_config=identity,
        example_ids=ids,
    )


def difficulty_scores(store: Store, views: Views) -> dict[str, str]:
    """The probe scores of a view that measure difficulty: score name -> its run's higher_is
    (what :func:`difficulty_column` takes as ``scores``)."""
    out = {}
    for name, rid in views.score_runs:
        config = store.run(rid)["config"]
        if config.get("signal") == "difficulty":
            out[name] = str(config.get("higher_is") or "harder")
    return out


@dataclass(frozen=True)
class RemovedViewRequest:
    """What the removed view shows, checked on construction: ``filters`` (and the ``ids``
    selection, None: no selection) on ``dataset`` read through ``views``; ``names``, one per
    filter, then "selection" with ids (:func:`hit_names`, :meth:`RuleSet.hit_names`);
    ``difficulty``: the column to band by (None: the :func:`difficulty_column` default);
    ``columns``: more columns for the rows (e.g. prompt). The CLI's rules and the app's rules
    panel build the same request."""

    dataset: str
    views: Views
    filters: Sequence[Filter]
    ids: Sequence[str] | None
    names: Sequence[str]
    difficulty: str | None = None
    columns: Sequence[str] = ()

    def __post_init__(self) -> None:
        want = len(self.filters) + (self.ids is not None)
        if len(self.names) != want:
            raise StudioError(
                f"names: {len(self.names)} given for {len(self.filters)} filters"
                f"{' and a selection' if self.ids is not None else ''}; expected {want}"
            )


def removed_view(store: Store, request: RemovedViewRequest) -> RemovalReport:
    """The removed view of ``request.filters`` (and the ``request.ids`` selection) on a dataset, in
    one query."""
    labels = store.label_names(request.dataset)
    scores = difficulty_scores(store, request.views)
    others = [n for n, _ in request.views.score_runs]
    column, higher_is = difficulty_column(labels, scores, request.difficulty, others=others)
    wanted = list(dict.fromkeys(["cluster", *([column] if column else []), *request.columns]))
    hits = store.rule_hits(
        request.dataset,
        views=request.views,
        filters=request.filters,
        ids=request.ids,
        columns=wanted,
    )
    return removal_report(hits.to_pandas(), request.names, difficulty=column, higher_is=higher_is)
