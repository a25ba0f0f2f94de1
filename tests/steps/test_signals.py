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
from core.filters import Filter
from core.signals import (
    SCORE_SOURCE,
    class_line,
    clustering_table,
    evidence_table,
    threshold_report,
)
from core.steps.probes import ProbeRequest, probe
from core.store import Store
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
    # every demo row is labelled, so every stored score is the out-of-fold one
    assert np.array_equal(scores["value"].to_numpy(), scores["oof"].to_numpy())
    assert summ["labelled_scores"] == "out_of_fold" and summ["n_unscored"] == 0
    assert qual["summary"]["classes"] == {"0": "bad", "1": "good"}


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


def test_stored_scores_of_a_memorisable_label_are_out_of_fold(db, capsys):
    """A coin-flip 0/1 label on the demo rows (plus 20 unlabelled): nothing to learn, but the
    final model fits its labels in sample. The stored column must separate the label no better
    than the out-of-fold evidence says (the old code stored in-sample scores here), and rows
    without a label are scored by the final model."""
    from sklearn.metrics import roc_auc_score

    s = Store(db)
    ids = s.example_texts("demo").column("id").to_pylist()
    coin = np.random.default_rng(3).integers(0, 2, len(ids) - 20).astype(float)
    s.set_labels("demo", "coin", pa.table({"example_id": ids[:-20], "value": coin}))
    assert run_cli("quality", "--dataset", "demo", "--label", "coin", "--db", str(db)) == 0
    out = capsys.readouterr().out
    assert SCORE_SOURCE in out and "bad rows: label 0" in out
    rid = dict(s.views("demo").score_runs)["coin_proxy"]
    summ = s.run(rid)["summary"]
    oof_auc = summ["metrics"]["in_distribution"]["auc"]
    wide = s.wide("demo", views=s.views("demo"), columns=["id", "coin", "coin_proxy"])
    frame = wide.to_pandas().set_index("id")
    labelled = frame["coin"].notna()
    stored_auc = roc_auc_score(frame.loc[labelled, "coin"], frame.loc[labelled, "coin_proxy"])
    assert stored_auc == pytest.approx(oof_auc)
    assert abs(stored_auc - 0.5) < 0.15
    assert bool(frame["coin_proxy"].notna().all())  # unlabelled rows scored too
    scores = s.probe_scores(rid).set_index("example_id")
    assert bool(scores.loc[ids[-20:], "oof"].isna().all())


def test_a_score_name_of_another_signal_is_refused(db, capsys):
    """`quality --label difficulty` would store `difficulty_proxy`, which the wide view (newest
    probe run per name) would then read instead of the difficulty probe's."""
    s = Store(db)
    before = _runs(s)
    diff_run = dict(s.views("demo").score_runs)["difficulty_proxy"]
    args = ("quality", "--dataset", "demo", "--label", "difficulty", "--db", str(db))
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: score name 'difficulty_proxy' belongs to the difficulty probe (run {diff_run}) "
        "of 'demo'; pick --name"
    )
    assert _runs(s) == before
    assert dict(s.views("demo").score_runs)["difficulty_proxy"] == diff_run
    # the same signal may replace its own column
    again = ("--dataset", "demo", "--label", "difficulty", "--baselines", "none", "--db", str(db))
    assert run_cli("difficulty", *again) == 0


def test_a_quality_probe_on_a_graded_label_says_it_chose_ridge(db, capsys):
    args = ("--dataset", "demo", "--label", "difficulty", "--name", "graded", "--db", str(db))
    assert run_cli("quality", *args, "--baselines", "none") == 0
    captured = capsys.readouterr()
    note = [ln for ln in captured.err.splitlines() if ln.startswith("note:")]
    assert len(note) == 1
    assert "'difficulty'" in note[0] and "not 0/1" in note[0] and "ridge" in note[0]
    assert "1, 2, 3, 4" in note[0] and "--kind" in note[0]
    assert "ridge on 'difficulty'" in captured.out
    # a 0/1 label, or a kind given, needs no note
    again = (*args[:-4], "--kind", "ridge", "--name", "g2", *args[-2:], "--baselines", "none")
    assert run_cli("quality", *again) == 0
    assert "note:" not in capsys.readouterr().err


def test_evidence_table_names_the_bad_class_beside_its_base_rate():
    split = {
        "auc": 0.65,
        "average_precision_0": 0.313,
        "base_rate_0": 0.029,
        "average_precision_1": 0.979,
        "base_rate_1": 0.971,
        "n": 1530,
        "skipped_folds": 0,
    }
    summary = {
        "metrics": {"in_distribution": split, "by_cluster": None},
        "classes": {"0": "bad", "1": "good"},
        "baselines": {"tfidf": {"in_distribution": split, "by_cluster": None}},
    }
    table = evidence_table(summary)
    assert list(table.columns) == [
        "representation",
        "auc (in distribution)",
        "AP of bad (in distribution)",
        "bad base rate (in distribution)",
    ]
    assert table["AP of bad (in distribution)"].tolist() == [0.313, 0.313]
    line = class_line(summary)
    assert line is not None and "label 0, 44 of 1,530" in line and "0.029" in line
    # higher is worse: label 1 is the bad class
    worse = {**summary, "classes": {"0": "good", "1": "bad"}}
    assert evidence_table(worse)["AP of bad (in distribution)"].tolist() == [0.979, 0.979]
    # a run stored before per-class metrics: its AP named for the class it was computed on
    old = {"metrics": {"in_distribution": {"auc": 0.6, "average_precision": 0.9}}}
    assert "AP of label 1 (in distribution)" in evidence_table(old).columns


def test_labels_all_equal_or_too_few_store_nothing(db):
    s = Store(db)
    ids = s.example_texts("demo").column("id").to_pylist()
    s.set_labels("demo", "flat", pa.table({"example_id": ids, "value": [1.0] * len(ids)}))
    before = _runs(s)
    with pytest.raises(StudioError, match="flat"):
        probe(s, ProbeRequest("demo", "difficulty", "flat"))
    marks = pa.table({"example_id": ids[:6], "value": [0.0, 1.0] * 3})
    s.set_labels("demo", "quality_mark", marks)
    with pytest.raises(StudioError, match="quality_mark"):
        probe(s, ProbeRequest("demo", "quality", "quality_mark"))
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
    rid = probe(s, ProbeRequest("demo", "quality", "quality_mark", folds=2, min_labels=4))
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
    assert rep["base_rate"] == pytest.approx(0.5)  # 2 bad of 4 labelled
    assert threshold_report(scores, threshold=0.0)["n_removed"] == 0
    # higher is worse: label 1 is bad and rows above the threshold go
    up = threshold_report(scores, threshold=0.5, labels=labels, bad=1.0, remove_above=True)
    assert up["n_removed"] == 2  # 0.6, 0.9
    assert up["precision"] == pytest.approx(0.5) and up["recall"] == pytest.approx(0.5)
    assert up["base_rate"] == pytest.approx(0.5)


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
