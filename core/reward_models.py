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
import math
import string
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from core.errors import StudioError
from core.ingest import load_source
from core.models import (
    fuse_activation,
    hub_error_message,
    iter_length_batches,
    looks_like_path,
)
from core.rewards import coral_reward, scalar_reward
from core.rollouts import RecordReader
from core.store.schema import REWARD_SCHEMA

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
    elif looks_like_path(name):
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
            fuse_activation(config)
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


def _warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


# --- imported scores --------------------------------------------------------------------------
def read_reward_file(path: str | Path, *, column: str = "score") -> tuple[pa.Table, list[str]]:
    """Scores from a JSONL/JSON/CSV/Parquet file: ``example_id`` (or ``id``), optional
    ``response_idx`` (0 = chosen, 1.. = rejected; -1 or absent: the example's single response)
    and the score ``column``. Returns (``REWARD_SCHEMA`` rows in file order, each row's place
    in the file, "line 7" / "row 7"). Any problem is a one-line StudioError naming the file,
    the line and the field; duplicates are errors."""

    src = load_source(Path(path))
    id_col = "example_id" if "example_id" in src.columns else "id"
    for need in (id_col, column):
        if need not in src.columns:
            fields = ", ".join(src.columns) or "none"
            what = "the id ('example_id' or 'id')" if need == id_col else "the score"
            raise src.error(0, f"field {need!r} is missing: no {what} (fields: {fields})")
    has_idx = "response_idx" in src.columns
    reader = RecordReader(src, threshold=None)
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


# --- judging -----------------------------------------------------------------------------------
# The responses a per-example feedback label is matched to: a chat's scored response (-1) or a
# preference set's chosen response (0). A rating stored on the example describes the response
# the example was kept with; a rejected response carries no rating of its own.
CALIBRATION_RESPONSES = (-1, 0)
NO_LOGITS = (
    "no logits (a scalar head, imported scores, the verifier or a probe): calibration needs an "
    "ordinal (CORAL) reward model's K-1 logits"
)


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
