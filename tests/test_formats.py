"""core.formats: every layout in every container, read back with `datasets`; the same bytes
however the rows were chunked; atomic writes; preference pairs; wrong kinds; empty exports."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


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
