"""Verifier rewards: answer extraction, normalised match, reasoning-gym's own checkers."""

import json

import pytest

from core.demo_data import write_demo_preferences
from core.verifiers import extract_answer, match_score, normalise, reasoning_gym_score, verify


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("The answer is 42.", "42"),
        ("Final answer: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("<think>\nadd\n</think>\n<answer>7, 8</answer>", "7, 8"),
        ("I think it might be 12, but I'm not sure.", "12"),
        ("work\nmore work\n17", "17"),
        ("Answer: Paris", "Paris"),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_normalised_match_and_numbers():
    assert normalise("  $1,234$. ") == "1234"
    assert match_score("The answer is 1,234.", "1234") == 1.0
    assert match_score("The answer is 3.0", "3") == 1.0
    assert match_score("The answer is paris", "Paris") == 1.0
    assert match_score("The answer is 4", "5") == 0.0
    assert match_score(None, "5") == 0.0 and match_score("The answer is 5", None) == 0.0


def test_reasoning_gym_checker_and_fallback():
    assert reasoning_gym_score("chain_sum", "The answer is -4.", "-4") == 1.0
    assert reasoning_gym_score("chain_sum", "The answer is 5.", "-4") == 0.0
    assert reasoning_gym_score("not_a_task", "The answer is 5.", "5") is None
    out = verify(["The answer is 5.", "The answer is 5."], ["5", "5"], tasks=["chain_sum", None])
    assert [v.method for v in out] == ["reasoning-gym:chain_sum", "match"]
    assert [v.score for v in out] == [1.0, 1.0]


def test_the_demo_preference_set_verifies(tmp_path):
    """Every chosen response passes its task's checker and no rejected one does."""
    path = write_demo_preferences(tmp_path / "p.jsonl", n=60, seed=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    chosen = verify(
        [r["chosen"] for r in rows],
        [r["answer"] for r in rows],
        tasks=[r["task"] for r in rows],
        metadata=[r["metadata"] for r in rows],
    )
    assert all(v.score == 1.0 and v.method.startswith("reasoning-gym") for v in chosen)
    rejected = [
        (resp, r["answer"], r["task"], r["metadata"]) for r in rows for resp in r["rejected"]
    ]
    resp, truth, task, meta = map(list, zip(*rejected, strict=True))
    verdicts = verify(resp, truth, tasks=task, metadata=meta)
    assert all(v.score < 1.0 and v.method.startswith("reasoning-gym") for v in verdicts)


def test_verify_command_stores_a_reward_run(tmp_path, capsys):
    """`verify` on the demo preference set: every chosen response scores 1, every rejected
    below 1, stored beside reward models' scores; a chat set without answers is one line."""
    from core.demo_data import write_demo_chats
    from core.store import Store
    from tests.conftest import run_cli

    db = tmp_path / "v.duckdb"
    prefs = write_demo_preferences(tmp_path / "p.jsonl", n=40, seed=0)
    chats = write_demo_chats(tmp_path / "c.jsonl", n=10, seed=0)
    assert (
        run_cli("ingest", str(prefs), "--db", str(db), "--dataset", "p", "--kind", "preferences")
        == 0
    )
    assert run_cli("ingest", str(chats), "--db", str(db), "--dataset", "c", "--kind", "chats") == 0
    assert run_cli("verify", "--db", str(db), "--dataset", "p") == 0
    store = Store(db)
    scores = store.reward_scores(store.reward_runs("p")["verifier"]).to_pandas()
    assert len(scores) == sum(
        1 + len(json.loads(x)["rejected"]) for x in prefs.read_text().splitlines()
    )
    assert (scores.loc[scores["role"] == "chosen", "value"] == 1.0).all()
    assert (scores.loc[scores["role"] == "rejected", "value"] < 1.0).all()
    capsys.readouterr()
    assert run_cli("verify", "--db", str(db), "--dataset", "c") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "answer" in err


def test_judge_compares_reward_sources(tmp_path, capsys):
    """`judge`: each source's accuracies with chance, and the agreement of every two; an
    inverted imported source is judged at 0 and disagrees with the verifier on every pair."""
    from core.store import Store
    from tests.conftest import run_cli

    db = tmp_path / "j.duckdb"
    prefs = write_demo_preferences(tmp_path / "p.jsonl", n=30, seed=0)
    assert (
        run_cli("ingest", str(prefs), "--db", str(db), "--dataset", "p", "--kind", "preferences")
        == 0
    )
    assert run_cli("verify", "--db", str(db), "--dataset", "p") == 0
    store = Store(db)
    scores = store.reward_scores(store.reward_runs("p")["verifier"]).to_pylist()
    inverted = tmp_path / "inv.jsonl"
    inverted.write_text(
        "".join(
            json.dumps(
                {
                    "example_id": r["example_id"],
                    "response_idx": r["response_idx"],
                    "score": 1.0 if r["role"] == "rejected" else 0.0,
                }
            )
            + "\n"
            for r in scores
        )
    )
    args = ["import-rewards", str(inverted), "--db", str(db), "--dataset", "p", "--name", "inv"]
    assert run_cli(*args) == 0
    capsys.readouterr()
    assert run_cli("judge", "--db", str(db), "--dataset", "p") == 0
    out = capsys.readouterr().out
    assert "verifier: " in out and "pairwise accuracy 1.000" in out
    assert "inv: " in out and "pairwise accuracy 0.000" in out
    assert "inv vs verifier" in out and "pair agreement 0.000" in out
    assert run_cli("judge", "--db", str(db), "--dataset", "p", "--names", "nope") == 2


def test_a_checker_that_cannot_judge_without_metadata_falls_back_to_the_match():
    """fraction_simplification's score_answer needs the entry's metadata and returns 0.01
    (no error) without it: the right answer must still score 1 through the match."""
    import reasoning_gym

    entry = reasoning_gym.create_dataset("fraction_simplification", size=1, seed=0)[0]
    said = f"The answer is {entry['answer']}."
    assert reasoning_gym_score("fraction_simplification", said, entry["answer"]) is None
    with_meta = reasoning_gym_score(
        "fraction_simplification", said, entry["answer"], metadata=entry["metadata"]
    )
    assert with_meta == 1.0
    verdict = verify([said], [entry["answer"]], tasks=["fraction_simplification"])[0]
    assert (verdict.score, verdict.method) == (1.0, "match")
