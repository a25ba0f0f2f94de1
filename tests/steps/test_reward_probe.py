"""Responses datasets, Bradley-Terry reward probes on response features, the preference
feature shift, the disagreement probe and the Rewards page's frame (core/steps.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from core import rewards
from core.errors import StudioError
from core.export import ExportConfig
from core.steps.export import ExportRequest, export
from core.steps.rewards import (
    RewardProbeConfig,
    disagreement_probe,
    preference_shift,
    responses_dataset,
    reward_frame,
    reward_probe,
    reward_sources,
)
from core.store import RunRecord, Store
from tests.conftest import PREF_ROWS, run_cli


def _scores(store: Store, name: str) -> pd.DataFrame:
    rid = store.reward_runs("prefs")[name]
    return store.reward_scores(rid).to_pandas().rename(columns={"value": "score"})


def test_responses_dataset_is_one_example_per_response(rewards_db: Path) -> None:
    store = Store(rewards_db)
    cands = store.reward_candidates("prefs").to_pandas()
    info = store.dataset("prefs.responses")
    assert info["kind"] == "responses" and info["n_examples"] == len(cands) > PREF_ROWS
    keys = store.response_keys("prefs.responses").to_pandas()
    assert keys[["example_id", "response_idx", "role"]].values.tolist() == (
        cands[["example_id", "response_idx", "role"]].values.tolist()
    )
    assert (keys["id"] == keys["example_id"] + "#" + keys["response_idx"].astype(str)).all()
    texts = store.example_texts("prefs.responses").to_pandas()
    assert texts["text"].tolist() == cands["response"].tolist()
    chosen = store.labels("prefs.responses", "is_chosen").to_pandas()
    assert chosen["value"].tolist() == (keys["response_idx"] == 0).astype(float).tolist()
    # the source example's labels travel with each of its responses
    diff = store.labels("prefs", "difficulty").to_pandas().set_index("example_id")["value"]
    per_resp = store.labels("prefs.responses", "difficulty").to_pandas()
    assert per_resp["value"].tolist() == diff.reindex(keys["example_id"]).tolist()


def test_responses_dataset_refuses_other_kinds_and_existing_names(
    rewards_db: Path, tmp_path: Path
) -> None:
    db = tmp_path / "s.duckdb"
    shutil.copy(rewards_db, db)
    store = Store(db)
    with pytest.raises(StudioError, match="'demo' is prompts: a responses dataset is derived"):
        responses_dataset(store, dataset="demo")
    with pytest.raises(StudioError, match=r"already exists .* --replace"):
        responses_dataset(store, dataset="prefs")
    before = store.dataset("prefs.responses")["n_examples"]
    assert responses_dataset(store, dataset="prefs", replace=True) == "prefs.responses"
    assert store.dataset("prefs.responses")["n_examples"] == before
    # replacing dropped the old runs of the derived dataset with it
    assert store.latest_run(dataset="prefs.responses", step="featurize") is None
    with pytest.raises(StudioError, match="finished feature run: run featurize first"):
        reward_probe(store, RewardProbeConfig(dataset="prefs"))


def test_reward_probe_scores_are_out_of_fold(rewards_db: Path) -> None:
    store = Store(rewards_db)
    cands = store.reward_candidates("prefs").to_pandas()
    for features in ("sae", "dense"):
        name = f"bt-probe-{features}"
        run = store.run(store.reward_runs("prefs")[name])
        s = run["summary"]
        assert run["config"]["features"] == features and s["n_prompts"] == PREF_ROWS
        scores = _scores(store, name)
        assert len(scores) == len(cands) and bool(scores["score"].notna().all())
        assert "fold model that never saw it" in scores["source"].iloc[0]
        # the stored scores give back exactly the out-of-fold accuracy of the fit
        again = rewards.pairwise_accuracy(scores, n_boot=0)
        assert again.n == s["n_pairs"]
        assert again.value == pytest.approx(s["pairwise_oof"]["value"], abs=1e-12)
    sae = store.run(store.reward_runs("prefs")["bt-probe-sae"])["summary"]
    assert all(isinstance(w["feature"], int) for w in sae["top_weights"])


def _synthetic_prefs(path: Path, *, n: int) -> Path:
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for i in range(n):
            k = int(rng.integers(1, 4))
            row = {
                "id": f"p{i:03d}",
                "prompt": f"question {i}",
                "chosen": f"good answer {i}",
                "rejected": [f"bad answer {i}.{j}" for j in range(k)],
            }
            f.write(json.dumps(row) + "\n")
    return path


def _planted_feature_run(store: Store, dataset: str, *, d_sae: int = 16) -> int:
    """A hand-made feature run: feature 7 fires in chosen responses only, feature 3 is noise."""
    keys = store.response_keys(dataset).to_pandas()
    rng = np.random.default_rng(1)
    ids, vals = [], []
    for role in keys["role"]:
        f = [3] + ([7] if role == "chosen" else [])
        ids.append(f)
        vals.append([float(rng.uniform(0.1, 1.0))] + ([1.0] if role == "chosen" else []))
    rid, _ = store.begin_run(RunRecord("featurize", dataset, {"planted": True}, {}))
    chunk = pa.table(
        {
            "example_id": keys["id"],
            "n_tokens": pa.array([4] * len(keys), pa.int32()),
            "truncated": pa.array([False] * len(keys)),
            "feature_ids": pa.array(ids, pa.list_(pa.int32())),
            "values": pa.array(vals, pa.list_(pa.float32())),
        }
    )
    stats = pd.DataFrame({"feature_id": [7], "n_fire": [1], "sum_act": [1.0], "max_act": [1.0]})
    top = pd.DataFrame(
        {
            "feature_id": [7],
            "rank": [0],
            "example_id": [keys["id"][0]],
            "token": ["good"],
            "value": [1.0],
        }
    )
    store.write_feature_chunk(rid, chunk=chunk, stats=stats, top_tokens=top)
    store.finish_run(rid, summary={"d_sae": d_sae})
    return rid


def test_reward_probe_learns_a_planted_feature(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "s.duckdb")
    prefs = _synthetic_prefs(tmp_path / "p.jsonl", n=40)
    assert run_cli("ingest", str(prefs), "--dataset", "p", "--kind", "preferences", "--db", db) == 0
    store = Store(db)
    with pytest.raises(StudioError, match="no responses dataset: run `python -m core responses"):
        reward_probe(store, RewardProbeConfig(dataset="p"))
    assert run_cli("responses", "--dataset", "p", "--db", db) == 0
    fr = _planted_feature_run(store, "p.responses")
    capsys.readouterr()
    assert run_cli("reward-probe", "--dataset", "p", "--db", db) == 0
    out = capsys.readouterr().out
    assert f"(feature run {fr}); out-of-fold pairwise accuracy 1.000" in out
    assert "f7: +" in out.splitlines()[1] and "good" in out.splitlines()[1]
    scores = _scores_of(store, "p", "bt-probe-sae")
    best = scores.loc[scores.groupby("example_id")["score"].idxmax(), "response_idx"]
    assert (best == 0).all()  # every prompt's chosen response scores highest
    with pytest.raises(StudioError, match="has no dense baseline: featurize it with --dense"):
        reward_probe(store, RewardProbeConfig(dataset="p", features="dense"))
    # the shift ranks the planted feature first, fired in every chosen and no rejected response
    shift = preference_shift(store, dataset="p")
    top = shift.iloc[0]
    assert (top["feature_id"], top["fire_chosen"], top["fire_rejected"], top["label"]) == (
        7,
        1.0,
        0.0,
        "good",
    )
    assert run_cli("preference-features", "--dataset", "p", "--top", "2", "--db", db) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("f7 ") and len(lines) == 3


def _scores_of(store: Store, dataset: str, name: str) -> pd.DataFrame:
    rid = store.reward_runs(dataset)[name]
    return store.reward_scores(rid).to_pandas().rename(columns={"value": "score"})


def test_reward_probe_refuses_a_prompt_set(rewards_db: Path) -> None:
    with pytest.raises(StudioError, match=r"'demo' is prompts: reward probes .* preference set"):
        reward_probe(Store(rewards_db), RewardProbeConfig(dataset="demo"))


def test_preference_shift_on_the_rewards_store(rewards_db: Path) -> None:
    shift = preference_shift(Store(rewards_db), dataset="prefs", top=10)
    assert len(shift) == 10 and list(shift.columns[:3]) == ["feature_id", "label", "mean_chosen"]
    assert bool(shift["label"].map(len).gt(0).any())


def test_disagreement_probe(rewards_db: Path, capsys) -> None:
    store = Store(rewards_db)
    d = disagreement_probe(store, dataset="prefs", a="verifier", b="bt-probe-sae")
    gaps = d.table["rank_diff"].abs().to_numpy()
    assert (np.diff(gaps) <= 1e-12).all() and len(d.table) == len(_scores(store, "verifier"))
    assert bool(d.table["response"].notna().all())
    # headline: prompts held out together (all 60 of them as groups); shuffled folds beside it
    assert set(d.metrics) >= {"r2", "spearman", "n", "n_groups", "by_response"}
    assert d.metrics["n_groups"] == PREF_ROWS and d.metrics["n"] == len(d.table)
    assert set(d.metrics["by_response"]) >= {"r2", "spearman"}
    assert bool((d.weights["weight"] != 0).all())
    for f, top in d.top.items():
        assert f in set(d.weights["feature_id"])
        assert bool((top["activation"] > 0).all()) and bool((np.diff(top["activation"]) <= 0).all())
    with pytest.raises(StudioError, match="pick two different reward sources"):
        disagreement_probe(store, dataset="prefs", a="verifier", b="verifier")
    with pytest.raises(StudioError, match="no reward scores named 'nope'; it has: bt-probe-dense"):
        disagreement_probe(store, dataset="prefs", a="verifier", b="nope")
    db = ("--db", str(rewards_db))
    assert (
        run_cli("disagree", "--dataset", "prefs", "--a", "verifier", "--b", "bt-probe-sae", *db)
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith(f"{len(d.table)} responses scored by both")
    assert "sparse probe of rank_diff on SAE features: out-of-fold R2 (prompts held out)" in out


def test_reward_frame(rewards_db: Path) -> None:
    store = Store(rewards_db)
    frame = reward_frame(store, dataset="prefs")
    cands = store.reward_candidates("prefs").to_pandas()
    assert len(frame) == len(cands)
    for name in ("verifier", "bt-probe-sae", "bt-probe-dense"):
        assert bool(frame[f"score:{name}"].notna().all())
    assert frame[["cluster", "x", "y"]].notna().all().all()
    assert int(frame["cluster"].nunique()) == 3 and bool(frame["cluster_label"].notna().all())
    sources = reward_sources(store, dataset="prefs")
    assert sources["verifier"]["kind"] == "verifier"
    assert sources["bt-probe-sae"]["kind"] == "bt-probe"
    assert sources["verifier"]["source"].startswith("verifier:")
    # a prompt set has no candidates; its frame is empty but has the columns
    empty = reward_frame(store, dataset="demo")
    assert empty.empty and {"cluster", "x", "y"} <= set(empty.columns)


def test_judge_by_response_cluster(rewards_db: Path, capsys) -> None:
    from core.steps.judge import JudgeRequest, judge

    store = Store(rewards_db)
    judged = judge(store, JudgeRequest("prefs", by=["response_cluster"], side="chosen"))
    rows = judged["sources"]["verifier"]["by"]["response_cluster"]
    frame = reward_frame(store, dataset="prefs")
    chosen = frame[frame["role"].eq("chosen")]
    want = chosen["cluster"].value_counts().sort_index()
    assert [r["value"] for r in rows] == want.index.tolist()
    assert [r["n_examples"] for r in rows] == want.tolist()
    assert sum(r["n_pairs"] for r in rows) == judged["sources"]["verifier"]["pairwise"]["n"]
    assert all(r["pairwise"] == 1.0 for r in rows)  # the verifier always prefers the chosen
    db = ("--db", str(rewards_db))
    # a response's cluster differs within a prompt: per example it is refused in one line
    assert run_cli("judge", "--dataset", "prefs", "--by", "response_cluster", *db) == 2
    assert "differs between the responses" in capsys.readouterr().err
    assert run_cli("judge", "--dataset", "demo", "--by", "response_cluster", *db) == 2


def test_a_responses_dataset_exports_its_responses(rewards_db: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s.duckdb"  # export records itself in the store
    shutil.copy(rewards_db, copy)
    db = ("--db", str(copy))
    rows, sft = tmp_path / "rows.jsonl", tmp_path / "sft.jsonl"
    assert run_cli("export", "--dataset", "prefs.responses", "--out", str(rows), *db) == 0
    cands = Store(rewards_db).reward_candidates("prefs").to_pandas()
    got = [json.loads(line) for line in rows.read_text().splitlines()]
    by_id = {r["id"]: r for r in got}
    assert len(got) == len(cands)
    for c in cands.itertuples():
        row = by_id[f"{c.example_id}#{c.response_idx}"]
        assert (row["response"], row["prompt"], row["is_chosen"]) == (
            c.response,
            c.prompt,
            float(c.role == "chosen"),
        )
    fmt = ("--format", "trl-messages", "--order", "none")
    assert run_cli("export", "--dataset", "prefs.responses", *fmt, "--out", str(sft), *db) == 0
    first = json.loads(sft.read_text().splitlines()[0])
    assert first["messages"] == [
        {"role": "user", "content": cands["prompt"][0]},
        {"role": "assistant", "content": cands["response"][0]},
    ]
    assert "response" not in first and "prompt" not in first
    with pytest.raises(
        StudioError,
        match=r"kind preferences; this one is responses \(use trl-messages or trl-prompt\)",
    ):
        export(
            Store(copy),
            ExportRequest("prefs.responses"),
            ExportConfig(fmt="trl-preference", order="none"),
            out=tmp_path / "x.jsonl",
        )
