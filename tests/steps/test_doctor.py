"""`python -m core doctor`: a healthy store passes; each kind of damage is one line with a remedy."""

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from core.cli import main
from core.store import RunRecord, Store


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def studio(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "p.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"e{i}", "prompt": f"p {i}"}) + "\n" for i in range(5))
    )
    db = tmp_path / "s.duckdb"
    exports = tmp_path / "exports"
    assert main(["ingest", str(src), "--dataset", "d", "--kind", "prompts", "--db", str(db)]) == 0
    out = exports / "d.jsonl"
    assert (
        main(["export", "--dataset", "d", "--format", "jsonl", "--out", str(out), "--db", str(db)])
        == 0
    )
    return db, exports


def _doctor(db: Path, exports: Path, *extra: str) -> tuple[int, list[str]]:
    """Run doctor in this process (the CLI's main), returning its exit code and lines."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "doctor",
                "--db",
                str(db),
                "--export-dir",
                str(exports),
                "--sae-dir",
                str(exports.parent / "saes"),
                *extra,
            ]
        )
    return code, out.getvalue().splitlines()


def test_a_healthy_store_passes(studio: tuple[Path, Path]) -> None:
    code, lines = _doctor(*studio)
    assert code == 0, lines
    assert not [ln for ln in lines if ln.startswith("PROBLEM")]
    assert any("1 export manifests match their data" in ln for ln in lines)
    assert lines[-1].startswith("0 problems found")


def test_each_kind_of_damage_is_one_line_with_a_remedy(studio: tuple[Path, Path]) -> None:
    db, exports = studio
    store = Store(db)
    store.begin_run(RunRecord("featurize", "d", {"x": 1}, {}))
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO labels VALUES ('gone', 'e1', 'difficulty', 1.0)")
    con.execute("INSERT INTO projections VALUES (999, 'e1', 0.0, 0.0)")
    con.close()
    with open(exports / "d.jsonl", "a") as fh:  # the data no longer matches its manifest
        fh.write("\n")
    temp = exports / f".d.jsonl.{_dead_pid()}.abcdefgh.tmp"
    temp.write_text("half an export")

    code, lines = _doctor(db, exports)
    assert code == 1
    problems = [ln for ln in lines if ln.startswith("PROBLEM")]
    text = "\n".join(lines)
    assert "rows whose run or dataset is gone (labels 1, projections 1)" in text
    assert "is not finished" in text and "rerun the same command to resume it" in text
    assert "does not match its manifest's sha256" in text
    assert f"leftover temp file {temp}" in text and "doctor --sweep" in text
    assert len(problems) == 3 and lines[-1].startswith("3 problems found")

    code, lines = _doctor(db, exports, "--sweep")
    assert not temp.exists() and any(f"removed leftover temp {temp}" in ln for ln in lines)


@pytest.mark.parametrize("content", [b"", b"not a database"])
def test_a_file_that_does_not_open_is_one_problem(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "x.duckdb"
    db.write_bytes(content)
    code, lines = _doctor(db, tmp_path / "exports")
    assert code == 1
    assert lines[0].startswith(f"PROBLEM database {db} is ") and "busy" not in lines[0]


# --- review of issue 12: what doctor met and crashed on ----------------------------------------


def _old_store(db: Path, migrations: list[tuple[int, str, str]]) -> None:
    """A store as an earlier version of the tool left it: only ``migrations`` applied, the way
    Store.migrate applies them."""
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE schema_version (version INTEGER NOT NULL, name VARCHAR, "
        "applied_at TIMESTAMP DEFAULT current_timestamp)"
    )
    for version, name, ddl in migrations:
        con.execute(ddl)
        con.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", [version, name])
    con.close()


def test_an_older_schema_is_one_finding_not_a_traceback(tmp_path: Path) -> None:
    """A store written by an earlier version (here: the first three migrations) lacks tables
    the health checks read; doctor says so in one line and still checks the files on disk."""
    from core.store import MIGRATIONS, SCHEMA_VERSION

    db = tmp_path / "old.duckdb"
    _old_store(db, MIGRATIONS[:3])
    exports = tmp_path / "exports"
    exports.mkdir()
    temp = exports / f".d.jsonl.{_dead_pid()}.abcdefgh.tmp"
    temp.write_text("half an export")

    code, lines = _doctor(db, exports)
    assert code == 1
    problems = [ln for ln in lines if ln.startswith("PROBLEM")]
    assert len(problems) == 2, lines
    assert problems[0] == (
        f"PROBLEM schema version 3 is older than this tool's {SCHEMA_VERSION}, so the rows "
        "inside were not checked: run any command that writes to it (e.g. python -m core "
        f"ingest FILE --dataset NAME --db {db}) to upgrade it in place, then doctor again"
    )
    assert f"leftover temp file {temp}" in problems[1]  # the checks on disk still ran
    # after the upgrade every check runs and passes
    Store(db).migrate()
    code, lines = _doctor(db, exports, "--sweep")
    assert code == 0, lines
    assert f"ok      schema version {SCHEMA_VERSION}" in lines


MANIFESTS = [
    (b'{"file": "", "sha256": "00"}', "field 'file' must be a file name beside it, got ''"),
    (b'{"file": "a/b", "sha256": "00"}', "field 'file' must be a file name beside it, got 'a/b'"),
    (b'{"file": "..", "sha256": "00"}', "field 'file' must be a file name beside it, got '..'"),
    (b'{"file": "a\\u0000b", "sha256": "00"}', "field 'file' must be a file name beside it"),
    (b'{"file": 5, "sha256": "00"}', "field 'file' must be a file name beside it, got 5"),
    (b'{"file": null, "sha256": "00"}', "field 'file' must be a file name beside it, got None"),
    (b'{"sha256": "00"}', "has no field 'file'"),
    (b'{"file": "d.jsonl"}', "has no field 'sha256'"),
    (b'{"file": "d.jsonl", "sha256": ["x"]}', "field 'sha256' must be a hex digest, got ['x']"),
    (b'["file", "sha256"]', "is not a JSON object"),
    (b'{"file": "d.jsonl", "sha256": ', "is not valid JSON (line 1"),
    (b'\xff{"file": "d.jsonl"}', "is not UTF-8 text"),
]


@pytest.mark.parametrize(("content", "needle"), MANIFESTS)
def test_a_malformed_manifest_is_one_finding_naming_it_and_the_field(
    studio: tuple[Path, Path], content: bytes, needle: str
) -> None:
    db, exports = studio
    bad = exports / "x.jsonl.manifest.json"
    bad.write_bytes(content)
    code, lines = _doctor(db, exports)
    assert code == 1
    problems = [ln for ln in lines if ln.startswith("PROBLEM")]
    assert len(problems) == 1, lines
    assert problems[0].startswith(f"PROBLEM manifest {bad} "), problems
    assert needle in problems[0], problems
    assert problems[0].endswith(": remove it, or rerun the export it describes"), problems


def test_the_manifest_line_says_how_much_was_hashed(studio: tuple[Path, Path]) -> None:
    db, exports = studio
    size = (exports / "d.jsonl").stat().st_size
    code, lines = _doctor(db, exports)
    assert code == 0
    assert f"ok      1 export manifests match their data (sha256 of 1 file, {size} bytes)" in lines


def test_a_recorded_export_or_sae_folder_that_is_gone_is_a_finding(
    studio: tuple[Path, Path],
) -> None:
    import shutil

    db, exports = studio
    hf = exports / "sub" / "d_hf"
    assert (
        main(["export", "--dataset", "d", "--format", "hf", "--out", str(hf), "--db", str(db)]) == 0
    )
    store = Store(db)
    sae = exports.parent / "saes" / "gone_sae"
    sae.mkdir(parents=True)
    run_id, _ = store.begin_run(RunRecord("train-sae", "d", {"w": 1}, {}))
    store.finish_run(run_id, summary={"path": str(sae)})
    fr, _ = store.begin_run(RunRecord("featurize", "d", {"sae": str(sae)}, {}))
    store.finish_run(fr, summary={})
    shutil.rmtree(exports / "sub")
    shutil.rmtree(sae.parent)

    code, lines = _doctor(db, exports)
    assert code == 0, lines  # notes: the store's own rows stay usable
    text = "\n".join(lines)
    assert f"export of 'd' to {hf} (" in text and ") is gone" in text
    assert f"train-sae run {run_id} ('d') wrote {sae}, which is gone" in text
    assert f"feature run {fr} ('d') read the SAE {sae}, which is gone" in text
    # a recorded path with no name (an hf export to '.') has no manifest beside it to check
    store.record_export(dataset="d", path=".", fmt="hf", n_rows=1, manifest={})
    code, lines = _doctor(db, exports)
    assert code == 0, lines


def test_the_export_folder_defaults_to_the_apps(
    studio: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --export-dir doctor checks the folder the app writes to: $SAERL_EXPORT_DIR, else
    data/exports (core.defaults.export_dir, the app's rule too), from the CLI as well."""
    from core.defaults import export_dir as default_export_dir
    from core.steps.doctor import diagnose

    db, _ = studio
    app = db.parent / "app_exports"
    app.mkdir()
    stray = app / "gone.jsonl.manifest.json"  # an export the store does not record
    stray.write_text(json.dumps({"file": "gone.jsonl", "sha256": "0" * 64}))
    monkeypatch.chdir(db.parent)
    monkeypatch.setenv("SAERL_EXPORT_DIR", str(app))
    assert default_export_dir(None) == app and default_export_dir("x") == Path("x")
    whats = [f.what for f in diagnose(db) if f.level == "problem"]
    assert whats == [f"manifest {stray} describes {app / 'gone.jsonl'}, which is missing"]
    assert main(["doctor", "--db", str(db)]) == 1  # the CLI's default is the same folder
    monkeypatch.delenv("SAERL_EXPORT_DIR")
    assert default_export_dir(None) == Path("data/exports")
    assert not [f for f in diagnose(db) if f.level == "problem"]


def test_upgrade_migrates_an_older_schema_then_checks_it(tmp_path: Path) -> None:
    from core.steps.doctor import diagnose
    from core.store import MIGRATIONS, SCHEMA_VERSION

    db = tmp_path / "old.duckdb"
    _old_store(db, MIGRATIONS[:2])
    findings = diagnose(db, export_dir=tmp_path / "e", sae_dir=tmp_path / "s", upgrade=True)
    lines = [f.line() for f in findings]
    assert "note    upgraded the schema from version 2" in lines
    assert f"ok      schema version {SCHEMA_VERSION}" in lines
    assert not [f for f in findings if f.level == "problem"], lines
    assert Store(db).schema_version() == SCHEMA_VERSION


def test_store_health_reads_an_older_schema_without_its_newer_tables(tmp_path: Path) -> None:
    """Store.health on a store of the first migrations checks the tables it has and skips the
    ones later migrations add (no CatalogException)."""
    from core.store import DATASET_TABLES, MIGRATIONS, RUN_TABLES

    db = tmp_path / "old.duckdb"
    _old_store(db, MIGRATIONS[:2])
    with duckdb.connect(str(db)) as con:
        present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert not {*RUN_TABLES, *DATASET_TABLES} <= present  # some tables are newer
    health = Store(db).health()
    assert health["schema_version"] == 2 and health["orphans"] == {}
