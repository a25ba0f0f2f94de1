"""What a Rewards page view costs at scale: the headline accuracies (pairwise and 1-of-N with
their bootstraps), a per-category table and a margin curve, on a synthetic preference frame of N
prompts with one chosen and two rejected responses each (seconds, CPU seconds, peak memory).

    .venv/bin/python bench/judge_page.py [--sizes 100000,1000000]

The page asks judge for each view on its own (JudgeRequest.headline=False for the per-category
table, the margin curve and the agreement), so a switch of category or source pair does not redo
the headline bootstraps; before, every such call paid them again.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import rewards


def frame(n: int) -> pd.DataFrame:
    """n prompts, one chosen and two rejected responses each, random scores, 7 categories."""
    rng = np.random.default_rng(0)
    idx = np.tile(np.arange(3), n)
    return pd.DataFrame(
        {
            "example_id": np.repeat(np.arange(n), 3).astype(str),
            "response_idx": idx,
            "role": np.where(idx == 0, "chosen", "rejected"),
            "score": rng.normal(size=3 * n),
            "value": (np.repeat(np.arange(n), 3) % 7).astype(str),
        }
    )


def views(f: pd.DataFrame) -> dict[str, Callable[[], object]]:
    return {
        "headline: pairwise + 1-of-N": lambda: (
            rewards.pairwise_accuracy(f),
            rewards.one_of_n_accuracy(f),
        ),
        "per category (7 values)": lambda: rewards.accuracy_by(f, by="value", side="example"),
        "margin curve (20 margins)": lambda: rewards.margin_curve(
            f, margins=rewards.margin_grid(f, points=20)
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    args = ap.parse_args()
    print("| prompts | view | seconds | CPU s | peak MB |\n|---:|---|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        for label, fn in views(frame(n)).items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {n:,} | {label} | {wall:.2f} | {cpu:.2f} | {peak:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
