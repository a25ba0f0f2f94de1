"""Read RL rollout results (n sampled responses per prompt, each pass/fail) and derive per-prompt
metrics: pass rate, unbiased pass@k and whether a GRPO group carries any signal.

Pure: no DuckDB. ``read_rollouts`` reads a file in any of these forms (one record each; forms
may be mixed in one file) and returns one row per rollout, ids in first-seen order:

- one rollout: ``{"id": "q1", "passed": true}`` (``true``/``false`` or ``0``/``1``), or
  ``{"id": "q1", "reward": 0.8}`` / ``"score"`` (passed = score >= ``threshold``; without a
  threshold a score must be exactly 0 or 1); optional ``"sample_idx"`` (or ``"sample"``),
  otherwise numbered in file order per id;
- one prompt with all its rollouts: ``{"id": "q1", "passes": [1, 0, 1]}`` (or ``"rewards"``
  with a threshold), or counts only, ``{"id": "q1", "n": 8, "n_pass": 3}`` (expanded into 8
  rows, the 3 passes first).

A worked example: a prompt with 2 of 4 rollouts passing and one whose 2 rollouts all fail.

    >>> rollouts = pa.table({"example_id": ["a"] * 4 + ["b"] * 2,
    ...                      "sample_idx": pa.array([0, 1, 2, 3, 0, 1], pa.int32()),
    ...                      "passed": [True, False, True, False, False, False]})
    >>> labels = rollout_labels(rollouts, ks=(1, 4))
    >>> {(r["example_id"], r["name"]): r["value"] for r in labels.to_pylist()}["a", "pass_at_4"]
    1.0
    >>> [(r["name"], r["value"]) for r in labels.to_pylist() if r["example_id"] == "b"]
    [('n_rollouts', 2.0), ('pass_rate', 0.0), ('pass_at_1', 0.0), ('zero_signal', 1.0)]
    >>> round(float(pass_at_k(np.array([4]), np.array([2]), 2)[0]), 4)  # 1 - C(2,2)/C(4,2)
    0.8333
    >>> rollout_summary(rollouts)["zero_signal_share"]
    0.5

Prompt ``b`` has no ``pass_at_4``: with fewer than k rollouts pass@k is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.errors import StudioError
from core.ingest import (
    LABELS_SCHEMA,
    NUMBER_TEXT,
    Source,
    json_list_or_none,
    load_source,
    show_value,
    type_name,
)

ROLLOUTS_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("passed", pa.bool_(), nullable=False),
    ]
)

# Outcome fields. A record holds one verdict (passed / passes / n + n_pass); only when it has
# none is a score (reward / score / rewards) read, so a file that carries both is not ambiguous.
_VERDICTS: tuple[tuple[str, ...], ...] = (("passed",), ("passes",), ("n", "n_pass"))
_SCORES: tuple[tuple[str, ...], ...] = (("reward",), ("score",), ("rewards",))
_OUTCOMES = (
    "'passed', 'reward' or 'score' (one rollout), 'passes' or 'rewards' (a list), or 'n' + 'n_pass'"
)
_INT_TEXT = frozenset("0123456789")
_MAX_SAMPLE = 2**31 - 1  # sample_idx is int32
_MAX_N = 1_000_000  # rollouts one counts-only record may expand into


def read_rollouts(
    path: str | Path, *, id_field: str = "id", threshold: float | None = None
) -> pa.Table:
    """Read a rollout file (JSONL, JSON, CSV, Parquet) into ROLLOUTS_SCHEMA rows.

    ``id_field`` names the prompt id column (with the default, ``example_id`` is read when the
    file has no ``id``). ``threshold`` turns scores into pass/fail (passed = score >= threshold).
    Any problem is a one-line :class:`StudioError` naming the file, line and field; nothing
    partial is returned. Rows come ordered by id (first seen) and then sample index.
    """
    if threshold is not None and not (
        isinstance(threshold, int | float) and math.isfinite(threshold)
    ):
        raise StudioError(f"rollouts: threshold must be a finite number, got {threshold!r}")
    if not id_field:
        raise StudioError("rollouts: the id field name is empty")
    src = load_source(Path(path))
    id_col = id_field
    if id_col not in src.columns and id_field == "id" and "example_id" in src.columns:
        id_col = "example_id"
    if id_col not in src.columns:
        fields = ", ".join(src.columns) or "none"
        raise src.error(
            0, f"field {id_field!r} is missing (fields: {fields}; say which one is the id)"
        )
    index_col = _index_column(src)
    reader = RecordReader(src, threshold=threshold)

    ids: list[str] = []
    idxs: list[int] = []
    passed: list[bool] = []
    first: dict[tuple[str, int], int] = {}  # (id, sample) -> record index, for duplicates
    next_idx: dict[str, int] = {}
    for i in range(src.n):
        ex = reader.id(i, id_col)
        given = reader.integer(i, index_col, minimum=0, maximum=_MAX_SAMPLE) if index_col else None
        outcome, field = reader.outcome(i)
        if given is not None and len(outcome) != 1:
            raise src.error(i, f"field {index_col!r} applies to one-rollout records, not {field!r}")
        start = next_idx.get(ex, 0) if given is None else given
        if start + len(outcome) - 1 > _MAX_SAMPLE:
            raise src.error(i, f"field {index_col or field!r}: sample index above {_MAX_SAMPLE}")
        for k, ok in enumerate(outcome):
            key = (ex, start + k)
            j = first.setdefault(key, i)
            if j != i:
                where = f"first at {src.locate(j)}"
                raise src.error(
                    i,
                    f"field {index_col or field!r}: duplicate rollout (id {show_value(ex)}, "
                    f"sample {start + k}; {where})",
                )
            ids.append(ex)
            idxs.append(start + k)
            passed.append(ok)
        next_idx[ex] = max(next_idx.get(ex, 0), start + len(outcome))

    codes = pa.array(ids, pa.string()).dictionary_encode().indices.to_numpy()  # first-seen order
    sample = np.asarray(idxs, dtype=np.int64)
    order = np.lexsort((sample, codes))
    return pa.table(
        {
            "example_id": pa.array(ids, pa.string()).take(order),
            "sample_idx": pa.array(sample[order].astype(np.int32)),
            "passed": pa.array(np.asarray(passed, dtype=bool)[order]),
        },
        schema=ROLLOUTS_SCHEMA,
    )


def pass_at_k(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)`` per element.

    ``n`` samples of which ``c`` passed (integer arrays, broadcast together). Computed in the
    stable product form ``1 - prod_{i=n-c+1..n} (1 - k/i)``; NaN where ``n < k``.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"pass_at_k: k must be a positive integer, got {k!r}")
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n), np.asarray(c))
    if n_arr.size and (
        not np.array_equal(n_arr, np.round(n_arr)) or not np.array_equal(c_arr, np.round(c_arr))
    ):
        raise ValueError("pass_at_k: n and c must be whole numbers")
    n_int, c_int = n_arr.astype(np.int64), c_arr.astype(np.int64)
    if np.any(c_int < 0) or np.any(c_int > n_int):
        raise ValueError("pass_at_k: need 0 <= c <= n")
    pairs, inverse = np.unique(
        np.stack([n_int.ravel(), c_int.ravel()], axis=1), axis=0, return_inverse=True
    )
    values = np.empty(len(pairs), dtype=np.float64)
    for j, (nn, cc) in enumerate(pairs.tolist()):
        if nn < k:
            values[j] = np.nan
        elif nn - cc < k:  # every k-subset holds a pass
            values[j] = 1.0
        else:
            values[j] = 1.0 - float(np.prod(1.0 - k / np.arange(nn - cc + 1, nn + 1)))
    return values[np.asarray(inverse).reshape(-1)].reshape(n_int.shape)


def rollout_labels(rollouts: pa.Table, *, ks: Sequence[int] = (1, 4, 8)) -> pa.Table:
    """Per-prompt labels in LABELS_SCHEMA (example_id, name, value), prompt by prompt.

    ``n_rollouts``; ``pass_rate``; ``pass_at_{k}`` for each k (only for prompts with n >= k);
    ``zero_signal`` 1.0 when all rollouts pass or all fail (every GRPO advantage in the group is
    zero, so the prompt teaches nothing), else 0.0.
    """
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise StudioError(f"rollouts: pass@k needs positive integer k, got {k!r}")
    ids, n, c = _per_prompt(rollouts)
    columns: list[tuple[str, np.ndarray]] = [
        ("n_rollouts", n.astype(np.float64)),
        ("pass_rate", c / np.maximum(n, 1)),
    ]
    columns += [(f"pass_at_{k}", pass_at_k(n, c, k)) for k in dict.fromkeys(ks)]
    columns.append(("zero_signal", ((c == 0) | (c == n)).astype(np.float64)))
    names = [label for label, _ in columns]
    values = np.stack([vals for _, vals in columns], axis=1)  # (prompt, label)
    prompt, label = np.nonzero(~np.isnan(values))  # row-major: prompt by prompt
    return pa.table(
        {
            "example_id": pa.array(ids, pa.string()).take(prompt),
            "name": pa.array(names, pa.string()).take(label),
            "value": pa.array(values[prompt, label], pa.float64()),
        },
        schema=LABELS_SCHEMA,
    )


def rollout_summary(rollouts: pa.Table) -> dict[str, Any]:
    """JSON-ready totals: prompts, rollouts, samples per prompt, mean pass rate, zero-signal."""
    _, n, c = _per_prompt(rollouts)
    if not n.size:
        return {
            "n_prompts": 0,
            "n_rollouts": 0,
            "samples_per_prompt": {"min": None, "median": None, "max": None},
            "mean_pass_rate": None,
            "n_all_pass": 0,
            "n_all_fail": 0,
            "zero_signal_share": None,
        }
    all_pass, all_fail = int(np.sum(c == n)), int(np.sum(c == 0))
    return {
        "n_prompts": int(n.size),
        "n_rollouts": int(n.sum()),
        "samples_per_prompt": {
            "min": int(n.min()),
            "median": float(np.median(n)),
            "max": int(n.max()),
        },
        "mean_pass_rate": float(np.mean(c / n)),
        "n_all_pass": all_pass,
        "n_all_fail": all_fail,
        "zero_signal_share": float(np.mean((c == 0) | (c == n))),
    }


def _per_prompt(rollouts: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids in first-seen order, rollouts per id, passes per id)."""
    missing = {"example_id", "passed"} - set(rollouts.column_names)
    if missing:
        raise StudioError(f"rollouts table lacks column(s) {', '.join(sorted(missing))}")
    encoded = rollouts.column("example_id").combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    ids = encoded.dictionary.to_pylist()
    passed = rollouts.column("passed").to_numpy(zero_copy_only=False).astype(np.float64)
    n = np.bincount(codes, minlength=len(ids)).astype(np.int64)
    c = np.rint(np.bincount(codes, weights=passed, minlength=len(ids))).astype(np.int64)
    return ids, n, c


def _index_column(src: Source) -> str | None:
    """``sample_idx``, else ``sample`` unless all of its values are text (then it is taken for
    the response and ignored)."""
    if "sample_idx" in src.columns:
        return "sample_idx"
    values = [v for v in src.columns.get("sample", []) if v is not None]
    if not values or all(isinstance(v, str) and not _is_int_text(v) for v in values):
        return None
    return "sample"


def _is_int_text(v: str) -> bool:
    s = v.strip().lstrip("+-")
    return bool(s) and set(s) <= _INT_TEXT


class RecordReader:
    """Typed access to one record's fields, raising errors that name file, line and field."""

    def __init__(self, src: Source, *, threshold: float | None) -> None:
        self.src = src
        self.threshold = threshold

    def value(self, i: int, field: str) -> Any:
        """The cell; CSV text is read as JSON-ish (true/false, numbers, a JSON list)."""
        column = self.src.columns.get(field)
        v = None if column is None else column[i]
        if self.src.typed or not isinstance(v, str):
            return v
        s = v.strip()
        if s.lower() in ("true", "false"):
            return s.lower() == "true"
        if _is_int_text(s):
            return int(s)
        if NUMBER_TEXT.fullmatch(s):
            return float(s)
        if s.startswith("["):
            parsed = json_list_or_none(s)
            return v if parsed is None else parsed
        return v

    def fail(self, i: int, where: str, expected: str, v: Any) -> StudioError:
        return self.src.error(i, f"{where}: expected {expected}, got {show_value(v)}")

    def id(self, i: int, field: str) -> str:
        v = self.src.columns[field][i]
        if v is None:
            raise self.src.error(i, f"field {field!r} is missing")
        if isinstance(v, str):
            if not v.strip():
                raise self.src.error(i, f"field {field!r} is empty")
            return v
        if type(v) is int or (type(v) is float and v.is_integer()):
            return str(int(v))
        raise self.fail(i, f"field {field!r}", "a string or integer id", v)

    def integer(self, i: int, field: str, *, minimum: int, maximum: int) -> int | None:
        """An optional whole number within minimum..maximum (``8.0`` reads as 8)."""
        v = self.value(i, field)
        if v is None:
            return None
        if type(v) is float and v.is_integer():
            v = int(v)
        if type(v) is not int or not minimum <= v <= maximum:
            what = "a non-negative integer" if minimum == 0 else "a positive integer"
            if type(v) is int and v > maximum:
                what = f"an integer up to {maximum}"
            raise self.fail(i, f"field {field!r}", what, v)
        return v

    def passed(self, i: int, where: str, v: Any) -> bool:
        if type(v) is bool:
            return v
        if type(v) in (int, float) and v in (0, 1):
            return bool(v)
        raise self.fail(i, where, "true/false or 0/1", v)

    def score(self, i: int, where: str, v: Any) -> bool:
        if type(v) not in (bool, int, float) or not math.isfinite(v):
            raise self.fail(i, where, "a finite number", v)
        if self.threshold is not None:
            return float(v) >= self.threshold
        if v in (0, 1):
            return bool(v)
        raise self.src.error(
            i, f"{where}: {show_value(v)} is not 0 or 1; give a threshold to score it"
        )

    def outcome(self, i: int) -> tuple[list[bool], str]:
        """The record's rollouts as pass/fail, and the field they came from."""
        group = self._group(i, _VERDICTS) or self._group(i, _SCORES)
        if group is None:
            raise self.src.error(i, f"no outcome field: expected {_OUTCOMES}")
        field = group[0]
        if field in ("passed", "reward", "score"):
            read = self.passed if field == "passed" else self.score
            return [read(i, f"field {field!r}", self.value(i, field))], field
        if field in ("passes", "rewards"):
            v = self.value(i, field)
            if not isinstance(v, list) or not v:
                got = "an empty list" if isinstance(v, list) else f"{type_name(v)} {show_value(v)}"
                raise self.src.error(i, f"field {field!r}: expected a non-empty list, got {got}")
            read = self.passed if field == "passes" else self.score
            return [read(i, f"field {field!r} item {k + 1}", x) for k, x in enumerate(v)], field
        n = self.integer(i, "n", minimum=1, maximum=_MAX_N)
        n_pass = self.integer(i, "n_pass", minimum=0, maximum=_MAX_N)
        assert n is not None and n_pass is not None  # _group saw both
        if n_pass > n:
            raise self.src.error(i, f"field 'n_pass': {n_pass} is more than n = {n}")
        return [True] * n_pass + [False] * (n - n_pass), "n"

    def _group(self, i: int, groups: tuple[tuple[str, ...], ...]) -> tuple[str, ...] | None:
        """The one group of fields this record fills (None if none); two is an error."""
        present = [g for g in groups if any(self.value(i, f) is not None for f in g)]
        if len(present) > 1:
            a, b = present[0][0], present[1][0]
            raise self.src.error(i, f"fields {a!r} and {b!r} both given; a record holds one")
        if not present:
            return None
        for f in present[0]:
            if self.value(i, f) is None:
                other = next(g for g in present[0] if g != f)
                raise self.src.error(i, f"field {f!r} is missing (given {other!r})")
        return present[0]
