"""The store: schema and migrations, one-transaction writes, filters as parameters, locking."""

import subprocess
import sys
import textwrap

import duckdb
import pyarrow as pa
import pytest

from core import store as store_mod
from core.errors import StudioError
from core.store import Filter, Store, Views


def _tables(n: int = 5) -> dict[str, pa.Table]:
    ids = [f"e{i}" for i in range(n)]
    examples = pa.table(
        {
            "id": ids,
            "idx": pa.array(range(n), pa.int64()),
            "prompt": [f"prompt {i}" for i in range(n)],
            "answer": [str(i) for i in range(n)],
            "text": [f"prompt {i}" for i in range(n)],
            "tags": ['{"task": "a"}'] * n,
            "extra": ["{}"] * n,
        }
    )
    labels = pa.table(
        {
            "example_id": ids + ids,
            "name": ["difficulty"] * n + ['we"ird'] * n,
            "value": [float(i) for i in range(n)] + [1.0] * n,
        }
    )
    responses = pa.table(
        {
            "example_id": pa.array([], pa.string()),
            "response_idx": pa.array([], pa.int32()),
            "role": pa.array([], pa.string()),
            "text": pa.array([], pa.string()),
        }
    )
    return {"examples": examples, "labels": labels, "responses": responses}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s.duckdb")
    s.write_dataset(name="d", kind="prompts", source="x.jsonl", **_tables())
    return s


def test_migrate_is_idempotent_and_versioned(tmp_path):
    s = Store(tmp_path / "m.duckdb")
    assert s.migrate() == store_mod.SCHEMA_VERSION
    assert s.migrate() == store_mod.SCHEMA_VERSION
    with s.connect() as con:
        rows = con.execute("SELECT version FROM schema_version").fetchall()
    assert [r[0] for r in rows] == [m[0] for m in store_mod.MIGRATIONS]


def test_a_new_migration_applies_once(tmp_path, monkeypatch):
    s = Store(tmp_path / "m.duckdb")
    s.migrate()
    extra = (99, "add notes", "CREATE TABLE notes (example_id VARCHAR, note VARCHAR)")
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, extra])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 99)
    assert s.migrate() == 99
    assert s.migrate() == 99
    with s.connect() as con:
        assert con.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_newer_schema_is_refused(tmp_path, monkeypatch):
    s = Store(tmp_path / "m.duckdb")
    s.migrate()
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 0)
    with pytest.raises(StudioError, match="newer than this tool"):
        s.migrate()


def test_write_dataset_is_all_or_nothing(tmp_path):
    s = Store(tmp_path / "a.duckdb")
    t = _tables()
    bad_labels = pa.table({"example_id": ["e0"], "name": ["x"]})  # missing the value column
    with pytest.raises(duckdb.Error):
        s.write_dataset(
            name="d",
            kind="prompts",
            source="f",
            examples=t["examples"],
            labels=bad_labels,
            responses=t["responses"],
        )
    assert s.list_datasets().empty
    with s.connect() as con:
        assert con.execute("SELECT count(*) FROM examples").fetchone() == (0,)


def test_existing_dataset_needs_replace(store):
    t = _tables(3)
    with pytest.raises(StudioError, match="--replace"):
        store.write_dataset(name="d", kind="prompts", source="f", **t)
    store.write_dataset(name="d", kind="prompts", source="f", replace=True, **t)
    assert store.dataset("d")["n_examples"] == 3


def test_unknown_dataset_names_the_known_ones(store):
    with pytest.raises(StudioError, match="known: d"):
        store.dataset("nope")


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(StudioError, match="does not exist"):
        Store(tmp_path / "none.duckdb").list_datasets()


def test_wide_pivots_labels_and_filters_with_parameters(store):
    views = Views(None, None, None)
    wide = store.wide("d", views=views).to_pandas()
    assert list(wide["difficulty"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert 'we"ird' in wide.columns  # quoted identifiers survive odd label names
    kept = store.wide("d", views=views, filters=[Filter("difficulty", ">=", 3)]).to_pandas()
    assert list(kept["id"]) == ["e3", "e4"]
    inn = store.wide("d", views=views, filters=[Filter("id", "in", ["e1", "e4"])]).to_pandas()
    assert list(inn["id"]) == ["e1", "e4"]
    # a value that looks like SQL is just a value
    evil = store.wide("d", views=views, filters=[Filter("prompt", "=", "x' OR 1=1 --")])
    assert evil.num_rows == 0
    assert store.count("d", views=views, ids=["e0", "e2", "zz"]) == 2
    # tags are columns too, and filterable
    assert list(wide["task"]) == ["a"] * 5
    assert store.count("d", views=views, filters=[Filter("task", "=", "a")]) == 5
    assert store.count("d", views=views, filters=[Filter("task", "in", ["b"])]) == 0
    assert store.tag_values("d").to_dict("records") == [{"name": "task", "value": "a", "n": 5}]


def test_filter_on_unknown_column_is_refused(store):
    with pytest.raises(StudioError, match="unknown column 'nope'"):
        store.wide("d", views=Views(None, None, None), filters=[Filter("nope", "<", 1)])


def test_runs_resume_only_unfinished_same_config(store):
    r1, resumed = store.start_run(step="featurize", dataset="d", config={"a": 1}, versions={})
    assert not resumed
    r2, resumed = store.start_run(step="featurize", dataset="d", config={"a": 1}, versions={})
    assert (r2, resumed) == (r1, True)
    r3, resumed = store.start_run(step="featurize", dataset="d", config={"a": 2}, versions={})
    assert r3 != r1 and not resumed
    store.finish_run(r1, summary={"n": 1})
    r4, resumed = store.start_run(step="featurize", dataset="d", config={"a": 1}, versions={})
    assert r4 not in (r1, r3) and not resumed
    assert store.latest_run(dataset="d", step="featurize") == r1


def test_reader_waits_for_a_writer_in_another_process(store, tmp_path):
    """A second process holds a write lock briefly; our read retries instead of failing."""
    code = textwrap.dedent(
        f"""
        import duckdb, time, sys
        con = duckdb.connect({str(store.path)!r})
        print("locked", flush=True)
        time.sleep(1.0)
        con.close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    assert store.dataset("d")["n_examples"] == 5  # waited for the lock
    proc.wait()


def test_busy_lock_past_timeout_is_a_studio_error(store):
    code = f"import duckdb, time; c = duckdb.connect({str(store.path)!r}); print('x', flush=True); time.sleep(3)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    quick = Store(store.path, lock_timeout_s=0.3)
    with pytest.raises(StudioError, match="busy"):
        quick.list_datasets()
    proc.kill()
    proc.wait()
