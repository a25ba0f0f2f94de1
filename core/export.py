"""Export: filter rows, order them, write JSONL or Parquet atomically with a manifest beside them.

Filters come from the CLI as small expressions, parsed here into typed :class:`Filter` objects;
the store turns them into parameterised SQL (no user text is ever pasted into SQL).

Example:
    >>> parse_where("difficulty<=3")
    Filter(column='difficulty', op='<=', value=3.0)
    >>> parse_where("cluster in 1,4")
    Filter(column='cluster', op='in', value=[1.0, 4.0])
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import StudioError
from core.store import Filter

Order = Literal["curriculum", "random", "none"]
Format = Literal["jsonl", "parquet", "verl"]
FORMATS = ("jsonl", "parquet", "verl")

_WHERE = re.compile(
    r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|!=|==|=|<|>|\s+not\s+in\s+|\s+in\s+)\s*(.+?)\s*$"
)


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text.strip().strip("'\"")


def parse_where(expr: str) -> Filter:
    """``col<op>value`` with op one of < <= > >= = != , or ``col in a,b`` / ``col not in a,b``."""
    m = _WHERE.match(expr)
    if not m:
        raise StudioError(
            f"--where {expr!r}: expected COLUMN<op>VALUE (op: < <= > >= = !=) "
            "or 'COLUMN in A,B,...'"
        )
    col, op, raw = m.group(1), " ".join(m.group(2).split()), m.group(3)
    if op in ("in", "not in"):
        return Filter(col, op, [_value(v) for v in raw.split(",") if v.strip()])  # type: ignore[arg-type]
    return Filter(col, "=" if op == "==" else op, _value(raw))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ExportConfig:
    """Options of the export step."""

    order: Order = "none"
    fmt: Format = "jsonl"
    seed: int = 0
    difficulty_column: str = "difficulty"
    batch_size: int | None = None  # cluster-first batches of this size (core.batching)
    mix: float = 0.2  # share of each batch from other clusters (SAERL's moderate mixing)

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise StudioError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.mix <= 1.0:
            raise StudioError(f"--mix must lie in [0, 1], got {self.mix}")
        if self.order not in ("curriculum", "random", "none"):
            raise StudioError(f"unknown order {self.order!r}: use curriculum, random or none")
        if self.fmt not in FORMATS:
            raise StudioError(f"unknown format {self.fmt!r}: use {', '.join(FORMATS)}")


def order_rows(df: pd.DataFrame, cfg: ExportConfig) -> pd.DataFrame:
    """Reorder rows (ingest order in, a fresh 0..n-1 index out).

    - none: as ingested.
    - random: a seeded permutation.
    - curriculum: easy-to-hard by ``difficulty_column`` within each cluster, clusters interleaved
      by progress (row i of a cluster of size s sorts at i/s), so a sequential reader sees the
      easy part of every cluster before the hard part of any. Ties keep ingest order.
    """
    df = df.reset_index(drop=True)
    if cfg.order == "none" or df.empty:
        return df
    if cfg.order == "random":
        perm = np.random.default_rng(cfg.seed).permutation(len(df))
        return df.iloc[perm].reset_index(drop=True)
    col = cfg.difficulty_column
    if col not in df.columns:
        raise StudioError(
            f"--order curriculum needs a difficulty column {col!r}; this dataset has: "
            f"{', '.join(c for c in df.columns if df[c].dtype.kind in 'fi') or 'none'}"
        )
    diff = pd.to_numeric(df[col], errors="coerce").fillna(np.inf).to_numpy()
    cluster = df["cluster"].fillna(-1).to_numpy() if "cluster" in df.columns else np.zeros(len(df))
    order = np.lexsort((np.arange(len(df)), diff, cluster))
    # position of each row inside its cluster, as a share of the cluster's size
    sorted_cluster = cluster[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_cluster)) + 1]
    sizes = np.diff(np.r_[starts, len(order)])
    pos = np.arange(len(order)) - np.repeat(starts, sizes)
    progress = pos / np.repeat(sizes, sizes)
    final = order[np.lexsort((sorted_cluster, progress))]
    return df.iloc[final].reset_index(drop=True)


def export_frame(wide: pa.Table) -> pd.DataFrame:
    """Rows as users want them in a file: id, prompt, answer, tags as columns, cluster, labels."""
    df = wide.to_pandas()
    tags = df.pop("tags") if "tags" in df.columns else None
    extra = df.pop("extra") if "extra" in df.columns else None
    df = df.drop(columns=[c for c in ("text", "x", "y", "idx") if c in df.columns])
    if "cluster" in df.columns:
        df["cluster"] = df["cluster"].astype("Int64")
    for src in (tags, extra):
        if src is None:
            continue
        parsed = pd.DataFrame([json.loads(v) if isinstance(v, str) and v else {} for v in src])
        for col in parsed.columns:
            if col not in df.columns:
                vals = parsed[col]
                df[col] = [
                    json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v for v in vals
                ]
    return df


def _atomic_path(out: Path) -> tuple[int, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    return fd, Path(tmp)


def write_atomic_bytes(out: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``out``."""
    fd, tmp = _atomic_path(out)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _int_or_none(v: Any) -> int | None:
    return None if v is None or bool(pd.isna(v)) else int(v)


def verl_table(df: pd.DataFrame, *, data_source: str) -> pa.Table:
    """verl's RL Parquet layout (what its RLHFDataset and rule rewards read): ``data_source``,
    ``prompt`` as chat messages, ``ability`` (the task tag when there is one),
    ``reward_model`` = {style: "rule", ground_truth: the answer}, ``extra_info`` = {index, id,
    cluster, batch and every numeric label or score}."""
    base = {"id", "prompt", "answer", "cluster", "batch", "task"}
    numeric = [c for c in df.columns if c not in base and pd.api.types.is_numeric_dtype(df[c])]

    def num(v: Any) -> float | None:
        return None if v is None or bool(pd.isna(v)) else float(v)

    rows = df.to_dict("records")
    return pa.table(
        {
            "data_source": pa.array([data_source] * len(df), pa.string()),
            "prompt": pa.array(
                [[{"role": "user", "content": str(r.get("prompt") or "")}] for r in rows],
                pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
            ),
            "ability": pa.array(
                [str(r["task"]) if r.get("task") is not None else "general" for r in rows],
                pa.string(),
            ),
            "reward_model": pa.array(
                [
                    {
                        "style": "rule",
                        "ground_truth": None if r.get("answer") is None else str(r["answer"]),
                    }
                    for r in rows
                ],
                pa.struct([("style", pa.string()), ("ground_truth", pa.string())]),
            ),
            "extra_info": pa.array(
                [
                    {
                        "index": i,
                        "id": str(r["id"]),
                        "cluster": _int_or_none(r.get("cluster")),
                        "batch": int(r["batch"]) if "batch" in r else None,
                        **{c: num(r[c]) for c in numeric},
                    }
                    for i, r in enumerate(rows)
                ],
                pa.struct(
                    [
                        ("index", pa.int64()),
                        ("id", pa.string()),
                        ("cluster", pa.int64()),
                        ("batch", pa.int64()),
                    ]
                    + [(c, pa.float64()) for c in numeric]
                ),
            ),
        }
    )


def serialize(df: pd.DataFrame, fmt: Format, *, data_source: str = "") -> bytes:
    """The data file's bytes: deterministic for the same frame."""
    if fmt == "verl":
        sink = pa.BufferOutputStream()
        pq.write_table(verl_table(df, data_source=data_source), sink, compression="zstd")
        return sink.getvalue().to_pybytes()
    if fmt == "jsonl":
        if df.empty:
            return b""
        text = df.to_json(orient="records", lines=True, force_ascii=False) or ""
        return (text if text.endswith("\n") else text + "\n").encode("utf-8")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def build_payload(
    df: pd.DataFrame, *, out_name: str, fmt: Format, manifest: dict[str, Any]
) -> tuple[bytes, dict[str, Any]]:
    """The data file's bytes and the full manifest (with row count and the file's sha256)."""
    data = serialize(df, fmt, data_source=str(manifest.get("dataset", "")))
    full = {
        **manifest,
        "file": out_name,
        "format": fmt,
        "rows": len(df),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return data, full


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_export(
    df: pd.DataFrame, *, out: Path, fmt: Format, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write the data file then its manifest, each atomically. Returns the manifest written."""
    data, full = build_payload(df, out_name=out.name, fmt=fmt, manifest=manifest)
    write_atomic_bytes(out, data)
    write_atomic_bytes(manifest_path(out), manifest_bytes(full))
    return full


def counts_by(df: pd.DataFrame, column: str) -> dict[str, int]:
    """Row counts per value of a column, keys as strings (JSON-friendly)."""
    if column not in df.columns or df.empty:
        return {}
    vc = df[column].value_counts(dropna=False).sort_index()
    return {str(k): int(v) for k, v in vc.items()}


def describe_filters(filters: Sequence[Filter]) -> list[dict[str, Any]]:
    return [
        {"column": f.column, "op": f.op, "value": f.value, "text": f.describe()} for f in filters
    ]
