"""core.features: pooling, sparse top-k, running token statistics, featurizing texts."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from core.errors import StudioError
from core.features import (
    DENSE_FEATURE_SCHEMA,
    FEATURE_SCHEMA,
    FeatureConfig,
    TokenStats,
    encode_tokens,
    featurize_batches,
    pool,
    pool_segments,
    rows_to_list_array,
    topk_sparse,
    truncation_warning,
)
from core.models import full_forward_activations, tokenize_batch
from core.sparse_features import dense_from_sparse
from core.store import RunRecord, Store
from tests.conftest import run_cli

SENTENCES = [
    "What is the sum of the first ten odd numbers?",
    "Solve for x: 3x + 5 = 20.",
    "Write a short story about a lighthouse keeper.",
    "ok",
    "A rectangle has a perimeter of 30 and a width of 5; find its area, and explain each step.",
]


def random_codes(t: int, d_sae: int, *, seed: int, density: float = 0.2) -> torch.Tensor:
    """Non-negative sparse codes, like an SAE's, with distinct values (no ties)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(t, d_sae, generator=gen) * (torch.rand(t, d_sae, generator=gen) < density)


def brute_force_top(
    codes: torch.Tensor, tokens: list[str], examples: list[str], top_n: int
) -> pd.DataFrame:
    """Per feature, the top_n (token, example) pairs by their largest activation."""
    t, d_sae = codes.shape
    long = pd.DataFrame(
        {
            "feature_id": np.tile(np.arange(d_sae), t),
            "token": np.repeat(tokens, d_sae),
            "example_id": np.repeat(examples, d_sae),
            "value": codes.reshape(-1).numpy(),
        }
    )
    long = long.loc[long["value"].to_numpy() > 0]
    best = pd.DataFrame(
        long.groupby(["feature_id", "token", "example_id"], as_index=False)["value"].max()
    )
    best = best.sort_values(by=["feature_id", "value"], ascending=[True, False])
    best["rank"] = best.groupby("feature_id").cumcount()
    return pd.DataFrame(best.loc[best["rank"].to_numpy() < top_n]).reset_index(drop=True)


def sorted_top(top: pd.DataFrame) -> pd.DataFrame:
    cols = ["feature_id", "rank", "example_id", "token", "value"]
    out = pd.DataFrame(top[cols]).sort_values(by=["feature_id", "rank"]).reset_index(drop=True)
    return out.astype({"feature_id": np.int64, "rank": np.int64, "value": np.float32})


def test_feature_config_validates_and_round_trips() -> None:
    cfg = FeatureConfig(layer=2, pooling="max", top_k=16)
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(StudioError, match="pooling must be one of"):
        FeatureConfig(layer=2, pooling="median")  # type: ignore[arg-type]
    with pytest.raises(StudioError, match="pool_over must be one of"):
        FeatureConfig(layer=2, pool_over="answer")  # type: ignore[arg-type]
    with pytest.raises(StudioError, match="layer must be >= -1"):
        FeatureConfig(layer=-2)
    full = FeatureConfig(
        layer=-1, pooling="count", pool_over="both", chat_template=True, dense=True
    )
    assert FeatureConfig.from_dict(full.to_dict()) == full
    assert full.to_dict()["dense"] is True and cfg.to_dict()["dense"] is False
    with pytest.raises(StudioError, match="top_k must be at least 1"):
        FeatureConfig(layer=2, top_k=0)


def test_pool_mean_and_max_against_direct_computation() -> None:
    codes = random_codes(7, 12, seed=0)
    torch.testing.assert_close(pool(codes, "mean"), codes.sum(0) / 7)
    torch.testing.assert_close(pool(codes, "max"), torch.stack(list(codes)).max(0).values)
    assert torch.equal(pool(codes[:0], "mean"), torch.zeros(12))

    segment = torch.tensor([0, 0, 2, 2, 2, 3, 3])  # example 1 has no kept tokens
    for how in ("mean", "max"):
        batched = pool_segments(codes, segment, 4, how)  # type: ignore[arg-type]
        for i in range(4):
            torch.testing.assert_close(batched[i], pool(codes[segment == i], how))  # type: ignore[arg-type]
    assert torch.equal(pool_segments(codes, segment, 4, "mean")[1], torch.zeros(12))


def test_pool_sum_and_count() -> None:
    codes = random_codes(7, 12, seed=3)
    torch.testing.assert_close(pool(codes, "sum"), codes.sum(0))
    torch.testing.assert_close(pool(codes, "count"), (codes > 0).sum(0).float())
    segment = torch.tensor([0, 0, 2, 2, 2, 3, 3])
    for how in ("sum", "count"):
        batched = pool_segments(codes, segment, 4, how)  # type: ignore[arg-type]
        for i in range(4):
            torch.testing.assert_close(batched[i], pool(codes[segment == i], how))  # type: ignore[arg-type]
    counts = pool_segments(codes, segment, 4, "count")
    assert counts.max() <= 3 and bool((counts == counts.round()).all())


def test_topk_sparse_equals_dense_top_k() -> None:
    pooled = random_codes(20, 50, seed=1, density=0.1)
    pooled[3] = 0  # no feature fires
    table = topk_sparse(pooled, 8)
    assert table.schema.field("feature_ids").type == pa.list_(pa.int32())
    assert table.schema.field("values").type == pa.list_(pa.float32())
    for row, ids, values in zip(
        pooled.numpy(), table["feature_ids"].to_pylist(), table["values"].to_pylist(), strict=True
    ):
        order = np.argsort(-row, kind="stable")[:8]
        order = order[row[order] > 0]
        assert ids == order.tolist()
        np.testing.assert_allclose(values, row[order])
    assert table["feature_ids"][3].as_py() == []


def test_dense_from_sparse_from_arrow_and_lists() -> None:
    pooled = random_codes(10, 30, seed=2)
    table = topk_sparse(pooled, 5)
    want = np.where(
        pooled.numpy() >= np.sort(pooled.numpy(), axis=1)[:, -5:][:, :1], pooled.numpy(), 0
    )
    from_arrow = dense_from_sparse(table["feature_ids"], table["values"], 30)
    np.testing.assert_allclose(from_arrow.toarray(), want, rtol=1e-6)
    sliced = table.slice(4, 3)
    np.testing.assert_allclose(
        dense_from_sparse(sliced["feature_ids"], sliced["values"], 30).toarray(), want[4:7]
    )
    lists = dense_from_sparse(table["feature_ids"].to_pylist(), table["values"].to_pylist(), 30)
    np.testing.assert_array_equal(lists.toarray(), from_arrow.toarray())
    with pytest.raises(StudioError, match=r"feature ids must lie in 0\.\.9"):
        dense_from_sparse([[12]], [[1.0]], 10)


def make_batch(t: int, d_sae: int, *, seed: int, n_examples: int, vocab: int) -> dict[str, Any]:
    rng = random.Random(seed)
    codes = random_codes(t, d_sae, seed=seed)
    examples = sorted(f"ex{seed}-{rng.randrange(n_examples)}" for _ in range(t))
    tokens = [f"tok{rng.randrange(vocab)}" for _ in range(t)]
    ids = sorted(set(examples))
    segment = torch.tensor([ids.index(e) for e in examples])
    pooled = pool_segments(codes, segment, len(ids), "mean")
    return {"codes": codes, "tokens": tokens, "examples": examples, "pooled": pooled}


def test_token_stats_match_brute_force_and_one_big_update() -> None:
    d_sae, top_n = 16, 3
    # Few tokens and examples, so (token, example) pairs repeat and must be deduplicated.
    a = make_batch(40, d_sae, seed=1, n_examples=4, vocab=3)
    b = make_batch(30, d_sae, seed=2, n_examples=4, vocab=3)
    two = TokenStats(d_sae, top_n=top_n)
    for part in (a, b):
        two.update(part["codes"], part["tokens"], part["examples"], part["pooled"])

    codes = torch.cat([a["codes"], b["codes"]])
    tokens, examples = a["tokens"] + b["tokens"], a["examples"] + b["examples"]
    pooled = torch.cat([a["pooled"], b["pooled"]])
    stats, top = two.to_frames()

    fid = torch.tensor(stats["feature_id"].to_numpy(dtype=np.int64))
    assert stats["n_fire"].tolist() == (pooled > 0).sum(0)[fid].tolist()
    np.testing.assert_allclose(stats["sum_act"], pooled.double().sum(0)[fid])
    np.testing.assert_allclose(stats["max_act"], codes.amax(0)[fid])
    want = sorted_top(brute_force_top(codes, tokens, examples, top_n))
    pd.testing.assert_frame_equal(sorted_top(top), want)

    one = TokenStats(d_sae, top_n=top_n)
    one.update(codes, tokens, examples, pooled)
    stats_one, top_one = one.to_frames()
    pd.testing.assert_frame_equal(stats, stats_one)
    pd.testing.assert_frame_equal(sorted_top(top), sorted_top(top_one))


def test_token_stats_round_trip_then_continue() -> None:
    d_sae = 24
    parts = [make_batch(50, d_sae, seed=s, n_examples=6, vocab=20) for s in (1, 2, 3)]
    straight = TokenStats(d_sae, top_n=4)
    for p in parts:
        straight.update(p["codes"], p["tokens"], p["examples"], p["pooled"])

    first = TokenStats(d_sae, top_n=4)
    first.update(parts[0]["codes"], parts[0]["tokens"], parts[0]["examples"], parts[0]["pooled"])
    stats, top = first.to_frames()
    resumed = TokenStats.from_frames(
        stats, top.sample(frac=1.0, random_state=0), d_sae=d_sae, top_n=4
    )
    pd.testing.assert_frame_equal(resumed.to_frames()[0], stats)
    for p in parts[1:]:
        resumed.update(p["codes"], p["tokens"], p["examples"], p["pooled"])

    for got, want in zip(resumed.to_frames(), straight.to_frames(), strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_token_stats_forgets_unreferenced_strings() -> None:
    d_sae, top_n = 8, 2
    stats = TokenStats(d_sae, top_n=top_n)
    stats.compact_slack = 5
    all_parts = [make_batch(12, d_sae, seed=s, n_examples=12, vocab=50) for s in range(30)]
    for p in all_parts:
        stats.update(p["codes"], p["tokens"], p["examples"], p["pooled"])
    assert len(stats._examples) <= 2 * d_sae * top_n + 5 + 12
    codes = torch.cat([p["codes"] for p in all_parts])
    tokens = [t for p in all_parts for t in p["tokens"]]
    examples = [e for p in all_parts for e in p["examples"]]
    want = sorted_top(brute_force_top(codes, tokens, examples, top_n))
    pd.testing.assert_frame_equal(sorted_top(stats.to_frames()[1]), want)


def test_featurize_keeps_input_order_despite_bucketing(tiny_lm: Any, tiny_sae: Any) -> None:
    texts = [SENTENCES[i % 5] + " again" * (i % 4) for i in range(11)]
    ids = [f"ex-{i}" for i in range(11)]
    cfg = FeatureConfig(layer=1, pooling="mean", top_k=256, batch_size=3)
    done: list[int] = []
    stats = TokenStats(256)
    tables = list(
        featurize_batches(
            tiny_lm, tiny_sae, texts, ids, cfg, stats=stats, progress=done.append, chunk_size=5
        )
    )
    assert [t.num_rows for t in tables] == [5, 5, 1]
    table = pa.concat_tables(tables)
    assert table.schema == FEATURE_SCHEMA
    assert table["example_id"].to_pylist() == ids
    assert sum(done) == 11

    # Each row equals that text featurized alone (no padding, no reordering).
    alone_cfg = FeatureConfig(layer=1, pooling="mean", top_k=256, batch_size=1)
    for i in (0, 3, 7, 10):
        alone = pa.concat_tables(
            featurize_batches(
                tiny_lm, tiny_sae, [texts[i]], [ids[i]], alone_cfg, stats=TokenStats(256)
            )
        )
        got = dense_from_sparse(table["feature_ids"][i : i + 1], table["values"][i : i + 1], 256)
        want = dense_from_sparse(alone["feature_ids"], alone["values"], 256)
        np.testing.assert_allclose(got.toarray(), want.toarray(), rtol=1e-4, atol=1e-5)
        assert table["n_tokens"][i].as_py() == alone["n_tokens"][0].as_py()


def test_featurize_pools_only_non_special_tokens(tiny_gpt2: Any, tiny_sae: Any) -> None:
    text = SENTENCES[1]
    for how in ("mean", "max"):
        cfg = FeatureConfig(layer=2, pooling=how, top_k=256)  # type: ignore[arg-type]
        table = pa.concat_tables(
            featurize_batches(tiny_gpt2, tiny_sae, [text], ["a"], cfg, stats=TokenStats(256))
        )
        batch = tokenize_batch(tiny_gpt2, [text], max_length=256)
        acts = full_forward_activations(tiny_gpt2, batch, layer=2)[0]
        ids = batch["input_ids"][0]
        tok = tiny_gpt2.tokenizer
        real = (ids != tok.cls_token_id) & (ids != tok.sep_token_id)
        want = pool(encode_tokens(tiny_sae, acts[real]), how)  # type: ignore[arg-type]
        got = dense_from_sparse(table["feature_ids"], table["values"], 256).toarray()[0]
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6)
        assert table["n_tokens"][0].as_py() == int(real.sum()) == len(ids) - 2


def test_rows_to_list_array() -> None:
    matrix = np.arange(6, dtype=np.float64).reshape(3, 2)
    arr = rows_to_list_array(matrix)
    assert arr.type == pa.list_(pa.float32())
    assert arr.to_pylist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert rows_to_list_array(np.zeros((0, 4))).to_pylist() == []


@pytest.mark.parametrize("layer", [-1, 1])
def test_featurize_dense_is_the_mean_hidden_state_of_kept_tokens(
    tiny_lm: Any, tiny_sae: Any, layer: int
) -> None:
    """The dense baseline equals transformers' hidden_states[L + 1] averaged over the pooled
    (non-special) tokens of each text run alone; the sparse columns do not change."""
    texts = [SENTENCES[i % 5] + " again" * (i % 3) for i in range(8)]
    ids = [f"ex-{i}" for i in range(8)]
    cfg = FeatureConfig(layer=layer, top_k=256, batch_size=3, dense=True)
    table = pa.concat_tables(
        featurize_batches(tiny_lm, tiny_sae, texts, ids, cfg, stats=TokenStats(256), chunk_size=5)
    )
    assert table.schema == DENSE_FEATURE_SCHEMA
    assert table["example_id"].to_pylist() == ids
    dense = np.asarray(table["dense"].to_pylist(), dtype=np.float32)
    assert dense.shape == (8, tiny_lm.d_model)

    for i, text in enumerate(texts):
        batch = tokenize_batch(tiny_lm, [text], max_length=256)
        with torch.inference_mode():
            out = tiny_lm.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
            )
        keep = batch["keep"][0]
        want = out.hidden_states[layer + 1][0][keep].mean(0).numpy()
        np.testing.assert_allclose(dense[i], want, rtol=1e-4, atol=1e-5)
        assert table["n_tokens"][i].as_py() == int(keep.sum())

    plain = pa.concat_tables(
        featurize_batches(
            tiny_lm, tiny_sae, texts, ids, replace(cfg, dense=False), stats=TokenStats(256)
        )
    )
    assert plain.schema == FEATURE_SCHEMA
    for col in ("feature_ids", "n_tokens"):
        assert table[col].to_pylist() == plain[col].to_pylist()
    np.testing.assert_allclose(
        dense_from_sparse(table["feature_ids"], table["values"], 256).toarray(),
        dense_from_sparse(plain["feature_ids"], plain["values"], 256).toarray(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_featurize_flags_truncation_and_feeds_stats(tiny_bert: Any, tiny_sae: Any) -> None:
    cfg = FeatureConfig(layer=0, top_k=4, max_length=8)
    stats = TokenStats(256, top_n=3)
    table = pa.concat_tables(
        featurize_batches(tiny_bert, tiny_sae, SENTENCES, list("abcde"), cfg, stats=stats)
    )
    assert table["truncated"].to_pylist() == [True, True, True, False, True]
    assert table["n_tokens"].to_pylist() == [6, 6, 6, 1, 6]
    assert all(len(row) <= 4 for row in table["feature_ids"].to_pylist())
    for values in table["values"].to_pylist():
        assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
    fstats, top = stats.to_frames()
    assert len(fstats) > 0
    assert set(top["example_id"].tolist()) <= set("abcde")
    assert not set(top["token"].tolist()) & {"[CLS]", "[SEP]", "[PAD]"}
    assert int(fstats["n_fire"].to_numpy().max()) <= 5


def test_featurize_rejects_mismatches(
    tiny_bert: Any, tiny_sae: Any, make_sae: Callable[..., Any]
) -> None:
    cfg = FeatureConfig(layer=1)
    with pytest.raises(StudioError, match="SAE d_in 32 does not match"):
        list(
            featurize_batches(
                tiny_bert, make_sae(d_in=32), ["x"], ["a"], cfg, stats=TokenStats(256)
            )
        )
    with pytest.raises(StudioError, match="layer 5 is out of range"):
        list(
            featurize_batches(
                tiny_bert, tiny_sae, ["x"], ["a"], FeatureConfig(layer=5), stats=TokenStats(256)
            )
        )
    with pytest.raises(StudioError, match="2 texts but 1 example ids"):
        list(featurize_batches(tiny_bert, tiny_sae, ["x", "y"], ["a"], cfg, stats=TokenStats(256)))


@pytest.mark.slow
def test_featurize_real_minilm(minilm: Any, make_sae: Callable[..., Any]) -> None:
    sae = make_sae(d_in=384, d_sae=512, k=16)
    stats = TokenStats(512)
    cfg = FeatureConfig(layer=3, pooling="max", top_k=32, batch_size=2)
    table = pa.concat_tables(
        featurize_batches(minilm, sae, SENTENCES, [f"s{i}" for i in range(5)], cfg, stats=stats)
    )
    assert table["example_id"].to_pylist() == ["s0", "s1", "s2", "s3", "s4"]
    assert all(n > 0 for n in table["n_tokens"].to_pylist())
    assert all(0 < len(r) <= 32 for r in table["feature_ids"].to_pylist())
    fstats, top = stats.to_frames()
    assert bool((fstats["max_act"].to_numpy() > 0).all())
    assert all(len(token) > 0 for token in top["token"].tolist())


def test_token_stats_keep_char_spans_and_restore_old_frames() -> None:
    d_sae = 16
    a = make_batch(40, d_sae, seed=1, n_examples=4, vocab=30)
    spans = torch.stack([torch.arange(40), torch.arange(40) + 3], dim=1)
    st = TokenStats(d_sae, top_n=3)
    st.update(a["codes"], a["tokens"], a["examples"], a["pooled"], spans=spans)
    _, top = st.to_frames()
    assert {"char_start", "char_end"} <= set(top.columns)
    assert bool((top["char_end"].to_numpy() - top["char_start"].to_numpy() == 3).all())
    # Each occurrence keeps the span of the token it came from.
    for row in top.itertuples():
        t = int(row.char_start)
        assert a["tokens"][t] == row.token and a["examples"][t] == row.example_id
        assert float(a["codes"][t, int(row.feature_id)]) == pytest.approx(float(row.value))
    stats, _ = st.to_frames()
    again = TokenStats.from_frames(stats, top, d_sae=d_sae, top_n=3)
    pd.testing.assert_frame_equal(again.to_frames()[1], top)
    old = TokenStats.from_frames(
        stats, top.drop(columns=["char_start", "char_end"]), d_sae=d_sae, top_n=3
    )
    assert (old.to_frames()[1][["char_start", "char_end"]] == -1).all().all()
    plain = TokenStats(d_sae, top_n=3)
    plain.update(a["codes"], a["tokens"], a["examples"], a["pooled"])
    assert bool((plain.to_frames()[1]["char_end"].to_numpy() == -1).all())


def test_featurize_records_token_spans_in_the_text(tiny_bert: Any, tiny_sae: Any) -> None:
    ids = [f"s{i}" for i in range(len(SENTENCES))]
    stats = TokenStats(256, top_n=5)
    list(
        featurize_batches(tiny_bert, tiny_sae, SENTENCES, ids, FeatureConfig(layer=1), stats=stats)
    )
    _, top = stats.to_frames()
    text = dict(zip(ids, SENTENCES, strict=True))
    assert len(top) > 0 and bool((top["char_start"].to_numpy() >= 0).all())
    for row in top.itertuples():
        piece = text[str(row.example_id)][int(row.char_start) : int(row.char_end)]
        assert piece.lower() == str(row.token).removeprefix("##")


@pytest.mark.parametrize("how", ["response", "both"])
def test_featurize_pools_over_responses(
    tiny_llama: Any, make_sae: Callable[..., Any], how: str
) -> None:
    sae = make_sae()
    texts, responses = ["What is two plus two?", "Name a colour."], ["Four.", "Blue, I think."]
    cfg = FeatureConfig(layer=1, pooling="sum", top_k=256, pool_over=how, chat_template=True)  # type: ignore[arg-type]
    stats = TokenStats(256)
    table = pa.concat_tables(
        featurize_batches(tiny_llama, sae, texts, ["a", "b"], cfg, stats=stats, responses=responses)
    )
    want = {"response": [2, 5], "both": [6 + 2, 4 + 5]}[how]  # "four ." / "blue , i think ."
    assert table["n_tokens"].to_pylist() == want
    _, top = stats.to_frames()
    if how == "response":
        assert bool(
            (top["char_start"].to_numpy() == -1).all()
        )  # response tokens lie outside the example text
    else:
        assert bool((top["char_start"].to_numpy() >= 0).any())
    with pytest.raises(StudioError, match="example 'b' has none"):
        list(
            featurize_batches(
                tiny_llama, sae, texts, ["a", "b"], cfg, stats=stats, responses=["Four.", None]
            )
        )


def test_background_prefetch_keeps_order_and_raises() -> None:
    from core.features import background

    assert list(background(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"):
        for x in background(failing()):
            got.append(x)
    assert got == [1]
    early = background(iter(range(10**6)))
    assert next(early) == 0
    early.close()  # stops the producer thread


# --- options, the default max length and what a cut says (issue 12) ---------------------------


def test_feature_config_errors_name_the_flag() -> None:
    with pytest.raises(StudioError, match=r"^top_k must be at least 1, got 0 \(--top-k\)$"):
        FeatureConfig(layer=1, top_k=0)
    with pytest.raises(StudioError, match=r"batch_size must be at least 1, got -2 \(--batch-size"):
        FeatureConfig(layer=1, batch_size=-2)
    with pytest.raises(StudioError, match=r"max_length must be at least 2, got 1 \(--max-length"):
        FeatureConfig(layer=1, max_length=1)
    assert FeatureConfig(layer=1).max_length is None  # the model's context, decided on load


def test_truncation_warning_names_count_share_and_flag() -> None:
    assert truncation_warning(0, 100, max_length=256, context=512) is None
    assert truncation_warning(23, 100, max_length=256, context=512) == (
        "23 examples were longer than 256 tokens (23.0% of 100) and were truncated: pass "
        "--max-length N (up to the model's context, 512) to keep more"
    )
    at_context = truncation_warning(3, 7, max_length=2048, context=512, chat_template=True)
    assert at_context == (
        "3 examples were longer than 512 tokens (the chat template's own tokens count too) "
        "(42.9% of 7) and were truncated: that is the model's context, so --max-length cannot "
        "keep more"
    )
    assert "pass --max-length N to keep more" in str(
        truncation_warning(1, 2, max_length=64, context=None)
    )


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--top-k", "0"], "top_k must be at least 1, got 0 (--top-k)"),
        (["--batch-size", "-1"], "batch_size must be at least 1, got -1 (--batch-size)"),
        (["--chunk-size", "0"], "--chunk-size must be at least 1, got 0"),
        (["--max-length", "1"], "max_length must be at least 2, got 1 (--max-length)"),
        (["--max-length", "-4"], "max_length must be at least 2, got -4 (--max-length)"),
        (["--sae-k", "0"], "--sae-k must be at least 1, got 0"),
        (["--layer", "-5"], "layer must be >= -1 (-1 = the embeddings), got -5 (--layer)"),
    ],
)
def test_featurize_cli_bad_number_is_one_line_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], words: str
) -> None:
    """Neither the store, the model nor the SAE exists: the flag is named before any of them
    is opened."""
    db = tmp_path / "none.duckdb"
    argv = ["featurize", "--dataset", "d", "--model", "/nonexistent/model"]
    argv += ["--sae-path", str(tmp_path / "no-sae"), *flags, "--db", str(db)]
    assert run_cli(*argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {words}"]
    assert not db.exists()


LONG = " ".join(["seven"] * 200)  # over 128 tokens: longer than the tiny models' context


def _ingest(tmp_path: Path, prompts: list[str]) -> str:
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"e{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts))
    )
    db = str(tmp_path / "s.duckdb")
    assert run_cli("ingest", str(data), "--dataset", "d", "--kind", "prompts", "--db", db) == 0
    return db


def _featurize(db: str, model: Path, sae: Path, *flags: str) -> int:
    argv = ["featurize", "--dataset", "d", "--model", str(model), "--layer", "1"]
    return run_cli(*argv, "--sae-path", str(sae), *flags, "--db", db)


def test_featurize_reads_up_to_the_models_context_by_default(
    tmp_path: Path, tiny_bert_dir: Path, tiny_sae_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts of 60 and 100 words fit the tiny BERT's 128 tokens and are kept whole (before:
    256 was recorded and would cut any longer model's prompts); a cut names --max-length."""
    db = _ingest(tmp_path, [" ".join(["five"] * 60), " ".join(["nine"] * 100), LONG, "short"])
    assert _featurize(db, tiny_bert_dir, tiny_sae_dir) == 0
    captured = capsys.readouterr()
    run = Store(db).list_runs(step="featurize").iloc[0]
    assert run["config"]["max_length"] == 128 and run["summary"]["n_truncated"] == 1
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("warning: ")]
    assert warnings == [
        "warning: 1 examples were longer than 128 tokens (25.0% of 4) and were truncated: "
        "that is the model's context, so --max-length cannot keep more"
    ]
    assert "1 truncated (longer than 128 tokens" in captured.out

    assert _featurize(db, tiny_bert_dir, tiny_sae_dir, "--max-length", "64", "--no-resume") == 0
    err = capsys.readouterr().err
    assert (
        "2 examples were longer than 64 tokens (50.0% of 4) and were truncated: pass "
        "--max-length N (up to the model's context, 128) to keep more" in err
    )


def test_an_interrupted_run_of_the_old_default_resumes_with_its_max_length(
    tmp_path: Path, tiny_bert_dir: Path, tiny_sae_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run interrupted before the default changed recorded max_length 256: the same command
    with --max-length 256 continues it; without, the user is told how to continue it."""
    from core.steps.base import versions
    from core.steps.featurize import FeaturizeConfig, feature_run_config

    db = _ingest(tmp_path, ["alpha beta", "gamma delta", LONG])
    store = Store(db)
    cfg = FeaturizeConfig(
        dataset="d", model=str(tiny_bert_dir), layer=1, sae_path=str(tiny_sae_dir), max_length=256
    )
    old = feature_run_config(cfg, dtype="float32")
    old_run, _ = store.begin_run(RunRecord("featurize", "d", old, versions()))

    assert _featurize(db, tiny_bert_dir, tiny_sae_dir) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: interrupted feature run {old_run} of 'd' used --max-length 256; this run "
        "uses 128 and starts afresh (pass --max-length 256 to continue that one instead)" in err
    )
    assert len(store.list_runs(step="featurize")) == 2

    assert _featurize(db, tiny_bert_dir, tiny_sae_dir, "--max-length", "256") == 0
    runs = store.list_runs(step="featurize")
    assert len(runs) == 2  # no third run: the old one was continued
    resumed = store.run(old_run)
    assert resumed["status"] == "done" and resumed["summary"]["resumed"] is True
    assert resumed["summary"]["n_examples"] == 3


def test_featurize_warns_about_an_sae_whose_run_is_not_finished(
    tmp_path: Path, tiny_sae_dir: Path
) -> None:
    import shutil

    from core.sae import TRAINING_INFO_FILENAME
    from core.steps.base import versions
    from core.steps.featurize import unrecorded_sae_warning

    store = Store(tmp_path / "s.duckdb")
    folder = tmp_path / "sae"
    shutil.copytree(tiny_sae_dir, folder)
    assert unrecorded_sae_warning(store, str(folder)) is None  # an SAE from elsewhere
    run_id, _ = store.begin_run(RunRecord("train-sae", "d", {}, versions()))
    info = {"run": {"store": str(store.path.resolve()), "run_id": run_id}}
    (folder / TRAINING_INFO_FILENAME).write_text(json.dumps(info))
    msg = unrecorded_sae_warning(store, str(folder))
    assert msg is not None and f"train-sae run {run_id} is not finished in this store" in msg
    store.finish_run(run_id, summary={})
    assert unrecorded_sae_warning(store, str(folder)) is None
    info["run"]["run_id"] = 999
    (folder / TRAINING_INFO_FILENAME).write_text(json.dumps(info))
    assert "train-sae run 999 is missing" in str(unrecorded_sae_warning(store, str(folder)))
    other = {"run": {"store": "/elsewhere/studio.duckdb", "run_id": 999}}
    (folder / TRAINING_INFO_FILENAME).write_text(json.dumps(other))
    assert unrecorded_sae_warning(store, str(folder)) is None
