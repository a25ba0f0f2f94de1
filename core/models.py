"""Load a transformers model and read its residual stream at one layer, stopping there.

Layer semantics, used everywhere in the studio: layer ``L`` (0-based) is the residual stream
*output* of transformer block ``L``. That is sae-lens's hook ``blocks.L.hook_resid_post`` and
``hidden_states[L + 1]`` of a forward with ``output_hidden_states=True`` (except that, for the
last block of decoder models, transformers applies the final norm to ``hidden_states[-1]``; the
block output is what we read, as sae-lens does). Layer ``-1`` is the input of block 0 (the
embeddings as the blocks see them), sae-lens's ``blocks.0.hook_resid_pre``; ``blocks.N.hook_resid_pre``
for N >= 1 is the output of block N-1, i.e. layer N-1. ``parse_hook`` maps hook names to layers.

Tokenization happens once per example (``encode_texts``): ids, which tokens are pooled, and
each token's character span in the example's own text; ``collate`` pads a bucket of them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from core.errors import StudioError

# Where transformers keeps the block list, relative to the base model or a wrapper around it.
_BLOCK_PREFIXES = ("", "model.", "transformer.", "bert.", "gpt_neox.", "language_model.")
_BLOCK_NAMES = ("layers", "h", "encoder.layer", "decoder.layers", "blocks", "layer")
_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(post|pre)$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PoolOver = Literal["prompt", "response", "both"]
POOL_OVER = ("prompt", "response", "both")
# The default --max-length is the model's context, at most this many tokens: a cut that the
# user did not ask for loses data (an answer-format line at the end of a prompt), so the default
# keeps what the model can read. Measured with MiniLM (context 512) on 2 shared CPU cores,
# featurize at layer 3 with a 384->3072 k=32 SAE, batch 32: examples longer than 512 tokens
# cost 270 CPU s per 1,000 at 512 tokens against 129 s at 256 (2.1x; peak RSS 1.6 against
# 1.2 GB); examples of 30-150 tokens cost the same at either (51-57 s per 1,000, within noise),
# as batches are length-bucketed. Only long examples pay, in proportion to what they keep. The
# cap bounds memory for long-context models (a batch of 32 x 2048 tokens); pass --max-length
# for more, or less to go faster.
MAX_LENGTH_CAP = 2048


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


def looks_like_path(name: str) -> bool:
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


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StudioError(f"device '{device}' asked for, but torch sees no CUDA GPU")
    return device


def resolve_dtype(dtype: str, *, device: str) -> torch.dtype:
    """``auto`` -> bfloat16 on a GPU (half the memory traffic, tensor cores), float32 on CPU
    (bf16 matmuls are slow on most CPUs); or one of ``DTYPES`` by name."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise StudioError(f"dtype must be auto or one of {', '.join(DTYPES)}, got '{dtype}'")
    return DTYPES[dtype]


def safetensors_problem(file: str | Path) -> str | None:
    """Why a ``.safetensors`` file cannot be read (truncated, garbled header, empty), or None
    when its header is sound. Reads only the header; safetensors checks there that the file
    covers every tensor, so a cut-off download or copy is caught.

        >>> safetensors_problem("missing.safetensors")  # doctest: +SKIP
        'No such file or directory (os error 2)'
    """
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt"):
            return None
    except Exception as exc:  # SafetensorError, or an OSError for an unreadable file
        return _first_line(exc).removeprefix("Error while deserializing header: ")


def corrupt_file_error(file: str | Path, reason: str, *, what: str = "weights file") -> StudioError:
    """The one-line error for a weights file that cannot be read."""
    return StudioError(
        f"{what} '{file}' is truncated or corrupt ({reason}): copy or download it again"
    )


def check_weight_files(folder: Path) -> None:
    """Raise a one-line StudioError naming the first ``.safetensors`` file in ``folder`` whose
    header is unreadable (a model folder's ``model.safetensors`` or its shards)."""
    for file in sorted(folder.glob("*.safetensors")):
        if (reason := safetensors_problem(file)) is not None:
            raise corrupt_file_error(file, reason)


def hub_error_message(name: str, exc: BaseException, *, is_local: bool = False) -> str:
    """One line for a failed model load: gated repo, unknown/offline hub id, or a bad folder.

    transformers wraps hub errors in OSError; the original is on ``__cause__``/``__context__``.
    """
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    if is_local:
        return f"model folder '{name}' could not be loaded: {_first_line(exc)}"
    if names & {"GatedRepoError"} or any(
        w in text for w in ("gated repo", "401 client error", "unauthorized")
    ):
        return (
            f"model '{name}' is gated on the Hugging Face hub: accept its licence on "
            f"https://huggingface.co/{name} and log in (hf auth login), or pass a local folder"
        )
    return (
        f"model '{name}' is not a local folder and could not be fetched from the Hugging Face "
        f"hub (offline?): {_first_line(exc)}"
    )


def load_model(
    name_or_path: str, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a base model (no LM head) and tokenizer from a local folder or the hub cache.

    Works for BERT-style encoders and causal LMs (GPT-2, Llama, Qwen2/3, Gemma/Gemma 2,
    GPT-NeoX). The tokenizer gets a pad token (eos, else unk) and right padding, so that padded
    positions never change the activations of real tokens in a causal model. ``dtype`` None
    keeps float32 weights; pass ``resolve_dtype("auto", device=...)`` for bf16 on a GPU.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(name_or_path).expanduser()
    is_local = path.exists()
    if is_local:
        if not path.is_dir():
            raise StudioError(f"model path '{name_or_path}' is a file, not a model folder")
        if not (path / "config.json").is_file():
            raise StudioError(f"model folder '{name_or_path}' has no config.json")
        check_weight_files(path)
    elif looks_like_path(name_or_path):
        raise StudioError(f"model path '{name_or_path}' does not exist")
    source = str(path) if is_local else name_or_path

    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    # transformers' per-tensor "Loading weights" bar drowns our own progress bars and errors
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(source)
        fuse_activation(config)
        model = AutoModel.from_pretrained(source, config=config, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:  # hub errors (gated, not found, offline) are OSErrors too
        raise StudioError(hub_error_message(name_or_path, exc, is_local=is_local)) from exc
    except (ValueError, KeyError) as exc:
        raise StudioError(
            f"model '{name_or_path}' could not be loaded: {_first_line(exc)}"
        ) from exc
    except Exception as exc:
        # A hub model's cached weights that are cut off: safetensors' own error type
        if type(exc).__name__ != "SafetensorError":
            raise
        raise StudioError(
            f"model '{name_or_path}': a weights file is truncated or corrupt "
            f"({_first_line(exc)}): download it again"
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


def fuse_activation(config: Any) -> None:
    """GPT-2's ``gelu_new`` is the tanh-approximate GELU written as four separate ops; torch's
    own ``gelu(approximate="tanh")`` computes the same function in one kernel (~20% of a GPT-2
    forward on CPU). Only the activation's implementation changes, not the model."""
    for name in ("activation_function", "hidden_act"):
        if getattr(config, name, None) == "gelu_new":
            setattr(config, name, "gelu_pytorch_tanh")


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


def hook_name(layer: int) -> str:
    """The sae-lens hook name of a layer: ``blocks.L.hook_resid_post``; -1 is
    ``blocks.0.hook_resid_pre`` (the embeddings)."""
    return "blocks.0.hook_resid_pre" if layer == -1 else f"blocks.{layer}.hook_resid_post"


def parse_hook(hook: str) -> int:
    """The layer a residual-stream hook name reads (see the module docstring); digits pass.

    >>> parse_hook("blocks.12.hook_resid_post"), parse_hook("blocks.12.hook_resid_pre")
    (12, 11)
    """
    text = hook.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    match = _RESID_HOOK.match(text)
    if match is None:
        raise StudioError(
            f"hook '{hook}' is not a residual-stream hook: the studio reads "
            "blocks.N.hook_resid_post (or blocks.N.hook_resid_pre), or a layer index"
        )
    index = int(match.group(1))
    return index if match.group(2) == "post" else index - 1


def check_layer(lm: LoadedModel, layer: int) -> None:
    """Raise a StudioError unless ``-1 <= layer < lm.n_layers`` (-1 = the embeddings)."""
    if not -1 <= layer < lm.n_layers:
        raise StudioError(
            f"layer {layer} is out of range: model '{lm.name}' has {lm.n_layers} layers "
            f"(0..{lm.n_layers - 1}; blocks.0.hook_resid_pre .. "
            f"blocks.{lm.n_layers - 1}.hook_resid_post)"
        )


def resolve_layer(
    lm: LoadedModel,
    *,
    layer: int | None = None,
    hook: str | None = None,
    sae_hook: str | None = None,
) -> int:
    """The layer to read: ``layer``, else the ``hook`` name, else the SAE's own hook.

    Checked against the model, with a message naming the hook that does not exist.
    """
    if layer is not None and hook is not None:
        raise StudioError("give --layer or --hook, not both")
    source = hook if hook is not None else sae_hook if layer is None else None
    if layer is None and source is None:
        raise StudioError("no layer: give --layer L or --hook blocks.L.hook_resid_post")
    resolved = layer if layer is not None else parse_hook(str(source))
    if source is not None and not -1 <= resolved < lm.n_layers:
        what = "hook" if hook is not None else "the SAE's hook"
        raise StudioError(
            f"{what} '{source}' does not exist in model '{lm.name}': it has {lm.n_layers} "
            f"layers (blocks.0 .. blocks.{lm.n_layers - 1})"
        )
    check_layer(lm, resolved)
    return resolved


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


def default_max_length(lm: LoadedModel) -> int:
    """Tokens per example when ``--max-length`` is not given: the model's context (its position
    embeddings, else the tokenizer's ``model_max_length``), at most ``MAX_LENGTH_CAP``.

    MiniLM -> 512, GPT-2 -> 1024, Qwen2.5-Math-1.5B (4096) -> 2048.
    """
    known = [c for c in (context_length(lm), _tokenizer_limit(lm.tokenizer)) if c is not None]
    return min([*known, MAX_LENGTH_CAP])


def _tokenizer_limit(tokenizer: Any) -> int | None:
    """The tokenizer's ``model_max_length``; transformers puts a huge sentinel when unknown."""
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 1 < value < 1_000_000 else None


def token_lengths(lm: LoadedModel, texts: Sequence[str]) -> list[int]:
    """Untruncated token counts (special tokens included), for bucketing and truncation flags."""
    if not texts:
        return []
    enc = lm.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


@dataclass
class EncodedText:
    """One example, tokenized once: what the model reads and which tokens are pooled.

    ``ids``: token ids (special tokens included, truncated); ``keep``: pooled tokens (real,
    non-special, inside the pooled part); ``spans``: [n, 2] character span of each token in the
    example's *original* text, -1 where unknown (a response, template text, no offsets);
    ``tokens``: the token strings; ``truncated``: the text was longer than ``max_length``.
    """

    ids: list[int]
    keep: np.ndarray
    spans: np.ndarray
    tokens: list[str]
    truncated: bool


def render_example(
    tokenizer: Any,
    text: str,
    response: str | None = None,
    *,
    chat_template: bool = False,
) -> tuple[str, int, int]:
    """What the model reads for one example, and where the text and the response start in it.

    Without a chat template: ``text`` (then a blank line and the response, when given). With
    one: ``text`` as a user message (and the response as the assistant's) through
    ``tokenizer.apply_chat_template``. Returns (rendered, text_start, response_start), a start
    being -1 when the template changed that part so that it cannot be found.
    """
    if not chat_template:
        if response is None:
            return text, 0, -1
        return f"{text}\n\n{response}", 0, len(text) + 2
    messages = [{"role": "user", "content": text}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=response is None
    )
    start = rendered.find(text)
    after = start + len(text) if start >= 0 else 0
    return rendered, start, -1 if response is None else rendered.find(response, after)


def check_chat_template(lm: LoadedModel) -> None:
    """Raise a StudioError when the model's tokenizer has no chat template."""
    if not getattr(lm.tokenizer, "chat_template", None):
        raise StudioError(
            f"model '{lm.name}': its tokenizer has no chat template; drop --chat-template "
            "(or use a chat model's tokenizer)"
        )


def encode_texts(
    lm: LoadedModel,
    texts: Sequence[str],
    *,
    max_length: int,
    responses: Sequence[str | None] | None = None,
    pool_over: PoolOver = "prompt",
    chat_template: bool = False,
) -> list[EncodedText]:
    """Tokenize examples once each (see ``EncodedText``), truncating to ``max_length`` tokens
    (and the model's context). ``pool_over`` picks the pooled tokens: the text's, the
    response's or both; a response is read after its text, so it is seen in context. Inputs
    are cut at the end, except when pooling over the response only: then the start of the
    prompt goes, so the response is kept whole when it fits.

    Use the tokenizer from one thread at a time: fast tokenizers refuse concurrent calls.
    """
    if pool_over not in POOL_OVER:
        raise StudioError(f"pool_over must be one of {POOL_OVER}, got '{pool_over}'")
    if responses is not None and len(responses) != len(texts):
        raise StudioError(f"{len(texts)} texts but {len(responses)} responses")
    if pool_over != "prompt" and responses is None:
        raise StudioError(f"pooling over the {pool_over} needs responses")
    if chat_template:
        check_chat_template(lm)
    ctx = context_length(lm)
    if ctx is not None:
        max_length = min(max_length, ctx)  # longer inputs would crash the position embeddings
    tok = lm.tokenizer
    with_response = pool_over != "prompt"
    rendered = [
        render_example(
            tok,
            text,
            responses[i] if (with_response and responses is not None) else None,
            chat_template=chat_template,
        )
        for i, text in enumerate(texts)
    ]
    if not rendered:
        return []
    has_offsets = bool(getattr(tok, "is_fast", False))
    # A custom part to pool (not the whole plain text) is found by character offsets.
    needs_offsets = chat_template or with_response
    if needs_offsets and not has_offsets:
        raise StudioError(
            f"model '{lm.name}': a chat template or pooling over responses needs a fast "
            "tokenizer (character offsets)"
        )
    # Pooling over the response only: a long input loses the start of its prompt, not the
    # response it is about (special tokens stay either way).
    side = getattr(tok, "truncation_side", "right")
    tok.truncation_side = "left" if pool_over == "response" else "right"
    try:
        enc = tok(
            [r[0] for r in rendered],
            add_special_tokens=not chat_template,  # a chat template writes its own BOS
            truncation=True,
            max_length=max_length,
            return_special_tokens_mask=True,
            return_offsets_mapping=has_offsets,
            verbose=False,
        )
    finally:
        tok.truncation_side = side
    at_limit = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) >= max_length]
    longer: set[int] = set()
    if at_limit:
        full = tok(
            [rendered[i][0] for i in at_limit],
            add_special_tokens=not chat_template,
            truncation=False,
            verbose=False,
        )["input_ids"]
        longer = {i for i, ids in zip(at_limit, full, strict=True) if len(ids) > max_length}
    excluded = np.asarray(_excluded_token_ids(tok), dtype=np.int64)
    out = []
    for i, ids in enumerate(enc["input_ids"]):
        arr = np.asarray(ids, dtype=np.int64)
        keep = ~np.asarray(enc["special_tokens_mask"][i], dtype=bool) & ~np.isin(arr, excluded)
        text, response = texts[i], responses[i] if with_response and responses else None
        _, t0, r0 = rendered[i]
        if has_offsets:
            offs = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        else:
            offs = np.full((len(ids), 2), -1, dtype=np.int64)
        in_text = _inside(offs, t0, len(text))
        spans = np.where(in_text[:, None], offs - t0, -1)
        if needs_offsets:
            if pool_over in ("response", "both") and response is not None and r0 < 0:
                raise StudioError(
                    f"model '{lm.name}': its chat template changes the response text, so the "
                    "response tokens cannot be found to pool over"
                )
            part = np.zeros(len(ids), dtype=bool)
            if pool_over in ("prompt", "both"):
                part |= in_text if t0 >= 0 else True
            if pool_over in ("response", "both") and response is not None:
                part |= _inside(offs, r0, len(response))
            keep &= part
        out.append(
            EncodedText(
                ids=list(ids),
                keep=keep,
                spans=spans,
                tokens=tok.convert_ids_to_tokens(list(ids)),
                truncated=i in longer,
            )
        )
    return out


def _inside(offsets: np.ndarray, start: int, length: int) -> np.ndarray:
    """Tokens whose [start, end) character span overlaps [start, start + length)."""
    if start < 0:
        return np.zeros(len(offsets), dtype=bool)
    end = start + length
    return (offsets[:, 0] < end) & (offsets[:, 1] > start) & (offsets[:, 1] > offsets[:, 0])


def collate(lm: LoadedModel, examples: Sequence[EncodedText]) -> dict[str, Any]:
    """Pad encoded examples on the right into one batch.

    Returns ``input_ids``, ``attention_mask``, ``keep`` [B, S], ``spans`` [B, S, 2] (long,
    -1 = unknown), ``truncated`` [B] bool and ``n_truncated``.
    """
    n = len(examples)
    seq = max((len(e.ids) for e in examples), default=0)
    input_ids = torch.full((n, seq), int(lm.tokenizer.pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((n, seq), dtype=torch.long)
    keep = torch.zeros((n, seq), dtype=torch.bool)
    spans = torch.full((n, seq, 2), -1, dtype=torch.long)
    for row, e in enumerate(examples):
        m = len(e.ids)
        input_ids[row, :m] = torch.as_tensor(e.ids, dtype=torch.long)
        attention_mask[row, :m] = 1
        keep[row, :m] = torch.from_numpy(e.keep)
        spans[row, :m] = torch.from_numpy(e.spans)
    truncated = torch.tensor([e.truncated for e in examples], dtype=torch.bool)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "keep": keep,
        "spans": spans,
        "truncated": truncated,
        "n_truncated": int(truncated.sum()),
    }


def tokenize_batch(lm: LoadedModel, texts: Sequence[str], *, max_length: int) -> dict[str, Any]:
    """Tokenize plain texts with right padding and truncation to ``max_length``: ``collate``
    of ``encode_texts``. ``keep`` marks real, non-special tokens: the ones that are pooled."""
    return collate(lm, encode_texts(lm, texts, max_length=max_length))


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
    reading layer 6 of a 28-layer model costs about 7/28 of a full forward. Layer -1 is the
    input of block 0, read by a pre-hook, so no block runs at all.
    """
    check_layer(lm, layer)
    blocks = find_blocks(lm.model)
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(_block_output(output))
        raise _StopForward

    def pre_hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _StopForward

    if layer == -1:
        handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        handle = blocks[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode(), contextlib.suppress(_StopForward):
            lm.model(**_model_inputs(lm, batch))
    finally:
        handle.remove()
    if not captured:
        raise StudioError(f"model '{lm.name}': block {max(layer, 0)} did not run in the forward")
    return captured[0]


def full_forward_activations(lm: LoadedModel, batch: dict[str, Any], *, layer: int) -> torch.Tensor:
    """Baseline: a full forward with ``output_hidden_states=True``, taking ``hidden_states[L+1]``.

    For the last block the block output is captured by a pass-through hook instead, because
    decoder models apply their final norm to ``hidden_states[-1]``.
    """
    check_layer(lm, layer)
    captured: list[torch.Tensor] = []
    handle = find_blocks(lm.model)[max(layer, 0)].register_forward_hook(
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
