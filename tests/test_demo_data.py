"""core.demo_data: families x levels, planted corruptions, verified answers, determinism, ingest."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
import reasoning_gym

from core.demo_data import (
    CORRUPTIONS,
    DEMO_EASE,
    DEMO_ROLLOUT_SOURCE,
    DEMO_TASKS,
    build_demo_records,
    cell_seed,
    demo_pass_probability,
    write_demo_jsonl,
    write_demo_rollouts,
)
from core.errors import StudioError
from core.ingest import read_dataset
from core.rollouts import read_rollouts, rollout_labels, rollout_summary

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


# --- simulated rollouts -------------------------------------------------------------------------


def test_demo_rollouts_are_deterministic_and_complete(
    tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    a = write_demo_rollouts(tmp_path / "a.jsonl", records, seed=0)
    b = write_demo_rollouts(tmp_path / "sub" / "b.jsonl", records, seed=0)
    other = write_demo_rollouts(tmp_path / "c.jsonl", records, seed=1)
    assert a.read_bytes() == b.read_bytes() != other.read_bytes()
    demo = write_demo_jsonl(tmp_path / "demo.jsonl", n=N, seed=0, corrupt_share=0.1)
    from_file = write_demo_rollouts(tmp_path / "d.jsonl", demo, seed=0)
    assert from_file.read_bytes() == a.read_bytes()
    # a record's draws depend on (seed, id) only, not on the records around it
    some = write_demo_rollouts(tmp_path / "e.jsonl", records[5:9], seed=0)
    lines = a.read_text(encoding="utf-8").splitlines()
    assert some.read_text(encoding="utf-8").splitlines() == lines[5 * 8 : 9 * 8]

    first = json.loads(lines[0])
    assert list(first) == ["id", "sample_idx", "passed"] and isinstance(first["passed"], bool)
    table = read_rollouts(a)
    assert Counter(table.column("example_id").to_pylist()) == {r["id"]: 8 for r in records}
    assert sorted(set(table.column("sample_idx").to_pylist())) == list(range(8))
    four = read_rollouts(write_demo_rollouts(tmp_path / "f.jsonl", records[:3], samples=4))
    assert four.num_rows == 12


def test_demo_rollouts_follow_the_simulated_policy(
    tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    assert set(DEMO_EASE) == set(DEMO_TASKS)
    assert "simulated" in DEMO_ROLLOUT_SOURCE.lower() and "sigmoid" in DEMO_ROLLOUT_SOURCE
    rollouts = read_rollouts(write_demo_rollouts(tmp_path / "r.jsonl", records, seed=0))
    labels: dict[str, dict[str, float]] = {}
    for row in rollout_labels(rollouts).to_pylist():
        labels.setdefault(row["example_id"], {})[row["name"]] = row["value"]

    def mean_pass(select: Any) -> float:
        return mean(labels[r["id"]]["pass_rate"] for r in records if select(r))

    # harder levels pass less often, on average over the families (falls at every step)
    by_level = [mean_pass(lambda r, lvl=lvl: r["difficulty"] == lvl) for lvl in range(1, 5)]
    assert all(a > b for a, b in pairwise(by_level)), by_level
    assert mean_pass(lambda r: r["quality"] == 0.0) < mean_pass(lambda r: r["quality"] == 1.0) - 0.2
    # a realistic share of GRPO groups without signal: neither none nor most
    summary = rollout_summary(rollouts)
    assert 0.15 <= summary["zero_signal_share"] <= 0.45, summary
    assert summary["n_all_pass"] > 0 and summary["n_all_fail"] > 0
    # the simulated probabilities themselves: monotone in difficulty for every family
    for task in DEMO_TASKS:
        ps = [demo_pass_probability({"task": task, "difficulty": d}) for d in range(1, 5)]
        assert all(0 < b < a < 1 for a, b in pairwise(ps)), task


def test_demo_rollouts_reject_bad_records(tmp_path: Path) -> None:
    with pytest.raises(StudioError, match=r"^demo record 2: field 'task' is missing"):
        write_demo_rollouts(
            tmp_path / "r.jsonl",
            [{"id": "a", "task": "chain_sum", "difficulty": 1}, {"id": "b", "difficulty": 1}],
        )
    bad = tmp_path / "demo.jsonl"
    bad.write_text('{"id": "a", "task": "chess", "difficulty": 1}\n', encoding="utf-8")
    with pytest.raises(StudioError, match=r"^demo\.jsonl line 1: field 'task': 'chess'"):
        write_demo_rollouts(tmp_path / "r.jsonl", bad)
    with pytest.raises(StudioError, match="samples"):
        write_demo_rollouts(tmp_path / "r.jsonl", [], samples=0)
