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


def _verified_items(
    rg: Any, task: str, config: dict[str, Any], *, seed: int, want: int, seen: set[str]
) -> list[tuple[dict[str, Any], Any]]:
    """First ``want`` items of a seeded generator whose own answer scores 1.0, skipping repeats.

    Grows the generator's size until enough pass: item i depends only on (seed, i), so a bigger
    dataset starts with the same items and the result stays deterministic.
    """
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
