"""Killed runs: featurize survives kill -9 (rerunning the same command continues where it stopped,
with no example lost or duplicated, and ends with the same features as an uninterrupted run);
train-sae killed mid-training leaves no SAE folder, only a temp folder the rerun sweeps.

The kills wait for progress, never for a time: a process is killed once its own output shows it
got far enough, however long that takes. Only a machine too busy to get there within
``OUTER_TIMEOUT_S`` ends a test early, and then it skips (with the reason), never fails.
"""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.sae import leftover_temp_dirs, training_info
from core.store import Store
from tests.conftest import run_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
N = 3000
OUTER_TIMEOUT_S = 1800


def _start(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "core", *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(proc: subprocess.Popen[bytes], reached: Callable[[bytes], bool], what: str) -> bytes:
    """Read ``proc``'s stderr until ``reached(all of it so far)``, and return it; the process
    is still running then. A reader thread keeps a silent process from blocking the wait.
    Fails if the process ends first; skips if the machine is too busy to get there at all."""
    assert proc.stderr is not None
    stream = proc.stderr
    chunks: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):
            chunks.put(chunk)
        chunks.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = b""
    start = time.monotonic()
    while True:
        left = OUTER_TIMEOUT_S - (time.monotonic() - start)
        if left <= 0:
            proc.kill()
            proc.wait()
            pytest.skip(f"{what} not reached in {OUTER_TIMEOUT_S} s: this machine is too busy")
        try:
            chunk = chunks.get(timeout=min(left, 5.0))
        except queue.Empty:
            continue
        if chunk is None:
            proc.wait()
            pytest.fail(f"the command ended (rc {proc.returncode}) before {what}: {seen[-600:]!r}")
        seen += chunk
        if reached(seen):
            return seen


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


def _progress(out: bytes) -> int:
    """The last count of featurize's progress bar ('1234/3000')."""
    counts = re.findall(rb"(\d+)/%d" % N, out[-400:])
    return int(counts[-1]) if counts else 0


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
    # kill timing does not depend on lock contention) and kill -9 a third of the way in. The
    # writer queue holds at most two chunks of 32, so by then most rows are committed.
    proc = _start(*_featurize_argv(killed_db, tiny_bert_dir, tiny_sae_dir))
    out = _wait_for(proc, lambda out: _progress(out) >= N // 3, f"featurize at {N // 3} of {N}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    seen = _progress(out)
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


def test_train_sae_killed_leaves_no_sae_folder_and_the_rerun_finishes_its_run(
    tmp_path, tiny_bert_dir, capsys
):
    """kill -9 during training: no SAE folder (only a temp folder, which featurize refuses in
    one line), the run is not done; the same command again sweeps the temp folder, writes the
    SAE and finishes that same run, and the folder names its run."""
    words = [
        "seven",
        "integral",
        "prime",
        "sum",
        "square",
        "root",
        "angle",
        "train",
        "hour",
        "mile",
    ]
    rows = [
        {"id": f"e{i}", "prompt": " ".join(words[(i + j) % 10] for j in range(30))}
        for i in range(200)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "s.duckdb"
    assert run_cli("ingest", str(data), "--dataset", "d", "--kind", "prompts", "--db", str(db)) == 0
    out = tmp_path / "saes" / "sae"
    argv = ["train-sae", "--dataset", "d", "--model", str(tiny_bert_dir), "--layer", "1"]
    argv += ["--width", "64", "--k", "4", "--epochs", "3", "--batch-tokens", "64"]
    argv += ["--out", str(out), "--db", str(db)]

    proc = _start(*argv, "--eval-every", "1")  # a line per training step: progress to wait for
    _wait_for(proc, lambda err: b"\nstep " in err or err.startswith(b"step "), "a training step")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    assert not out.exists()
    left = leftover_temp_dirs(out.parent)
    assert len(left) == 1 and left[0].name.startswith(f".studio-sae-tmp-{proc.pid}-")
    store = Store(db)
    runs = store.list_runs(step="train-sae")
    assert list(runs["status"]) == ["running"]
    run_id = int(runs["run_id"].iloc[0])
    capsys.readouterr()
    model = ["--model", str(tiny_bert_dir), "--layer", "1"]
    featurize = ["featurize", "--dataset", "d", *model, "--db", str(db)]
    assert run_cli(*featurize, "--sae-path", str(left[0])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a temporary folder of an unfinished train-sae" in err[0]

    assert run_cli(*argv) == 0
    assert [p.name for p in out.parent.iterdir()] == ["sae"]  # the leftover was swept
    runs = store.list_runs(step="train-sae")
    assert list(runs["run_id"]) == [run_id] and list(runs["status"]) == ["done"]
    assert runs["summary"].iloc[0]["path"] == str(out.resolve())
    info = training_info(out)
    assert info is not None and info["run"] == {"store": str(db.resolve()), "run_id": run_id}
    assert run_cli(*featurize, "--sae-path", str(out)) == 0
