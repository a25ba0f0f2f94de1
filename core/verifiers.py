"""Verifier rewards: score a response against a prompt's ground truth, without a model.

Two checkers, chosen per row:

- ``reasoning-gym``: when the row's task names a reasoning-gym dataset, the final answer is
  extracted from the response and scored by that task's own ``score_answer`` (the checker the
  task's authors wrote: exact, numeric, set or list comparisons depending on the task).
- ``match``: otherwise, the extracted final answer is compared with the ground truth after
  normalisation (case, spaces, surrounding ``$``, trailing period, thousands separators); two
  numbers are equal when they are equal as numbers.

The final answer is the content of the last ``\\boxed{...}``, else of ``<answer>...</answer>``,
else what follows the last "answer is" / "answer:", else the last non-empty line (its hedged
part, "I think it might be X, but ...", when it has one).

    >>> extract_answer("Let me think.\\nSo the answer is 12.")
    '12'
    >>> match_score("Final answer: \\\\boxed{1,000}", "1000")
    1.0
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

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
    except ImportError:  # pragma: no cover - reasoning-gym is in requirements
        return None
    if task not in DATASETS:
        return None
    return reasoning_gym.create_dataset(task, size=1, seed=0)


def reasoning_gym_score(
    task: str, response: str | None, truth: str | None, *, metadata: dict[str, Any] | None = None
) -> float | None:
    """The task's own ``score_answer`` on the response's final answer (``metadata``: the task
    entry's, which many checkers read); None when ``task`` is not a reasoning-gym task or its
    checker fails without the metadata it needs."""
    ds = _rg_dataset(task)
    if ds is None:
        return None
    ans = extract_answer(response)
    if ans is None or truth is None:
        return 0.0
    entry = {"answer": truth, "metadata": metadata or {}}
    try:
        return float(ds.score_answer(ans, entry))
    except Exception:  # the checker needs metadata this row lacks: no verdict from it
        return None


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
        score = reasoning_gym_score(task, resp, truth, metadata=meta) if task else None
        if score is not None:
            out.append(Verdict(score, f"reasoning-gym:{task}", extract_answer(resp)))
        else:
            out.append(Verdict(match_score(resp, truth), "match", extract_answer(resp)))
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
