"""Answer checking, self-contained: the verifier the studio scores with, and the reward function
beside every verl export (the export copies this file verbatim as ``<out>.reward.py``, so verl
scores a rollout exactly as ``python -m core verify`` scores a response). Standard library only;
reasoning-gym when it is installed.

Per row, the checker is:

- ``reasoning-gym``: when the row's task names a reasoning-gym dataset, the final answer is
  extracted from the response and scored by that task's own ``score_answer`` (the checker the
  task's authors wrote), given the task entry's ``metadata``;
- ``match``: otherwise (or when the task's checker needs metadata the row lacks), the extracted
  final answer is compared with the ground truth after normalisation (case, spaces, surrounding
  ``$``, trailing period, thousands separators); two numbers are equal when they are equal as
  numbers.

The final answer is the content of the last ``\\boxed{...}``, else of ``<answer>...</answer>``,
else what follows the last "answer is" / "answer:", else the last non-empty line (its hedged
part, "I think it might be X, but ...", when it has one).

In verl (``reward.custom_reward_function.path=<out>.reward.py``, name ``compute_score``), the
export's ``extra_info`` carries what this needs: ``task`` and ``metadata`` (JSON text). In TRL's
GRPOTrainer / RLOOTrainer (a trl-prompt export), ``verifier_reward`` reads the same fields from
the columns beside the prompt.

    >>> extract_answer("Let me think.\\nSo the answer is 12.")
    '12'
    >>> match_score("Final answer: \\\\boxed{1,000}", "1000")
    1.0
    >>> compute_score("demo", "The answer is 7.", "7", {"task": None, "metadata": None})
    1.0
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

_BOXED = re.compile(r"\\boxed\{")
_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_SAYS = re.compile(r"(?:answer\s+is|answer\s*:)\s*(.+)", re.IGNORECASE)
_HEDGED_TAIL = re.compile(r",\s*but\b.*$", re.IGNORECASE)
_HEDGED = re.compile(
    r"(?:might be|may be|probably|i think it is|i believe it is)\s+(.+?)(?:,\s*but\b.*)?[.!]?$",
    re.IGNORECASE,
)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i, depth = starts[-1], 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer a response states (see the module doc), or None for an empty one."""
    if not text or not text.strip():
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    tagged = _TAGGED.findall(text)
    if tagged:
        return tagged[-1].strip()
    says = _SAYS.findall(text)
    if says:
        ans = _HEDGED_TAIL.sub("", says[-1].strip().splitlines()[0])
        return ans.strip().rstrip(".").strip()
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    hedged = _HEDGED.search(lines[-1])
    return (hedged.group(1) if hedged else lines[-1]).rstrip(".").strip()


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding ``$`` or trailing period, no thousands commas."""
    t = " ".join(str(text).strip().lower().split())
    t = t.rstrip(".").strip().strip("$").strip().rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", t):
        t = t.replace(",", "")
    return t


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def match_score(response: str | None, truth: str | None) -> float:
    """1.0 when the response's final answer equals the ground truth after normalisation (or as
    numbers), else 0.0; 0.0 when either is missing."""
    ans = extract_answer(response)
    if ans is None or truth is None:
        return 0.0
    a, t = normalise(ans), normalise(truth)
    if a == t:
        return 1.0
    na, nt = _number(a), _number(t)
    return (
        1.0 if na is not None and nt is not None and abs(na - nt) <= 1e-9 * max(1, abs(nt)) else 0.0
    )


@functools.lru_cache(maxsize=256)
def _rg_dataset(task: str) -> Any | None:
    """One small instance of a reasoning-gym task (its score_answer), None if unknown."""
    try:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS
    except ImportError:  # a trainer's environment without reasoning-gym: the match checker
        return None
    if task not in DATASETS:
        return None
    return reasoning_gym.create_dataset(task, size=1, seed=0)


def reasoning_gym_score(
    task: str, response: str | None, truth: str | None, *, metadata: dict[str, Any] | None = None
) -> float | None:
    """The task's own ``score_answer`` on the response's final answer (``metadata``: the task
    entry's, which many checkers read); None when ``task`` is not a reasoning-gym task or its
    checker cannot judge this row: it fails, or scores the ground truth itself below 1 (it
    needs metadata the row lacks)."""
    ds = _rg_dataset(task)
    if ds is None:
        return None
    ans = extract_answer(response)
    if ans is None or truth is None:
        return 0.0
    entry = {"answer": truth, "metadata": metadata or {}}
    try:
        # a checker that does not give the ground truth itself full marks lacks what it needs
        # (many return a small score instead of raising when the metadata is missing)
        if float(ds.score_answer(truth, entry)) < 1.0:
            return None
        return float(ds.score_answer(ans, entry))
    except Exception:  # the checker needs metadata this row lacks: no verdict from it
        return None


def score_answer(
    response: str | None,
    truth: str | None,
    *,
    task: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[float, str]:
    """The score of one response (0..1; reasoning-gym checkers may give partial credit) and the
    checker that gave it: ``"reasoning-gym:TASK"`` or ``"match"``."""
    score = reasoning_gym_score(task, response, truth, metadata=metadata) if task else None
    if score is not None:
        return score, f"reasoning-gym:{task}"
    return match_score(response, truth), "match"


def _metadata(value: Any) -> dict[str, Any] | None:
    """A row's task metadata as a dict: exports carry it as JSON text (its keys and types differ
    between tasks, which one Parquet column could not hold)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str | None,
    extra_info: dict[str, Any] | None = None,
    **_: Any,
) -> float:
    """verl's custom reward function: the score of ``solution_str`` against ``ground_truth``
    with the row's ``extra_info`` (``task``, ``metadata``) as the studio's verifier gives it.
    ``data_source`` (the dataset's name) does not change the checker."""
    info = extra_info or {}
    task = info.get("task")
    score, _method = score_answer(
        solution_str,
        ground_truth,
        task=task if isinstance(task, str) and task else None,
        metadata=_metadata(info.get("metadata")),
    )
    return float(score)


def verifier_reward(
    completions: list[Any],
    answer: list[str | None] | None = None,
    task: list[str | None] | None = None,
    metadata: list[Any] | None = None,
    **_: Any,
) -> list[float]:
    """TRL's reward function form (``GRPOTrainer(reward_funcs=verifier_reward)``, RLOO too):
    one score per completion, from the dataset's ``answer``, ``task`` and ``metadata`` columns,
    which the trainer passes as lists beside the completions (a conversational completion is a
    list of messages: its last message is scored)."""
    scores = []
    for i, completion in enumerate(completions):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        row_task = task[i] if task is not None else None
        score, _method = score_answer(
            text,
            answer[i] if answer is not None else None,
            task=row_task if isinstance(row_task, str) and row_task else None,
            metadata=_metadata(metadata[i] if metadata is not None else None),
        )
        scores.append(float(score))
    return scores
