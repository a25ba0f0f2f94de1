"""Score responses with reward models (any transformers ``AutoModelForSequenceClassification``),
or import scores computed elsewhere, into the store's ``reward_scores``.

Two heads:

- ``scalar``: one logit, the reward itself (a Bradley-Terry reward model).
- ``ordinal``: WildReward's CORAL head. ``num_labels = K - 1`` logits, one per threshold
  "rating > k", each trained as a binary (sigmoid) target; the reward is the expected rating
  ``1 + sum_k sigmoid(logit_k)``, in [1, K]. A softmax over these logits would be wrong: they are
  not K exclusive classes.

    >>> reward_from_logits(np.array([[0.0, 0.0, 0.0]]), "ordinal")  # K = 4, every threshold 50%
    array([2.5])
    >>> reward_from_logits(np.array([[1.5], [-0.25]]), "scalar")
    array([ 1.5 , -0.25])

What the model reads for a (prompt, response): the tokenizer's chat template over
``[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]`` when it has
one (a chat's own earlier turns instead of the single user turn), else a plain template,
``"{prompt}\\n\\n{response}"`` by default. Texts are tokenized once, truncated to ``max_length``
(counted and stored per score), run in batches of similar length and written back in order.
:func:`score_rewards` commits chunks as it goes and resumes an interrupted run, like featurize.
"""

from __future__ import annotations

import contextlib
import json
import math
import string
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from core.errors import StudioError
from core.models import (
    _fuse_activation,
    _looks_like_path,
    hub_error_message,
    iter_length_batches,
    resolve_device,
    resolve_dtype,
)
from core.rewards import RESPONSE_CLUSTER
from core.store import RESPONSES_SUFFIX, REWARD_SCHEMA, Store

Head = Literal["scalar", "ordinal"]
HEADS = ("scalar", "ordinal")
DEFAULT_TEMPLATE = "{prompt}\n\n{response}"
CHAT = "chat"  # the template value that means "the tokenizer's chat template"
# Without a max_length and with a model that states no context: tokens per text.
FALLBACK_MAX_LENGTH = 4096
_SEQ_CLS = "ForSequenceClassification"


@dataclass
class RewardModel:
    """A reward model ready to score: the sequence-classification model in eval mode, its
    tokenizer, and the head its logits are read with."""

    model: torch.nn.Module
    tokenizer: Any
    name: str
    head: Head
    num_labels: int
    device: str
    pad_token_id: int
    context: int | None  # the most tokens the model takes, when its config says

    @property
    def k(self) -> int | None:
        """Rating levels of an ordinal head (``num_labels + 1``); None for a scalar head."""
        return self.num_labels + 1 if self.head == "ordinal" else None


# --- the heads -------------------------------------------------------------------------------
def check_head(
    num_labels: int, head: str, *, name: str = "the model", problem_type: Any = None
) -> None:
    """Raise a one-line StudioError unless ``num_labels`` logits fit ``head``: scalar needs
    exactly 1; ordinal (CORAL, K = num_labels + 1 levels) needs at least 2, and a model whose
    config says it was trained as a softmax classifier is not one."""
    if head not in HEADS:
        raise StudioError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if head == "scalar" and num_labels != 1:
        hint = (
            f"; if it is an ordinal CORAL head (K = {num_labels + 1} levels), use --head ordinal"
            if num_labels >= 2
            else ""
        )
        raise StudioError(
            f"{name} has {num_labels} output logits, but a scalar (Bradley-Terry) reward model "
            f"has exactly 1{hint}"
        )
    if head == "ordinal":
        if num_labels < 2:
            raise StudioError(
                f"{name} has {num_labels} output logit(s), but an ordinal (CORAL) head has "
                "K - 1 >= 2 (one per threshold of a 1..K rating); one logit is a scalar "
                "reward: use --head scalar"
            )
        if problem_type == "single_label_classification":
            raise StudioError(
                f"{name} was trained as a softmax classifier (problem_type "
                "single_label_classification), not as an ordinal CORAL head (one sigmoid per "
                "threshold)"
            )


def reward_from_logits(logits: np.ndarray | torch.Tensor, head: str) -> np.ndarray:
    """Rewards [n] (float64) from a batch of logits [n, num_labels]: the one logit (scalar), or
    ``1 + sum_k sigmoid(logit_k)`` (ordinal CORAL, in [1, K] with K = num_labels + 1)."""
    from core.rewards import coral_reward, scalar_reward

    x = torch.as_tensor(logits).detach().to("cpu", torch.float64).numpy()
    if x.ndim != 2:
        raise StudioError(f"reward logits must be [n, num_labels], got shape {tuple(x.shape)}")
    check_head(int(x.shape[1]), head, name="these logits")
    return scalar_reward(x) if head == "scalar" else coral_reward(x)


# --- loading ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers prints a load report (and bars) of its own; our errors say what matters."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_reward_model(
    path_or_hub_id: str,
    *,
    head: Head,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> RewardModel:
    """Load a reward model and its tokenizer from a local folder or the hub cache.

    Refused with a one-line StudioError: a checkpoint that is not a sequence classifier (its
    ``architectures`` name no ``*ForSequenceClassification``, or loading it would initialise
    head weights at random), and ``num_labels`` that fits neither head (:func:`check_head`).
    The tokenizer gets a pad token (eos, else unk) when it has none, and the model's config the
    pad id the batches are padded with: decoder reward models read the score at the last token
    that is not padding.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    name = path_or_hub_id
    path = Path(name).expanduser()
    is_local = path.exists()
    if is_local:
        if not path.is_dir():
            raise StudioError(f"model path '{name}' is a file, not a model folder")
        if not (path / "config.json").is_file():
            raise StudioError(f"model folder '{name}' has no config.json")
    elif _looks_like_path(name):
        raise StudioError(f"model path '{name}' does not exist")
    source = str(path) if is_local else name
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(source)
            archs = [str(a) for a in (getattr(config, "architectures", None) or [])]
            if archs and not any(a.endswith(_SEQ_CLS) for a in archs):
                raise StudioError(
                    f"model '{name}' is a {archs[0]}, not a reward model: it has no "
                    "sequence-classification head (pass a *ForSequenceClassification checkpoint)"
                )
            check_head(
                int(config.num_labels),
                head,
                name=f"model '{name}'",
                problem_type=getattr(config, "problem_type", None),
            )
            _fuse_activation(config)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                source, config=config, dtype=dtype or torch.float32, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:  # hub errors (gated, not found, offline) are OSErrors too
        raise StudioError(hub_error_message(name, exc, is_local=is_local)) from exc
    except (ValueError, KeyError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Unrecognized configuration class" in text:
            text = "transformers has no sequence-classification model for this architecture"
        raise StudioError(f"reward model '{name}' could not be loaded: {text}") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise StudioError(
            f"model '{name}' has no trained classification head: {len(missing)} weights are "
            f"missing from the checkpoint and would be random ({shown})"
        )

    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise StudioError(f"model '{name}': tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    # Pad with the id the model treats as padding, so it finds each row's last real token.
    pad_id = model.config.pad_token_id
    if pad_id is None:
        pad_id = int(tokenizer.pad_token_id)
        model.config.pad_token_id = pad_id
    model.to(device)
    model.eval()
    return RewardModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        head=head,
        num_labels=int(model.config.num_labels),
        device=device,
        pad_token_id=int(pad_id),
        context=_context_length(model.config),
    )


def _context_length(config: Any) -> int | None:
    get_text = getattr(config, "get_text_config", None)
    cfg = get_text() if callable(get_text) else config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# --- what the model reads ---------------------------------------------------------------------
def check_template(template: str) -> None:
    """A plain template names ``{response}`` (and usually ``{prompt}``) and nothing else;
    literal braces are written ``{{`` and ``}}``."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise StudioError(
            f"template {template!r}: {exc} (write literal braces as {{{{ }}}})"
        ) from None
    unknown = fields - {"prompt", "response"}
    if unknown:
        raise StudioError(
            f"template {template!r}: unknown field {{{sorted(unknown)[0]}}}; it may name "
            "{prompt} and {response} (literal braces are written {{ and }})"
        )
    if "response" not in fields:
        raise StudioError(f"template {template!r} must contain {{response}}")


def resolve_template(tokenizer: Any, template: str | None) -> str:
    """``"chat"`` (the tokenizer's chat template) or a checked plain template: None picks the
    chat template when the tokenizer has one, else :data:`DEFAULT_TEMPLATE`."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template is None:
        return CHAT if has_chat else DEFAULT_TEMPLATE
    if template == CHAT:
        if not has_chat:
            raise StudioError(
                "--template chat: the tokenizer has no chat template (give one with "
                "--chat-template FILE, or a plain template such as '{prompt}\\n\\n{response}')"
            )
        return CHAT
    check_template(template)
    return template


def render(
    tokenizer: Any, context: Sequence[dict[str, str]], response: str, *, template: str
) -> str:
    """The text a reward model reads: ``context`` (the turns before the response; one user
    turn for a preference pair) and the response, through the chat template or a plain one.

        >>> render(None, [{"role": "user", "content": "2+2?"}], "4", template=DEFAULT_TEMPLATE)
        '2+2?\\n\\n4'
    """
    if template == CHAT:
        messages = [*context, {"role": "assistant", "content": response}]
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    if len(context) == 1 and context[0]["role"] == "user":
        prompt = context[0]["content"]
    else:
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in context)
    return template.format(prompt=prompt, response=response)


@dataclass(frozen=True)
class Candidates:
    """What a reward source scores in a dataset, in ingest order: one entry per response."""

    keys: list[tuple[str, int]]  # (example_id, response_idx)
    contexts: list[list[dict[str, str]]]  # the turns before the response
    responses: list[str]
    n_skipped: int = 0  # chats whose last turn is not the assistant's


def reward_candidates(store: Store, dataset: str) -> Candidates:
    """Every response of a preference set (0 = chosen, 1.. = rejected), or the last assistant
    turn of each chat (response_idx -1, the turns before it as context). A prompt dataset has
    no responses to score: an error."""
    kind = store.dataset(dataset)["kind"]
    if kind == "prompts":
        raise StudioError(
            f"dataset '{dataset}' holds prompts only: a reward model scores responses, so it "
            "needs a preference set (chosen/rejected) or chats; an 'answer' field is a reference "
            "answer, checked by the verifier rather than scored"
        )
    tbl = store.reward_candidates(dataset)
    keys: list[tuple[str, int]] = []
    contexts: list[list[dict[str, str]]] = []
    responses: list[str] = []
    skipped = 0
    cols = tbl.to_pydict()
    for eid, ridx, prompt, response, messages in zip(
        cols["example_id"],
        cols["response_idx"],
        cols["prompt"],
        cols["response"],
        cols["messages"],
        strict=True,
    ):
        if kind == "preferences":
            context = [{"role": "user", "content": str(prompt)}]
        elif messages is None:
            raise StudioError(
                f"dataset '{dataset}': chat '{eid}' has no stored turns (ingested by an older "
                "version); ingest the file again with --replace"
            )
        else:
            turns = [
                {"role": str(m["role"]), "content": str(m["content"])} for m in json.loads(messages)
            ]
            if not turns or turns[-1]["role"] != "assistant":
                skipped += 1
                continue
            context, response = turns[:-1], turns[-1]["content"]
        keys.append((str(eid), int(ridx)))
        contexts.append(context)
        responses.append(str(response))
    if not keys:
        raise StudioError(
            f"dataset '{dataset}' ({kind}) has no response to score"
            + (f": none of its {skipped} chats ends with an assistant turn" if skipped else "")
        )
    return Candidates(keys, contexts, responses, n_skipped=skipped)


# --- scoring ---------------------------------------------------------------------------------
@dataclass
class Encoded:
    """Texts tokenized once: ids (truncated) and whether each text was longer."""

    ids: list[list[int]]
    truncated: list[bool]


def encode_inputs(rm: RewardModel, texts: Sequence[str], *, chat: bool, max_length: int) -> Encoded:
    """Tokenize rendered texts, truncated to ``max_length`` tokens (the tokenizer's own side,
    right by default). A chat template writes its own special tokens, so none are added."""
    if not texts:
        return Encoded([], [])
    tok = rm.tokenizer
    kwargs = {"add_special_tokens": not chat, "verbose": False}
    ids = tok(list(texts), truncation=True, max_length=max_length, **kwargs)["input_ids"]
    at_limit = [i for i, row in enumerate(ids) if len(row) >= max_length]
    longer: set[int] = set()
    if at_limit:
        full = tok([texts[i] for i in at_limit], truncation=False, **kwargs)["input_ids"]
        longer = {i for i, row in zip(at_limit, full, strict=True) if len(row) > max_length}
    return Encoded([list(row) for row in ids], [i in longer for i in range(len(ids))])


def score_encoded(
    rm: RewardModel,
    enc: Encoded,
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Logits [n, num_labels] (float32) of encoded texts, in their order: batches of similar
    length (longest first, so one that does not fit fails at once), right-padded with the
    model's pad id."""
    n = len(enc.ids)
    out = np.empty((n, rm.num_labels), dtype=np.float32)
    use_cache = getattr(rm.model.config, "use_cache", None) is not None
    for idx in iter_length_batches([len(r) for r in enc.ids], batch_size=batch_size):
        seq = max(len(enc.ids[i]) for i in idx)
        input_ids = torch.full((len(idx), seq), rm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), seq), dtype=torch.long)
        for row, i in enumerate(idx):
            m = len(enc.ids[i])
            input_ids[row, :m] = torch.as_tensor(enc.ids[i], dtype=torch.long)
            mask[row, :m] = 1
        kwargs: dict[str, Any] = {"use_cache": False} if use_cache else {}
        with torch.inference_mode():
            logits = rm.model(
                input_ids=input_ids.to(rm.device), attention_mask=mask.to(rm.device), **kwargs
            ).logits
        out[idx] = logits.float().cpu().numpy()
        if progress is not None:
            progress(len(idx))
    return out


def score_texts(
    rm: RewardModel,
    texts: Sequence[str],
    *,
    chat: bool,
    max_length: int,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rewards [n] float64, logits [n, num_labels] float32, truncated [n] bool) of rendered
    texts, in their order."""
    enc = encode_inputs(rm, texts, chat=chat, max_length=max_length)
    logits = score_encoded(rm, enc, batch_size=batch_size, progress=progress)
    return reward_from_logits(logits, rm.head), logits, np.asarray(enc.truncated, dtype=bool)


def default_reward_name(model: str) -> str:
    """The name a reward run gets without --name: the model folder's or hub id's last part."""
    return Path(model.rstrip("/\\")).name or "reward"


def _model_label(model: str) -> str:
    """What a run records as its model: a local folder resolved, a hub id as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _read_chat_template(chat_template: str) -> str:
    """Jinja text, or the text of the file it names."""
    path = Path(chat_template).expanduser()
    if "{" not in chat_template and path.is_file():
        return path.read_text(encoding="utf-8")
    if "{" not in chat_template:
        raise StudioError(
            f"--chat-template {chat_template!r}: no such file, and not a Jinja template"
        )
    return chat_template


def _warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


def score_rewards(
    store: Store,
    *,
    dataset: str,
    model: str,
    head: Head,
    name: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    template: str | None = None,
    chat_template: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    resume: bool = True,
    chunk_size: int = 512,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] = _warn,
) -> int:
    """Score every response of a dataset with a reward model; returns the run id.

    ``template``: None (the chat template when the tokenizer has one, else
    :data:`DEFAULT_TEMPLATE`), ``"chat"``, or a plain template with ``{prompt}`` and
    ``{response}``; ``chat_template`` (Jinja text or a file) replaces the tokenizer's.
    ``max_length`` defaults to the model's context (:data:`FALLBACK_MAX_LENGTH` when it states
    none); longer texts are truncated, counted and flagged. Commits every ``chunk_size``
    responses on a writer thread; rerunning the same command after an interruption continues
    with the responses not yet stored. ``progress(n)`` is called after each batch.
    """
    from core.steps import _ChunkWriter, versions

    if head not in HEADS:
        raise StudioError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
    for what, value in (("batch size", batch_size), ("chunk size", chunk_size)):
        if value < 1:
            raise StudioError(f"{what} must be at least 1, got {value}")
    if max_length is not None and max_length < 1:
        raise StudioError(f"--max-length must be at least 1, got {max_length}")
    if template is not None and template != CHAT:
        check_template(template)
    name = (name if name is not None else default_reward_name(model)).strip()
    if not name:
        raise StudioError("--name must be a non-empty name")
    cands = reward_candidates(store, dataset)  # before the (slow) model load
    dev = resolve_device(device)
    rm = load_reward_model(model, head=head, device=dev, dtype=resolve_dtype(dtype, device=dev))
    custom = _read_chat_template(chat_template) if chat_template is not None else None
    if custom is not None:
        rm.tokenizer.chat_template = custom
    tpl = resolve_template(rm.tokenizer, template)
    length = max_length or rm.context or FALLBACK_MAX_LENGTH
    if rm.context is not None:
        length = min(length, rm.context)  # longer inputs would crash the position embeddings
    model_dtype = str(next(rm.model.parameters()).dtype).removeprefix("torch.")
    config: dict[str, Any] = {
        "name": name,
        "model": _model_label(model),
        "head": head,
        "K": rm.k,
        "template": tpl,
        "max_length": length,
        "dtype": model_dtype,
    }
    if custom is not None:
        config["chat_template"] = custom
    run_id, resumed = store.start_reward_run(
        dataset=dataset, config=config, versions=versions(), resume=resume
    )
    done = store.done_reward_keys(run_id) if resumed else set()
    todo = [i for i, key in enumerate(cands.keys) if key not in done]
    source = f"model: {config['model']}"
    t0 = time.perf_counter()

    def commit(chunk: pa.Table) -> None:
        store.write_reward_chunk(run_id, chunk, source=source)

    n = len(cands.keys)
    writer = _ChunkWriter(commit)
    try:
        with tqdm(total=n, initial=n - len(todo), desc=f"reward {name}", unit="resp") as bar:

            def step(k: int) -> None:
                bar.update(k)
                if progress is not None:
                    progress(k)

            for start in range(0, len(todo), chunk_size):
                part = todo[start : start + chunk_size]
                texts = [
                    render(rm.tokenizer, cands.contexts[i], cands.responses[i], template=tpl)
                    for i in part
                ]
                values, logits, truncated = score_texts(
                    rm,
                    texts,
                    chat=tpl == CHAT,
                    max_length=length,
                    batch_size=batch_size,
                    progress=step,
                )
                writer.put(
                    pa.table(
                        {
                            "example_id": pa.array([cands.keys[i][0] for i in part], pa.string()),
                            "response_idx": pa.array([cands.keys[i][1] for i in part], pa.int32()),
                            "value": pa.array(values, pa.float64()),
                            "logits": pa.array(
                                list(logits) if head == "ordinal" else [None] * len(part),
                                pa.list_(pa.float32()),
                            ),
                            "truncated": pa.array(truncated, pa.bool_()),
                        },
                        schema=REWARD_SCHEMA,
                    )
                )
    finally:
        writer.close()
    totals = store.reward_totals(run_id)
    if totals["n_truncated"]:
        warn(
            f"{totals['n_truncated']} of {totals['n_scores']} texts were longer than {length} "
            "tokens and were truncated before scoring"
        )
    if cands.n_skipped:
        warn(f"{cands.n_skipped} chats do not end with an assistant turn and were not scored")
    store.finish_reward_run(
        run_id,
        summary={
            **totals,
            "n_skipped": cands.n_skipped,
            "resumed": resumed,
            "seconds_this_session": round(time.perf_counter() - t0, 1),
            "scored_this_session": len(todo),
            "device": dev,
            "dtype": model_dtype,
        },
    )
    return run_id


# --- imported scores --------------------------------------------------------------------------
def read_reward_file(path: str | Path, *, column: str = "score") -> tuple[pa.Table, list[str]]:
    """Scores from a JSONL/JSON/CSV/Parquet file: ``example_id`` (or ``id``), optional
    ``response_idx`` (0 = chosen, 1.. = rejected; -1 or absent: the example's single response)
    and the score ``column``. Returns (``REWARD_SCHEMA`` rows in file order, each row's place
    in the file, "line 7" / "row 7"). Any problem is a one-line StudioError naming the file,
    the line and the field; duplicates are errors."""
    from core.ingest import _load
    from core.rollouts import _Reader

    src = _load(Path(path))
    id_col = "example_id" if "example_id" in src.columns else "id"
    for need in (id_col, column):
        if need not in src.columns:
            fields = ", ".join(src.columns) or "none"
            what = "the id ('example_id' or 'id')" if need == id_col else "the score"
            raise src.error(0, f"field {need!r} is missing: no {what} (fields: {fields})")
    has_idx = "response_idx" in src.columns
    reader = _Reader(src, threshold=None)
    ids: list[str] = []
    idxs: list[int] = []
    values: list[float] = []
    first: dict[tuple[str, int], int] = {}
    for i in range(src.n):
        eid = reader.id(i, id_col)
        ridx = -1
        if has_idx:
            v = reader.value(i, "response_idx")
            if type(v) is float and v.is_integer():
                v = int(v)
            if v is not None and (type(v) is not int or v < -1 or v > 2**31 - 1):
                raise reader.fail(i, "field 'response_idx'", "an integer >= -1", v)
            ridx = -1 if v is None else int(v)
        v = reader.value(i, column)
        if v is None:
            raise src.error(i, f"field {column!r} is missing")
        if type(v) not in (int, float) or not math.isfinite(v):
            raise reader.fail(i, f"field {column!r}", "a finite number", v)
        j = first.setdefault((eid, ridx), i)
        if j != i:
            raise src.error(
                i,
                f"field {id_col!r}: ({eid!r}, response_idx {ridx}) is scored twice "
                f"(first at {src.locate(j)})",
            )
        ids.append(eid)
        idxs.append(ridx)
        values.append(float(v))
    table = pa.table(
        {
            "example_id": pa.array(ids, pa.string()),
            "response_idx": pa.array(idxs, pa.int32()),
            "value": pa.array(values, pa.float64()),
            "logits": pa.nulls(len(ids), pa.list_(pa.float32())),
            "truncated": pa.nulls(len(ids), pa.bool_()),
        },
        schema=REWARD_SCHEMA,
    )
    return table, [src.locate(i) for i in range(src.n)]


def import_rewards(
    store: Store, path: str | Path, *, dataset: str, name: str, column: str = "score"
) -> int:
    """Read a file of precomputed scores (:func:`read_reward_file`) and store it as a finished
    reward run named ``name`` (source ``imported: FILE``). An id or (id, response_idx) the
    dataset does not hold is an error naming its line, and nothing is stored. Returns the
    run id."""
    from core.steps import versions

    if not name or not name.strip():
        raise StudioError("--name must be a non-empty name")
    kind = store.dataset(dataset)["kind"]
    table, where = read_reward_file(path, column=column)
    file = Path(path).name
    idx = table.column("response_idx").to_pylist()
    if kind == "preferences" and -1 in idx:
        at = where[idx.index(-1)]
        raise StudioError(
            f"{file} {at}: field 'response_idx' is missing or -1: dataset '{dataset}' holds "
            "preference sets, so each score names its response (0 = chosen, 1.. = rejected)"
        )
    unknown = store.unknown_reward_keys(dataset, table)
    if unknown.num_rows:
        bad = set(
            zip(
                unknown.column("example_id").to_pylist(),
                unknown.column("response_idx").to_pylist(),
                strict=True,
            )
        )
        keys = list(zip(table.column("example_id").to_pylist(), idx, strict=True))
        i = next(i for i, key in enumerate(keys) if key in bad)
        eid, ridx = keys[i]
        what = f"example {eid!r}" if ridx == -1 else f"response {ridx} of example {eid!r}"
        raise StudioError(
            f"{file} {where[i]}: dataset '{dataset}' has no {what} ({unknown.num_rows} unknown "
            "in the file); nothing stored"
        )
    return store.import_reward_scores(
        dataset=dataset,
        name=name.strip(),
        path=str(path),
        scores=table,
        versions=versions(),
        column=column,
    )


# --- judging -----------------------------------------------------------------------------------
# The responses a per-example feedback label is matched to: a chat's scored response (-1) or a
# preference set's chosen response (0). A rating stored on the example describes the response
# the example was kept with; a rejected response carries no rating of its own.
CALIBRATION_RESPONSES = (-1, 0)
NO_LOGITS = (
    "no logits (a scalar head, imported scores, the verifier or a probe): calibration needs an "
    "ordinal (CORAL) reward model's K-1 logits"
)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """A frame cell as plain Python for JSON: numpy scalars unwrapped, NaN/NA as None."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if _missing(value) else value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {str(k): _plain(v) for k, v in row.items()}
        for row in frame.astype(object).to_dict("records")
    ]


def category_values(store: Store, *, dataset: str, columns: Sequence[str]) -> pd.DataFrame:
    """One row per example of ``dataset`` (index ``example_id``), one column per name in
    ``columns``: a numeric label, a string tag, or ``cluster`` (the latest cluster run's
    assignment). A name that is none of these is a one-line error listing what exists.
    ``response_cluster`` is per response, not per example: it is skipped here (see
    :func:`response_clusters`)."""
    from core.store import Views

    labels, tags = store.label_names(dataset), store.tag_names(dataset)
    cluster_run = store.latest_run(dataset=dataset, step="cluster")
    columns = [c for c in columns if c != RESPONSE_CLUSTER]
    for col in columns:
        if col == "cluster" and cluster_run is None:
            raise StudioError(
                f"--by cluster: dataset '{dataset}' has no cluster run yet (run `python -m core "
                f"cluster --dataset {dataset}`); labels: {', '.join(labels) or 'none'}; tags: "
                f"{', '.join(tags) or 'none'}"
            )
        if col != "cluster" and col not in labels and col not in tags:
            resp = dataset + RESPONSES_SUFFIX
            has_resp = store.has_dataset(resp) and store.latest_run(dataset=resp, step="cluster")
            raise StudioError(
                f"--by {col}: dataset '{dataset}' has no label, tag or cluster of that name; "
                f"labels: {', '.join(labels) or 'none'}; tags: {', '.join(tags) or 'none'}; "
                f"cluster: {'yes' if cluster_run is not None else 'none (no cluster run)'}; "
                f"{RESPONSE_CLUSTER}: {'yes' if has_resp else 'none (no clustered responses)'}"
            )
    cols = list(dict.fromkeys(columns))
    views = Views(None, cluster_run, None)
    wide = store.wide(dataset, views=views, columns=["id", *cols]).to_pandas()
    return wide.set_index("id").rename_axis("example_id")[cols]


def response_clusters(store: Store, *, dataset: str) -> pd.Series:
    """Each response's cluster, indexed by (example_id, response_idx), from the latest cluster
    run of the preference set's responses dataset (``python -m core responses``)."""
    from core.store import Views

    resp = dataset + RESPONSES_SUFFIX
    run = store.latest_run(dataset=resp, step="cluster") if store.has_dataset(resp) else None
    if run is None:
        raise StudioError(
            f"--by {RESPONSE_CLUSTER}: '{resp}' has no cluster run (run `python -m core "
            f"responses --dataset {dataset}`, featurize and cluster '{resp}')"
        )
    keys = store.response_keys(resp).to_pandas()
    wide = store.wide(resp, views=Views(None, run, None), columns=["id", "cluster"]).to_pandas()
    keys = keys.merge(wide, on="id", how="left")
    return keys.set_index(["example_id", "response_idx"])["cluster"]


def _has_logits(frame: pd.DataFrame) -> bool:
    """Whether every stored score of a reward run has its logits (an ordinal head's)."""
    return bool(len(frame)) and not bool(frame["logits"].isna().any())


def _calibrate(
    frame: pd.DataFrame, labels: pd.Series, *, name: str, label: str, n_bins: int
) -> dict[str, Any]:
    """Calibration of one reward source's stored scores (a ``reward_scores`` frame) against
    ``labels`` (example_id -> value, unlabelled examples left out)."""
    from core import rewards

    if not _has_logits(frame):
        raise StudioError(f"reward '{name}' has {NO_LOGITS}")
    matched = frame[frame["response_idx"].isin(CALIBRATION_RESPONSES)]
    value = matched["example_id"].map(labels)
    n_unlabelled = int(value.isna().sum())
    matched, value = matched[value.notna()], value[value.notna()]
    if matched.empty:
        raise StudioError(
            f"reward '{name}': no scored response carries the label '{label}' (only a chat's "
            "response or a preference set's chosen response is matched to its example's label)"
        )
    cal = rewards.ordinal_calibration(
        np.stack([np.asarray(z, dtype=np.float64) for z in matched["logits"]]),
        value.to_numpy(np.float64),
        ids=matched["example_id"].tolist(),
        n_bins=n_bins,
    )
    out = cal.to_dict()
    out.update(
        label=label,
        n_unlabelled=n_unlabelled,
        n_other_responses=len(frame) - len(matched) - n_unlabelled,
    )
    return out


def _label_series(store: Store, dataset: str, label: str) -> pd.Series:
    names = store.label_names(dataset)
    if label not in names:
        raise StudioError(
            f"dataset '{dataset}' has no label '{label}'; labels: {', '.join(names) or 'none'}"
        )
    tbl = store.labels(dataset, label).to_pandas().dropna(subset=["value"])
    return tbl.set_index("example_id")["value"]


def calibration(
    store: Store, *, dataset: str, name: str, label: str, n_bins: int = 10
) -> dict[str, Any]:
    """How well the ordinal reward run ``name`` is calibrated against the feedback label
    ``label`` (integers 1..K, WildReward's ratings): top-label ``ece``, the reliability
    ``table`` (one dict per confidence bin), ``n``, ``k``, ``label_counts``,
    ``predicted_counts``, ``accuracy`` (the most likely class is the label), ``mean_label``,
    ``mean_reward``; ``n_unlabelled`` (matched responses without the label) and
    ``n_other_responses`` (not matched, see below).

    The label belongs to an example, so each example contributes one response: its chat
    response (response_idx -1) or its chosen response (0); rejected responses are left out.
    A run without logits (a scalar head, imported scores) is refused, and so is a label
    outside 1..K (naming the example), in one line each."""
    frames = store.reward_frames(dataset, [name])
    labels = _label_series(store, dataset, label)
    out = _calibrate(frames[name], labels, name=name, label=label, n_bins=n_bins)
    return {"name": name, "run_id": store.reward_runs(dataset)[name], **out}


def judge(
    store: Store,
    *,
    dataset: str,
    names: Sequence[str] | None = None,
    by: Sequence[str] = (),
    side: str = "example",
    margins: Sequence[float] | None = None,
    calibration_label: str | None = None,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Every named reward source of a preference set judged on it (pairwise accuracy and
    StoryRMB 1-of-N, with chance and 95% intervals) and every two sources compared
    (Spearman, Kendall, pair agreement, best-of-n agreement): what `python -m core judge`
    prints.

    Optional, per source (``sources[name]``): ``by[column]``, the accuracies per value of each
    column in ``by`` (a label, a tag, ``cluster`` or ``response_cluster``; core.rewards.accuracy_by with ``side``,
    rows with ``value``); ``margins``, the margin curve (core.rewards.margin_curve);
    ``calibration``, the calibration against ``calibration_label`` (:func:`calibration`), or
    ``{"skipped": why}`` for a source without logits. Plain data throughout (NaN as None)."""
    from core import rewards

    kind = store.dataset(dataset)["kind"]  # an unknown dataset: one line naming the known
    frames = store.reward_frames(dataset, names)
    runs = store.reward_runs(dataset)
    names = list(frames)
    if (by or margins is not None) and kind != "preferences":
        what = "--by" if by else "--margins"
        raise StudioError(
            f"{what}: dataset '{dataset}' holds {kind}; accuracy per category and by margin "
            "need a preference set (a chosen and rejected responses)"
        )
    if not frames:
        raise StudioError(
            f"dataset '{dataset}' has no reward scores to judge: score it first with "
            "`reward`, `verify`, `import-rewards` or `reward-probe`"
        )
    values = category_values(store, dataset=dataset, columns=by) if by else None
    per_response = (
        response_clusters(store, dataset=dataset) if RESPONSE_CLUSTER in (by or ()) else None
    )
    labels = (
        _label_series(store, dataset, calibration_label) if calibration_label is not None else None
    )
    out: dict[str, Any] = {"dataset": dataset, "sources": {}, "agreement": {}}
    if by:
        out["by_side"] = side
    for n, f in frames.items():
        row: dict[str, Any] = {"run_id": runs[n], "n_scores": len(f)}
        if kind == "preferences":
            row["pairwise"] = rewards.pairwise_accuracy(f).to_dict()
            row["one_of_n"] = rewards.one_of_n_accuracy(f).to_dict()
        if values is not None:
            base = f[["example_id", "response_idx", "role", "score"]]
            row["by"] = {}
            for col in by:
                if col == RESPONSE_CLUSTER:
                    assert per_response is not None
                    at = pd.MultiIndex.from_frame(base[["example_id", "response_idx"]])
                    value = per_response.reindex(at).to_numpy()
                else:
                    value = base["example_id"].map(values[col]).to_numpy()
                g = base.assign(value=value)
                table = rewards.accuracy_by(g, by="value", side=side)  # type: ignore[arg-type]
                row["by"][col] = _records(table)
        if margins is not None:
            row["margins"] = _records(rewards.margin_curve(f, margins=margins))
        if labels is not None:
            assert calibration_label is not None
            if not _has_logits(f):
                row["calibration"] = {"skipped": NO_LOGITS}
            else:
                row["calibration"] = _calibrate(
                    f, labels, name=n, label=calibration_label, n_bins=n_bins
                )
        out["sources"][n] = row
    # chats: one response per example, no chosen/rejected roles to pair by
    keep = ["example_id", "response_idx", "score", *(["role"] if kind == "preferences" else [])]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            agree = rewards.agreement(frames[a][keep], frames[b][keep])
            out["agreement"][f"{a} vs {b}"] = asdict(agree)
    return out


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _category(value: Any) -> str:
    """A category value as printed: whole-number labels without '.0', missing ones named."""
    if value is None:
        return "(missing)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _accuracy_text(label: str, value: Any, low: Any, high: Any) -> str:
    if value is None:
        return f"{label} n/a"
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{label} {value:.3f}{interval}"


def judge_report(judged: dict[str, Any]) -> list[str]:
    """The lines `python -m core judge` prints for :func:`judge`'s result."""
    lines = []
    for name, row in judged["sources"].items():
        line = f"{name}: {row['n_scores']} scores"
        for key, label in (("pairwise", "pairwise accuracy"), ("one_of_n", "1-of-N accuracy")):
            if key in row:
                a = row[key]
                line += (
                    f"; {label} {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] "
                    f"(chance {a['chance']:.3f}, n {a['n']})"
                )
        lines.append(line)
    for pair, a in judged["agreement"].items():
        lines.append(
            f"{pair}: Spearman {_num(a['spearman'])}, pair agreement {_num(a['pair_agreement'])} "
            f"({a['n_pairs']} pairs), best-of-n agreement {_num(a['top1_agreement'])} "
            f"(chance {_num(a['top1_chance'])})"
        )
    sources = judged["sources"].items()
    for col in next((list(row["by"]) for _, row in sources if "by" in row), []):
        lines.append(f"by {col} (side {judged['by_side']}):")
        for name, row in sources:
            for r in row["by"][col]:
                one = (
                    "1-of-N accuracy n/a (not defined per rejected response)"
                    if r["one_of_n"] is None and judged["by_side"] == "rejected"
                    else _accuracy_text(
                        "1-of-N accuracy", r["one_of_n"], r["one_of_n_low"], r["one_of_n_high"]
                    )
                    + f" (chance {_num(r['one_of_n_chance'])}, {r['n_examples']} prompts)"
                )
                pw = _accuracy_text(
                    "pairwise accuracy", r["pairwise"], r["pairwise_low"], r["pairwise_high"]
                )
                lines.append(
                    f"  {name} {col}={_category(r['value'])}: {pw} ({r['n_pairs']} pairs); {one}"
                )
    if any("margins" in row for _, row in sources):
        lines.append("margin curve (pairs with |chosen - rejected| > m):")
        for name, row in sources:
            for r in row["margins"]:
                lines.append(
                    f"  {name} m={r['margin']:g}: accuracy {_num(r['accuracy'])} "
                    f"({r['n_pairs']} pairs, kept {r['kept_share']:.3f})"
                )
    for name, row in sources:
        cal = row.get("calibration")
        if cal is None:
            continue
        if "skipped" in cal:
            lines.append(f"{name} calibration: skipped: {cal['skipped']}")
            continue
        counts = ", ".join(f"{k}: {v}" for k, v in cal["label_counts"].items())
        lines.append(
            f"{name} calibration against '{cal['label']}': ECE {cal['ece']:.3f} (n {cal['n']}, "
            f"K {cal['k']}, top-class accuracy {cal['accuracy']:.3f}, mean label "
            f"{cal['mean_label']:.3f}, mean reward {cal['mean_reward']:.3f}); labels {counts}"
        )
        for b in cal["table"]:
            if b["count"]:
                lines.append(
                    f"  confidence ({b['lo']:.1f}, {b['hi']:.1f}]: mean confidence "
                    f"{b['confidence']:.3f}, accuracy {b['accuracy']:.3f}, n {b['count']}"
                )
    return lines
