"""The embedded demo dataset: reasoning-gym prompts with known difficulty and planted bad items.

Every record is a verified reasoning-gym problem from one of eight task families at one of four
difficulty levels (each level widens the generator's config ranges). A small, seeded share of the
records is corrupted on purpose so the quality probe and the filters have something to find:

    >>> recs = build_demo_records(n=64, seed=0, corrupt_share=0.1)
    >>> sorted(recs[0])
    ['answer', 'corruption', 'difficulty', 'id', 'prompt', 'quality', 'task']

Everything runs offline and is deterministic in ``seed``.

No model that runs offline can really solve these tasks, so the demo's RL rollouts are
**simulated** (:func:`write_demo_rollouts`, labelled by :data:`DEMO_ROLLOUT_SOURCE`): a toy
policy passes with a probability set by the task's ease and the difficulty level.

Two more sets show the other data kinds, built from the same clean problems (corrupted ones
skipped) with **templated** responses, not model outputs:

- preferences (:func:`write_demo_preferences`, kind "preferences"): per problem 1 chosen and
  1..``n_rejected`` rejected responses (N drawn per problem, so 1-of-N chance differs). Every
  response states its answer in a marked slot; :func:`extract_demo_answer` reads the slot back
  and the task's own reasoning-gym ``score_answer`` scores that exact string against the
  regenerated entry: 1.0 for the chosen, < 1.0 for each (distinct) rejected answer. The score
  is of the slot, not of the whole text: these verifiers compare a bare answer, so a whole
  right response scores below 1.0 (prime_factorization's raises). No score is made up.
- chats (:func:`write_demo_chats`, kind "chats"): the problem and a verified-correct answer; some
  rows add a follow-up ("Can you double-check that?") and a verified confirmation. No
  ``feedback`` label: nothing here could honestly supply one.

A response's style (:data:`DEMO_STYLES`: terse, worked, boxed, hedged, tagged) is drawn
independently of whether it is chosen or rejected, so style is no shortcut to correctness; the
styles are kept as tags (``style_chosen``, ``style_rejected``) to show whether a reward model
is swayed by them.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import StudioError

# family -> one generator config per difficulty level (level = position + 1). Each level widens the
# ranges that make the problem harder (more terms, more digits, bigger numbers, longer lists).
DEMO_TASKS: dict[str, tuple[dict[str, Any], ...]] = {
    "chain_sum": (
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
        {"min_terms": 3, "max_terms": 3, "min_digits": 2, "max_digits": 2},
        {"min_terms": 4, "max_terms": 4, "min_digits": 3, "max_digits": 3},
        {"min_terms": 5, "max_terms": 6, "min_digits": 4, "max_digits": 4},
    ),
    "basic_arithmetic": (
        {
            "min_terms": 2,
            "max_terms": 2,
            "min_digits": 1,
            "max_digits": 2,
            "operators": ("+", "-"),
            "allow_parentheses": False,
            "allow_negation": False,
        },
        {
            "min_terms": 3,
            "max_terms": 3,
            "min_digits": 1,
            "max_digits": 2,
            "operators": ("+", "-", "*"),
            "allow_parentheses": False,
            "allow_negation": False,
        },
        {"min_terms": 4, "max_terms": 4, "min_digits": 2, "max_digits": 2},
        {"min_terms": 5, "max_terms": 6, "min_digits": 2, "max_digits": 3},
    ),
    "fraction_simplification": (
        {"min_value": 1, "max_value": 20, "min_factor": 2, "max_factor": 5},
        {"min_value": 5, "max_value": 100, "min_factor": 2, "max_factor": 20},
        {"min_value": 20, "max_value": 1000, "min_factor": 5, "max_factor": 100},
        {"min_value": 100, "max_value": 10000, "min_factor": 20, "max_factor": 1000},
    ),
    "prime_factorization": (
        {"min_value": 4, "max_value": 100},
        {"min_value": 100, "max_value": 1000},
        {"min_value": 1000, "max_value": 20000},
        {"min_value": 20000, "max_value": 1000000},
    ),
    "leg_counting": (
        {"min_animals": 1, "max_animals": 2, "min_instances": 1, "max_instances": 3},
        {"min_animals": 2, "max_animals": 4, "min_instances": 1, "max_instances": 8},
        {"min_animals": 4, "max_animals": 7, "min_instances": 2, "max_instances": 15},
        {"min_animals": 7, "max_animals": 12, "min_instances": 5, "max_instances": 30},
    ),
    "base_conversion": (
        {"min_base": 2, "max_base": 10, "min_value": 2, "max_value": 64},
        {"min_base": 2, "max_base": 16, "min_value": 64, "max_value": 1000},
        {"min_base": 2, "max_base": 16, "min_value": 1000, "max_value": 100000},
        {"min_base": 2, "max_base": 36, "min_value": 100000, "max_value": 10000000},
    ),
    "number_sorting": (
        {"min_numbers": 3, "max_numbers": 4, "min_decimals": 0, "max_decimals": 0},
        {"min_numbers": 5, "max_numbers": 7, "min_decimals": 0, "max_decimals": 1},
        {"min_numbers": 8, "max_numbers": 11, "min_decimals": 1, "max_decimals": 2},
        {
            "min_numbers": 12,
            "max_numbers": 16,
            "min_decimals": 2,
            "max_decimals": 3,
            "min_value": -1000.0,
            "max_value": 1000.0,
        },
    ),
    "word_sorting": (
        {"min_words": 3, "max_words": 4, "min_word_length": 3, "max_word_length": 6},
        {"min_words": 5, "max_words": 7, "min_word_length": 3, "max_word_length": 8},
        {"min_words": 8, "max_words": 11, "min_word_length": 3, "max_word_length": 10},
        {"min_words": 12, "max_words": 16, "min_word_length": 3, "max_word_length": 12},
    ),
}

CORRUPTIONS: tuple[str, ...] = ("wrong_answer", "truncated", "garbled")

# The simulated policy of the demo rollouts: logit of p(pass) = ease[task] - slope*(level - 1).
# Ease spreads the families from easy (chain_sum passes ~97% at level 1) to hard (base_conversion
# ~38%); with 8 samples this leaves roughly a quarter of the prompts all-pass or all-fail.
DEMO_EASE: dict[str, float] = {
    "chain_sum": 3.5,
    "leg_counting": 3.0,
    "basic_arithmetic": 2.5,
    "number_sorting": 2.0,
    "word_sorting": 1.5,
    "fraction_simplification": 1.0,
    "prime_factorization": 0.5,
    "base_conversion": -0.5,
}
DEMO_DIFFICULTY_SLOPE = 1.1
DEMO_SAMPLES = 8
DEMO_WRONG_ANSWER_PASS = 0.03  # the verifier's reference is wrong: only a matching mistake passes
DEMO_BROKEN_PROMPT_FACTOR = 0.25  # truncated or garbled question: mostly unanswerable
DEMO_ROLLOUT_SOURCE = (  # what the app and the run config show as the rollouts' source
    f"SIMULATED demo rollouts, not a model: p(pass) = sigmoid(ease[task] - "
    f"{DEMO_DIFFICULTY_SLOPE}*(difficulty-1)) (ease in core.demo_data.DEMO_EASE), "
    f"x{DEMO_BROKEN_PROMPT_FACTOR} for truncated/garbled prompts, {DEMO_WRONG_ANSWER_PASS} for "
    f"wrong reference answers; {DEMO_SAMPLES} samples per prompt"
)

_INT = re.compile(r"\d+")


def build_demo_records(
    *, n: int = 3000, seed: int = 0, corrupt_share: float = 0.04
) -> list[dict[str, Any]]:
    """Generate ``n`` verified demo prompts, balanced over families x levels, some corrupted.

    Each record: ``id`` ("demo-00001"...), ``prompt``, ``answer`` (str), ``task`` (family),
    ``difficulty`` (1..4), ``quality`` (1.0 clean / 0.0 corrupted) and ``corruption``
    ("none" | "wrong_answer" | "truncated" | "garbled"). Records come in a seeded shuffled order
    that does not depend on ``corrupt_share``: the same seed gives the same problems in the same
    places, only some of them corrupted.
    """
    if n < 1:
        raise StudioError(f"demo: n must be at least 1, got {n}")
    if not 0.0 <= corrupt_share <= 1.0:
        raise StudioError(f"demo: corrupt_share must be within 0..1, got {corrupt_share}")
    import reasoning_gym  # slow import, only needed here

    cells = [(task, level) for task, levels in DEMO_TASKS.items() for level in range(len(levels))]
    items: list[tuple[dict[str, Any], Any, str, int]] = []  # (entry, dataset, task, level 1..L)
    seen: set[str] = set()
    for c, (task, level) in enumerate(cells):
        want = n // len(cells) + (1 if c < n % len(cells) else 0)
        cell = cell_seed(seed=seed, task=task, level=level + 1)
        for entry, dataset in _verified_items(
            reasoning_gym, task, DEMO_TASKS[task][level], seed=cell, want=want, seen=seen
        ):
            items.append((entry, dataset, task, level + 1))

    rng = random.Random(seed)
    rng.shuffle(items)
    n_bad = round(len(items) * corrupt_share)
    bad = rng.sample(range(len(items)), n_bad)
    kinds = {i: CORRUPTIONS[j % len(CORRUPTIONS)] for j, i in enumerate(bad)}

    records = []
    for i, (entry, dataset, task, level) in enumerate(items):
        prompt, answer = entry["question"], str(entry["answer"])
        kind = kinds.get(i, "none")
        if kind == "wrong_answer":
            answer = _wrong_answer(answer, entry, dataset, rng)
        elif kind == "truncated":
            prompt = prompt[: max(1, int(len(prompt) * rng.uniform(0.3, 0.6)))].rstrip()
        elif kind == "garbled":
            prompt = _garble(prompt, rng)
        records.append(
            {
                "id": f"demo-{i + 1:05d}",
                "prompt": prompt,
                "answer": answer,
                "task": task,
                "difficulty": level,
                "quality": 0.0 if kind != "none" else 1.0,
                "corruption": kind,
            }
        )
    return records


def cell_seed(*, seed: int, task: str, level: int) -> int:
    """The reasoning-gym seed of one (task, level 1..L) cell, so its entries can be regenerated."""
    return seed * 10_000 + 100 * list(DEMO_TASKS).index(task) + level - 1


def write_demo_jsonl(
    path: str | Path, *, n: int = 3000, seed: int = 0, corrupt_share: float = 0.04
) -> Path:
    """Write :func:`build_demo_records` as JSONL (one record a line, UTF-8) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = build_demo_records(n=n, seed=seed, corrupt_share=corrupt_share)
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def demo_pass_probability(record: Mapping[str, Any]) -> float:
    """The simulated policy's chance to pass one demo record (see :data:`DEMO_ROLLOUT_SOURCE`)."""
    logit = DEMO_EASE[record["task"]] - DEMO_DIFFICULTY_SLOPE * (record["difficulty"] - 1)
    p = 1.0 / (1.0 + math.exp(-logit))
    corruption = record.get("corruption")
    if corruption is None:  # records without the kind: a bad one counts as a broken prompt
        corruption = "none" if record.get("quality", 1.0) == 1.0 else "garbled"
    if corruption == "wrong_answer":
        return DEMO_WRONG_ANSWER_PASS
    if corruption != "none":
        return p * DEMO_BROKEN_PROMPT_FACTOR
    return p


def write_demo_rollouts(
    path: str | Path,
    records: Sequence[Mapping[str, Any]] | str | Path,
    *,
    samples: int = DEMO_SAMPLES,
    seed: int = 0,
) -> Path:
    """Write SIMULATED rollouts for demo records as JSONL, one ``{"id", "sample_idx", "passed"}``
    line per rollout, ``samples`` per record in record order; return the path.

    ``records``: the dicts of :func:`build_demo_records` or the path of a
    :func:`write_demo_jsonl` file. Each record's draws are seeded by (``seed``, its id), so the
    file is byte-identical for the same seed and a record's rollouts do not depend on the others.
    """
    if samples < 1:
        raise StudioError(f"demo rollouts: samples must be at least 1, got {samples}")
    if isinstance(records, str | Path):
        located = _read_demo_jsonl(Path(records))
    else:
        located = [(f"demo record {i + 1}", rec) for i, rec in enumerate(records)]
    lines = []
    for where, rec in located:
        for key in ("id", "task", "difficulty"):
            if key not in rec:
                raise StudioError(f"{where}: field {key!r} is missing")
        if rec["task"] not in DEMO_EASE:
            raise StudioError(f"{where}: field 'task': {rec['task']!r} is not a demo task")
        if type(rec["difficulty"]) not in (int, float):
            raise StudioError(f"{where}: field 'difficulty': expected a number")
        p = demo_pass_probability(rec)
        rng = random.Random(f"demo-rollouts:{seed}:{rec['id']}")
        for k in range(samples):
            passed = rng.random() < p
            lines.append(json.dumps({"id": rec["id"], "sample_idx": k, "passed": passed}) + "\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _read_demo_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """("file line N", record) for each line of a :func:`write_demo_jsonl` file."""
    if not path.is_file():
        raise StudioError(f"{path.name}: no such file")
    located = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise StudioError(f"{where}: malformed JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise StudioError(f"{where}: expected a JSON object")
        located.append((where, rec))
    return located


# --- preference and chat sets -------------------------------------------------------------------

# How a demo response is written. The answer goes in one marked slot; :func:`extract_demo_answer`
# reads it back and that exact string is what reasoning-gym's ``score_answer`` checks.
DEMO_STYLES: tuple[str, ...] = ("terse", "worked", "boxed", "hedged", "tagged")
_STYLE_PATTERNS: dict[str, re.Pattern[str]] = {
    "terse": re.compile(r"The answer is (.+)\.", re.DOTALL),
    "worked": re.compile(
        r"Let me work through this step by step\.\n[^\n]+\nSo the answer is (.+)\.", re.DOTALL
    ),
    "boxed": re.compile(r"Final answer: \\boxed\{(.+)\}", re.DOTALL),
    "hedged": re.compile(r"I think it might be (.+), but I'm not sure\.", re.DOTALL),
    "tagged": re.compile(r"<think>\n[^\n]+\n</think>\n<answer>(.+)</answer>", re.DOTALL),
    # the chats' second assistant turn only, never a preference response
    "confirm": re.compile(r"I double-checked it, and the answer is (.+)\.", re.DOTALL),
}
# One line of method per family for the worked and tagged styles. No numbers in it, so it is
# neither right nor wrong and the line is the same for a correct and a wrong answer.
DEMO_METHODS: dict[str, str] = {
    "chain_sum": "I add and subtract the terms from left to right, keeping track of the signs.",
    "basic_arithmetic": "I do multiplication and division before addition and subtraction.",
    "fraction_simplification": "I divide the numerator and the denominator by their gcd.",
    "prime_factorization": "I divide by the smallest primes first until only primes remain.",
    "leg_counting": "I multiply each animal's count by its number of legs and add them up.",
    "base_conversion": "I convert the number to base 10 first, then into the target base.",
    "number_sorting": "I compare the numbers pairwise and put them in the requested order.",
    "word_sorting": "I compare the words character by character by their Unicode code points.",
}
DEMO_FOLLOW_UPS: tuple[str, ...] = (
    "Can you double-check that?",
    "Are you sure? Please check it again.",
    "Please verify your answer before I use it.",
)
DEMO_PREFERENCE_SOURCE = (  # what the app shows as the preference set's source
    "TEMPLATED demo responses, not a model: per reasoning-gym problem 1 chosen response whose "
    "marked answer scores 1.0 under the task's own score_answer and 1..N rejected responses "
    "whose (distinct) marked answers score < 1.0; the style of every response (terse, worked, "
    "boxed, hedged, tagged) is drawn independently of whether it is chosen or rejected"
)
DEMO_CHAT_SOURCE = (  # what the app shows as the chat set's source
    "TEMPLATED demo chats, not a model: a reasoning-gym problem and an assistant answer whose "
    "marked answer scores 1.0 under the task's own score_answer; some chats add a follow-up "
    "and a verified confirmation; no feedback labels"
)


def extract_demo_answer(text: str) -> tuple[str, str] | None:
    """``(style, answer)`` of a demo response: the string in its answer slot, or None.

    >>> extract_demo_answer("I think it might be 12, but I'm not sure.")
    ('hedged', '12')

    Each style is matched as a whole text (fixed start and end), so at most one matches and the
    slot is exactly what lies between them.
    """
    for style, pattern in _STYLE_PATTERNS.items():
        m = pattern.fullmatch(text)
        if m:
            return style, m.group(1)
    return None


def render_demo_response(style: str, *, task: str, answer: str) -> str:
    """A templated response in ``style`` (one of :data:`DEMO_STYLES` or "confirm") stating
    ``answer``. The boxed style drops the ``$...$`` around a LaTeX answer (a box is math already)."""
    if style == "terse":
        return f"The answer is {answer}."
    if style == "worked":
        return f"Let me work through this step by step.\n{DEMO_METHODS[task]}\nSo the answer is {answer}."
    if style == "boxed":
        inner = answer[1:-1] if len(answer) > 1 and answer[0] == answer[-1] == "$" else answer
        return f"Final answer: \\boxed{{{inner}}}"
    if style == "hedged":
        return f"I think it might be {answer}, but I'm not sure."
    if style == "tagged":
        return f"<think>\n{DEMO_METHODS[task]}\n</think>\n<answer>{answer}</answer>"
    if style == "confirm":
        return f"I double-checked it, and the answer is {answer}."
    raise StudioError(f"demo: unknown response style {style!r} (expected one of {DEMO_STYLES})")


def build_demo_preferences(
    records: Sequence[Mapping[str, Any]], *, n_rejected: int = 3, seed: int = 0
) -> list[dict[str, Any]]:
    """A verified preference set from clean demo records: 1 chosen and 1..``n_rejected`` rejected
    templated responses per problem (kind "preferences"; see :data:`DEMO_PREFERENCE_SOURCE`).

    ``records``: from :func:`build_demo_records` built with the same ``seed`` (each problem is
    regenerated from it to be scored); corrupted records are skipped. Each row: ``id``
    ("pref-00001" for "demo-00001"), ``prompt``, ``chosen``, ``rejected`` (list), ``answer``;
    tags ``task``, ``style_chosen``, ``style_rejected`` (comma-separated, in ``rejected``
    order), ``source_id``; labels ``difficulty``, ``n_rejected``; ``metadata`` (the
    reasoning-gym entry's, which its ``score_answer`` reads; kept in ``extra``). A row's draws (how many
    rejected, the wrong answers, every response's style) are seeded by (``seed``, record id).

        >>> rows = build_demo_preferences(build_demo_records(n=8, corrupt_share=0.0))
        >>> rows[0]["style_chosen"] in DEMO_STYLES and len(rows[0]["rejected"]) >= 1
        True
    """
    if n_rejected < 1:
        raise StudioError(f"demo preferences: n_rejected must be at least 1, got {n_rejected}")
    clean = [rec for rec in records if _is_clean(rec)]
    found = _demo_entries(clean, seed=seed)
    rows = []
    for rec in clean:
        entry, dataset = found[rec["id"]]
        rng = random.Random(f"demo-preferences:{seed}:{rec['id']}")
        k = rng.randint(1, n_rejected)
        wrong = _distinct_wrong_answers(str(entry["answer"]), entry, dataset, rng, k=k)
        styles = [rng.choice(DEMO_STYLES) for _ in range(1 + len(wrong))]
        chosen = _verified_response(styles[0], rec, entry, dataset, answer=str(entry["answer"]))
        rejected = [
            _verified_response(style, rec, entry, dataset, answer=w, correct=False)
            for style, w in zip(styles[1:], wrong, strict=True)
        ]
        rows.append(
            {
                "id": "pref-" + str(rec["id"]).removeprefix("demo-"),
                "prompt": rec["prompt"],
                "chosen": chosen,
                "rejected": rejected,
                "answer": str(entry["answer"]),
                "task": rec["task"],
                "difficulty": rec["difficulty"],
                "n_rejected": len(rejected),
                "style_chosen": styles[0],
                "style_rejected": ",".join(styles[1:]),
                "source_id": rec["id"],
                # the task's own entry metadata: reasoning-gym's checkers read it
                "metadata": entry["metadata"],
            }
        )
    return rows


def build_demo_chats(
    records: Sequence[Mapping[str, Any]], *, seed: int = 0, follow_up_share: float = 0.4
) -> list[dict[str, Any]]:
    """A verified chat set from clean demo records (kind "chats"; see :data:`DEMO_CHAT_SOURCE`).

    ``messages``: the problem and a verified-correct answer in a drawn style; for a seeded
    ``follow_up_share`` of the rows two more turns, a follow-up question and a verified
    confirmation. Tags ``task``, ``style``, ``source_id``; labels ``difficulty``, ``turns``.
    ``records`` and ``seed`` as in :func:`build_demo_preferences`. No ``feedback``: nothing here
    could honestly supply one.
    """
    if not 0.0 <= follow_up_share <= 1.0:
        raise StudioError(f"demo chats: follow_up_share must be within 0..1, got {follow_up_share}")
    clean = [rec for rec in records if _is_clean(rec)]
    found = _demo_entries(clean, seed=seed)
    rows = []
    for rec in clean:
        entry, dataset = found[rec["id"]]
        answer = str(entry["answer"])
        rng = random.Random(f"demo-chats:{seed}:{rec['id']}")
        style = rng.choice(DEMO_STYLES)
        messages = [
            {"role": "user", "content": rec["prompt"]},
            {
                "role": "assistant",
                "content": _verified_response(style, rec, entry, dataset, answer=answer),
            },
        ]
        if rng.random() < follow_up_share:
            confirm = _verified_response("confirm", rec, entry, dataset, answer=answer)
            messages += [
                {"role": "user", "content": rng.choice(DEMO_FOLLOW_UPS)},
                {"role": "assistant", "content": confirm},
            ]
        rows.append(
            {
                "id": "chat-" + str(rec["id"]).removeprefix("demo-"),
                "messages": messages,
                "task": rec["task"],
                "difficulty": rec["difficulty"],
                "turns": len(messages),
                "style": style,
                "source_id": rec["id"],
            }
        )
    return rows


def write_demo_preferences(
    path: str | Path, *, n: int = 1000, seed: int = 0, n_rejected: int = 3
) -> Path:
    """Write :func:`build_demo_preferences` of ``n`` clean demo problems as JSONL; return the path.

    The problems are those of :func:`write_demo_jsonl` with the same ``n`` and ``seed``, in the
    same order (``pref-00017`` asks what ``demo-00017`` asks)."""
    records = build_demo_records(n=n, seed=seed, corrupt_share=0.0)
    return _write_jsonl(path, build_demo_preferences(records, n_rejected=n_rejected, seed=seed))


def write_demo_chats(path: str | Path, *, n: int = 1000, seed: int = 0) -> Path:
    """Write :func:`build_demo_chats` of ``n`` clean demo problems as JSONL; return the path."""
    records = build_demo_records(n=n, seed=seed, corrupt_share=0.0)
    return _write_jsonl(path, build_demo_chats(records, seed=seed))


def _write_jsonl(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")
    return path


def _is_clean(rec: Mapping[str, Any]) -> bool:
    corruption = rec.get("corruption")
    return corruption == "none" if corruption is not None else rec.get("quality", 1.0) == 1.0


def _demo_entries(
    records: Sequence[Mapping[str, Any]], *, seed: int
) -> dict[str, tuple[dict[str, Any], Any]]:
    """record id -> (reasoning-gym entry, its dataset): each problem regenerated from its
    (task, difficulty) cell's seed and found by its question, to be scored by the task itself."""
    import reasoning_gym  # slow import, only needed here

    cells: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for rec in records:
        for key in ("id", "prompt", "task", "difficulty"):
            if key not in rec:
                raise StudioError(f"demo record {rec.get('id', '?')}: field {key!r} is missing")
        task, level = rec["task"], rec["difficulty"]
        if task not in DEMO_TASKS or level not in range(1, len(DEMO_TASKS[task]) + 1):
            raise StudioError(f"demo record {rec['id']}: ({task!r}, {level!r}) is not a demo cell")
        cells.setdefault((task, int(level)), []).append(rec)
    found: dict[str, tuple[dict[str, Any], Any]] = {}
    for (task, level), recs in cells.items():
        size, wanted = 2 * len(recs) + 16, {rec["prompt"]: rec["id"] for rec in recs}
        while True:  # item i depends only on (seed, i): a bigger dataset starts the same
            cell = cell_seed(seed=seed, task=task, level=level)
            dataset = reasoning_gym.create_dataset(
                task, seed=cell, size=size, **DEMO_TASKS[task][level - 1]
            )
            by_question = {entry["question"]: entry for entry in dataset}
            if all(q in by_question for q in wanted) or size > 50 * len(recs) + 1000:
                break
            size *= 2
        for question, rid in wanted.items():
            if question not in by_question:
                raise StudioError(
                    f"demo record {rid}: not a seed-{seed} {task} problem (build the records "
                    "with the same seed; corrupted prompts are skipped)"
                )
            found[rid] = (by_question[question], dataset)
    return found


def _distinct_wrong_answers(
    answer: str, entry: dict[str, Any], dataset: Any, rng: random.Random, *, k: int
) -> list[str]:
    """Up to ``k`` distinct answers the task's verifier scores < 1.0: small edits of the answer
    or of an earlier wrong one (:func:`_perturb`). Fewer only when the answer has too few."""
    wrong: list[str] = []
    for _ in range(30 * k):
        base = answer if not wrong or rng.random() < 0.5 else rng.choice(wrong)
        candidate = _perturb(base, rng)
        if candidate == answer or candidate in wrong:
            continue
        if dataset.score_answer(candidate, entry) < 1.0:
            wrong.append(candidate)
            if len(wrong) == k:
                break
    if not wrong:  # never for the demo families: every answer has a wrong neighbour
        raise RuntimeError(f"demo: no wrong answer found for {entry['question']!r}")
    return wrong


def _verified_response(
    style: str,
    rec: Mapping[str, Any],
    entry: dict[str, Any],
    dataset: Any,
    *,
    answer: str,
    correct: bool = True,
) -> str:
    """Render a response, read its answer back and score that with the task's ``score_answer``:
    1.0 for a correct one, < 1.0 for a wrong one, else fail loudly (a template bug)."""
    text = render_demo_response(style, task=rec["task"], answer=answer)
    found = extract_demo_answer(text)
    score = dataset.score_answer(found[1], entry) if found and found[0] == style else None
    if score is None or (score == 1.0) != correct:
        raise RuntimeError(
            f"demo: {style} response for {rec['id']} scores {score} (expected "
            f"{'1.0' if correct else '< 1.0'}): {text!r}"
        )
    return text


def _verified_items(
    rg: Any, task: str, config: dict[str, Any], *, seed: int, want: int, seen: set[str]
) -> list[tuple[dict[str, Any], Any]]:
    """First ``want`` items of a seeded generator whose own answer scores 1.0, skipping repeats.

    Grows the generator's size until enough pass: item i depends only on (seed, i), so a bigger
    dataset starts with the same items and the result stays deterministic.
    """
    if want == 0:  # n below the number of cells leaves some cells empty
        return []
    size = want + want // 4 + 8
    while True:
        dataset = rg.create_dataset(task, seed=seed, size=size, **config)
        out, taken = [], set()
        for entry in dataset:
            q = entry["question"]
            if q in seen or q in taken or dataset.score_answer(entry["answer"], entry) != 1.0:
                continue
            out.append((entry, dataset))
            taken.add(q)
            if len(out) == want:
                seen |= taken
                return out
        if size > 50 * want + 1000:
            raise RuntimeError(f"demo: {task} {config} gives too few distinct verified items")
        size *= 2


def _wrong_answer(answer: str, entry: dict[str, Any], dataset: Any, rng: random.Random) -> str:
    """A plausible wrong answer (nudged number, swapped list items) that the verifier rejects."""
    for _ in range(20):
        candidate = _perturb(answer, rng)
        if candidate != answer and dataset.score_answer(candidate, entry) < 1.0:
            return candidate
    return answer + " 1"  # never reached for the demo families; still wrong for every verifier


def _perturb(answer: str, rng: random.Random) -> str:
    """One small edit of an answer: swap two list items, shift an integer, or bump a character."""
    items: list[Any] | None = None
    if answer.startswith("["):
        try:
            parsed = ast.literal_eval(answer)
            items = list(parsed) if isinstance(parsed, list) else None
        except (ValueError, SyntaxError):
            items = None
        if items is not None and len(items) > 1:
            j = rng.randrange(len(items) - 1)
            items[j], items[j + 1] = items[j + 1], items[j]
            return str(items)
    if ", " in answer:
        words = answer.split(", ")
        j = rng.randrange(len(words) - 1)
        words[j], words[j + 1] = words[j + 1], words[j]
        return ", ".join(words)
    numbers = list(_INT.finditer(answer))
    if numbers:
        m = rng.choice(numbers)
        value = int(m.group())
        shifted = value + rng.choice((-10, -2, -1, 1, 2, 10))
        if shifted < 0 or shifted == value:
            shifted = value + rng.choice((1, 2, 10))
        return answer[: m.start()] + str(shifted) + answer[m.end() :]
    alnum = [k for k, ch in enumerate(answer) if ch.isalnum()]
    if not alnum:
        return answer + "0"
    k = rng.choice(alnum)
    ch = answer[k]
    bumped = chr(ord("a") + (ord(ch.lower()) - ord("a") + 1) % 26) if ch.isalpha() else "1"
    return answer[:k] + bumped + answer[k + 1 :]


def _garble(text: str, rng: random.Random) -> str:
    """Shuffle the words; with fewer than three distinct words, scramble the characters instead."""
    words = text.split()
    if len(set(words)) >= 3:
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        return " ".join(shuffled)
    chars = list(text)
    rng.shuffle(chars)
    scrambled = "".join(chars)
    return scrambled if scrambled != text else text[::-1] + "?"
