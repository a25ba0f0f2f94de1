"""Small hand-made datasets for the store's tests: the tables write_dataset takes, with defaults
that tests override only where they care (as sae-lens's tests/helpers.py does)."""

import pandas as pd
import pyarrow as pa

from core.store import REWARD_SCHEMA, RunRecord, Store


def tables(n: int = 5) -> dict[str, pa.Table]:
    """A prompt dataset e0..e{n-1}: labels difficulty (0..n-1) and 'we"ird' (1.0), a tag task=a,
    no responses."""
    ids = [f"e{i}" for i in range(n)]
    examples = pa.table(
        {
            "id": ids,
            "idx": pa.array(range(n), pa.int64()),
            "prompt": [f"prompt {i}" for i in range(n)],
            "answer": [str(i) for i in range(n)],
            "text": [f"prompt {i}" for i in range(n)],
            "tags": ['{"task": "a"}'] * n,
            "extra": ["{}"] * n,
        }
    )
    labels = pa.table(
        {
            "example_id": ids + ids,
            "name": ["difficulty"] * n + ['we"ird'] * n,
            "value": [float(i) for i in range(n)] + [1.0] * n,
        }
    )
    responses = pa.table(
        {
            "example_id": pa.array([], pa.string()),
            "response_idx": pa.array([], pa.int32()),
            "role": pa.array([], pa.string()),
            "text": pa.array([], pa.string()),
        }
    )
    return {"examples": examples, "labels": labels, "responses": responses}


def pref_tables() -> dict[str, pa.Table]:
    """Two preference rows: p0 with 1 chosen + 2 rejected, p1 with 1 chosen + 1 rejected."""
    t = tables(2)
    examples = t["examples"].set_column(0, "id", pa.array(["p0", "p1"]))
    keys = [("p0", 0, "chosen"), ("p0", 1, "rejected"), ("p0", 2, "rejected")]
    keys += [("p1", 0, "chosen"), ("p1", 1, "rejected")]
    responses = pa.table(
        {
            "example_id": [k[0] for k in keys],
            "response_idx": pa.array([k[1] for k in keys], pa.int32()),
            "role": [k[2] for k in keys],
            "text": [f"{k[0]} answer {k[1]}" for k in keys],
        }
    )
    labels = pa.table(
        {
            "example_id": pa.array([], pa.string()),
            "name": pa.array([], pa.string()),
            "value": pa.array([], pa.float64()),
        }
    )
    return {"examples": examples, "labels": labels, "responses": responses}


def score_rows(keys: list[tuple[str, int]], values: list[float] | None = None) -> pa.Table:
    """Reward scores (REWARD_SCHEMA) of (example_id, response_idx) keys: values 0, 1, ... unless
    given, logits [0.5, -0.5], the first one truncated."""
    n = len(keys)
    return pa.table(
        {
            "example_id": pa.array([k[0] for k in keys], pa.string()),
            "response_idx": pa.array([k[1] for k in keys], pa.int32()),
            "value": pa.array(values or [float(i) for i in range(n)], pa.float64()),
            "logits": pa.array([[0.5, -0.5]] * n, pa.list_(pa.float32())),
            "truncated": pa.array([i == 0 for i in range(n)], pa.bool_()),
        },
        schema=REWARD_SCHEMA,
    )


def feature_run(s: Store, *, spans: bool = True) -> int:
    """A hand-made feature run over e0..e4 of dataset 'd': feature 7 in every example's top-k
    (values 0.1 .. 0.5), feature 3 in e0 and e1, feature 9 fired but never made the top-k."""
    run, _ = s.begin_run(RunRecord("featurize", "d", {"k": 2}, {}))
    chunk = pa.table(
        {
            "example_id": [f"e{i}" for i in range(5)],
            "n_tokens": pa.array([3] * 5, pa.int32()),
            "truncated": [False] * 5,
            "feature_ids": pa.array([[7, 3], [3, 7], [7], [7], [7]], pa.list_(pa.int32())),
            "values": pa.array(
                [[0.1, 0.05], [0.9, 0.2], [0.3], [0.4], [0.5]], pa.list_(pa.float32())
            ),
        }
    )
    stats = pd.DataFrame(
        {"feature_id": [3, 7, 9], "n_fire": [2, 5, 1], "sum_act": [0.95, 1.5, 0.01]}
    ).assign(max_act=[1.2, 0.8, 0.02])
    top = pd.DataFrame(
        {
            "feature_id": [7, 7, 3],
            "rank": [0, 1, 0],
            "example_id": ["e4", "e3", "e1"],
            "token": ["prompt", "4", "1"],
            "value": [0.8, 0.6, 1.2],
        }
    )
    if spans:
        top = top.assign(char_start=[0, -1, 7], char_end=[6, -1, 8])
    s.write_feature_chunk(run, chunk=chunk, stats=stats, top_tokens=top)
    s.finish_run(run, summary={"d_sae": 16})
    return run
