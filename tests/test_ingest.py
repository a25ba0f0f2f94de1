"""core.ingest: every format, ids, mapping, labels/tags, the three kinds, and each bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import StudioError
from core.ingest import (
    EXAMPLES_SCHEMA,
    LABELS_SCHEMA,
    RESPONSES_SCHEMA,
    IngestTables,
    read_dataset,
)

RECORDS: list[dict[str, Any]] = [
    {"prompt": "What is 2+2?", "answer": "4", "difficulty": 1, "task": "add"},
    {"prompt": "What is 3*7?", "answer": "21", "difficulty": 2, "task": "mul"},
    {"prompt": "What is 9-4?", "answer": "5", "difficulty": 1, "task": "sub"},
]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write ``records`` in the format ``path``'s name asks for (a folder: save_to_disk)."""
    if path.suffix in (".jsonl", ".ndjson"):
        return write_jsonl(path, records)
    if path.suffix == ".json":
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    elif path.suffix == ".csv":
        write_csv(path, records)
    else:
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


def labels_of(t: IngestTables) -> dict[tuple[str, str], float]:
    return {(r["example_id"], r["name"]): r["value"] for r in t.labels.to_pylist()}


def error_of(path: Path, **kw: Any) -> str:
    kw.setdefault("kind", "prompts")
    with pytest.raises(StudioError) as e:
        read_dataset(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(path.name)
    return msg


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d.jsonl", "d.ndjson", "d.json", "d.parquet", "d.csv", "d_hf"])
def test_every_format_reads_the_same(tmp_path: Path, name: str) -> None:
    t = read_dataset(write_records(tmp_path / name, RECORDS), kind="prompts")
    assert t.n == 3 and t.kind == "prompts" and t.source.endswith(name)
    assert t.examples.schema.equals(EXAMPLES_SCHEMA)
    assert t.labels.schema.equals(LABELS_SCHEMA)
    assert t.responses.schema.equals(RESPONSES_SCHEMA) and t.responses.num_rows == 0
    ex = t.examples.to_pylist()
    assert [r["prompt"] for r in ex] == [r["prompt"] for r in RECORDS]
    assert [r["text"] for r in ex] == [r["prompt"] for r in RECORDS]
    assert [r["answer"] for r in ex] == ["4", "21", "5"]
    assert [r["idx"] for r in ex] == [0, 1, 2]
    assert [json.loads(r["tags"]) for r in ex] == [{"task": r["task"]} for r in RECORDS]
    values = labels_of(t)
    assert [values[(r["id"], "difficulty")] for r in ex] == [1.0, 2.0, 1.0]
    # extra keeps the non-canonical fields (CSV: as the text that was in the file)
    assert json.loads(ex[1]["extra"])["task"] == "mul"
    assert str(json.loads(ex[1]["extra"])["difficulty"]) == "2"


def test_json_object_with_data_key(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": 1, "data": RECORDS}), encoding="utf-8")
    assert read_dataset(path, kind="prompts").n == 3


def test_dataset_dict_needs_one_split(tmp_path: Path) -> None:
    import datasets

    one = datasets.Dataset.from_list(RECORDS)
    datasets.DatasetDict({"train": one}).save_to_disk(str(tmp_path / "single"))
    assert read_dataset(tmp_path / "single", kind="prompts").n == 3

    datasets.DatasetDict({"train": one, "test": one}).save_to_disk(str(tmp_path / "two"))
    msg = error_of(tmp_path / "two")
    assert "train" in msg and "test" in msg and "which" in msg
    assert read_dataset(tmp_path / "two" / "test", kind="prompts").n == 3


@pytest.mark.parametrize(
    ("file", "body", "needle"),
    [
        ("state.json", "{not json", "Expecting property name"),
        ("state.json", "{}", "its metadata is not what datasets writes (KeyError"),
        ("dataset_info.json", "[1]", "its metadata is not what datasets writes (AttributeError"),
    ],
)
def test_a_damaged_datasets_folder_is_one_line(
    tmp_path: Path, file: str, body: str, needle: str
) -> None:
    path = write_records(tmp_path / "d_hf", RECORDS)
    (path / file).write_text(body, encoding="utf-8")
    msg = error_of(path)
    assert msg.startswith("d_hf: cannot load datasets folder: ") and needle in msg


def test_blank_lines_crlf_and_bom_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    body = "\r\n".join(json.dumps(r) for r in RECORDS)
    path.write_bytes(("\ufeff" + body + "\r\n\r\n").encode())
    assert read_dataset(path, kind="prompts").n == 3


def test_csv_quoted_newlines_and_mixed_text_column(tmp_path: Path) -> None:
    rows = [
        {"prompt": "line one\nline two", "answer": "1", "zip": "02139", "score": "0.5"},
        {"prompt": "second", "answer": "", "zip": "SW1A", "score": ""},
    ]
    t = read_dataset(write_csv(tmp_path / "d.csv", rows), kind="prompts")
    ex = t.examples.to_pylist()
    assert ex[0]["prompt"] == "line one\nline two"
    assert ex[1]["answer"] is None  # empty cell -> null
    assert json.loads(ex[0]["tags"]) == {"zip": "02139"}  # numbers and text -> a tag
    assert [(r["name"], r["value"]) for r in t.labels.to_pylist()] == [("score", 0.5)]


# --- ids -------------------------------------------------------------------------------------


def test_file_ids_are_kept_as_strings(tmp_path: Path) -> None:
    recs = [dict(r, id=i * 10) for i, r in enumerate(RECORDS)]
    t = read_dataset(write_jsonl(tmp_path / "d.jsonl", recs), kind="prompts")
    assert t.examples.column("id").to_pylist() == ["0", "10", "20"]
    assert "id" not in json.loads(t.examples.column("extra")[0].as_py())


def test_assigned_ids_are_stable_and_disambiguated(tmp_path: Path) -> None:
    recs = [*RECORDS, RECORDS[0], dict(RECORDS[0], difficulty=5)]
    a = read_dataset(write_jsonl(tmp_path / "a.jsonl", recs), kind="prompts")
    b = read_dataset(write_records(tmp_path / "b.parquet", recs), kind="prompts")
    ids = a.examples.column("id").to_pylist()
    assert ids == b.examples.column("id").to_pylist()  # same content, same ids, any format
    assert len(ids[0]) == 16 and all(c in "0123456789abcdef" for c in ids[0])
    assert ids[3] == ids[0] + "-2" and ids[4] == ids[0] + "-3"
    assert len(set(ids)) == 5
    shifted = read_dataset(write_jsonl(tmp_path / "c.jsonl", recs[1:]), kind="prompts")
    assert shifted.examples.column("id").to_pylist()[0] == ids[1]  # not position-based


# --- mapping ---------------------------------------------------------------------------------


def test_mapping_renames_fields_and_declares_labels(tmp_path: Path) -> None:
    recs = [
        {"question": "Q1?", "solution": "1", "level": 3, "src": "x"},
        {"question": "Q2?", "solution": "2", "level": 4, "src": "y"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    t = read_dataset(
        path, kind="prompts", mapping={"prompt": "question", "answer": "solution", "hard": "level"}
    )
    ex = t.examples.to_pylist()
    assert [r["prompt"] for r in ex] == ["Q1?", "Q2?"]
    assert [r["answer"] for r in ex] == ["1", "2"]
    assert sorted({r["name"] for r in t.labels.to_pylist()}) == ["hard"]
    assert json.loads(ex[0]["extra"]) == {"level": 3, "src": "x"}  # original names


def test_answer_aliases_are_not_guessed(tmp_path: Path) -> None:
    recs = [{"prompt": "Q?", "ground_truth": "7", "solution": "because"}]
    t = read_dataset(write_jsonl(tmp_path / "d.jsonl", recs), kind="prompts")
    assert t.examples.column("answer").to_pylist() == [None]
    assert json.loads(t.examples.column("tags")[0].as_py()) == {
        "ground_truth": "7",
        "solution": "because",
    }


@pytest.mark.parametrize(
    ("mapping", "needle"),
    [
        ({"prompt": "nope"}, "no column 'nope'"),
        ({"chosen": "task"}, "'chosen' is not a field of prompts"),
        ({"prompt": "task", "answer": "task"}, "names column 'task' twice"),
        ({"difficulty": "answer"}, "already has a column 'difficulty'"),
        ({"weight": "task"}, "line 1: field 'task' must be a number, got 'add'"),
    ],
)
def test_bad_mapping(tmp_path: Path, mapping: dict[str, str], needle: str) -> None:
    assert needle in error_of(write_jsonl(tmp_path / "d.jsonl", RECORDS), mapping=mapping)


def test_declared_label_in_csv_must_be_numeric(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a", "lvl": "1"},
        {"prompt": "b", "lvl": "2"},
        {"prompt": "c", "lvl": "hard"},
    ]
    path = write_csv(tmp_path / "d.csv", rows)
    assert json.loads(read_dataset(path, kind="prompts").examples["tags"][2].as_py()) == {
        "lvl": "hard"
    }
    msg = error_of(path, mapping={"difficulty": "lvl"})
    assert "line 4: field 'lvl' must be a number" in msg and "'hard'" in msg


# --- preferences and chats -------------------------------------------------------------------


def test_preferences_with_rejected_lists_of_different_sizes(tmp_path: Path) -> None:
    recs = [
        {"prompt": "Tell a story.", "chosen": "A", "rejected": ["B", "C", "D"], "genre": "sf"},
        {"prompt": "Another.", "chosen": "E", "rejected": "F", "margin": 0.5},
        {"prompt": "Third.", "chosen": "G", "rejected": ["H"]},
    ]
    t = read_dataset(write_jsonl(tmp_path / "p.jsonl", recs), kind="preferences")
    ids = t.examples.column("id").to_pylist()
    rs = t.responses.to_pylist()
    assert [(r["example_id"], r["response_idx"], r["role"], r["text"]) for r in rs] == [
        (ids[0], 0, "chosen", "A"),
        (ids[0], 1, "rejected", "B"),
        (ids[0], 2, "rejected", "C"),
        (ids[0], 3, "rejected", "D"),
        (ids[1], 0, "chosen", "E"),
        (ids[1], 1, "rejected", "F"),
        (ids[2], 0, "chosen", "G"),
        (ids[2], 1, "rejected", "H"),
    ]
    assert t.examples.column("text").to_pylist() == [r["prompt"] for r in recs]
    assert labels_of(t) == {(ids[1], "margin"): 0.5}
    # the same prompt with other responses is another example
    other = read_dataset(
        write_jsonl(tmp_path / "q.jsonl", [dict(recs[0], chosen="Z")]), kind="preferences"
    )
    assert other.examples.column("id")[0].as_py() != ids[0]


def test_preferences_from_parquet_and_csv_lists(tmp_path: Path) -> None:
    recs = [{"prompt": "P", "chosen": "A", "rejected": ["B", "C"]}]
    t = read_dataset(write_records(tmp_path / "p.parquet", recs), kind="preferences")
    assert t.responses.num_rows == 3
    path = write_csv(tmp_path / "p.csv", [{"prompt": "P", "chosen": "A", "rejected": '["B", "C"]'}])
    assert read_dataset(path, kind="preferences").responses.column("text").to_pylist() == [
        "A",
        "B",
        "C",
    ]


def test_chats_with_feedback(tmp_path: Path) -> None:
    recs = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Thanks"},
                {"role": "assistant", "content": None},
            ],
            "feedback": 4,
            "lang": "en",
        },
        {"messages": [{"role": "user", "content": "Why?"}], "feedback": None},
    ]
    t = read_dataset(write_jsonl(tmp_path / "c.jsonl", recs), kind="chats")
    ex = t.examples.to_pylist()
    assert (
        ex[0]["text"] == "system: Be brief.\nuser: Hi\nassistant: Hello!\nuser: Thanks\nassistant: "
    )
    assert [r["prompt"] for r in ex] == ["Thanks", "Why?"]
    assert [r["answer"] for r in ex] == [None, None]
    assert labels_of(t) == {(ex[0]["id"], "feedback"): 4.0}  # null feedback: no label row
    assert json.loads(ex[0]["tags"]) == {"lang": "en"}
    # the validated turns are kept in extra (a null content as ""), so export can rebuild the
    # conversation; ids hash the canonical fields only, as before extra held them
    assert json.loads(ex[0]["extra"]) == {
        "lang": "en",
        "messages": [{**t, "content": t["content"] or ""} for t in recs[0]["messages"]],
    }
    assert json.loads(ex[1]["extra"]) == {"messages": recs[1]["messages"]}
    assert [r["id"] for r in ex] == ["a7202a7fe584422b", "1ee601d4f31654f8"]
    parquet = read_dataset(write_records(tmp_path / "c.parquet", recs), kind="chats")
    assert parquet.examples.column("id").to_pylist() == [r["id"] for r in ex]
    assert parquet.examples.column("extra").to_pylist() == [r["extra"] for r in ex]


def test_chats_messages_as_json_text_in_csv(tmp_path: Path) -> None:
    msgs = json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    t = read_dataset(
        write_csv(tmp_path / "c.csv", [{"messages": msgs, "feedback": "2"}]), kind="chats"
    )
    assert t.examples.column("text").to_pylist() == ["user: Hi\nassistant: Yo"]
    assert t.labels.column("value").to_pylist() == [2.0]
    # extra holds the turns themselves, not the cell's JSON text
    assert json.loads(t.examples.column("extra")[0].as_py())["messages"] == json.loads(msgs)


# --- bad input: every message names the file, the line and the field ------------------------


def jsonl_lines(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"prompt": "ok", "difficulty": 1})


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (
            [GOOD, "", GOOD, '{"prompt": "x" "a": 1}'],
            "line 4: malformed JSON: Expecting ',' delimiter",
        ),
        ([GOOD, "[1, 2]"], "line 2: expected a JSON object, got list"),
        ([GOOD, GOOD, '{"answer": "3"}'], "line 3: missing required field 'prompt'"),
        ([GOOD, '{"prompt": null}'], "line 2: missing required field 'prompt'"),
        ([GOOD, '{"prompt": "   "}'], "line 2: field 'prompt' is empty"),
        ([GOOD, '{"prompt": 12}'], "line 2: field 'prompt' must be a string, got int"),
        (
            [GOOD, '{"prompt": "a", "answer": [1]}'],
            "line 2: field 'answer' must be a string or number",
        ),
        (
            [GOOD, GOOD, GOOD, GOOD, '{"prompt": "a", "difficulty": "hard"}'],
            "line 5: field 'difficulty' must be a number (as on line 1), got 'hard'",
        ),
        (
            ['{"prompt": "a", "difficulty": "hard"}', GOOD],
            "line 1: field 'difficulty' must be a number (as on line 2), got 'hard'",
        ),
        (
            [GOOD, '{"prompt": "a", "difficulty": NaN}'],
            "line 2: field 'difficulty' must be a finite number, got nan",
        ),
        (
            [GOOD, '{"prompt": "a", "difficulty": Infinity}'],
            "line 2: field 'difficulty' must be a finite number",
        ),
        (
            [
                '{"id": "a", "prompt": "x"}',
                '{"id": "b", "prompt": "y"}',
                '{"id": "a", "prompt": "z"}',
            ],
            "line 3: duplicate id 'a' (first at line 1)",
        ),
        (
            ['{"id": "a", "prompt": "x"}', '{"id": " ", "prompt": "y"}'],
            "line 2: field 'id' is empty",
        ),
        (['{"id": "a", "prompt": "x"}', '{"prompt": "y"}'], "line 2: field 'id' is empty"),
    ],
)
def test_bad_jsonl(tmp_path: Path, lines: list[str], needle: str) -> None:
    msg = error_of(jsonl_lines(tmp_path, *lines))
    assert msg.startswith("data.jsonl line")
    assert needle in msg


def test_not_utf8_names_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    good = (GOOD + "\n").encode()
    path.write_bytes(good * 2 + b'{"prompt": "caf\xe9"}\n')
    msg = error_of(path)
    assert msg == f"data.jsonl: not valid UTF-8 at byte {2 * len(good) + 15} (line 3)"


@pytest.mark.parametrize("body", ["", "\n\n  \n"])
def test_empty_files(tmp_path: Path, body: str) -> None:
    for name in ("data.jsonl", "data.csv"):
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        assert error_of(path).endswith("no records")
    (tmp_path / "data.json").write_text("[]", encoding="utf-8")
    assert error_of(tmp_path / "data.json") == "data.json: no records"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "data.parquet")
    assert error_of(tmp_path / "data.parquet") == "data.parquet: no records"


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("hello", encoding="utf-8")
    assert "unknown file type '.txt'" in error_of(tmp_path / "data.txt")
    assert error_of(tmp_path / "gone.jsonl") == "gone.jsonl: no such file"
    (tmp_path / "folder").mkdir()
    assert "not a datasets save_to_disk folder" in error_of(tmp_path / "folder")


def test_json_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b",}\n]', encoding="utf-8")
    assert "data.json line 3: malformed JSON" in error_of(path)
    recs = [{"prompt": "a", "difficulty": 1}, {"prompt": "b"}, {"prompt": "c", "difficulty": "x"}]
    path.write_text(json.dumps({"meta": {"a": [1, 2]}, "data": recs}, indent=2), encoding="utf-8")
    starts = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if text == "    {"]
    assert len(starts) == 3
    assert f"data.json line {starts[2]}: field 'difficulty' must be a number" in error_of(path)
    path.write_text('{"rows": []}', encoding="utf-8")
    assert "expected a list of records" in error_of(path)


def test_csv_errors_count_the_header_line(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('prompt,answer\n"multi\nline",1\n,2\nok,3\n', encoding="utf-8")
    assert error_of(path) == "data.csv line 4: missing required field 'prompt'"
    path.write_text("prompt,answer\na,1\nb,2,3\n", encoding="utf-8")
    assert error_of(path) == "data.csv line 3: expected 2 fields, got 3"
    path.write_text("prompt,score\na,1\nb,inf\n", encoding="utf-8")
    assert "data.csv line 3: field 'score' must be a finite number" in error_of(path)
    path.write_text("question\na\n", encoding="utf-8")
    msg = error_of(path)
    assert "line 2: missing required field 'prompt'" in msg and "question" in msg


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", None]}), path)
    assert error_of(path) == "data.parquet row 3: missing required field 'prompt'"
    pq.write_table(pa.table({"prompt": ["a", "b"], "pass_rate": [0.5, float("nan")]}), path)
    assert "data.parquet row 2: field 'pass_rate' must be a finite number" in error_of(path)


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"prompt": "p", "chosen": "a"}, "line 2: missing required field 'rejected'"),
        (
            {"prompt": "p", "chosen": "a", "rejected": []},
            "line 2: field 'rejected' must be a string or a non-empty list",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": ["b", ""]},
            "line 2: field 'rejected' item 2 must be non-empty",
        ),
        ({"prompt": "p", "rejected": "b"}, "line 2: missing required field 'chosen'"),
    ],
)
def test_bad_preferences(tmp_path: Path, record: dict[str, Any], needle: str) -> None:
    ok = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "data.jsonl", [ok, record])
    assert needle in error_of(path, kind="preferences")


def test_preferences_without_any_rejected_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "p", "chosen": "a"}])
    assert "line 1: missing required field 'rejected'" in error_of(path, kind="preferences")


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        (
            {"messages": [{"role": "user", "content": "hi"}], "feedback": 7},
            "line 2: field 'feedback' must be an integer 1..5, got 7",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "feedback": 2.5},
            "field 'feedback' must be an integer 1..5",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "feedback": "good"},
            "line 2: field 'feedback' must be a number",
        ),
        ({"messages": []}, "line 2: field 'messages' must be a non-empty"),
        ({"messages": [{"content": "hi"}]}, "line 2: field 'messages' turn 1 must be"),
        (
            {"messages": [{"role": "assistant", "content": "hi"}]},
            "line 2: field 'messages' has no non-empty 'user' turn",
        ),
        ({"messages": "not json"}, "line 2: field 'messages' must be"),
    ],
)
def test_bad_chats(tmp_path: Path, record: dict[str, Any], needle: str) -> None:
    ok = {"messages": [{"role": "user", "content": "hi"}], "feedback": 1}
    path = write_jsonl(tmp_path / "data.jsonl", [ok, record])
    assert needle in error_of(path, kind="chats")


def test_bad_kind(tmp_path: Path) -> None:
    with pytest.raises(StudioError, match="unknown data kind"):
        read_dataset(write_jsonl(tmp_path / "d.jsonl", RECORDS), kind="rollouts")  # type: ignore[arg-type]


# --- column names: every label, tag and extra field becomes a column of every export ----------


@pytest.mark.parametrize(
    ("record", "kind", "mapping", "message"),
    [
        (
            {"prompt": "p", "Cluster": 1},
            "prompts",
            None,
            "data.jsonl: label 'Cluster' clashes with the built-in column 'cluster'; "
            "rename it with --map NEW=Cluster or in the file",
        ),
        (
            {"prompt": "p", "idx": 3},
            "prompts",
            None,
            "data.jsonl: label 'idx' clashes with the built-in column 'idx'; "
            "rename it with --map NEW=idx or in the file",
        ),
        (
            {"prompt": "p", "ID": "a"},
            "prompts",
            None,
            "data.jsonl: tag 'ID' clashes with the built-in column 'id'; rename it in the file",
        ),
        (
            {"prompt": "p", "Answer": "4", "answer": "4"},
            "prompts",
            None,
            "data.jsonl: tag 'Answer' clashes with the built-in column 'answer'; "
            "rename it in the file",
        ),
        (
            {"prompt": "p", "Score": 1, "score": 2},
            "prompts",
            None,
            "data.jsonl: label 'score' and label 'Score' differ only in case, which the store's "
            "columns ignore; rename it with --map NEW=score or in the file",
        ),
        (
            {"prompt": "p", "": 1},
            "prompts",
            None,
            "data.jsonl: label '' has an empty name; rename it in the file",
        ),
        (
            {"prompt": "p", "a\nb": "x"},
            "prompts",
            None,
            "data.jsonl: tag 'a\\nb' has a control character in its name; rename it in the file",
        ),
        (
            {"prompt": "p", "feature:3": 0.5},
            "prompts",
            None,
            "data.jsonl: label 'feature:3' starts with 'feature:', which filters read as an SAE "
            "feature; rename it with --map NEW=feature:3 or in the file",
        ),
        (
            {"prompt": "p", "messages": [{"role": "user", "content": "hi"}]},
            "prompts",
            None,
            "data.jsonl: field 'messages' clashes with the built-in column 'messages'; "
            "rename it in the file",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "role": "judge"},
            "preferences",
            None,
            "data.jsonl: tag 'role' clashes with the built-in column 'role'; rename it in the file",
        ),
        (
            {"prompt": "p", "lvl": 2},
            "prompts",
            {"x": "lvl"},
            "data.jsonl: label 'x' clashes with the built-in column 'x'; "
            "choose another name than 'x' in --map x=lvl",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "Feedback": "good", "feedback": 2},
            "chats",
            None,
            "data.jsonl: tag 'Feedback' and label 'feedback' differ only in case, which the "
            "store's columns ignore; rename it in the file",
        ),
    ],
)
def test_names_that_would_break_exports_are_refused(
    tmp_path: Path,
    record: dict[str, Any],
    kind: str,
    mapping: dict[str, str] | None,
    message: str,
) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [record])
    assert error_of(path, kind=kind, mapping=mapping) == message


def test_csv_header_names_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("prompt,X\na,1\n", encoding="utf-8")
    assert error_of(path).startswith("data.csv: label 'X' clashes with the built-in column 'x'")


def test_a_label_read_under_another_name_escapes_the_clash(tmp_path: Path) -> None:
    """The error's remedy works: --map gives the label a free name, and every column of the
    export (the label under its new name, the file's column as an extra field) is there."""
    from core.export import ExportConfig
    from core.steps.export import ExportRequest, export
    from core.steps.ingest import ingest
    from core.store import Store

    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "p", "Cluster": 3, "idx": [1]}])
    assert "'idx'" in error_of(path, mapping={"level": "Cluster"})
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "p", "Cluster": 3}])
    store = Store(tmp_path / "s.duckdb")
    ingest(store, path, dataset="d", kind="prompts", mapping={"level": "Cluster"})
    out = tmp_path / "out.jsonl"
    export(store, ExportRequest("d"), ExportConfig(fmt="jsonl"), out=out)
    (row,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert row["level"] == 3.0 and row["Cluster"] == "3" and row["cluster"] is None


def test_reserved_names_cover_every_column_the_store_adds(tmp_path: Path) -> None:
    """RESERVED_COLUMNS cannot drift from the store: every column of the wide view and of the
    export rows that is not one of the dataset's own labels, tags or extra fields is listed,
    and so is every column a derived responses dataset adds."""
    from core import export
    from core import store as store_mod
    from core.filters import FEATURE_PREFIX
    from core.ingest import RESERVED_COLUMNS, RESERVED_FOR_KIND, RESERVED_PREFIXES
    from core.store import Store

    listed = {*store_mod.BASE_COLUMNS, *store_mod.DEDUP_COLUMNS, *export.INTERNAL}
    listed |= set(export.RESPONSES)
    assert {n.lower() for n in listed} <= RESERVED_COLUMNS
    assert FEATURE_PREFIX in RESERVED_PREFIXES
    assert all(n == n.lower() for n in RESERVED_COLUMNS)

    store = Store(tmp_path / "s.duckdb")
    files = {
        "prompts": [{"prompt": "p", "answer": "1", "lvl": 1, "task": "t", "meta": {"a": 1}}],
        "preferences": [{"prompt": "p", "chosen": "a", "rejected": ["b"], "lvl": 1, "t": "x"}],
        "chats": [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ],
                "feedback": 2,
                "lang": "en",
            }
        ],
    }
    plan = pa.table(
        {
            "idx": pa.array([0], pa.int64()),
            "position": pa.array([0], pa.int64()),
            "batch": pa.array([0], pa.int64()),
        }
    )
    for kind, recs in files.items():
        t = read_dataset(write_jsonl(tmp_path / f"{kind}.jsonl", recs), kind=kind)  # type: ignore[arg-type]
        store.write_dataset(
            name=kind,
            kind=kind,
            source="x",
            examples=t.examples,
            labels=t.labels,
            responses=t.responses,
        )
        own = {k for r in recs for k in r}
        views = store.views(kind)
        wide = set(store.wide(kind, views=views).column_names)
        rows = {
            c
            for chunk in store.export_chunks(kind, views=views, plan=plan)
            for c in chunk.column_names
        }
        points = set(store.map_points(kind, views=views).columns)
        assert {c.lower() for c in (wide | rows | points) - own} <= RESERVED_COLUMNS, kind
    store.write_responses_dataset("preferences", name="responses")
    views = store.views("responses")
    added = {*store.wide("responses", views=views).column_names}
    added |= {
        k
        for e in store.wide("responses", views=views).column("extra").to_pylist()
        for k in json.loads(e)
    }
    added -= {
        *files["preferences"][0],
        *store.wide("preferences", views=store.views("preferences")).column_names,
    }
    assert added <= RESERVED_FOR_KIND["preferences"]
    plan = plan.take([0, 0]).set_column(0, "idx", pa.array([0, 1], pa.int64()))
    rows = {
        c
        for chunk in store.export_chunks("responses", views=views, plan=plan)
        for c in chunk.column_names
    }
    rows -= {*files["preferences"][0], *added}
    assert {c.lower() for c in rows} <= RESERVED_COLUMNS


# --- JSON the parser accepts but nothing after it can hold: one line each ---------------------


def test_a_lone_surrogate_names_line_and_field(tmp_path: Path) -> None:
    path = jsonl_lines(tmp_path, GOOD, '{"prompt": "caf\\ud800e"}')
    assert error_of(path) == (
        "data.jsonl line 2: field 'prompt' holds a lone surrogate '\\ud800' (an escape that is "
        "half of a UTF-16 pair, not a character); fix or drop it"
    )
    path = jsonl_lines(tmp_path, GOOD, '{"prompt": "a", "t\\udc00g": "x"}')
    assert "line 2: field 't\\udc00g' holds a lone surrogate '\\udc00'" in error_of(path)
    chat = '{"messages": [{"role": "user", "content": "hi \\udfff"}]}'
    assert "line 1: field 'messages' holds a lone surrogate" in error_of(
        jsonl_lines(tmp_path, chat), kind="chats"
    )
    # a real pair written as two escapes is one character, and fine
    t = read_dataset(jsonl_lines(tmp_path, '{"prompt": "smile \\ud83d\\ude00"}'), kind="prompts")
    assert t.examples.column("prompt").to_pylist() == ["smile \U0001f600"]
    doc = tmp_path / "data.json"
    doc.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b",\n   "t": "\\ud800"}\n]', "utf-8")
    assert error_of(doc).startswith("data.json line 3: field 't' holds a lone surrogate")


def test_deep_nesting_names_line_and_field(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    path = jsonl_lines(tmp_path, GOOD, '{"prompt": "a", "x": ' + deep + "}")
    assert error_of(path) == "data.jsonl line 2: field 'x' is nested more than 100 deep"
    doc = tmp_path / "data.json"
    doc.write_text('{"data": [\n{"prompt": "a"},\n{"prompt": "b", "y": ' + deep + "}]}", "utf-8")
    assert error_of(doc) == "data.json line 3: field 'y' is nested more than 100 deep"
    # deep enough to be refused, not deep enough to stop the parser: the same line
    nested = "[" * 100 + "]" * 100
    path = jsonl_lines(tmp_path, '{"prompt": "a", "z": {"k": ' + nested + "}}")
    assert error_of(path) == "data.jsonl line 1: field 'z' is nested more than 100 deep"
    ok = "[" * 99 + "]" * 99  # with the record itself, 100 levels
    assert read_dataset(jsonl_lines(tmp_path, '{"prompt": "a", "z": ' + ok + "}"), kind="prompts")


def test_an_integer_too_long_to_convert_names_the_field(tmp_path: Path) -> None:
    path = jsonl_lines(tmp_path, GOOD, '{"prompt": "a", "n": ' + "9" * 5000 + "}")
    assert (
        error_of(path) == "data.jsonl line 2: field 'n' holds an integer of more than 4300 digits"
    )
    # a long integer that converts is a number too large for a label, still one line
    path = jsonl_lines(tmp_path, '{"prompt": "a", "n": ' + "9" * 400 + "}")
    assert "line 1: field 'n' must be a finite number" in error_of(path)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = jsonl_lines(tmp_path, GOOD, '{"prompt": "a", "difficulty": 1, "prompt": "b"}')
    assert error_of(path) == (
        "data.jsonl line 2: key 'prompt' appears twice in one object; JSON keeps only one of "
        "them, so remove or rename the other"
    )
    chat = '{"messages": [{"role": "user", "content": "hi", "role": "assistant"}]}'
    assert "line 1: key 'role' appears twice in one object inside field 'messages'" in error_of(
        jsonl_lines(tmp_path, chat), kind="chats"
    )
    doc = tmp_path / "data.json"
    doc.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b", "t": 1,\n   "t": 2}\n]', "utf-8")
    assert error_of(doc).startswith("data.json line 4: key 't' appears twice")


# JSON inside a cell (a CSV cell, a Parquet string, a JSONL string where a list was expected) is
# held to the same rules as a JSON record: one line naming the file, the row and the field
DEEP = "[" * 100_000 + "]" * 100_000
TOO_DEEP = "[" * 100 + "]" * 100  # parses, but nests past the limit
CELLS = [
    ('[{"role": "user", "content": "hi \\ud800"}]', "holds a lone surrogate '\\ud800'"),
    ('[{"role": "user", "content": "hi", "x": ' + DEEP + "}]", "is nested more than 100 deep"),
    ('[{"role": "user", "content": "hi", "x": ' + TOO_DEEP + "}]", "is nested more than 100 deep"),
    ('[{"role": "user", "content": "hi", "role": "assistant"}]', "key 'role' appears twice"),
    ('[{"role": "user", "content": "hi", "n": ' + "9" * 5000 + "}]", "integer of more than 4300"),
]


@pytest.mark.parametrize(
    ("cell", "needle"), CELLS, ids=["surrogate", "deep", "deep100", "dup", "long"]
)
@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_json_in_a_messages_cell_is_checked_like_a_record(
    tmp_path: Path, suffix: str, cell: str, needle: str
) -> None:
    ok = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    path = write_records(tmp_path / f"data{suffix}", [{"messages": ok}, {"messages": cell}])
    where = {".csv": "line 3", ".parquet": "row 2", ".jsonl": "line 2"}[suffix]
    msg = error_of(path, kind="chats")
    assert msg.startswith(f"data{suffix} {where}: "), msg
    assert "field 'messages'" in msg and needle in msg, msg


@pytest.mark.parametrize(
    ("cell", "needle"), CELLS, ids=["surrogate", "deep", "deep100", "dup", "long"]
)
def test_json_in_a_rejected_cell_is_checked_like_a_record(
    tmp_path: Path, cell: str, needle: str
) -> None:
    # a list holding an object: checked, then kept as text (not a list of strings)
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": '["b", "c"]'},
        {"prompt": "p", "chosen": "a", "rejected": cell},
    ]
    path = write_csv(tmp_path / "data.csv", rows)
    msg = error_of(path, kind="preferences")
    assert msg.startswith("data.csv line 3: "), msg
    assert "field 'rejected'" in msg and needle in msg, msg


def test_cells_that_are_not_json_or_hold_good_json_read_as_before(tmp_path: Path) -> None:
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "[not json"},  # text that starts with [
        {"prompt": "p", "chosen": "a", "rejected": '["b", "smile \\ud83d\\ude00"]'},
        {"prompt": "p", "chosen": "a", "rejected": '["b", {"k": 1}]'},  # not all text: the text
    ]
    t = read_dataset(write_csv(tmp_path / "data.csv", rows), kind="preferences")
    got = [r["text"] for r in t.responses.to_pylist() if r["role"] == "rejected"]
    assert got == ["[not json", "b", "smile \U0001f600", '["b", {"k": 1}]']
    msgs = json.dumps([{"role": "user", "content": "\\ud83d\\ude00 x"}])  # an escaped pair
    t = read_dataset(write_csv(tmp_path / "c.csv", [{"messages": msgs}]), kind="chats")
    assert t.examples.column("prompt").to_pylist() == ["\\ud83d\\ude00 x"]


def test_the_lenient_list_reader_never_raises() -> None:
    """core.rollouts reads a CSV cell that is no JSON list as text: JSON nested past the
    parser or with an integer past Python's digit limit is such a cell, not a traceback."""
    from core.ingest import json_list_or_none

    assert json_list_or_none(DEEP) is None
    assert json_list_or_none("[" + "9" * 5000 + "]") is None
    assert json_list_or_none("[1, true]") == [1, True]


def test_the_surrogate_pretest_flags_lone_ones_only() -> None:
    from core.ingest import _suspects

    assert _suspects('{"a": "\\ud83d\\ude00"}') == (False, False)  # a pair is one character
    assert _suspects('{"a": "\\ud800"}')[0]
    assert _suspects('{"a": "\\udc00\\ud800"}')[0]  # low then high: two lone ones
    assert _suspects('{"a": "\\ud800\\ud83d\\ude00"}')[0]
    assert not _suspects('{"a": "\\\\ud800"}')[0]  # an escaped backslash, then text
    assert _suspects('{"a": "\\\\\\ud800"}')[0]  # an escaped backslash, then an escape
    # an escaped backslash then "ud800" is text, so the escape after it is a lone low surrogate
    assert _suspects('{"a": "\\\\ud800\\udc00"}')[0]
    text = '[{"a": 1}, {"b": "\\ud800"}]'
    assert _suspects(text, 0, 10) == (False, False) and _suspects(text, 11, len(text))[0]
    assert _suspects("[" * 101) == (False, True) and _suspects("[" * 100) == (False, False)


def test_a_json_array_checks_each_record_and_names_its_line(tmp_path: Path) -> None:
    """The .json reader reads record by record: the checks look at the records that may need
    them, and every error is the one the whole-document parse gives."""
    doc = tmp_path / "data.json"
    recs: list[Any] = [{"prompt": f"p{i}", "xs": [[1]] * 60} for i in range(3)]  # 62 brackets each

    def body(recs: list[Any]) -> str:
        return "[\n" + ",\n".join(json.dumps(r) for r in recs) + "\n]"

    bad = [recs[0], {**recs[1], "prompt": "p1 \ud800"}, recs[2]]
    doc.write_text(body(recs), "utf-8")
    assert read_dataset(doc, kind="prompts").n == 3
    doc.write_text(body(bad), "utf-8")
    assert error_of(doc).startswith("data.json line 3: field 'prompt' holds a lone surrogate")
    # a parse error after a record with a check error: the parse error, as before
    doc.write_text(body(bad).replace('"p2"', '"p2",,'), "utf-8")
    assert error_of(doc).startswith("data.json line 4: malformed JSON: ")
    # a record that is no object before a record with a check error: that one first
    doc.write_text(body([[recs[0]], *bad[1:]]), "utf-8")
    assert error_of(doc) == "data.json line 2: expected a JSON object, got list"
    good = body(recs)
    for wrapped, line in (
        ('{"data": ' + good + "}", 3),
        ('{"v": 1,\n"data": ' + good + ', "w": [2]}', 4),
    ):
        doc.write_text(wrapped, "utf-8")
        assert read_dataset(doc, kind="prompts").n == 3
        doc.write_text(wrapped.replace('"p1"', '"p1 \\ud800"'), "utf-8")
        assert error_of(doc).startswith(f"data.json line {line}: field 'prompt' holds a lone")
    doc.write_text('{"data": ' + good + ', "data": []}', "utf-8")
    assert "key 'data' appears twice" in error_of(doc)
    for odd in ("[]", "{}", '{"data": 1}', '{"data": [1], "x": }', "[1,]", "[1] x"):
        doc.write_text(odd, "utf-8")
        with pytest.raises(StudioError):
            read_dataset(doc, kind="prompts")


# --- files that are almost what was meant ------------------------------------------------------


def test_json_and_jsonl_mixed_up_say_so(tmp_path: Path) -> None:
    path = jsonl_lines(tmp_path, json.dumps(RECORDS))
    assert error_of(path).endswith("a JSON array? name the file .json")
    path = jsonl_lines(tmp_path, "[", json.dumps(RECORDS[0]), "]")
    assert error_of(path).endswith("a JSON array? name the file .json")
    doc = tmp_path / "data.json"
    doc.write_text("\n".join(json.dumps(r) for r in RECORDS), encoding="utf-8")
    assert error_of(doc) == (
        "data.json line 2: malformed JSON: Extra data (column 1); one object a line? "
        "name the file .jsonl"
    )
    for body in ("", "  \n\t\n"):
        doc.write_text(body, encoding="utf-8")
        assert error_of(doc) == "data.json: no records"


def test_csv_bom_long_cells_and_unnamed_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    long = "word " * 40_000  # over the csv module's 128 KiB default
    path.write_bytes(("\ufeffprompt,score,\n" + f'"{long}",1,x\n').encode())
    before = csv.field_size_limit()
    t = read_dataset(path, kind="prompts")
    assert csv.field_size_limit() == before
    assert t.examples.column("prompt").to_pylist() == [long]
    assert labels_of(t) == {(t.examples.column("id")[0].as_py(), "score"): 1.0}  # no BOM in it
    assert t.warnings == (
        "data.csv: 1 header cells are empty; those columns are read as 'unnamed_2'",
    )


def test_parquet_text_that_is_not_utf8(tmp_path: Path) -> None:
    bad = pa.array([b"ok", b"\xff\xfe"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"prompt": ["a", "b"], "t": bad}), tmp_path / "data.parquet")
    assert error_of(tmp_path / "data.parquet") == (
        "data.parquet row 2: field 't' is not valid UTF-8 text"
    )


def test_odd_but_valid_values_read_as_they_are(tmp_path: Path) -> None:
    recs = [
        {"id": 7, "prompt": "nul \u0000 and \u2028", "ok": True, "big": 1e308},
        {"id": "8", "prompt": "b", "ok": False, "big": -1},
    ]
    t = read_dataset(write_jsonl(tmp_path / "d.jsonl", recs), kind="prompts")
    assert t.examples.column("id").to_pylist() == ["7", "8"]
    assert t.examples.column("prompt").to_pylist() == [r["prompt"] for r in recs]
    assert labels_of(t) == {
        ("7", "ok"): 1.0,
        ("8", "ok"): 0.0,
        ("7", "big"): 1e308,
        ("8", "big"): -1.0,
    }
    assert t.warnings == ()


# --- warnings: read, but probably not what was meant ------------------------------------------


def test_a_rejected_response_equal_to_the_chosen_one_is_a_warning(tmp_path: Path) -> None:
    recs = [
        {"id": f"r{i}", "prompt": "p", "chosen": "same", "rejected": ["other", " same "]}
        for i in range(4)
    ] + [{"id": "fine", "prompt": "p", "chosen": "a", "rejected": "b"}]
    t = read_dataset(write_jsonl(tmp_path / "data.jsonl", recs), kind="preferences")
    assert t.n == 5 and t.responses.num_rows == 14  # kept: some sets carry ties
    assert t.warnings == (
        "data.jsonl: 4 of 5 rows have a rejected response equal to the chosen one (first ids: "
        "'r0', 'r1', 'r2', ...); kept as ties, but such a pair teaches a preference trainer "
        "nothing",
    )


def test_chats_without_an_assistant_turn_are_a_warning(tmp_path: Path) -> None:
    user = {"role": "user", "content": "hi"}
    recs = [
        {"id": "a", "messages": [user]},
        {"id": "b", "messages": [user, {"role": "assistant", "content": "yo"}]},
        {"id": "c", "messages": [user, {"role": "assistant", "content": None}]},
    ]
    t = read_dataset(write_jsonl(tmp_path / "data.jsonl", recs), kind="chats")
    assert t.n == 3
    assert t.warnings == (
        "data.jsonl: 2 of 3 rows have no assistant turn (first ids: 'a', 'c'); "
        "--format trl-messages writes them as user-only rows",
    )
    assert read_dataset(write_jsonl(tmp_path / "d.jsonl", RECORDS), kind="prompts").warnings == ()


def test_the_cli_prints_ingest_warnings_and_still_ingests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.cli import main

    user = {"role": "user", "content": "hi"}
    path = write_jsonl(tmp_path / "chats.jsonl", [{"id": "a", "messages": [user]}])
    db = str(tmp_path / "s.duckdb")
    assert main(["ingest", str(path), "--dataset", "c", "--kind", "chats", "--db", db]) == 0
    captured = capsys.readouterr()
    assert "warning: chats.jsonl: 1 of 1 rows have no assistant turn" in captured.err
    assert "ingested 1" in captured.out
