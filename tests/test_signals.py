"""The signal steps end to end on the pipeline database: probe runs with their evidence and
baselines, scores as wide-view columns and export filters, rollouts, marks, and bad input that
stores nothing."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from core.errors import StudioError
from core.signals import clustering_table, evidence_table, probe, threshold_report
from core.store import Filter, Store
from tests.conftest import PIPELINE_ROWS, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def db(pipeline_db: Path, tmp_path: Path) -> Path:
    """A private copy of the session's pipeline database, free to write to."""
    copy = tmp_path / "studio.duckdb"
    shutil.copy(pipeline_db, copy)
    return copy


def _runs(s: Store) -> int:
    return len(s.list_runs(dataset="demo"))


def test_probe_runs_carry_evidence_for_every_representation(pipeline_db):
    s = Store(pipeline_db)
    views = s.views("demo")
    names = dict(views.score_runs)
    assert set(names) == {"difficulty_proxy", "quality_proxy"}
    diff = s.run(names["difficulty_proxy"])
    assert diff["config"]["kind"] == "elasticnet" and diff["config"]["higher_is"] == "harder"
    summ = diff["summary"]
    assert summ["n_labelled"] == PIPELINE_ROWS
    assert set(summ["metrics"]["in_distribution"]) >= {"r2", "spearman"}
    assert summ["metrics"]["by_cluster"] is not None  # the pipeline db is clustered
    assert set(summ["baselines"]) == {"dense", "tfidf"}
    assert "missing" not in summ["baselines"]["dense"]  # featurized with --dense
    table = evidence_table(summ)
    assert table["representation"].tolist()[0] == "SAE features" and len(table) == 3
    qual = s.run(names["quality_proxy"])
    assert qual["config"]["kind"] == "logistic"
    assert "auc" in qual["summary"]["metrics"]["in_distribution"]
    # scores: one per example, oof exactly where labelled (every demo row is labelled)
    scores = s.probe_scores(names["difficulty_proxy"])
    assert len(scores) == PIPELINE_ROWS and bool(scores["oof"].notna().all())
    assert np.isfinite(scores["value"]).all()


def test_scores_are_wide_columns_and_export_filters(pipeline_db):
    s = Store(pipeline_db)
    views = s.views("demo")
    wide = s.wide("demo", views=views).to_pandas()
    assert {"difficulty_proxy", "quality_proxy", "pass_rate", "zero_signal"} <= set(wide.columns)
    t = float(np.median(wide["quality_proxy"]))
    kept = s.wide("demo", views=views, filters=[Filter("quality_proxy", ">=", t)]).num_rows
    assert kept == int((wide["quality_proxy"] >= t).sum()) and 0 < kept < PIPELINE_ROWS
    ranges = s.label_ranges("demo", views=views).set_index("name")
    assert ranges.loc["quality_proxy", "kind"] == "score"
    assert ranges.loc["difficulty", "kind"] == "label"
    summary = s.cluster_summary("demo", views=views)
    assert {"mean_difficulty_proxy", "mean_zero_signal"} <= set(summary.columns)


def test_cluster_run_compares_baselines(pipeline_db):
    s = Store(pipeline_db)
    summary = s.run(s.views("demo").cluster_run or 0)["summary"]
    evidence = summary["baselines"]
    assert {"sae", "dense", "tfidf"} <= set(evidence)
    assert "task" in evidence["categories"]
    nmi = evidence["sae"]["categories"]["task"]["nmi"]
    assert 0.0 <= nmi <= 1.0
    table = clustering_table(evidence)
    assert "NMI vs task" in table.columns and len(table) == 3


def test_rollout_labels_in_the_store(pipeline_db):
    s = Store(pipeline_db)
    wide = s.wide("demo", views=s.views("demo")).to_pandas()
    assert (wide["n_rollouts"] == 8).all()
    zero = (wide["pass_rate"] == 0) | (wide["pass_rate"] == 1)
    assert (wide["zero_signal"] == zero.astype(float)).all()
    rid = s.latest_run(dataset="demo", step="rollouts")
    assert "SIMULATED" in s.run(rid or 0)["config"]["source"].upper()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["difficulty", "--label", "nope"], "has no label 'nope'"),
        (["difficulty", "--label", "difficulty", "--range", "0,2"], "difficulty"),
        (["quality", "--label", "quality", "--min-labels", "5000"], "quality"),
        (["difficulty", "--label", "difficulty", "--name", "quality"], "already a label"),
        (["cluster", "--k", "5000"], "larger than"),
        (["cluster", "--sweep", "4,5000"], "larger than"),
    ],
)
def test_bad_input_is_one_line_and_stores_nothing(db, capsys, argv, message):
    s = Store(db)
    before = _runs(s)
    assert run_cli(*argv[:1], "--dataset", "demo", *argv[1:], "--db", str(db)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert _runs(s) == before


def test_labels_all_equal_or_too_few_store_nothing(db):
    s = Store(db)
    ids = s.example_texts("demo").column("id").to_pylist()
    s.set_labels("demo", "flat", pa.table({"example_id": ids, "value": [1.0] * len(ids)}))
    before = _runs(s)
    with pytest.raises(StudioError, match="flat"):
        probe(s, dataset="demo", signal="difficulty", label="flat")
    marks = pa.table({"example_id": ids[:6], "value": [0.0, 1.0] * 3})
    s.set_labels("demo", "quality_mark", marks)
    with pytest.raises(StudioError, match="quality_mark"):
        probe(s, dataset="demo", signal="quality", label="quality_mark")
    assert _runs(s) == before


def test_marks_train_a_probe(db):
    """Marks made in the app are a label like any other: 40 of them train a quality probe."""
    s = Store(db)
    wide = s.wide("demo", views=s.views("demo"), columns=["id", "quality"]).to_pandas()
    bad = wide[wide["quality"] == 0]["id"].tolist()
    good = wide[wide["quality"] == 1]["id"].tolist()[: 40 - len(bad)]
    marks = pa.table(
        {"example_id": bad + good, "value": [0.0] * len(bad) + [1.0] * len(good)},
    )
    s.set_labels("demo", "quality_mark", marks)
    rid = probe(s, dataset="demo", signal="quality", label="quality_mark", folds=2, min_labels=4)
    run = s.run(rid)
    assert run["summary"]["n_labelled"] == len(bad) + len(good)
    scores = s.probe_scores(rid)
    assert int(scores["oof"].notna().sum()) == len(bad) + len(good)
    assert len(scores) == PIPELINE_ROWS
    assert "quality_mark_proxy" in dict(s.views("demo").score_runs)
    # a NULL value removes a mark; unknown ids are an error and change nothing
    s.set_labels("demo", "quality_mark", pa.table({"example_id": [bad[0]], "value": [None]}))
    with pytest.raises(StudioError, match="no example 'ghost'"):
        s.set_labels("demo", "quality_mark", pa.table({"example_id": ["ghost"], "value": [1.0]}))
    assert len(s.labels("demo", "quality_mark")) == len(bad) + len(good) - 1


def test_rollouts_with_unknown_ids_store_nothing(db, tmp_path, capsys):
    s = Store(db)
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"id": "ghost", "passes": [1, 0]}) + "\n")
    before = _runs(s)
    assert run_cli("rollouts", str(path), "--dataset", "demo", "--db", str(db)) == 2
    err = capsys.readouterr().err
    assert "r.jsonl" in err and "ghost" in err
    assert _runs(s) == before


def test_threshold_report_counts_what_it_removes():
    scores = np.array([0.1, 0.2, 0.6, 0.9, 0.4])
    labels = np.array([0.0, 1.0, 0.0, 1.0, np.nan])
    rep = threshold_report(scores, threshold=0.5, labels=labels)
    assert rep["n_removed"] == 3 and rep["share_removed"] == pytest.approx(0.6)
    assert rep["precision"] == pytest.approx(0.5)  # removed & labelled: 0.1 (bad), 0.2 (good)
    assert rep["recall"] == pytest.approx(0.5)  # bad rows: 0.1 removed, 0.6 kept
    assert threshold_report(scores, threshold=0.0)["n_removed"] == 0


def _export(db: Path, out: Path, *args: str) -> int:
    return run_cli("export", "--dataset", "demo", *args, "--out", str(out), "--db", str(db))


def test_export_in_cluster_first_batches(pipeline_db, tmp_path):
    """--batch-size/--mix: every row once, full batches, curriculum kept inside each cluster,
    the manifest records the measured cross-cluster share and how to keep the order."""
    import pandas as pd

    out = tmp_path / "b.jsonl"
    args = ["--order", "curriculum", "--batch-size", "20", "--mix", "0.2", "--format", "jsonl"]
    assert _export(pipeline_db, out, *args) == 0
    df = pd.read_json(out, lines=True)
    assert sorted(df["id"]) == sorted(set(df["id"])) and len(df) == PIPELINE_ROWS
    assert bool((df.groupby("batch").size() == 20).all())
    for _, part in df.groupby("cluster"):
        assert part["difficulty"].is_monotonic_increasing
    manifest = json.loads((tmp_path / "b.jsonl.manifest.json").read_text())
    batches = manifest["batches"]
    assert batches["batch_size"] == 20 and batches["mix"] == 0.2
    assert 0.15 <= batches["measured_cross_cluster_share"] <= 0.35
    assert "--batch-size 20 --mix 0.2" in manifest["command"]
    bands = manifest["counts"]["per_difficulty_band"]
    assert sum(bands.values()) == PIPELINE_ROWS and set(bands) <= {"1", "2", "3", "4"}


def test_verl_export_has_the_rl_columns(pipeline_db, tmp_path):
    """verl's RL layout, read back with `datasets` the way verl's RLHFDataset reads Parquet;
    the same command writes the same bytes."""
    import datasets

    from core.demo_data import DEMO_EASE

    out = tmp_path / "train.parquet"
    written = []
    for _ in range(2):
        assert _export(pipeline_db, out, "--format", "verl", "--batch-size", "20") == 0
        written.append(out.read_bytes())
    assert written[0] == written[1]
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train")
    assert len(ds) == PIPELINE_ROWS
    columns = {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert columns <= set(ds.column_names)
    row = ds[0]
    assert row["data_source"] == "demo" and row["prompt"][0]["role"] == "user"
    assert row["prompt"][0]["content"] and row["reward_model"]["style"] == "rule"
    assert row["reward_model"]["ground_truth"]
    info = row["extra_info"]
    assert info["index"] == 0 and {"cluster", "batch", "difficulty", "quality_proxy"} <= set(info)
    assert set(ds["ability"]) <= set(DEMO_EASE)  # the task families
    manifest = json.loads((tmp_path / "train.parquet.manifest.json").read_text())
    assert "data.shuffle=False" in manifest["keep_the_order"]
