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
    MAX_LENGTH_CAP,
    LoadedModel,
    collate,
    default_max_length,
    encode_texts,
    find_blocks,
    full_forward_activations,
    hook_name,
    hub_error_message,
    iter_length_batches,
    layer_activations,
    load_model,
    parse_hook,
    resolve_device,
    resolve_dtype,
    resolve_layer,
    safetensors_problem,
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
    with pytest.raises(StudioError, match=r"layer 7 is out of range: .* has 3 layers \(0\.\.2;"):
        layer_activations(tiny_bert, batch, layer=7)
    with pytest.raises(StudioError, match="layer -2 is out of range"):
        full_forward_activations(tiny_bert, batch, layer=-2)


def test_parse_hook_and_hook_name() -> None:
    assert parse_hook("blocks.12.hook_resid_post") == 12
    assert parse_hook("blocks.12.hook_resid_pre") == 11  # input of block 12 = output of 11
    assert parse_hook("blocks.0.hook_resid_pre") == -1  # the embeddings
    assert parse_hook("3") == 3
    for layer in (-1, 0, 5):
        assert parse_hook(hook_name(layer)) == layer
    with pytest.raises(
        StudioError, match=r"'blocks\.3\.hook_mlp_out' is not a residual-stream hook"
    ):
        parse_hook("blocks.3.hook_mlp_out")


def test_resolve_layer_from_layer_hook_or_sae(tiny_gpt2: Any) -> None:
    assert resolve_layer(tiny_gpt2, layer=1) == 1
    assert resolve_layer(tiny_gpt2, hook="blocks.2.hook_resid_pre") == 1
    assert resolve_layer(tiny_gpt2, sae_hook="blocks.2.hook_resid_post") == 2
    assert resolve_layer(tiny_gpt2, layer=0, sae_hook="blocks.2.hook_resid_post") == 0
    with pytest.raises(
        StudioError,
        match=r"hook 'blocks.12.hook_resid_post' does not exist in model .* has 3 layers "
        r"\(blocks.0 .. blocks.2\)",
    ):
        resolve_layer(tiny_gpt2, hook="blocks.12.hook_resid_post")
    with pytest.raises(StudioError, match=r"the SAE's hook 'blocks\.9\.hook_resid_post' does not"):
        resolve_layer(tiny_gpt2, sae_hook="blocks.9.hook_resid_post")
    with pytest.raises(StudioError, match="no layer"):
        resolve_layer(tiny_gpt2)
    with pytest.raises(StudioError, match="not both"):
        resolve_layer(tiny_gpt2, layer=1, hook="blocks.1.hook_resid_post")


ARCHS = ("llama", "qwen2", "qwen3", "gemma2")


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_archs_map_hooks_to_their_blocks(tiny_decoders: dict[str, Any], arch: str) -> None:
    """Every layer, the embeddings included, equals the full forward's hidden state, and the
    blocks above it never run."""
    lm = tiny_decoders[arch]
    assert (lm.n_layers, lm.d_model, lm.arch) == (3, 64, arch)
    batch = tokenize_batch(lm, TEXTS, max_length=32)
    with torch.inference_mode():
        out = lm.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        )
    for layer in (-1, 0, 1):
        got = layer_activations(lm, batch, layer=parse_hook(hook_name(layer)))
        torch.testing.assert_close(got, out.hidden_states[layer + 1])
    calls: list[int] = []
    blocks = find_blocks(lm.model)
    handles = [
        b.register_forward_hook(lambda _m, _a, _o, i=i: calls.append(i))
        for i, b in enumerate(blocks)
    ]
    try:
        layer_activations(lm, batch, layer=-1)
        assert calls == []  # no block finished
        layer_activations(lm, batch, layer=1)
        assert calls == [0, 1]
    finally:
        for h in handles:
            h.remove()


def test_embeddings_layer_equals_hidden_state_0(tiny_lm: Any) -> None:
    batch = tokenize_batch(tiny_lm, TEXTS, max_length=32)
    torch.testing.assert_close(
        layer_activations(tiny_lm, batch, layer=-1),
        full_forward_activations(tiny_lm, batch, layer=-1),
    )


def test_encode_texts_spans_point_into_the_text(tiny_bert: Any) -> None:
    texts = ["The Integral of x", "Hi there"]
    for text, enc in zip(texts, encode_texts(tiny_bert, texts, max_length=32), strict=True):
        kept = [t for t, k in zip(enc.tokens, enc.keep, strict=True) if k]
        spans = enc.spans[enc.keep]
        assert [text[s:e].lower() for s, e in spans] == [t.removeprefix("##") for t in kept]
        assert (enc.spans[~enc.keep] == -1).all()  # [CLS], [SEP]


def test_chat_template_pools_the_prompt_with_spans_into_it(tiny_llama: Any) -> None:
    text = "What is 2+2?"
    enc = encode_texts(tiny_llama, [text], max_length=64, chat_template=True)[0]
    kept = [t for t, k in zip(enc.tokens, enc.keep, strict=True) if k]
    assert kept == ["what", "is", "2", "+", "2", "?"]  # no template words ("user", "|")
    assert "user" in enc.tokens and "assistant" in enc.tokens  # but the model reads them
    assert [text[s:e].lower() for s, e in enc.spans[enc.keep]] == kept


def test_chat_template_missing_is_a_clear_error(tiny_gpt2: Any) -> None:
    with pytest.raises(StudioError, match="has no chat template; drop --chat-template"):
        encode_texts(tiny_gpt2, ["x"], max_length=16, chat_template=True)


@pytest.mark.parametrize("template", [False, True])
def test_pool_over_response_or_both(tiny_llama: Any, template: bool) -> None:
    text, response = "Add two and two.", "Four, of course."
    kw: dict[str, Any] = {"max_length": 64, "responses": [response], "chat_template": template}
    resp = encode_texts(tiny_llama, [text], pool_over="response", **kw)[0]
    both = encode_texts(tiny_llama, [text], pool_over="both", **kw)[0]
    prompt = encode_texts(tiny_llama, [text], chat_template=template, max_length=64)[0]
    words = lambda e: [t for t, k in zip(e.tokens, e.keep, strict=True) if k]  # noqa: E731
    assert words(resp) == ["four", ",", "of", "course", "."]
    assert words(both) == words(prompt) + words(resp)
    # Response tokens are not in the example's text: their spans are unknown.
    assert (resp.spans[resp.keep] == -1).all()
    with pytest.raises(StudioError, match="needs responses"):
        encode_texts(tiny_llama, [text], pool_over="both", max_length=64)


@pytest.mark.parametrize("template", [False, True])
def test_pool_over_response_keeps_the_response_of_a_long_prompt(
    tiny_llama: Any, template: bool
) -> None:
    text = "Add two and two. " + " ".join(["please"] * 200)  # far beyond max_length
    response = "Four, of course."
    kw: dict[str, Any] = {"max_length": 48, "responses": [response], "chat_template": template}
    resp = encode_texts(tiny_llama, [text], pool_over="response", **kw)[0]
    assert resp.truncated and len(resp.ids) == 48
    kept = [t for t, k in zip(resp.tokens, resp.keep, strict=True) if k]
    assert kept == ["four", ",", "of", "course", "."]
    # the tokenizer is left as it was: other pools still lose the end
    both = encode_texts(tiny_llama, [text], pool_over="both", **kw)[0]
    assert "four" not in [t for t, k in zip(both.tokens, both.keep, strict=True) if k]
    assert tiny_llama.tokenizer.truncation_side == "right"


def test_encode_texts_truncation_is_counted(tiny_gpt2: Any) -> None:
    long = " ".join(["word"] * 500)  # beyond the 128-token context too
    enc = encode_texts(tiny_gpt2, [long, "short"], max_length=1000)
    assert len(enc[0].ids) == 128
    assert [e.truncated for e in enc] == [True, False]
    assert collate(tiny_gpt2, enc)["n_truncated"] == 1


def test_hub_error_message_names_gated_and_offline() -> None:
    import httpx2
    from huggingface_hub.errors import GatedRepoError

    request = httpx2.Request("GET", "https://huggingface.co/meta-llama/Llama-3.1-8B")
    gated = GatedRepoError("401 Client Error", response=httpx2.Response(401, request=request))
    wrapped = OSError("You are trying to access a gated repo.")
    wrapped.__cause__ = gated
    for exc in (gated, wrapped):
        msg = hub_error_message("meta-llama/Llama-3.1-8B", exc)
        assert msg.startswith("model 'meta-llama/Llama-3.1-8B' is gated on the Hugging Face hub")
        assert "\n" not in msg
    offline = hub_error_message("org/model", OSError("We couldn't connect to the hub\nmore"))
    assert offline == (
        "model 'org/model' is not a local folder and could not be fetched from the Hugging "
        "Face hub (offline?): We couldn't connect to the hub"
    )


def test_device_and_dtype_resolution() -> None:
    assert resolve_dtype("auto", device="cpu") == torch.float32
    assert resolve_dtype("auto", device="cuda") == torch.bfloat16
    assert resolve_dtype("bfloat16", device="cpu") == torch.bfloat16
    with pytest.raises(StudioError, match="dtype must be auto or one of"):
        resolve_dtype("int8", device="cpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bf16_model_reads_close_to_fp32(tiny_gpt2_dir: Path, tiny_gpt2: Any) -> None:
    """The GPU default (bf16 weights) runs the same path on CPU, within bf16 precision."""
    lm = load_model(str(tiny_gpt2_dir), dtype=torch.bfloat16)
    assert lm.model.dtype == torch.bfloat16
    batch = tokenize_batch(lm, TEXTS, max_length=32)
    got = layer_activations(lm, batch, layer=1).float()
    want = layer_activations(tiny_gpt2, batch, layer=1)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


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


@pytest.mark.slow
def test_real_minilm_layer_activations(minilm: Any) -> None:
    assert (minilm.n_layers, minilm.d_model, minilm.arch) == (6, 384, "bert")
    batch = tokenize_batch(minilm, TEXTS, max_length=64)
    early = layer_activations(minilm, batch, layer=3)
    torch.testing.assert_close(early, full_forward_activations(minilm, batch, layer=3))


def test_truncated_model_weights_are_named_in_one_line(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    weights = folder / "model.safetensors"
    assert safetensors_problem(weights) is None
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(StudioError) as err:
        load_model(str(folder))
    assert str(err.value) == (
        f"weights file '{weights}' is truncated or corrupt (incomplete metadata, file not fully "
        "covered): copy or download it again"
    )
    weights.write_bytes(b"garbage" * 100)
    with pytest.raises(StudioError, match=r"model\.safetensors' is truncated or corrupt \("):
        load_model(str(folder))


def _with_context(positions: int, tokenizer_limit: int) -> LoadedModel:
    """A LoadedModel whose model says ``positions`` and whose tokenizer ``tokenizer_limit``."""
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_layer=1, n_embd=8, n_head=1, n_positions=positions, vocab_size=10)
    tokenizer = SimpleNamespace(model_max_length=tokenizer_limit)
    return LoadedModel(GPT2Model(config), tokenizer, "m", 1, 8, "gpt2", "cpu")


def test_default_max_length_is_the_context_capped(tiny_bert: Any) -> None:
    assert default_max_length(tiny_bert) == 128  # its position embeddings (the tokenizer says 512)
    assert default_max_length(_with_context(1024, 1024)) == 1024
    assert default_max_length(_with_context(1024, 300)) == 300
    # a long-context model; transformers' "unknown" sentinel for the tokenizer is ignored
    assert default_max_length(_with_context(32_768, int(1e30))) == MAX_LENGTH_CAP == 2048


@pytest.mark.slow
def test_minilm_default_max_length_is_512(minilm: Any) -> None:
    assert default_max_length(minilm) == 512
