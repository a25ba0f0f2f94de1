"""Featurize throughput on a GPU, at the SAERL paper's scale: Qwen2.5-Math-1.5B's exact shape.

    .venv/bin/python bench/featurize_gpu.py            # on a GPU machine, a few minutes
    .venv/bin/python bench/featurize_gpu.py --smoke    # tiny sizes, CPU is fine: checks it runs

A random-init transformers ``Qwen2Model`` with Qwen2.5-Math-1.5B's config (hidden 1536, 28
layers, 12 heads, 2 KV heads, MLP 8960, vocab 151,936, rope theta 10,000, tied embeddings), in
bf16, and a random-init sae-lens TopK SAE 1536 -> 32,768 (k=64) at layer 14. Weights do not change
speed, so random-init throughput is honest; nothing is downloaded.

Prompts are synthetic token sequences with math-prompt-like lengths (log-normal, median ~180,
clipped to 100..400 tokens), written as text for a word-level tokenizer built in memory over the
same 151,936-entry vocabulary, so ours runs exactly as the pipeline does:
``core.features.featurize_batches`` (tokenization, forward stopped after block 14, SAE on the
device, pooling, top-k, per-feature token statistics). Against it, in the same run: (a) the full
forward with ``output_hidden_states=True`` then the same SAE, pooling and top-k, and a bf16
``torch.matmul`` of 8192^3 for the device's attainable FLOP/s. Prints tokens/s, useful TFLOP/s
(formula in ``bench/featurize.py: featurize_flops``), its share of the measured matmul and of
the GPU's dense bf16 peak, and where ours spends its time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurize import (
    RANDOM_INIT_NOTE,
    best_interleaved,
    featurize_flops,
    make_sae,
    matmul_flops_per_s,
    run_full_forward,
    run_ours,
    stage_breakdown,
)

from core.features import FeatureConfig
from core.models import LoadedModel, token_lengths

# Dense (no sparsity) bf16 tensor-core peaks from the vendor's data sheets, TFLOP/s. Matched in
# order against torch.cuda.get_device_name(); more specific names first.
BF16_DENSE_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


@dataclass(frozen=True)
class Shape:
    """The model, SAE and data sizes of one bench run."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    layer: int
    d_sae: int
    k: int
    n_prompts: int
    min_len: int
    max_len: int
    median_len: int
    batch_size: int
    matmul_n: int


QWEN25_MATH_15B = Shape(
    hidden=1536,
    layers=28,
    heads=12,
    kv_heads=2,
    intermediate=8960,
    vocab=151936,
    layer=14,
    d_sae=32768,
    k=64,
    n_prompts=4096,
    min_len=100,
    max_len=400,
    median_len=180,
    batch_size=64,
    matmul_n=8192,
)
SMOKE = Shape(
    hidden=64,
    layers=4,
    heads=4,
    kv_heads=2,
    intermediate=128,
    vocab=1000,
    layer=2,
    d_sae=256,
    k=8,
    n_prompts=48,
    min_len=10,
    max_len=40,
    median_len=18,
    batch_size=16,
    matmul_n=512,
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak for a GPU name, or None when not in the table."""
    for key, peak in BF16_DENSE_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def word_tokenizer(vocab: int) -> Any:
    """A fast tokenizer over ``vocab`` ids: word ``t<i>`` is id i; ids 0-2 are pad, unk and a
    BOS that is prepended (so ours drops it, as it drops a real BOS). Built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>"]
    words = specials + [f"t{i}" for i in range(len(specials), vocab)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>"
    )


def synthetic_prompts(shape: Shape, *, seed: int = 0) -> list[str]:
    """Prompts of ``min_len..max_len`` words (log-normal, median ``median_len``), random ids."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(
        rng.lognormal(np.log(shape.median_len), 0.4, shape.n_prompts),
        shape.min_len,
        shape.max_len,
    ).astype(int)
    return [" ".join(f"t{i}" for i in rng.integers(3, shape.vocab, n)) for n in lengths]


def qwen2_model(shape: Shape, *, device: str, dtype: torch.dtype) -> LoadedModel:
    """Random-init Qwen2Model with Qwen2.5-Math-1.5B's config (at ``shape``'s sizes)."""
    from transformers import Qwen2Config, Qwen2Model

    config = Qwen2Config(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        vocab_size=shape.vocab,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2Model(config).to(dtype).eval()
    return LoadedModel(
        model=model,
        tokenizer=word_tokenizer(shape.vocab),
        name="Qwen2.5-Math-1.5B-shaped (random-init)",
        n_layers=shape.layers,
        d_model=shape.hidden,
        arch="qwen2",
        device=device,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; runs on CPU")
    ap.add_argument("--n", type=int, default=None, help="prompts (default 4096; smoke 48)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64; smoke 16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    shape = SMOKE if args.smoke else QWEN25_MATH_15B
    if args.n is not None:
        shape = Shape(**{**shape.__dict__, "n_prompts": args.n})
    if args.batch_size is not None:
        shape = Shape(**{**shape.__dict__, "batch_size": args.batch_size})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        print("no GPU here: running the --smoke sizes on CPU instead")
        shape = SMOKE
    dtype = torch.bfloat16
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"

    t0 = time.perf_counter()
    lm = qwen2_model(shape, device=device, dtype=dtype)
    sae = make_sae(
        d_in=shape.hidden,
        d_sae=shape.d_sae,
        k=shape.k,
        hook_name=f"blocks.{shape.layer}.hook_resid_post",
        dtype="bfloat16",
        device=device,
    )
    texts = synthetic_prompts(shape)
    cfg = FeatureConfig(layer=shape.layer, batch_size=shape.batch_size, max_length=512)
    setup_s = time.perf_counter() - t0

    def timed_path(fn: Any) -> Any:
        def run() -> int:
            tokens = fn(lm, sae, texts, cfg)
            sync()
            return tokens

        return run

    warm = texts[: 2 * shape.batch_size]
    run_ours(lm, sae, warm, cfg)
    run_full_forward(lm, sae, warm, cfg)
    sync()
    matmul_before = matmul_flops_per_s(device=device, dtype=dtype, n=shape.matmul_n)
    best = best_interleaved(
        {
            "ours (featurize_batches)": timed_path(run_ours),
            "(a) full forward + output_hidden_states": timed_path(run_full_forward),
        },
        repeats=args.repeats,
    )
    matmul_after = matmul_flops_per_s(device=device, dtype=dtype, n=shape.matmul_n)
    matmul = max(matmul_before, matmul_after)
    for timing in best.values():
        timing.examples = len(texts)

    seq_lens = [min(n, cfg.max_length) for n in token_lengths(lm, texts)]
    ours, full = best["ours (featurize_batches)"], best["(a) full forward + output_hidden_states"]
    flops = featurize_flops(
        lm, layer=shape.layer, seq_lens=seq_lens, n_kept=ours.tokens, d_sae=shape.d_sae
    )
    flops_full = featurize_flops(
        lm, layer=shape.layers - 1, seq_lens=seq_lens, n_kept=full.tokens, d_sae=shape.d_sae
    )
    achieved, achieved_full = flops / ours.seconds, flops_full / full.seconds
    peak = bf16_peak_tflops(name)

    print(
        f"device: {name}; torch {torch.__version__}; setup {setup_s:.0f} s"
        + (" [SMOKE: tiny sizes, figures mean nothing]" if args.smoke or device == "cpu" else "")
    )
    print(
        f"model: Qwen2 {shape.layers} layers x {shape.hidden}, {shape.heads} heads / "
        f"{shape.kv_heads} KV, MLP {shape.intermediate}, vocab {shape.vocab}, bf16 "
        f"({RANDOM_INIT_NOTE}); TopK SAE {shape.hidden} -> {shape.d_sae}, k={shape.k}, at "
        f"layer {shape.layer} ({shape.layer + 1}/{shape.layers} blocks run by ours)"
    )
    print(
        f"data: {len(texts)} synthetic prompts, {sum(seq_lens)} tokens (median "
        f"{int(np.median(seq_lens))}, {min(seq_lens)}..{max(seq_lens)}), {ours.tokens} pooled; "
        f"batch {shape.batch_size}; best of {args.repeats} interleaved"
    )
    print(ours.line("ours (featurize_batches)"))
    print(full.line("(a) full forward + output_hidden_states"))
    print(f"ratio ours / (a): {full.seconds / ours.seconds:.2f}x")
    print(
        f"measured bf16 matmul {shape.matmul_n}^3: {matmul / 1e12:.1f} TFLOP/s "
        f"(before {matmul_before / 1e12:.1f}, after {matmul_after / 1e12:.1f})"
        + (f"; data-sheet dense bf16 peak {peak:.0f} TFLOP/s" if peak else "; peak unknown")
    )
    for label, value in (("ours", achieved), ("(a)", achieved_full)):
        share_peak = f", {100 * value / (peak * 1e12):.0f}% of peak" if peak else ""
        print(
            f"{label} reaches {value / 1e12:.3g} TFLOP/s useful: "
            f"{100 * value / matmul:.0f}% of measured matmul{share_peak}"
        )
    stages = stage_breakdown(lm, sae, texts, cfg, sync=sync)
    total = sum(stages.values())
    print(f"where ours spends its time (one pass, {total:.2f} s):")
    for stage, s in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:28s} {s:7.2f} s  {100 * s / total:5.1f}%")


if __name__ == "__main__":
    main()
