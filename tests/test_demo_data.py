"""core.demo_data: families x levels, planted corruptions, verified answers, determinism, ingest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
import reasoning_gym

from core.demo_data import (
    CORRUPTIONS,
    DEMO_TASKS,
    build_demo_records,
    cell_seed,
    write_demo_jsonl,
)
from core.errors import StudioError
from core.ingest import read_dataset

N = 320


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return build_demo_records(n=N, seed=0, corrupt_share=0.1)


def test_shape_and_fields(records: list[dict[str, Any]]) -> None:
    assert len(records) == N
    assert [r["id"] for r in records] == [f"demo-{i:05d}" for i in range(1, N + 1)]
    for r in records:
        assert set(r) == {"id", "prompt", "answer", "task", "difficulty", "quality", "corruption"}
        assert isinstance(r["prompt"], str) and r["prompt"].strip()
        assert isinstance(r["answer"], str) and r["answer"]
        assert r["quality"] == (1.0 if r["corruption"] == "none" else 0.0)
    assert len({r["prompt"] for r in records}) == N


def test_families_and_levels_are_balanced(records: list[dict[str, Any]]) -> None:
    families = {r["task"] for r in records}
    assert len(families) >= 6 and families == set(DEMO_TASKS)
    for task in families:
        levels = Counter(r["difficulty"] for r in records if r["task"] == task)
        assert sorted(levels) == list(range(1, len(DEMO_TASKS[task]) + 1))
        assert len(levels) >= 3
    cells = Counter((r["task"], r["difficulty"]) for r in records)
    assert max(cells.values()) - min(cells.values()) <= 1


def test_levels_make_problems_bigger(records: list[dict[str, Any]]) -> None:
    """The knob is real: the hardest level's problems are longer than the easiest level's."""
    for task, levels in DEMO_TASKS.items():
        size = {
            lvl: mean(
                len(r["prompt"]) + len(r["answer"])
                for r in records
                if r["task"] == task and r["difficulty"] == lvl and r["corruption"] == "none"
            )
            for lvl in (1, len(levels))
        }
        assert size[len(levels)] > size[1], task


def test_corruption_share_and_kinds(records: list[dict[str, Any]]) -> None:
    kinds = Counter(r["corruption"] for r in records)
    assert set(kinds) == {"none", *CORRUPTIONS}
    bad = N - kinds["none"]
    assert bad == round(N * 0.1)
    counts = [kinds[k] for k in CORRUPTIONS]
    assert max(counts) - min(counts) <= 1
    assert build_demo_records(n=100, seed=0, corrupt_share=0.0)[0]["corruption"] == "none"
    assert all(r["corruption"] == "none" for r in build_demo_records(n=50, corrupt_share=0.0))


def test_answers_verify_and_wrong_answers_do_not(records: list[dict[str, Any]]) -> None:
    """Every clean answer scores 1.0 with its task's verifier; every planted wrong one < 1."""
    entries: dict[str, tuple[Any, dict[str, Any]]] = {}  # question -> (dataset, entry)
    for task, levels in DEMO_TASKS.items():
        for level, config in enumerate(levels, 1):
            seed = cell_seed(seed=0, task=task, level=level)
            ds = reasoning_gym.create_dataset(task, seed=seed, size=N, **config)
            entries.update((entry["question"], (ds, entry)) for entry in ds)
    checked: Counter[str] = Counter()
    for r in records:
        if r["corruption"] in ("truncated", "garbled"):
            continue
        ds, entry = entries[r["prompt"]]
        score = ds.score_answer(r["answer"], entry)
        if r["corruption"] == "none":
            assert score == 1.0 and r["answer"] == str(entry["answer"])
        else:
            assert score < 1.0 and r["answer"] != str(entry["answer"])
        checked[r["corruption"]] += 1
    assert checked["none"] == N - round(N * 0.1) and checked["wrong_answer"] >= 10


def test_corruptions_edit_the_clean_twin(records: list[dict[str, Any]]) -> None:
    """The same seed without corruption draws the same problems in the same order."""
    clean = build_demo_records(n=N, seed=0, corrupt_share=0.0)
    for r, twin in zip(records, clean, strict=True):
        assert (r["id"], r["task"], r["difficulty"]) == (
            twin["id"],
            twin["task"],
            twin["difficulty"],
        )
        kind, original = r["corruption"], twin["prompt"]
        if kind == "none":
            assert r == twin
        elif kind == "wrong_answer":
            assert r["prompt"] == original and r["answer"] != twin["answer"]
        elif kind == "truncated":
            assert original.startswith(r["prompt"]) and r["answer"] == twin["answer"]
            assert 0.25 * len(original) <= len(r["prompt"]) <= 0.6 * len(original)
        else:
            assert r["prompt"] != original and r["answer"] == twin["answer"]
            words, chars = sorted(r["prompt"].split()), sorted(r["prompt"])
            assert words == sorted(original.split()) or chars == sorted(original)


def test_deterministic_in_seed(records: list[dict[str, Any]]) -> None:
    assert build_demo_records(n=N, seed=0, corrupt_share=0.1) == records
    other = build_demo_records(n=N, seed=1, corrupt_share=0.1)
    assert [r["prompt"] for r in other] != [r["prompt"] for r in records]


def test_bad_arguments() -> None:
    with pytest.raises(StudioError, match="corrupt_share"):
        build_demo_records(n=10, corrupt_share=1.5)
    with pytest.raises(StudioError, match="n must be"):
        build_demo_records(n=0)


def test_jsonl_is_ingestable(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    path = write_demo_jsonl(tmp_path / "sub" / "demo.jsonl", n=N, seed=0, corrupt_share=0.1)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records
    t = read_dataset(path, kind="prompts")
    assert t.n == N
    assert t.examples.column("id").to_pylist() == [r["id"] for r in records]
    assert t.examples.column("answer").to_pylist() == [r["answer"] for r in records]
    assert {r["name"] for r in t.labels.to_pylist()} == {"difficulty", "quality"}
    assert t.labels.num_rows == 2 * N
    tags = [json.loads(s) for s in t.examples.column("tags").to_pylist()]
    assert tags == [{"task": r["task"], "corruption": r["corruption"]} for r in records]
