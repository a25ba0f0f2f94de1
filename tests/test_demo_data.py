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
from reasoning_gym.utils import extract_answer

from core.demo_data import (
    CORRUPTIONS,
    DEMO_CHAT_SOURCE,
    DEMO_EASE,
    DEMO_FOLLOW_UPS,
    DEMO_PREFERENCE_SOURCE,
    DEMO_ROLLOUT_SOURCE,
    DEMO_STYLES,
    DEMO_TASKS,
    build_demo_chats,
    build_demo_preferences,
    build_demo_records,
    cell_seed,
    demo_pass_probability,
    extract_demo_answer,
    render_demo_response,
    write_demo_chats,
    write_demo_jsonl,
    write_demo_preferences,
    write_demo_rollouts,
)
from core.errors import StudioError
from core.ingest import read_dataset
from core.rollouts import read_rollouts, rollout_labels, rollout_summary

N = 320


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return build_demo_records(n=N, seed=0, corrupt_share=0.1)


@pytest.fixture(scope="module")
def entries() -> dict[str, tuple[Any, dict[str, Any]]]:
    """question -> (reasoning-gym dataset, entry) for the seed-0 demo cells, made here directly."""
    found: dict[str, tuple[Any, dict[str, Any]]] = {}
    for task, levels in DEMO_TASKS.items():
        for level, config in enumerate(levels, 1):
            seed = cell_seed(seed=0, task=task, level=level)
            ds = reasoning_gym.create_dataset(task, seed=seed, size=N, **config)
            found.update((entry["question"], (ds, entry)) for entry in ds)
    return found


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


def test_answers_verify_and_wrong_answers_do_not(
    records: list[dict[str, Any]], entries: dict[str, tuple[Any, dict[str, Any]]]
) -> None:
    """Every clean answer scores 1.0 with its task's verifier; every planted wrong one < 1."""
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


def test_fewer_records_than_cells() -> None:
    """n below the 32 (family, level) cells fills the first n cells with one problem each."""
    recs = build_demo_records(n=5, seed=0, corrupt_share=0.0)
    assert len(recs) == 5 and len({(r["task"], r["difficulty"]) for r in recs}) == 5


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


# --- preference and chat sets -------------------------------------------------------------------

# How each style marks its answer, written out here (not taken from core.demo_data): the whole
# last line is prefix + answer + suffix; the tagged style is read by reasoning-gym's extractor.
_SLOTS = {
    "terse": ("The answer is ", "."),
    "worked": ("So the answer is ", "."),
    "boxed": ("Final answer: \\boxed{", "}"),
    "hedged": ("I think it might be ", ", but I'm not sure."),
    "confirm": ("I double-checked it, and the answer is ", "."),
}


def _stated(text: str) -> tuple[str, str]:
    """(style, the answer the response states), read without core.demo_data's code."""
    tagged = extract_answer(text)  # reasoning-gym's own <answer>...</answer> extraction
    if tagged is not None:
        return "tagged", tagged
    lines = text.split("\n")
    if len(lines) == 3 and lines[0] == "Let me work through this step by step.":
        style, last = "worked", lines[2]
    else:
        assert len(lines) == 1, text
        style, last = "", lines[0]
    for name, (prefix, suffix) in _SLOTS.items():
        if (name == "worked") == (style == "worked") and last.startswith(prefix):
            assert last.endswith(suffix), text
            return name, last[len(prefix) : len(last) - len(suffix)]
    raise AssertionError(f"no answer slot in {text!r}")


def _score(entries: dict[str, tuple[Any, dict[str, Any]]], prompt: str, text: str) -> float:
    ds, entry = entries[prompt]
    return ds.score_answer(_stated(text)[1], entry)


@pytest.fixture(scope="module")
def preferences(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return build_demo_preferences(records, seed=0)


def test_preferences_are_verified_by_reasoning_gym(
    preferences: list[dict[str, Any]],
    records: list[dict[str, Any]],
    entries: dict[str, tuple[Any, dict[str, Any]]],
) -> None:
    """Every chosen states an answer its task scores 1.0, every rejected one it scores < 1.0."""
    clean = [r for r in records if r["corruption"] == "none"]
    assert [p["source_id"] for p in preferences] == [r["id"] for r in clean]
    assert [p["id"] for p in preferences] == [r["id"].replace("demo-", "pref-") for r in clean]
    n_rejected = 0
    for p, r in zip(preferences, clean, strict=True):
        assert (p["prompt"], p["answer"], p["task"]) == (r["prompt"], r["answer"], r["task"])
        assert p["difficulty"] == r["difficulty"]
        assert _score(entries, p["prompt"], p["chosen"]) == 1.0, p["chosen"]
        assert _stated(p["chosen"])[1] in (p["answer"], p["answer"].strip("$"))
        for text in p["rejected"]:
            assert _score(entries, p["prompt"], text) < 1.0, text
        stated = [_stated(text)[1] for text in p["rejected"]]
        assert len(set(stated)) == len(stated) and p["answer"] not in stated
        n_rejected += len(p["rejected"])
    assert n_rejected > len(preferences)  # some rows have several


def test_preferences_rejected_counts_vary(preferences: list[dict[str, Any]]) -> None:
    counts = Counter(len(p["rejected"]) for p in preferences)
    assert set(counts) == {1, 2, 3} and min(counts.values()) > len(preferences) / 6
    assert all(p["n_rejected"] == len(p["rejected"]) for p in preferences)
    ones = build_demo_preferences(build_demo_records(n=40, corrupt_share=0.0), n_rejected=1)
    assert {len(p["rejected"]) for p in ones} == {1}
    fives = build_demo_preferences(build_demo_records(n=40, corrupt_share=0.0), n_rejected=5)
    assert max(len(p["rejected"]) for p in fives) == 5


def test_preference_styles_are_independent_of_correctness(
    preferences: list[dict[str, Any]],
) -> None:
    """Each style is on both sides at about the same rate; the style tags name the texts' style."""
    chosen: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for p in preferences:
        styles = p["style_rejected"].split(",")
        assert _stated(p["chosen"])[0] == p["style_chosen"]
        assert [_stated(text)[0] for text in p["rejected"]] == styles
        chosen[p["style_chosen"]] += 1
        rejected.update(styles)
    assert set(chosen) == set(rejected) == set(DEMO_STYLES)
    n_c, n_r = chosen.total(), rejected.total()
    for style in DEMO_STYLES:
        assert abs(chosen[style] / n_c - rejected[style] / n_r) < 0.08, (chosen, rejected)
    assert (
        "templated" in DEMO_PREFERENCE_SOURCE.lower() and "score_answer" in DEMO_PREFERENCE_SOURCE
    )


def test_preferences_file_ingests(tmp_path: Path, preferences: list[dict[str, Any]]) -> None:
    path = write_demo_preferences(tmp_path / "sub" / "prefs.jsonl", n=N, seed=0)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == N  # all N problems, none corrupted

    # a row's draws depend on (seed, id) only; the reasoning-gym metadata holds the entry's index
    # in its generated cell, which depends on n
    def drawn(rs):
        return [{k: v for k, v in r.items() if k != "metadata"} for r in rs]

    ids = {p["source_id"] for p in preferences}
    assert drawn(r for r in rows if r["source_id"] in ids) == drawn(preferences)
    t = read_dataset(path, kind="preferences")
    assert t.n == N and t.kind == "preferences"
    assert t.examples.column("id").to_pylist() == [r["id"] for r in rows]
    assert t.examples.column("answer").to_pylist() == [r["answer"] for r in rows]
    responses = t.responses.to_pylist()
    assert len(responses) == sum(1 + len(r["rejected"]) for r in rows)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for resp in responses:
        by_id.setdefault(resp["example_id"], []).append(resp)
    for r in rows:
        got = by_id[r["id"]]
        assert [x["response_idx"] for x in got] == list(range(1 + len(r["rejected"])))
        assert [x["role"] for x in got] == ["chosen"] + ["rejected"] * len(r["rejected"])
        assert [x["text"] for x in got] == [r["chosen"], *r["rejected"]]
    assert {x["name"] for x in t.labels.to_pylist()} == {"difficulty", "n_rejected"}
    tags = [json.loads(s) for s in t.examples.column("tags").to_pylist()]
    assert tags == [
        {k: r[k] for k in ("task", "style_chosen", "style_rejected", "source_id")} for r in rows
    ]


@pytest.fixture(scope="module")
def chats(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return build_demo_chats(records, seed=0)


def test_chats_are_verified_by_reasoning_gym(
    chats: list[dict[str, Any]],
    records: list[dict[str, Any]],
    entries: dict[str, tuple[Any, dict[str, Any]]],
) -> None:
    clean = [r for r in records if r["corruption"] == "none"]
    assert [c["source_id"] for c in chats] == [r["id"] for r in clean]
    turns = Counter(len(c["messages"]) for c in chats)
    assert set(turns) == {2, 4} and min(turns.values()) > len(chats) / 5
    styles = Counter(c["style"] for c in chats)
    assert set(styles) == set(DEMO_STYLES)
    for c, r in zip(chats, clean, strict=True):
        m = c["messages"]
        assert [t["role"] for t in m] == ["user", "assistant"] * (len(m) // 2)
        assert m[0]["content"] == r["prompt"] and c["turns"] == len(m)
        assert _stated(m[1]["content"])[0] == c["style"]
        if len(m) == 4:
            assert m[2]["content"] in DEMO_FOLLOW_UPS
            assert _stated(m[3]["content"])[0] == "confirm"
        for t in m[1::2]:
            assert _score(entries, r["prompt"], t["content"]) == 1.0, t["content"]
        assert "feedback" not in c
    assert "templated" in DEMO_CHAT_SOURCE.lower()


def test_chats_file_ingests(tmp_path: Path) -> None:
    path = write_demo_chats(tmp_path / "sub" / "chats.jsonl", n=N, seed=0)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    t = read_dataset(path, kind="chats")
    assert t.n == len(rows) == N and t.responses.num_rows == 0
    assert t.examples.column("id").to_pylist() == [r["id"] for r in rows]
    texts = ["\n".join(f"{m['role']}: {m['content']}" for m in r["messages"]) for r in rows]
    assert t.examples.column("text").to_pylist() == texts
    # ingest's prompt is the last user turn: the follow-up in a four-turn chat
    last_user = [[m for m in r["messages"] if m["role"] == "user"][-1]["content"] for r in rows]
    assert t.examples.column("prompt").to_pylist() == last_user
    labels = t.labels.to_pylist()
    assert {x["name"] for x in labels} == {"difficulty", "turns"}  # no feedback label
    assert len(labels) == 2 * N
    tags = [json.loads(s) for s in t.examples.column("tags").to_pylist()]
    assert tags == [{k: r[k] for k in ("task", "style", "source_id")} for r in rows]


def test_preference_and_chat_files_are_deterministic(tmp_path: Path) -> None:
    for write in (write_demo_preferences, write_demo_chats):
        a = write(tmp_path / "a.jsonl", n=100, seed=0)
        b = write(tmp_path / "sub" / "b.jsonl", n=100, seed=0)
        other = write(tmp_path / "c.jsonl", n=100, seed=1)
        assert a.read_bytes() == b.read_bytes() != other.read_bytes(), write.__name__


def test_responses_render_and_read_back() -> None:
    """Every style states every family's answer in a slot the extractor reads back exactly."""
    for task in DEMO_TASKS:
        for style in (*DEMO_STYLES, "confirm"):
            for answer in ("12", "$\\frac{3}{4}$", "b, a, c", "['-1.5', '2.0']"):
                text = render_demo_response(style, task=task, answer=answer)
                want = "\\frac{3}{4}" if style == "boxed" and answer.startswith("$") else answer
                assert extract_demo_answer(text) == (style, want)
                assert _stated(text) == (style, want)
    assert extract_demo_answer("The answer is probably 12") is None
    assert extract_demo_answer("I think it might be 12, but I'm not sure.") == ("hedged", "12")


def test_preferences_and_chats_reject_bad_input(records: list[dict[str, Any]]) -> None:
    with pytest.raises(StudioError, match="n_rejected"):
        build_demo_preferences(records[:4], n_rejected=0)
    with pytest.raises(StudioError, match="follow_up_share"):
        build_demo_chats(records[:4], follow_up_share=2.0)
    with pytest.raises(StudioError, match="not a seed-1"):  # built with seed 0
        build_demo_preferences(records, seed=1)
    with pytest.raises(StudioError, match="is not a demo cell"):
        build_demo_chats([{**records[0], "corruption": "none", "task": "chess"}])
    with pytest.raises(StudioError, match="unknown response style"):
        render_demo_response("shouty", task="chain_sum", answer="1")
    assert build_demo_preferences([r for r in records if r["corruption"] != "none"]) == []
