"""Export: --where parsing, ordering, atomic byte-identical writes."""

import numpy as np
import pandas as pd
import pytest

from core.errors import StudioError
from core.export import (
    ExportConfig,
    order_index,
    write_atomic_bytes,
)
from core.filters import Filter, parse_where


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


def order_rows(df: pd.DataFrame, cfg: ExportConfig, *, higher_is: str = "harder") -> pd.DataFrame:
    """A frame in the order :func:`order_index` gives (ingest order in)."""
    idx = order_index(
        len(df),
        order=cfg.order,
        seed=cfg.seed,
        cluster=df["cluster"].to_numpy(dtype=float),
        difficulty=df["difficulty"].to_numpy(dtype=float) if "difficulty" in df else None,
        higher_is=higher_is,
    )
    return df.iloc[idx].reset_index(drop=True)


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


def test_curriculum_without_difficulty_is_an_error():
    df = _frame().drop(columns=["difficulty"])
    with pytest.raises(StudioError, match="difficulty"):
        order_rows(df, ExportConfig(order="curriculum"))


def test_easy_to_hard_is_global_and_reads_the_direction():
    df = _frame(30)
    out = order_rows(df, ExportConfig(order="easy-to-hard"))
    assert out["difficulty"].is_monotonic_increasing
    # a pass rate: higher is easier, so the order is descending
    easier = order_rows(df, ExportConfig(order="easy-to-hard"), higher_is="easier")
    assert easier["difficulty"].is_monotonic_decreasing
    # within a cluster, the curriculum follows the same direction
    cur = order_rows(df, ExportConfig(order="curriculum"), higher_is="easier")
    for _, part in cur.groupby("cluster", sort=False):
        assert part["difficulty"].is_monotonic_decreasing


def test_rows_without_difficulty_go_last_and_ties_keep_ingest_order():
    d = np.array([2.0, np.nan, 1.0, 2.0, np.nan, 1.0])
    assert order_index(6, order="easy-to-hard", difficulty=d).tolist() == [2, 5, 0, 3, 1, 4]
    assert order_index(6, order="easy-to-hard", difficulty=d, higher_is="easier").tolist() == [
        0,
        3,
        2,
        5,
        1,
        4,
    ]


def test_write_atomic_bytes_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "x.json"
    write_atomic_bytes(out, b"new\n")
    assert out.read_bytes() == b"new\n"
    import core.export.files as files

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic_bytes(out, b"newer\n")
    assert out.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_config_rejects_unknown_format_and_container():
    with pytest.raises(StudioError, match="unknown format"):
        ExportConfig(fmt="csv")
    with pytest.raises(StudioError, match="unknown container"):
        ExportConfig(container="zip")
    assert ExportConfig(fmt="verl").layout == "verl"
    assert ExportConfig(fmt="parquet").layout == "rows"
