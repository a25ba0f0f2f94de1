"""The store's SQL text that is built, not written out: functions that return ``(sql, params)``
(or SQL text alone where nothing is bound). No connection, no Store; one-line queries with no
moving part stay beside their method in :mod:`core.store.store`, where they read best.

Values always travel as parameters. The only identifiers built into SQL text are table names of
the schema, column names of its constants, and label, score and tag names, which
:func:`quote_ident` quotes. Filters (:mod:`core.filters` owns their language and the SQL template
of each operator) are rendered here, by :meth:`WideSource.condition`.

    >>> from core.store.schema import PROJECTIONS
    >>> insert_run_rows(PROJECTIONS, "_rows", run_id=7)
    ('INSERT INTO projections SELECT ?, example_id, x, y FROM _rows', [7])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import StudioError
from core.filters import LIST_OPS, OPERATORS, Filter, feature_index
from core.store.schema import (
    BASE_COLUMNS,
    DATASET_TABLES,
    DEDUP_COLUMNS,
    NUMERIC_BASE,
    RUN_TABLES,
    RunTable,
)


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (a label name): ``a"b`` -> ``"a""b"``."""
    return '"' + name.replace('"', '""') + '"'


def json_path(key: str) -> str:
    """A JSON path for one top-level key, quoted so any key name is safe: ``$."a b"``."""
    return "$." + json.dumps(key, ensure_ascii=False)


@dataclass(frozen=True)
class Views:
    """The runs a view of a dataset is built from (None where the step has not run)."""

    feature_run: int | None
    cluster_run: int | None
    projection_run: int | None
    dedup_run: int | None = None
    # (score name, probe run) of the latest probe run per name on the feature run: each adds a
    # numeric column of that name (e.g. difficulty_proxy) to the wide view
    score_runs: tuple[tuple[str, int], ...] = ()


# --- writing rows ------------------------------------------------------------------------------
def insert_run_rows(
    spec: RunTable, view: str, *, run_id: int, source: str | None = None
) -> tuple[str, list[Any]]:
    """Copy the rows registered as ``view`` into ``spec.table`` under ``run_id``.

    >>> from core.store.schema import PROJECTIONS
    >>> insert_run_rows(PROJECTIONS, "_p", run_id=3)[0]
    'INSERT INTO projections SELECT ?, example_id, x, y FROM _p'
    """
    cols = ", ".join(spec.columns)
    if spec.with_source:
        return f"INSERT INTO {spec.table} SELECT ?, {cols}, ? FROM {view}", [run_id, source]
    return f"INSERT INTO {spec.table} SELECT ?, {cols} FROM {view}", [run_id]


def insert_features(view: str, *, run_id: int, dense: bool) -> tuple[str, list[Any]]:
    """A chunk of features (its ``values`` column stored as ``vals``), with the dense baseline
    column when the chunk carries it."""
    d = ", dense" if dense else ""
    return (
        f"INSERT INTO features (run_id, example_id, n_tokens, truncated, feature_ids, vals{d}) "
        f'SELECT ?, example_id, n_tokens, truncated, feature_ids, "values"{d} FROM {view}',
        [run_id],
    )


def insert_top_tokens(
    view: str, *, run_id: int, span_columns: bool, has_spans: bool
) -> tuple[str, list[Any]]:
    """A feature run's top tokens. ``span_columns``: the file has char_start / char_end (schema
    2 on); ``has_spans``: the frame carries them (-1 = unknown, stored as NULL), else NULL."""
    cols, spans = "", ""
    if span_columns:
        cols = ", char_start, char_end"
        spans = ", nullif(char_start, -1), nullif(char_end, -1)" if has_spans else ", NULL, NULL"
    return (
        f"INSERT INTO feature_top_tokens (run_id, feature_id, rank, example_id, token, value{cols}) "
        f"SELECT ?, feature_id, rank, example_id, token, value{spans} FROM {view}",
        [run_id],
    )


def delete_dataset(name: str) -> list[tuple[str, list[Any]]]:
    """The statements that delete a dataset and everything computed from it, except its
    train-sae runs: they record an SAE folder on disk that feature runs of any dataset may read,
    so they stay as its provenance."""
    runs = "SELECT run_id FROM runs WHERE dataset = ? AND step <> 'train-sae'"
    out = [(f"DELETE FROM {table} WHERE run_id IN ({runs})", [name]) for table in RUN_TABLES]
    out.append((f"DELETE FROM runs WHERE run_id IN ({runs})", [name]))
    out += [
        (f"DELETE FROM {table} WHERE dataset = ?", [name])
        for table in DATASET_TABLES
        if table != "runs"
    ]
    out.append(("DELETE FROM datasets WHERE name = ?", [name]))
    return out


# --- reading features ----------------------------------------------------------------------------
def spans(*, present: bool, unknown: str = "-1") -> str:
    """Select list for the char span columns of feature_top_tokens ``t``; ``present`` is False
    on a file from before schema 2, which has none (every span reads as ``unknown``)."""
    if present:
        return (
            f"CAST(coalesce(t.char_start, {unknown}) AS INTEGER) AS char_start, "
            f"CAST(coalesce(t.char_end, {unknown}) AS INTEGER) AS char_end"
        )
    return f"CAST({unknown} AS INTEGER) AS char_start, CAST({unknown} AS INTEGER) AS char_end"


def feature_summary(run_id: int, *, descriptions: bool) -> tuple[str, list[Any]]:
    """One row per feature that fired in a run (see Store.feature_summary for the columns);
    ``descriptions`` is False on a file from before schema 2 (description and source NULL)."""
    desc = (
        "LEFT JOIN feature_descriptions d ON d.run_id = ? AND d.feature_id = ids.feature_id"
        if descriptions
        else ""
    )
    desc_cols = (
        "d.description, d.source"
        if descriptions
        else "NULL::VARCHAR AS description, NULL::VARCHAR AS source"
    )
    sql = f"""
        WITH n AS (SELECT count(*) AS n FROM features WHERE run_id = ?),
        hits AS (
            SELECT unnest(feature_ids) AS feature_id, unnest(vals) AS v
            FROM features WHERE run_id = ?
        ),
        agg AS (
            SELECT feature_id, count(*) AS n_topk, avg(v) AS mean_act, max(v) AS max_act
            FROM hits GROUP BY feature_id
        ),
        st AS (SELECT * FROM feature_stats WHERE run_id = ?),
        toks AS (
            SELECT feature_id, list(token ORDER BY r, token) AS tokens
            FROM (SELECT feature_id, token, min(rank) AS r FROM feature_top_tokens
                  WHERE run_id = ? GROUP BY feature_id, token)
            GROUP BY feature_id
        ),
        ids AS (SELECT feature_id FROM agg UNION SELECT feature_id FROM st)
        SELECT ids.feature_id,
               coalesce(agg.n_topk, 0) AS n_topk,
               coalesce(agg.n_topk, 0) / greatest(n.n, 1) AS freq,
               agg.mean_act, agg.max_act,
               coalesce(st.n_fire, 0) AS n_fire,
               coalesce(st.n_fire, 0) / greatest(n.n, 1) AS fire_rate,
               st.sum_act / nullif(st.n_fire, 0) AS mean_fired,
               st.max_act AS max_token_act,
               coalesce(toks.tokens, []::VARCHAR[]) AS tokens,
               {desc_cols}
        FROM ids CROSS JOIN n
        LEFT JOIN agg ON agg.feature_id = ids.feature_id
        LEFT JOIN st ON st.feature_id = ids.feature_id
        LEFT JOIN toks ON toks.feature_id = ids.feature_id
        {desc}
        ORDER BY ids.feature_id
    """
    return sql, [run_id] * (5 if descriptions else 4)


def feature_tokens(
    run_id: int, feature_ids: list[int] | None, *, span_columns: bool, with_text: bool
) -> tuple[str, list[Any]]:
    """Top token occurrences of a run's features (or of ``feature_ids``), spans NULL where
    unknown, with the example's text when ``with_text``."""
    text = ", e.text" if with_text else ""
    join = (
        "LEFT JOIN runs r ON r.run_id = t.run_id "
        "LEFT JOIN examples e ON e.dataset = r.dataset AND e.id = t.example_id "
        if with_text
        else ""
    )
    return (
        "SELECT t.feature_id, t.rank, t.example_id, t.token, t.value, "
        f"{spans(present=span_columns, unknown='NULL')}{text} FROM feature_top_tokens t {join}"
        "WHERE t.run_id = ? AND (CAST(? AS INTEGER[]) IS NULL "
        "OR list_contains(CAST(? AS INTEGER[]), t.feature_id)) "
        "ORDER BY t.feature_id, t.rank",
        [run_id, feature_ids, feature_ids],
    )


# --- the wide view: one row per example with cluster, xy, every label, score and tag ------------
def view_columns(
    label_names: Sequence[str], views: Views | None, tag_names: Sequence[str]
) -> tuple[list[str], list[str], list[str]]:
    """(label names, score names, tag names) that become columns of the wide view: a score
    that clashes with a label is left out, and so is a tag that clashes with any column."""
    labels = list(label_names)
    scores = [n for n, _ in (views.score_runs if views else ()) if n not in labels]
    taken = set(BASE_COLUMNS) | set(DEDUP_COLUMNS) | set(labels) | set(scores)
    taken |= {"tags", "extra"}
    return labels, scores, [t for t in tag_names if t not in taken]


def wide_view(
    dataset: str, views: Views, label_names: Sequence[str], tag_names: Sequence[str]
) -> tuple[str, list[Any]]:
    """Every example of ``dataset`` with its cluster, x, y (and dedup columns, probe scores),
    one column per label of ``label_names`` and per tag of ``tag_names``: the inner query the
    filtered view, the rule hits and the export select from."""
    tag_cols = [f"json_extract_string(e.tags, ?) AS {quote_ident(n)}" for n in tag_names]
    label_cols = [f"max(value) FILTER (WHERE name = ?) AS {quote_ident(n)}" for n in label_names]
    label_select = ", ".join(["example_id", *label_cols])
    extra = [f"lb.{quote_ident(n)}" for n in label_names] + tag_cols
    dedup_cols, dedup_join, dedup_params = "", "", []
    if views.dedup_run is not None:
        dedup_cols = (
            ", dg.group_id AS dup_group, "
            "CAST(coalesce(NOT dg.is_representative, false) AS INTEGER) AS is_duplicate"
        )
        dedup_join = "LEFT JOIN duplicate_groups dg ON dg.run_id = ? AND dg.example_id = e.id"
        dedup_params = [views.dedup_run]
    score_cols, score_joins, score_params = "", [], []
    for i, (name, rid) in enumerate(views.score_runs):
        if name in label_names:  # a label of that name wins; the probe step forbids it
            continue
        score_cols += f", ps{i}.value AS {quote_ident(name)}"
        score_joins.append(
            f"LEFT JOIN probe_scores ps{i} ON ps{i}.run_id = ? AND ps{i}.example_id = e.id"
        )
        score_params.append(rid)
    sql = f"""
        SELECT e.id, e.idx, e.prompt, e.answer, e.text, e.tags, e.extra,
               ca.cluster, p.x, p.y{dedup_cols}{score_cols}{"".join(", " + c for c in extra)}
        FROM examples e
        LEFT JOIN (SELECT {label_select} FROM labels WHERE dataset = ? GROUP BY example_id) lb
            ON lb.example_id = e.id
        LEFT JOIN cluster_assignments ca ON ca.run_id = ? AND ca.example_id = e.id
        LEFT JOIN projections p ON p.run_id = ? AND p.example_id = e.id
        {dedup_join}
        {" ".join(score_joins)}
        WHERE e.dataset = ?
    """
    # the tag expressions come first in the text, then the label subquery
    return sql, [
        *(json_path(n) for n in tag_names),
        *label_names,
        dataset,
        views.cluster_run,
        views.projection_run,
        *dedup_params,
        *score_params,
        dataset,
    ]


def feature_refs(refs: Sequence[str]) -> list[tuple[str, int]]:
    """The ``feature:N`` columns among ``refs``, with N (an error for ``feature:`` not followed by
    a whole number)."""
    return [(c, n) for c in refs if (n := feature_index(c)) is not None]


def wide_source(
    dataset: str,
    views: Views,
    columns: tuple[list[str], list[str], list[str]],
    refs: Sequence[str],
    *,
    d_sae: int | None,
) -> WideSource:
    """The wide view as ``FROM (...) w``, joined to the feature run's stored features when
    ``refs`` (the columns filters and the select list name) include a ``feature:N``.

    ``columns`` is :func:`view_columns`'s (labels, scores, tags); ``d_sae`` the width of the
    feature run's SAE when known, to refuse a feature out of its range."""
    labels, scores, tags = columns
    inner, params = wide_view(dataset, views, labels, tags)
    dedup = set(DEDUP_COLUMNS) if views.dedup_run is not None else set()
    numeric = set(NUMERIC_BASE) | dedup | set(labels) | set(scores)
    allowed = numeric | set(BASE_COLUMNS) | set(tags)
    from_sql = f"FROM ({inner}) w"
    wanted = feature_refs(refs)
    if wanted:
        if views.feature_run is None:
            raise StudioError(
                f"{wanted[0][0]}: dataset '{dataset}' has no feature run; run "
                f"`python -m core featurize --dataset {dataset} ...` first"
            )
        for col, n in wanted:
            if d_sae is not None and n >= d_sae:
                raise StudioError(
                    f"{col}: feature {n} is out of range: the SAE of feature run "
                    f"{views.feature_run} has {d_sae} features (0..{d_sae - 1})"
                )
        from_sql += " LEFT JOIN features fr ON fr.run_id = ? AND fr.example_id = w.id"
        params = [*params, views.feature_run]
    return WideSource(from_sql, params, allowed, numeric, has_features=bool(wanted))


@dataclass(frozen=True)
class WideSource:
    """``FROM (wide view) w [LEFT JOIN features fr]`` with its parameters, and the columns a
    filter or a select list may name. Identifiers are checked here; values become parameters."""

    from_sql: str
    params: list[Any]
    allowed: set[str]
    numeric: set[str]
    has_features: bool

    def expr(self, column: str) -> tuple[str, list[Any]]:
        """The SQL of one column: ``w."name"``, or a feature's activation (0 where the feature
        is not among the example's stored top-k; NULL for an example the run did not store)."""
        n = feature_index(column)
        if n is not None:
            assert self.has_features, "wide_source saw no feature column"
            return (
                "CASE WHEN fr.example_id IS NULL THEN NULL "
                "ELSE CAST(coalesce(fr.vals[list_position(fr.feature_ids, ?)], 0) AS DOUBLE) END",
                [n],
            )
        return f"w.{quote_ident(column)}", []

    def select(self, columns: Sequence[str] | None) -> tuple[str, list[Any]]:
        """The select list of ``columns`` (all of the view's when None)."""
        if columns is None:
            return "w.*", []
        parts, params = [], []
        for c in columns:
            if feature_index(c) is None and c not in self.allowed | {"tags", "extra"}:
                known = ", ".join(sorted(self.allowed))
                raise StudioError(f"unknown column {c!r}; known: {known}")
            sql, p = self.expr(c)
            parts.append(f"{sql} AS {quote_ident(c)}")
            params += p
        return ", ".join(parts), params

    def condition(self, f: Filter) -> tuple[str, list[Any]]:
        """The bare condition of a filter (NULL where the row's value is NULL)."""
        is_feature = feature_index(f.column) is not None
        if f.column in DEDUP_COLUMNS and f.column not in self.allowed:
            raise StudioError(
                f"filter {f.describe()!r}: the dataset has no near-duplicate groups yet; "
                "run `python -m core dedup --dataset NAME` first"
            )
        if not is_feature and f.column not in self.allowed:
            raise StudioError(
                f"filter {f.describe()!r}: unknown column {f.column!r}; "
                f"known: {', '.join(sorted(self.allowed))}"
            )
        numeric = is_feature or f.column in self.numeric
        col, params = self.expr(f.column)
        if f.op not in OPERATORS:
            raise StudioError(f"filter {f.describe()!r}: unknown operator {f.op!r}")
        template = OPERATORS[f.op][0]
        if f.op in LIST_OPS:
            values = [filter_value(f, v, numeric=numeric) for v in f.value]
            if not values:
                raise StudioError(f"filter {f.describe()!r}: empty list")
            cast = "DOUBLE" if numeric else "VARCHAR"
            # the list's placeholder comes before the column's own parameters
            return template.format(col=col, cast=cast), [values, *params]
        return template.format(col=col), [*params, filter_value(f, f.value, numeric=numeric)]


def filter_value(f: Filter, value: Any, *, numeric: bool) -> Any:
    """A filter value typed for its column: a number for a numeric column (else a one-line error
    naming the filter, not a DuckDB conversion traceback), text for a text column."""
    if numeric:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise StudioError(
                f"filter {f.describe()!r}: column {f.column!r} is numeric, got {value!r}"
            ) from None
        if number != number:  # NaN compares false with everything: it would match nothing
            raise StudioError(f"filter {f.describe()!r}: NaN is not a value to compare with")
        return number
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # `task=3` parsed as 3.0 means the text "3"
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # argv carries one lone surrogate per byte that is not UTF-8
        raise StudioError(
            f"filter on {f.column!r}: the value {text!r} is not valid UTF-8 text"
        ) from None
    return text


def filtered(
    src: WideSource,
    filters: Sequence[Filter],
    columns: Sequence[str] | None,
    *,
    ids: bool,
) -> tuple[str, list[Any]]:
    """``SELECT columns FROM <wide view> WHERE <every filter> ORDER BY idx``; with ``ids`` only
    the example ids of a table registered as ``_ids``. The one place the filtered view is
    written: a caller may wrap it (LIMIT, a streaming fetch)."""
    select, params = src.select(columns)
    where: list[str] = []
    wparams: list[Any] = []
    for f in filters:
        cond, cparams = src.condition(f)
        keep = f"coalesce({cond}, false)"
        where.append(f"NOT {keep}" if f.action == "drop" else keep)
        wparams += cparams
    if ids:
        where.append("w.id IN (SELECT id FROM _ids)")
    sql = f"SELECT {select} {src.from_sql}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY w.idx", params + src.params + wparams


def rule_hits(
    src: WideSource, filters: Sequence[Filter], columns: Sequence[str], *, ids: bool
) -> tuple[str, list[Any]]:
    """One row per example (ingest order): id, ``columns``, and ``r0, r1, ...`` per filter, True
    where that filter removes the row on its own; with ``ids`` also ``r_sel``, True outside the
    selection registered as ``_ids``."""
    select, params = src.select(["id", *columns])
    for i, f in enumerate(filters):
        cond, cparams = src.condition(f)
        # a keep rule removes the rows where its condition is false or NULL
        hit = f"coalesce({cond}, false)"
        select += f", {hit if f.action == 'drop' else f'NOT {hit}'} AS r{i}"
        params += cparams
    if ids:
        select += ", w.id NOT IN (SELECT id FROM _ids) AS r_sel"
    return f"SELECT {select} {src.from_sql} ORDER BY w.idx", params + src.params


# --- exports -------------------------------------------------------------------------------------
def export_rows(
    dataset: str,
    *,
    views: Views,
    kind: str,
    columns: tuple[list[str], list[str], list[str]],
    extra_keys: Sequence[str],
    pairs: bool,
) -> tuple[str, list[Any]]:
    """The rows of an export in the order of the plan registered as ``_plan`` (see
    Store.export_chunks for the columns). ``columns`` is :func:`view_columns`'s (labels, scores,
    tags); ``extra_keys`` the keys the dataset's ``extra`` JSON holds; ``pairs``: the plan has
    ``rejected_idx``, one (chosen, rejected) pair a row."""
    labels, scores, tags = columns
    inner, params = wide_view(dataset, views, labels, tags)
    taken = {*BASE_COLUMNS, *DEDUP_COLUMNS, *labels, *scores, *tags, "tags", "extra"}
    taken |= {"chosen", "rejected", "response", "position", "batch"}
    extra_only = [k for k in extra_keys if k not in taken]
    cols = ["w.id", "w.idx", "w.prompt", "w.answer", "CAST(w.cluster AS BIGINT) AS cluster"]
    if views.dedup_run is not None:
        cols += ["w.dup_group", "w.is_duplicate"]
    cols += [f"w.{quote_ident(c)}" for c in (*scores, *labels, *tags)]
    cols += [f"CAST(json_extract(w.extra, ?) AS VARCHAR) AS {quote_ident(k)}" for k in extra_only]
    xparams: list[Any] = [json_path(k) for k in extra_only]
    join, jparams = "", []
    if kind == "responses":  # the response is the example's text
        cols += ["w.text AS response"]
    if kind == "preferences" and pairs:
        # one planned (chosen, rejected) pair a row: rejected_idx j is response j + 1 (ingest
        # numbers the chosen response 0, the rejected ones 1..k), joined row by row, so no
        # prompt's list of responses is built or repeated per pair
        cols += ["rc.text AS chosen", "rr.text AS rejected"]
        join = (
            "LEFT JOIN responses rc ON rc.dataset = ? AND rc.example_id = w.id "
            "AND rc.role = 'chosen' "
            "LEFT JOIN responses rr ON rr.dataset = ? AND rr.example_id = w.id "
            "AND rr.role = 'rejected' AND rr.response_idx = p.rejected_idx + 1"
        )
        jparams = [dataset, dataset]
    elif kind == "preferences":
        cols += ["r.chosen", "r.rejected"]
        join = (
            "LEFT JOIN (SELECT example_id, "
            "first(text ORDER BY response_idx) FILTER (WHERE role = 'chosen') AS chosen, "
            "list(text ORDER BY response_idx) FILTER (WHERE role = 'rejected') "
            "AS rejected FROM responses WHERE dataset = ? GROUP BY example_id) r "
            "ON r.example_id = w.id"
        )
        jparams = [dataset]
    cols += ["p.position", "p.batch"]
    if pairs:
        cols += ["p.rejected_idx"]
    sql = (
        f"SELECT {', '.join(cols)} FROM ({inner}) w JOIN _plan p ON p.idx = w.idx "
        f"{join} ORDER BY p.position"
    )
    return sql, xparams + params + jparams


# --- health ---------------------------------------------------------------------------------------
def orphan_counts(present: set[str]) -> list[tuple[str, str]]:
    """(table, query) counting the rows whose run or dataset is gone, for each table of
    ``present`` (an older schema lacks the newer tables)."""
    owners = [(t, "runs r WHERE r.run_id = t.run_id") for t in RUN_TABLES]
    owners += [(t, "datasets d WHERE d.name = t.dataset") for t in DATASET_TABLES]
    return [
        (table, f"SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM {owner})")
        for table, owner in owners
        if table in present
    ]
