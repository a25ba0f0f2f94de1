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

import numpy as np
import pyarrow as pa

from core.answers import extract_answer, match_score, normalise, reasoning_gym_score, score_answer

__all__ = [
    "Verdict",
    "extract_answer",
    "match_score",
    "normalise",
    "reasoning_gym_score",
    "verify",
    "verify_dataset",
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


def verify_dataset(store: Any, *, dataset: str, name: str = "verifier") -> int:
    """Score every response of a dataset (a preference set's chosen and rejected; a chat's last
    assistant turn) against its example's ground truth and store them as the reward run
    ``name`` (source "verifier: ..."), beside reward models' scores. Returns the run id."""
    import json

    from core.errors import StudioError
    from core.reward_models import reward_candidates
    from core.steps import versions
    from core.store import REWARD_SCHEMA

    cands = reward_candidates(store, dataset)
    views = store.views(dataset)
    cols = ["id", "answer", "extra"] + (["task"] if "task" in store.tag_names(dataset) else [])
    wide = store.wide(dataset, views=views, columns=cols).to_pydict()
    truth = dict(zip(wide["id"], wide["answer"], strict=True))
    task = dict(zip(wide["id"], wide.get("task", [None] * len(wide["id"])), strict=True))
    meta = {
        i: (json.loads(x).get("metadata") if x else None)
        for i, x in zip(wide["id"], wide["extra"], strict=True)
    }
    ids = [k[0] for k in cands.keys]
    if all(truth.get(i) is None for i in ids):
        raise StudioError(
            f"dataset '{dataset}' has no 'answer' field: the verifier needs a ground truth"
        )
    verdicts = verify(
        cands.responses,
        [truth.get(i) for i in ids],
        tasks=[task.get(i) for i in ids],
        metadata=[meta.get(i) if isinstance(meta.get(i), dict) else None for i in ids],
    )
    scores = pa.table(
        {
            "example_id": pa.array(ids, pa.string()),
            "response_idx": pa.array([k[1] for k in cands.keys], pa.int32()),
            "value": pa.array([v.score for v in verdicts], pa.float64()),
            "logits": pa.nulls(len(ids), pa.list_(pa.float32())),
            "truncated": pa.array([False] * len(ids)),
        },
        schema=REWARD_SCHEMA,
    )
    methods: dict[str, int] = {}
    for v in verdicts:
        methods[v.method.split(":")[0]] = methods.get(v.method.split(":")[0], 0) + 1
    return store.add_reward_run(
        dataset=dataset,
        config={"name": name, "kind": "verifier", "methods": sorted(methods)},
        versions=versions(),
        summary={
            "n": len(verdicts),
            "mean": float(np.mean([v.score for v in verdicts])) if verdicts else None,
            "by_method": methods,
            "no_answer_extracted": sum(v.extracted is None for v in verdicts),
        },
        scores=scores,
        source="verifier: reasoning-gym score_answer where the task is one, else normalised match",
    )
