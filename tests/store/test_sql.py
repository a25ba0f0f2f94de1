"""core.store.sql and core.store.schema: SQL text and schema constants, without a database."""

import pytest

from core.errors import StudioError
from core.filters import Filter
from core.store import schema, sql
from core.store.sql import Views


def test_insert_run_rows_binds_the_run_and_the_source() -> None:
    text, params = sql.insert_run_rows(schema.REWARD_SCORES, "_rw", run_id=3, source="verifier")
    assert text == (
        "INSERT INTO reward_scores SELECT ?, example_id, response_idx, value, logits, truncated, "
        "? FROM _rw"
    )
    assert params == [3, "verifier"]
    assert sql.insert_run_rows(schema.CLUSTERS, "_c", run_id=4)[1] == [4]


def test_run_tables_follow_the_schema() -> None:
    """Each run table's columns are the table's own after run_id, in its DDL order."""
    ddl = "\n".join(d for _, _, d in schema.MIGRATIONS)
    specs = [schema.PROBE_SCORES, schema.REWARD_SCORES, schema.CLUSTERS, schema.PROJECTIONS]
    specs += [schema.CLUSTER_ASSIGNMENTS, schema.DUPLICATE_GROUPS]
    for spec in specs:
        body = ddl.split(f"CREATE TABLE {spec.table} (")[1].split(");")[0]
        cols = [line.split()[0] for line in body.strip().splitlines()]
        tail = ["source"] if spec.with_source else []
        assert cols == ["run_id", *spec.columns, *tail], spec.table
    with pytest.raises(ValueError, match="not a run table"):
        schema.RunTable("rows", "examples", ("id",))


def test_delete_dataset_reaches_every_table_it_owns() -> None:
    statements = sql.delete_dataset("d")
    tables = {text.split()[2] for text, _ in statements}
    assert tables == {*schema.RUN_TABLES, *schema.DATASET_TABLES, "datasets"}
    assert all(params == ["d"] for _, params in statements)
    assert statements[-1][0] == "DELETE FROM datasets WHERE name = ?"


def test_orphan_counts_skip_tables_an_older_schema_lacks() -> None:
    assert [t for t, _ in sql.orphan_counts({"labels", "reward_scores", "other"})] == [
        "reward_scores",
        "labels",
    ]


def test_filter_values_travel_as_parameters_never_as_text() -> None:
    views = Views(None, None, None)
    src = sql.wide_source("d", views, (["difficulty"], [], ["task"]), ["task"], d_sae=None)
    evil = "x' OR 1=1 --"
    text, params = sql.filtered(src, [Filter("task", "=", evil)], ["id"], ids=False)
    assert evil not in text and params[-1] == evil
    text, params = sql.filtered(src, [Filter("difficulty", "in", [1, 2])], None, ids=True)
    assert "w.id IN (SELECT id FROM _ids)" in text and [1.0, 2.0] in params
    with pytest.raises(StudioError, match="unknown column 'nope'"):
        sql.filtered(src, [Filter("nope", "<", 1)], None, ids=False)


def test_view_columns_leave_out_clashing_scores_and_tags() -> None:
    views = Views(1, None, None, score_runs=(("difficulty", 5), ("quality", 6)))
    labels, scores, tags = sql.view_columns(["difficulty"], views, ["task", "cluster", "quality"])
    assert (labels, scores, tags) == (["difficulty"], ["quality"], ["task"])


def test_a_feature_column_needs_a_feature_run_within_its_width() -> None:
    cols = ([], [], [])
    with pytest.raises(StudioError, match="has no feature run"):
        sql.wide_source("d", Views(None, None, None), cols, ["feature:3"], d_sae=None)
    with pytest.raises(StudioError, match=r"feature 16 is out of range.*\(0..15\)"):
        sql.wide_source("d", Views(2, None, None), cols, ["feature:16"], d_sae=16)
    src = sql.wide_source("d", Views(2, None, None), cols, ["feature:15"], d_sae=16)
    assert src.has_features and src.params[-1] == 2
