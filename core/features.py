"""Turn texts into sparse SAE feature vectors, and keep running per-feature statistics.

An example is represented by its SAE codes at one layer pooled over its real tokens (special
tokens excluded; the prompt's, the response's or both), stored sparsely as its top-k
(feature_id, value) pairs. ``TokenStats`` keeps, per feature, how often and how strongly it
fires and the tokens where it fires most (with their character spans in the example's text), so
a feature can be read ("fires on 'integral' in ex-12, ex-40...") without revisiting the data.
Optionally (``FeatureConfig.dense``) each example also keeps its dense baseline: the mean over
the same pooled tokens of the layer's hidden state (what the SAE encodes), d_model floats, so
probes and clustering on SAE features can be compared against the plain activations.

Tokenization runs on a background thread, one chunk ahead of the model, so the two overlap.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from core.defaults import DEFAULT_TOP_K
from core.errors import StudioError
from core.models import (
    POOL_OVER,
    EncodedText,
    LoadedModel,
    PoolOver,
    collate,
    default_max_length,
    encode_texts,
    iter_length_batches,
    layer_activations,
)
from core.sae import check_sae_matches

Pooling = Literal["mean", "max", "sum", "count"]
_POOLINGS = ("mean", "max", "sum", "count")
T = TypeVar("T")

FEATURE_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("n_tokens", pa.int32()),
        ("truncated", pa.bool_()),
        ("feature_ids", pa.list_(pa.int32())),
        ("values", pa.list_(pa.float32())),
    ]
)
# With FeatureConfig.dense: also the mean of the layer's hidden state over the pooled tokens.
DENSE_FEATURE_SCHEMA = FEATURE_SCHEMA.append(pa.field("dense", pa.list_(pa.float32())))


@dataclass(frozen=True)
class FeatureConfig:
    """How examples become feature vectors: layer (-1 = embeddings), which tokens and how they
    are pooled, and how many features to keep.

    ``pooling``: mean, max or sum of each feature over the pooled tokens, or count (the number
    of tokens where it fires). ``pool_over``: the example's text (prompt), its response, or
    both. ``chat_template``: render the text as a user message with the tokenizer's template.
    ``dense``: also keep the mean of the layer's hidden state over the same tokens (float32,
    d_model per example), the dense baseline. ``max_length`` None: the model's context, capped
    (``core.models.default_max_length``). ``layer`` None: not chosen yet (the featurize step
    takes it from ``--hook`` or the SAE's own hook); ``featurize_batches`` needs it chosen.
    Errors name the field and its featurize flag. ``core.steps.featurize.FeaturizeConfig``
    extends this with where the texts, model and SAE come from, so defaults stand here once.
    """

    layer: int | None = None
    pooling: Pooling = "mean"
    top_k: int = DEFAULT_TOP_K
    batch_size: int = 32
    max_length: int | None = None
    pool_over: PoolOver = "prompt"
    chat_template: bool = False
    dense: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in _POOLINGS:
            raise StudioError(f"pooling must be one of {_POOLINGS}, got '{self.pooling}'")
        if self.pool_over not in POOL_OVER:
            raise StudioError(f"pool_over must be one of {POOL_OVER}, got '{self.pool_over}'")
        if self.layer is not None and self.layer < -1:
            raise StudioError(
                f"layer must be >= -1 (-1 = the embeddings), got {self.layer} (--layer)"
            )
        for name in ("top_k", "batch_size"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise StudioError(f"{name} must be at least 1, got {getattr(self, name)} ({flag})")
        if self.max_length is not None and self.max_length < 2:
            raise StudioError(
                f"max_length must be at least 2, got {self.max_length} (--max-length)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        return cls(**data)


def chosen_layer(cfg: FeatureConfig) -> int:
    """``cfg.layer``, which must be chosen by now (featurizing runs one layer)."""
    if cfg.layer is None:
        raise StudioError("layer is not chosen: give --layer or --hook, or an SAE with a hook")
    return cfg.layer


def check_at_least_one(flags: dict[str, int | None]) -> None:
    """One line for the first flag below 1 (None = not given): the run options beside
    ``FeatureConfig``, e.g. ``{"--chunk-size": 0}`` -> "--chunk-size must be at least 1, got 0"."""
    for flag, value in flags.items():
        if value is not None and value < 1:
            raise StudioError(f"{flag} must be at least 1, got {value}")


def truncation_warning(
    n_truncated: int,
    n_examples: int,
    *,
    max_length: int,
    context: int | None,
    chat_template: bool = False,
) -> str | None:
    """The line featurize prints when examples were cut: how many, their share, the limit and
    the flag that moves it (or that the model's context is the limit). None when none were cut.
    Example: 23 of 100 cut at 256 tokens, context 512 -> "23 examples were longer than 256
    tokens (23.0% of 100) and were truncated: pass --max-length N (up to the model's context,
    512) to keep more".
    """
    if n_truncated <= 0:
        return None
    limit = max_length if context is None else min(max_length, context)
    share = n_truncated / max(n_examples, 1)
    what = " (the chat template's own tokens count too)" if chat_template else ""
    head = (
        f"{n_truncated} examples were longer than {limit} tokens{what} ({share:.1%} of "
        f"{n_examples}) and were truncated"
    )
    if context is not None and limit >= context:
        return f"{head}: that is the model's context, so --max-length cannot keep more"
    upto = f" (up to the model's context, {context})" if context is not None else ""
    return f"{head}: pass --max-length N{upto} to keep more"


def encode_tokens(sae: Any, acts: torch.Tensor) -> torch.Tensor:
    """SAE codes of token activations: [T, d_in] -> [T, d_sae], on the SAE's device and dtype."""
    with torch.inference_mode():
        return sae.encode(acts.to(device=sae.device, dtype=sae.dtype))


def pool(codes: torch.Tensor, how: Pooling) -> torch.Tensor:
    """Pool one example's token codes [T, d_sae] -> [d_sae]; no tokens gives a zero vector."""
    if how not in _POOLINGS:
        raise StudioError(f"pooling must be one of {_POOLINGS}, got '{how}'")
    if codes.shape[0] == 0:
        return torch.zeros(codes.shape[1], dtype=codes.dtype, device=codes.device)
    if how == "mean":
        return codes.mean(0)
    if how == "max":
        return codes.amax(0)
    if how == "sum":
        return codes.sum(0)
    return (codes > 0).sum(0).to(codes.dtype)


def pool_segments(
    codes: torch.Tensor, segment: torch.Tensor, n_segments: int, how: Pooling
) -> torch.Tensor:
    """Pool token codes [T, d_sae] per example at once: ``segment[t]`` is token t's example.

    Returns [n_segments, d_sae]; an example without tokens pools to zeros. SAE codes are
    non-negative, so max pooling can start from zeros (mean, sum and count work for any rows,
    e.g. the hidden states of the dense baseline).
    """
    out = torch.zeros(n_segments, codes.shape[1], dtype=codes.dtype, device=codes.device)
    if codes.shape[0] == 0:
        return out
    if how == "sum":
        return out.index_add_(0, segment, codes)
    if how == "count":
        return out.index_add_(0, segment, (codes > 0).to(codes.dtype))
    if how == "mean":
        out.index_add_(0, segment, codes)
        counts = torch.bincount(segment, minlength=n_segments).clamp(min=1)
        return out / counts.unsqueeze(1).to(codes.dtype)
    if how == "max":
        index = segment.unsqueeze(1).expand(-1, codes.shape[1])
        return out.scatter_reduce_(0, index, codes, reduce="amax", include_self=True)
    raise StudioError(f"pooling must be one of {_POOLINGS}, got '{how}'")


def topk_sparse(pooled: torch.Tensor, k: int) -> pa.Table:
    """Keep each row's top-k nonzero features, sorted by value descending.

    Returns a table with ``feature_ids`` list<int32> and ``values`` list<float32>; a row has
    fewer than k entries when fewer features are nonzero.
    """
    pooled = pooled.detach().float().cpu()
    n, d_sae = pooled.shape
    if n == 0 or d_sae == 0:
        vals = torch.zeros(n, 0)
        idx = torch.zeros(n, 0, dtype=torch.long)
    else:
        vals, idx = torch.topk(pooled, min(k, d_sae), dim=1, sorted=True)
    nonzero = vals != 0
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(nonzero.sum(1).numpy(), out=offsets[1:])
    ids = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(idx[nonzero].numpy().astype(np.int32))
    )
    values = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(vals[nonzero].numpy().astype(np.float32))
    )
    return pa.table({"feature_ids": ids, "values": values})


class TokenStats:
    """Running per-feature statistics over a dataset, restorable to continue a resumed run.

    Per feature: ``n_fire`` (examples whose pooled value > 0), ``sum_act`` (sum of pooled
    values), ``max_act`` (largest token activation) and the ``top_n`` token occurrences
    (value, token, example id, character span) where it fires most, one per (token, example)
    pair. Spans index the example's text; -1 where unknown.
    """

    compact_slack: int = 10_000  # strings kept beyond those the buffer references

    def __init__(self, d_sae: int, *, top_n: int = 10) -> None:
        if d_sae < 1 or top_n < 1:
            raise StudioError(f"TokenStats needs d_sae >= 1 and top_n >= 1, got {d_sae}, {top_n}")
        self.d_sae = d_sae
        self.top_n = top_n
        self.n_fire = torch.zeros(d_sae, dtype=torch.long)
        self.sum_act = torch.zeros(d_sae, dtype=torch.float64)
        self.max_act = torch.zeros(d_sae, dtype=torch.float32)
        # Top buffer: value (-inf = empty slot), token and example as indices into the tables.
        self.top_val = torch.full((d_sae, top_n), -torch.inf)
        self.top_tok = torch.zeros((d_sae, top_n), dtype=torch.long)
        self.top_ex = torch.zeros((d_sae, top_n), dtype=torch.long)
        self.top_span = torch.full((d_sae, top_n, 2), -1, dtype=torch.long)
        self._tokens = _Interner()
        self._examples = _Interner()

    def update(
        self,
        codes: torch.Tensor,
        token_strings: Sequence[str],
        example_ids: Sequence[str],
        pooled: torch.Tensor,
        spans: torch.Tensor | None = None,
    ) -> None:
        """Fold in one batch: codes [T, d_sae] of kept tokens, each token's string and example
        id (length T), the batch's pooled vectors [n, d_sae], and optionally each token's
        character span [T, 2] in its example's text (-1 = unknown)."""
        if codes.shape[0] != len(token_strings) or codes.shape[0] != len(example_ids):
            raise StudioError(
                f"TokenStats.update: {codes.shape[0]} token codes but {len(token_strings)} "
                f"token strings and {len(example_ids)} example ids"
            )
        pooled = pooled.detach().cpu()
        self.n_fire += (pooled > 0).sum(0)
        self.sum_act += pooled.double().sum(0)
        if codes.shape[0] == 0:
            return
        codes = codes.detach()
        self.max_act = torch.maximum(self.max_act, codes.amax(0).float().cpu())

        # Candidates: a few more than top_n per feature, so duplicates can be dropped.
        n_cand = min(codes.shape[0], 3 * self.top_n)
        cand_val, cand_pos = torch.topk(codes, n_cand, dim=0)  # [n_cand, d_sae]
        cand_val, cand_pos = cand_val.T.float().cpu(), cand_pos.T.cpu()
        tok_idx = torch.tensor(self._tokens.indices(token_strings), dtype=torch.long)
        ex_idx = torch.tensor(self._examples.indices(example_ids), dtype=torch.long)
        if spans is None:
            spans = torch.full((codes.shape[0], 2), -1, dtype=torch.long)
        spans = spans.detach().cpu().long()
        self._merge(cand_val, tok_idx[cand_pos], ex_idx[cand_pos], spans[cand_pos])
        self._compact_if_large()

    def _merge(
        self, val: torch.Tensor, tok: torch.Tensor, ex: torch.Tensor, span: torch.Tensor
    ) -> None:
        """Merge [d_sae, m] candidates (spans [d_sae, m, 2]) into the buffer: drop non-firing
        and duplicate (token, example) pairs."""
        val = torch.cat([self.top_val, val.masked_fill(val <= 0, -torch.inf)], dim=1)
        tok = torch.cat([self.top_tok, tok], dim=1)
        ex = torch.cat([self.top_ex, ex], dim=1)
        span = torch.cat([self.top_span, span], dim=1)
        val, order = torch.sort(val, dim=1, descending=True)
        tok, ex = tok.gather(1, order), ex.gather(1, order)
        span = span.gather(1, order.unsqueeze(2).expand(-1, -1, 2))
        key = tok * (1 << 32) + ex
        m = key.shape[1]
        # A pair that already appeared at a higher value in the same row is a duplicate.
        same = key.unsqueeze(2) == key.unsqueeze(1)  # [d_sae, m, m]
        earlier = torch.ones(m, m, dtype=torch.bool).tril(diagonal=-1)
        dup = (same & earlier).any(2) & torch.isfinite(val)
        val = val.masked_fill(dup, -torch.inf)
        val, order = torch.topk(val, self.top_n, dim=1)
        self.top_val = val
        self.top_tok, self.top_ex = tok.gather(1, order), ex.gather(1, order)
        self.top_span = span.gather(1, order.unsqueeze(2).expand(-1, -1, 2))

    def _compact_if_large(self) -> None:
        """Forget strings no longer referenced by the buffer, so memory stays bounded."""
        limit = 2 * self.d_sae * self.top_n + self.compact_slack
        if len(self._examples) > limit:
            self.top_ex = self._examples.compact(self.top_ex, torch.isfinite(self.top_val))
        if len(self._tokens) > limit:
            self.top_tok = self._tokens.compact(self.top_tok, torch.isfinite(self.top_val))

    def to_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(stats [feature_id, n_fire, sum_act, max_act], top [feature_id, rank, example_id,
        token, value, char_start, char_end]) for the features that fired; spans -1 = unknown."""
        fired = torch.nonzero((self.n_fire > 0) | (self.max_act > 0)).squeeze(1)
        stats = pd.DataFrame(
            {
                "feature_id": fired.numpy().astype(np.int32),
                "n_fire": self.n_fire[fired].numpy().astype(np.int64),
                "sum_act": self.sum_act[fired].numpy(),
                "max_act": self.max_act[fired].numpy().astype(np.float32),
            }
        )
        rows, ranks = torch.nonzero(torch.isfinite(self.top_val), as_tuple=True)
        top = pd.DataFrame(
            {
                "feature_id": rows.numpy().astype(np.int32),
                "rank": ranks.numpy().astype(np.int32),
                "example_id": self._examples.lookup(self.top_ex[rows, ranks].tolist()),
                "token": self._tokens.lookup(self.top_tok[rows, ranks].tolist()),
                "value": self.top_val[rows, ranks].numpy().astype(np.float32),
                "char_start": self.top_span[rows, ranks, 0].numpy().astype(np.int32),
                "char_end": self.top_span[rows, ranks, 1].numpy().astype(np.int32),
            }
        )
        return stats, top

    @classmethod
    def from_frames(
        cls, stats: pd.DataFrame, top: pd.DataFrame, *, d_sae: int, top_n: int = 10
    ) -> TokenStats:
        """Restore what ``to_frames`` wrote, so a resumed run keeps accumulating. Frames
        without char_start / char_end (older runs) restore as unknown spans (-1)."""
        out = cls(d_sae, top_n=top_n)
        fid = torch.tensor(stats["feature_id"].to_numpy(dtype=np.int64))
        out.n_fire[fid] = torch.tensor(stats["n_fire"].to_numpy(dtype=np.int64))
        out.sum_act[fid] = torch.tensor(stats["sum_act"].to_numpy(dtype=np.float64))
        out.max_act[fid] = torch.tensor(stats["max_act"].to_numpy(dtype=np.float32))
        kept = top["rank"].to_numpy() < top_n
        rows = torch.tensor(top["feature_id"].to_numpy(dtype=np.int64)[kept])
        ranks = torch.tensor(top["rank"].to_numpy(dtype=np.int64)[kept])
        values = top["value"].to_numpy(dtype=np.float32)[kept]
        out.top_val[rows, ranks] = torch.tensor(values)
        tokens = [t for t, k in zip(top["token"].tolist(), kept, strict=True) if k]
        examples = [e for e, k in zip(top["example_id"].tolist(), kept, strict=True) if k]
        out.top_tok[rows, ranks] = torch.tensor(out._tokens.indices(tokens), dtype=torch.long)
        out.top_ex[rows, ranks] = torch.tensor(out._examples.indices(examples), dtype=torch.long)
        for col, j in (("char_start", 0), ("char_end", 1)):
            if col in top.columns:
                values = top[col].fillna(-1).to_numpy(dtype=np.int64)[kept]
                out.top_span[rows, ranks, j] = torch.from_numpy(values)
        # Re-sort each row, in case the frames came back in another order.
        out.top_val, order = torch.sort(out.top_val, dim=1, descending=True)
        out.top_tok, out.top_ex = out.top_tok.gather(1, order), out.top_ex.gather(1, order)
        out.top_span = out.top_span.gather(1, order.unsqueeze(2).expand(-1, -1, 2))
        return out


class _Interner:
    """Strings <-> dense integer ids, so the top buffers are plain integer tensors."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._names: list[str] = []

    def __len__(self) -> int:
        return len(self._names)

    def indices(self, names: Sequence[str]) -> list[int]:
        ids, table = self._ids, self._names
        out = []
        for name in names:
            i = ids.get(name)
            if i is None:
                i = ids[name] = len(table)
                table.append(name)
            out.append(i)
        return out

    def lookup(self, indices: Sequence[int]) -> list[str]:
        return [self._names[i] for i in indices]

    def compact(self, refs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Keep only the strings referenced where ``valid``; return ``refs`` renumbered."""
        used = torch.unique(refs[valid])
        remap = torch.zeros(len(self._names), dtype=torch.long)
        remap[used] = torch.arange(len(used))
        self._names = [self._names[i] for i in used.tolist()]
        self._ids = {name: i for i, name in enumerate(self._names)}
        return torch.where(valid, remap[refs], torch.zeros_like(refs))


def background(items: Iterable[T], *, depth: int = 1) -> Iterator[T]:
    """Iterate ``items`` on a daemon thread, up to ``depth`` items ahead of the consumer.

    Exceptions raised while producing are re-raised in the consumer; stopping early (break,
    an error, generator close) stops the producer at its next item.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(("item", item)):
                    return
            offer(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer(("error", exc))

    thread = threading.Thread(target=produce, name="studio-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


def featurize_batches(
    lm: LoadedModel,
    sae: Any,
    texts: Sequence[str],
    example_ids: Sequence[str],
    cfg: FeatureConfig,
    *,
    stats: TokenStats,
    progress: Callable[[int], None] | None = None,
    chunk_size: int | None = None,
    responses: Sequence[str | None] | None = None,
) -> Iterator[pa.Table]:
    """Yield feature tables (``FEATURE_SCHEMA``, or ``DENSE_FEATURE_SCHEMA`` with
    ``cfg.dense``) in the input order, one per chunk of examples.

    Within a chunk, examples are run in batches of similar length (less padding) and written
    back by index. Only blocks up to ``cfg.layer`` run. Memory holds about two chunks at a time
    (default ``16 * batch_size`` examples): the next one is tokenized on a background thread
    while this one runs. ``responses`` (one per text, for ``cfg.pool_over`` response/both) are
    read after their texts. ``progress(n)`` gets the number of examples finished after each
    batch, like ``tqdm.update``.
    """
    if len(texts) != len(example_ids):
        raise StudioError(f"{len(texts)} texts but {len(example_ids)} example ids")
    if responses is not None and len(responses) != len(texts):
        raise StudioError(f"{len(texts)} texts but {len(responses)} responses")
    if cfg.pool_over != "prompt":
        missing = [i for i, r in enumerate(responses or [None] * len(texts)) if r is None]
        if missing:
            raise StudioError(
                f"pooling over the {cfg.pool_over} needs a response for every example; "
                f"example '{example_ids[missing[0]]}' has none ({len(missing)} without)"
            )
    if stats.d_sae != int(sae.cfg.d_sae):
        raise StudioError(f"TokenStats has d_sae {stats.d_sae}, the SAE has {sae.cfg.d_sae}")
    check_sae_matches(sae, lm, layer=chosen_layer(cfg))
    chunk = chunk_size or 16 * cfg.batch_size
    max_length = cfg.max_length or default_max_length(lm)

    def encoded() -> Iterator[tuple[list[str], list[EncodedText]]]:
        # The only user of the tokenizer while featurizing (fast tokenizers are not reentrant).
        for start in range(0, len(texts), chunk):
            stop = start + chunk
            yield (
                [str(e) for e in example_ids[start:stop]],
                encode_texts(
                    lm,
                    list(texts[start:stop]),
                    max_length=max_length,
                    responses=None if responses is None else list(responses[start:stop]),
                    pool_over=cfg.pool_over,
                    chat_template=cfg.chat_template,
                ),
            )

    for chunk_ids, chunk_enc in background(encoded(), depth=1):
        yield _featurize_chunk(lm, sae, chunk_enc, chunk_ids, cfg, stats, progress)


def _featurize_chunk(
    lm: LoadedModel,
    sae: Any,
    encoded: list[EncodedText],
    example_ids: list[str],
    cfg: FeatureConfig,
    stats: TokenStats,
    progress: Callable[[int], None] | None,
) -> pa.Table:
    """Featurize one tokenized chunk, length-bucketed, and return its rows in the chunk's order."""
    schema = DENSE_FEATURE_SCHEMA if cfg.dense else FEATURE_SCHEMA
    order: list[int] = []
    parts: list[pa.Table] = []
    lengths = [len(e.ids) for e in encoded]
    for idx in iter_length_batches(lengths, batch_size=cfg.batch_size):
        members = [encoded[i] for i in idx]
        batch = collate(lm, members)
        with torch.inference_mode():
            acts = layer_activations(lm, batch, layer=chosen_layer(cfg))
            keep = batch["keep"].to(acts.device)
            kept = acts[keep]
            codes = encode_tokens(sae, kept)
            segment = torch.nonzero(keep, as_tuple=True)[0].to(codes.device)
            dense = None
            if cfg.dense:
                # Mean in float32 (bf16 sums lose digits). The copy to the host is only queued
                # (no sync of its own): the blocking copies below on the same stream
                # (segment.tolist(), topk_sparse) complete it before it is read.
                seg = segment.to(kept.device)
                mean = pool_segments(kept.float(), seg, len(idx), "mean")
                dense = mean.to("cpu", non_blocking=True)
            pooled = pool_segments(codes, segment, len(idx), cfg.pooling)
            tokens = [t for e in members for t, k in zip(e.tokens, e.keep, strict=True) if k]
            token_examples = [example_ids[idx[s]] for s in segment.tolist()]
            stats.update(codes, tokens, token_examples, pooled, spans=batch["spans"][batch["keep"]])
            sparse = topk_sparse(pooled, cfg.top_k)
        columns = {
            "example_id": pa.array([example_ids[i] for i in idx], pa.string()),
            "n_tokens": pa.array(batch["keep"].sum(1).numpy(), pa.int32()),
            "truncated": pa.array(batch["truncated"].numpy(), pa.bool_()),
            "feature_ids": sparse["feature_ids"],
            "values": sparse["values"],
        }
        if dense is not None:
            columns["dense"] = rows_to_list_array(dense.numpy())
        parts.append(pa.table(columns, schema=schema))
        order.extend(idx)
        if progress is not None:
            progress(len(idx))
    if not parts:
        return schema.empty_table()
    table = pa.concat_tables(parts)
    # Position p of the concatenated table holds example order[p]; invert that permutation.
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    return table.take(pa.array(inverse))


def rows_to_list_array(matrix: np.ndarray) -> pa.ListArray:
    """A [n, d] matrix -> an Arrow list<float32> array of n rows of d values, without a
    Python loop. Example: [[1, 2], [3, 4]] -> [[1.0, 2.0], [3.0, 4.0]]."""
    n, d = matrix.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * np.int32(d), pa.int32())
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1), pa.float32())
    return pa.ListArray.from_arrays(offsets, values)
