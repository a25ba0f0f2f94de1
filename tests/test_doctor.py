"""`python -m core doctor`: a healthy store passes; each kind of damage is one line with a remedy."""

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from core.cli import main
from core.store import Store


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
    store.start_run(step="featurize", dataset="d", config={"x": 1}, versions={})
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
