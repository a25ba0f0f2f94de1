"""featurize survives kill -9: rerunning the same command continues where it stopped, with no
example lost or duplicated, and ends with the same features as an uninterrupted run."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.store import Store
from tests.conftest import run_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
N = 3000


def _featurize_argv(db: Path, model: Path, sae: Path) -> list[str]:
    return [
        "featurize",
        "--dataset",
        "d",
        "--model",
        str(model),
        "--layer",
        "1",
        "--sae-path",
        str(sae),
        "--chunk-size",
        "32",
        "--batch-size",
        "8",
        "--db",
        str(db),
    ]


def _stored(db: Path, run_id: int) -> dict[str, tuple]:
    rows = Store(db).features(run_id).to_pylist()
    return {
        r["example_id"]: (tuple(r["feature_ids"]), tuple(round(v, 5) for v in r["vals"]))
        for r in rows
    }


def test_kill_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_bert_dir, tiny_sae_dir):
    from core.demo_data import write_demo_jsonl

    data = write_demo_jsonl(tmp_path / "d.jsonl", n=N, seed=1)
    killed_db, clean_db = tmp_path / "killed.duckdb", tmp_path / "clean.duckdb"
    for db in (killed_db, clean_db):
        assert (
            run_cli("ingest", str(data), "--dataset", "d", "--kind", "prompts", "--db", str(db))
            == 0
        )

    # Watch the command's own progress bar (no reads of the database while it writes, so the
    # kill timing does not depend on lock contention) and kill -9 about a third of the way in.
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", *_featurize_argv(killed_db, tiny_bert_dir, tiny_sae_dir)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen, tail = 0, b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and seen < N // 3:
        tail = (tail + proc.stderr.read1(4096))[-400:]
        counts = re.findall(rb"(\d+)/%d" % N, tail)
        if counts:
            seen = int(counts[-1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert N // 3 <= seen < N, f"the kill must land mid-run (progress {seen} of {N})"
    store = Store(killed_db)

    runs = store.list_runs(step="featurize")
    assert list(runs["status"]) == ["running"]
    partial = len(store.done_example_ids(int(runs["run_id"].iloc[0])))
    assert 0 < partial < N

    assert run_cli(*_featurize_argv(killed_db, tiny_bert_dir, tiny_sae_dir)) == 0
    runs = store.list_runs(step="featurize")
    assert len(runs) == 1 and runs["status"].iloc[0] == "done"  # the same run, resumed
    run_id = int(runs["run_id"].iloc[0])
    assert runs["summary"].iloc[0]["resumed"] is True
    feats = store.features(run_id)
    ids = feats.column("example_id").to_pylist()
    assert len(ids) == N and len(set(ids)) == N

    assert run_cli(*_featurize_argv(clean_db, tiny_bert_dir, tiny_sae_dir)) == 0
    clean_run = int(Store(clean_db).list_runs(step="featurize")["run_id"].iloc[0])
    assert _stored(killed_db, run_id) == _stored(clean_db, clean_run)
    # the token statistics were restored and continued, not restarted
    s_killed, _ = store.feature_stats(run_id)
    s_clean, _ = Store(clean_db).feature_stats(clean_run)
    assert s_killed["n_fire"].tolist() == s_clean["n_fire"].tolist()
