"""core.models: loading, layer semantics, early-stopping activations, tokenization."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from core.errors import StudioError
from core.models import (
    find_blocks,
    full_forward_activations,
    iter_length_batches,
    layer_activations,
    load_model,
    token_lengths,
    tokenize_batch,
)

TEXTS = [
    "The integral of x squared is x cubed over three.",
    "Hi",
    "A train leaves the station at noon and travels sixty miles per hour.",
]


def test_load_model_reads_shape_and_arch(tiny_gpt2: Any, tiny_bert: Any) -> None:
    assert (tiny_gpt2.n_layers, tiny_gpt2.d_model, tiny_gpt2.arch) == (3, 64, "gpt2")
    assert (tiny_bert.n_layers, tiny_bert.d_model, tiny_bert.arch) == (3, 64, "bert")
    for lm in (tiny_gpt2, tiny_bert):
        assert not lm.model.training
        assert lm.tokenizer.pad_token is not None
        assert lm.tokenizer.padding_side == "right"


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_layer_activations_equal_full_forward(tiny_lm: Any, layer: int) -> None:
    batch = tokenize_batch(tiny_lm, TEXTS, max_length=32)
    early = layer_activations(tiny_lm, batch, layer=layer)
    full = full_forward_activations(tiny_lm, batch, layer=layer)
    assert early.shape == (3, batch["input_ids"].shape[1], 64)
    torch.testing.assert_close(early, full, rtol=1e-5, atol=1e-5)


def test_layer_activations_is_hidden_state_l_plus_1(tiny_lm: Any) -> None:
    """Below the last block, layer L is exactly transformers' hidden_states[L + 1]."""
    batch = tokenize_batch(tiny_lm, TEXTS, max_length=32)
    with torch.inference_mode():
        out = tiny_lm.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        )
    for layer in range(tiny_lm.n_layers - 1):
        torch.testing.assert_close(
            layer_activations(tiny_lm, batch, layer=layer), out.hidden_states[layer + 1]
        )


def test_blocks_above_the_layer_never_run(tiny_lm: Any) -> None:
    blocks = find_blocks(tiny_lm.model)
    # transformers keeps hooks of its own on the blocks; ours must come and go.
    hooks_before = [len(block._forward_hooks) for block in blocks]
    calls: list[int] = []
    handles = [
        block.register_forward_hook(lambda _m, _i, _o, i=i: calls.append(i))
        for i, block in enumerate(blocks)
    ]
    try:
        batch = tokenize_batch(tiny_lm, TEXTS[:1], max_length=16)
        layer_activations(tiny_lm, batch, layer=0)
        assert calls == [0]
        calls.clear()
        layer_activations(tiny_lm, batch, layer=1)
        assert calls == [0, 1]
        calls.clear()
        full_forward_activations(tiny_lm, batch, layer=0)
        assert calls == [0, 1, 2]
    finally:
        for handle in handles:
            handle.remove()
    assert [len(block._forward_hooks) for block in blocks] == hooks_before


def test_layer_out_of_range(tiny_bert: Any) -> None:
    batch = tokenize_batch(tiny_bert, TEXTS[:1], max_length=16)
    with pytest.raises(StudioError, match=r"layer 7 is out of range: .* has 3 layers \(0\.\.2\)"):
        layer_activations(tiny_bert, batch, layer=7)
    with pytest.raises(StudioError, match="layer -1 is out of range"):
        full_forward_activations(tiny_bert, batch, layer=-1)


def test_tokenize_batch_keep_excludes_special_tokens(tiny_gpt2: Any) -> None:
    tok = tiny_gpt2.tokenizer
    batch = tokenize_batch(tiny_gpt2, TEXTS, max_length=32)
    ids, keep = batch["input_ids"], batch["keep"]
    special = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
    assert not any(i in special for i in ids[keep].tolist())
    # Every real, non-special token is kept.
    real = batch["attention_mask"].bool() & ~torch.isin(ids, torch.tensor(sorted(special)))
    assert torch.equal(keep, real)
    assert keep[1].sum() == 1  # "Hi" -> [CLS] hi [SEP] [PAD]...
    assert batch["n_truncated"] == 0


def test_tokenize_batch_counts_truncated_texts(tiny_bert: Any) -> None:
    batch = tokenize_batch(tiny_bert, TEXTS, max_length=6)
    assert batch["input_ids"].shape[1] == 6
    assert batch["truncated"].tolist() == [True, False, True]
    assert batch["n_truncated"] == 2
    assert token_lengths(tiny_bert, ["Hi"]) == [3]


def test_iter_length_batches_groups_similar_lengths() -> None:
    lengths = [3, 9, 4, 8, 1]
    batches = list(iter_length_batches(lengths, batch_size=2))
    assert batches == [[1, 3], [2, 0], [4]]
    assert sorted(i for b in batches for i in b) == list(range(5))
    with pytest.raises(StudioError, match="batch_size"):
        list(iter_length_batches(lengths, batch_size=0))


def test_find_blocks_falls_back_to_layer_count() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(num_hidden_layers=3)
            self.heads = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
            self.stack = nn.Sequential(nn.ModuleList([nn.Linear(2, 2) for _ in range(3)]))

    model = Odd()
    assert find_blocks(model) is model.stack[0]
    model.config.num_hidden_layers = 5
    with pytest.raises(StudioError, match="could not find the transformer blocks"):
        find_blocks(model)


def test_load_model_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(StudioError, match=f"model path '{missing}' does not exist"):
        load_model(str(missing))


def test_load_model_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(StudioError, match=r"has no config\.json"):
        load_model(str(tmp_path))


def test_load_model_unknown_hub_id_offline() -> None:
    with pytest.raises(
        StudioError,
        match=r"model 'nobody/no-such-model' is not a local folder and could not be fetched "
        r"from the Hugging Face hub \(offline\?\)",
    ):
        load_model("nobody/no-such-model")


def test_real_minilm_layer_activations(minilm: Any) -> None:
    assert (minilm.n_layers, minilm.d_model, minilm.arch) == (6, 384, "bert")
    batch = tokenize_batch(minilm, TEXTS, max_length=64)
    early = layer_activations(minilm, batch, layer=3)
    torch.testing.assert_close(early, full_forward_activations(minilm, batch, layer=3))
