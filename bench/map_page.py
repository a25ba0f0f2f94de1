"""Map page at scale: a synthetic store of 100k examples, served by Streamlit, timed in Chromium.

    .venv/bin/python bench/map_page.py [--n 100000]

Builds bench/out/map100k.duckdb (random sparse features, blob-shaped 2-D points, 20 clusters and
two labels — synthetic, for timing only), serves it, and measures in Debian's Chromium:
  - the Overview page (a baseline: same server, no chart),
  - seconds until the Map chart holds all n points (first draw, cold cache),
  - seconds to redraw after a filter change (colour by a label; then show 3 clusters only).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.store import RunRecord, Store
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.ui.test_app_safety import served

COUNT_JS = """() => { const gd = document.querySelector('.js-plotly-plot');
  if (!gd || !gd._fullData) return -1; return gd._fullData.reduce((a, t) => a + (t._length || 0), 0); }"""


def build(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    if path.exists():
        path.unlink()
    s = Store(path)
    ids = [f"s{i:07d}" for i in range(n)]
    k = 20
    cluster = rng.integers(0, k, n).astype(np.int32)
    centers = rng.normal(0, 10, (k, 2))
    xy = centers[cluster] + rng.normal(0, 1.5, (n, 2))
    prompts = [
        f"Synthetic prompt {i} about topic {c} <b>escaped</b>" for i, c in enumerate(cluster)
    ]
    s.write_dataset(
        name="synthetic",
        kind="prompts",
        source="bench/map_page.py",
        examples=pa.table(
            {
                "id": ids,
                "idx": pa.array(np.arange(n), pa.int64()),
                "prompt": prompts,
                "answer": ["42"] * n,
                "text": prompts,
                "tags": ["{}"] * n,
                "extra": ["{}"] * n,
            }
        ),
        labels=pa.table(
            {
                "example_id": ids + ids,
                "name": ["difficulty"] * n + ["quality"] * n,
                "value": np.r_[rng.integers(1, 6, n), rng.random(n)].astype(float),
            }
        ),
        responses=pa.table(
            {
                "example_id": pa.array([], pa.string()),
                "response_idx": pa.array([], pa.int32()),
                "role": pa.array([], pa.string()),
                "text": pa.array([], pa.string()),
            }
        ),
    )
    fr, _ = s.begin_run(
        RunRecord(
            "featurize",
            "synthetic",
            {
                "model": "synthetic",
                "layer": 0,
                "sae": "synthetic",
                "pooling": "mean",
                "top_k": 8,
            },
            {},
        )
    )
    fids = rng.integers(0, 4096, (n, 8)).astype(np.int32)
    vals = np.sort(rng.random((n, 8)).astype(np.float32))[:, ::-1]
    chunk = pa.table(
        {
            "example_id": ids,
            "n_tokens": pa.array(np.full(n, 20), pa.int32()),
            "truncated": pa.array(np.zeros(n, bool)),
            "feature_ids": pa.array(list(fids)),
            "values": pa.array(list(vals)),
        }
    )
    top = pd.DataFrame(
        {
            "feature_id": np.arange(4096),
            "rank": 0,
            "example_id": ids[0],
            "token": [f"tok{i}" for i in range(4096)],
            "value": 1.0,
        }
    )
    stats = pd.DataFrame(
        {"feature_id": np.arange(4096), "n_fire": 1, "sum_act": 1.0, "max_act": 1.0}
    )
    s.write_feature_chunk(fr, chunk=chunk, stats=stats, top_tokens=top)
    s.finish_run(fr, summary={"n_examples": n, "d_sae": 4096})
    s.add_run(
        RunRecord("cluster", "synthetic", {"k": k, "seed": 0}, {}, {"k": k}, parent_run=fr),
        assignments=pa.table({"example_id": ids, "cluster": cluster}),
        clusters=pd.DataFrame(
            {
                "cluster": np.arange(k, dtype=np.int32),
                "size": np.bincount(cluster, minlength=k),
                "label": [f"f{i} (tok{i})" for i in range(k)],
                "top_features": [json.dumps([])] * k,
            }
        ),
    )
    s.add_run(
        RunRecord(
            "project",
            "synthetic",
            {"metric": "cosine", "n_neighbors": 15, "min_dist": 0.1},
            {},
            {"n": n},
            parent_run=fr,
        ),
        points=pa.table(
            {"example_id": ids, "x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32)}
        ),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    db = Path("bench/out/map100k.duckdb")
    db.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build(db, args.n)
    print(f"built synthetic store of {args.n:,} examples in {time.perf_counter() - t0:.1f} s")
    from playwright.sync_api import sync_playwright

    with served(db) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        t = time.perf_counter()
        page.goto(url)
        page.get_by_text("Feature runs").first.wait_for(timeout=120_000)
        overview = time.perf_counter() - t
        t = time.perf_counter()
        page.goto(f"{url}/map")
        page.wait_for_function(f"({COUNT_JS})() === {args.n}", timeout=120_000)
        first = time.perf_counter() - t
        print(f"Overview page (baseline, no chart): {overview:6.2f} s", flush=True)
        print(
            f"Map first draw, {args.n:,} points:    {first:6.2f} s "
            f"({first / overview:.1f}x overview)",
            flush=True,
        )
        # filter change 1: colour by a label (one trace instead of 20)
        t = time.perf_counter()
        page.get_by_role("combobox", name="Colour by").click()
        page.get_by_role("option", name="difficulty", exact=True).click()
        page.wait_for_function(
            "() => { const gd = document.querySelector('.js-plotly-plot');"
            " return gd && gd.data && gd.data.length === 1; }",
            timeout=120_000,
        )
        recolour = time.perf_counter() - t
        print(
            f"Map redraw after colour change:      {recolour:6.2f} s "
            f"({recolour / overview:.1f}x overview)",
            flush=True,
        )
        # filter change 2: show one cluster only (about n/20 points)
        t = time.perf_counter()
        page.get_by_role("combobox", name="Show clusters (empty = all)").click()
        page.get_by_role("option", name=re.compile(r"^0 ·")).click()
        page.keyboard.press("Escape")  # the multiselect commits when its menu closes
        page.wait_for_function(
            f"() => {{ const n = ({COUNT_JS})(); return n > 0 && n < {args.n}; }}",
            timeout=120_000,
        )
        filtered = time.perf_counter() - t
        print(
            f"Map redraw after a cluster filter:   {filtered:6.2f} s "
            f"({filtered / overview:.1f}x overview)",
            flush=True,
        )
        browser.close()


if __name__ == "__main__":
    main()
