"""The plain rows: every column of the export rows but ``idx`` and ``position`` (a chat's
``messages`` as a list of {role, content}), for any reader. ``--format`` names the container
(jsonl, parquet, hf) instead of the layout.

    >>> ROWS.formats()
    {'jsonl': 'jsonl', 'parquet': 'parquet', 'hf': 'hf'}
"""

from __future__ import annotations

import pyarrow as pa

from core.export.layouts.base import Layout, beside
from core.export.layouts.messages import parse_messages


def rows(chunk: pa.Table, *, kind: str, data_source: str) -> pa.Table:
    """Every column as it is; a chat's stored turns (JSON text) as messages."""
    out = beside(chunk, layout="rows")
    if kind == "chats" and "messages" in out:
        out["messages"] = parse_messages(out["messages"])
    return pa.table(out)


ROWS = Layout(
    name="rows",
    summary="every column",
    rows=rows,
    keep_order="read the file sequentially (no shuffling sampler); a batch is a run of "
    "consecutive rows with the same batch number",
    by_container=True,
)
