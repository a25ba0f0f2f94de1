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


def test_without_dense_no_baseline_is_stored(pipeline_db, tmp_path, tiny_bert_dir, tiny_sae_dir):
    db = str(_copy(pipeline_db, tmp_path))
    dense_run = Store(db).views("demo").feature_run
    args = ["--model", str(tiny_bert_dir), "--layer", str(PIPELINE_LAYER)]
    args += ["--sae-path", str(tiny_sae_dir), "--db", db]
    assert run_cli("featurize", "--dataset", "demo", *args) == 0
    s = Store(db)
    run = s.views("demo").feature_run
    assert run is not None and run != dense_run  # a plain run never resumes a dense one
    assert s.dense_vectors(run) is None
    assert "dense" not in s.run(run)["config"]  # older runs (no key) still resume
    assert s.dense_vectors(dense_run or 0) is not None


class _Interrupted(Exception):
    pass


class _StopAfter(Store):
    """A store whose feature commits fail after the first ``n``: a run interrupted mid-way,
    in this process."""

    def __init__(self, path: Path, *, n: int) -> None:
        super().__init__(path)
        self.left = n

    def write_feature_chunk(self, run_id, **kwargs) -> None:
        if self.left == 0:
            raise _Interrupted
        self.left -= 1
        super().write_feature_chunk(run_id, **kwargs)


def test_dense_run_resumes_and_equals_an_uninterrupted_one(
    pipeline_db, tiny_bert_dir, tiny_sae_dir, tmp_path
):
    import shutil

    from core.steps.featurize import FeaturizeConfig, featurize

    db = _copy(pipeline_db, tmp_path)
    clean = tmp_path / "clean.duckdb"
    shutil.copy(pipeline_db, clean)
    plain_run = Store(db).latest_run(dataset="demo", step="featurize")
    with pytest.raises(_Interrupted):
        featurize(
            _StopAfter(db, n=2),
            FeaturizeConfig(
                dataset="demo",
                model=str(tiny_bert_dir),
                layer=PIPELINE_LAYER,
                sae_path=str(tiny_sae_dir),
                chunk_size=64,
                dense=True,
            ),
        )
    store = Store(db)
    run_id = int(store.list_runs(step="featurize")["run_id"].iloc[0])
    assert run_id != plain_run  # a dense run is another config: it never resumes a plain one
    assert store.run(run_id)["status"] == "running"
    assert store.run(run_id)["config"]["dense"] is True
    partial = store.dense_vectors(run_id)
    assert partial is not None and len(partial[0]) == 2 * 64

    assert _featurize(db, tiny_bert_dir, tiny_sae_dir, "--layer", "1", "--dense") == 0
    run = store.run(run_id)  # the CLI's --dense run is the same config, so it resumed
    assert run["status"] == "done" and run["summary"]["resumed"] is True
    assert _featurize(clean, tiny_bert_dir, tiny_sae_dir, "--layer", "1", "--dense") == 0
    clean_run = Store(clean).latest_run(dataset="demo", step="featurize")
    assert clean_run is not None
    assert Store(clean).run(clean_run)["config"] == run["config"]

    got, want = store.dense_vectors(run_id), Store(clean).dense_vectors(clean_run)
    assert got is not None and want is not None
    assert got[0] == want[0] == store.example_texts("demo").column("id").to_pylist()
    assert got[1].shape == (PIPELINE_ROWS, 64) and got[1].dtype == np.float32
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert _features(db, run_id) == _features(clean, clean_run)


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
    captured = capsys.readouterr()
    text = captured.out
    assert str(out) in text and "explained variance" in text and "dead features" in text
    # Quality as it goes: a line per look, then the final figures.
    looks = [ln for ln in captured.err.splitlines() if ln.startswith("step ")]
    assert len(looks) >= 2
    assert all("explained variance" in ln and "dead features" in ln for ln in looks)
    from core.sae import load_sae

    sae = load_sae(path=out)
    assert sae.cfg.d_sae == 128
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


def test_train_sae_warns_when_poor(pipeline_db, tiny_bert_dir, tmp_path, capsys):
    """k=1 on a random model reconstructs poorly: the CLI says so, with what to try."""
    argv = ["train-sae", "--dataset", "demo", "--model", str(tiny_bert_dir), "--hook"]
    argv += ["blocks.2.hook_resid_pre", "--width", "64", "--k", "1", "--epochs", "1"]
    argv += ["--out", str(tmp_path / "poor"), "--db", str(_copy(pipeline_db, tmp_path))]
    assert run_cli(*argv) == 0
    out = capsys.readouterr().out
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning: ")]
    assert warnings and "explained variance" in warnings[0] and "--k" in warnings[0]


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
        (["--layer", "1", "--model", "nobody/no-such-model"], "(offline?)"),
        (["--hook", "blocks.7.hook_resid_post"], "'blocks.7.hook_resid_post' does not exist"),
        (["--hook", "blocks.1.hook_mlp_out"], "not a residual-stream hook"),
        (["--layer", "1", "--pool-over", "response"], "has no responses"),
        (["--layer", "1", "--chat-template"], "has no chat template"),
        (["--layer", "1", "--pooling", "count", "--top-k", "0"], "top_k must be at least 1"),
    ],
)
def test_featurize_bad_input_writes_nothing(
    pipeline_db, tiny_bert_dir, tiny_sae_dir, tmp_path, capsys, args, words
):
    db = _copy(pipeline_db, tmp_path)
    before = len(Store(db).list_runs())
    base: dict[str, str | None] = {"--model": str(tiny_bert_dir)}
    i = 0
    while i < len(args):  # flags without a value (--chat-template) take None
        value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
        base[args[i]] = value
        i += 1 if value is None else 2
    argv = ["featurize", "--dataset", "demo", "--sae-path", str(tiny_sae_dir), "--db", str(db)]
    for k, v in base.items():
        argv += [k] if v is None else [k, v]
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


def _featurize(db, model, sae, *extra):
    return run_cli(
        "featurize", "--dataset", "demo", "--model", str(model), "--sae-path", str(sae),
        "--chunk-size", "64", "--db", str(db), *extra,
    )  # fmt: skip


def _features(db, run_id):
    return {
        r["example_id"]: (r["feature_ids"], [round(v, 5) for v in r["vals"]])
        for r in Store(db).features(run_id).to_pylist()
    }


def test_layer_from_hook_or_from_the_sae(pipeline_db, tiny_bert_dir, tmp_path, capsys):
    from core.sae import load_sae

    db = _copy(pipeline_db, tmp_path)
    reference = _features(db, Store(db).latest_run(dataset="demo", step="featurize"))
    sae = load_sae(path=Path(str(pipeline_db)).parent.parent / "tiny-sae0")  # conftest's SAE
    sae.cfg.metadata.hook_name = "blocks.2.hook_resid_pre"  # = layer 1
    hooked = tmp_path / "hooked-sae"
    sae.save_model(str(hooked))

    assert _featurize(db, tiny_bert_dir, hooked) == 0  # no --layer: the SAE's hook says 1
    run = Store(db).run(Store(db).latest_run(dataset="demo", step="featurize"))
    assert (run["config"]["layer"], run["config"]["hook"]) == (1, "blocks.1.hook_resid_post")
    assert _features(db, run["run_id"]) == reference
    assert "blocks.1.hook_resid_post" in capsys.readouterr().out

    assert _featurize(db, tiny_bert_dir, hooked, "--layer", "2") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: SAE was trained on 'blocks.2.hook_resid_pre' (layer 1), not on layer 2 "
        f"(blocks.2.hook_resid_post) of model '{tiny_bert_dir}'"
    )


def test_raw_safetensors_sae_with_k_option(pipeline_db, tiny_bert_dir, tiny_sae_dir, tmp_path):
    """conftest's TopK SAE as a bare safetensors file: --sae-k makes it the same SAE."""
    import shutil

    db = _copy(pipeline_db, tmp_path)
    reference = _features(db, Store(db).latest_run(dataset="demo", step="featurize"))
    raw = tmp_path / "raw" / "sae.safetensors"
    raw.parent.mkdir()
    shutil.copy(tiny_sae_dir / "sae_weights.safetensors", raw)
    assert _featurize(db, tiny_bert_dir, raw, "--layer", "1", "--sae-k", "8") == 0
    run_id = Store(db).latest_run(dataset="demo", step="featurize")
    assert Store(db).run(run_id)["summary"]["sae_info"]["architecture"] == "topk"
    assert _features(db, run_id) == reference


def test_transfer_warning_truncation_count_and_bf16(
    pipeline_db, tiny_bert_dir, make_sae, tmp_path, capsys
):
    db = _copy(pipeline_db, tmp_path)
    sae = make_sae()
    sae.cfg.metadata.model_name = "Qwen/Qwen2.5-Math-1.5B"
    folder = tmp_path / "other-model-sae"
    sae.save_model(str(folder))
    argv = ["--layer", "1", "--max-length", "12", "--dtype", "bfloat16", "--pooling", "count"]
    assert _featurize(db, tiny_bert_dir, folder, *argv) == 0
    captured = capsys.readouterr()
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("warning: ")]
    assert any("'Qwen/Qwen2.5-Math-1.5B'" in w and str(tiny_bert_dir) in w for w in warnings)
    run = Store(db).run(Store(db).latest_run(dataset="demo", step="featurize"))
    n_trunc = run["summary"]["n_truncated"]
    assert 0 < n_trunc <= PIPELINE_ROWS
    assert f"{n_trunc} truncated" in captured.out
    assert any(f"{n_trunc} examples were longer than 12 tokens" in w for w in warnings)
    assert run["config"]["dtype"] == "bfloat16" and run["summary"]["dtype"] == "bfloat16"
    counts = [v for r in Store(db).features(run["run_id"]).to_pylist() for v in r["vals"]]
    assert counts and all(v == int(v) and 1 <= v <= 10 for v in counts)  # <= 10 kept tokens


def test_empty_dataset_is_an_error(tmp_path, tiny_bert_dir, tiny_sae_dir, capsys):
    from core.ingest import EXAMPLES_SCHEMA, LABELS_SCHEMA, RESPONSES_SCHEMA

    db = tmp_path / "empty.duckdb"
    Store(db).write_dataset(
        name="demo",
        kind="prompts",
        source="none",
        examples=EXAMPLES_SCHEMA.empty_table(),
        labels=LABELS_SCHEMA.empty_table(),
        responses=RESPONSES_SCHEMA.empty_table(),
    )
    assert _featurize(db, tiny_bert_dir, tiny_sae_dir, "--layer", "1") == 2
    assert capsys.readouterr().err.strip() == "error: dataset 'demo' has no examples"
    assert Store(db).list_runs().empty


def test_preferences_pool_over_the_chosen_response(tmp_path, tiny_decoder_dirs, make_sae):
    data = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": "Tell me a story.", "chosen": "Once upon a time.", "rejected": ["No."]},
        {"prompt": "What is two plus two?", "chosen": "Four.", "rejected": ["Five.", "?"]},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    db = tmp_path / "p.duckdb"
    assert (
        run_cli("ingest", str(data), "--dataset", "demo", "--kind", "preferences", "--db", str(db))
        == 0
    )
    sae = tmp_path / "sae"
    make_sae().save_model(str(sae))
    llama = tiny_decoder_dirs["llama"]
    for over, want in (("response", [5, 2]), ("both", [5 + 5, 6 + 2])):
        args = ["--layer", "1", "--pool-over", over, "--chat-template"]
        assert _featurize(db, llama, sae, *args) == 0
        run_id = Store(db).latest_run(dataset="demo", step="featurize")
        assert Store(db).run(run_id)["config"]["pool_over"] == over
        assert Store(db).features(run_id).column("n_tokens").to_pylist() == want


def test_import_descriptions_cli(pipeline_db, tmp_path, capsys):
    import json as _json

    db = _copy(pipeline_db, tmp_path)
    run = Store(db).views("demo").feature_run
    assert run is not None
    fired = [int(f) for f in Store(db).feature_summary(run)["feature_id"][:2]]
    path = tmp_path / "np.json"
    path.write_text(
        _json.dumps(
            [
                {"index": fired[0], "description": "sums of numbers"},
                {"index": str(fired[1]), "description": "animals"},
            ]
        )
    )
    assert run_cli("import-descriptions", str(path), "--dataset", "demo", "--db", str(db)) == 0
    assert "imported 2" in capsys.readouterr().out
    summary = Store(db).feature_summary(run).set_index("feature_id")
    assert summary.loc[fired[0], "description"] == "sums of numbers"
    assert summary.loc[fired[1], "description"] == "animals"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"index": "x"}]')
    assert run_cli("import-descriptions", str(bad), "--dataset", "demo", "--db", str(db)) == 2
    assert "bad.json" in capsys.readouterr().err


def test_cluster_sweep_picks_k_and_stores_the_scores(pipeline_db, tmp_path, capsys):
    db = str(_copy(pipeline_db, tmp_path))
    assert run_cli("cluster", "--dataset", "demo", "--sweep", "2,3,5", "--db", db) == 0
    out, err = capsys.readouterr()
    assert out.count("k=") == 3 and "TF-IDF of the text" in out  # the sweep, the baselines
    s = Store(db)
    run = s.run(s.views("demo").cluster_run or 0)
    sweep = run["summary"]["sweep"]
    assert [p["k"] for p in sweep] == [2, 3, 5]
    best = max(sweep, key=lambda p: p["silhouette"])["k"]
    assert run["summary"]["k"] == best == len(s.clusters(run["run_id"]))
    # the note (stored, and a warning line) says when the best k is an end of the grid
    at_edge = best in (2, 5)
    assert ("sweep_note" in run["summary"]) == at_edge
    assert ("warning: the best silhouette is at the" in err) == at_edge
    assert run_cli("cluster", "--dataset", "demo", "--sweep", "2,500", "--db", db) == 2
    assert "k=500 is larger than" in capsys.readouterr().err


def test_dedup_cli_groups_repeated_prompts_and_filters_them(
    pipeline_db, tiny_bert_dir, tiny_sae_dir, tmp_path, capsys
):
    db = str(_copy(pipeline_db, tmp_path))
    prompts = [f"Question {i}: what is {i} plus {i * 7}?" for i in range(12)]
    rows = [*prompts, prompts[2], prompts[5], prompts[2]]  # idx 12, 13, 14 are copies
    data = tmp_path / "dups.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"r{i}", "prompt": p}) + "\n" for i, p in enumerate(rows))
    )
    assert run_cli("ingest", str(data), "--dataset", "dups", "--kind", "prompts", "--db", db) == 0
    featurize = ["featurize", "--dataset", "dups", "--model", str(tiny_bert_dir)]
    featurize += ["--layer", str(PIPELINE_LAYER), "--sae-path", str(tiny_sae_dir), "--db", db]
    assert run_cli(*featurize) == 0
    out = tmp_path / "kept.jsonl"
    where = ["--where", "is_duplicate=0"]
    export = ["export", "--dataset", "dups", *where, "--out", str(out), "--db", db]
    assert run_cli(*export) == 2  # no dedup run yet: a clear message
    assert "run `python -m core dedup" in capsys.readouterr().err
    assert run_cli("dedup", "--dataset", "dups", "--threshold", "0.9999", "--db", db) == 0
    assert "extra copies" in capsys.readouterr().out
    s = Store(db)
    wide = s.wide("dups", views=s.views("dups")).to_pandas().set_index("id")
    for original, copies in (("r2", ["r12", "r14"]), ("r5", ["r13"])):
        group = wide.loc[original, "dup_group"]
        assert not np.isnan(group) and (wide.loc[copies, "dup_group"] == group).all()
        assert wide.loc[original, "is_duplicate"] == 0
        assert (wide.loc[copies, "is_duplicate"] == 1).all()
    assert run_cli(*export) == 0
    kept = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(kept) == sorted(f"r{i}" for i in range(12))
