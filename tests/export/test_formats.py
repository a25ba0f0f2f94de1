"""core.export's layouts and writer at the sizes the export streams (pages, many row groups), its JSON Lines encoder,
the chats' messages parser, hf metadata and bytes under nulls, and the checks on column names.
``export_rows`` builds export-row chunks as the store streams them (bench/ uses it too)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import core.export.writer
from core.errors import StudioError
from core.export import (
    CONTAINERS,
    ExportWriter,
    Written,
    jsonl_bytes,
    layout_schema,
    to_layout,
)
from tests.conftest import load_written


def _masked(values: list, mask: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.array(values, type_, mask=mask)


def export_rows(
    n: int, *, start: int = 0, kind: str = "prompts", prompt_chars: int = 24
) -> pa.Table:
    """``n`` export rows (row ``start`` on) as the store streams them: id, idx, prompt, answer,
    cluster, dup_group, is_duplicate, a score, a label, a tag, an extra-only field (JSON text),
    ``chosen``/``rejected`` (preferences) or ``messages`` (chats, JSON text), position, batch.
    Every nullable column has nulls; text has quotes, non-ASCII and a newline."""
    i = np.arange(start, start + n, dtype=np.int64)
    filler = 'Was ist "x" + é\n… ' * (prompt_chars // 16 + 1)
    prompts = [f"q{k} {filler}"[:prompt_chars] for k in i.tolist()]
    cols: dict[str, pa.Array] = {
        "id": pa.array([f"ex-{k:07d}" for k in i.tolist()], pa.string()),
        "idx": pa.array((i * 7) % 1_000_003, pa.int64()),
        "prompt": pa.array(prompts, pa.string()),
        "answer": _masked([str(k % 10) for k in i.tolist()], i % 7 == 3, pa.string()),
        "cluster": _masked(list(i % 5), i % 11 == 0, pa.int64()),
        "dup_group": pa.array(i // 2, pa.int64()),
        "is_duplicate": pa.array(i % 2, pa.int64()),
        "difficulty_proxy": pa.array(np.sin(i.astype(np.float64)), pa.float64()),
        "difficulty": _masked(list((i % 13) / 13.0), i % 17 == 0, pa.float64()),
        "task": _masked(
            [("add", "mul", "sub")[k % 3] for k in i.tolist()], i % 5 == 4, pa.string()
        ),
        "sources": pa.array([json.dumps(["a", f"s{k % 3}"]) for k in i.tolist()], pa.string()),
    }
    if kind == "preferences":
        cols["chosen"] = pa.array([f"The answer is {k % 10}." for k in i.tolist()], pa.string())
        cols["rejected"] = pa.array(
            [[f"No: {k % 10 + r + 1}" for r in range(1 + k % 3)] for k in i.tolist()],
            pa.list_(pa.string()),
        )
    if kind == "chats":
        chats = []
        for k, p in zip(i.tolist(), prompts, strict=True):
            turns = [{"role": "user", "content": f"hi {k}"}, {"role": "assistant", "content": "yo"}]
            if k % 2:
                turns = [{"role": "system", "content": "Be brief."}, *turns]
                turns += [{"role": "user", "content": p}, {"role": "assistant", "content": "ok"}]
            chats.append(json.dumps(turns, ensure_ascii=False))
        cols["messages"] = pa.array(chats, pa.string())
    cols["position"] = pa.array(i, pa.int64())
    cols["batch"] = pa.array(i // 4, pa.int64())
    return pa.table(cols)


# Every layout x container read back on a handful of rows, chunkings, atomicity, wrong kinds and
# empty exports: tests/test_layouts.py. Here: what shows only at size (pages, many row groups),
# the JSON encoder, the messages parser, hf metadata and bytes under nulls in nested columns.
CASES = [
    ("prompts", "rows"),
    ("chats", "rows"),
    ("preferences", "rows"),
    ("prompts", "verl"),
    ("chats", "verl"),
    ("prompts", "trl-prompt"),
    ("chats", "trl-prompt"),
    ("preferences", "trl-preference"),
    ("chats", "trl-messages"),
]
SUFFIX = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}
BIG = 6000  # rows: 500-character prompts fill several 1 MB Parquet pages per row group


def _write(out: Path, container: str, chunks: list[pa.Table], layout: str, kind: str) -> Written:
    schema = layout_schema(chunks[0].schema, layout, kind=kind)
    with ExportWriter(out, container, schema) as writer:
        for chunk in chunks:
            writer.write(to_layout(chunk, layout, kind=kind, data_source="bench"))
    assert writer.result is not None
    return writer.result


def _split(kind: str, sizes: tuple[int, ...]) -> list[pa.Table]:
    starts = np.cumsum((0, *sizes[:-1])).tolist()
    return [
        export_rows(n, start=s, kind=kind, prompt_chars=500)
        for s, n in zip(starts, sizes, strict=True)
    ]


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize(("kind", "layout"), CASES)
def test_thousands_of_rows_same_bytes_however_chunked(
    tmp_path, monkeypatch, kind, layout, container
):
    # Parquet cut its pages where the input's chunks ended before a row group was written from
    # one contiguous table; that shows only once a column fills more than a page
    monkeypatch.setattr(core.export.writer, "ROW_GROUP", BIG // 2)
    hashes = set()
    for n, sizes in enumerate([(BIG,), (1000,) * 6, (7, BIG - 7), (1500, 1500, 3000)]):
        out = tmp_path / f"{n}{SUFFIX[container]}"
        written = _write(out, container, _split(kind, sizes), layout, kind)
        hashes.add(written.sha256)
    assert len(hashes) == 1
    # ... and datasets reads back what the layout holds
    whole = to_layout(
        export_rows(BIG, kind=kind, prompt_chars=500), layout, kind=kind, data_source="bench"
    )
    ds = load_written(out, container, tmp_path / "cache")
    assert ds.column_names == whole.column_names
    assert ds.to_list() == whole.to_pylist()
    if container == "parquet":
        meta = pq.ParquetFile(out).metadata
        groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert groups[:-1] == [BIG // 2] * (len(groups) - 1) and sum(groups) == whole.num_rows


# --- JSON Lines ---------------------------------------------------------------------------------
TRICKY = [
    "".join(chr(c) for c in range(32)),  # every control character
    'back\\slash "quoted" \\n (not a newline) / é 漢字 🙂 \u2028 \x7f',
    "",
    None,
]


def test_jsonl_writes_what_json_dumps_writes():
    table = pa.table(
        {
            "text": pa.array(TRICKY, pa.string()),
            "n": pa.array([0, -(2**63), 2**63 - 1, None], pa.int64()),
            "flag": pa.array([True, False, None, True]),
            "tags": pa.array([["a", None], [], None, ['"x"']], pa.list_(pa.string())),
            "turns": pa.array(
                [[{"role": "user", "content": TRICKY[1]}], [], None, [{"role": None}]],
                pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
            ),
            "info": pa.array(
                [{"id": "a", "k": 1}, None, {"id": None, "k": None}, {"id": "é", "k": 2}],
                pa.struct([("id", pa.string()), ("k", pa.int64())]),
            ),
            "nothing": pa.nulls(4),
        }
    )
    lines = jsonl_bytes(table).to_pybytes().decode("utf-8").split("\n")
    assert lines[-1] == ""  # every line ends with a newline
    assert lines[:-1] == [json.dumps(r, ensure_ascii=False) for r in table.to_pylist()]
    # sliced and chunked input writes the same text
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1, 3)])
    assert jsonl_bytes(chunked.slice(1)) == jsonl_bytes(table.slice(1))


def test_jsonl_floats_read_back_as_floats_and_non_finite_as_null(tmp_path):
    values = [1.0, -0.0, 0.1, 1 / 3, 1e300, 5e-324, 2.5e-5, 1e16, math.nan, math.inf, None]
    table = pa.table({"x": pa.array(values, pa.float64()), "y": pa.array(values, pa.float32())})
    rows = [json.loads(line) for line in jsonl_bytes(table).to_pybytes().splitlines()]
    for row, value in zip(rows, values, strict=True):
        if value is None or not math.isfinite(value):
            assert row == {"x": None, "y": None}
            continue
        assert isinstance(row["x"], float) and row["x"] == value
        with np.errstate(over="ignore"):
            single = np.float32(value)  # 1e300 overflows to inf in float32: null
        if math.isfinite(single):
            assert isinstance(row["y"], float) and np.float32(row["y"]) == single
        else:
            assert row["y"] is None
    # datasets' JSON reader takes the whole file as floats
    out = tmp_path / "f.jsonl"
    out.write_bytes(jsonl_bytes(table).to_pybytes())
    ds = load_written(out, "jsonl", tmp_path / "cache")
    assert ds.features["x"] == datasets.Value("float64")
    assert ds["x"][:3] == [1.0, -0.0, 0.1]


def test_control_characters_read_back_with_datasets(tmp_path):
    chunk = export_rows(4, kind="prompts")
    chunk = chunk.set_column(2, "prompt", pa.array(TRICKY, pa.string()))
    out = tmp_path / "t.jsonl"
    _write(out, "jsonl", [chunk], "trl-prompt", "prompts")
    ds = load_written(out, "jsonl", tmp_path / "cache")
    assert [p and p[0]["content"] for p in ds["prompt"]] == TRICKY


# --- chats' messages ----------------------------------------------------------------------------
def _chat_chunk(texts: list[str | None]) -> pa.Table:
    chunk = export_rows(len(texts), kind="chats")
    return chunk.set_column(
        chunk.schema.get_field_index("messages"), "messages", pa.array(texts, pa.string())
    )


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


PLAIN = [
    json.dumps(_turns(("system", "s"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"))),
    json.dumps(_turns(("user", "u"), ("assistant", "a"))),
    json.dumps(_turns(("assistant", "no user at all"))),
    json.dumps([{"role": "user", "content": "hi", "name": "bob"}]),  # extra keys are dropped
    None,  # no turns
]


@pytest.mark.parametrize(
    "odd",
    [
        None,  # Arrow's JSON reader takes every row
        json.dumps(_turns(("user", "pretty"), ("assistant", "printed")), indent=2),
        json.dumps([{"role": "user", "content": 42}]),  # not text: Python's path, as str
    ],
)
def test_messages_and_prompts_of_chats(odd):
    texts = [*PLAIN, *([odd] if odd else [])]
    chunk = _chat_chunk(texts)
    messages = to_layout(chunk, "trl-messages", kind="chats").column("messages").to_pylist()
    expected = [
        [{"role": str(t["role"]), "content": str(t["content"])} for t in json.loads(x or "[]")]
        for x in texts
    ]
    assert messages == expected
    prompts = to_layout(chunk, "trl-prompt", kind="chats").column("prompt").to_pylist()
    # up to the last user turn; a chat with no user turn is kept whole
    assert prompts[:5] == [expected[0], expected[1][:1], expected[2], expected[3], []]
    verl = to_layout(chunk, "verl", kind="chats", data_source="d").column("prompt").to_pylist()
    assert verl == prompts


# --- preference pairs ---------------------------------------------------------------------------
def test_preference_pairs_in_order_and_none_for_no_rejected():
    chunk = export_rows(5, kind="preferences")
    rejected = [["r0"], None, [], ["r3a", "r3b", "r3c"], ["r4a", "r4b"]]
    chunk = chunk.set_column(
        chunk.schema.get_field_index("rejected"),
        "rejected",
        pa.array(rejected, pa.list_(pa.string())),
    )
    pairs = to_layout(chunk, "trl-preference", kind="preferences").to_pylist()
    ids = chunk.column("id").to_pylist()
    assert [(p["id"], p["rejected_idx"], p["rejected"][0]["content"]) for p in pairs] == [
        (ids[0], 0, "r0"),
        (ids[3], 0, "r3a"),
        (ids[3], 1, "r3b"),
        (ids[3], 2, "r3c"),
        (ids[4], 0, "r4a"),
        (ids[4], 1, "r4b"),
    ]
    assert all(p["rejected"][0]["role"] == "assistant" for p in pairs)


# --- hf folder ----------------------------------------------------------------------------------
def test_hf_metadata_is_what_save_to_disk_writes(tmp_path):
    table = to_layout(export_rows(20, kind="prompts"), "verl", kind="prompts", data_source="bench")
    theirs = tmp_path / "theirs"
    datasets.Dataset(table).save_to_disk(str(theirs))
    ours = tmp_path / "ours"
    written = _write(ours, "hf", [export_rows(20, kind="prompts")], "verl", "prompts")
    assert (ours / "dataset_info.json").read_bytes() == (theirs / "dataset_info.json").read_bytes()
    state = json.loads((ours / "state.json").read_text())
    assert state == {
        **json.loads((theirs / "state.json").read_text()),
        "_fingerprint": state["_fingerprint"],
    }
    assert state["_fingerprint"] == written.sha256[:16]
    data = "data-00000-of-00001.arrow"
    with ipc.open_stream(ours / data) as a, ipc.open_stream(theirs / data) as b:
        assert a.schema.equals(b.schema, check_metadata=True)
        assert a.read_all().equals(b.read_all())
    ds = datasets.load_from_disk(str(ours))
    assert ds.to_list() == table.to_pylist()
    # load_from_disk derives the dataset's fingerprint from the stored one (TRL keys caches on
    # it): the same rows, chunked otherwise, load with the same fingerprint
    again = tmp_path / "again"
    chunks = [export_rows(7, kind="prompts"), export_rows(13, start=7, kind="prompts")]
    assert _write(again, "hf", chunks, "verl", "prompts").sha256 == written.sha256
    assert datasets.load_from_disk(str(again))._fingerprint == ds._fingerprint


def _nested(garbage: str, number: int, bits: int) -> pa.Table:
    """The same values over different bytes: a struct's child and a null list's items hold
    ``garbage``/``number`` under null slots; a boolean bitmap's unused bits are ``bits``."""
    role = pa.array(["user", garbage, "user"])
    k = pa.array([1, number, 3], pa.int64())
    struct_validity = pa.py_buffer(bytes([0b101]))
    info = pa.Array.from_buffers(
        pa.struct([("role", pa.string()), ("k", pa.int64())]),
        3,
        [struct_validity],
        1,
        children=[role, k],
    )
    items = pa.array(["a", garbage, "c"])
    offsets = pa.py_buffer(np.array([0, 1, 2, 3], np.int32).tobytes())
    lists = pa.Array.from_buffers(
        pa.list_(pa.string()), 3, [pa.py_buffer(bytes([0b101])), offsets], 1, children=[items]
    )
    flags = pa.Array.from_buffers(pa.bool_(), 3, [None, pa.py_buffer(bytes([0b011 | bits]))], 0)
    return pa.table({"info": info, "lists": lists, "flags": flags})


def test_hf_bytes_do_not_depend_on_memory_under_nested_nulls(tmp_path):
    a, b = _nested("garbage", 12345, 0), _nested("other", -1, 0b11111000)
    assert a.to_pylist() == b.to_pylist()
    hashes = set()
    for n, table in enumerate((a, b)):
        with ExportWriter(tmp_path / str(n), "hf", table.schema) as writer:
            writer.write(table)
        assert writer.result is not None
        hashes.add(writer.result.sha256)
    assert len(hashes) == 1
    assert datasets.load_from_disk(str(tmp_path / "0")).to_list() == a.to_pylist()


# --- column names -------------------------------------------------------------------------------
def test_verl_index_is_the_position_else_the_ingest_index():
    chunk = export_rows(3, start=10, kind="prompts")
    info = to_layout(chunk, "verl", kind="prompts").column("extra_info").to_pylist()
    assert [i["index"] for i in info] == chunk.column("position").to_pylist()
    alone = chunk.drop_columns(["position"])
    info = to_layout(alone, "verl", kind="prompts").column("extra_info").to_pylist()
    assert [i["index"] for i in info] == chunk.column("idx").to_pylist()


@pytest.mark.parametrize(
    ("kind", "layout", "name", "type_"),
    [
        ("prompts", "trl-prompt", "completions", pa.string()),  # GRPO's reward-function argument
        ("prompts", "trl-prompt", "trainer_state", pa.float64()),
        ("preferences", "trl-preference", "tools", pa.string()),  # DPO's chat template tools
        ("chats", "trl-messages", "completion", pa.string()),  # SFT: prompt-completion form
        ("prompts", "verl", "index", pa.float64()),  # extra_info.index is the position
    ],
)
def test_a_column_named_like_a_trainer_field_is_refused(kind, layout, name, type_):
    chunk = export_rows(2, kind=kind)
    chunk = chunk.append_column(name, pa.nulls(2, type_))
    with pytest.raises(StudioError, match=f"'{name}'") as info:
        to_layout(chunk, layout, kind=kind)
    assert "\n" not in str(info.value)
    with pytest.raises(StudioError, match=f"'{name}'"):
        layout_schema(chunk.schema, layout, kind=kind)


def test_export_rows_helper_is_the_store_shape():
    chunk = export_rows(3, start=4, kind="preferences")
    assert chunk.column_names[:3] == ["id", "idx", "prompt"]
    assert chunk.column_names[-2:] == ["position", "batch"]
    assert chunk.column("position").to_pylist() == [4, 5, 6]
    assert chunk.column("rejected").to_pylist()[0] == ["No: 5", "No: 6"]
    assert (
        hashlib.sha256(jsonl_bytes(chunk).to_pybytes()).hexdigest()
        == hashlib.sha256(
            jsonl_bytes(export_rows(3, start=4, kind="preferences")).to_pybytes()
        ).hexdigest()
    )
