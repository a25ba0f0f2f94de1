"""Exports that train: the manifest's command writes the same bytes again, preference batches are
batches of pair rows, SFT of responses keeps the chosen ones, verl exports carry a reward function
that scores as the studio's verifier does, and --max-length drops before batching."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import reasoning_gym

from core import answers
from core.demo_data import write_demo_preferences
from core.store import Store
from core.verifiers import verify
from tests.conftest import hand_clusters, run_cli

PREFS = 30


def _rg_rows(n_per_task: int = 6) -> list[dict[str, Any]]:
    """reasoning-gym entries whose checkers read the entry's metadata (countdown: any expression
    over the numbers that hits the target) beside ones that do not."""
    rows = []
    for task in ("countdown", "chain_sum"):
        ds = reasoning_gym.create_dataset(task, size=n_per_task, seed=1)
        for i, entry in enumerate(ds):
            rows.append(
                {
                    "id": f"{task}-{i}",
                    "prompt": entry["question"],
                    "answer": entry["answer"],
                    "task": task,
                    "difficulty": 1 + i % 3,
                    "metadata": json.loads(json.dumps(entry["metadata"], default=list)),
                }
            )
    return rows


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prefs (a preference set, clustered by hand) with its responses dataset, and rg (reasoning-
    gym prompts with their metadata), ingested through the CLI."""
    folder = tmp_path_factory.mktemp("train")
    db = folder / "s.duckdb"
    d = ("--db", str(db))
    prefs = write_demo_preferences(folder / "prefs.jsonl", n=PREFS, seed=0)
    assert run_cli("ingest", str(prefs), "--dataset", "prefs", "--kind", "preferences", *d) == 0
    assert run_cli("responses", "--dataset", "prefs", *d) == 0
    rg = folder / "rg.jsonl"
    rg.write_text("".join(json.dumps(r) + "\n" for r in _rg_rows()))
    assert run_cli("ingest", str(rg), "--dataset", "rg", "--kind", "prompts", *d) == 0
    hand_clusters(db, "prefs")
    hand_clusters(db, "prefs.responses")
    hand_clusters(db, "rg", k=2)
    return db


def _export(db: Path, dataset: str, out: Path, *args: str) -> dict[str, Any]:
    argv = ["export", "--db", str(db), "--dataset", dataset, "--out", str(out), *args]
    assert run_cli(*argv) == 0
    return json.loads(Path(f"{out}.manifest.json").read_text())


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_manifest_command_writes_the_same_bytes(db: Path, tmp_path: Path) -> None:
    """Run the manifest's command as written (a fresh process, from its run_from folder) after
    removing the export: the same data, id list and manifest come back, byte for byte."""
    ids = tmp_path / "pick.txt"
    ids.write_text("".join(f"pref-{i:05d}\n" for i in range(1, PREFS, 2)))
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"name": "r", "rules": [{"action": "drop", "where": "task=x"}]}))
    out = tmp_path / "sub dir" / "train.jsonl"
    args = ["--format", "trl-preference", "--order", "random", "--seed", "7", "--ids", str(ids)]
    args += ["--rules", str(rules), "--where", "difficulty>=1", "--drop", "cluster in 2"]
    args += ["--batch-size", "4", "--mix", "0.25"]
    manifest = _export(db, "prefs", out, *args)
    assert manifest["rows"] > 0
    written = {p: p.read_bytes() for p in out.parent.iterdir()}
    assert {p.name for p in written} == {
        "train.jsonl",
        "train.jsonl.manifest.json",
        "train.jsonl.ids.txt",
    }
    for p in written:  # the id list stays: the command reads it
        if not p.name.endswith(".ids.txt"):
            p.unlink()
    argv = shlex.split(manifest["command"])
    assert argv[:4] == ["python", "-m", "core", "export"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=manifest["run_from"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert {p: p.read_bytes() for p in out.parent.iterdir()} == written


def test_preference_batches_are_batches_of_pair_rows(db: Path, tmp_path: Path) -> None:
    """trl-preference with --batch-size B: every batch but the last holds exactly B (chosen,
    rejected) rows, consecutive, each row is one pair of its prompt, and every pair is there."""
    out = tmp_path / "pairs.jsonl"
    manifest = _export(db, "prefs", out, "--format", "trl-preference", "--batch-size", "8")
    rows = _jsonl(out)
    store = Store(db)
    n_pairs = sum(store.rejected_counts("prefs")["n_rejected"].to_pylist())
    assert len(rows) == manifest["rows"] == manifest["counts"]["rows"] == n_pairs
    assert manifest["counts"]["examples"] <= PREFS < n_pairs
    assert manifest["batches"]["unit"] == "(chosen, rejected) pair rows"
    batches = [r["batch"] for r in rows]
    assert batches == sorted(batches)  # consecutive
    sizes = pd.Series(batches).value_counts().sort_index().tolist()
    assert sizes[:-1] == [8] * (len(sizes) - 1) and 0 < sizes[-1] <= 8
    assert manifest["batches"]["n_batches"] == len(sizes)
    pairs = {(r["id"], r["rejected_idx"]) for r in rows}
    assert len(pairs) == n_pairs
    plain = _jsonl(_export_plain(db, tmp_path))
    by_pair = {(r["id"], r["rejected_idx"]): r["rejected"] for r in plain}
    assert all(by_pair[(r["id"], r["rejected_idx"])] == r["rejected"] for r in rows)
    assert sum(manifest["counts"]["per_cluster"].values()) == len(rows)


def _export_plain(db: Path, tmp_path: Path) -> Path:
    out = tmp_path / "plain.jsonl"
    _export(db, "prefs", out, "--format", "trl-preference")
    return out


def test_sft_of_responses_keeps_the_chosen_ones_unless_asked(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft.jsonl"
    manifest = _export(db, "prefs.responses", out, "--format", "trl-messages")
    rows = _jsonl(out)
    assert len(rows) == PREFS and all(r["is_chosen"] == 1 for r in rows)
    assert manifest["responses"]["kept"] == "chosen"
    assert {"column": "is_chosen", "op": "=", "value": 1.0} in [
        {k: f[k] for k in ("column", "op", "value")} for f in manifest["filters"]
    ]
    assert "--responses" not in manifest["command"]
    every = _export(db, "prefs.responses", tmp_path / "all.jsonl", "--format", "trl-messages",
                    "--responses", "all")  # fmt: skip
    assert every["rows"] == Store(db).dataset("prefs.responses")["n_examples"] > PREFS
    assert "--responses all" in every["command"]
    # other layouts of a responses dataset keep every response
    rows_all = _export(db, "prefs.responses", tmp_path / "rows.jsonl", "--format", "jsonl")
    assert rows_all["rows"] == every["rows"] and rows_all["responses"] is None


def _load_reward_file(path: Path) -> Any:
    """The reward file loaded the way verl loads a custom reward function (by file path)."""
    spec = importlib.util.spec_from_file_location("custom_module", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_verl_export_carries_a_reward_function_that_scores_like_the_verifier(
    db: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"rl{suffix}"
    manifest = _export(db, "rg", out, "--format", "verl", "--batch-size", "4")
    reward = Path(f"{out}.reward.py")
    assert reward.read_bytes() == Path(answers.__file__).read_bytes()
    train = manifest["train"]
    assert train["reward_function"] == {**train["reward_function"], "path": str(reward)}
    assert f"reward.custom_reward_function.path={reward}" in train["overrides"]
    assert "reward.custom_reward_function.name=compute_score" in train["overrides"]
    assert {"data.shuffle=False", "data.train_batch_size=4"} <= set(train["overrides"])
    assert train["command"].startswith("python3 -m verl.trainer.main_ppo ")
    rows = (
        pq.read_table(out).to_pylist()
        if suffix == ".parquet"
        else [json.loads(x) for x in out.read_text().splitlines()]
    )
    fn = _load_reward_file(reward).compute_score
    truth = {r["id"]: r for r in _rg_rows()}
    checked = 0
    for row in rows:
        info = row["extra_info"]
        src = truth[info["id"]]
        assert info["task"] == src["task"] and json.loads(info["metadata"]) == src["metadata"]
        # countdown: another expression than the reference that hits the target scores 1 only
        # through the task's checker with its metadata
        answer = src["answer"]
        if src["task"] == "countdown":
            answer = f"({answer})"
        for said in (f"The answer is {answer}", "The answer is 123456789"):
            want = verify([said], [src["answer"]], tasks=[src["task"]],
                          metadata=[src["metadata"]])[0].score  # fmt: skip
            got = fn(row["data_source"], said, row["reward_model"]["ground_truth"], info)
            assert got == want
            checked += 1
    assert checked == 2 * len(rows) == 24
    # with the metadata a different right expression gets full marks, without it none
    countdown = next(r for r in rows if r["extra_info"]["task"] == "countdown")
    right = f"The answer is ({truth[countdown['extra_info']['id']]['answer']})"
    gt = countdown["reward_model"]["ground_truth"]
    assert fn("rg", right, gt, countdown["extra_info"]) == 1.0
    assert fn("rg", right, gt, {**countdown["extra_info"], "metadata": None}) < 1.0


def test_verl_refuses_an_hf_folder_in_one_line(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", "--db", str(db), "--dataset", "rg", "--out", str(tmp_path / "f")]
    assert run_cli(*argv, "--format", "verl") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out ") and ".parquet or .jsonl" in err
    assert len(err.splitlines()) == 1


def test_trl_manifests_give_the_config_that_keeps_batches(db: Path, tmp_path: Path) -> None:
    prompt = _export(db, "rg", tmp_path / "g.jsonl", "--format", "trl-prompt", "--batch-size", "4")
    assert prompt["train"]["config"]["shuffle_dataset"] is False
    pref = _export(db, "prefs", tmp_path / "d.jsonl", "--format", "trl-preference",
                   "--batch-size", "6")  # fmt: skip
    cfg = pref["train"]["config"]
    assert cfg["train_sampling_strategy"] == "sequential"
    assert cfg["per_device_train_batch_size"] == 6
    plain = _export(db, "rg", tmp_path / "rows.jsonl", "--format", "jsonl")
    assert plain["train"] is None


def test_the_manifest_hashes_every_file_beside_the_data(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "rl.parquet"
    manifest = _export(db, "rg", out, "--format", "verl")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == manifest["sha256"]


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM's tokenizer with the test chat template, saved to a folder (a trainer's)."""
    from tests.conftest import CHAT_TEMPLATE, _copy_tokenizer

    folder = tmp_path_factory.mktemp("chat-tok")
    tok = _copy_tokenizer(folder)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def _chat_len(tok: Any, messages: list[dict[str, str]], *, generation: bool = False) -> int:
    out = tok.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation, return_dict=True
    )
    return len(out["input_ids"])


@pytest.mark.parametrize(
    ("dataset", "fmt"),
    [("prefs", "trl-preference"), ("rg", "verl"), ("rg", "trl-prompt"),
     ("prefs.responses", "trl-messages")],
)  # fmt: skip
def test_max_length_drops_what_the_trainer_would_before_batching(
    db: Path, tmp_path: Path, chat_tokenizer: Path, dataset: str, fmt: str
) -> None:
    """Rows over --max-length tokens (measured one by one here, as the trainer tokenizes them)
    are left out and listed; what remains is batched whole; the command repeats the flags."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(chat_tokenizer))
    suffix = ".parquet" if fmt == "verl" else ".jsonl"
    full = _export(db, dataset, tmp_path / f"all{suffix}", "--format", fmt)
    rows = (pq.read_table(tmp_path / f"all{suffix}").to_pylist() if fmt == "verl"
            else _jsonl(tmp_path / f"all{suffix}"))  # fmt: skip

    def length(r: dict[str, Any]) -> int:
        if fmt in ("verl", "trl-prompt"):
            return _chat_len(tok, r["prompt"], generation=True)
        if fmt == "trl-messages":
            return _chat_len(tok, r["messages"])
        return max(_chat_len(tok, r["prompt"] + r["chosen"]),
                   _chat_len(tok, r["prompt"] + r["rejected"]))  # fmt: skip

    distinct = sorted({length(r) for r in rows})
    limit = distinct[(len(distinct) - 1) // 2]  # some rows are longer, some are not
    key = (lambda r: r["extra_info"]["id"]) if fmt == "verl" else (lambda r: r["id"])
    if fmt == "trl-preference":
        key = lambda r: f"{r['id']}#{r['rejected_idx']}"  # noqa: E731
    over = sorted(key(r) for r in rows if length(r) > limit)
    assert 0 < len(over) < len(rows)
    out = tmp_path / f"cut{suffix}"
    args = ["--format", fmt, "--tokenizer", str(chat_tokenizer), "--max-length", str(limit)]
    manifest = _export(db, dataset, out, *args, "--batch-size", "4")
    assert sorted(manifest["lengths"]["dropped_ids"]) == over
    assert manifest["lengths"]["rows_checked"] == full["rows"] == len(rows)
    assert manifest["rows"] == len(rows) - len(over)
    kept = pq.read_table(out).to_pylist() if fmt == "verl" else _jsonl(out)
    assert all(length(r) <= limit for r in kept)
    batches = [r["extra_info"]["batch"] if fmt == "verl" else r["batch"] for r in kept]
    sizes = pd.Series(batches).value_counts().sort_index().tolist()
    assert sizes[:-1] == [4] * (len(sizes) - 1)
    assert f"--max-length {limit}" in manifest["command"]


def test_max_length_needs_a_trainer_format_and_a_chat_template(
    db: Path, tmp_path: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["export", "--db", str(db), "--dataset", "rg", "--out", str(tmp_path / "x.jsonl")]
    assert run_cli(*base, "--max-length", "9", "--tokenizer", "t") == 2
    assert "--format jsonl has no trainer" in capsys.readouterr().err
    assert run_cli(*base, "--format", "trl-prompt", "--max-length", "9") == 2
    assert "--tokenizer and --max-length go together" in capsys.readouterr().err
    args = ["--format", "trl-prompt", "--max-length", "9", "--tokenizer", str(tiny_bert_dir)]
    assert run_cli(*base, *args) == 2
    err = capsys.readouterr().err.strip()
    assert "has no chat template" in err and len(err.splitlines()) == 1
    missing, empty = tmp_path / "no-such-tok", tmp_path / "empty"
    empty.mkdir()
    for source, says in ((missing, "no such folder"), (empty, "holds no tokenizer")):
        argv = ["--format", "trl-prompt", "--max-length", "9", "--tokenizer", str(source)]
        assert run_cli(*base, *argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --tokenizer {source}: ") and says in err, err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "x.jsonl").exists()


def test_trl_prompt_export_carries_the_verifier_as_a_grpo_reward_function(
    db: Path, tmp_path: Path
) -> None:
    """GRPO hands reward functions the completions and the columns beside the prompt as lists:
    verifier_reward from OUT.reward.py scores them as the studio's verifier does."""
    out = tmp_path / "grpo.jsonl"
    manifest = _export(db, "rg", out, "--format", "trl-prompt", "--batch-size", "4")
    reward = Path(f"{out}.reward.py")
    assert manifest["train"]["reward_function"]["path"] == str(reward)
    assert "reward_funcs=reward.verifier_reward" in manifest["train"]["snippet"]
    rows = _jsonl(out)
    fn = _load_reward_file(reward).verifier_reward
    truth = {r["id"]: r for r in _rg_rows()}
    said = [f"The answer is ({truth[r['id']]['answer']})" for r in rows]
    completions = [[{"role": "assistant", "content": text}] for text in said]
    columns = {k: [r[k] for r in rows] for k in ("answer", "task", "metadata")}
    got = fn(completions=completions, prompts=[r["prompt"] for r in rows], **columns)
    want = verify(
        said,
        [truth[r["id"]]["answer"] for r in rows],
        tasks=[truth[r["id"]]["task"] for r in rows],
        metadata=[truth[r["id"]]["metadata"] for r in rows],
    )
    assert got == [v.score for v in want]
    assert 0 < sum(got) < len(got)  # countdown's bracketed answers pass, chain_sum's do not


README_EXAMPLES = {
    "verl": "data/exports/mine.parquet",
    "trl-prompt": "data/exports/mine.grpo.jsonl",
    "trl-preference": "data/exports/prefs.dpo.jsonl",
    "trl-messages": "data/exports/prefs.sft.jsonl",
}


@pytest.mark.parametrize("fmt", list(README_EXAMPLES))
def test_readme_train_commands_are_what_the_manifest_gives(fmt: str) -> None:
    """README's "Train on it" shows, verbatim, the recipe a --batch-size 16 export's manifest
    holds (tests/e2e runs those recipes with the real trainers)."""
    from core.export import ExportConfig, side_path, train_recipe

    out = Path(README_EXAMPLES[fmt])
    cfg = ExportConfig(fmt=fmt, batch_size=16)
    recipe = train_recipe(
        cfg,
        out=out,
        container="parquet" if out.suffix == ".parquet" else "jsonl",
        n_rows=160,
        reward_file=side_path(out, "reward") if cfg.layout_spec.reward_file else None,
    )
    assert recipe is not None
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    shown = recipe["command"] if fmt == "verl" else recipe["snippet"]
    assert shown in readme


def test_the_recipes_name_the_trainer_versions_ci_installs() -> None:
    """core.export's VERL_VERSION / TRL_VERSION (layouts/verl.py, layouts/trl_shared.py) are the pins tests/e2e runs against."""
    from core.export import TRL_VERSION, VERL_VERSION

    root = Path(__file__).parents[2]
    assert f"verl=={VERL_VERSION}" in (root / "requirements-verl.txt").read_text().splitlines()
    pins = (root / "requirements-trainers.txt").read_text().splitlines()
    assert f"trl=={TRL_VERSION}" in pins
