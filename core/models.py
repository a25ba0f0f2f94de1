"""Load a transformers model and read its residual stream at one layer, stopping there.

Layer semantics, used everywhere in the studio: layer ``L`` (0-based) is the residual stream
*output* of transformer block ``L``. That is sae-lens's hook ``blocks.L.hook_resid_post`` and
``hidden_states[L + 1]`` of a forward with ``output_hidden_states=True`` (except that, for the
last block of decoder models, transformers applies the final norm to ``hidden_states[-1]``; the
block output is what we read, as sae-lens does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import StudioError

# Where transformers keeps the block list, relative to the base model or a wrapper around it.
_BLOCK_PREFIXES = ("", "model.", "transformer.", "bert.", "gpt_neox.", "language_model.")
_BLOCK_NAMES = ("layers", "h", "encoder.layer", "decoder.layers", "blocks", "layer")


@dataclass
class LoadedModel:
    """A model ready for activation reads: base model in eval mode plus its tokenizer."""

    model: nn.Module
    tokenizer: Any
    name: str
    n_layers: int
    d_model: int
    arch: str
    device: str


def _text_config(model: nn.Module) -> Any:
    """The config that describes the text transformer (multimodal models nest it)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def _looks_like_path(name: str) -> bool:
    """True when ``name`` can only be a filesystem path, never a hub id like ``org/model``."""
    return (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(
    name_or_path: str, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a base model (no LM head) and tokenizer from a local folder or the hub cache.

    Works for BERT-style encoders and causal LMs (GPT-2, Llama, Qwen, Gemma, GPT-NeoX).
    The tokenizer gets a pad token (eos, else unk) and right padding, so that padded
    positions never change the activations of real tokens in a causal model.
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(name_or_path).expanduser()
    is_local = path.exists()
    if is_local:
        if not path.is_dir():
            raise StudioError(f"model path '{name_or_path}' is a file, not a model folder")
        if not (path / "config.json").is_file():
            raise StudioError(f"model folder '{name_or_path}' has no config.json")
    elif _looks_like_path(name_or_path):
        raise StudioError(f"model path '{name_or_path}' does not exist")
    source = str(path) if is_local else name_or_path

    kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    # transformers' per-tensor "Loading weights" bar drowns our own progress bars and errors
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        if is_local:
            raise StudioError(
                f"model folder '{name_or_path}' could not be loaded: {_first_line(exc)}"
            ) from exc
        raise StudioError(
            f"model '{name_or_path}' is not a local folder and could not be fetched from the "
            f"Hugging Face hub (offline?): {_first_line(exc)}"
        ) from exc
    except (ValueError, KeyError) as exc:
        raise StudioError(
            f"model '{name_or_path}' could not be loaded: {_first_line(exc)}"
        ) from exc

    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise StudioError(
                f"model '{name_or_path}': tokenizer has no pad, eos or unk token to pad with"
            )
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"

    model.to(device)
    model.eval()
    blocks = find_blocks(model)
    text_config = _text_config(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name_or_path,
        n_layers=len(blocks),
        d_model=int(text_config.hidden_size),
        arch=str(getattr(model.config, "model_type", type(model).__name__)),
        device=device,
    )


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """Return the list of transformer blocks (BERT ``encoder.layer``, GPT-2 ``h``, ``layers``...).

    Known attribute paths are tried first, under the usual wrapper prefixes; otherwise the
    longest ``ModuleList`` whose length equals ``num_hidden_layers``.
    """
    text_config = _text_config(model)
    n_expected = getattr(text_config, "num_hidden_layers", None) if text_config else None

    def fits(mod: nn.Module) -> bool:
        return isinstance(mod, nn.ModuleList) and (n_expected is None or len(mod) == n_expected)

    for prefix in _BLOCK_PREFIXES:
        for name in _BLOCK_NAMES:
            try:
                candidate = model.get_submodule(prefix + name)
            except AttributeError:
                continue
            if isinstance(candidate, nn.ModuleList) and fits(candidate) and len(candidate):
                return candidate

    lists: list[nn.ModuleList] = [
        m for m in model.modules() if isinstance(m, nn.ModuleList) and fits(m)
    ]
    if lists:
        return max(lists, key=len)
    raise StudioError(
        f"could not find the transformer blocks of {type(model).__name__} "
        f"(expected {n_expected} layers)"
    )


def check_layer(lm: LoadedModel, layer: int) -> None:
    """Raise a StudioError unless ``0 <= layer < lm.n_layers``."""
    if not 0 <= layer < lm.n_layers:
        raise StudioError(
            f"layer {layer} is out of range: model '{lm.name}' has {lm.n_layers} layers "
            f"(0..{lm.n_layers - 1})"
        )


def _excluded_token_ids(tokenizer: Any) -> list[int]:
    """Special tokens (BOS/CLS/SEP/EOS/pad/mask/template markers) never pooled; unk is kept."""
    ids = set(tokenizer.all_special_ids)
    ids.add(tokenizer.pad_token_id)
    ids.discard(tokenizer.unk_token_id)
    ids.discard(None)
    return sorted(ids)


def context_length(lm: LoadedModel) -> int | None:
    """The most tokens the model takes (position embeddings), or None when it does not say."""
    cfg = _text_config(lm.model)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def token_lengths(lm: LoadedModel, texts: Sequence[str]) -> list[int]:
    """Untruncated token counts (special tokens included), for bucketing and truncation flags."""
    if not texts:
        return []
    enc = lm.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


def tokenize_batch(lm: LoadedModel, texts: Sequence[str], *, max_length: int) -> dict[str, Any]:
    """Tokenize with right padding and truncation to ``max_length``.

    Returns ``input_ids``, ``attention_mask`` [B, S], ``keep`` [B, S] (real, non-special tokens:
    the ones that are pooled), ``truncated`` [B] bool and ``n_truncated``.
    """
    ctx = context_length(lm)
    if ctx is not None:
        max_length = min(max_length, ctx)  # longer inputs would crash the position embeddings
    enc = lm.tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    input_ids: torch.Tensor = enc["input_ids"]
    attention_mask: torch.Tensor = enc["attention_mask"]
    special = enc["special_tokens_mask"].bool()
    special |= torch.isin(input_ids, torch.tensor(_excluded_token_ids(lm.tokenizer)))
    keep = attention_mask.bool() & ~special
    truncated = torch.tensor(token_lengths(lm, texts), dtype=torch.long) > max_length
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "keep": keep,
        "truncated": truncated,
        "n_truncated": int(truncated.sum()),
    }


class _StopForward(Exception):
    """Raised by the capture hook to end a forward pass once the wanted block has run."""


def _model_inputs(lm: LoadedModel, batch: dict[str, Any]) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        "input_ids": batch["input_ids"].to(lm.device),
        "attention_mask": batch["attention_mask"].to(lm.device),
    }
    if getattr(lm.model.config, "use_cache", None) is not None:
        inputs["use_cache"] = False
    return inputs


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def layer_activations(lm: LoadedModel, batch: dict[str, Any], *, layer: int) -> torch.Tensor:
    """Residual stream after block ``layer``, [batch, seq, d_model]; blocks above never run.

    A forward hook on the block stores its output and raises, which ends the forward pass:
    reading layer 6 of a 28-layer model costs about 7/28 of a full forward.
    """
    check_layer(lm, layer)
    block = find_blocks(lm.model)[layer]
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(_block_output(output))
        raise _StopForward

    handle = block.register_forward_hook(hook)
    try:
        with torch.inference_mode(), contextlib.suppress(_StopForward):
            lm.model(**_model_inputs(lm, batch))
    finally:
        handle.remove()
    if not captured:
        raise StudioError(f"model '{lm.name}': block {layer} did not run in the forward pass")
    return captured[0]


def full_forward_activations(lm: LoadedModel, batch: dict[str, Any], *, layer: int) -> torch.Tensor:
    """Baseline: a full forward with ``output_hidden_states=True``, taking ``hidden_states[L+1]``.

    For the last block the block output is captured by a pass-through hook instead, because
    decoder models apply their final norm to ``hidden_states[-1]``.
    """
    check_layer(lm, layer)
    captured: list[torch.Tensor] = []
    handle = find_blocks(lm.model)[layer].register_forward_hook(
        lambda _m, _i, output: captured.append(_block_output(output))
    )
    try:
        with torch.inference_mode():
            out = lm.model(**_model_inputs(lm, batch), output_hidden_states=True)
    finally:
        handle.remove()
    if layer == lm.n_layers - 1:
        return captured[0]
    return out.hidden_states[layer + 1]


def iter_length_batches(lengths: Sequence[int], *, batch_size: int) -> Iterator[list[int]]:
    """Yield index lists of at most ``batch_size`` examples of similar token length.

    Longest first, so a batch that does not fit in memory fails at once. The caller writes
    results back by index to restore the input order. Example: lengths [3, 9, 4, 8] with
    batch_size 2 -> [1, 3], [2, 0].
    """
    if batch_size < 1:
        raise StudioError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
