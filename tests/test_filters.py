"""The filter language (core/filters.py): every operator of the table parses, writes back to the
same filter, and the store's SQL for it keeps exactly the rows Python's comparison keeps."""

from __future__ import annotations

import json
import operator
from pathlib import Path

import pytest

from core.filters import LIST_OPS, OPERATORS, Filter, parse_rule_where, parse_where, where_text
from core.store import Store
from tests.conftest import run_cli

PY = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "!=": operator.ne,
    "in": lambda v, vs: v in vs,
    "not in": lambda v, vs: v not in vs,
}


def test_the_table_and_python_name_the_same_operators() -> None:
    assert set(OPERATORS) == set(PY) and set(LIST_OPS) <= set(OPERATORS)


@pytest.mark.parametrize("op", list(OPERATORS))
@pytest.mark.parametrize("action", ["keep", "drop"])
def test_every_operator_round_trips_through_its_text(op: str, action: str) -> None:
    value = [1.0, 3.0] if op in LIST_OPS else 2.5
    f = Filter("difficulty", op, value, action=action)  # type: ignore[arg-type]
    back = parse_where(where_text(f))
    assert (back.column, back.op, back.value) == (f.column, f.op, f.value)
    if op not in LIST_OPS:
        feature = parse_rule_where(f"feature:7{op}0.5")
        assert (feature.column, feature.op, feature.value) == ("feature:7", op, 0.5)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("filters")
    src = folder / "d.jsonl"
    src.write_text(
        "".join(json.dumps({"prompt": f"p{i}", "level": i % 5}) + "\n" for i in range(20))
    )
    db = folder / "s.duckdb"
    assert run_cli("ingest", str(src), "--dataset", "d", "--kind", "prompts", "--db", str(db)) == 0
    return db


@pytest.mark.parametrize("op", list(OPERATORS))
def test_the_sql_of_every_operator_keeps_what_python_keeps(db: Path, op: str) -> None:
    store = Store(db)
    value = [1.0, 3.0] if op in LIST_OPS else 2.0
    rows = store.wide("d", views=store.views("d"), columns=["prompt", "level"]).to_pylist()
    for action in ("keep", "drop"):
        f = Filter("level", op, value, action=action)  # type: ignore[arg-type]
        got = store.wide("d", views=store.views("d"), filters=[f], columns=["prompt"])
        hit = {r["prompt"] for r in rows if PY[op](float(r["level"]), value)}
        want = hit if action == "keep" else {r["prompt"] for r in rows} - hit
        assert set(got["prompt"].to_pylist()) == want, (op, action)
