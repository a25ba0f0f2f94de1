"""Exports read by the real trainers (verl 0.9.1, TRL 1.16.0) exactly as they read them.

Each test exports from a small store through the CLI, configures the trainer from the manifest
(``train.overrides`` for verl, ``train.config`` for TRL) and asserts what the trainer sees:

- verl: RLHFDataset, create_rl_sampler and the StatefulDataLoader built as verl's trainer builds
  them (verl/trainer/ppo/v1/trainer_base.py:_init_dataloader) from verl's own Hydra config with
  the manifest's overrides: each dataloader batch is exactly one export batch, in file order, the
  incomplete last one dropped; the manifest's command is a valid verl config; the export's
  reward file scores through verl's reward manager (NaiveRewardManager) as verl calls it.
- TRL: one training step of GRPOTrainer (trl-prompt), DPOTrainer and RewardTrainer
  (trl-preference), SFTTrainer (trl-messages) on a tiny random model; what the trainer's data
  collator (or GRPO's reward function) is handed is recorded and compared with the file.
- ``--tokenizer/--max-length``: the export drops exactly the rows the trainer would drop or cut,
  so the trainer keeps every exported row.

Marked ``trainers`` and ``slow``; skipped (with the install line) without verl / trl. Install:
``pip install -r requirements-trainers.txt && pip install --no-deps -r requirements-verl.txt``.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

INSTALL = (
    "pip install -r requirements-trainers.txt && pip install --no-deps -r requirements-verl.txt"
)
needs_verl = pytest.mark.skipif(
    importlib.util.find_spec("verl") is None, reason=f"verl is not installed ({INSTALL})"
)
needs_trl = pytest.mark.skipif(
    importlib.util.find_spec("trl") is None, reason=f"trl is not installed ({INSTALL})"
)
pytestmark = [pytest.mark.trainers, pytest.mark.slow]

BATCH = 4  # --batch-size of every export here
VERL_CONTAINERS = (".parquet", ".jsonl")  # the files verl's RLHFDataset reads
# What the manifest's configs leave to the user's machine: CPU, no logging or checkpoints, fp32.
CPU = {"use_cpu": True, "report_to": [], "save_strategy": "no", "bf16": False}


# --- exports and files -----------------------------------------------------------------------
def _export(db: Path, dataset: str, fmt: str, out: Path, *extra: str) -> dict[str, Any]:
    """Run ``export`` through the CLI (curriculum order: not the ingest order) and return the
    manifest."""
    from core.cli import main

    argv = ["export", "--db", str(db), "--dataset", dataset, "--format", fmt, "--out", str(out)]
    argv += ["--order", "curriculum", "--batch-size", str(BATCH), *extra]
    assert main(argv) == 0
    return json.loads(Path(f"{out}.manifest.json").read_text())


def _file_rows(out: Path) -> list[dict[str, Any]]:
    """The export's rows in file order, read with pyarrow / json (not the trainers' loaders)."""
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(out).to_pylist()
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _export_batches(numbers: Sequence[int]) -> list[list[int]]:
    """Positions of each export batch, in file order; a batch is one run of equal numbers."""
    runs: list[list[int]] = []
    for pos, number in enumerate(numbers):
        if runs and numbers[runs[-1][0]] == number:
            runs[-1].append(pos)
        else:
            runs.append([pos])
    assert len({numbers[run[0]] for run in runs}) == len(runs), "a batch number recurs"
    return runs


def _load_json(out: Path, cache: Path) -> Any:
    """The export as the manifest's TRL snippet loads it."""
    import datasets

    return datasets.load_dataset(
        "json", data_files=str(out), split="train", cache_dir=str(cache / "load")
    )


def _chat_length(tokenizer: Any, messages: list[Any], *, generation: bool = False) -> int:
    """Tokens of ``messages`` with the chat template, as the trainers count them."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=generation
    )
    return len(out["input_ids"])


def _pair_key(row: dict[str, Any]) -> str:
    """A trl-preference row's key, as the manifest's lengths.dropped_ids spells it."""
    return f"{row['id']}#{row['rejected_idx']}"


def _pair_keys_kept(train_dataset: Any) -> list[str]:
    """The pair keys of the rows a preference trainer kept after preparing its dataset."""
    return [
        f"{i}#{j}" for i, j in zip(train_dataset["id"], train_dataset["rejected_idx"], strict=True)
    ]


# --- verl ------------------------------------------------------------------------------------
def _verl_config(overrides: Sequence[str], model: Path) -> Any:
    """verl 0.9.1's ppo_trainer config (Hydra, as `python -m verl.trainer.main_ppo` composes it)
    with ``overrides``; MODEL is the tiny model; no dataloader worker processes (the sampler runs
    in the main process either way, so the order is the same)."""
    from hydra import compose, initialize_config_module

    argv = [o.replace("MODEL", str(model)) for o in overrides]
    argv += [f"actor_rollout_ref.model.path={model}", "data.dataloader_num_workers=0"]
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=argv)


def _verl_loader(cfg: Any, tokenizer: Any) -> tuple[Any, Any]:
    """The train dataset and dataloader exactly as verl's PPO trainer builds them
    (trainer/ppo/v1/trainer_base.py:_init_dataloader, same as ray_trainer.py)."""
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler
    from verl.utils.dataset.rl_dataset import collate_fn

    data = cfg.data
    dataset = create_rl_dataset(
        data.train_files,
        data,
        tokenizer,
        None,
        is_train=True,
        max_samples=data.get("train_max_samples", -1),
    )
    loader = StatefulDataLoader(
        dataset=dataset,
        batch_size=data.get("gen_batch_size", None) or data.train_batch_size,
        num_workers=data["dataloader_num_workers"],
        drop_last=True,
        collate_fn=collate_fn,
        sampler=create_rl_sampler(data, dataset),
    )
    return dataset, loader


@needs_verl
@pytest.mark.parametrize("suffix", VERL_CONTAINERS)
def test_verl_takes_one_export_batch_per_step(trainer_store, tiny_trainer_lm, tmp_path, suffix):
    """With the manifest's overrides, verl's dataloader yields the export's batches in file
    order, one per step (extra_info.index = position, extra_info.batch constant), and drops the
    incomplete last batch."""
    from transformers import AutoTokenizer

    out = tmp_path / f"train{suffix}"
    manifest = _export(trainer_store, "demo", "verl", out)
    rows = _file_rows(out)
    cfg = _verl_config(manifest["train"]["overrides"], tiny_trainer_lm)
    assert cfg.data.shuffle is False and cfg.data.train_batch_size == BATCH
    dataset, loader = _verl_loader(cfg, AutoTokenizer.from_pretrained(tiny_trainer_lm))
    assert len(dataset) == manifest["rows"] == len(rows)
    batches = _export_batches([r["extra_info"]["batch"] for r in rows])
    whole = [b for b in batches if len(b) == BATCH]
    assert len(whole) == len(rows) // BATCH and batches[: len(whole)] == whole
    assert len(rows) % BATCH, "the store should leave an incomplete last batch to drop"
    steps = list(loader)
    assert len(steps) == len(whole)
    for k, step in enumerate(steps):
        infos = list(step["extra_info"])
        assert [i["index"] for i in infos] == whole[k]
        assert [i["id"] for i in infos] == [rows[p]["extra_info"]["id"] for p in whole[k]]
        assert {i["batch"] for i in infos} == {rows[whole[k][0]]["extra_info"]["batch"]}
        assert list(step["index"]) == whole[k]  # what verl's trainer keys the row by


@needs_verl
def test_the_manifest_command_is_a_valid_verl_config(trainer_store, tiny_trainer_lm, tmp_path):
    """The manifest's one-line command composes with verl 0.9.1's config and passes verl's own
    validate_config, with the reward function file it names."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    out = tmp_path / "train.parquet"
    manifest = _export(trainer_store, "demo", "verl", out)
    argv = shlex.split(manifest["train"]["command"])
    assert argv[:3] == ["python3", "-m", "verl.trainer.main_ppo"]
    assert set(manifest["train"]["overrides"]) <= set(argv[3:])
    cfg = _verl_config(argv[3:], tiny_trainer_lm)
    validate_config(
        config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg)
    )
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.data.shuffle is False and cfg.data.train_batch_size == BATCH
    assert cfg.data.filter_overlong_prompts is False
    reward = cfg.reward.custom_reward_function
    assert (reward.path, reward.name) == (f"{out}.reward.py", "compute_score")
    assert Path(reward.path).is_file()


def _verl_score(manager: Any, tokenizer: Any, row: dict[str, Any], response: str) -> float:
    """``response``'s reward as verl's reward loop computes it for ``row`` (a RLHFDataset
    item): the manager decodes the response ids and calls compute_score with keyword args."""
    import numpy as np
    import torch
    from verl import DataProto

    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    non_tensors = {}
    for key in ("data_source", "reward_model", "extra_info"):
        value = np.empty(1, dtype=object)
        value[0] = dict(row[key]) if isinstance(row[key], dict) else row[key]
        non_tensors[key] = value
    data = DataProto.from_dict(
        tensors={
            "responses": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        },
        non_tensors=non_tensors,
    )
    return manager.loop.run_until_complete(manager.run_single(data))["reward_score"]


@needs_verl
@pytest.mark.parametrize("dataset", ["demo", "prefs"])  # without and with task metadata
def test_verl_scores_with_the_exports_reward_file(
    trainer_store, tiny_trainer_lm, tmp_path, dataset
):
    """verl loads OUT.reward.py through reward.custom_reward_function (its own loader) and its
    NaiveRewardManager scores a right answer 1 and a non-answer below 1 on every row of the first
    batch; a preference set's task metadata reaches it as JSON text in extra_info."""
    from transformers import AutoTokenizer
    from verl.trainer.ppo.reward import load_reward_manager

    out = tmp_path / "train.parquet"
    manifest = _export(trainer_store, dataset, "verl", out)
    tokenizer = AutoTokenizer.from_pretrained(tiny_trainer_lm)
    cfg = _verl_config(manifest["train"]["overrides"], tiny_trainer_lm)
    data, _ = _verl_loader(cfg, tokenizer)
    manager = load_reward_manager(cfg, tokenizer)
    assert type(manager).__name__ == "NaiveRewardManager"
    for i in range(BATCH):
        row = data[i]
        if dataset == "prefs":  # the reasoning-gym entry, for the task's own score_answer
            assert isinstance(json.loads(row["extra_info"]["metadata"]), dict)
        truth = row["reward_model"]["ground_truth"]
        assert _verl_score(manager, tokenizer, row, f"Let me see.\nThe answer is {truth}.") == 1.0
        assert _verl_score(manager, tokenizer, row, "I cannot tell.") < 1.0


@needs_verl
def test_verl_length_check_keeps_verls_filter_from_dropping(
    trainer_store, tiny_trainer_lm, tmp_path
):
    """--tokenizer/--max-length N drops the prompts longer than N as verl measures them: with
    data.filter_overlong_prompts=True and data.max_prompt_length=N, RLHFDataset then keeps every
    row, and the rows it drops from the unchecked export are the ones the manifest lists."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_trainer_lm)
    full = tmp_path / "full.parquet"
    _export(trainer_store, "demo", "verl", full)
    lengths = sorted(
        _chat_length(tokenizer, r["prompt"], generation=True) for r in _file_rows(full)
    )
    limit = lengths[len(lengths) // 2]  # about half the rows are longer
    filter_on = ["data.filter_overlong_prompts=True", f"data.max_prompt_length={limit}"]
    cfg = _verl_config(
        [f"data.train_files={full}", f"data.val_files={full}", *filter_on], tiny_trainer_lm
    )
    verl_kept, _ = _verl_loader(cfg, tokenizer)
    kept_ids = [row["extra_info"]["id"] for row in verl_kept]
    assert 0 < len(kept_ids) < len(lengths)

    out = tmp_path / "checked.parquet"
    manifest = _export(
        trainer_store,
        "demo",
        "verl",
        out,
        "--tokenizer",
        str(tiny_trainer_lm),
        "--max-length",
        str(limit),
    )
    dropped = set(manifest["lengths"]["dropped_ids"])
    assert dropped == {r["extra_info"]["id"] for r in _file_rows(full)} - set(kept_ids)
    cfg = _verl_config(
        [*manifest["train"]["overrides"], "data.filter_overlong_prompts=True"], tiny_trainer_lm
    )
    assert cfg.data.max_prompt_length == limit
    dataset, _ = _verl_loader(cfg, tokenizer)
    assert len(dataset) == manifest["rows"] == len(kept_ids)


# --- TRL -------------------------------------------------------------------------------------
class _Recorder:
    """Wraps a trainer's data collator: records ``keys`` of each example it is handed (one list
    per batch, in order) and passes the rest on."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], Any], keys: Sequence[str]):
        self.collate, self.keys = collate, tuple(keys)
        self.batches: list[list[tuple[Any, ...]]] = []

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        self.batches.append([tuple(f.pop(k) for k in self.keys) for f in features])
        return self.collate(features)


def _record(trainer: Any, keys: Sequence[str]) -> list[list[tuple[Any, ...]]]:
    """Keep ``keys`` past the Trainer's unused-column removal and record them per batch."""
    trainer._set_signature_columns_if_needed()
    trainer._signature_columns = [*trainer._signature_columns, *keys]
    recorder = _Recorder(trainer.data_collator, keys)
    trainer.data_collator = recorder
    return recorder.batches


def _assert_steps_are_export_batches(
    seen: list[list[tuple[Any, ...]]],
    rows: list[dict[str, Any]],
    key: Callable[[dict], Any],
    steps: int,
) -> None:
    """The first ``steps`` batches a trainer trained on are the file's first export batches:
    the same rows in the same order, one batch number each (BATCH rows a batch)."""
    batches = _export_batches([r["batch"] for r in rows])
    assert len(seen) >= steps
    for k in range(steps):
        assert len(batches[k]) == BATCH
        assert [s[0] for s in seen[k]] == [key(rows[p]) for p in batches[k]]
        assert {s[1] for s in seen[k]} == {rows[batches[k][0]]["batch"]}


@needs_trl
def test_grpo_generation_batch_is_one_export_batch(trainer_store, tiny_trainer_lm, tmp_path):
    """GRPOConfig(**manifest train.config): each generation batch is one export batch in file
    order (each prompt num_generations times), as the dataloader yields it and as the reward
    function is called in a training step."""
    from trl import GRPOConfig, GRPOTrainer  # pyright: ignore[reportPrivateImportUsage]

    out = tmp_path / "prompts.jsonl"
    manifest = _export(trainer_store, "demo", "trl-prompt", out)
    rows = _file_rows(out)
    config = manifest["train"]["config"]
    calls: list[list[tuple[str, int]]] = []

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        calls.append(list(zip(columns["id"], columns["batch"], strict=True)))
        return [float(len(str(c))) for c in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path / "run"), **config, **CPU, max_steps=1, max_completion_length=4
    )
    trainer = GRPOTrainer(
        model=str(tiny_trainer_lm),
        reward_funcs=reward,
        args=args,
        train_dataset=_load_json(out, tmp_path),
    )
    gens, generation = args.num_generations, args.generation_batch_size
    assert gens is not None and generation is not None  # resolved by GRPOConfig
    assert generation // gens == BATCH
    batches = _export_batches([r["batch"] for r in rows])
    # RepeatSampler: a generation batch is repeated num_iterations x steps_per_generation times
    # (the trainer reuses one generation for that many steps)
    assert args.steps_per_generation is not None
    repeat = args.num_iterations * args.steps_per_generation
    loader = iter(trainer.get_train_dataloader())
    for j in range(2 * repeat):
        got = next(loader)
        want = batches[j // repeat]
        assert [r["id"] for r in got] == [rows[p]["id"] for p in want for _ in range(gens)]
        assert {r["batch"] for r in got} == {rows[want[0]]["batch"]}
    trainer.train()
    assert calls[0] == [(rows[p]["id"], rows[p]["batch"]) for p in batches[0] for _ in range(gens)]


def _preference_trainer(
    kind: str, model: Path, out: Path, config: dict[str, Any], tmp: Path, **extra: Any
) -> Any:
    """A DPOTrainer or RewardTrainer on the export at ``out`` with ``config`` (+ CPU, 2 steps)."""
    import transformers

    train = _load_json(out, tmp)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    settings = {**config, **CPU, "max_steps": 2, **extra}
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer  # pyright: ignore[reportPrivateImportUsage]

        return DPOTrainer(
            model=str(model),
            args=DPOConfig(output_dir=str(tmp / "dpo"), **settings),
            train_dataset=train,
            processing_class=tokenizer,
        )
    from trl import RewardConfig, RewardTrainer  # pyright: ignore[reportPrivateImportUsage]

    scorer = transformers.AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
    return RewardTrainer(
        model=scorer,
        args=RewardConfig(output_dir=str(tmp / "reward"), **settings),
        train_dataset=train,
        processing_class=tokenizer,
    )


@needs_trl
@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_preference_steps_are_pair_batches(trainer_store, tiny_trainer_lm, tmp_path, kind):
    """DPOTrainer / RewardTrainer with the manifest's config train on the export's pair batches,
    in file order, one export batch per step."""
    out = tmp_path / "pairs.jsonl"
    manifest = _export(trainer_store, "prefs", "trl-preference", out)
    rows = _file_rows(out)
    trainer = _preference_trainer(kind, tiny_trainer_lm, out, manifest["train"]["config"], tmp_path)
    assert len(trainer.train_dataset) == len(rows)  # the default max_length drops nothing here
    trainer.train_dataset = trainer.train_dataset.add_column("pair", [_pair_key(r) for r in rows])
    seen = _record(trainer, ("pair", "batch"))
    trainer.train()
    _assert_steps_are_export_batches(seen, rows, _pair_key, steps=2)


@needs_trl
@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_preference_length_check_matches_the_trainer(
    trainer_store, tiny_trainer_lm, tmp_path, kind
):
    """--tokenizer/--max-length N on trl-preference drops exactly the pairs RewardTrainer
    (max_length=N) drops from the unchecked export; on the checked export neither RewardTrainer
    nor DPOTrainer drops a row."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_trainer_lm)
    full = tmp_path / "full.jsonl"
    manifest = _export(trainer_store, "prefs", "trl-preference", full)
    rows = _file_rows(full)

    lengths = sorted(
        max(_chat_length(tokenizer, r["prompt"] + r[side]) for side in ("chosen", "rejected"))
        for r in rows
    )
    limit = lengths[len(lengths) // 2]
    reward = _preference_trainer(
        "reward",
        tiny_trainer_lm,
        full,
        manifest["train"]["config"],
        tmp_path / "a",
        max_length=limit,
    )
    kept = set(_pair_keys_kept(reward.train_dataset))
    assert 0 < len(kept) < len(rows)

    out = tmp_path / "checked.jsonl"
    checked = _export(
        trainer_store,
        "prefs",
        "trl-preference",
        out,
        "--tokenizer",
        str(tiny_trainer_lm),
        "--max-length",
        str(limit),
    )
    assert set(checked["lengths"]["dropped_ids"]) == {_pair_key(r) for r in rows} - kept
    checked_rows = _file_rows(out)
    assert {_pair_key(r) for r in checked_rows} == kept
    # dropped before batching: every batch but the last is whole
    batches = _export_batches([r["batch"] for r in checked_rows])
    assert [len(b) for b in batches[:-1]] == [BATCH] * (len(batches) - 1)
    trainer = _preference_trainer(
        kind, tiny_trainer_lm, out, checked["train"]["config"], tmp_path / "b", max_length=limit
    )
    assert len(trainer.train_dataset) == len(checked_rows)


@needs_trl
@pytest.mark.parametrize("dataset", ["chats", "prefs.responses"])
def test_sft_steps_are_export_batches(trainer_store, tiny_trainer_lm, tmp_path, dataset):
    """SFTTrainer with the manifest's config trains on the export's batches in file order; a
    responses set's export holds only the chosen responses (the default)."""
    import transformers
    from trl import SFTConfig, SFTTrainer  # pyright: ignore[reportPrivateImportUsage]

    out = tmp_path / "sft.jsonl"
    manifest = _export(trainer_store, dataset, "trl-messages", out)
    rows = _file_rows(out)
    if dataset == "prefs.responses":
        assert manifest["responses"]["kept"] == "chosen"
        assert {r["role"] for r in rows} == {"chosen"}
    args = SFTConfig(
        output_dir=str(tmp_path / "run"), **manifest["train"]["config"], **CPU, max_steps=2
    )
    trainer = SFTTrainer(
        model=str(tiny_trainer_lm),
        args=args,
        train_dataset=_load_json(out, tmp_path),
        processing_class=transformers.AutoTokenizer.from_pretrained(tiny_trainer_lm),
    )
    assert trainer.train_dataset is not None
    assert trainer.train_dataset["id"] == [r["id"] for r in rows]
    seen = _record(trainer, ("id", "batch"))
    trainer.train()
    _assert_steps_are_export_batches(seen, rows, lambda r: r["id"], steps=2)
