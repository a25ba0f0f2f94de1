"""The app keeps working while a CLI command writes to the same database file: it reruns with no
traceback during the write and shows the new data on the rerun after it."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.ui.test_app import APP

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_app_reads_while_featurize_commits(
    pipeline_db, tiny_bert_dir, tiny_sae_dir, tmp_path, monkeypatch
):
    db = tmp_path / "live.duckdb"
    shutil.copy(pipeline_db, db)
    monkeypatch.setenv("SAERL_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    runs_before = len(at.dataframe[1].value)

    # many short write transactions: 200 examples committed 8 at a time, a new run
    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core",
            "featurize",
            "--dataset",
            "demo",
            "--model",
            str(tiny_bert_dir),
            "--layer",
            "2",
            "--sae-path",
            str(tiny_sae_dir),
            "--chunk-size",
            "8",
            "--batch-size",
            "8",
            "--db",
            str(db),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reruns = 0
    while writer.poll() is None or reruns < 3:
        at.run()
        reruns += 1
        assert not at.exception, [e.value for e in at.exception]
        for err in at.error:  # at worst a one-line "busy" notice, never a traceback
            assert "busy" in err.value
        time.sleep(0.05)
    _, err = writer.communicate()
    assert writer.returncode == 0, err[-2000:]
    at.run()
    assert not at.exception and not at.error
    assert len(at.dataframe[1].value) == runs_before + 1  # the new feature run shows up
    assert reruns >= 3
