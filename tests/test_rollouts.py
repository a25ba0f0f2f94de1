"""core.rollouts: every input form reads to the same rows, pass@k, labels, summary, bad input."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import core.rollouts
from core.errors import StudioError
from core.ingest import LABELS_SCHEMA
from core.rollouts import (
    ROLLOUTS_SCHEMA,
    pass_at_k,
    read_rollouts,
    rollout_labels,
    rollout_summary,
)

# The hand case every form below encodes: q1 passes 2 of 4 (passes first, so the counts-only
# form can say the same), q2 fails all 3, q3 passes its one rollout.
OUTCOMES: dict[str, list[bool]] = {
    "q1": [True, True, False, False],
    "q2": [False, False, False],
    "q3": [True],
}
EXPECTED = pa.table(
    {
        "example_id": [q for q, out in OUTCOMES.items() for _ in out],
        "sample_idx": pa.array(
            [k for out in OUTCOMES.values() for k in range(len(out))], pa.int32()
        ),
        "passed": [p for out in OUTCOMES.values() for p in out],
    },
    schema=ROLLOUTS_SCHEMA,
)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def one_per_rollout(make: Any) -> list[dict[str, Any]]:
    return [make(q, k, p) for q, out in OUTCOMES.items() for k, p in enumerate(out)]


FORMS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "passed bool": (one_per_rollout(lambda q, k, p: {"id": q, "passed": p}), {}),
    "passed 0/1": (one_per_rollout(lambda q, k, p: {"id": q, "passed": int(p)}), {}),
    "score 0/1": (one_per_rollout(lambda q, k, p: {"id": q, "score": float(p)}), {}),
    "reward + threshold": (
        one_per_rollout(lambda q, k, p: {"id": q, "reward": 0.9 if p else 0.2}),
        {"threshold": 0.5},
    ),
    "explicit sample_idx, shuffled": (
        sorted(  # later samples first, prompts interleaved; ids still first seen q1, q2, q3
            one_per_rollout(lambda q, k, p: {"id": q, "sample_idx": k, "passed": p}),
            key=lambda r: -r["sample_idx"],
        ),
        {},
    ),
    "sample (int)": (
        one_per_rollout(lambda q, k, p: {"id": q, "sample": k, "passed": p, "text": "..."}),
        {},
    ),
    "sample (response text) ignored": (
        one_per_rollout(lambda q, k, p: {"id": q, "sample": f"answer {k}", "passed": p}),
        {},
    ),
    "example_id": (one_per_rollout(lambda q, k, p: {"example_id": q, "passed": p}), {}),
    "custom id field": (
        one_per_rollout(lambda q, k, p: {"qid": q, "id": "x", "passed": p}),
        {"id_field": "qid"},
    ),
    "passes list": (
        [{"id": q, "passes": [int(p) for p in out]} for q, out in OUTCOMES.items()],
        {},
    ),
    "rewards list": (
        [{"id": q, "rewards": [0.7 if p else 0.1 for p in out]} for q, out in OUTCOMES.items()],
        {"threshold": 0.5},
    ),
    "counts": ([{"id": q, "n": len(out), "n_pass": sum(out)} for q, out in OUTCOMES.items()], {}),
    "mixed forms, split list": (
        [
            {"id": "q1", "passes": [1, 1]},
            {"id": "q2", "n": 3, "n_pass": 0},
            {"id": "q1", "passed": False},
            {"id": "q3", "reward": 1},
            {"id": "q1", "passed": 0},
        ],
        {},
    ),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_reads_to_the_same_rows(tmp_path: Path, form: str) -> None:
    records, options = FORMS[form]
    table = read_rollouts(write_jsonl(tmp_path / "r.jsonl", records), **options)
    assert table.schema.equals(ROLLOUTS_SCHEMA)
    assert table.equals(EXPECTED), table.to_pylist()


def test_other_file_types(tmp_path: Path) -> None:
    records = [
        {"id": q, "sample_idx": k, "passed": p}
        for q, out in OUTCOMES.items()
        for k, p in enumerate(out)
    ]
    (tmp_path / "r.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "r.parquet")
    csv_rows = [f"{r['id']},{r['sample_idx']},{str(r['passed']).lower()}" for r in records]
    (tmp_path / "r.csv").write_text("id,sample_idx,passed\n" + "\n".join(csv_rows) + "\n")
    lists = ["id,passes\n"] + [f'{q},"{[int(p) for p in out]}"\n' for q, out in OUTCOMES.items()]
    (tmp_path / "lists.csv").write_text("".join(lists))
    for name in ("r.json", "r.parquet", "r.csv", "lists.csv"):
        assert read_rollouts(tmp_path / name).equals(EXPECTED), name


def test_integer_ids_read_as_text(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": 7, "passed": 1}, {"id": 7.0, "passed": 0}])
    table = read_rollouts(path)
    assert table.column("example_id").to_pylist() == ["7", "7"]
    assert table.column("sample_idx").to_pylist() == [0, 1]


# --- bad input: one line naming file, line and field ------------------------------------------

BAD: list[tuple[str, list[str], int, str, str]] = [
    # (case, JSONL lines, line of the error, field named, more of the message)
    (
        "bad passed",
        ['{"id": "a", "passed": "maybe"}'],
        1,
        "passed",
        "expected true/false or 0/1, got 'maybe'",
    ),
    ("passed 2", ['{"id": "a", "passed": 1}', '{"id": "a", "passed": 2}'], 2, "passed", "got 2"),
    ("missing id", ['{"id": "a", "passed": 1}', "", '{"passed": 1}'], 3, "id", "is missing"),
    ("no id column", ['{"passed": 1}'], 1, "id", "is missing"),
    ("blank id", ['{"id": "  ", "passed": 1}'], 1, "id", "is empty"),
    ("list id", ['{"id": ["a"], "passed": 1}'], 1, "id", "string or integer"),
    ("score without threshold", ['{"id": "a", "score": 0.7}'], 1, "score", "give a threshold"),
    ("text reward", ['{"id": "a", "reward": "high"}'], 1, "reward", "finite number"),
    ("nan reward", ['{"id": "a", "reward": NaN}'], 1, "reward", "finite number"),
    ("rewards item", ['{"id": "a", "rewards": [1, 0.5]}'], 1, "rewards", "item 2"),
    ("passes item", ['{"id": "a", "passes": [1, "x"]}'], 1, "passes", "item 2"),
    ("passes not a list", ['{"id": "a", "passes": 3}'], 1, "passes", "non-empty list"),
    ("passes empty", ['{"id": "a", "passes": []}'], 1, "passes", "empty list"),
    ("n_pass > n", ['{"id": "a", "n": 3, "n_pass": 4}'], 1, "n_pass", "more than n = 3"),
    ("negative n", ['{"id": "a", "n": -2, "n_pass": 0}'], 1, "n", "positive integer"),
    ("zero n", ['{"id": "a", "n": 0, "n_pass": 0}'], 1, "n", "positive integer"),
    ("fractional n", ['{"id": "a", "n": 2.5, "n_pass": 0}'], 1, "n", "positive integer"),
    ("negative n_pass", ['{"id": "a", "n": 2, "n_pass": -1}'], 1, "n_pass", "non-negative"),
    ("n without n_pass", ['{"id": "a", "n": 8}'], 1, "n_pass", "is missing"),
    ("n_pass without n", ['{"id": "a", "n_pass": 8}'], 1, "n", "is missing"),
    ("no outcome", ['{"id": "a", "text": "hi"}'], 1, "passed", "no outcome field"),
    ("two verdicts", ['{"id": "a", "passed": 1, "passes": [1]}'], 1, "passes", "both given"),
    ("two scores", ['{"id": "a", "reward": 1, "score": 1}'], 1, "score", "both given"),
    (
        "duplicate sample",
        ['{"id": "a", "sample_idx": 0, "passed": 1}', '{"id": "a", "sample_idx": 0, "passed": 0}'],
        2,
        "sample_idx",
        "duplicate rollout (id 'a', sample 0; first at line 1)",
    ),
    (
        "explicit index after list",
        ['{"id": "a", "passes": [1, 0]}', '{"id": "a", "sample_idx": 1, "passed": 0}'],
        2,
        "sample_idx",
        "duplicate rollout",
    ),
    (
        "negative sample",
        ['{"id": "a", "sample_idx": -1, "passed": 1}'],
        1,
        "sample_idx",
        "non-negative",
    ),
    (
        "sample_idx on a list",
        ['{"id": "a", "sample_idx": 0, "passes": [1, 0]}'],
        1,
        "sample_idx",
        "one-rollout",
    ),
    (
        "malformed JSON",
        ['{"id": "a", "passed": 1}', '{"id": "a", "passed": }'],
        2,
        "",
        "malformed JSON",
    ),
]


@pytest.mark.parametrize(
    ("lines", "line", "field", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_input_names_file_line_and_field(
    tmp_path: Path, lines: list[str], line: int, field: str, message: str
) -> None:
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(StudioError) as err:
        read_rollouts(path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"rollouts.jsonl line {line}: "), text
    if field:
        assert f"'{field}'" in text, text
    assert message in text, text


def test_bad_input_in_csv_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("id,passed\na,true\nb,maybe\n", encoding="utf-8")
    with pytest.raises(StudioError, match=r"^r\.csv line 3: field 'passed': expected true/false"):
        read_rollouts(path)


def test_empty_file_and_bad_threshold(tmp_path: Path) -> None:
    empty = tmp_path / "rollouts.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(StudioError, match=r"^rollouts\.jsonl: no records"):
        read_rollouts(empty)
    with pytest.raises(StudioError, match="no such file"):
        read_rollouts(tmp_path / "missing.jsonl")
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"id": "a", "reward": 0.5}])
    with pytest.raises(StudioError, match="threshold"):
        read_rollouts(ok, threshold=math.nan)
    assert read_rollouts(ok, threshold=0.5).column("passed").to_pylist() == [True]
    assert read_rollouts(ok, threshold=0.51).column("passed").to_pylist() == [False]


# --- pass@k -------------------------------------------------------------------------------------


def comb_pass_at_k(n: int, c: int, k: int) -> float:
    return math.nan if n < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [
        (8, 0, 1),  # c = 0
        (8, 0, 8),
        (8, 8, 1),  # c = n
        (8, 8, 8),
        (8, 3, 1),
        (8, 3, 4),
        (8, 3, 8),  # k = n
        (8, 5, 4),  # n - c < k: every 4-subset holds a pass
        (5, 1, 5),
        (1, 1, 1),
        (1, 0, 1),
        (64, 2, 16),
        (3, 1, 4),  # n < k
        (0, 0, 1),
    ],
)
def test_pass_at_k_matches_combinatorics(n: int, c: int, k: int) -> None:
    got = float(pass_at_k(np.array([n]), np.array([c]), k)[0])
    want = comb_pass_at_k(n, c, k)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_pass_at_k_vectorised_over_a_grid() -> None:
    n, c = np.meshgrid(np.arange(0, 21), np.arange(0, 21), indexing="ij")
    ok = c <= n
    n, c = n[ok], c[ok]
    for k in (1, 2, 5, 10):
        got = pass_at_k(n, c, k)
        want = np.array([comb_pass_at_k(int(a), int(b), k) for a, b in zip(n, c, strict=True)])
        assert got.shape == n.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        assert np.all(np.isnan(got) == (n < k))
    assert pass_at_k(np.array([[8, 8], [4, 2]]), np.array([[0, 8], [2, 1]]), 4).shape == (2, 2)


def test_pass_at_k_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k(np.array([4]), np.array([1]), 0)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(np.array([4]), np.array([5]), 1)


# --- labels and summary -------------------------------------------------------------------------


def labels_of(table: pa.Table) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in table.to_pylist():
        out.setdefault(r["example_id"], {})[r["name"]] = r["value"]
    return out


def test_labels_per_prompt() -> None:
    labels = rollout_labels(EXPECTED, ks=(1, 2, 4))
    assert labels.schema.equals(LABELS_SCHEMA)
    assert list(labels_of(labels)) == ["q1", "q2", "q3"]  # prompt by prompt, first-seen order
    by = labels_of(labels)
    assert by["q1"] == {
        "n_rollouts": 4.0,
        "pass_rate": 0.5,
        "pass_at_1": 0.5,
        "pass_at_2": pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2)),
        "pass_at_4": 1.0,
        "zero_signal": 0.0,
    }
    # q2: 3 rollouts, so no pass@4; q3: a single rollout has pass@1 only
    assert by["q2"] == {
        "n_rollouts": 3.0,
        "pass_rate": 0.0,
        "pass_at_1": 0.0,
        "pass_at_2": 0.0,
        "zero_signal": 1.0,
    }
    assert by["q3"] == {"n_rollouts": 1.0, "pass_rate": 1.0, "pass_at_1": 1.0, "zero_signal": 1.0}


@pytest.mark.parametrize(
    ("outcomes", "zero"),
    [
        ([True] * 8, 1.0),
        ([False] * 8, 1.0),
        ([True] * 7 + [False], 0.0),
        ([False] * 7 + [True], 0.0),
        ([True, False], 0.0),
    ],
)
def test_zero_signal_exactly_when_the_group_agrees(outcomes: list[bool], zero: float) -> None:
    table = pa.table(
        {
            "example_id": ["p"] * len(outcomes),
            "sample_idx": pa.array(range(len(outcomes)), pa.int32()),
            "passed": outcomes,
        },
        schema=ROLLOUTS_SCHEMA,
    )
    assert labels_of(rollout_labels(table))["p"]["zero_signal"] == zero


def test_labels_reject_bad_k() -> None:
    with pytest.raises(StudioError, match="positive integer k"):
        rollout_labels(EXPECTED, ks=(1, 0))


def test_summary_on_a_hand_case() -> None:
    summary = rollout_summary(EXPECTED)
    assert summary == {
        "n_prompts": 3,
        "n_rollouts": 8,
        "samples_per_prompt": {"min": 1, "median": 3.0, "max": 4},
        "mean_pass_rate": pytest.approx((0.5 + 0.0 + 1.0) / 3),
        "n_all_pass": 1,
        "n_all_fail": 1,
        "zero_signal_share": pytest.approx(2 / 3),
    }
    json.dumps(summary)  # JSON-ready
    empty = rollout_summary(ROLLOUTS_SCHEMA.empty_table())
    assert empty["n_prompts"] == 0 and empty["zero_signal_share"] is None
    assert rollout_labels(ROLLOUTS_SCHEMA.empty_table()).num_rows == 0


def test_module_docstring_example_runs() -> None:
    result = doctest.testmod(core.rollouts)
    assert result.attempted >= 4 and result.failed == 0
