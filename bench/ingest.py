"""Ingest at scale: what the validation added in issue 12 (names, duplicate keys, lone
surrogates, nesting, JSON cells) costs, against the ingest before it, in the same run.

    .venv/bin/python bench/ingest.py [--rows 1000000] [--formats jsonl,json,csv]
                                     [--baselines cfa7181] [--keep DIR]

Writes three files of ``--rows`` records in a temp folder (seeded, so every run reads the same
bytes): prompts as JSONL (id, a ~200-character prompt, answer, a task tag, two labels), the same
records as one ``.json`` array, and chats as CSV whose ``messages`` column holds each
conversation as JSON text (a JSON cell), with a feedback label and a language tag. Each file is
ingested into a fresh temp store, each time in a fresh process, as ``core.steps.ingest`` does it
(``read_dataset`` reads and validates the whole file, ``Store.write_dataset`` writes it in one
transaction): by the current ``core/ingest.py`` and by every baseline, which is
``core/ingest.py`` as it was at that commit (``git show REV:core/ingest.py``, loaded as a temp
module; the store write is the same code). Prints wall seconds, CPU seconds (the
process's own, all its threads, plus any children's, from ``resource.getrusage``), peak RSS
(``ru_maxrss``; imports included, the same for every variant), the read-and-validate part of the
wall time, and each figure's ratio to the first baseline.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_VOCABULARY = """
the of and to in is that for it as with was on be at by this had not are but from or have an they
which one you were her all she there would their we him been has when who will more no if out so
said what up its about into than them can only other new some could time these two may then do
first any my now such like our over man me even most made after also did many before must through
back years where much your way well down should because each just those people how too little
state good very make world still own see men work long get here between both life being under
never day same another know while last triangle prime sum
"""
WORDS = _VOCABULARY.split()
FORMATS = {"jsonl": "prompts", "json": "prompts", "csv": "chats"}


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _prompt(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "id": f"p{i}",
        "prompt": _text(rng, 36),
        "answer": str(rng.randint(0, 9999)),
        "task": rng.choice(("arithmetic", "logic", "geometry", "counting")),
        "difficulty": round(rng.uniform(1, 5), 3),
        "pass_rate": round(rng.random(), 3),
    }


def write_files(folder: Path, rows: int, formats: list[str]) -> dict[str, Path]:
    """The benchmark's input files in ``folder`` (only the formats asked for)."""
    out: dict[str, Path] = {}
    if "jsonl" in formats or "json" in formats:
        rng = random.Random(0)
        lines = [json.dumps(_prompt(rng, i)) for i in range(rows)]
        if "jsonl" in formats:
            out["jsonl"] = folder / "prompts.jsonl"
            out["jsonl"].write_text("\n".join(lines) + "\n", encoding="utf-8")
        if "json" in formats:  # one record a line, as json.dump(indent=...) or an editor writes
            out["json"] = folder / "prompts.json"
            out["json"].write_text("[\n" + ",\n".join(lines) + "\n]\n", encoding="utf-8")
        del lines
    if "csv" in formats:
        rng = random.Random(1)
        out["csv"] = folder / "chats.csv"
        with open(out["csv"], "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "messages", "feedback", "lang"])
            for i in range(rows):
                turns = [
                    {"role": "user", "content": _text(rng, 18)},
                    {"role": "assistant", "content": _text(rng, 24)},
                ]
                w.writerow(
                    [f"c{i}", json.dumps(turns), rng.randint(1, 4), rng.choice(("en", "de"))]
                )
    return out


def baseline_source(rev: str, folder: Path, repo: Path) -> Path:
    """core/ingest.py as it was at ``rev``, written to ``folder`` as a module file."""
    source = subprocess.run(
        ["git", "show", f"{rev}:core/ingest.py"],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / f"ingest_{rev}.py"
    path.write_text(source, encoding="utf-8")
    return path


def _load_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    return module


def child(module: str, path: Path, kind: str, db: Path) -> None:
    """One ingest in this (fresh) process with ``module`` ("current" or a baseline's module
    file); prints its figures as one JSON line."""
    sys.path.insert(0, str(ROOT))
    from core.store import Store

    if module == "current":
        from core import ingest as mod
    else:
        mod = _load_module(Path(module))
    store = Store(db)
    store.migrate()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    # what core.steps.ingest does (read and validate the whole file, then one transaction),
    # with the read timed apart
    tables = mod.read_dataset(path, kind=kind)
    read_s = time.perf_counter() - wall0
    n = store.write_dataset(
        name="d",
        kind=kind,  # type: ignore[arg-type]
        source=str(path),
        examples=tables.examples,
        labels=tables.labels,
        responses=tables.responses,
    )
    wall = time.perf_counter() - wall0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu0 + kids.ru_utime + kids.ru_stime
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"rows": n, "wall": wall, "cpu": cpu, "read": read_s, "peak_mb": peak_mb}))


def measure(module: str, path: Path, kind: str, folder: Path) -> dict[str, float]:
    db = folder / f"{Path(module).stem}-{path.stem}.duckdb"
    proc = subprocess.run(
        [sys.executable, __file__, "--child", module, str(path), kind, str(db)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"the ingest with {module} of {path.name} failed:\n{proc.stderr}")
    db.unlink(missing_ok=True)
    db.with_name(db.name + ".wal").unlink(missing_ok=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        variant, path, kind, db = sys.argv[2:6]
        child(variant, Path(path), kind, Path(db))
        return
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--formats", default="jsonl,json,csv")
    ap.add_argument(
        "--baselines",
        default="cfa7181",
        help="commits whose core/ingest.py is the baseline (the first is the ratios' base)",
    )
    ap.add_argument("--keep", help="write the input files here and keep them (default: temp)")
    ap.add_argument("--repo", default=str(ROOT), help="the git checkout the baselines come from")
    args = ap.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        ap.error(f"unknown formats {sorted(unknown)} (known: {', '.join(FORMATS)})")
    baselines = [b for b in args.baselines.split(",") if b]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        sources = {b: baseline_source(b, Path(tmp), Path(args.repo)) for b in baselines}
        files = write_files(folder, args.rows, formats)
        print(f"wrote {args.rows:,} rows per file in {time.perf_counter() - t0:.1f} s:")
        for fmt, path in files.items():
            print(f"  {fmt}: {path.name} {path.stat().st_size / 1e6:,.0f} MB")
        print(
            "| file | ingest | wall s | CPU s | read+validate s | peak RSS MB | x wall | x CPU "
            "| x RSS |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for fmt, path in files.items():
            base: dict[str, float] | None = None
            for variant in [*baselines, "current"]:
                module = str(sources[variant]) if variant in sources else "current"
                r = measure(module, path, FORMATS[fmt], Path(tmp))
                base = base or r
                name = "current" if variant == "current" else f"baseline {variant}"
                print(
                    f"| {path.name} ({FORMATS[fmt]}) | {name} | {r['wall']:.2f} | {r['cpu']:.2f} "
                    f"| {r['read']:.2f} | {r['peak_mb']:,.0f} | {r['wall'] / base['wall']:.2f} "
                    f"| {r['cpu'] / base['cpu']:.2f} | {r['peak_mb'] / base['peak_mb']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
