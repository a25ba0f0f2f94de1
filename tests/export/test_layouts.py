"""core/export/layouts and core/export/writer.py without a store or a model: export-row chunks built by hand, written in every
layout and container with ExportWriter, read back the way trainers read them (`datasets`)."""

from __future__ import annotations

import gc
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import core.export.writer
from core.errors import StudioError
from core.export import CONTAINERS, ExportWriter, Written, container_for, layout_schema, to_layout
from tests.conftest import load_written

N = 10  # rows per test set
GROUP = 5  # ROW_GROUP in these tests, so a file holds several row groups / record batches
SUFFIX = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}
HF_FILES = {"data-00000-of-00001.arrow", "dataset_info.json", "state.json"}
CASES = [
    *(
        (kind, layout)
        for kind in ("prompts", "preferences", "chats")
        for layout in ("rows", "verl")
    ),
    *((kind, "trl-prompt") for kind in ("prompts", "preferences", "chats")),
    ("preferences", "trl-preference"),
    ("chats", "trl-messages"),
]
INTERNAL = ("idx", "position")  # never beside a layout's own columns
RESPONSES = ("prompt", "chosen", "rejected", "messages")  # a trainer layout's own columns


@pytest.fixture(autouse=True)
def small_row_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.export.writer, "ROW_GROUP", GROUP)


# --- export rows as Store.export_chunks yields them ---------------------------------------------
def _schema(kind: str) -> pa.Schema:
    fields = [
        ("id", pa.string()),
        ("idx", pa.int64()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("cluster", pa.int64()),
        ("batch", pa.int64()),
        ("difficulty", pa.float64()),
        ("quality_proxy", pa.float64()),
        ("task", pa.string()),
    ]
    if kind == "preferences":
        fields += [("chosen", pa.string()), ("rejected", pa.list_(pa.string()))]
    if kind == "chats":
        fields += [("messages", pa.string())]
    return pa.schema([*fields, ("position", pa.int64())])


def _records(kind: str, n: int = N) -> list[dict[str, Any]]:
    """``n`` export rows in written order: idx differs from position; some answers, clusters and
    tasks are null; preferences have 1..3 rejected; chats have 2 or 4 turns."""
    out = []
    for i in range(n):
        row: dict[str, Any] = {
            "id": f"ex-{i:02d}",
            "idx": 100 + 7 * ((3 * i) % n),
            "prompt": f"What is {i} + {i}? (é)",
            "answer": None if i % 4 == 3 else str(2 * i),
            "cluster": None if i % 5 == 2 else i % 3,
            "batch": i // 4,
            "difficulty": round(0.1 * i + 0.05, 3),
            "quality_proxy": -1.5 + i / 8,
            "task": None if i == 6 else ("math" if i % 2 else "code"),
        }
        if kind == "preferences":
            row["chosen"] = f"good {i}"
            row["rejected"] = [f"bad {i}.{j}" for j in range(1 + i % 3)]
        if kind == "chats":
            turns = [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": f"It is {2 * i}."},
            ]
            if i % 2:
                turns += [
                    {"role": "user", "content": f"And times {i}?"},
                    {"role": "assistant", "content": f"{i * i}"},
                ]
            row["messages"] = json.dumps(turns)
        row["position"] = i
        out.append(row)
    return out


def _dirty(table: pa.Table) -> pa.Table:
    """``table`` with bytes under its null slots (DuckDB's chunks may hold anything there;
    pyarrow's builders zero them)."""
    columns = []
    for col in table.columns:
        arr = col.combine_chunks()
        if arr.null_count and arr.type in (pa.int64(), pa.float64(), pa.string()):
            filler = "garbage" if arr.type == pa.string() else 12345
            dense = pc.fill_null(arr, pa.scalar(filler, arr.type))
            arr = pa.Array.from_buffers(
                arr.type, len(arr), [arr.buffers()[0], *dense.buffers()[1:]], arr.null_count
            )
        columns.append(arr)
    return pa.table(columns, schema=table.schema)


def _chunks(
    kind: str, sizes: tuple[int, ...], *, sliced: bool = False, dirty: bool = False
) -> Iterator[pa.Table]:
    """The rows in chunks of ``sizes``: tables of their own, or slices of one table."""
    records, schema = _records(kind, sum(sizes)), _schema(kind)
    whole = pa.Table.from_pylist(records, schema=schema)
    start = 0
    for size in sizes:
        if sliced:
            chunk = whole.slice(start, size)
        else:
            chunk = pa.Table.from_pylist(records[start : start + size], schema=schema)
        yield _dirty(chunk) if dirty else chunk
        start += size


def _export(
    out: Path, kind: str, layout: str, container: str, sizes: tuple[int, ...] = (7, 3), **kw: Any
) -> Written:
    schema = layout_schema(_schema(kind), layout, kind=kind)
    with ExportWriter(out, container, schema) as writer:
        for chunk in _chunks(kind, sizes, **kw):
            writer.write(to_layout(chunk, layout, kind=kind, data_source="demo"))
    assert writer.result is not None
    return writer.result


def _data_file(out: Path, container: str) -> Path:
    return out / "data-00000-of-00001.arrow" if container == "hf" else out


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (hidden ones too) with a file's bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


# --- what each layout should hold, written out plainly ------------------------------------------
def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _prompt(row: dict[str, Any], kind: str) -> list[dict[str, str]]:
    if kind != "chats":
        return _user(row["prompt"])
    turns = json.loads(row["messages"])
    last_user = max(i for i, t in enumerate(turns) if t["role"] == "user")
    return turns[: last_user + 1]


def _expected(kind: str, layout: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in _records(kind):
        beside = {k: v for k, v in r.items() if k not in (*INTERNAL, *RESPONSES)}
        if layout == "rows":
            row = {k: v for k, v in r.items() if k not in INTERNAL}
            if kind == "chats":
                row["messages"] = json.loads(row["messages"])
            out.append(row)
        elif layout == "verl":
            # the fixed keys, then every label, score, tag and extra field (what a reward
            # function may need: reasoning-gym's task and metadata)
            info = {k: r[k] for k in ("id", "cluster", "batch")}
            info |= {k: v for k, v in r.items() if k not in (*info, *INTERNAL, *RESPONSES)}
            info = {k: v for k, v in info.items() if k not in ("prompt", "answer")}
            out.append(
                {
                    "data_source": "demo",
                    "prompt": _prompt(r, kind),
                    "ability": r["task"] or "general",
                    "reward_model": {"style": "rule", "ground_truth": r["answer"]},
                    "extra_info": {"index": r["position"], **info},
                }
            )
        elif layout == "trl-prompt":
            out.append({"prompt": _prompt(r, kind), **beside})
        elif layout == "trl-messages":
            out.append({"messages": json.loads(r["messages"]), **beside})
        else:  # trl-preference: one row per (chosen, rejected) pair, in order
            for j, rejected in enumerate(r["rejected"]):
                pair = {
                    "prompt": _user(r["prompt"]),
                    "chosen": _assistant(r["chosen"]),
                    "rejected": _assistant(rejected),
                    "rejected_idx": j,
                }
                out.append({**pair, **beside})
    return out


# --- every layout in every container, read back -------------------------------------------------
@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize(("kind", "layout"), CASES)
def test_layout_reads_back_with_datasets(tmp_path, kind, layout, container):
    out = tmp_path / f"train{SUFFIX[container]}"
    written = _export(out, kind, layout, container)
    expected = _expected(kind, layout)
    ds = load_written(out, container, tmp_path / "cache")
    assert ds.column_names == list(expected[0])
    assert ds.to_list() == expected
    assert written.rows == len(expected) and written.path == out
    data = _data_file(out, container)
    assert written.sha256 == hashlib.sha256(data.read_bytes()).hexdigest()
    # ROW_GROUP rows per row group / record batch, however the chunks came
    full, rest = divmod(len(expected), GROUP)
    groups = [GROUP] * full + ([rest] if rest else [])
    if container == "parquet":
        meta = pq.ParquetFile(out).metadata
        assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == groups
    if container == "hf":
        assert {p.name for p in out.iterdir()} == HF_FILES
        with ipc.open_stream(data) as reader:
            assert [b.num_rows for b in reader] == groups
        state = json.loads((out / "state.json").read_text())
        assert state["_fingerprint"] == written.sha256[:16]
    if container == "jsonl":
        assert len(data.read_text(encoding="utf-8").splitlines()) == len(expected)


def test_layouts_spelled_out():
    """A few rows by hand, so the expectations above are not only the code's mirror."""
    prefs = to_layout(next(_chunks("preferences", (3,))), "trl-preference", kind="preferences")
    rows = prefs.to_pylist()
    # rows 0, 1, 2 have 1, 2, 3 rejected
    assert [(r["id"], r["rejected_idx"]) for r in rows] == [
        ("ex-00", 0),
        ("ex-01", 0),
        ("ex-01", 1),
        ("ex-02", 0),
        ("ex-02", 1),
        ("ex-02", 2),
    ]
    assert rows[2]["rejected"] == [{"role": "assistant", "content": "bad 1.1"}]
    assert rows[2]["chosen"] == [{"role": "assistant", "content": "good 1"}]
    assert rows[2]["prompt"] == [{"role": "user", "content": "What is 1 + 1? (é)"}]
    assert {"answer", "task", "cluster"} <= set(prefs.column_names)
    assert not {"idx", "position"} & set(prefs.column_names)

    chats = next(_chunks("chats", (2,)))
    prompts = to_layout(chats, "trl-prompt", kind="chats").column("prompt").to_pylist()
    assert [len(p) for p in prompts] == [1, 3]  # 2 turns -> 1, 4 turns -> up to the 2nd user
    assert prompts[1][-1] == {"role": "user", "content": "And times 1?"}
    verl = to_layout(chats, "verl", kind="chats", data_source="d").column("prompt").to_pylist()
    assert verl == prompts
    messages = to_layout(chats, "trl-messages", kind="chats").column("messages").to_pylist()
    assert [len(m) for m in messages] == [2, 4]

    plain = to_layout(next(_chunks("prompts", (N,))), "verl", kind="prompts", data_source="d")
    assert plain.column("ability").to_pylist()[6] == "general"  # task is null there
    info = plain.column("extra_info").to_pylist()
    assert [i["index"] for i in info] == list(range(N))  # the position, not idx
    assert info[2]["cluster"] is None and info[3]["cluster"] == 0


# --- the same rows give the same bytes ----------------------------------------------------------
CHUNKINGS = [  # sizes, options
    ((N,), {}),
    ((7, 3), {}),
    ((2, 5, 3), {"sliced": True}),
    ((1,) * N, {"sliced": True}),
    ((3, 7), {"dirty": True}),
]


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize(("kind", "layout"), CASES)
def test_same_rows_same_bytes_however_chunked(tmp_path, kind, layout, container):
    outputs = []
    for n, (sizes, options) in enumerate(CHUNKINGS):
        out = tmp_path / str(n) / f"train{SUFFIX[container]}"
        written = _export(out, kind, layout, container, sizes, **options)
        files = _snapshot(out) if container == "hf" else {"": out.read_bytes()}
        outputs.append((written.rows, written.sha256, files))
    assert all(o == outputs[0] for o in outputs[1:])


# --- atomic writes ------------------------------------------------------------------------------
class _Boom(Exception):
    pass


def _fail_inside(out: Path, container: str) -> bool:
    """Raise inside the ``with ExportWriter`` block after some rows went out; True if the writer
    kept no result."""
    schema = layout_schema(_schema("prompts"), "verl", kind="prompts")
    writer = ExportWriter(out, container, schema)
    try:
        with writer:
            for chunk in _chunks("prompts", (7, 3)):
                writer.write(to_layout(chunk, "verl", kind="prompts"))
            raise _Boom
    except _Boom:
        pass
    return writer.result is None


def _existing(out: Path, container: str) -> None:
    """An earlier output at ``out``: for hf, a previous export of ours (the only folder an hf
    export replaces)."""
    if container == "hf":
        _export(out, "prompts", "rows", container, sizes=(2,))
    else:
        out.write_bytes(b"old bytes\n")


@pytest.mark.parametrize("exists", [False, True])
@pytest.mark.parametrize("container", CONTAINERS)
def test_an_error_inside_leaves_no_temp_and_the_old_output(
    tmp_path, monkeypatch, container, exists
):
    # an unclosed writer's complaint at collection is test_a_failed_parquet_write_closes_its_writer's
    monkeypatch.setattr(sys, "unraisablehook", lambda _: None)
    out = tmp_path / f"train{SUFFIX[container]}"
    if exists:
        _existing(out, container)
    before = _snapshot(tmp_path)
    assert _fail_inside(out, container)
    gc.collect()
    assert _snapshot(tmp_path) == before


def test_a_failed_parquet_write_closes_its_writer(tmp_path, monkeypatch):
    caught: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", caught.append)
    assert _fail_inside(tmp_path / "train.parquet", "parquet")
    gc.collect()
    assert [str(u.exc_value) for u in caught] == []


@pytest.mark.parametrize("container", CONTAINERS)
def test_an_existing_output_is_replaced(tmp_path, container):
    out = tmp_path / f"train{SUFFIX[container]}"
    _existing(out, container)
    written = _export(out, "prompts", "trl-prompt", container)
    assert {p.name for p in tmp_path.iterdir()} == {out.name}  # nothing set aside is left
    if container == "hf":
        assert {p.name for p in out.iterdir()} == HF_FILES  # the old folder's files are gone
    ds = load_written(out, container, tmp_path.parent / f"{tmp_path.name}-cache")
    assert ds.to_list() == _expected("prompts", "trl-prompt")
    assert written.sha256 == hashlib.sha256(_data_file(out, container).read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "files",
    [
        {"keep.txt": b"old"},  # someone's folder
        {"data-00000-of-00001.arrow": b"old data", "keep.txt": b"old"},
        # datasets' own save_to_disk: a random fingerprint, not the sha256 of its data
        {
            "data-00000-of-00001.arrow": b"old data",
            "dataset_info.json": b"{}",
            "state.json": b'{"_fingerprint": "0123456789abcdef"}',
        },
    ],
)
def test_an_hf_export_never_replaces_a_folder_it_did_not_write(tmp_path, files):
    out = tmp_path / "train"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    before = _snapshot(tmp_path)
    with pytest.raises(StudioError, match="an hf export replaces the whole folder") as err:
        _export(out, "prompts", "rows", "hf")
    assert "\n" not in str(err.value)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("container", ["jsonl", "parquet"])
def test_a_file_onto_a_folder_is_refused_and_the_folder_kept(tmp_path, container):
    out = tmp_path / f"train{SUFFIX[container]}"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    before = _snapshot(tmp_path)
    with pytest.raises(StudioError, match="is a folder"):
        _export(out, "prompts", "rows", container)
    assert _snapshot(tmp_path) == before


# --- errors: kinds, layouts, containers ---------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "layout", "needs"),
    [
        ("prompts", "trl-preference", "preferences"),
        ("chats", "trl-preference", "preferences"),
        ("preferences", "trl-messages", "chats or responses"),
        ("prompts", "trl-messages", "chats or responses"),
    ],
)
def test_a_layout_for_another_kind_names_the_kind_it_needs(kind, layout, needs):
    chunk = next(_chunks(kind, (2,)))
    with pytest.raises(StudioError, match=f"needs a dataset of kind {needs}; this one is {kind}"):
        to_layout(chunk, layout, kind=kind)
    with pytest.raises(StudioError, match=needs):
        layout_schema(chunk.schema, layout, kind=kind)


def test_unknown_layout_and_container_are_refused(tmp_path):
    with pytest.raises(StudioError, match="unknown layout 'csv'"):
        to_layout(next(_chunks("prompts", (1,))), "csv", kind="prompts")
    with pytest.raises(StudioError, match="unknown container 'csv'"):
        ExportWriter(tmp_path / "x.csv", "csv", _schema("prompts"))
    with pytest.raises(StudioError, match="unknown container 'csv'"):
        container_for(tmp_path / "x.jsonl", "csv")


@pytest.mark.parametrize(
    ("name", "explicit", "container"),
    [
        ("train.jsonl", None, "jsonl"),
        ("train.json", None, "jsonl"),
        ("TRAIN.JSONL", None, "jsonl"),
        ("train.parquet", None, "parquet"),
        ("train", None, "hf"),
        ("v1.2/train", None, "hf"),
        ("train.jsonl", "parquet", "parquet"),
        ("train.parquet", "hf", "hf"),
        ("train.weird", "jsonl", "jsonl"),
    ],
)
def test_container_for(tmp_path, name, explicit, container):
    assert container_for(tmp_path / name, explicit) == container


def test_container_for_an_unknown_suffix_names_the_path(tmp_path):
    out = tmp_path / "train.csv"
    with pytest.raises(StudioError, match=r"suffix '\.csv'") as info:
        container_for(out, None)
    assert str(out) in str(info.value)


# --- zero rows ----------------------------------------------------------------------------------
@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize(("kind", "layout"), CASES)
def test_an_empty_export_is_a_valid_empty_file(tmp_path, kind, layout, container):
    out = tmp_path / f"empty{SUFFIX[container]}"
    schema = layout_schema(_schema(kind), layout, kind=kind)
    with ExportWriter(out, container, schema) as writer:  # as export_chunks: one empty chunk
        writer.write(to_layout(_schema(kind).empty_table(), layout, kind=kind))
    written = writer.result
    assert written is not None and written.rows == 0
    data = _data_file(out, container)
    assert written.sha256 == hashlib.sha256(data.read_bytes()).hexdigest()
    if container == "jsonl":  # zero lines: JSON Lines has no way to carry the columns
        assert data.read_bytes() == b""
    elif container == "parquet":  # datasets refuses a split with no rows; pyarrow reads it
        table = pq.read_table(out)
        assert table.num_rows == 0 and table.schema.names == schema.names
        assert table.schema.equals(schema)
    else:
        ds = load_written(out, "hf", tmp_path / "cache")
        assert len(ds) == 0 and ds.column_names == schema.names
        assert ds.features == datasets.Features.from_arrow_schema(schema)
