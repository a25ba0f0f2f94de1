"""The store: schema and migrations, one-transaction writes, filters as parameters, locking."""

import subprocess
import sys
import textwrap

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from core.errors import StudioError
from core.filters import Filter
from core.store import REWARD_STEP, SCHEMA_VERSION, RunRecord, Store, Views
from core.store import schema as schema_mod
from tests.store.helpers import feature_run, pref_tables, score_rows, tables


def test_migrate_is_idempotent_and_versioned(tmp_path):
    s = Store(tmp_path / "m.duckdb")
    assert s.migrate() == SCHEMA_VERSION
    assert s.migrate() == SCHEMA_VERSION
    with s.connect() as con:
        rows = con.execute("SELECT version FROM schema_version").fetchall()
    assert [r[0] for r in rows] == [m[0] for m in schema_mod.MIGRATIONS]


def test_a_new_migration_applies_once(tmp_path, monkeypatch):
    s = Store(tmp_path / "m.duckdb")
    s.migrate()
    extra = (99, "add notes", "CREATE TABLE notes (example_id VARCHAR, note VARCHAR)")
    monkeypatch.setattr(schema_mod, "MIGRATIONS", [*schema_mod.MIGRATIONS, extra])
    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", 99)
    assert s.migrate() == 99
    assert s.migrate() == 99
    with s.connect() as con:
        assert con.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_newer_schema_is_refused(tmp_path, monkeypatch):
    s = Store(tmp_path / "m.duckdb")
    s.migrate()
    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", 0)
    with pytest.raises(StudioError, match="newer than this tool"):
        s.migrate()


def test_write_dataset_is_all_or_nothing(tmp_path):
    s = Store(tmp_path / "a.duckdb")
    t = tables()
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
    t = tables(3)
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


def test_filter_value_of_the_wrong_type_is_a_one_line_error(store):
    views = Views(None, None, None)
    with pytest.raises(StudioError, match="'difficulty' is numeric, got '>2'"):
        store.wide("d", views=views, filters=[Filter("difficulty", ">", ">2")])
    with pytest.raises(StudioError, match="is numeric, got 'x'"):
        store.wide("d", views=views, filters=[Filter("difficulty", "in", [1.0, "x"])])
    # a number given for a text column compares as text
    assert store.count("d", views=views, filters=[Filter("answer", "=", 3.0)]) == 1


def test_filter_on_unknown_column_is_refused(store):
    with pytest.raises(StudioError, match="unknown column 'nope'"):
        store.wide("d", views=Views(None, None, None), filters=[Filter("nope", "<", 1)])


def test_runs_resume_only_unfinished_same_config(store):
    r1, resumed = store.begin_run(RunRecord("featurize", "d", {"a": 1}, {}))
    assert not resumed
    r2, resumed = store.begin_run(RunRecord("featurize", "d", {"a": 1}, {}))
    assert (r2, resumed) == (r1, True)
    r3, resumed = store.begin_run(RunRecord("featurize", "d", {"a": 2}, {}))
    assert r3 != r1 and not resumed
    store.finish_run(r1, summary={"n": 1})
    r4, resumed = store.begin_run(RunRecord("featurize", "d", {"a": 1}, {}))
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


# --- reading the features (migration 2) ----------------------------------------------------------
def test_migration_2_upgrades_a_v1_database(tmp_path, monkeypatch):
    s = Store(tmp_path / "v1.duckdb")
    monkeypatch.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:1])
    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", 1)
    s.write_dataset(name="d", kind="prompts", source="x.jsonl", **tables())
    run = feature_run(s, spans=False)  # the v1 write path: no char span columns yet
    assert s.schema_version() == 1
    # a read-only app meets the old file: descriptions and spans read as empty
    summary = s.feature_summary(run)
    assert bool(summary["description"].isna().all())
    assert bool(s.feature_tokens(run)["char_start"].isna().all())
    monkeypatch.undo()
    assert s.migrate() == SCHEMA_VERSION  # v2, and every later migration
    with s.connect() as con:
        cols = [r[0] for r in con.execute("DESCRIBE feature_top_tokens").fetchall()]
        assert cols[-2:] == ["char_start", "char_end"]
        assert con.execute("SELECT count(*) FROM feature_top_tokens").fetchone() == (3,)
    assert bool(s.feature_tokens(run)["char_start"].isna().all())  # old rows: unknown
    s.write_descriptions(run, {7: "prompts"}, source="np.json")
    assert s.feature_summary(run).set_index("feature_id").loc[7, "description"] == "prompts"


def test_char_spans_are_stored_and_minus_one_is_unknown(store):
    run = feature_run(store)
    tokens = store.feature_tokens(run, feature_ids=[7])
    assert tokens["token"].tolist() == ["prompt", "4"]
    assert tokens["char_start"].iloc[0] == 0 and tokens["char_end"].iloc[0] == 6
    assert pd.isna(tokens["char_start"].iloc[1])  # -1 was stored as NULL
    _, top = store.feature_stats(run)  # what a resumed run restores: -1 again
    assert top["char_start"].tolist() == [7, 0, -1]


def test_feature_summary_counts_topk_and_fires(store):
    run = feature_run(store)
    df = store.feature_summary(run).set_index("feature_id")
    assert df.index.tolist() == [3, 7, 9]
    assert df.loc[7, "n_topk"] == 5 and df.loc[7, "freq"] == pytest.approx(1.0)
    assert df.loc[7, "mean_act"] == pytest.approx(0.3) and df.loc[7, "max_act"] == pytest.approx(
        0.5
    )
    assert df.loc[3, "freq"] == pytest.approx(0.4) and df.loc[3, "max_act"] == pytest.approx(0.9)
    assert df.loc[9, "n_topk"] == 0 and df.loc[9, "n_fire"] == 1  # fired, never in a top-k
    assert df.loc[9, "fire_rate"] == pytest.approx(0.2)
    assert df.loc[7, "mean_fired"] == pytest.approx(0.3)
    assert list(df.loc[7, "tokens"]) == ["prompt", "4"]


def test_top_examples_by_pooled_value(store):
    run = feature_run(store)
    top = store.feature_top_examples(run, feature_ids=[7], per_feature=3)
    assert top["example_id"].tolist() == ["e4", "e3", "e2"]
    assert top["rank"].tolist() == [0, 1, 2]
    assert top["text"].tolist() == ["prompt 4", "prompt 3", "prompt 2"]
    every = store.feature_top_examples(run, per_feature=1)  # all features in one query
    assert dict(zip(every["feature_id"], every["example_id"], strict=True)) == {3: "e1", 7: "e4"}
    acts = store.feature_activations(run, 3)
    assert sorted(acts.round(3).tolist()) == [0.05, 0.9]


def test_example_features_one_and_many(store):
    run = feature_run(store)
    one = store.example_features(run, ["e1"])
    assert one["feature_id"].tolist() == [3, 7]
    assert one["mean_value"].round(3).tolist() == [0.9, 0.2]
    many = store.example_features(run, ["e0", "e1", "e2"])
    assert many.set_index("feature_id")["n_examples"].to_dict() == {7: 3, 3: 2}


def test_find_examples_by_id_or_text_with_parameters(store):
    assert store.find_examples("d", "E3")["id"].tolist() == ["e3"]
    assert store.find_examples("d", "PROMPT", limit=2)["id"].tolist() == ["e0", "e1"]
    assert store.find_examples("d", "%' OR 1=1 --").empty


def test_write_descriptions_replaces_the_run(store):
    run = feature_run(store)
    assert store.write_descriptions(run, {3: "a", 7: "b"}, source="x.json") == 2
    assert store.write_descriptions(run, {7: "c"}, source="y.json") == 1
    df = store.feature_summary(run).set_index("feature_id")
    assert df["description"].isna().tolist() == [True, False, True]
    assert (df.loc[7, "description"], df.loc[7, "source"]) == ("c", "y.json")


def test_migration_3_adds_duplicate_groups_and_old_files_still_read(tmp_path, monkeypatch):
    s = Store(tmp_path / "v2.duckdb")
    monkeypatch.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:2])
    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", 2)
    s.write_dataset(name="d", kind="prompts", source="x.jsonl", **tables())
    assert s.schema_version() == 2
    monkeypatch.undo()
    # the read-only app meets the v2 file: no dedup run, no dup columns, no error
    views = s.views("d")
    assert views.dedup_run is None
    assert "is_duplicate" not in s.wide("d", views=views).column_names
    with pytest.raises(StudioError, match="no near-duplicate groups yet"):
        s.wide("d", views=views, filters=[Filter("is_duplicate", "=", 0)])
    assert s.migrate() == SCHEMA_VERSION
    with s.connect() as con:
        assert con.execute("SELECT count(*) FROM duplicate_groups").fetchone() == (0,)


# --- rules: keep / drop, feature conditions, which rule removes which row ---------------------
def _partial_label(s: Store) -> None:
    """A label 'score' on e0..e2 only (e3, e4 have no value: NULL in the wide view)."""
    s.set_labels(
        "d", "score", pa.table({"example_id": ["e0", "e1", "e2"], "value": [0.1, 0.5, 0.9]})
    )


def test_drop_rules_keep_null_rows_and_keep_rules_remove_them(store):
    _partial_label(store)
    views = Views(None, None, None)

    def ids(*filters: Filter) -> list[str]:
        return store.wide("d", views=views, filters=filters, columns=["id"])["id"].to_pylist()

    assert ids(Filter("score", ">=", 0.5)) == ["e1", "e2"]  # keep: NULL is removed
    assert ids(Filter("score", ">=", 0.5, action="drop")) == ["e0", "e3", "e4"]  # NULL stays
    assert ids(Filter("score", "in", [0.1], action="drop")) == ["e1", "e2", "e3", "e4"]
    assert ids(Filter("score", "not in", [0.1], action="drop")) == ["e0", "e3", "e4"]
    # drop and keep AND together
    assert ids(Filter("difficulty", ">=", 1), Filter("score", ">", 0.7, action="drop")) == [
        "e1",
        "e3",
        "e4",
    ]
    assert Filter("cluster", "in", [3, 5], action="drop").describe() == "drop cluster in 3,5"
    assert Filter("score", ">=", 0.5).describe() == "score>=0.5"  # keep reads as before
    with pytest.raises(StudioError, match="action must be keep or drop"):
        Filter("score", ">", 1, action="remove")  # type: ignore[arg-type]


def test_feature_conditions_read_the_stored_topk(store):
    run = feature_run(store)  # feature 7: 0.1 .. 0.5 on e0..e4; feature 3 on e0 (0.05), e1 (0.9)
    views = Views(run, None, None)

    def ids(*filters: Filter) -> list[str]:
        return store.wide("d", views=views, filters=filters, columns=["id"])["id"].to_pylist()

    assert ids(Filter("feature:7", ">", 0.25)) == ["e2", "e3", "e4"]
    assert ids(Filter("feature:3", ">", 0.5, action="drop")) == ["e0", "e2", "e3", "e4"]
    # not in an example's top-k reads as 0, so a keep rule on > 0 keeps only e0, e1
    assert ids(Filter("feature:3", ">", 0)) == ["e0", "e1"]
    assert ids(Filter("feature:3", "=", 0)) == ["e2", "e3", "e4"]
    assert store.count("d", views=views, filters=[Filter("feature:12", "<", 1)]) == 5
    # a feature is a column of the output too
    wide = store.wide("d", views=views, columns=["id", "feature:3", "feature:7"]).to_pandas()
    assert wide["feature:3"].tolist() == pytest.approx([0.05, 0.9, 0.0, 0.0, 0.0])
    assert wide["feature:7"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    with pytest.raises(StudioError, match=r"feature 16 is out of range.*16 features \(0..15\)"):
        store.wide("d", views=views, filters=[Filter("feature:16", ">", 0)])
    with pytest.raises(StudioError, match="has no feature run; run `python -m core featurize"):
        store.wide("d", views=Views(None, None, None), filters=[Filter("feature:3", ">", 0)])
    with pytest.raises(StudioError, match="expected feature:N"):
        store.wide("d", views=views, filters=[Filter("feature:x", ">", 0)])
    with pytest.raises(StudioError, match="'feature:3' is numeric"):
        store.wide("d", views=views, filters=[Filter("feature:3", ">", "high")])


def test_rule_hits_say_which_rule_removes_each_row(store):
    _partial_label(store)
    run = feature_run(store)
    views = Views(run, None, None)
    filters = [
        Filter("score", ">=", 0.5),  # removes e0 and the NULL rows e3, e4
        Filter("feature:7", ">", 0.35, action="drop"),  # removes e3, e4
        Filter("difficulty", "in", [1.0], action="drop"),  # removes e1
    ]
    hits = store.rule_hits("d", views=views, filters=filters, columns=["difficulty"])
    assert hits.column_names == ["id", "difficulty", "r0", "r1", "r2"]
    df = hits.to_pandas().set_index("id")
    assert df["r0"].tolist() == [True, False, False, True, True]
    assert df["r1"].tolist() == [False, False, False, True, True]
    assert df["r2"].tolist() == [False, True, False, False, False]
    # the rows with no hit are exactly the rows the filters keep
    kept = df.index[~df[["r0", "r1", "r2"]].any(axis=1)].tolist()
    assert kept == store.wide("d", views=views, filters=filters)["id"].to_pylist() == ["e2"]
    sel = store.rule_hits("d", views=views, filters=[], ids=["e1", "e3"]).to_pandas()
    assert sel.columns.tolist() == ["id", "cluster", "r_sel"]
    assert sel["r_sel"].tolist() == [True, False, True, False, True]


# --- reward scores (schema 5) ------------------------------------------------------------------
def test_reward_candidates_of_each_kind(prefs, store):
    cands = prefs.reward_candidates("prefs").to_pylist()
    assert [(c["example_id"], c["response_idx"], c["role"]) for c in cands] == [
        ("p0", 0, "chosen"),
        ("p0", 1, "rejected"),
        ("p0", 2, "rejected"),
        ("p1", 0, "chosen"),
        ("p1", 1, "rejected"),
    ]
    assert cands[2]["prompt"] == "prompt 0" and cands[2]["response"] == "p0 answer 2"
    assert cands[0]["messages"] is None
    assert store.reward_candidates("d").num_rows == 0  # prompts carry no response


def test_reward_chunks_resume_and_read_back_in_ingest_order(prefs):
    config = {"name": "rm", "model": "m", "head": "ordinal", "K": 3}
    rid, resumed = prefs.begin_run(RunRecord(REWARD_STEP, "prefs", config, {}))
    assert not resumed
    prefs.write_reward_chunk(rid, score_rows([("p1", 1), ("p0", 2)], [0.3, 0.2]), source="model: m")
    again, resumed = prefs.begin_run(RunRecord(REWARD_STEP, "prefs", config, {}))
    assert (again, resumed) == (rid, True)
    assert prefs.done_reward_keys(rid) == {("p1", 1), ("p0", 2)}
    assert prefs.reward_runs("prefs") == {}  # not finished yet
    prefs.write_reward_chunk(rid, score_rows([("p0", 0), ("p0", 1), ("p1", 0)]), source="model: m")
    prefs.finish_run(rid, summary=prefs.reward_totals(rid))
    assert prefs.reward_runs("prefs") == {"rm": rid}
    rows = prefs.reward_scores(rid).to_pylist()
    assert [(r["example_id"], r["response_idx"], r["role"]) for r in rows] == [
        ("p0", 0, "chosen"),
        ("p0", 1, "rejected"),
        ("p0", 2, "rejected"),
        ("p1", 0, "chosen"),
        ("p1", 1, "rejected"),
    ]
    assert [r["value"] for r in rows] == [0.0, 1.0, 0.2, 2.0, 0.3]
    assert rows[0]["logits"] == [0.5, -0.5] and rows[0]["source"] == "model: m"
    totals = prefs.run(rid)["summary"]
    assert (totals["n_scores"], totals["n_examples"], totals["n_truncated"]) == (5, 2, 2)
    with pytest.raises(StudioError, match="needs a name"):
        prefs.begin_run(RunRecord(REWARD_STEP, "prefs", {"model": "m"}, {}))


def test_a_failed_reward_chunk_stores_nothing(prefs):
    rid, _ = prefs.begin_run(RunRecord(REWARD_STEP, "prefs", {"name": "rm"}, {}))
    bad = score_rows([("p0", 0), ("p0", 1)]).set_column(
        2, "value", pa.array([1.0, None], pa.float64())
    )
    with pytest.raises(duckdb.Error):  # value is NOT NULL: the second row fails the chunk
        prefs.write_reward_chunk(rid, bad, source="x")
    assert prefs.done_reward_keys(rid) == set()


def test_add_reward_run_checks_every_key_first(prefs, store):
    with pytest.raises(StudioError, match=r"no response \('p0', response_idx 7\).*1 unknown"):
        prefs.add_run(
            RunRecord(REWARD_STEP, "prefs", {"name": "v"}, {}, {}, source="verifier"),
            scores=score_rows([("p0", 0), ("p0", 7)]),
        )
    with pytest.raises(StudioError, match="has no response \\('p0', response_idx -1\\)"):
        prefs.import_reward_scores(
            dataset="prefs", name="v", path="f.jsonl", scores=score_rows([("p0", -1)]), versions={}
        )
    with pytest.raises(StudioError, match="is scored 2 times"):
        prefs.add_run(
            RunRecord(REWARD_STEP, "prefs", {"name": "v"}, {}, {}, source="verifier"),
            scores=score_rows([("p0", 0), ("p0", 0)]),
        )
    assert prefs.list_runs(step="reward").empty  # nothing of the failed runs is left
    # a prompt dataset takes example-level scores (-1) only
    rid = store.import_reward_scores(
        dataset="d",
        name="ext",
        path="f.jsonl",
        scores=score_rows([("e1", -1), ("e0", -1)]),
        versions={},
    )
    rows = store.reward_scores(rid).to_pylist()
    assert [(r["example_id"], r["response_idx"], r["role"]) for r in rows] == [
        ("e0", -1, "response"),
        ("e1", -1, "response"),
    ]
    assert {r["source"] for r in rows} == {"imported: f.jsonl"}
    assert store.run(rid)["config"] == {
        "name": "ext",
        "source": "imported: f.jsonl",
        "column": "score",
    }


def test_replacing_a_dataset_drops_its_reward_scores(prefs):
    rid = prefs.import_reward_scores(
        dataset="prefs", name="v", path="f", scores=score_rows([("p0", 0)]), versions={}
    )
    prefs.write_dataset(
        name="prefs", kind="preferences", source="p.jsonl", replace=True, **pref_tables()
    )
    with prefs.connect() as con:
        assert con.execute("SELECT count(*) FROM reward_scores").fetchone() == (0,)
    assert prefs.reward_runs("prefs") == {} and prefs.reward_scores(rid).num_rows == 0


def test_migration_5_adds_reward_scores_and_old_files_still_read(tmp_path, monkeypatch):
    s = Store(tmp_path / "v4.duckdb")
    monkeypatch.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:4])
    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", 4)
    s.write_dataset(name="prefs", kind="preferences", source="p.jsonl", **pref_tables())
    assert s.schema_version() == 4
    monkeypatch.undo()
    # the read-only app meets the v4 file: no reward runs, an empty score table, no error
    assert s.reward_runs("prefs") == {}
    empty = s.reward_scores(1)
    assert empty.num_rows == 0 and empty.column_names == [
        "example_id",
        "response_idx",
        "role",
        "value",
        "logits",
        "truncated",
        "source",
    ]
    assert s.migrate() == SCHEMA_VERSION
    rid = s.import_reward_scores(
        dataset="prefs", name="v", path="f", scores=score_rows([("p0", 0)]), versions={}
    )
    assert s.reward_scores(rid).column_names == empty.column_names


# --- one error path for files that are not (readable) stores ---------------------------------
def _bad_db(tmp_path, what: str):
    path = tmp_path / f"{what}.duckdb"
    if what == "empty":
        path.write_bytes(b"")
    elif what == "text":
        path.write_text("id,prompt\n1,hello\n")
    elif what == "folder":
        path.mkdir()
    elif what in ("foreign", "truncated", "garbled"):
        con = duckdb.connect(str(path))
        con.execute("CREATE TABLE t AS SELECT range AS a FROM range(200000)")
        con.close()
        data = path.read_bytes()
        if what == "truncated":
            path.write_bytes(data[: len(data) // 3])
        elif what == "garbled":
            garbled = bytearray(data)
            garbled[5000:20000] = b"\xab" * 15000
            path.write_bytes(bytes(garbled))
    return path


BAD_DBS = {
    "empty": "is an empty file (0 bytes)",
    "text": "is not a DuckDB file",
    "folder": "is a folder, not a DuckDB file",
    "foreign": "is a DuckDB file but not a SAERL Studio store (its tables: t)",
    "truncated": "is corrupt or truncated",
    "garbled": "is corrupt or truncated",
}


@pytest.mark.parametrize("what", sorted(BAD_DBS))
def test_a_file_that_is_not_a_readable_store_is_one_line_naming_why(tmp_path, what, capsys):
    from core.cli import main

    path = _bad_db(tmp_path, what)
    before = path.read_bytes() if path.is_file() else None
    for call in (Store(path).list_datasets, Store(path).check_readable):
        with pytest.raises(StudioError) as err:
            call()
        assert BAD_DBS[what] in str(err.value) and "busy" not in str(err.value)
        assert "\n" not in str(err.value)
    assert main(["info", "--db", str(path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: database ") and BAD_DBS[what] in line and "\n" not in line
    # a writing command neither adds tables to a foreign file nor rewrites a broken one
    src = tmp_path / "a.jsonl"
    src.write_text('{"id": "a", "prompt": "x"}\n')
    assert main(["ingest", str(src), "--dataset", "d", "--kind", "prompts", "--db", str(path)]) == 2
    assert BAD_DBS[what] in capsys.readouterr().err
    if before is not None:
        assert path.read_bytes() == before


def test_a_held_lock_is_still_reported_as_busy(tmp_path):
    path = tmp_path / "held.duckdb"
    Store(path).migrate()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import duckdb, sys
                con = duckdb.connect({str(path)!r})
                print("held", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StudioError, match="is busy"):
            Store(path, lock_timeout_s=0.1).list_datasets()
    finally:
        holder.communicate("")


def test_replacing_a_dataset_keeps_its_train_sae_runs(store):
    sae_run = store.record_run(
        step="train-sae",
        dataset="d",
        config={"out": "data/saes/d-x"},
        versions={},
        summary={"path": "data/saes/d-x"},
    )
    other = store.record_run(step="dedup", dataset="d", config={}, versions={}, summary={})
    store.write_dataset(name="d", kind="prompts", source="y.jsonl", replace=True, **tables(3))
    kept = store.list_runs(dataset="d")
    assert sae_run in set(kept["run_id"]) and other not in set(kept["run_id"])
    assert store.run(sae_run)["summary"]["path"] == "data/saes/d-x"
