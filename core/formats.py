"""Export layouts (what each row holds) and containers (how the file is written), streaming.

The export step streams "export rows" out of the store in Arrow chunks (``Store.export_chunks``:
id, idx, prompt, answer, cluster, labels, scores, tags, fields kept only in ``extra`` as JSON text,
``chosen``/``rejected`` for preference data, ``position``, ``batch``). :func:`to_layout` turns a
chunk into one of the layouts trainers read, vectorised with pyarrow; :class:`ExportWriter` writes
the chunks as JSONL, Parquet or a Hugging Face ``save_to_disk`` folder, atomically and with the
same bytes for the same rows however they were chunked.

Layouts:

- ``rows``: every column (a chat's ``messages`` as a list of {role, content}).
- ``verl``: verl's RL Parquet (``RLHFDataset``): ``data_source``, ``prompt`` (chat messages),
  ``ability``, ``reward_model`` {style: "rule", ground_truth}, ``extra_info`` {index, id,
  cluster, batch, every numeric label and score}.
- ``trl-prompt``: TRL's conversational prompt-only form (GRPOTrainer, RLOOTrainer): ``prompt`` as
  messages, every other column beside it (GRPO hands extra columns to reward functions).
- ``trl-preference``: TRL's conversational preference form (DPOTrainer, RewardTrainer):
  ``prompt``, ``chosen``, ``rejected`` as messages, one row per (chosen, rejected) pair.
- ``trl-messages``: TRL's conversational language-modelling form (SFTTrainer): ``messages``.

    >>> t = pa.table({"id": ["a"], "prompt": ["2+2?"], "answer": ["4"]})
    >>> to_layout(t, "verl", kind="prompts", data_source="d").column_names
    ['data_source', 'prompt', 'ability', 'reward_model', 'extra_info']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from core.errors import StudioError

LAYOUTS = ("rows", "verl", "trl-prompt", "trl-preference", "trl-messages")
CONTAINERS = ("jsonl", "parquet", "hf")
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
ROW_GROUP = 65_536  # rows per Parquet row group / Arrow record batch, whatever the chunking
# columns that are not passed through beside a trainer layout's own columns
INTERNAL = ("idx", "position")
RESPONSES = ("chosen", "rejected", "messages")
KINDS_FOR = {"trl-preference": "preferences", "trl-messages": "chats"}
KIND_LAYOUT = {kind: layout for layout, kind in KINDS_FOR.items()}


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


def _parse_messages(col: pa.Array, *, upto_last_user: bool = False) -> pa.Array:
    """Chats' messages (JSON text of [{role, content}]) as a list<struct> column."""
    out = []
    for text in col.to_pylist():
        turns = [] if text is None else json.loads(text)
        turns = [{"role": str(t["role"]), "content": str(t["content"])} for t in turns]
        if upto_last_user:
            users = [i for i, t in enumerate(turns) if t["role"] == "user"]
            turns = turns[: users[-1] + 1] if users else turns
        out.append(turns)
    return pa.array(out, MESSAGES)


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


def _numeric(chunk: pa.Table) -> list[str]:
    skip = {"cluster", "batch", *INTERNAL}
    return [
        f.name
        for f in chunk.schema
        if f.name not in skip and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
    ]


def _beside(chunk: pa.Table, *, drop: tuple[str, ...]) -> dict[str, pa.Array]:
    """The columns a trainer layout keeps beside its own (ids, cluster, labels, tags...)."""
    return {
        name: _column(chunk, name) for name in chunk.column_names if name not in (*INTERNAL, *drop)
    }


def _verl(chunk: pa.Table, kind: str, data_source: str) -> pa.Table:
    n = chunk.num_rows
    names = chunk.column_names
    task = (
        pc.fill_null(_column(chunk, "task").cast(pa.string()), "general")
        if "task" in names
        else pa.repeat(pa.scalar("general"), n)
    )
    answer = _column(chunk, "answer").cast(pa.string()) if "answer" in names else pa.nulls(n)
    position = (
        _column(chunk, "position")
        if "position" in names
        else pa.array(np.arange(n, dtype=np.int64))
    )
    info = {"index": position.cast(pa.int64()), "id": _column(chunk, "id").cast(pa.string())}
    info["cluster"] = (
        _column(chunk, "cluster").cast(pa.int64())
        if "cluster" in names
        else pa.nulls(n, pa.int64())
    )
    if "batch" in names:
        info["batch"] = _column(chunk, "batch").cast(pa.int64())
    for name in _numeric(chunk):
        info[name] = _column(chunk, name).cast(pa.float64())
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
    rejected = _column(chunk, "rejected")
    counts = pc.fill_null(pc.list_value_length(rejected), 0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(chunk.num_rows), counts)
    which = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, int)
    flat = pc.list_flatten(rejected)
    base = chunk.take(pa.array(rows, pa.int64()))
    out = {
        "prompt": _messages("user", _column(base, "prompt")),
        "chosen": _messages("assistant", _column(base, "chosen")),
        "rejected": _messages("assistant", flat),
        "rejected_idx": pa.array(which.astype(np.int64)),
    }
    out.update(_beside(base, drop=("prompt", *RESPONSES)))
    return pa.table(out)


def to_layout(chunk: pa.Table, layout: str, *, kind: str, data_source: str = "") -> pa.Table:
    """A chunk of export rows in ``layout`` (see the module doc). ``kind`` is the dataset's
    (prompts, preferences, chats): trl-preference needs preferences, trl-messages chats."""
    if layout not in LAYOUTS:
        raise StudioError(f"unknown layout {layout!r}: use {', '.join(LAYOUTS)}")
    need = KINDS_FOR.get(layout)
    if need is not None and kind != need:
        raise StudioError(
            f"--format {layout} needs a dataset of kind {need}; this one is {kind} "
            f"(use {KIND_LAYOUT.get(kind, 'trl-prompt')} or trl-prompt)"
        )
    if layout == "verl":
        return _verl(chunk, kind, data_source)
    if layout == "trl-preference":
        return _preference(chunk)
    if layout == "trl-prompt":
        return pa.table(
            {"prompt": _prompt(chunk, kind), **_beside(chunk, drop=("prompt", *RESPONSES))}
        )
    if layout == "trl-messages":
        messages = _parse_messages(_column(chunk, "messages"))
        return pa.table({"messages": messages, **_beside(chunk, drop=("prompt", *RESPONSES))})
    out = _beside(chunk, drop=())
    if kind == "chats" and "messages" in out:
        out["messages"] = _parse_messages(out["messages"])
    return pa.table(out)


def layout_schema(input_schema: pa.Schema, layout: str, *, kind: str) -> pa.Schema:
    """The schema :func:`to_layout` gives for chunks of ``input_schema`` (fixed for a file)."""
    return to_layout(input_schema.empty_table(), layout, kind=kind).schema


# --- containers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Written:
    rows: int
    sha256: str  # of the data file (for hf: its .arrow file)
    path: Path


class ExportWriter:
    """Write chunks of one schema to ``out`` as jsonl, parquet or an hf folder.

    Everything goes to a temporary file or folder beside ``out`` and replaces it only when the
    context exits without an error; a failure leaves an existing ``out`` as it was. Row groups
    (Parquet) and record batches (hf) hold ``ROW_GROUP`` rows however the input was chunked, so
    the same rows give the same bytes.
    """

    def __init__(self, out: str | Path, container: str, schema: pa.Schema) -> None:
        if container not in CONTAINERS:
            raise StudioError(f"unknown container {container!r}: use {', '.join(CONTAINERS)}")
        self.out = Path(out)
        self.container = container
        self.schema = schema.remove_metadata()
        self.rows = 0
        self.result: Written | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def __enter__(self) -> ExportWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.out.name}."
        if self.container == "hf":
            self._tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=self.out.parent))
            self._data = self._tmp / "data-00000-of-00001.arrow"
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=self.out.parent)
            os.close(fd)
            self._tmp = self._data = Path(name)
        self._hash = hashlib.sha256()
        self._fh = open(self._data, "wb")  # closed in __exit__
        self._writer: Any = None
        if self.container == "parquet":
            self._writer = pq.ParquetWriter(self._fh, self.schema, compression="zstd")
        elif self.container == "hf":
            self._writer = ipc.new_stream(self._fh, self._hf_schema())
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
            text = "".join(
                json.dumps(r, ensure_ascii=False) + "\n" for r in head.to_pylist()
            ).encode("utf-8")
            self._fh.write(text)
        elif self.container == "parquet":
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
            with open(self._data, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    self._hash.update(block)
            digest = self._hash.hexdigest()
            if self.container == "hf":
                self._hf_metadata(digest)
            _replace(self._tmp, self.out)
            self.result = Written(rows=self.rows, sha256=digest, path=self.out)
        finally:
            if self.result is None:
                _remove(self._tmp)

    def _hf_metadata(self, digest: str) -> None:
        """dataset_info.json and state.json as datasets' save_to_disk writes them, with a
        fingerprint from the data's hash (datasets would draw a random one)."""
        from datasets import Features

        features = Features.from_arrow_schema(self.schema).to_dict()
        info = {
            "citation": "",
            "description": "",
            "features": features,
            "homepage": "",
            "license": "",
        }
        state = {
            "_data_files": [{"filename": self._data.name}],
            "_fingerprint": digest[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        for name, obj in (("dataset_info.json", info), ("state.json", state)):
            (self._tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _has_nulls(arr: pa.Array) -> bool:
    if arr.null_count:
        return True
    if pa.types.is_struct(arr.type):
        return any(_has_nulls(arr.field(i)) for i in range(arr.type.num_fields))
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        return _has_nulls(arr.flatten())
    return False


def _defined(arr: pa.Array) -> pa.Array:
    """``arr`` with every byte defined: a column holding nulls anywhere is rebuilt from Python
    values (builders zero the null slots); others are returned as they are."""
    return pa.array(arr.to_pylist(), type=arr.type) if _has_nulls(arr) else arr


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(tmp: Path, out: Path) -> None:
    """Move ``tmp`` onto ``out``; an existing folder is moved aside first and removed after."""
    if tmp.is_dir() and out.exists():
        aside = out.with_name(f".{out.name}.old")
        _remove(aside)
        os.replace(out, aside)
        os.replace(tmp, out)
        _remove(aside)
    else:
        if out.is_dir():
            raise StudioError(f"{out} is a folder; write the file elsewhere or remove it")
        os.replace(tmp, out)
