"""Fixtures for the trainer end-to-end tests (tests/e2e, markers `trainers` and `slow`).

A small store with every dataset kind (exported through the CLI, as a user does) and a tiny
random-init causal LM with a byte-level BPE tokenizer and a chat template: lossless decoding, so
verl's reward manager hands the reward function exactly the text the test wrote. Nothing is
downloaded. These tests need requirements-trainers.txt (verl 0.9.1 installed with --no-deps, trl
1.16.0) and are skipped without it.

The verl wheel also installs a top-level ``tests`` package into site-packages; this project's
``tests/__init__.py`` makes ``tests.conftest`` ours all the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CHAT_TEMPLATE, hand_clusters

DEMO_PROMPTS = 26  # prompts (26 = 6 batches of 4 and 2 left over: the last batch is incomplete)
DEMO_PREFS = 14  # preference prompts, 1-3 rejected responses each
DEMO_CHATS = 14
N_CLUSTERS = 3


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "trainers: needs verl and TRL (requirements-trainers.txt)")


def _corpus(folder: Path) -> list[str]:
    """Every text the demo sets hold (prompts, answers, responses, chat turns)."""
    texts: list[str] = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for value in json.loads(line).values():
                if isinstance(value, str):
                    texts.append(value)
                elif isinstance(value, list):
                    texts += [v if isinstance(v, str) else json.dumps(v) for v in value]
    return texts


def _save_tiny_lm(folder: Path, corpus: list[str]) -> None:
    """A byte-level BPE tokenizer trained on ``corpus`` (lossless: decode(encode(s)) == s), the
    chat template, and a random-init 2-layer Llama causal LM (32 wide) saved to ``folder``."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    bpe = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([*corpus, CHAT_TEMPLATE], trainer=bpe)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


@pytest.fixture(scope="session")
def trainer_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the demo's prompts ('demo'), preferences ('prefs'), their responses
    ('prefs.responses') and chats ('chats'), each clustered; built through the CLI."""
    from core.cli import main
    from core.demo_data import write_demo_chats, write_demo_jsonl, write_demo_preferences

    folder = tmp_path_factory.mktemp("trainer-store")
    db = folder / "studio.duckdb"
    sets = (
        (write_demo_jsonl(folder / "demo.jsonl", n=DEMO_PROMPTS, seed=0), "demo", "prompts"),
        (
            write_demo_preferences(folder / "prefs.jsonl", n=DEMO_PREFS, seed=0),
            "prefs",
            "preferences",
        ),
        (write_demo_chats(folder / "chats.jsonl", n=DEMO_CHATS, seed=0), "chats", "chats"),
    )
    for path, name, kind in sets:
        assert main(["ingest", str(path), "--db", str(db), "--dataset", name, "--kind", kind]) == 0
    assert main(["responses", "--dataset", "prefs", "--db", str(db)]) == 0
    for name in ("demo", "prefs", "chats", "prefs.responses"):
        hand_clusters(db, name, k=N_CLUSTERS)
    return db


@pytest.fixture(scope="session")
def tiny_trainer_lm(trainer_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random causal LM and its tokenizer (trained on the store's texts)."""
    folder = tmp_path_factory.mktemp("tiny-trainer-lm")
    _save_tiny_lm(folder, _corpus(trainer_store.parent))
    return folder


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """datasets' cache (verl's RLHFDataset calls load_dataset without a cache_dir) under tmp."""
    import datasets

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache
