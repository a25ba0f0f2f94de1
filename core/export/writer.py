"""The writer: chunks of export rows (in a layout) to one container, atomically, streaming.

:class:`ExportWriter` writes the chunks as JSONL (:func:`jsonl_bytes`, a vectorised encoder that
writes what ``json.dumps(ensure_ascii=False)`` would), Parquet or a Hugging Face ``save_to_disk``
folder, into a temp beside the output that replaces it only when all went well, and with the
same bytes for the same rows however they were chunked. Where it may write, and the temp files
and their modes, are :mod:`core.export.files`.
"""

from __future__ import annotations

import contextlib
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
import pyarrow.parquet as pq

from core.errors import StudioError
from core.export.files import (
    HF_DATA,
    check_export_folder,
    file_sha256,
    fsync_dir,
    make_temp,
    remove_path,
    sweep_temp_files,
    write_error,
)

# what ExportWriter writes: a JSON Lines file, a Parquet file, a save_to_disk folder
CONTAINERS = ("jsonl", "parquet", "hf")
ROW_GROUP = 65_536  # rows per Parquet row group / Arrow record batch, whatever the chunking


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


# --- JSON Lines, vectorised ---------------------------------------------------------------------
def large_text(text: str) -> pa.Scalar:
    """``text`` as a large_string scalar: what the JSON text columns are joined with (offsets
    past 2 GiB in a chunk stay valid)."""
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
    return pc.binary_join_element_wise(large_text('"'), s, large_text('"'), large_text(""))


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
            pc.binary_join_element_wise(s, large_text(".0"), large_text("")),
        )
    elif pa.types.is_null(t):
        out = pa.nulls(len(arr), pa.large_string())
    elif pa.types.is_struct(t) and t.num_fields:
        parts: list[Any] = []
        for i, field in enumerate(t):
            key = ("{" if i == 0 else ", ") + json.dumps(field.name, ensure_ascii=False) + ": "
            parts += [large_text(key), _json_values(arr.field(i))]
        text = pc.binary_join_element_wise(*parts, large_text("}"), large_text(""))
        out = pc.if_else(pc.is_valid(arr), text, pa.scalar(None, pa.large_string()))
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        items = pa.LargeListArray.from_arrays(offsets, _json_values(pc.list_flatten(arr)))
        text = pc.binary_join_element_wise(
            large_text("["),
            pc.binary_join(items, large_text(", ")),
            large_text("]"),
            large_text(""),
        )
        out = pc.if_else(pc.is_valid(arr), text, pa.scalar(None, pa.large_string()))
    else:  # dates, decimals, maps...: one Python pass over this column
        values = arr.to_pylist()
        return pa.array([json.dumps(v, ensure_ascii=False, default=str) for v in values])
    return pc.fill_null(out, large_text("null"))


def string_bytes(lines: pa.Array) -> pa.Buffer:
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
        parts += [large_text(key), _json_values(table.column(i).combine_chunks())]
    if not parts:
        return pa.py_buffer(b"{}\n" * table.num_rows)
    lines = pc.binary_join_element_wise(*parts, large_text("}\n"), large_text(""))
    return string_bytes(lines)


# --- containers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Written:
    rows: int
    sha256: str  # of the data file (for hf: its .arrow file)
    path: Path


class ExportWriter:
    """Write chunks of one schema to ``out`` as jsonl, parquet or an hf folder.

    Everything goes to a temporary file or folder beside ``out`` (named by
    :func:`core.export.files.temp_prefix`; leftovers of killed exports there are swept first) and
    replaces it only when the context exits without an error (then ``result`` holds the rows,
    the data file's sha256 and its path); a failure leaves an existing ``out`` as it was.
    ``before_replace`` runs once the data is complete and before it is renamed into place (the
    export step writes the manifest there, so the data is always the last thing renamed). An
    existing folder is replaced only if it is an hf export of ours (:func:`core.export.files.not_an_export`).
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
            fsync_dir(self.out.parent)
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
        fsync_dir(self._tmp)


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


# --- the last rename ----------------------------------------------------------------------------
def _check_replaceable(out: Path, container: str) -> None:
    """The last guard before the rename: never a folder for a one-file export, and an existing
    folder only when it is an hf export of ours."""
    if not out.is_dir():
        return
    if container != "hf":
        raise StudioError(f"{out} is a folder; write the file elsewhere or remove it")
    check_export_folder(out)


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
