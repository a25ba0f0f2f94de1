"""Verifier rewards: score a response against a prompt's ground truth, without a model.

The checker itself (answer extraction, reasoning-gym's ``score_answer`` where the task is one of
its tasks, else the normalised match) is :mod:`core.answers`, a self-contained file that every
verl export also carries as its reward function; this module applies it to a dataset's responses
and stores the scores as a reward run.

    >>> verify(["The answer is 1,000."], ["1000"])[0].score
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.answers import extract_answer, match_score, normalise, reasoning_gym_score, score_answer

__all__ = [
    "Verdict",
    "extract_answer",
    "match_score",
    "normalise",
    "reasoning_gym_score",
    "verify",
]


@dataclass(frozen=True)
class Verdict:
    score: float  # 0..1 (reasoning-gym checkers may give partial credit)
    method: str  # "reasoning-gym:TASK" or "match"
    extracted: str | None


def verify(
    responses: Sequence[str | None],
    truths: Sequence[str | None],
    *,
    tasks: Sequence[str | None] | None = None,
    metadata: Sequence[dict[str, Any] | None] | None = None,
) -> list[Verdict]:
    """One verdict per response: reasoning-gym's checker where the task is one of its tasks
    (with the row's entry ``metadata``), the normalised match otherwise."""
    if len(responses) != len(truths) or (tasks is not None and len(tasks) != len(responses)):
        raise ValueError("responses, truths and tasks must have the same length")
    out = []
    for i, (resp, truth) in enumerate(zip(responses, truths, strict=True)):
        task = tasks[i] if tasks is not None else None
        meta = metadata[i] if metadata is not None else None
        score, method = score_answer(resp, truth, task=task, metadata=meta)
        out.append(Verdict(score, method, extract_answer(resp)))
    return out
