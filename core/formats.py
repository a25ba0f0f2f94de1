"""Export layouts (what each row holds) and containers (how the file is written), streaming.

The export step streams "export rows" out of the store in Arrow chunks (``Store.export_chunks``:
id, idx, prompt, answer, cluster, labels, scores, tags, fields kept only in ``extra`` as JSON text,
``chosen``/``rejected`` for preference data, ``position``, ``batch``). :func:`to_layout` turns a
chunk into one of the layouts trainers read, vectorised with pyarrow; :class:`ExportWriter` writes
the chunks as JSONL, Parquet or a Hugging Face ``save_to_disk`` folder, atomically and with the
same bytes for the same rows however they were chunked.

Layouts (none carries ``idx`` or ``position``: the file's own order is the position):

- ``rows``: every other column (a chat's ``messages`` as a list of {role, content}).
- ``verl``: verl's RL Parquet (``RLHFDataset``): ``data_source``, ``prompt`` (chat messages),
  ``ability`` (the task, else "general"), ``reward_model`` {style: "rule", ground_truth},
  ``extra_info`` {index (the position), id, cluster, batch, every numeric label and score}.
- ``trl-prompt``: TRL's conversational prompt-only form (GRPOTrainer, RLOOTrainer): ``prompt`` as
  messages, every other column beside it (GRPO hands extra columns to reward functions).
- ``trl-preference``: TRL's conversational preference form (DPOTrainer, RewardTrainer):
  ``prompt``, ``chosen``, ``rejected`` as messages, one row per (chosen, rejected) pair in order
  (``rejected_idx`` says which); a prompt with no rejected response writes no row.
- ``trl-messages``: TRL's conversational language-modelling form (SFTTrainer): ``messages`` (a
  chat's turns; for a responses dataset, the prompt as the user turn and the response as the
  assistant's).

A chat's prompt (verl, trl-prompt) is its turns up to and including the last user turn.

    >>> t = pa.table({"id": ["a"], "prompt": ["2+2?"], "answer": ["4"]})
    >>> to_layout(t, "verl", kind="prompts", data_source="d").column_names
    ['data_source', 'prompt', 'ability', 'reward_model', 'extra_info']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from core.errors import StudioError
from core.export import make_temp, remove_path, sweep_temp_files, write_error

LAYOUTS = ("rows", "verl", "trl-prompt", "trl-preference", "trl-messages")
CONTAINERS = ("jsonl", "parquet", "hf")
# an hf folder as save_to_disk writes one shard, and what datasets adds when a trainer maps it
HF_DATA = "data-00000-of-00001.arrow"
HF_FILES = (HF_DATA, "dataset_info.json", "state.json")
HF_CACHE_GLOB = "cache-*.arrow"
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
ROW_GROUP = 65_536  # rows per Parquet row group / Arrow record batch, whatever the chunking
# columns that are not passed through beside a trainer layout's own columns
INTERNAL = ("idx", "position")
RESPONSES = ("chosen", "rejected", "messages", "response")
# layouts only some kinds can fill, and the conversational layout of each kind that has one
KINDS_FOR = {"trl-preference": ("preferences",), "trl-messages": ("chats", "responses")}
KIND_LAYOUT = {kind: layout for layout, kinds in KINDS_FOR.items() for kind in kinds}
# Column names a trainer would read as its own, so a label or tag of that name beside the layout's
# columns would change what it does (TRL's GRPO/RLOO _calculate_rewards, is_conversational, the
# SFT and DPO tokenizers' "tools"/"chat_template_kwargs"/images): an error, not a silent change.
TRAINER_NAMES = {
    "trl-prompt": (
        "completion",
        "completions",
        "completion_ids",
        "prompts",
        "trainer_state",
        "log_extra",
        "log_metric",
        "environments",
        "image",
        "images",
    ),
    "trl-preference": ("completion", "image", "images", "tools", "chat_template_kwargs"),
    "trl-messages": ("completion", "image", "images", "tools", "chat_template_kwargs"),
}


def container_for(out: Path, explicit: str | None) -> str:
    """The container: ``explicit`` if given, else by the output's suffix (.jsonl/.json, .parquet,
    none = an hf folder)."""
    if explicit is not None:
        if explicit not in CONTAINERS:
            raise StudioError(f"unknown container {explicit!r}: use {', '.join(CONTAINERS)}")
        return explicit
    suffix = Path(out).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix == "":
        return "hf"
    raise StudioError(
        f"{out}: cannot tell the container from the suffix {suffix!r}; use .jsonl, .parquet, "
        "no suffix (an hf folder) or --to"
    )


# --- layouts ------------------------------------------------------------------------------------
def _messages(role: str, content: pa.Array) -> pa.Array:
    """One single-message list per row: [{role, content}]."""
    n = len(content)
    inner = pa.StructArray.from_arrays(
        [pa.repeat(pa.scalar(role, pa.string()), n), content.cast(pa.string())],
        fields=list(MESSAGE),
    )
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), inner, MESSAGES)


def _exchange(prompt: pa.Array, response: pa.Array) -> pa.Array:
    """One two-message list per row: [{user, prompt}, {assistant, response}].

    >>> _exchange(pa.array(["hi"]), pa.array(["hello"])).to_pylist()
    [[{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]]
    """
    n = len(prompt)
    roles = pa.array(np.tile(np.array(["user", "assistant"], dtype=object), n), pa.string())
    order = np.arange(2 * n).reshape(2, n).T.ravel()  # prompt 0, response 0, prompt 1, ...
    content = pa.concat_arrays([prompt.cast(pa.string()), response.cast(pa.string())])
    inner = pa.StructArray.from_arrays([roles, content.take(order)], fields=list(MESSAGE))
    offsets = pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, inner, MESSAGES)


def _parse_messages(col: pa.Array, *, upto_last_user: bool = False) -> pa.Array:
    """Chats' messages (JSON text of [{role, content}], null = no turns) as list<struct>, parsed
    by Arrow's JSON reader; text it cannot take (pretty-printed, non-text content) by Python."""
    try:
        turns = _parse_json_messages(col)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        turns = _parse_messages_py(col)
    return _upto_last_user(turns) if upto_last_user else turns


def _parse_json_messages(col: pa.Array) -> pa.Array:
    if len(col) == 0:
        return pa.array([], MESSAGES)
    text = pc.fill_null(col.cast(pa.large_string()), _ls("[]"))
    lines = pc.binary_join_element_wise(_ls('{"m": '), text, _ls("}\n"), _ls(""))
    longest = pc.max(pc.binary_length(lines)).as_py() or 0
    table = pajson.read_json(
        pa.BufferReader(_string_bytes(lines)),
        read_options=pajson.ReadOptions(use_threads=False, block_size=max(1 << 22, 2 * longest)),
        parse_options=pajson.ParseOptions(
            explicit_schema=pa.schema([("m", MESSAGES)]), unexpected_field_behavior="ignore"
        ),
    )
    if table.num_rows != len(col):
        raise pa.ArrowInvalid("messages text spans lines")
    turns = table.column("m").combine_chunks()
    if turns.null_count or pc.any(pc.is_null(pc.list_flatten(turns).field("role"))).as_py():
        raise pa.ArrowInvalid("a chat that is not a list of {role, content}")
    return turns.cast(MESSAGES)


def _parse_messages_py(col: pa.Array) -> pa.Array:
    out = []
    for text in col.to_pylist():
        turns = [] if text is None else json.loads(text)
        out.append([{"role": str(t["role"]), "content": str(t["content"])} for t in turns])
    return pa.array(out, MESSAGES)


def _upto_last_user(turns: pa.Array) -> pa.Array:
    """Each list cut after its last user turn (kept whole when it has none)."""
    n = len(turns)
    lengths = pc.fill_null(pc.list_value_length(turns), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(turns)
    owner = np.repeat(np.arange(n), lengths)
    place = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    user = pc.fill_null(pc.equal(flat.field("role"), "user"), False)
    user = user.to_numpy(zero_copy_only=False)
    last = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last, owner[user], place[user])
    keep = np.where(last >= 0, last + 1, lengths)
    offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int32)
    values = flat.filter(pa.array(place < keep[owner]))
    return pa.ListArray.from_arrays(pa.array(offsets), values, MESSAGES)


def _prompt(chunk: pa.Table, kind: str) -> pa.Array:
    if kind == "chats":
        if "messages" not in chunk.column_names:
            raise StudioError(
                "this chat dataset was ingested before chats kept their messages: ingest it "
                "again (--replace) to export conversations"
            )
        return _parse_messages(_column(chunk, "messages"), upto_last_user=True)
    return _messages("user", _column(chunk, "prompt"))


def _column(chunk: pa.Table, name: str) -> pa.Array:
    return chunk.column(name).combine_chunks()


def _beside(chunk: pa.Table, *, layout: str, drop: tuple[str, ...]) -> dict[str, pa.Array]:
    """The columns a trainer layout keeps beside its own (ids, cluster, labels, tags...)."""
    names = [name for name in chunk.column_names if name not in (*INTERNAL, *drop)]
    clash = [name for name in names if name in TRAINER_NAMES.get(layout, ())]
    if clash:
        raise StudioError(
            f"--format {layout}: the column {clash[0]!r} would be read by the trainer as its own "
            "field; rename it (ingest --map) or drop it before exporting"
        )
    return {name: _column(chunk, name) for name in names}


def _verl(chunk: pa.Table, kind: str, data_source: str) -> pa.Table:
    n = chunk.num_rows
    names = chunk.column_names
    task = (
        pc.fill_null(_column(chunk, "task").cast(pa.string()), "general")
        if "task" in names
        else pa.repeat(pa.scalar("general"), n)
    )
    answer = _column(chunk, "answer").cast(pa.string()) if "answer" in names else pa.nulls(n)
    # the row's place in the file; without one, its ingest index (a chunk alone has no place)
    where = next((c for c in ("position", "idx") if c in names), None)
    index = _column(chunk, where) if where else pa.nulls(n, pa.int64())
    info = {"index": index.cast(pa.int64()), "id": _column(chunk, "id").cast(pa.string())}
    info["cluster"] = (
        _column(chunk, "cluster").cast(pa.int64())
        if "cluster" in names
        else pa.nulls(n, pa.int64())
    )
    if "batch" in names:
        info["batch"] = _column(chunk, "batch").cast(pa.int64())
    # what a reward function may need: every label and score (as float), every tag (task
    # among them) and every field kept in extra (JSON text, e.g. reasoning-gym's metadata)
    skip = {"id", "cluster", "batch", "prompt", "answer", *INTERNAL, *RESPONSES}
    for field in chunk.schema:
        if field.name in skip:
            continue
        if field.name in info:
            raise StudioError(
                f"--format verl: the column {field.name!r} would overwrite "
                f"extra_info.{field.name}; rename it (ingest --map)"
            )
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
        info[field.name] = _column(chunk, field.name).cast(
            pa.float64()
            if numeric
            else field.type
            if pa.types.is_boolean(field.type)
            else pa.string()
        )
    return pa.table(
        {
            "data_source": pa.repeat(pa.scalar(data_source, pa.string()), n),
            "prompt": _prompt(chunk, kind),
            "ability": task,
            "reward_model": pa.StructArray.from_arrays(
                [pa.repeat(pa.scalar("rule"), n), answer.cast(pa.string())],
                names=["style", "ground_truth"],
            ),
            "extra_info": pa.StructArray.from_arrays(list(info.values()), names=list(info)),
        }
    )


def _preference(chunk: pa.Table) -> pa.Table:
    """One row per (chosen, rejected) pair. With a ``rejected_idx`` column (the export planned
    and batched the pair rows, :meth:`core.store.Store.export_chunks`), each row already is the
    pair it names and ``rejected`` its text; without one, each prompt's row (``rejected`` a list)
    expands into one row per rejected response, in order."""
    rejected = _column(chunk, "rejected")
    if "rejected_idx" in chunk.column_names:
        which = _column(chunk, "rejected_idx").to_numpy(zero_copy_only=False).astype(np.int64)
        base, picked = chunk.drop_columns(["rejected_idx"]), rejected
    else:
        counts = pc.fill_null(pc.list_value_length(rejected), 0).to_numpy(zero_copy_only=False)
        counts = counts.astype(np.int64)
        rows = np.repeat(np.arange(chunk.num_rows), counts)
        which = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        base = chunk.take(pa.array(rows, pa.int64()))
        picked = pc.list_flatten(rejected)
    out = {
        "prompt": _messages("user", _column(base, "prompt")),
        "chosen": _messages("assistant", _column(base, "chosen")),
        "rejected": _messages("assistant", picked),
        "rejected_idx": pa.array(which, pa.int64()),
    }
    out.update(_beside(base, layout="trl-preference", drop=("prompt", *RESPONSES)))
    return pa.table(out)


def to_layout(chunk: pa.Table, layout: str, *, kind: str, data_source: str = "") -> pa.Table:
    """A chunk of export rows in ``layout`` (see the module doc). ``kind`` is the dataset's
    (prompts, preferences, chats): trl-preference needs preferences, trl-messages chats.
    ``data_source`` fills verl's column of that name (verl picks the reward function by it)."""
    if layout not in LAYOUTS:
        raise StudioError(f"unknown layout {layout!r}: use {', '.join(LAYOUTS)}")
    need = KINDS_FOR.get(layout)
    if need is not None and kind not in need:
        alt = KIND_LAYOUT.get(kind)
        raise StudioError(
            f"--format {layout} needs a dataset of kind {' or '.join(need)}; this one is {kind} "
            f"(use {alt + ' or trl-prompt' if alt else 'trl-prompt, verl or rows'})"
        )
    if layout == "verl":
        return _verl(chunk, kind, data_source)
    if layout == "trl-preference":
        return _preference(chunk)
    beside = _beside(chunk, layout=layout, drop=("prompt", *RESPONSES) if layout != "rows" else ())
    if layout == "trl-prompt":
        return pa.table({"prompt": _prompt(chunk, kind), **beside})
    if layout == "trl-messages" and kind == "responses":
        turns = _exchange(_column(chunk, "prompt"), _column(chunk, "response"))
        return pa.table({"messages": turns, **beside})
    if layout == "trl-messages":
        return pa.table({"messages": _parse_messages(_column(chunk, "messages")), **beside})
    if kind == "chats" and "messages" in beside:
        beside["messages"] = _parse_messages(beside["messages"])
    return pa.table(beside)


def layout_schema(input_schema: pa.Schema, layout: str, *, kind: str) -> pa.Schema:
    """The schema :func:`to_layout` gives for chunks of ``input_schema`` (fixed for a file)."""
    return to_layout(input_schema.empty_table(), layout, kind=kind).schema


# --- JSON Lines, vectorised ---------------------------------------------------------------------
def _ls(text: str) -> pa.Scalar:
    return pa.scalar(text, pa.large_string())


# what json.dumps(ensure_ascii=False) escapes: these always, the other control characters when
# a column holds any
_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))
_RARE_ESCAPES = tuple(
    (chr(c), {8: "\\b", 12: "\\f"}.get(c, f"\\u{c:04x}"))
    for c in range(32)
    if chr(c) not in "\n\r\t"
)


def _json_strings(arr: pa.Array) -> pa.Array:
    s = arr.cast(pa.large_string())
    for char, escaped in _ESCAPES:
        s = pc.replace_substring(s, char, escaped)
    if pc.any(pc.match_substring_regex(s, r"[\x00-\x1f]")).as_py():
        for char, escaped in _RARE_ESCAPES:
            s = pc.replace_substring(s, char, escaped)
    return pc.binary_join_element_wise(_ls('"'), s, _ls('"'), _ls(""))


def _json_values(arr: pa.Array) -> pa.Array:
    """Each value of ``arr`` as JSON text (large_string, no nulls: a null is ``null``), the way
    json.dumps(ensure_ascii=False) writes it, but floats in Arrow's shortest round-trip form
    (always with a '.' or an exponent, so they read back as floats) and NaN/inf as null."""
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        out = _json_strings(arr)
    elif pa.types.is_integer(t) or pa.types.is_boolean(t):
        out = arr.cast(pa.large_string())
    elif pa.types.is_floating(t):
        finite = pc.if_else(pc.is_finite(arr), arr, pa.scalar(None, t))
        s = finite.cast(pa.large_string())
        out = pc.if_else(
            pc.match_substring_regex(s, "[.e]"),
            s,
            pc.binary_join_element_wise(s, _ls(".0"), _ls("")),
        )
    elif pa.types.is_null(t):
        out = pa.nulls(len(arr), pa.large_string())
    elif pa.types.is_struct(t) and t.num_fields:
        parts: list[Any] = []
        for i, field in enumerate(t):
            key = ("{" if i == 0 else ", ") + json.dumps(field.name, ensure_ascii=False) + ": "
            parts += [_ls(key), _json_values(arr.field(i))]
        text = pc.binary_join_element_wise(*parts, _ls("}"), _ls(""))
        out = pc.if_else(pc.is_valid(arr), text, pa.scalar(None, pa.large_string()))
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        items = pa.LargeListArray.from_arrays(offsets, _json_values(pc.list_flatten(arr)))
        text = pc.binary_join_element_wise(
            _ls("["), pc.binary_join(items, _ls(", ")), _ls("]"), _ls("")
        )
        out = pc.if_else(pc.is_valid(arr), text, pa.scalar(None, pa.large_string()))
    else:  # dates, decimals, maps...: one Python pass over this column
        values = arr.to_pylist()
        return pa.array([json.dumps(v, ensure_ascii=False, default=str) for v in values])
    return pc.fill_null(out, _ls("null"))


def _string_bytes(lines: pa.Array) -> pa.Buffer:
    """The text of a string array, all values back to back, without copying."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset :]
    start, end = int(offsets[0]), int(offsets[len(lines)])
    return lines.buffers()[2].slice(start, end - start) if end > start else pa.py_buffer(b"")


def jsonl_bytes(table: pa.Table) -> pa.Buffer:
    """``table`` as JSON Lines: one object per row, keys in column order, UTF-8 unescaped.

    >>> jsonl_bytes(pa.table({"a": [1, None], "b": ["é", 'q"']})).to_pybytes().decode()
    '{"a": 1, "b": "é"}\\n{"a": null, "b": "q\\\\""}\\n'
    """
    if table.num_rows == 0:
        return pa.py_buffer(b"")
    parts: list[Any] = []
    for i, name in enumerate(table.column_names):
        key = ("{" if i == 0 else ", ") + json.dumps(name, ensure_ascii=False) + ": "
        parts += [_ls(key), _json_values(table.column(i).combine_chunks())]
    if not parts:
        return pa.py_buffer(b"{}\n" * table.num_rows)
    lines = pc.binary_join_element_wise(*parts, _ls("}\n"), _ls(""))
    return _string_bytes(lines)


# --- containers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Written:
    rows: int
    sha256: str  # of the data file (for hf: its .arrow file)
    path: Path


class ExportWriter:
    """Write chunks of one schema to ``out`` as jsonl, parquet or an hf folder.

    Everything goes to a temporary file or folder beside ``out`` (named by
    :func:`core.export.temp_prefix`; leftovers of killed exports there are swept first) and
    replaces it only when the context exits without an error (then ``result`` holds the rows,
    the data file's sha256 and its path); a failure leaves an existing ``out`` as it was.
    ``before_replace`` runs once the data is complete and before it is renamed into place (the
    export step writes the manifest there, so the data is always the last thing renamed). An
    existing folder is replaced only if it is an hf export of ours (:func:`not_an_export`).
    Row groups (Parquet) and record batches (hf) hold ``ROW_GROUP`` rows however the input was
    chunked, each written from one contiguous table, so the same rows give the same bytes.
    """

    def __init__(
        self,
        out: str | Path,
        container: str,
        schema: pa.Schema,
        *,
        before_replace: Callable[[Written], None] | None = None,
    ) -> None:
        if container not in CONTAINERS:
            raise StudioError(f"unknown container {container!r}: use {', '.join(CONTAINERS)}")
        self.out = Path(out)
        self.container = container
        self.schema = schema.remove_metadata()
        self.before_replace = before_replace
        self.rows = 0
        self.result: Written | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def __enter__(self) -> ExportWriter:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            sweep_temp_files(self.out.parent)
            self._tmp = make_temp(self.out, folder=self.container == "hf")
        except OSError as exc:
            raise write_error(self.out, exc) from None
        self._data = self._tmp / HF_DATA if self.container == "hf" else self._tmp
        self._writer: Any = None
        try:
            self._fh = open(self._data, "wb")  # closed in __exit__
            if self.container == "parquet":
                self._writer = pq.ParquetWriter(self._fh, self.schema, compression="zstd")
            elif self.container == "hf":
                self._writer = ipc.new_stream(self._fh, self._hf_schema())
        except BaseException:
            remove_path(self._tmp)
            raise
        return self

    def write(self, table: pa.Table) -> None:
        table = table.cast(self.schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= ROW_GROUP:
            self._flush(ROW_GROUP)

    def _flush(self, n: int) -> None:
        whole = pa.concat_tables(self._pending)
        head, rest = whole.slice(0, n), whole.slice(n)
        self._pending, self._pending_rows = [rest], rest.num_rows
        if head.num_rows == 0:
            return
        self.rows += head.num_rows
        if self.container == "jsonl":
            self._fh.write(jsonl_bytes(head))
            return
        # one contiguous table: Parquet cuts pages where the input's chunks end
        head = head.combine_chunks()
        if self.container == "parquet":
            self._writer.write_table(head, row_group_size=ROW_GROUP)
        else:
            # Arrow IPC writes raw buffers, and the value under a null slot is undefined memory:
            # rebuild such columns so the same rows give the same bytes
            head = pa.table(
                [_defined(c.combine_chunks()) for c in head.columns], schema=head.schema
            )
            for batch in head.to_batches(max_chunksize=ROW_GROUP):
                self._writer.write_batch(batch)

    def _hf_schema(self) -> pa.Schema:
        from datasets import Features

        features = Features.from_arrow_schema(self.schema)
        return self.schema.with_metadata(
            {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._flush(self._pending_rows)
                if self._writer is not None:
                    self._writer.close()
                self._fh.flush()
                os.fsync(self._fh.fileno())
            elif self._writer is not None:
                # close it now: a ParquetWriter left open writes its footer when collected
                with contextlib.suppress(Exception):
                    self._writer.close()
            self._fh.close()
            if exc_type is not None:
                return
            digest = file_sha256(self._data)
            if self.container == "hf":
                self._hf_metadata(digest)
            written = Written(rows=self.rows, sha256=digest, path=self.out)
            _check_replaceable(self.out, self.container)
            if self.before_replace is not None:
                self.before_replace(written)
            try:
                _replace(self._tmp, self.out)
            except OSError as exc:
                raise write_error(self.out, exc) from None
            _fsync_dir(self.out.parent)
            self.result = written
        finally:
            if self.result is None:
                remove_path(self._tmp)

    def _hf_metadata(self, digest: str) -> None:
        """dataset_info.json and state.json as datasets' save_to_disk writes them (same keys,
        order and indent), with a fingerprint from the data's hash where datasets would draw a
        random one."""
        from datasets import Features

        info = {
            "citation": "",
            "description": "",
            "features": Features.from_arrow_schema(self.schema).to_dict(),
            "homepage": "",
            "license": "",
        }
        state = {
            "_data_files": [{"filename": HF_DATA}],
            "_fingerprint": digest[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        for name, text in (
            ("dataset_info.json", json.dumps(info, indent=2)),  # keys sorted above, not within
            ("state.json", json.dumps(state, indent=2, sort_keys=True)),
        ):
            with open(self._tmp / name, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(self._tmp)


# --- defined bytes for Arrow IPC ----------------------------------------------------------------
def _has_nulls(arr: pa.Array) -> bool:
    if arr.null_count:
        return True
    if pa.types.is_struct(arr.type):
        return any(_has_nulls(arr.field(i)) for i in range(arr.type.num_fields))
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        return _has_nulls(pc.list_flatten(arr))
    return False


def _validity(arr: pa.Array) -> pa.Buffer | None:
    """A fresh validity bitmap (unused trailing bits zero), None when nothing is null."""
    if not arr.null_count:
        return None
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def _defined(arr: pa.Array) -> pa.Array:
    """``arr`` with every byte the IPC writer copies defined: values under null slots zeroed,
    null lists and strings empty, bitmaps rebuilt. Arrays with no null anywhere (and no
    booleans, whose bitmaps may carry stray trailing bits) are returned as they are."""
    t = arr.type
    if not _has_nulls(arr) and not pa.types.is_boolean(t):
        return arr
    n = len(arr)
    if pa.types.is_boolean(t):
        bits = pa.py_buffer(
            np.packbits(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), bitorder="little")
        )
        return pa.Array.from_buffers(t, n, [_validity(arr), bits], arr.null_count)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        dense = pc.fill_null(arr, pa.scalar(0, t))
        return pa.Array.from_buffers(t, n, [_validity(arr), dense.buffers()[1]], arr.null_count)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        dense = pc.fill_null(arr, pa.scalar("", t))
        buffers = [_validity(arr), *dense.buffers()[1:]]
        return pa.Array.from_buffers(t, n, buffers, arr.null_count)
    if pa.types.is_struct(t):
        # flatten() folds the struct's own nulls into its children
        children = [_defined(child) for child in arr.flatten()]
        return pa.Array.from_buffers(t, n, [_validity(arr)], arr.null_count, children=children)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        width = np.int64 if pa.types.is_large_list(t) else np.int32
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(width)
        values = _defined(pc.list_flatten(arr))
        return pa.Array.from_buffers(
            t, n, [_validity(arr), pa.py_buffer(offsets)], arr.null_count, children=[values]
        )
    return pa.array(arr.to_pylist(), type=t)  # other types: builders zero the null slots


# --- files --------------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the OS allows opening a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_replaceable(out: Path, container: str) -> None:
    """The last guard before the rename: never a folder for a one-file export, and an existing
    folder only when it is an hf export of ours."""
    if not out.is_dir():
        return
    if container != "hf":
        raise StudioError(f"{out} is a folder; write the file elsewhere or remove it")
    check_export_folder(out)


def check_export_folder(out: Path) -> None:
    """A one-line StudioError unless the existing folder ``out`` may be replaced by an hf
    export (:func:`not_an_export`)."""
    why = not_an_export(out)
    if why is not None:
        raise StudioError(
            f"--out {out}: an hf export replaces the whole folder, and {why}; pick another "
            "path or empty that folder"
        )


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (an export's data, for its manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def not_an_export(folder: Path) -> str | None:
    """Why an existing ``folder`` is not an hf export this tool wrote (None when it is one, or
    empty): it must hold only ``HF_FILES`` (plus ``cache-*.arrow`` files, which datasets adds
    when a trainer maps the set) and a ``state.json`` whose fingerprint is the data file's
    sha256, as :class:`ExportWriter` writes it (datasets' own save_to_disk draws a random one)."""
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return None
    foreign = [
        n
        for n in names
        if n not in HF_FILES and not (Path(n).match(HF_CACHE_GLOB) and (folder / n).is_file())
    ]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return f"it holds {', '.join(repr(n) for n in foreign[:3])}{more} that no export wrote"
    missing = [n for n in HF_FILES if not (folder / n).is_file()]
    if missing:
        return f"it lacks {missing[0]}, so it is not an export's folder"
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        fingerprint = state.get("_fingerprint") if isinstance(state, dict) else None
        matches = fingerprint == file_sha256(folder / HF_DATA)[:16]
    except (OSError, ValueError):
        matches = False
    if not matches:
        return "its state.json does not name its data as an export's does (another writer's)"
    return None


def _replace(tmp: Path, out: Path) -> None:
    """Move ``tmp`` onto ``out``; an existing folder (or file, for an hf folder) is first moved
    aside under the temp's name (``...old``, swept if a kill leaves it) and removed after."""
    if tmp.is_dir() and os.path.lexists(out):
        aside = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old")
        os.replace(out, aside)
        os.replace(tmp, out)
        remove_path(aside)
    else:
        if out.is_dir():
            raise StudioError(f"{out} is a folder; write the file elsewhere or remove it")
        os.replace(tmp, out)
