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
- Names. Every label, tag and field kept in ``extra`` becomes a column of the store's wide view
  and of every export, so its name must be non-empty, free of control characters, differ from
  the others in more than case (DuckDB ignores case) and not be a built-in column
  (:data:`RESERVED_COLUMNS`, also compared ignoring case, and names starting ``feature:``). A
  label read under another name (``mapping``) is checked under that name.
- JSON: an object with a key twice is an error (Python's parser would keep the last silently);
  so are a lone surrogate escape (``"\\ud800"``, which no UTF-8 file or database can hold),
  values nested deeper than :data:`MAX_NESTING` and integers longer than Python converts.
  JSON text in a cell (CSV ``messages`` and ``rejected`` cells, a ``messages`` string in any
  format) is held to the same rules, the error naming the row and the field.

Warnings (:attr:`IngestTables.warnings`, one line each, the data is still read): preference rows
whose rejected response equals the chosen one (kept: some sets carry ties on purpose), and chats
with no assistant turn (``trl-messages`` would write them as user-only rows).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import StudioError
from core.export import INTERNAL as EXPORT_INTERNAL
from core.export import RESPONSES as EXPORT_RESPONSES
from core.filters import FEATURE_PREFIX
from core.store.schema import BASE_COLUMNS, DEDUP_COLUMNS

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
NUMBER_TEXT = re.compile(
    r"\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|nan|inf|infinity)\s*",
    re.IGNORECASE,
)
_BOOLS = {"true": 1.0, "false": 0.0}
_TURNS = "a non-empty (JSON) list of {role, content}"

# Column names the store and its exports already use, so a label, tag or extra field of that
# name would be hidden, dropped or clash (lowercase: DuckDB ignores case in column names).
# Read from the constants that define them: core.store's BASE_COLUMNS and DEDUP_COLUMNS (the
# wide view), core.export's INTERNAL (idx, position) and RESPONSES (chosen, rejected, messages,
# response). The rest have no constant yet, each written in one place: the wide view's own
# ``tags`` and ``extra`` (the examples table), Store.export_chunks' ``batch``, trl-preference's
# ``rejected_idx`` (core.export.layouts.trl_preference) and Store.map_points' ``top_features``
# and ``example_id``. tests/test_ingest.py checks that every column the store and export_chunks
# add is listed. The trainer layouts' TRAINER_NAMES are not here: each clashes only with its own
# layout, which refuses them itself in one line.
_UNNAMED_COLUMNS = ("tags", "extra", "batch", "rejected_idx", "top_features", "example_id")
RESERVED_COLUMNS = frozenset(
    n.lower()
    for n in (*BASE_COLUMNS, *DEDUP_COLUMNS, *EXPORT_INTERNAL, *EXPORT_RESPONSES, *_UNNAMED_COLUMNS)
)
# What Store.write_responses_dataset adds to each row of a preference set it derives from.
RESERVED_FOR_KIND: dict[str, frozenset[str]] = {
    "preferences": frozenset({"role", "response_of", "response_idx", "is_chosen"}),
}
# A filter reads ``feature:N`` as SAE feature N.
RESERVED_PREFIXES = (FEATURE_PREFIX,)
# Deeper JSON would meet Python's recursion limit somewhere downstream (export, the pages).
MAX_NESTING = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A JSON escape of a UTF-16 surrogate (U+D800..U+DFFF): the first, cheap test for a lone one
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# Each surrogate escape where an escape starts (after an even run of backslashes, so not the
# text "\\ud800"): a high one followed by a low one is a pair, one character, as the parser
# reads it; any other (group 1) is lone
_SURROGATE_UNIT = re.compile(
    r"(?<!\\)(?:\\\\)*\\u(?:[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|([dD][89a-fA-F][0-9a-fA-F]{2}))"
)


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
    warnings: tuple[str, ...] = ()  # one line each, naming the file; the data is still good

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
class Source:
    """A file read into columns (file order) with a way to name a record's position."""

    name: str
    columns: dict[str, list[Any]]
    n: int
    locate: Callable[[int], str]  # record index -> "line 7" / "row 7"
    typed: bool  # False for CSV, whose cells are all text
    warnings: list[str] = field(default_factory=list)  # what reading the file had to assume
    # False when the file's text holds no surrogate escape anywhere: no JSON cell of it can
    # hold a lone surrogate (see _json_cell)
    escapes: bool = True

    def error(self, i: int, message: str) -> StudioError:
        return StudioError(f"{self.name} {self.locate(i)}: {message}")


def read_dataset(
    path: str | Path, *, kind: Kind, mapping: dict[str, str] | None = None
) -> IngestTables:
    """Read one JSONL/JSON/Parquet/CSV file or ``datasets`` folder and validate it as ``kind``."""
    if kind not in CANONICAL:
        raise StudioError(f"unknown data kind {kind!r} (expected prompts, preferences or chats)")
    path = Path(path)
    src = load_source(path)
    fields, declared = _resolve_fields(src, kind=kind, mapping=mapping or {})
    for need in REQUIRED[kind]:
        if need not in fields:
            cols = ", ".join(src.columns) or "none"
            raise src.error(
                0, f"missing required field {need!r} (columns: {cols}; map one to {need!r})"
            )

    used = set(fields.values())
    labels, tags, nested = _labels_and_tags(src, used=used, declared=declared)
    _check_names(
        src,
        kind=kind,
        named=[
            *(("label", n) for n in (["feedback"] if "feedback" in fields else [])),
            *(("label", n) for n in labels),
            *(("tag", n) for n in tags),
            *(("field", n) for n in nested),
        ],
        declared=declared,
    )
    parsed = _parse_canonical(
        src, kind=kind, columns={f: src.columns[c] for f, c in fields.items()}
    )
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
        warnings=_warnings(src, kind=kind, ids=ids, parsed=parsed),
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


def _parse_canonical(src: Source, *, kind: str, columns: dict[str, list[Any]]) -> _Canonical:
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
    src: Source, *, used: set[str], declared: dict[str, str]
) -> tuple[dict[str, list[float | None]], dict[str, list[str | None]], list[str]]:
    """Sort the non-canonical columns into numeric labels, string tags and the names of those
    kept only in ``extra`` (lists, objects) (see module doc)."""
    renamed = {c: f for f, c in declared.items()}
    labels: dict[str, list[float | None]] = {}
    tags: dict[str, list[str | None]] = {}
    nested: list[str] = []
    for c, values in src.columns.items():
        if c in used:
            continue
        what = _column_class(src, c, values, must_be_label=c in renamed)
        if what == "label":
            labels[renamed.get(c, c)] = _label_values(src, c, values)
        elif what == "tag":
            tags[c] = [None if v is None else str(v) for v in values]
        elif what == "nested":
            nested.append(c)
    return labels, tags, nested


def _check_names(
    src: Source, *, kind: str, named: list[tuple[str, str]], declared: dict[str, str]
) -> None:
    """Each (what, name) a column of the store and its exports will carry: one line on the
    first name that is empty, holds a control character, is built in or repeats another but
    for case (see the module doc). A label read under another name is checked under that name
    (its file column goes only to ``extra``, under a name that no longer competes)."""
    reserved = RESERVED_COLUMNS | RESERVED_FOR_KIND.get(kind, frozenset())
    seen: dict[str, tuple[str, str]] = {}
    for what, name in named:
        if name in declared:
            fix = f"choose another name than {name!r} in --map {name}={declared[name]}"
        elif what == "label" and name.strip():
            fix = f"rename it with --map NEW={name} or in the file"
        else:
            fix = "rename it in the file"
        key = name.lower()
        clash = None
        if not name.strip():
            clash = "has an empty name"
        elif _CONTROL.search(name):
            clash = "has a control character in its name"
        elif key in reserved:
            clash = f"clashes with the built-in column {key!r}"
        elif key.startswith(RESERVED_PREFIXES):
            clash = "starts with 'feature:', which filters read as an SAE feature"
        elif key in seen:
            other_what, other = seen[key]
            clash = (
                f"and {other_what} {other!r} differ only in case, which the store's columns ignore"
            )
        if clash is not None:
            raise StudioError(f"{src.name}: {what} {name!r} {clash}; {fix}")
        seen[key] = (what, name)


def _warnings(src: Source, *, kind: str, ids: list[str], parsed: _Canonical) -> tuple[str, ...]:
    """Rows that are valid but probably not what the user meant (see the module doc), after
    what reading the file had to assume."""
    out = list(src.warnings)
    if kind == "preferences":
        ties = [
            i
            for i, (c, rs) in enumerate(zip(parsed.chosen, parsed.rejected, strict=True))
            if any(r.strip() == c.strip() for r in rs)
        ]
        if ties:
            out.append(
                f"{src.name}: {_count(ties, src.n)} have a rejected response equal to the chosen "
                f"one ({_first_ids(ties, ids)}); kept as ties, but such a pair teaches a "
                "preference trainer nothing"
            )
    if kind == "chats":
        turns = parsed.basis["messages"]
        alone = [
            i
            for i, t in enumerate(turns)
            if not any(m["role"] == "assistant" and m["content"].strip() for m in t)
        ]
        if alone:
            out.append(
                f"{src.name}: {_count(alone, src.n)} have no assistant turn "
                f"({_first_ids(alone, ids)}); --format trl-messages writes them as user-only rows"
            )
    return tuple(out)


def _count(rows: list[int], n: int) -> str:
    return f"{len(rows)} of {n} rows"


def _first_ids(rows: list[int], ids: list[str], k: int = 3) -> str:
    shown = ", ".join(show_value(ids[i]) for i in rows[:k])
    return f"first ids: {shown}" + (", ..." if len(rows) > k else "")


# --- reading -----------------------------------------------------------------------------------


def load_source(path: Path) -> Source:
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
    # most files hold no surrogate escape at all: then no record or cell needs that test
    escapes = _SURROGATE_ESCAPE.search(text) is not None
    if fmt == "jsonl":
        src = _read_jsonl(name, text, escapes=escapes)
    elif fmt == "json":
        src = _read_json(name, text)
    else:
        src = _read_csv(name, text, delimiter="\t" if fmt == "tsv" else ",")
    src.escapes = escapes
    return src


def _decode(path: Path) -> str:
    """The file as text; a byte that is not UTF-8 is an error naming its offset and line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise StudioError(f"{path.name}: not valid UTF-8 at byte {e.start} (line {line})") from None
    return text.removeprefix("\ufeff")


def _read_jsonl(name: str, text: str, *, escapes: bool = True) -> Source:
    """One JSON object a line; blank lines are skipped, lines counted as in an editor.
    ``escapes=False``: ``text`` holds no surrogate escape, so no line needs that test."""
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    parse, suspects = _parse, _suspects
    for lineno, raw in enumerate(text.split("\n"), 1):
        if not raw or raw.isspace():
            continue
        try:
            rec = parse(raw)
        except _PARSE_FAILURES as exc:
            where = f"{name} line {lineno}"
            hint = _array_hint(records, raw)
            raise _json_error(
                exc, raw, where=lambda _, w=where: w, record_depth=1, hint=hint
            ) from None
        if type(rec) is not dict:
            hint = _array_hint(records, raw)
            raise StudioError(
                f"{name} line {lineno}: expected a JSON object, got {type_name(rec)}{hint}"
            )
        surrogates, deep = suspects(raw, escapes=escapes)
        if surrogates or deep:
            where = f"{name} line {lineno}"
            _check_fields(lambda w=where: w, rec, surrogates=surrogates, deep=deep)
        records.append(rec)
        lines.append(lineno)
    return _records_source(name, records, lambda i: f"line {lines[i]}")


def _array_hint(records: list[Any], raw: str) -> str:
    """A JSON array in a .jsonl file fails on its first line: say what it probably is."""
    return "; a JSON array? name the file .json" if not records and raw.lstrip()[:1] == "[" else ""


def _read_json(name: str, text: str) -> Source:
    """A JSON list of records or ``{"data": [...]}``; record lines are found only on error."""
    if not text.strip():
        raise StudioError(f"{name}: no records")
    # JSON Lines in a .json file fail on the second object: say what it probably is
    hint = "; one object a line? name the file .jsonl" if text.lstrip()[:1] == "{" else ""
    depth = 3 if text.lstrip()[:1] == "{" else 2  # where a record's own keys sit
    doc = _parse_json(
        text,
        where=lambda pos: f"{name} line {1 + text.count(chr(10), 0, pos)}",
        record_depth=depth,
        hint=hint,
    )
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if not isinstance(doc, list):
        raise StudioError(f'{name}: expected a list of records or {{"data": [...]}}')
    # One parse of the whole file (a record at a time would cost more than every check); then
    # the checks on the records that may need them: a lone surrogate escape anywhere in the
    # file (rare: such a file is refused) has every record looked at, as before; the nesting
    # walk looks only at list and object values, a record of scalars costs a few type tests.
    surrogates = _lone_surrogate_escape(text, 0, len(text))
    nesting = _nesting
    for i, rec in enumerate(doc):
        if type(rec) is not dict:
            line = _json_record_line(text, i)
            raise StudioError(f"{name} line {line}: expected a JSON object, got {type_name(rec)}")
        deep = False
        for v in rec.values():
            if (type(v) is list or type(v) is dict) and nesting(v) >= MAX_NESTING:
                deep = True
                break
        if surrogates or deep:
            _check_fields(
                lambda i=i: f"{name} line {_json_record_line(text, i)}",
                rec,
                surrogates=surrogates,
                deep=True,
            )
    return _records_source(name, doc, lambda i: f"line {_json_record_line(text, i)}")


class _DuplicateKey(Exception):
    """Raised from inside the JSON parser: an object names ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's (key, value) pairs as a dict, refusing a key given twice (Python's parser
    would keep the last one silently, other readers the first)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs)
_DECODE, _SCAN = _DECODER.decode, _DECODER.scan_once
# What the parser raises on text ingest refuses: malformed JSON (JSONDecodeError, a ValueError),
# an integer longer than Python converts (ValueError), nesting past the interpreter's recursion
# limit, a key twice in one object
_PARSE_FAILURES = (ValueError, RecursionError, _DuplicateKey)
_NOT_JSON = object()  # what _json_cell returns for a cell that is not JSON at all


def _parse(text: str) -> Any:
    """``_DECODE(text)``, quicker where ``text`` is exactly one JSON value (a JSONL line, a
    cell): the scanner itself, as ``decode`` calls it, without ``decode``'s whitespace
    handling; text with whitespace around its value, or no value first, goes to ``decode``."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return _DECODE(text)
    return value if end == len(text) else _DECODE(text)


def _parse_json(text: str, *, where: Callable[[int], str], record_depth: int, hint: str) -> Any:
    """``text`` (a whole JSON file) parsed; every failure is one line (:func:`_json_error`)."""
    try:
        return _DECODE(text)
    except _PARSE_FAILURES as exc:
        raise _json_error(exc, text, where=where, record_depth=record_depth, hint=hint) from None


def _json_error(
    exc: BaseException,
    text: str,
    *,
    where: Callable[[int], str],
    record_depth: int,
    hint: str = "",
    cell: str | None = None,
) -> StudioError:
    """The one-line error for the parser's failure ``exc`` on ``text`` (a JSONL line, a whole
    JSON file or a cell's JSON): ``where(offset)`` names the file and the line or row; the
    field is ``cell`` (the field whose value ``text`` is), else the record's field a token scan
    finds where the parser names none (``record_depth``: how many containers enclose a
    record's keys)."""

    def locate(problem: str) -> tuple[int, str | None]:
        if cell is not None:
            return 0, cell
        return _locate(text, problem=problem, record_depth=record_depth)

    if isinstance(exc, json.JSONDecodeError):
        return StudioError(
            f"{where(exc.pos)}: malformed JSON: {exc.msg} (column {exc.colno}){hint}"
        )
    if isinstance(exc, _DuplicateKey):
        pos, field = locate("duplicate")
        shown = field is not None and (cell is not None or field != exc.key)
        inside = f" inside field {show_value(field)}" if shown else ""
        return StudioError(
            f"{where(pos)}: key {show_value(exc.key)} appears twice in one object{inside}; "
            "JSON keeps only one of them, so remove or rename the other"
        )
    if isinstance(exc, RecursionError):
        pos, field = locate("deep")
        return StudioError(f"{where(pos)}: {_field(field)} is nested more than {MAX_NESTING} deep")
    # a ValueError: an integer literal longer than Python converts (sys.int_info)
    pos, field = locate("long")
    return StudioError(
        f"{where(pos)}: {_field(field)} holds an integer of more than "
        f"{sys.get_int_max_str_digits()} digits"
    )


def _json_cell(src: Source, i: int, field: str, text: str) -> Any:
    """The JSON in a cell (a CSV cell, or text where a list was expected) held to the rules a
    JSON record is (see the module doc), one line naming the file, the row and ``field`` when
    it breaks one; :data:`_NOT_JSON` when the text is not JSON at all."""
    try:
        value = _parse(text)
    except json.JSONDecodeError:
        return _NOT_JSON
    except _PARSE_FAILURES as exc:
        where = f"{src.name} {src.locate(i)}"
        raise _json_error(exc, text, where=lambda _: where, record_depth=0, cell=field) from None
    surrogates, deep = _suspects(text, escapes=src.escapes)
    if surrogates or deep:
        where = f"{src.name} {src.locate(i)}"
        _check_fields(lambda: where, {field: value}, surrogates=surrogates, deep=deep)
    return value


def _field(name: str | None) -> str:
    return "a value" if name is None else f"field {show_value(name)}"


def _suspects(
    text: str, start: int = 0, end: int | None = None, *, escapes: bool = True
) -> tuple[bool, bool]:
    """(may hold a lone surrogate, may nest past MAX_NESTING) for the JSON in
    ``text[start:end]``: cheap tests that never miss, so most records skip
    :func:`_check_fields`'s walks. A lone surrogate needs a surrogate escape that is not half of
    an escaped pair (a pair, e.g. an emoji written by ``ensure_ascii``, is one character); deep
    nesting needs that many brackets. ``escapes=False``: the caller knows the text holds no
    surrogate escape (a file searched once, for a test on each of its lines).

        >>> _suspects(r'{"a": "\\ud83d\\ude00", "b": [1]}')
        (False, False)
    """
    end = len(text) if end is None else end
    surrogates = escapes and _lone_surrogate_escape(text, start, end)
    return surrogates, text.count("[", start, end) + text.count("{", start, end) > MAX_NESTING


def _lone_surrogate_escape(text: str, start: int, end: int) -> bool:
    """Whether JSON ``text[start:end]`` has a surrogate escape that is not half of a pair."""
    return _SURROGATE_ESCAPE.search(text, start, end) is not None and any(
        m.group(1) for m in _SURROGATE_UNIT.finditer(text, start, end)
    )


def _check_fields(
    where: Callable[[], str], fields: dict[str, Any], *, surrogates: bool, deep: bool
) -> None:
    """What the parser accepts but nothing after it can hold, in a record's (or a cell's)
    ``fields``: a lone surrogate or nesting deeper than MAX_NESTING, looked for only where a
    cheap test (:func:`_suspects`) says they may be. ``where`` names the file and line or row,
    only on error."""
    if surrogates:
        for key, value in fields.items():
            bad = _lone_surrogate(key) or _lone_surrogate(value)
            if bad is not None:
                raise StudioError(
                    f"{where()}: field {show_value(key)} holds a lone surrogate "
                    f"{bad!r} (an escape that is half of a UTF-16 pair, not a character); "
                    "fix or drop it"
                )
    if deep:
        for key, value in fields.items():
            if _nesting(value) >= MAX_NESTING:  # the record itself is one more level
                raise StudioError(
                    f"{where()}: field {show_value(key)} is nested more than {MAX_NESTING} deep"
                )


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in any key or string of ``value``, else None."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return v[e.start]
        elif isinstance(v, dict):
            todo.extend(v)
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return None


def _nesting(value: Any) -> int:
    """How many lists/objects enclose ``value``'s deepest part (0 for a scalar); a level at a
    time, so any depth the parser accepted is measured without recursion."""
    deepest, level = 0, [value]
    while True:
        level = [v for v in level if type(v) is list or type(v) is dict]
        if not level:
            return deepest
        deepest += 1
        below: list[Any] = []
        for v in level:
            below += v.values() if type(v) is dict else v
        level = below


_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:]|-?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?')


def _locate(text: str, *, problem: str, record_depth: int) -> tuple[int, str | None]:
    """(offset in ``text``, the record's field it lies in) of the first ``problem`` in JSON
    ``text``: ``deep`` (past MAX_NESTING inside a record), ``duplicate`` (a key twice in one
    object) or ``long`` (an integer past Python's digit limit). A token scan, not a parse, so
    it works where the parser failed; only called to word an error. (0, None) if not found."""
    limit = sys.get_int_max_str_digits() or math.inf
    stack: list[tuple[set[str], list[str | None]]] = []  # per open container: keys, last key

    def record_field() -> str | None:
        if len(stack) >= record_depth:
            return stack[record_depth - 1][1][0]
        return stack[-1][1][0] if stack else None

    pending: str | None = None
    for m in _TOKEN.finditer(text):
        tok = m.group()
        c = tok[0]
        if c == '"':
            pending = tok
            continue
        if c == ":" and pending is not None and stack:
            key = json.loads(pending)
            keys, last = stack[-1]
            if problem == "duplicate" and key in keys:
                return m.start(), record_field() if len(stack) > record_depth else key
            keys.add(key)
            last[0] = key
        elif c in "[{":
            stack.append((set(), [None]))
            if problem == "deep" and len(stack) - record_depth + 1 > MAX_NESTING:
                return m.start(), record_field()
        elif c in "]}":
            if stack:
                stack.pop()
        elif problem == "long" and tok.lstrip("-").isdigit() and len(tok.lstrip("-")) > limit:
            return m.start(), record_field()
        pending = None
    return 0, None


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


def _read_csv(name: str, text: str, *, delimiter: str) -> Source:
    """Header + rows; a record's line is where it starts (quoted cells may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    unnamed: list[str] = []
    rows: list[list[str]] = []
    starts: list[int] = []
    end = 0
    # a cell may be as long as the file (a long document); the csv module's default is 128 KiB
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = [h.strip() or f"unnamed_{j}" for j, h in enumerate(row)]
                unnamed = [h for h, raw in zip(header, row, strict=True) if not raw.strip()]
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
    finally:
        csv.field_size_limit(limit)
    if header is None or not rows:
        raise StudioError(f"{name}: no records")
    columns = {h: [r[j] or None for r in rows] for j, h in enumerate(header)}
    src = Source(name, columns, len(rows), lambda i: f"line {starts[i]}", typed=False)
    if unnamed:
        src.warnings.append(
            f"{name}: {len(unnamed)} header cells are empty; those columns are read as "
            f"{', '.join(map(repr, unnamed))}"
        )
    return src


def _read_saved_dataset(path: Path) -> Source:
    """A ``datasets`` ``save_to_disk`` folder: a Dataset, or a DatasetDict with one split."""
    name = path.name
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).exists() for m in markers):
        raise StudioError(f"{name}: a folder, but not a datasets save_to_disk folder")
    import datasets  # slow import, only needed here

    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError, pa.ArrowException) as e:
        raise StudioError(f"{name}: cannot load datasets folder: {_one_line(e)}") from None
    except (
        KeyError,
        TypeError,
        AttributeError,
    ) as e:  # state.json/dataset_info.json not as written
        raise StudioError(
            f"{name}: cannot load datasets folder: its metadata is not what datasets writes "
            f"({type(e).__name__}: {_one_line(e)})"
        ) from None
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


def _arrow_source(name: str, table: pa.Table) -> Source:
    if table.num_rows == 0:
        raise StudioError(f"{name}: no records")
    if len(set(table.column_names)) != table.num_columns:
        raise StudioError(f"{name}: duplicate column names in {table.column_names}")
    columns = {}
    for f in table.schema:
        if 1 + _type_nesting(f.type) > MAX_NESTING:  # the record is one level
            raise StudioError(
                f"{name}: field {show_value(f.name)} is nested more than {MAX_NESTING} deep"
            )
        column = table.column(f.name)
        try:
            columns[f.name] = column.to_pylist()
        except UnicodeDecodeError:  # Parquet does not check that its strings are UTF-8
            row = next(i for i in range(len(column)) if not _decodes(column, i))
            raise StudioError(
                f"{name} row {row + 1}: field {show_value(f.name)} is not valid UTF-8 text"
            ) from None
    return Source(name, columns, table.num_rows, lambda i: f"row {i + 1}", typed=True)


def _type_nesting(t: pa.DataType) -> int:
    """How many list/struct/map levels an Arrow type has (0 for a scalar type)."""
    depth, todo = 0, [(t, 0)]
    while todo:
        t, d = todo.pop()
        depth = max(depth, d)
        todo.extend((t.field(i).type, d + 1) for i in range(t.num_fields))
    return depth


def _decodes(column: pa.ChunkedArray, i: int) -> bool:
    try:
        column[i].as_py()
    except UnicodeDecodeError:
        return False
    return True


def _records_source(
    name: str, records: list[dict[str, Any]], locate: Callable[[int], str]
) -> Source:
    if not records:
        raise StudioError(f"{name}: no records")
    keys = dict.fromkeys(k for rec in records for k in rec)
    columns = {k: [rec.get(k) for rec in records] for k in keys}
    return Source(name, columns, len(records), locate, typed=True)


# --- fields ------------------------------------------------------------------------------------


def _resolve_fields(
    src: Source, *, kind: str, mapping: dict[str, str]
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


def _check_text(src: Source, name: str, values: list[Any]) -> list[str]:
    """A required string field: present, a string, not blank."""
    for i, v in enumerate(values):
        if type(v) is not str:
            if v is None:
                raise src.error(i, f"missing required field {name!r}")
            raise src.error(
                i, f"field {name!r} must be a string, got {type_name(v)} {show_value(v)}"
            )
        if not v or v.isspace():
            raise src.error(i, f"field {name!r} is empty")
    return values


def _check_answers(src: Source, values: list[Any]) -> list[str | None]:
    """Optional answers: text, or a number written as text."""
    out: list[str | None] = []
    for i, v in enumerate(values):
        if v is None or type(v) is str:
            out.append(v)
        elif type(v) in (int, float):
            out.append(str(v))
        else:
            raise src.error(i, f"field 'answer' must be a string or number, got {type_name(v)}")
    return out


def _check_rejected(src: Source, values: list[Any]) -> list[list[str]]:
    """Each row: one rejected string or a non-empty list of them (CSV: a JSON list string)."""
    out: list[list[str]] = []
    for i, v in enumerate(values):
        if v is None:
            raise src.error(i, "missing required field 'rejected'")
        if isinstance(v, str) and not src.typed and v.lstrip().startswith("["):
            parsed = _json_cell(src, i, "rejected", v)  # CSV: a JSON list of strings is the list
            if isinstance(parsed, list) and all(isinstance(r, str) for r in parsed):
                v = parsed
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not items:
            what = "an empty list" if isinstance(items, list) else type_name(v)
            expected = "a string or a non-empty list of strings"
            raise src.error(i, f"field 'rejected' must be {expected}, got {what}")
        for k, r in enumerate(items):
            if not isinstance(r, str) or not r.strip():
                got = "a blank string" if isinstance(r, str) else type_name(r)
                raise src.error(i, f"field 'rejected' item {k + 1} must be non-empty, got {got}")
        out.append(items)
    return out


def _check_messages(src: Source, values: list[Any]) -> list[list[tuple[str, str]]]:
    """Each row: a non-empty list of {role, content} (content null reads as empty)."""
    out: list[list[tuple[str, str]]] = []
    for i, v in enumerate(values):
        if v is None:
            raise src.error(i, "missing required field 'messages'")
        if isinstance(v, str):
            parsed = _json_cell(src, i, "messages", v)
            if not isinstance(parsed, list):
                raise src.error(i, f"field 'messages' must be {_TURNS}, got text that is not one")
            v = parsed
        if not isinstance(v, list) or not v:
            got = "an empty list" if isinstance(v, list) else type_name(v)
            raise src.error(i, f"field 'messages' must be {_TURNS}, got {got}")
        turns = []
        for k, m in enumerate(v):
            role = m.get("role") if isinstance(m, dict) else None
            content = m.get("content") if isinstance(m, dict) else None
            if not isinstance(role, str) or not role or not isinstance(content, str | None):
                turn = f"field 'messages' turn {k + 1}"
                raise src.error(
                    i, f"{turn} must be {{role: text, content: text}}, got {show_value(m)}"
                )
            turns.append((role, content or ""))
        out.append(turns)
    return out


def _last_user(src: Source, i: int, turns: list[tuple[str, str]]) -> str:
    for role, content in reversed(turns):
        if role == "user" and content.strip():
            return content
    raise src.error(i, "field 'messages' has no non-empty 'user' turn")


def _check_feedback(src: Source, values: list[Any]) -> list[float | None]:
    """Chats' feedback: an integer 1..5 or null."""
    out = _label_values(src, "feedback", values)
    for i, v in enumerate(out):
        if v is not None and (v != int(v) or not 1 <= v <= 5):
            raise src.error(
                i, f"field 'feedback' must be an integer 1..5, got {show_value(values[i])}"
            )
    return out


def _check_ids(src: Source, values: list[Any]) -> list[str]:
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
            raise src.error(i, f"field 'id' must be a string or integer, got {type_name(v)}")
        if not s.strip():
            raise src.error(i, "field 'id' is empty")
        j = first.setdefault(s, i)
        if j != i:
            raise src.error(i, f"duplicate id {show_value(s)} (first at {src.locate(j)})")
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
    return isinstance(v, str) and (
        NUMBER_TEXT.fullmatch(v) is not None or v.strip().lower() in _BOOLS
    )


def _column_class(src: Source, column: str, values: list[Any], *, must_be_label: bool) -> str:
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
        got = show_value(values[first_other])
        raise src.error(first_other, f"field {column!r} must be a number{as_on}, got {got}")
    if first_number is not None and first_other is None:
        return "label"
    if first_other is None:
        return "empty"
    return "nested" if nested else "tag"


def _label_values(src: Source, column: str, values: list[Any]) -> list[float | None]:
    """Numbers (or CSV number text) as finite floats; null stays None."""
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if not _is_number(v, src.typed):
            raise src.error(i, f"field {column!r} must be a number, got {show_value(v)}")
        try:
            x = float(_BOOLS.get(v.strip().lower(), v) if isinstance(v, str) else v)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            raise src.error(i, f"field {column!r} must be a finite number, got {show_value(v)}")
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


def json_list_or_none(text: str) -> list[Any] | None:
    """The JSON list in ``text``, else None: for core.rollouts, which reads a CSV cell that
    is no list (or JSON deeper or longer than Python parses) as text. Ingest's fields use
    :func:`_json_cell`, which holds the JSON to the rules a record is."""
    try:
        v = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return v if isinstance(v, list) else None


def type_name(v: Any) -> str:
    return {dict: "object", list: "list", str: "text", bool: "boolean"}.get(
        type(v), type(v).__name__
    )


def show_value(v: Any, width: int = 40) -> str:
    """A value for a one-line message: repr, shortened."""
    s = repr(v)
    return s if len(s) <= width else s[: width - 3] + "..."


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
