"""Export: --where parsing, ordering, atomic byte-identical writes."""

import json

import numpy as np
import pandas as pd
import pytest

from core.errors import StudioError
from core.export import (
    ExportConfig,
    manifest_path,
    order_rows,
    parse_where,
    serialize,
    write_export,
)
from core.store import Filter


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ("difficulty<=3", Filter("difficulty", "<=", 3.0)),
        ("quality >= 0.5", Filter("quality", ">=", 0.5)),
        ("task=leg_counting", Filter("task", "=", "leg_counting")),
        ("task==x", Filter("task", "=", "x")),
        ("cluster in 1,4", Filter("cluster", "in", [1.0, 4.0])),
        ("cluster not in 2", Filter("cluster", "not in", [2.0])),
        ("a!=b", Filter("a", "!=", "b")),
    ],
)
def test_parse_where(expr, want):
    assert parse_where(expr) == want


def test_parse_where_rejects_garbage():
    with pytest.raises(StudioError, match="expected COLUMN"):
        parse_where("difficulty")


def _frame(n=12):
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": [f"e{i}" for i in range(n)],
            "cluster": [i % 3 for i in range(n)],
            "difficulty": rng.integers(1, 5, n).astype(float),
        }
    )


def test_order_none_and_random():
    df = _frame()
    assert list(order_rows(df, ExportConfig(order="none"))["id"]) == list(df["id"])
    r1 = order_rows(df, ExportConfig(order="random", seed=1))
    r2 = order_rows(df, ExportConfig(order="random", seed=1))
    r3 = order_rows(df, ExportConfig(order="random", seed=2))
    assert list(r1["id"]) == list(r2["id"]) != list(r3["id"])
    assert sorted(r1["id"]) == sorted(df["id"])


def test_curriculum_is_easy_to_hard_within_each_cluster_and_interleaved():
    df = _frame(30)
    out = order_rows(df, ExportConfig(order="curriculum"))
    assert sorted(out["id"]) == sorted(df["id"])
    for _, part in out.groupby("cluster", sort=False):
        assert part["difficulty"].is_monotonic_increasing
    # interleaved: the first 3 rows come from 3 different clusters
    assert int(out["cluster"].head(3).nunique()) == 3


def test_curriculum_without_difficulty_names_the_columns():
    df = _frame().drop(columns=["difficulty"])
    with pytest.raises(StudioError, match="difficulty"):
        order_rows(df, ExportConfig(order="curriculum"))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_write_is_atomic_and_reproducible(tmp_path, fmt):
    df = _frame()
    out = tmp_path / f"x.{fmt}"
    m1 = write_export(df, out=out, fmt=fmt, manifest={"dataset": "d"})
    first = out.read_bytes()
    m2 = write_export(df, out=out, fmt=fmt, manifest={"dataset": "d"})
    assert out.read_bytes() == first and m1["sha256"] == m2["sha256"]
    man = json.loads(manifest_path(out).read_text())
    assert man["rows"] == 12 and man["format"] == fmt
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "x.jsonl"
    out.write_text("old\n")
    import core.export as ex

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ex.os, "replace", boom)
    with pytest.raises(OSError):
        write_export(_frame(), out=out, fmt="jsonl", manifest={})
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]


def test_jsonl_rows_parse():
    lines = serialize(_frame(3), "jsonl").decode().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["e0", "e1", "e2"]
