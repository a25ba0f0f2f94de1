"""Chat messages as Arrow arrays, shared by the conversational layouts: a text as a one-message
list, a prompt and its response as a two-message exchange, a chat's stored turns (JSON text)
parsed, and a row's prompt as messages (a chat's prompt is its turns up to and including the
last user turn).

    >>> messages("user", pa.array(["2+2?"])).to_pylist()
    [[{'role': 'user', 'content': '2+2?'}]]
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from core.errors import StudioError
from core.export.layouts.base import column
from core.export.writer import large_text, string_bytes

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)


def messages(role: str, content: pa.Array) -> pa.Array:
    """One single-message list per row: [{role, content}]."""
    n = len(content)
    inner = pa.StructArray.from_arrays(
        [pa.repeat(pa.scalar(role, pa.string()), n), content.cast(pa.string())],
        fields=list(MESSAGE),
    )
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), inner, MESSAGES)


def exchange(prompt: pa.Array, response: pa.Array) -> pa.Array:
    """One two-message list per row: [{user, prompt}, {assistant, response}].

    >>> exchange(pa.array(["hi"]), pa.array(["hello"])).to_pylist()
    [[{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]]
    """
    n = len(prompt)
    roles = pa.array(np.tile(np.array(["user", "assistant"], dtype=object), n), pa.string())
    order = np.arange(2 * n).reshape(2, n).T.ravel()  # prompt 0, response 0, prompt 1, ...
    content = pa.concat_arrays([prompt.cast(pa.string()), response.cast(pa.string())])
    inner = pa.StructArray.from_arrays([roles, content.take(order)], fields=list(MESSAGE))
    offsets = pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, inner, MESSAGES)


def parse_messages(col: pa.Array, *, upto_last_user: bool = False) -> pa.Array:
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
    text = pc.fill_null(col.cast(pa.large_string()), large_text("[]"))
    lines = pc.binary_join_element_wise(
        large_text('{"m": '), text, large_text("}\n"), large_text("")
    )
    longest = pc.max(pc.binary_length(lines)).as_py() or 0
    table = pajson.read_json(
        pa.BufferReader(string_bytes(lines)),
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


def prompt_messages(chunk: pa.Table, kind: str) -> pa.Array:
    """Each row's prompt as messages: a chat's turns up to its last user turn, else the prompt
    text as the one user turn."""
    if kind == "chats":
        if "messages" not in chunk.column_names:
            raise StudioError(
                "this chat dataset was ingested before chats kept their messages: ingest it "
                "again (--replace) to export conversations"
            )
        return parse_messages(column(chunk, "messages"), upto_last_user=True)
    return messages("user", column(chunk, "prompt"))
