"""The whole CLI path on ~200 rows: stored features equal a direct computation; bad input fails
with one line and writes nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.store import Store
from tests.conftest import PIPELINE_LAYER, PIPELINE_ROWS, run_cli

pytestmark = pytest.mark.slow


def test_pipeline_stores_every_example(pipeline_db):
    s = Store(pipeline_db)
    views = s.views("demo")
    assert None not in (views.feature_run, views.cluster_run, views.projection_run)
    feats = s.features(views.feature_run)
    assert feats.num_rows == PIPELINE_ROWS
    assert len(set(feats.column("example_id").to_pylist())) == PIPELINE_ROWS
    wide = s.wide("demo", views=views).to_pandas()
    assert wide["cluster"].notna().all() and wide["x"].notna().all()
    assert set(wide["cluster"]) == {0, 1, 2, 3}
    assert {"difficulty", "quality"} <= set(wide.columns)
    clusters = s.clusters(views.cluster_run)
    assert int(clusters["size"].sum()) == PIPELINE_ROWS
    assert all(label.startswith("f") for label in clusters["label"])
    fr = s.run(views.feature_run)
    assert fr["config"]["layer"] == PIPELINE_LAYER and fr["config"]["pooling"] == "mean"
    assert fr["summary"]["n_examples"] == PIPELINE_ROWS


def test_stored_features_equal_a_direct_computation(pipeline_db, tiny_bert, tiny_sae):
    """Full forward with output_hidden_states, SAE on every non-special token, mean, top 64."""
    from core.models import full_forward_activations, tokenize_batch

    s = Store(pipeline_db)
    views = s.views("demo")
    stored = s.features(views.feature_run).to_pylist()[:25]
    texts = dict(
        zip(*[s.example_texts("demo").column(c).to_pylist() for c in ("id", "text")], strict=True)
    )
    for row in stored:
        batch = tokenize_batch(tiny_bert, [texts[row["example_id"]]], max_length=256)
        acts = full_forward_activations(tiny_bert, batch, layer=PIPELINE_LAYER)[0]
        keep = batch["keep"][0].bool()
        with torch.no_grad():
            codes = tiny_sae.encode(acts[keep].float())
        pooled = codes.mean(dim=0).numpy()
        nz = np.flatnonzero(pooled > 0)
        top = nz[np.argsort(-pooled[nz], kind="stable")][:64]
        assert sorted(row["feature_ids"]) == sorted(top.tolist())
        got = dict(zip(row["feature_ids"], row["vals"], strict=True))
        np.testing.assert_allclose([got[i] for i in top], pooled[top], rtol=1e-4, atol=1e-5)
        assert row["n_tokens"] == int(keep.sum())


def test_export_via_cli_is_filtered_ordered_and_reproducible(pipeline_db, tmp_path):
    out = tmp_path / "train.jsonl"
    args = [
        "export",
        "--dataset",
        "demo",
        "--db",
        str(pipeline_db),
        "--where",
        "quality>=1",
        "--where",
        "cluster in 0,1",
        "--order",
        "curriculum",
        "--out",
        str(out),
    ]
    assert run_cli(*args) == 0
    first = out.read_bytes()
    rows = [json.loads(x) for x in first.decode().splitlines()]
    assert rows and all(r["quality"] >= 1 and r["cluster"] in (0, 1) for r in rows)
    assert {"id", "prompt", "answer", "cluster", "difficulty", "task"} <= set(rows[0])
    man = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert man["rows"] == len(rows) and man["order"] == "curriculum"
    assert man["feature_run"]["layer"] == PIPELINE_LAYER
    assert sum(man["counts"]["per_cluster"].values()) == len(rows)
    assert run_cli(*args) == 0
    assert out.read_bytes() == first  # byte-identical on rerun


def test_parquet_export_and_selection_file(pipeline_db, tmp_path):
    import pyarrow.parquet as pq

    ids = Store(pipeline_db).example_texts("demo").column("id").to_pylist()[:7]
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    out = tmp_path / "sel.parquet"
    assert (
        run_cli(
            "export",
            "--dataset",
            "demo",
            "--db",
            str(pipeline_db),
            "--ids",
            str(tmp_path / "ids.txt"),
            "--format",
            "parquet",
            "--out",
            str(out),
        )
        == 0
    )
    assert sorted(pq.read_table(out).column("id").to_pylist()) == sorted(ids)


def test_train_sae_cli_prints_folder_and_quality(pipeline_db, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "sae"
    assert (
        run_cli(
            "train-sae",
            "--dataset",
            "demo",
            "--model",
            str(tiny_bert_dir),
            "--layer",
            "1",
            "--width",
            "128",
            "--k",
            "4",
            "--out",
            str(out),
            "--db",
            str(_copy(pipeline_db, tmp_path)),
        )
        == 0
    )
    text = capsys.readouterr().out
    assert str(out) in text and "explained variance" in text and "dead features" in text
    from core.sae import load_sae

    assert load_sae(path=out).cfg.d_sae == 128


def _copy(db: Path, tmp: Path) -> Path:
    import shutil

    dest = tmp / "copy.duckdb"
    shutil.copy(db, dest)
    return dest


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--layer", "9"], "out of range"),
        (["--layer", "1", "--model", "/nonexistent/model"], "/nonexistent/model"),
    ],
)
def test_featurize_bad_input_writes_nothing(
    pipeline_db, tiny_bert_dir, tiny_sae_dir, tmp_path, capsys, args, words
):
    db = _copy(pipeline_db, tmp_path)
    before = len(Store(db).list_runs())
    base = {"--model": str(tiny_bert_dir), "--layer": "1"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = ["featurize", "--dataset", "demo", "--sae-path", str(tiny_sae_dir), "--db", str(db)]
    for k, v in base.items():
        argv += [k, v]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0]
    assert len(Store(db).list_runs()) == before


def test_sae_width_mismatch_is_named(pipeline_db, tiny_bert_dir, make_sae, tmp_path, capsys):
    db = _copy(pipeline_db, tmp_path)
    wrong = tmp_path / "wrong-sae"
    make_sae(d_in=32).save_model(str(wrong))
    assert (
        run_cli(
            "featurize",
            "--dataset",
            "demo",
            "--model",
            str(tiny_bert_dir),
            "--layer",
            "1",
            "--sae-path",
            str(wrong),
            "--db",
            str(db),
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "32" in err and "64" in err
    assert Store(db).latest_run(dataset="demo", step="featurize") == Store(pipeline_db).latest_run(
        dataset="demo", step="featurize"
    )


def test_ingest_bad_file_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    db = tmp_path / "x.duckdb"
    assert run_cli("ingest", str(bad), "--dataset", "b", "--kind", "prompts", "--db", str(db)) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err
    assert not db.exists() or Store(db).list_datasets().empty
