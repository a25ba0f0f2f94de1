"""The Export page's data at scale: what it reads to draw its charts and preview, before and after
reading only the charted columns.

    .venv/bin/python bench/export_page.py [--sizes 100000,1000000]

On the synthetic store of bench/export_scale.py (prompts of ~200 characters, labels, clusters, a
difficulty probe), each in a fresh process with its peak memory: the baseline (in the same run)
is what the page read until now, ``export_rows`` of the filtered export plus ``export_rows`` of
every row (every column, text included); the new path is ``export_columns`` of both (cluster, the
labels and the score only) plus ``export_rows(limit=100)`` for the preview. Prints seconds, peak
RSS and their ratios to the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.export_scale import OUT, build, timed

COMMON = """
import json, sys, time
from core.steps.export import export_columns, export_rows
from core.export import ExportConfig
from core.filters import Filter
from core.store import Store
store = Store(sys.argv[1])
cfg = ExportConfig(order="curriculum", batch_size=256)
where = [Filter("difficulty_proxy", "<=", 4.5)]
cols = ["cluster", "difficulty", "quality", "difficulty_proxy"]
t0 = time.perf_counter()
"""
OLD = (
    COMMON
    + """
a, _ = export_rows(store, dataset="big", filters=where, cfg=cfg)
b, _ = export_rows(store, dataset="big", cfg=ExportConfig())
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": HWM, "exported": len(a)}))
"""
)
NEW = (
    COMMON
    + """
a = export_columns(store, dataset="big", columns=cols, filters=where, cfg=cfg)
b = export_columns(store, dataset="big", columns=cols)
c, _ = export_rows(store, dataset="big", filters=where, cfg=cfg, limit=100)
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": HWM, "exported": len(a)}))
"""
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        db = OUT / f"page{n}.duckdb"
        t0 = time.perf_counter()
        build(db, n)
        print(f"built {db.name} ({n:,} rows) in {time.perf_counter() - t0:.0f} s", flush=True)
        for what, code in (("baseline: whole export rows", OLD), ("charted columns", NEW)):
            res = timed(code, [str(db)])
            rows.append({"rows": n, "read": what, **res})
            print(json.dumps(rows[-1]), flush=True)
        Path(db).unlink()
    df = pd.DataFrame(rows)
    base = df[df["read"].str.startswith("baseline")].set_index("rows")
    df["x time"] = (df["seconds"] / df["rows"].map(base["seconds"])).round(2)
    df["x memory"] = (df["peak_rss_mb"] / df["rows"].map(base["peak_rss_mb"])).round(2)
    print(df.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
