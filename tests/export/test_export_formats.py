"""End to end: the export command in every format, read back the way trainers read it
(`datasets`), reproducible byte for byte; preference and chat data in TRL's layouts."""

import hashlib
import json
from pathlib import Path

import pytest

from core.demo_data import write_demo_chats, write_demo_preferences
from core.export import ExportConfig
from tests.conftest import PIPELINE_ROWS, load_written, run_cli

PROMPT_FORMATS = ["jsonl", "parquet", "hf", "verl", "trl-prompt"]


def _export(db: Path, dataset: str, out: Path, *args: str) -> int:
    return run_cli("export", "--db", str(db), "--dataset", dataset, "--out", str(out), *args)


@pytest.mark.parametrize("fmt", PROMPT_FORMATS)
def test_every_format_loads_and_reproduces(pipeline_db, tmp_path, fmt):
    suffix = {"hf": "", "verl": ".parquet", "parquet": ".parquet"}.get(fmt, ".jsonl")
    out = tmp_path / f"train{suffix}"
    args = ["--format", fmt, "--order", "curriculum", "--batch-size", "20"]
    assert _export(pipeline_db, "demo", out, *args, "--drop", "is_duplicate=1") == 0
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    data = out / "data-00000-of-00001.arrow" if manifest["container"] == "hf" else out
    first = data.read_bytes()
    assert hashlib.sha256(first).hexdigest() == manifest["sha256"]
    ds = load_written(out, manifest["container"], tmp_path / "cache")
    assert len(ds) == manifest["rows"] == manifest["counts"]["examples"] < PIPELINE_ROWS
    assert sum(manifest["counts"]["per_cluster"].values()) == manifest["rows"]
    assert sum(manifest["counts"]["per_difficulty_band"].values()) == manifest["rows"]
    assert manifest["layout"] == ExportConfig(fmt=fmt).layout
    assert "--drop is_duplicate=1" in manifest["command"]
    layout = manifest["layout"]
    if layout in ("verl", "trl-prompt"):
        assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["prompt"][0]["content"]
    if layout == "trl-prompt":  # reward functions get the answer beside the prompt
        assert {"answer", "id", "cluster", "batch", "difficulty"} <= set(ds.column_names)
    if layout == "rows":
        assert {"id", "prompt", "answer", "cluster", "batch"} <= set(ds.column_names)
        assert "position" not in ds.column_names and "idx" not in ds.column_names
    # the same command writes the same bytes
    assert _export(pipeline_db, "demo", out, *args, "--drop", "is_duplicate=1") == 0
    assert data.read_bytes() == first


@pytest.fixture(scope="module")
def kinds_db(tmp_path_factory):
    """A store with the demo's preference and chat sets (ingested only: no model needed)."""
    folder = tmp_path_factory.mktemp("kinds")
    db = folder / "kinds.duckdb"
    prefs = write_demo_preferences(folder / "prefs.jsonl", n=40, seed=0)
    chats = write_demo_chats(folder / "chats.jsonl", n=40, seed=0)
    for path, name, kind in ((prefs, "prefs", "preferences"), (chats, "chats", "chats")):
        args = ["ingest", str(path), "--db", str(db), "--dataset", name, "--kind", kind]
        assert run_cli(*args) == 0
    return db, prefs, chats


def test_preference_pairs_for_dpo_and_reward_training(kinds_db, tmp_path):
    db, prefs, _ = kinds_db
    records = [json.loads(line) for line in prefs.read_text().splitlines()]
    out = tmp_path / "pairs.jsonl"
    assert _export(db, "prefs", out, "--format", "trl-preference") == 0
    ds = load_written(out, "jsonl", tmp_path / "cache")
    assert len(ds) == sum(len(r["rejected"]) for r in records)
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["rows"] == len(ds) and manifest["counts"]["examples"] == len(records)
    first = records[0]
    rows = [r for r in ds if r["id"] == first["id"]]
    assert [r["rejected"][0]["content"] for r in rows] == first["rejected"]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": first["chosen"]}]
    assert rows[0]["prompt"] == [{"role": "user", "content": first["prompt"]}]
    assert [r["rejected_idx"] for r in rows] == list(range(len(first["rejected"])))


def test_chats_export_their_messages(kinds_db, tmp_path):
    db, _, chats = kinds_db
    records = [json.loads(line) for line in chats.read_text().splitlines()]
    out = tmp_path / "sft.parquet"
    assert _export(db, "chats", out, "--format", "trl-messages") == 0
    ds = load_written(out, "parquet", tmp_path / "cache")
    assert [r["messages"] for r in ds] == [r["messages"] for r in records]
    # a prompt-only layout stops at the last user turn
    out = tmp_path / "prompts.jsonl"
    assert _export(db, "chats", out, "--format", "trl-prompt") == 0
    long = next(i for i, r in enumerate(records) if len(r["messages"]) == 4)
    ds = load_written(out, "jsonl", tmp_path / "cache")
    assert ds[long]["prompt"] == records[long]["messages"][:3]


def test_a_layout_for_another_kind_is_one_line(kinds_db, tmp_path, capsys):
    db, _, _ = kinds_db
    out = tmp_path / "x.jsonl"
    assert _export(db, "chats", out, "--format", "trl-preference") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "preferences" in err
    assert not out.exists() and not Path(f"{out}.manifest.json").exists()


def test_the_app_reads_only_what_it_charts(pipeline_db):
    """export_columns gives the exported rows' numeric columns in written order without their
    text, the same as the full export rows; export_rows(limit=) reads only the first rows."""
    from pandas.testing import assert_frame_equal

    from core.filters import Filter
    from core.steps.export import export_columns, export_rows
    from core.store import Store

    store = Store(pipeline_db)
    cfg = ExportConfig(order="curriculum", batch_size=16)
    drop = [Filter("is_duplicate", "=", 1, action="drop")]
    full, _ = export_rows(store, dataset="demo", filters=drop, cfg=cfg)
    cols = ["cluster", "difficulty", "quality"]
    narrow = export_columns(store, dataset="demo", columns=cols, filters=drop, cfg=cfg)
    assert list(narrow.columns) == ["batch", *cols]
    assert_frame_equal(
        narrow[["batch", *cols]].reset_index(drop=True),
        full[["batch", *cols]].reset_index(drop=True),
        check_dtype=False,
    )
    assert narrow.attrs["difficulty_column"] == full.attrs["difficulty_column"]
    assert narrow.attrs["cross_cluster_share"] == full.attrs["cross_cluster_share"]
    every = export_columns(store, dataset="demo", columns=cols)
    assert len(every) == PIPELINE_ROWS and "batch" not in every.columns
    head, _ = export_rows(store, dataset="demo", filters=drop, cfg=cfg, limit=7)
    assert head["id"].tolist() == full["id"].head(7).tolist()
