"""An export can never destroy data: where it refuses to write, what a kill leaves, file modes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from core.errors import StudioError
from core.export import ExportConfig, leftover_temp_files, manifest_path, path_under
from core.filters import parse_rule_where, parse_where
from core.rules import RuleSet, save_rule_set
from core.steps.doctor import check_manifest
from core.steps.export import ExportRequest, export
from core.store import Store
from tests.conftest import run_cli


def _store(path: Path, n: int = 20, *, text: int = 10) -> Store:
    ids = [f"e{i}" for i in range(n)]
    prompts = [f"prompt {i} " + "x" * text for i in range(n)]
    store = Store(path)
    store.write_dataset(
        name="d",
        kind="prompts",
        source="mem",
        examples=pa.table(
            {
                "id": ids,
                "idx": pa.array(range(n), pa.int64()),
                "prompt": prompts,
                "answer": [str(i) for i in range(n)],
                "text": prompts,
                "tags": ['{"task": "a"}'] * n,
                "extra": ["{}"] * n,
            }
        ),
        labels=pa.table(
            {
                "example_id": ids,
                "name": ["difficulty"] * n,
                "value": [float(i % 4) for i in range(n)],
            }
        ),
        responses=pa.table(
            {
                "example_id": pa.array([], pa.string()),
                "response_idx": pa.array([], pa.int32()),
                "role": pa.array([], pa.string()),
                "text": pa.array([], pa.string()),
            }
        ),
    )
    return store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "s.duckdb"
    _store(path)
    return path


def _export(db: Path, out: Path | str, *extra: str) -> int:
    return run_cli("export", "--dataset", "d", "--db", str(db), "--out", str(out), *extra)


# --- 1. never onto the store -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "fmt", "said"),
    [
        ("{db}", "jsonl", "would replace the database"),
        ("{db}.wal", "jsonl", "would replace the database's write-ahead log"),
        ("{dir}/./s.duckdb", "parquet", "would replace the database"),
        ("{dir}", "hf", "lies inside it"),
        ("{dir}/..", "hf", "lies inside it"),
        ("{link}", "jsonl", "would replace the database"),
    ],
)
def test_an_export_onto_the_store_is_refused_and_writes_nothing(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, fmt: str, said: str
) -> None:
    (tmp_path / "link.duckdb").symlink_to(db)
    wal = Path(f"{db}.wal")
    wal.write_bytes(b"")  # as DuckDB leaves it
    out = target.format(db=db, dir=db.parent, link=tmp_path / "link.duckdb")
    before = {p: p.read_bytes() for p in db.parent.rglob("*") if p.is_file()}
    assert _export(db, out, "--format", fmt) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out ") and said in err and "\n" not in err, err
    assert {p: p.read_bytes() for p in db.parent.rglob("*") if p.is_file()} == before
    assert Store(db).list_datasets()["name"].tolist() == ["d"]


# --- 2. never a folder we did not write --------------------------------------------------------
def test_an_hf_export_onto_a_users_folder_is_refused_and_keeps_it(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    assert _export(db, folder, "--format", "hf") == 2
    err = capsys.readouterr().err
    assert "an hf export replaces the whole folder" in err and "'notes.txt'" in err
    assert (folder / "notes.txt").read_text() == "my notes" and len(list(folder.iterdir())) == 1
    # our own previous export is replaced, as before
    out = tmp_path / "ours"
    assert _export(db, out, "--format", "hf") == 0
    assert _export(db, out, "--format", "hf", "--where", "difficulty<=1") == 0
    assert json.loads(manifest_path(out).read_text())["rows"] == 10


# --- 6. what a kill leaves, and the next export sweeps it ---------------------------------------
def test_the_manifest_is_renamed_before_the_data(db: Path, tmp_path: Path) -> None:
    """A kill between the two renames leaves the old data beside a manifest that names other
    bytes, which doctor reports, never new data beside an old manifest."""
    from core.export import writer

    out = tmp_path / "train.jsonl"
    assert _export(db, out) == 0
    old = out.read_bytes()
    seen: list[bytes] = []
    real = writer._replace

    def crash_after_manifest(tmp: Path, target: Path) -> None:
        seen.append(manifest_path(out).read_bytes())
        raise KeyboardInterrupt  # killed before the data's rename

    try:
        writer._replace = crash_after_manifest
        with pytest.raises(KeyboardInterrupt):
            export(
                Store(db),
                ExportRequest("d", filters=(parse_where("difficulty<=1"),)),
                ExportConfig(fmt="jsonl"),
                out=out,
            )
    finally:
        writer._replace = real
    assert out.read_bytes() == old  # the data is the old one
    assert json.loads(seen[0])["rows"] == 10  # the new manifest was already in place
    finding = check_manifest(manifest_path(out))
    assert finding is not None and "does not match its manifest's sha256" in finding.what
    assert not leftover_temp_files(tmp_path) and not list(tmp_path.glob(".train.jsonl.*"))


@pytest.mark.slow
def test_a_killed_export_leaves_no_mismatch_and_the_next_export_sweeps_its_temp(
    tmp_path: Path,
) -> None:
    db = tmp_path / "big.duckdb"
    _store(db, n=300_000, text=200)
    out = tmp_path / "out" / "train.jsonl"
    assert _export(db, out, "--where", "difficulty<=0") == 0
    old = out.read_bytes()
    cmd = [sys.executable, "-m", "core", "export", "--dataset", "d", "--db", str(db)]
    proc = subprocess.Popen([*cmd, "--out", str(out)], stderr=subprocess.DEVNULL)
    temp: list[Path] = []
    limit = time.monotonic() + 600  # only a machine too busy to start the export gets here
    while proc.poll() is None and not temp and time.monotonic() < limit:
        temp = list(out.parent.glob(f".train.jsonl.{proc.pid}.*.tmp"))
        time.sleep(0.005)
    if proc.poll() is not None or not temp:
        proc.kill()
        pytest.skip("the export finished (or never started) before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    data = out.read_bytes()
    meta = json.loads(manifest_path(out).read_text())
    # never new data beside the old export's manifest
    assert data == old or hashlib.sha256(data).hexdigest() == meta["sha256"]
    left = leftover_temp_files(out.parent)
    assert left and all(p.name.startswith(f".train.jsonl.{proc.pid}.") for p in left)
    # the next export into that folder sweeps them, and is whole
    assert _export(db, out.parent / "other.jsonl", "--where", "difficulty<=0") == 0
    assert not leftover_temp_files(out.parent)
    assert not list(out.parent.glob(f".*.{proc.pid}.*"))


# --- 7. a place that cannot be written ---------------------------------------------------------
def test_an_export_under_a_file_is_one_line(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert _export(db, blocker / "sub" / "train.jsonl") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write there" in err and "is a file, not a folder" in err and "\n" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission")
def test_an_export_into_a_read_only_folder_is_one_line(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert _export(db, ro / "train.jsonl") == 2
        assert "no permission, or a read-only file system" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


# --- 9. silent successes ------------------------------------------------------------------------
def test_ids_none_of_which_are_known_are_an_error_and_some_unknown_a_warning(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("nope\nneither\n")
    out = tmp_path / "sel.jsonl"
    assert _export(db, out, "--ids", str(ids)) == 2
    err = capsys.readouterr().err
    assert f"none of the 2 ids in --ids {ids} are in dataset 'd'" in err and not out.exists()
    ids.write_text("e1\nnope\ne2\n")
    assert _export(db, out, "--ids", str(ids)) == 0
    err = capsys.readouterr().err
    assert "warning: 1 of the 3 ids" in err and "'nope'" in err
    assert json.loads(manifest_path(out).read_text())["rows"] == 2


@pytest.mark.parametrize(
    "expr", ["difficulty>nan", "difficulty<=inf", "difficulty in 1,nan", "feature:3>-inf"]
)
def test_a_value_that_is_not_a_finite_number_is_refused_at_parse(expr: str) -> None:
    with pytest.raises(StudioError, match="is not a finite number") as err:
        parse_rule_where(expr)
    assert "\n" not in str(err.value)
    assert parse_where("task='nan'").value == "nan"  # quoted: text


# --- 11. the usual file modes -----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_exports_and_rule_sets_get_the_usual_modes(db: Path, tmp_path: Path, fmt: str) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / ("train" if fmt == "hf" else f"train.{fmt}")
        assert _export(db, out, "--format", fmt) == 0
        rules = save_rule_set(tmp_path / "rules" / "r.json", RuleSet(name="r", rules=()))
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(manifest_path(out)) == 0o644 and mode(rules) == 0o644
    if fmt == "hf":
        assert mode(out) == 0o755
        assert {mode(p) for p in out.iterdir()} == {0o644}
    else:
        assert mode(out) == 0o644


# --- the app's export folder -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("", "is empty"),
        ("/etc/x.jsonl", "not an absolute path"),
        ("../x.jsonl", "'..' is not allowed"),
        ("a/../../x.jsonl", "'..' is not allowed"),
        (".", "names the folder"),
    ],
)
def test_path_under_keeps_names_inside_the_folder(tmp_path: Path, name: str, said: str) -> None:
    with pytest.raises(StudioError, match=said):
        path_under(tmp_path, name)
    assert path_under(tmp_path, "sub/x.jsonl") == (tmp_path / "sub" / "x.jsonl").resolve()


def test_path_under_refuses_a_symlink_out(tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "out").symlink_to(tmp_path)
    with pytest.raises(StudioError, match="outside"):
        path_under(tmp_path / "exports", "out/x.jsonl")


# --- more of 1, 2, 6, 9 and 11 -----------------------------------------------------------------
def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (hidden ones too) with a file's bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(
    ("out", "extra"),
    [
        ("data/s.duckdb", ["--to", "jsonl"]),  # relative, the store named absolute
        ("./data/../data/s.duckdb", ["--format", "verl"]),
        (".", ["--format", "hf"]),  # the working folder holds the store
        ("data/s", ["--format", "hf"]),  # its manifest, data/s.manifest.json, is the store
        # its reward function, data/s.parquet.reward.py, is the store
        ("data/s.parquet", ["--format", "verl"]),
    ],
)
def test_the_store_is_found_however_the_path_is_spelled(
    db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    out: str,
    extra: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    if out == "data/s":
        db = db.rename(db.with_name("s.manifest.json"))
    if out == "data/s.parquet":
        db = db.rename(db.with_name("s.parquet.reward.py"))
    before = _tree(tmp_path)
    assert _export(db, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "database" in err and "write the export elsewhere" in err, err
    assert _tree(tmp_path) == before


def test_the_step_refuses_the_store_for_the_app_too(db: Path) -> None:
    with pytest.raises(StudioError, match="would replace the database"):
        export(Store(db), ExportRequest("d"), ExportConfig(container="jsonl"), out=db)


def test_an_hf_export_replaces_only_its_own_folder_and_writes_the_same_bytes(
    db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ours"
    assert _export(db, out, "--format", "hf") == 0
    first = _tree(out)
    (out / "cache-0123abcd.arrow").write_bytes(b"what datasets adds when a trainer maps it")
    assert _export(db, out, "--format", "hf", "--order", "random") == 0
    assert _export(db, out, "--format", "hf") == 0
    assert _tree(out) == first  # the cache is gone and the same export gave the same bytes
    (tmp_path / "empty").mkdir()
    assert _export(db, tmp_path / "empty", "--format", "hf") == 0
    (tmp_path / "afile").write_text("a plain file the user named is replaced, as before")
    assert _export(db, tmp_path / "afile", "--format", "hf") == 0
    assert (tmp_path / "afile" / "state.json").is_file()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_one_file_export_onto_a_folder_is_refused_before_writing(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    out = tmp_path / f"train.{fmt}"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    before = _tree(tmp_path)
    assert _export(db, out, "--format", fmt) == 2
    err = capsys.readouterr().err.strip()
    assert "is a folder" in err and "\n" not in err
    assert _tree(tmp_path) == before  # no temp file either


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def test_leftover_temp_files_lists_only_dead_or_stale_writers(tmp_path: Path) -> None:
    from core.export import sweep_temp_files

    live = _sleeper()
    try:
        dead = _sleeper()
        dead.kill()
        dead.wait()  # reaped: its pid is gone
        names = {
            "dead_file": f".train.jsonl.{dead.pid}.abcd_123.tmp",
            "dead_folder": f".train.{dead.pid}.k2j4h5g6.tmp",
            "dead_aside": f".train.{dead.pid}.k2j4h5g6.old",
            "stale": f".x.parquet.{live.pid}.zzzzzzzz.tmp",
            "live": f".train.jsonl.{live.pid}.abcdefgh.tmp",
            "mine": f".train.jsonl.{os.getpid()}.abcdefgh.tmp",
            "not_ours": f".train.jsonl.{dead.pid}.tmp",
            "plain": "train.jsonl",
        }
        for key, name in names.items():
            if key == "dead_folder":
                (tmp_path / name).mkdir()
                (tmp_path / name / "data-00000-of-00001.arrow").write_bytes(b"partial")
            else:
                (tmp_path / name).write_bytes(b"x")
        day_ago = time.time() - 2 * 24 * 3600
        os.utime(tmp_path / names["stale"], (day_ago, day_ago))  # a pid since reused
        swept = ("dead_file", "dead_folder", "dead_aside", "stale")
        want = sorted(tmp_path / names[k] for k in swept)
        assert leftover_temp_files(tmp_path) == want
        assert sweep_temp_files(tmp_path) == want
        assert {p.name for p in tmp_path.iterdir()} == {names[k] for k in names if k not in swept}
        assert leftover_temp_files(tmp_path / "missing") == []
    finally:
        live.kill()
        live.wait()


def test_an_empty_ids_file_and_a_nan_filter_on_the_command_line_are_one_line(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n\n")
    out = tmp_path / "x.jsonl"
    assert _export(db, out, "--ids", str(ids)) == 2
    assert f"--ids {ids} lists no ids" in capsys.readouterr().err
    for expr in ("difficulty>nan", "difficulty<1e999", "difficulty not in 1,-inf"):
        assert _export(db, out, "--where", expr) == 2
        err = capsys.readouterr().err.strip()
        assert "is not a finite number" in err and "\n" not in err
    assert not out.exists()


def test_a_private_umask_gives_private_files(db: Path, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        assert _export(db, tmp_path / "t", "--format", "hf") == 0
        assert _export(db, tmp_path / "t.jsonl") == 0
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "t") == 0o700 and mode(tmp_path / "t" / "state.json") == 0o600
    assert mode(tmp_path / "t.jsonl") == 0o600 and mode(manifest_path(tmp_path / "t")) == 0o600


def test_path_under_strips_spaces_and_refuses_nul(tmp_path: Path) -> None:
    from core.export import DEFAULT_EXPORT_DIR

    assert DEFAULT_EXPORT_DIR == "data/exports"
    assert path_under(tmp_path, " v1/train ") == (tmp_path / "v1" / "train").resolve()
    for name, said in (("   ", "is empty"), ("a\x00b", "NUL")):
        with pytest.raises(StudioError, match=said):
            path_under(tmp_path, name)


def test_an_ids_file_that_is_not_text_and_rules_with_unknown_ids_are_one_line(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = tmp_path / "ids.bin"
    ids.write_bytes(b"e1\n\xff\xfe\n")
    assert _export(db, tmp_path / "x.jsonl", "--ids", str(ids)) == 2
    err = capsys.readouterr().err.strip()
    assert f"--ids {ids}: not UTF-8 text" in err and "\n" not in err
    rules = save_rule_set(tmp_path / "r.json", RuleSet(name="r", rules=()))
    ids.write_text("nope\n")
    assert run_cli("rules", str(rules), "--dataset", "d", "--db", str(db), "--ids", str(ids)) == 2
    assert "none of the 1 ids in --ids" in capsys.readouterr().err
