"""Fixtures of the store's tests: a fresh file per test with one small dataset in it."""

import pytest

from core.store import Store
from tests.store.helpers import pref_tables, tables


@pytest.fixture
def store(tmp_path) -> Store:
    """A store holding the prompt dataset 'd' (e0..e4, see helpers.tables)."""
    s = Store(tmp_path / "s.duckdb")
    s.write_dataset(name="d", kind="prompts", source="x.jsonl", **tables())
    return s


@pytest.fixture
def prefs(tmp_path) -> Store:
    """A store holding the preference set 'prefs' (p0, p1, see helpers.pref_tables)."""
    s = Store(tmp_path / "p.duckdb")
    s.write_dataset(name="prefs", kind="preferences", source="p.jsonl", **pref_tables())
    return s
