"""Read and validate a user's data file into Arrow tables that core.store writes as they are.

Pure: no DuckDB. Every problem is a :class:`~core.errors.StudioError` with a one-line message that
names the file, the line (JSON/JSONL/CSV: physical line, CSV counting the header) or row
(Parquet, ``datasets`` folders) and the field. Everything is validated before anything is returned.

    >>> t = read_dataset("math.jsonl", kind="prompts", mapping={"prompt": "question"})
    >>> t.examples.column_names
    ['id', 'idx', 'prompt', 'answer', 'text', 'tags', 'extra']

Field rules (``mapping`` renames: our field -> the file's column):

- Canonical fields. prompts: ``id``, ``prompt`` (required), ``answer``; preferences: ``id``,
  ``prompt``, ``chosen``, ``rejected`` (required; a string or a non-empty list of strings),
  ``answer``; chats: ``id``, ``messages`` (required; list of ``{role, content}``, or that list as a
  JSON string), ``feedback`` (integer 1..5 or null, stored as label ``feedback``). Only exact names
  or ``mapping`` select them; ``ground_truth``/``solution`` are not guessed.
- Every other column is a label, a tag or only kept in ``extra``:
  a column whose non-null values are all numbers (int/float/bool) is a numeric **label**; a column
  of text (or other scalars) is a string **tag**; a column holding lists/dicts is kept only in
  ``extra``. A ``mapping`` entry whose target is not a canonical field declares a label
  (``{"difficulty": "level"}``): that column must be numeric.
- Typed formats (JSON, JSONL, Parquet, datasets): a column with numbers in some rows and text in
  others is an error at the first text value. CSV cells are untyped text: a column is a label when
  every non-empty cell reads as a number (``1``, ``-2.5e3``, ``true``/``false``), otherwise it is a
  tag (unless declared a label). Empty CSV cells are null. Labels must be finite.
- Chats: ``text`` is the rendered conversation (``"user: ...\\nassistant: ..."``, one turn a line)
  and ``prompt`` is the content of the last user turn.
- Ids: the file's ``id`` column (as string) when present, unique and non-empty; otherwise the
  first 16 hex digits of the sha1 of the canonical fields' JSON, ``-2``, ``-3``... on repeats.
- ``tags`` is the JSON object of a record's non-null string tags (``"{}"`` when none).
- ``extra`` is the JSON of the record's non-canonical fields under their original names and with
  their original values (labels and tags included), so export can rebuild the record; null and
  absent fields are both left out. A chat's validated ``messages`` ([{role, content}, ...]) are
  kept there too, for the conversational export layouts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import StudioError

Kind = Literal["prompts", "preferences", "chats"]

EXAMPLES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("idx", pa.int64(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("tags", pa.string(), nullable=False),
        pa.field("extra", pa.string(), nullable=False),
    ]
)
LABELS_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)
RESPONSES_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("response_idx", pa.int32(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)

CANONICAL: dict[str, tuple[str, ...]] = {
    "prompts": ("id", "prompt", "answer"),
    "preferences": ("id", "prompt", "chosen", "rejected", "answer"),
    "chats": ("id", "messages", "feedback"),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "prompts": ("prompt",),
    "preferences": ("prompt", "chosen", "rejected"),
    "chats": ("messages",),
}
_ALL_CANONICAL = frozenset(f for fields in CANONICAL.values() for f in fields)
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
}
_NUMBER = re.compile(
    r"\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|nan|inf|infinity)\s*",
    re.IGNORECASE,
)
_BOOLS = {"true": 1.0, "false": 0.0}
_TURNS = "a non-empty (JSON) list of {role, content}"


@dataclass(frozen=True)
class IngestTables:
    """What one file becomes: examples, long-form labels and (preferences) responses.

    ``examples``: EXAMPLES_SCHEMA (id, idx, prompt, answer, text, tags JSON, extra JSON);
    ``labels``: LABELS_SCHEMA (example_id, name, value); ``responses``: RESPONSES_SCHEMA
    (example_id, response_idx, role 'chosen'|'rejected', text; empty unless preferences).
    """

    examples: pa.Table
    labels: pa.Table
    responses: pa.Table
    source: str
    n: int
    kind: Kind

    def __post_init__(self) -> None:
        for name, schema in (
            ("examples", EXAMPLES_SCHEMA),
            ("labels", LABELS_SCHEMA),
            ("responses", RESPONSES_SCHEMA),
        ):
            if not getattr(self, name).schema.equals(schema):
                raise ValueError(f"IngestTables.{name} does not match {name.upper()}_SCHEMA")
        if self.examples.num_rows != self.n:
            raise ValueError(f"IngestTables.n={self.n} but examples has {self.examples.num_rows}")


@dataclass
class _Source:
    """A file read into columns (file order) with a way to name a record's position."""

    name: str
    columns: dict[str, list[Any]]
    n: int
    locate: Callable[[int], str]  # record index -> "line 7" / "row 7"
    typed: bool  # False for CSV, whose cells are all text

    def error(self, i: int, message: str) -> StudioError:
        return StudioError(f"{self.name} {self.locate(i)}: {message}")


def read_dataset(
    path: str | Path, *, kind: Kind, mapping: dict[str, str] | None = None
) -> IngestTables:
    """Read one JSONL/JSON/Parquet/CSV file or ``datasets`` folder and validate it as ``kind``."""
    if kind not in CANONICAL:
        raise StudioError(f"unknown data kind {kind!r} (expected prompts, preferences or chats)")
    path = Path(path)
    src = _load(path)
    fields, declared = _resolve_fields(src, kind=kind, mapping=mapping or {})
    for need in REQUIRED[kind]:
        if need not in fields:
            cols = ", ".join(src.columns) or "none"
            raise src.error(
                0, f"missing required field {need!r} (columns: {cols}; map one to {need!r})"
            )

    parsed = _parse_canonical(
        src, kind=kind, columns={f: src.columns[c] for f, c in fields.items()}
    )
    used = set(fields.values())
    labels, tags = _labels_and_tags(src, used=used, declared=declared)
    if "feedback" in fields:
        labels = {"feedback": _check_feedback(src, src.columns[fields["feedback"]]), **labels}
    if "id" in fields:
        ids = _check_ids(src, src.columns[fields["id"]])
    else:
        keys, cols = list(parsed.basis), parsed.basis.values()
        ids = _hash_ids(dict(zip(keys, row, strict=True)) for row in zip(*cols, strict=True))

    extra_cols = [(c, v) for c, v in src.columns.items() if c not in used]
    if kind == "chats":  # the validated turns, so export can rebuild the conversation
        extra_cols.append(("messages", parsed.basis["messages"]))
    examples = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "idx": pa.array(np.arange(src.n, dtype=np.int64)),
            "prompt": pa.array(parsed.prompts, pa.string()),
            "answer": pa.array(parsed.answers, pa.string()),
            "text": pa.array(parsed.texts, pa.string()),
            "tags": pa.array(_objects_json(list(tags.items()), src.n), pa.string()),
            "extra": pa.array(_objects_json(extra_cols, src.n), pa.string()),
        },
        schema=EXAMPLES_SCHEMA,
    )
    return IngestTables(
        examples=examples,
        labels=_labels_table(ids, labels),
        responses=_responses_table(ids, parsed.chosen, parsed.rejected),
        source=str(path),
        n=src.n,
        kind=kind,
    )


@dataclass
class _Canonical:
    """The validated canonical fields, one list entry per record."""

    prompts: list[str]
    answers: list[str | None]
    texts: list[str]
    basis: dict[str, list[Any]]  # the fields whose JSON hashes to the assigned id
    chosen: list[str] = field(default_factory=list)
    rejected: list[list[str]] = field(default_factory=list)


def _parse_canonical(src: _Source, *, kind: str, columns: dict[str, list[Any]]) -> _Canonical:
    """Validate the kind's canonical fields and derive prompt, answer and featurized text."""
    if kind == "chats":
        turns = _check_messages(src, columns["messages"])
        prompts = [_last_user(src, i, t) for i, t in enumerate(turns)]
        messages = [[{"role": r, "content": c} for r, c in t] for t in turns]
        texts = ["\n".join(f"{r}: {c}" for r, c in t) for t in turns]
        return _Canonical(prompts, [None] * src.n, texts, basis={"messages": messages})
    prompts = _check_text(src, "prompt", columns["prompt"])
    answers: list[str | None] = [None] * src.n
    if "answer" in columns:
        answers = _check_answers(src, columns["answer"])
    if kind == "prompts":
        return _Canonical(prompts, answers, prompts, basis={"prompt": prompts, "answer": answers})
    chosen = _check_text(src, "chosen", columns["chosen"])
    rejected = _check_rejected(src, columns["rejected"])
    basis = {"prompt": prompts, "answer": answers, "chosen": chosen, "rejected": rejected}
    return _Canonical(prompts, answers, prompts, basis, chosen=chosen, rejected=rejected)


def _labels_and_tags(
    src: _Source, *, used: set[str], declared: dict[str, str]
) -> tuple[dict[str, list[float | None]], dict[str, list[str | None]]]:
    """Sort the non-canonical columns into numeric labels and string tags (see module doc)."""
    renamed = {c: f for f, c in declared.items()}
    labels: dict[str, list[float | None]] = {}
    tags: dict[str, list[str | None]] = {}
    for c, values in src.columns.items():
        if c in used:
            continue
        what = _column_class(src, c, values, must_be_label=c in renamed)
        if what == "label":
            labels[renamed.get(c, c)] = _label_values(src, c, values)
        elif what == "tag":
            tags[c] = [None if v is None else str(v) for v in values]
    return labels, tags


# --- reading -----------------------------------------------------------------------------------


def _load(path: Path) -> _Source:
    """Dispatch on the file type; every reader returns columns in file order."""
    name = path.name
    if path.is_dir():
        return _read_saved_dataset(path)
    if not path.exists():
        raise StudioError(f"{name}: no such file")
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise StudioError(
            f"{name}: unknown file type {path.suffix!r} (expected .jsonl, .ndjson, .json, "
            ".parquet, .csv, .tsv or a datasets save_to_disk folder)"
        )
    if fmt == "parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise StudioError(f"{name}: not a readable Parquet file: {_one_line(e)}") from None
        return _arrow_source(name, table)
    text = _decode(path)
    if fmt == "jsonl":
        return _read_jsonl(name, text)
    if fmt == "json":
        return _read_json(name, text)
    return _read_csv(name, text, delimiter="\t" if fmt == "tsv" else ",")


def _decode(path: Path) -> str:
    """The file as text; a byte that is not UTF-8 is an error naming its offset and line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise StudioError(f"{path.name}: not valid UTF-8 at byte {e.start} (line {line})") from None
    return text.removeprefix("\ufeff")


def _read_jsonl(name: str, text: str) -> _Source:
    """One JSON object a line; blank lines are skipped, lines counted as in an editor."""
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    loads = json.loads
    for lineno, raw in enumerate(text.split("\n"), 1):
        if not raw or raw.isspace():
            continue
        try:
            rec = loads(raw)
        except json.JSONDecodeError as e:
            raise StudioError(
                f"{name} line {lineno}: malformed JSON: {e.msg} (column {e.colno})"
            ) from None
        if not isinstance(rec, dict):
            raise StudioError(f"{name} line {lineno}: expected a JSON object, got {_tname(rec)}")
        records.append(rec)
        lines.append(lineno)
    return _records_source(name, records, lambda i: f"line {lines[i]}")


def _read_json(name: str, text: str) -> _Source:
    """A JSON list of records or ``{"data": [...]}``; record lines are found only on error."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise StudioError(f"{name} line {e.lineno}: malformed JSON: {e.msg}") from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if not isinstance(doc, list):
        raise StudioError(f'{name}: expected a list of records or {{"data": [...]}}')
    for i, rec in enumerate(doc):
        if not isinstance(rec, dict):
            line = _json_record_line(text, i)
            raise StudioError(f"{name} line {line}: expected a JSON object, got {_tname(rec)}")
    return _records_source(name, doc, lambda i: f"line {_json_record_line(text, i)}")


def _json_record_line(text: str, index: int) -> int:
    """Line where record ``index`` of a valid JSON list (or ``{"data": [...]}``) starts."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")

    def skip(pos: int) -> int:
        return ws.match(text, pos).end()  # type: ignore[union-attr]

    pos = skip(0)
    if text[pos] == "{":  # walk the top-level keys up to "data"
        pos += 1
        while True:
            key, pos = decoder.raw_decode(text, skip(pos))
            pos = skip(skip(pos) + 1)  # past ':'
            if key == "data":
                break
            pos = skip(decoder.raw_decode(text, pos)[1]) + 1  # past the value and ','
    pos += 1  # past '['
    for _ in range(index):
        pos = skip(decoder.raw_decode(text, skip(pos))[1]) + 1
    return text.count("\n", 0, skip(pos)) + 1


def _read_csv(name: str, text: str, *, delimiter: str) -> _Source:
    """Header + rows; a record's line is where it starts (quoted cells may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[list[str]] = []
    starts: list[int] = []
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = [h.strip() or f"unnamed_{j}" for j, h in enumerate(row)]
                dup = next((h for j, h in enumerate(header) if h in header[:j]), None)
                if dup is not None:
                    raise StudioError(f"{name} line {start}: column {dup!r} appears twice")
                continue
            if len(row) != len(header):
                raise StudioError(
                    f"{name} line {start}: expected {len(header)} fields, got {len(row)}"
                )
            rows.append(row)
            starts.append(start)
    except csv.Error as e:
        raise StudioError(f"{name} line {reader.line_num}: malformed CSV: {e}") from None
    if header is None or not rows:
        raise StudioError(f"{name}: no records")
    columns = {h: [r[j] or None for r in rows] for j, h in enumerate(header)}
    return _Source(name, columns, len(rows), lambda i: f"line {starts[i]}", typed=False)


def _read_saved_dataset(path: Path) -> _Source:
    """A ``datasets`` ``save_to_disk`` folder: a Dataset, or a DatasetDict with one split."""
    name = path.name
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).exists() for m in markers):
        raise StudioError(f"{name}: a folder, but not a datasets save_to_disk folder")
    import datasets  # slow import, only needed here

    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:
        raise StudioError(f"{name}: cannot load datasets folder: {_one_line(e)}") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = [str(s) for s in ds]
        if len(splits) != 1:
            raise StudioError(
                f"{name}: holds splits {', '.join(splits)}; which one? "
                f"point at its folder, e.g. {path / splits[0]}"
            )
        ds = ds[splits[0]]
    if not isinstance(ds, datasets.Dataset):
        raise StudioError(f"{name}: not a datasets Dataset")
    return _arrow_source(name, ds.with_format("arrow")[:])


def _arrow_source(name: str, table: pa.Table) -> _Source:
    if table.num_rows == 0:
        raise StudioError(f"{name}: no records")
    if len(set(table.column_names)) != table.num_columns:
        raise StudioError(f"{name}: duplicate column names in {table.column_names}")
    columns = {c: table.column(c).to_pylist() for c in table.column_names}
    return _Source(name, columns, table.num_rows, lambda i: f"row {i + 1}", typed=True)


def _records_source(
    name: str, records: list[dict[str, Any]], locate: Callable[[int], str]
) -> _Source:
    if not records:
        raise StudioError(f"{name}: no records")
    keys = dict.fromkeys(k for rec in records for k in rec)
    columns = {k: [rec.get(k) for rec in records] for k in keys}
    return _Source(name, columns, len(records), locate, typed=True)


# --- fields ------------------------------------------------------------------------------------


def _resolve_fields(
    src: _Source, *, kind: str, mapping: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(canonical field -> column present in the file, declared label name -> column)."""
    canonical = CANONICAL[kind]
    for ours, column in mapping.items():
        where = f"{src.name}: mapping {ours}={column}"
        if column not in src.columns:
            raise StudioError(f"{where}: no column {column!r} (columns: {', '.join(src.columns)})")
        if ours in _ALL_CANONICAL and ours not in canonical:
            fields = ", ".join(canonical)
            raise StudioError(f"{where}: {ours!r} is not a field of {kind} (fields: {fields})")
    targets = list(mapping.values())
    dup = next((c for j, c in enumerate(targets) if c in targets[:j]), None)
    if dup is not None:
        raise StudioError(f"{src.name}: mapping names column {dup!r} twice")
    found: dict[str, str] = {}
    for name in canonical:
        column = mapping.get(name, name if name not in targets else None)
        if column is not None and column in src.columns:
            found[name] = column
    declared = {ours: c for ours, c in mapping.items() if ours not in canonical}
    for label, column in declared.items():
        if label in src.columns and label not in targets:
            raise StudioError(
                f"{src.name}: mapping {label}={column}: the file already has a column {label!r}"
            )
    return found, declared


def _check_text(src: _Source, name: str, values: list[Any]) -> list[str]:
    """A required string field: present, a string, not blank."""
    for i, v in enumerate(values):
        if type(v) is not str:
            if v is None:
                raise src.error(i, f"missing required field {name!r}")
            raise src.error(i, f"field {name!r} must be a string, got {_tname(v)} {_show(v)}")
        if not v or v.isspace():
            raise src.error(i, f"field {name!r} is empty")
    return values


def _check_answers(src: _Source, values: list[Any]) -> list[str | None]:
    """Optional answers: text, or a number written as text."""
    out: list[str | None] = []
    for i, v in enumerate(values):
        if v is None or type(v) is str:
            out.append(v)
        elif type(v) in (int, float):
            out.append(str(v))
        else:
            raise src.error(i, f"field 'answer' must be a string or number, got {_tname(v)}")
    return out


def _check_rejected(src: _Source, values: list[Any]) -> list[list[str]]:
    """Each row: one rejected string or a non-empty list of them (CSV: a JSON list string)."""
    out: list[list[str]] = []
    for i, v in enumerate(values):
        if v is None:
            raise src.error(i, "missing required field 'rejected'")
        if isinstance(v, str) and not src.typed and v.lstrip().startswith("["):
            parsed = _json_list_or_none(v)  # CSV: a JSON list of strings is the list
            if parsed is not None and all(isinstance(r, str) for r in parsed):
                v = parsed
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not items:
            what = "an empty list" if isinstance(items, list) else _tname(v)
            expected = "a string or a non-empty list of strings"
            raise src.error(i, f"field 'rejected' must be {expected}, got {what}")
        for k, r in enumerate(items):
            if not isinstance(r, str) or not r.strip():
                got = "a blank string" if isinstance(r, str) else _tname(r)
                raise src.error(i, f"field 'rejected' item {k + 1} must be non-empty, got {got}")
        out.append(items)
    return out


def _check_messages(src: _Source, values: list[Any]) -> list[list[tuple[str, str]]]:
    """Each row: a non-empty list of {role, content} (content null reads as empty)."""
    out: list[list[tuple[str, str]]] = []
    for i, v in enumerate(values):
        if v is None:
            raise src.error(i, "missing required field 'messages'")
        if isinstance(v, str):
            parsed = _json_list_or_none(v)
            if parsed is None:
                raise src.error(i, f"field 'messages' must be {_TURNS}, got text that is not one")
            v = parsed
        if not isinstance(v, list) or not v:
            got = "an empty list" if isinstance(v, list) else _tname(v)
            raise src.error(i, f"field 'messages' must be {_TURNS}, got {got}")
        turns = []
        for k, m in enumerate(v):
            role = m.get("role") if isinstance(m, dict) else None
            content = m.get("content") if isinstance(m, dict) else None
            if not isinstance(role, str) or not role or not isinstance(content, str | None):
                turn = f"field 'messages' turn {k + 1}"
                raise src.error(i, f"{turn} must be {{role: text, content: text}}, got {_show(m)}")
            turns.append((role, content or ""))
        out.append(turns)
    return out


def _last_user(src: _Source, i: int, turns: list[tuple[str, str]]) -> str:
    for role, content in reversed(turns):
        if role == "user" and content.strip():
            return content
    raise src.error(i, "field 'messages' has no non-empty 'user' turn")


def _check_feedback(src: _Source, values: list[Any]) -> list[float | None]:
    """Chats' feedback: an integer 1..5 or null."""
    out = _label_values(src, "feedback", values)
    for i, v in enumerate(out):
        if v is not None and (v != int(v) or not 1 <= v <= 5):
            raise src.error(i, f"field 'feedback' must be an integer 1..5, got {_show(values[i])}")
    return out


def _check_ids(src: _Source, values: list[Any]) -> list[str]:
    """The file's own ids as strings: present, non-blank, unique."""
    ids: list[str] = []
    first: dict[str, int] = {}
    for i, v in enumerate(values):
        t = type(v)
        if t is str:
            s = v
        elif t is int or (t is float and v.is_integer()):
            s = str(int(v))
        elif v is None:
            raise src.error(i, "field 'id' is empty")
        else:
            raise src.error(i, f"field 'id' must be a string or integer, got {_tname(v)}")
        if not s.strip():
            raise src.error(i, "field 'id' is empty")
        j = first.setdefault(s, i)
        if j != i:
            raise src.error(i, f"duplicate id {_show(s)} (first at {src.locate(j)})")
        ids.append(s)
    return ids


def _hash_ids(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Stable content ids: sha1 of the canonical fields' JSON (16 hex), ``-2``... on repeats."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    encode, sha1 = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode, hashlib.sha1
    for row in rows:
        h = sha1(encode(row).encode()).hexdigest()[:16]
        k = seen.get(h, 0) + 1
        seen[h] = k
        ids.append(h if k == 1 else f"{h}-{k}")
    return ids


# --- labels and tags ---------------------------------------------------------------------------


def _is_number(v: Any, typed: bool) -> bool:
    if typed:
        return type(v) in (int, float, bool)
    return isinstance(v, str) and (_NUMBER.fullmatch(v) is not None or v.strip().lower() in _BOOLS)


def _column_class(src: _Source, column: str, values: list[Any], *, must_be_label: bool) -> str:
    """'label', 'tag', 'nested' (kept only in extra) or 'empty'; mixed numbers/text is an error."""
    first_number = first_other = None
    nested = False
    for i, v in enumerate(values):
        if v is None:
            continue
        if _is_number(v, src.typed):
            if first_number is None:
                first_number = i
        else:
            if first_other is None:
                first_other = i
            nested = nested or isinstance(v, list | dict | tuple)
        if first_number is not None and first_other is not None and not must_be_label:
            break
    if first_other is not None and (must_be_label or (src.typed and first_number is not None)):
        as_on = f" (as on {src.locate(first_number)})" if first_number is not None else ""
        got = _show(values[first_other])
        raise src.error(first_other, f"field {column!r} must be a number{as_on}, got {got}")
    if first_number is not None and first_other is None:
        return "label"
    if first_other is None:
        return "empty"
    return "nested" if nested else "tag"


def _label_values(src: _Source, column: str, values: list[Any]) -> list[float | None]:
    """Numbers (or CSV number text) as finite floats; null stays None."""
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if not _is_number(v, src.typed):
            raise src.error(i, f"field {column!r} must be a number, got {_show(v)}")
        try:
            x = float(_BOOLS.get(v.strip().lower(), v) if isinstance(v, str) else v)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            raise src.error(i, f"field {column!r} must be a finite number, got {_show(v)}")
        out.append(x)
    return out


def _objects_json(columns: list[tuple[str, list[Any]]], n: int) -> list[str]:
    """Per record, the JSON object of the given columns' non-null values (``"{}"`` when none)."""
    if not columns:
        return ["{}"] * n
    names = [c for c, _ in columns]
    encode = json.JSONEncoder(ensure_ascii=False, default=str).encode
    return [
        encode({k: v for k, v in zip(names, row, strict=True) if v is not None})
        for row in zip(*(vals for _, vals in columns), strict=True)
    ]


def _labels_table(ids: list[str], labels: dict[str, list[float | None]]) -> pa.Table:
    """Long form (example_id, name, value), one row per non-null label value."""
    id_array = pa.array(ids, pa.string())
    parts = []
    for name, values in labels.items():
        vals = pa.array(values, pa.float64())
        mask = vals.is_valid()
        kept = id_array.filter(mask)
        parts.append(
            pa.table(
                {
                    "example_id": kept,
                    "name": pa.array([name] * len(kept), pa.string()),
                    "value": vals.filter(mask),
                },
                schema=LABELS_SCHEMA,
            )
        )
    return pa.concat_tables(parts) if parts else LABELS_SCHEMA.empty_table()


def _responses_table(ids: list[str], chosen: list[str], rejected: list[list[str]]) -> pa.Table:
    """Per example: the chosen response (idx 0) then its rejected ones (idx 1..k)."""
    if not chosen:
        return RESPONSES_SCHEMA.empty_table()
    ex, idx, role, text = [], [], [], []
    for i, (c, rs) in enumerate(zip(chosen, rejected, strict=True)):
        ex.extend([ids[i]] * (1 + len(rs)))
        idx.extend(range(1 + len(rs)))
        role.append("chosen")
        role.extend(["rejected"] * len(rs))
        text.append(c)
        text.extend(rs)
    return pa.table(
        {"example_id": ex, "response_idx": pa.array(idx, pa.int32()), "role": role, "text": text},
        schema=RESPONSES_SCHEMA,
    )


# --- small helpers -----------------------------------------------------------------------------


def _json_list_or_none(text: str) -> list[Any] | None:
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        return None
    return v if isinstance(v, list) else None


def _tname(v: Any) -> str:
    return {dict: "object", list: "list", str: "text", bool: "boolean"}.get(
        type(v), type(v).__name__
    )


def _show(v: Any, width: int = 40) -> str:
    """A value for a one-line message: repr, shortened."""
    s = repr(v)
    return s if len(s) <= width else s[: width - 3] + "..."


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
