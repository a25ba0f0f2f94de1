"""featurize on Ray Data (core/distributed.py): on a local 2-CPU Ray instance the stored features,
dense baseline vectors and statistics equal those of the single-process run, and the run config
is the same one."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import StudioError
from core.steps.featurize_ray import (
    _frame_to_ipc,
    _Loader,
    block_key,
    length_sorted_blocks,
    load_shards,
    merge_token_stats,
    plan_workers,
)
from core.store import RunRecord, Store
from tests.conftest import run_cli

N_ROWS = 150
LAYER = 1


# --- unit: merging per-block statistics, planning actors (no Ray needed) --------------------
def _frames(rows: list[tuple[int, int, float, float]], top: list[tuple[int, str, str, float]]):
    stats = pd.DataFrame(rows, columns=["feature_id", "n_fire", "sum_act", "max_act"])
    top_df = pd.DataFrame(top, columns=["feature_id", "example_id", "token", "value"])
    top_df.insert(1, "rank", top_df.groupby("feature_id").cumcount())
    return stats, top_df


def test_merge_token_stats_sums_counts_and_keeps_the_strongest_tokens():
    a = _frames([(3, 2, 1.0, 0.5)], [(3, "e1", "x", 0.5), (3, "e2", "y", 0.2)])
    b = _frames([(3, 5, 2.0, 0.9), (7, 1, 0.1, 0.1)], [(3, "e3", "z", 0.9), (7, "e3", "z", 0.1)])
    stats, top = merge_token_stats([a, b], top_n=2)
    assert stats.to_dict("list") == {
        "feature_id": [3, 7],
        "n_fire": [7, 1],
        "sum_act": [3.0, 0.1],
        "max_act": [pytest.approx(0.9), pytest.approx(0.1)],
    }
    f3 = top[top["feature_id"] == 3]
    assert f3["example_id"].tolist() == ["e3", "e1"]  # top 2 of 3, strongest first
    assert f3["rank"].tolist() == [0, 1]


def test_merge_token_stats_of_nothing_is_empty():
    stats, top = merge_token_stats([])
    assert len(stats) == 0 and len(top) == 0
    assert list(stats.columns) == ["feature_id", "n_fire", "sum_act", "max_act"]


def test_plan_workers_one_actor_per_gpu_else_cpu_slots():
    assert plan_workers({"CPU": 2}, None) == (2, 1, 1.0, 0)
    assert plan_workers({"CPU": 16}, None) == (8, 2, 2.0, 0)
    assert plan_workers({"CPU": 16, "GPU": 4}, None)[::3] == (4, 1)
    assert plan_workers({"CPU": 8}, 2) == (2, 4, 4.0, 0)


def test_length_sorted_blocks_put_similar_lengths_together():
    blocks = length_sorted_blocks(["a", "b", "c"], ["xxx", "x" * 9, "xxxx"], rows_per_block=2)
    assert [b.column("id").to_pylist() for b in blocks] == [["b", "c"], ["a"]]


def test_without_ray_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    from core.steps.featurize import FeaturizeConfig
    from core.steps.featurize_ray import featurize_ray

    db = _ingested(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(StudioError, match=r"requirements-ray\.txt"):
        cfg = FeaturizeConfig(dataset="d", model="unused", layer=1, sae_path=str(tmp_path))
        featurize_ray(Store(db), cfg)
    assert len(Store(db).list_runs(step="featurize")) == 0


# --- integration: a local Ray instance against the single-process run ------------------------
def _ingested(tmp_path: Path) -> Path:
    from core.demo_data import write_demo_jsonl

    data = write_demo_jsonl(tmp_path / "demo.jsonl", n=N_ROWS, seed=3)
    db = tmp_path / "single.duckdb"
    assert run_cli("ingest", str(data), "--dataset", "d", "--kind", "prompts", "--db", str(db)) == 0
    return db


def test_shard_loader_keeps_the_dense_column(tmp_path):
    """A shard written as the actors write them (no Ray needed): the dense vectors survive
    Parquet and the bulk load."""
    from core.features import DENSE_FEATURE_SCHEMA, rows_to_list_array

    store = Store(_ingested(tmp_path))
    ids = store.example_texts("d").column("id").to_pylist()[:3]
    run_id, _ = store.begin_run(RunRecord("featurize", "d", {"x": 1}, {}))
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    stats, top = merge_token_stats([])
    rows = pa.table(
        {
            "example_id": ids,
            "n_tokens": pa.array([2, 3, 4], pa.int32()),
            "truncated": [False] * 3,
            "feature_ids": pa.array([[1], [], [2, 0]], pa.list_(pa.int32())),
            "values": pa.array([[0.5], [], [0.2, 0.1]], pa.list_(pa.float32())),
            "dense": rows_to_list_array(vectors),
        },
        schema=DENSE_FEATURE_SCHEMA,
    )
    shard = (
        rows.append_column("block", pa.array([block_key(ids)] * 3))
        .append_column("block_rows", pa.array([3, None, None], pa.int64()))
        .append_column("stats_ipc", pa.array([_frame_to_ipc(stats), None, None], pa.binary()))
        .append_column("top_ipc", pa.array([_frame_to_ipc(top), None, None], pa.binary()))
    )
    (tmp_path / "shards").mkdir()
    pq.write_table(shard, tmp_path / "shards" / "part-0.parquet")
    load_shards(
        _Loader(store, run_id, stats=(stats, top), done=set(), chunk_rows=10), tmp_path / "shards"
    )
    got = store.dense_vectors(run_id)
    assert got is not None and got[0] == ids
    np.testing.assert_array_equal(got[1], vectors)


def _by_example(store: Store, run_id: int) -> dict[str, dict[int, float]]:
    rows = store.features(run_id).to_pylist()
    return {r["example_id"]: dict(zip(r["feature_ids"], r["vals"], strict=True)) for r in rows}


@pytest.mark.slow
def test_ray_featurize_equals_single_process(tmp_path, tiny_bert_dir, tiny_sae_dir):
    pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")
    from core.steps.featurize import FeaturizeConfig, featurize
    from core.steps.featurize_ray import RayOptions, featurize_ray

    single_db = _ingested(tmp_path)
    ray_db = tmp_path / "ray.duckdb"
    shutil.copy(single_db, ray_db)
    cfg = FeaturizeConfig(
        dataset="d",
        model=str(tiny_bert_dir),
        layer=LAYER,
        sae_path=str(tiny_sae_dir),
        batch_size=16,
        dense=True,  # the dense column must survive the Parquet shards and the bulk load
    )
    single, on_ray = Store(single_db), Store(ray_db)
    single_run = featurize(single, cfg)
    t0 = time.perf_counter()
    # chunk_rows below the dataset size: several commits, each with the merged stats so far
    options = RayOptions(address="local", num_cpus=2, num_workers=2, chunk_rows=40)
    ray_run = featurize_ray(on_ray, cfg, options)
    print(f"featurize_ray on {N_ROWS} rows, 2 actors: {time.perf_counter() - t0:.1f} s")

    assert on_ray.run(ray_run)["config"] == single.run(single_run)["config"]
    assert on_ray.run(ray_run)["config"]["dense"] is True
    summary = on_ray.run(ray_run)["summary"]
    assert summary["engine"] == "ray" and summary["workers"] == 2
    assert summary["n_examples"] == N_ROWS
    assert not (tmp_path / "ray-shards").exists(), "committed shards are removed"

    want, got = _by_example(single, single_run), _by_example(on_ray, ray_run)
    assert sorted(got) == sorted(want) and len(want) == N_ROWS  # none lost, none duplicated
    for eid, feats in want.items():
        assert set(got[eid]) == set(feats), eid
        ids = sorted(feats)
        np.testing.assert_allclose(
            [got[eid][f] for f in ids], [feats[f] for f in ids], rtol=1e-5, atol=1e-6
        )
    dense_want, dense_got = single.dense_vectors(single_run), on_ray.dense_vectors(ray_run)
    assert dense_want is not None and dense_got is not None
    assert dense_got[0] == dense_want[0] and dense_want[1].shape == (N_ROWS, 64)
    np.testing.assert_allclose(dense_got[1], dense_want[1], rtol=1e-5, atol=1e-6)

    (s_want, top_want), (s_got, top_got) = (
        single.feature_stats(single_run),
        on_ray.feature_stats(ray_run),
    )
    assert s_got["feature_id"].tolist() == s_want["feature_id"].tolist()
    assert s_got["n_fire"].tolist() == s_want["n_fire"].tolist()
    np.testing.assert_allclose(s_got["sum_act"], s_want["sum_act"], rtol=1e-5)
    np.testing.assert_allclose(s_got["max_act"], s_want["max_act"], rtol=1e-5)
    # the strongest occurrence of every feature is the same (value; ties may swap examples)
    first_want = top_want[top_want["rank"] == 0].set_index("feature_id")["value"]
    first_got = top_got[top_got["rank"] == 0].set_index("feature_id")["value"]
    pd.testing.assert_series_equal(first_got, first_want, rtol=1e-5)
