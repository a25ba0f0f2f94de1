"""Adding an export layout is one new file plus one registry line: a layout module written into
tmp_path, registered in ``LAYOUTS`` (the line), then exported through the real export step."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pytest

from core.errors import StudioError
from core.export import LAYOUTS, ExportConfig, format_table, manifest_path, to_layout
from core.steps.export import ExportRequest, export
from core.steps.ingest import ingest
from core.store import Store

# The whole new layout: one file, as a contributor would add core/export/layouts/shout.py.
SHOUT_PY = '''
"""shout: each prompt upper-cased beside its id, for a trainer called shout."""

import pyarrow as pa
import pyarrow.compute as pc

from core.export.layouts.base import Layout, RecipeArgs, column


def rows(chunk: pa.Table, *, kind: str, data_source: str) -> pa.Table:
    return pa.table(
        {
            "id": column(chunk, "id"),
            "text": pc.utf8_upper(column(chunk, "prompt")),
            "source": pa.repeat(pa.scalar(data_source), chunk.num_rows),
        }
    )


def recipe(args: RecipeArgs) -> dict:
    return {"trainer": "shout 1.0", "load": f"shout.load({str(args.out)!r})", "rows": args.n_rows}


SHOUT = Layout(
    name="shout",
    summary="prompts, upper-cased",
    rows=rows,
    keep_order="read it top to bottom",
    kinds=("prompts",),
    containers=("jsonl", "parquet"),
    trainers=("shout",),
    recipe=recipe,
)
'''

PROMPTS = [("p1", "add one", 3), ("p2", "say hi", 1), ("p3", "count to two", 2)]


def _load(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("shout", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "shout", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The new layout's file, written and imported, and its one registry line."""
    path = tmp_path / "shout.py"
    path.write_text(SHOUT_PY, encoding="utf-8")
    with pytest.raises(StudioError, match="unknown format 'shout'"):
        ExportConfig(fmt="shout")
    module = _load(path, monkeypatch)
    monkeypatch.setitem(LAYOUTS, module.SHOUT.name, module.SHOUT)  # the registry line
    return module


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A prompts dataset 'd' (with a difficulty label) and a chats dataset 'c'."""
    data = tmp_path / "prompts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": i, "prompt": p, "answer": "x", "difficulty": d}) + "\n"
            for i, p, d in PROMPTS
        ),
        encoding="utf-8",
    )
    chats = tmp_path / "chats.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    chats.write_text(json.dumps({"id": "c1", "messages": turns}) + "\n", encoding="utf-8")
    s = Store(tmp_path / "s.duckdb")
    ingest(s, data, dataset="d", kind="prompts")
    ingest(s, chats, dataset="c", kind="chats")
    return s


def test_a_layout_in_one_file_and_one_registry_line_exports(
    shout: ModuleType, store: Store, tmp_path: Path
) -> None:
    assert format_table()["shout"] == (shout.SHOUT, "jsonl")
    cfg = ExportConfig(fmt="shout", order="easy-to-hard")
    assert cfg.layout == "shout" and cfg.layout_spec is shout.SHOUT
    out = tmp_path / "out" / "train.jsonl"
    manifest = export(store, ExportRequest("d"), cfg, out=out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"id": "p2", "text": "SAY HI", "source": "d"},
        {"id": "p3", "text": "COUNT TO TWO", "source": "d"},
        {"id": "p1", "text": "ADD ONE", "source": "d"},
    ]
    written = json.loads(manifest_path(out).read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(manifest, default=str))
    assert (written["format"], written["layout"], written["container"]) == ("shout",) * 2 + (
        "jsonl",
    )
    assert written["rows"] == 3 and written["order"] == "easy-to-hard"
    assert written["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert written["keep_the_order"] == "read it top to bottom"
    assert written["train"] == {
        "trainer": "shout 1.0",
        "load": f"shout.load({str(out)!r})",
        "rows": 3,
    }
    assert "--format shout" in written["command"]
    assert not out.with_name("train.jsonl.reward.py").exists()  # reward_file is off


def test_the_new_layouts_fields_are_its_checks(
    shout: ModuleType, store: Store, tmp_path: Path
) -> None:
    """kinds, containers and the missing length rule are enforced from the Layout value."""
    cfg = ExportConfig(fmt="shout")
    with pytest.raises(StudioError, match=r"needs a dataset of kind prompts; this one is chats"):
        export(store, ExportRequest("c"), cfg, out=tmp_path / "c.jsonl")
    with pytest.raises(StudioError, match=r"--format shout writes jsonl or parquet, not hf"):
        export(store, ExportRequest("d"), cfg, out=tmp_path / "folder")
    with pytest.raises(StudioError, match="--format shout has no trainer"):
        ExportConfig(fmt="shout", tokenizer="t", max_length=8)
    parquet = tmp_path / "train.parquet"
    assert export(store, ExportRequest("d"), cfg, out=parquet)["container"] == "parquet"
    assert not list(tmp_path.glob("folder*"))


def test_to_layout_reaches_a_registered_layout_by_name(shout: ModuleType) -> None:
    """The registry line is all the package needs: to_layout finds the new layout by name, after
    the five it ships."""
    assert list(LAYOUTS) == [
        "rows",
        "verl",
        "trl-prompt",
        "trl-preference",
        "trl-messages",
        "shout",
    ]
    table = to_layout(pa.table({"id": ["a"], "prompt": ["ok"]}), "shout", kind="prompts")
    assert table.to_pylist() == [{"id": "a", "text": "OK", "source": ""}]
