"""Export at scale: a synthetic store of up to 1M examples exported in every layout, timed, with
each export's peak memory measured in its own process.

    .venv/bin/python bench/export_scale.py [--sizes 100000,300000,1000000]

Builds bench/out/export{N}.duckdb per size (synthetic prompts of ~200 characters, an answer, a
task tag, two labels, 20 clusters with centroid distances, a difficulty probe's scores, top-8
sparse features per row — random, for timing only), then runs `python -m core export` in a fresh
process per (size, format) with filters (a score threshold, a dropped cluster, a feature rule),
the SAERL curriculum and cluster-first batches of 256 at mix 0.2. Baseline in the same run: a
plain DuckDB `COPY (SELECT * FROM examples ...) TO '...parquet'` of the same rows, no ordering or
layout (the floor a Parquet export cannot beat). Prints seconds, rows/s, peak RSS and the ratio
to the baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.store import RunRecord, Store  # noqa: E402

OUT = ROOT / "bench" / "out"
K = 20
WORDS = np.array(
    [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "count",
        "the",
        "legs",
        "of",
        "each",
        "animal",
        "solve",
        "for",
        "x",
        "given",
        "that",
        "sum",
        "product",
        "prime",
        "number",
        "sequence",
        "next",
        "term",
        "grid",
        "path",
        "shortest",
        "word",
        "letter",
        "reverse",
        "sort",
        "list",
    ]
)


def build(path: Path, n: int, seed: int = 0, *, responses: pa.Table | None = None) -> None:
    """A synthetic store of n examples with everything an export reads; with ``responses``
    (example_id, response_idx, role, text), a preference set."""
    rng = np.random.default_rng(seed)
    path.unlink(missing_ok=True)
    s = Store(path)
    ids = pa.array([f"s{i:07d}" for i in range(n)], pa.string())
    words = WORDS[rng.integers(0, len(WORDS), size=(n, 30))]
    prompts = [" ".join(w) for w in words]
    tasks = np.array(["leg_counting", "basic_arithmetic", "word_sorting", "number_sequence"])
    task = tasks[rng.integers(0, len(tasks), n)]
    examples = pa.table(
        {
            "id": ids,
            "idx": pa.array(np.arange(n, dtype=np.int64)),
            "prompt": pa.array(prompts, pa.string()),
            "answer": pa.array(rng.integers(0, 1000, n).astype(str), pa.string()),
            "text": pa.array(prompts, pa.string()),
            "tags": pa.array([f'{{"task": "{t}"}}' for t in task], pa.string()),
            "extra": pa.array([f'{{"task": "{t}"}}' for t in task], pa.string()),
        }
    )
    diff = rng.integers(1, 5, n).astype(np.float64)
    labels = pa.table(
        {
            "example_id": pa.concat_arrays([ids, ids]),
            "name": pa.array(["difficulty"] * n + ["quality"] * n, pa.string()),
            "value": pa.array(np.r_[diff, (rng.random(n) > 0.05).astype(np.float64)]),
        }
    )
    empty = pa.table(
        {
            "example_id": pa.array([], pa.string()),
            "response_idx": pa.array([], pa.int32()),
            "role": pa.array([], pa.string()),
            "text": pa.array([], pa.string()),
        }
    )
    s.write_dataset(
        name="big",
        kind="prompts" if responses is None else "preferences",
        source="synthetic",
        examples=examples,
        labels=labels,
        responses=empty if responses is None else responses,
    )
    fr, _ = s.begin_run(RunRecord("featurize", "big", {"d_sae": 4096, "sae": "synthetic"}, {}))
    top = 8
    fids = rng.integers(0, 4096, size=(n, top)).astype(np.int32)
    vals = rng.random((n, top)).astype(np.float32)
    chunk = pa.table(
        {
            "example_id": ids,
            "n_tokens": pa.array(np.full(n, 40, np.int32)),
            "truncated": pa.array(np.zeros(n, bool)),
            "feature_ids": pa.FixedSizeListArray.from_arrays(fids.ravel(), top).cast(
                pa.list_(pa.int32())
            ),
            "values": pa.FixedSizeListArray.from_arrays(vals.ravel(), top).cast(
                pa.list_(pa.float32())
            ),
        }
    )
    no_stats = pd.DataFrame({"feature_id": [], "n_fire": [], "sum_act": [], "max_act": []})
    no_top = pd.DataFrame(
        {"feature_id": [], "rank": [], "example_id": [], "token": [], "value": []}
    )
    s.write_feature_chunk(fr, chunk=chunk, stats=no_stats, top_tokens=no_top)
    s.finish_run(fr, summary={"n": n})
    cluster = rng.integers(0, K, n)
    centroids = rng.normal(size=(K, 16))
    from core.export import cluster_distances

    s.add_run(
        RunRecord(
            "cluster",
            "big",
            {"k": K},
            {},
            {"centroid_distances": cluster_distances(centroids).round(4).tolist()},
            parent_run=fr,
        ),
        assignments=pa.table({"example_id": ids, "cluster": pa.array(cluster, pa.int32())}),
        clusters=pd.DataFrame(
            {
                "cluster": np.arange(K),
                "size": np.bincount(cluster, minlength=K),
                "label": [f"c{c}" for c in range(K)],
                "top_features": ["[]"] * K,
            }
        ),
    )
    s.add_run(
        RunRecord(
            "probe",
            "big",
            {"name": "difficulty_proxy", "signal": "difficulty", "higher_is": "harder"},
            {},
            {},
            parent_run=fr,
        ),
        scores=pa.table(
            {
                "example_id": ids,
                "value": pa.array(diff + rng.normal(0, 0.5, n)),
                "oof": pa.nulls(n, pa.float64()),
            }
        ),
    )


# peak memory: VmHWM (reset at exec; ru_maxrss would carry the forking parent's peak)
HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
# the command after imports: wall seconds, CPU seconds of the process, peak memory
RUN = """
import json, os, sys, time
from core.cli import main
t0, c0 = time.perf_counter(), os.times()
rc = main(sys.argv[1:])
c1 = os.times()
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t0,
                  "cpu_s": (c1.user - c0.user) + (c1.system - c0.system),
                  "peak_rss_mb": HWM}))
"""

BASELINE = """
import json, sys, time, duckdb
t0 = time.perf_counter()
con = duckdb.connect(sys.argv[1], read_only=True)
con.execute("COPY (SELECT id, prompt, answer, tags FROM examples WHERE dataset = 'big' "
            "ORDER BY idx) TO '" + sys.argv[2] + "' (FORMAT parquet, COMPRESSION zstd)")
print(json.dumps({"rc": 0, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": HWM}))
"""


def timed(code: str, args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code.replace("HWM", HWM), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--formats", default="parquet,jsonl,verl,trl-prompt,hf")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rules = OUT / "bench_rules.json"
    rules.write_text(
        json.dumps(
            {
                "name": "bench",
                "rules": [
                    {"action": "drop", "where": "cluster in 3"},
                    {"action": "drop", "where": "feature:17>0.5", "note": "a feature rule"},
                ],
            }
        )
    )
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        db = OUT / f"export{n}.duckdb"
        t0 = time.perf_counter()
        build(db, n)
        print(f"built {db.name} ({n:,} rows) in {time.perf_counter() - t0:.0f} s", flush=True)
        base = timed(BASELINE, [str(db), str(OUT / f"base{n}.parquet")])
        rows.append({"rows": n, "format": "baseline: DuckDB COPY to Parquet", **base})
        print(rows[-1], flush=True)
        for fmt in args.formats.split(","):
            suffix = {"jsonl": ".jsonl", "hf": ""}.get(fmt, ".parquet")
            out = OUT / f"export{n}-{fmt}{suffix}"
            cli = ["export", "--db", str(db), "--dataset", "big", "--out", str(out)]
            cli += ["--where", "difficulty_proxy<=4.5", "--rules", str(rules)]
            cli += ["--order", "curriculum", "--batch-size", "256", "--mix", "0.2"]
            cli += ["--format", fmt]
            res = timed(RUN, cli)
            man = json.loads(Path(str(out) + ".manifest.json").read_text())
            rows.append({"rows": n, "format": fmt, "written": man["rows"], **res})
            print(rows[-1], flush=True)
        db.unlink()
    df = pd.DataFrame(rows)
    base = df[df["format"].str.startswith("baseline")].set_index("rows")["seconds"]
    df["x baseline"] = (df["seconds"] / df["rows"].map(base)).round(2)
    df["rows/s"] = (df["rows"] / df["seconds"]).round(0)
    print(df.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
