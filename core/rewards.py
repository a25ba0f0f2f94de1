"""Rewards: judge reward models the way StoryRMB and WildReward do, and compare reward sources.

Pure numeric work over numpy / pandas / scikit-learn; models, the store and the CLI sit at the
edges and hand this module arrays and frames.

- Heads. WildReward's ordinal CORAL head has K-1 logits, logit_k for P(y > k); its reward is
  ``1 + sum_k sigmoid(logit_k)``, in [1, K] (a softmax over those logits would be wrong). A
  Bradley-Terry RM has one logit, which is the reward.
- Preference metrics on a long frame of scores, one row per response: ``example_id``,
  ``response_idx``, ``role`` ('chosen' or 'rejected', one chosen per example) and ``score``, plus
  any category columns. Pairwise accuracy (ties count half), StoryRMB's 1-of-N accuracy (the
  chosen response must beat every rejected one; a tie at the top is a miss), both with a 95%
  bootstrap interval over prompts; per category; and by score margin.
- Agreement between two reward sources on the same responses: rank correlations, how often the
  two order a pair the same way, how often they pick the same best-of-n candidate; and the
  responses where their ranks differ most.
- Calibration of an ordinal RM's class probabilities against feedback labels (top-label ECE and
  a reliability table), and of a binary probability against 0/1 outcomes.
- SAE features: which fire more in chosen than in rejected responses, and a Bradley-Terry reward
  probe on feature differences.

    >>> scores = pd.DataFrame({
    ...     "example_id": ["a", "a", "a", "b", "b"],
    ...     "response_idx": [0, 1, 2, 0, 1],
    ...     "role": ["chosen", "rejected", "rejected", "chosen", "rejected"],
    ...     "score": [2.0, 1.0, 3.0, 1.0, 0.0],
    ... })
    >>> pairwise_accuracy(scores).value  # pairs: a 2>1 yes, a 2>3 no, b 1>0 yes
    0.6666666666666666
    >>> acc = one_of_n_accuracy(scores)  # a: 3 beats the chosen; b: correct
    >>> acc.value, acc.chance  # chance: mean of 1/3 and 1/2
    (0.5, 0.41666666666666663)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import expit
from scipy.stats import binom, kendalltau, spearmanr
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from core.errors import StudioError

KEY = ("example_id", "response_idx")
PREFERENCE_COLUMNS = (*KEY, "role", "score")
ROLES = ("chosen", "rejected")
N_BOOT = 1000
LEVEL = 0.95
BOOT_CELLS = 2_000_000  # bootstrap draws held in memory at once (rows x resamples)
BT_CS = tuple(float(c) for c in np.logspace(-3, 3, 7))
BT_INNER_FOLDS = 3
BT_PATIENCE = 2  # C steps past the best inner loss before a path stops
MAX_ITER = 1000
TOP_WEIGHTS = 20

Side = Literal["example", "chosen", "rejected"]
ShiftOrder = Literal["mean_diff", "fire_diff", "t"]
BTPenalty = Literal["auto", "l2", "l1"]


RESPONSE_CLUSTER = "response_cluster"  # a category: each response's cluster in <dataset>.responses

# ---------------------------------------------------------------------------------------------
# Heads


def _logits_2d(logits: Any, *, what: str) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise StudioError(f"{what}: logits must be 2-D [responses, logits], got shape {z.shape}")
    if np.isnan(z).any():
        raise StudioError(f"{what}: the logits contain NaN")
    return z


def coral_reward(logits: np.ndarray) -> np.ndarray:
    """[n, K-1] CORAL logits -> [n] reward ``1 + sum_k sigmoid(logit_k)``, in [1, K].

    logit_k models P(y > k) for an ordinal label y in 1..K, so the reward is the expected label
    E[y] = 1 + sum_k P(y > k) (WildReward's scalar reward; not a softmax).

    >>> coral_reward(np.array([[0.0, 0.0, 0.0], [50.0, 50.0, 50.0]])).tolist()  # K = 4
    [2.5, 4.0]
    """
    z = _logits_2d(logits, what="CORAL head")
    return 1.0 + expit(z).sum(axis=1)


def coral_class_probs(logits: np.ndarray) -> np.ndarray:
    """[n, K-1] CORAL logits -> [n, K] probabilities of the classes 1..K.

    From the cumulative P(y > k) = sigmoid(logit_k): P(y = 1) = 1 - P(y > 1),
    P(y = k) = P(y > k-1) - P(y > k), P(y = K) = P(y > K-1). CORAL trains the K-1 outputs as
    separate binary tasks, so nothing forces P(y > k) to fall with k; where it rises, it is
    clipped down to the previous value (a running minimum), which keeps every class probability
    non-negative and the row summing to 1. When the logits fall with k (the usual case) nothing
    is clipped and the expected class equals :func:`coral_reward`; when they do not, the
    expected class is lower than that reward.

    >>> coral_class_probs(np.array([[0.0, 0.0, 0.0]])).tolist()
    [[0.5, 0.0, 0.0, 0.5]]
    >>> coral_class_probs(np.array([[-50.0, 50.0]])).round(6).tolist()  # P(y>2) > P(y>1): clipped
    [[1.0, 0.0, 0.0]]
    """
    z = _logits_2d(logits, what="CORAL head")
    above = np.minimum.accumulate(expit(z), axis=1)  # P(y > k), k = 1..K-1, non-increasing
    n = len(above)
    cum = np.hstack([np.ones((n, 1)), above, np.zeros((n, 1))])  # P(y > 0) .. P(y > K)
    return cum[:, :-1] - cum[:, 1:]


def scalar_reward(logits: np.ndarray) -> np.ndarray:
    """[n, 1] (or [n]) logits of a Bradley-Terry head -> [n] reward: the logit itself.

    >>> scalar_reward(np.array([[0.5], [-1.0]])).tolist()
    [0.5, -1.0]
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[1] != 1:
        raise StudioError(
            f"scalar head: expected one logit per response, got shape {z.shape} "
            "(an ordinal head has K-1 logits: use the CORAL reward)"
        )
    if np.isnan(z).any():
        raise StudioError("scalar head: the logits contain NaN")
    return z[:, 0].copy()


# ---------------------------------------------------------------------------------------------
# Preference metrics


@dataclass(frozen=True)
class Accuracy:
    """An accuracy with its evidence. ``n`` counts what was scored (pairs for pairwise accuracy,
    prompts for 1-of-N); the interval is a percentile bootstrap over prompts (pairs of one
    prompt resampled together), None when not computed."""

    value: float
    n: int
    n_examples: int
    chance: float
    ci_low: float | None
    ci_high: float | None
    level: float = LEVEL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_preferences(frame: pd.DataFrame, *, name: str = "scores") -> pd.DataFrame:
    """Validate a long preference score frame and return a copy with float scores.

    Columns ``example_id, response_idx, role, score`` (others are kept). Every example needs one
    chosen and at least one rejected response, every response a finite score; a problem is a
    StudioError naming the example.

    >>> check_preferences(pd.DataFrame({"example_id": ["a"], "response_idx": [0],
    ...                                 "role": ["chosen"], "score": [1.0]}))
    Traceback (most recent call last):
    ...
    core.errors.StudioError: scores: example 'a' has no rejected response (a preference needs 1 chosen and at least 1 rejected)
    """
    _require_columns(frame, PREFERENCE_COLUMNS, name=name)
    out = _with_scores(frame, name=name)
    bad_role = ~out["role"].isin(ROLES).to_numpy()
    if bad_role.any():
        row = out[bad_role].iloc[0]
        raise StudioError(
            f"{name}: example {row['example_id']!r} response {row['response_idx']}: role must be "
            f"'chosen' or 'rejected', got {row['role']!r}"
        )
    is_chosen = out["role"].eq("chosen")
    frame_counts = pd.DataFrame({"chosen": is_chosen, "rejected": ~is_chosen})
    counts = frame_counts.groupby(out["example_id"], sort=False).sum()
    n_chosen = counts["chosen"].to_numpy()
    n_rejected = counts["rejected"].to_numpy()
    for cond, what in (
        (n_chosen == 0, "has no chosen response"),
        (n_chosen > 1, "has {count} chosen responses"),
        (n_rejected == 0, "has no rejected response"),
    ):
        if cond.any():
            i = int(np.argmax(cond))
            ex, msg = counts.index[i], what.format(count=int(n_chosen[i]))
            raise StudioError(
                f"{name}: example {ex!r} {msg} (a preference needs 1 chosen and at least 1 rejected)"
            )
    return out


def preference_pairs(frame: pd.DataFrame, *, keep: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (chosen, rejected) pair: ``example_id, chosen_idx, rejected_idx,
    score_chosen, score_rejected, margin`` (chosen minus rejected), in the frame's order, plus
    each column in ``keep`` as ``<col>_chosen`` and ``<col>_rejected``.

    >>> f = pd.DataFrame({"example_id": ["a", "a", "a"], "response_idx": [0, 1, 2],
    ...                   "role": ["chosen", "rejected", "rejected"], "score": [2.0, 1.0, 3.0]})
    >>> preference_pairs(f)[["rejected_idx", "margin"]].values.tolist()
    [[1.0, 1.0], [2.0, -1.0]]
    """
    checked = check_preferences(frame)
    _require_columns(checked, tuple(keep), name="scores")
    return _pairs(checked, keep=keep)


def _pairs(checked: pd.DataFrame, *, keep: Sequence[str] = ()) -> pd.DataFrame:
    cols = ["example_id", "response_idx", "score", *keep]
    chosen = checked.loc[checked["role"].eq("chosen"), cols]
    rejected = checked.loc[checked["role"].eq("rejected"), cols]
    pairs = chosen.merge(rejected, on="example_id", suffixes=("_chosen", "_rejected"), sort=False)
    pairs = pairs.rename(
        columns={"response_idx_chosen": "chosen_idx", "response_idx_rejected": "rejected_idx"}
    )
    pairs["margin"] = pairs["score_chosen"] - pairs["score_rejected"]
    front = ["example_id", "chosen_idx", "rejected_idx", "score_chosen", "score_rejected", "margin"]
    return pairs[front + [c for c in pairs.columns if c not in front]].reset_index(drop=True)


def _pair_outcome(margin: np.ndarray) -> np.ndarray:
    """1 when the chosen response scores higher, 0 when lower, 0.5 on a tie."""
    return np.where(margin > 0, 1.0, np.where(margin < 0, 0.0, 0.5))


def _example_outcomes(checked: pd.DataFrame) -> pd.DataFrame:
    """Per example: the chosen score, the best rejected score, N, and 1-of-N correctness."""
    is_chosen = checked["role"].eq("chosen")
    chosen = checked.loc[is_chosen].set_index("example_id")["score"]
    rejected = checked.loc[~is_chosen].groupby("example_id", sort=False)["score"]
    out = pd.DataFrame({"n_rejected": rejected.size(), "best_rejected": rejected.max()})
    out["chosen"] = chosen.reindex(out.index)
    out["correct"] = (out["chosen"] > out["best_rejected"]).astype(np.float64)  # a tie misses
    out["chance"] = 1.0 / (out["n_rejected"] + 1.0)
    return out


def _accuracy(
    num: np.ndarray,
    den: np.ndarray,
    *,
    n: int,
    chance: float,
    n_boot: int,
    seed: int,
    level: float,
) -> Accuracy:
    """sum(num) / sum(den) over examples (one entry each), with a bootstrap over examples."""
    lo, hi = _bootstrap_ratio(num, den, n_boot=n_boot, seed=seed, level=level)
    return Accuracy(
        value=float(num.sum() / den.sum()),
        n=int(n),
        n_examples=len(num),
        chance=float(chance),
        ci_low=lo,
        ci_high=hi,
        level=level,
    )


def _bootstrap_ratio(
    num: np.ndarray, den: np.ndarray, *, n_boot: int, seed: int, level: float
) -> tuple[float | None, float | None]:
    """Percentile interval of sum(num) / sum(den) with examples resampled with replacement."""
    if n_boot < 0:
        raise StudioError(f"n_boot must be 0 (no interval) or more, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise StudioError(f"level must be between 0 and 1, got {level}")
    m = len(num)
    if n_boot == 0 or m == 0:
        return None, None
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOT_CELLS // m)
    ratios = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, m, size=(min(chunk, n_boot - start), m))
        ratios.append(num[idx].sum(axis=1) / den[idx].sum(axis=1))
    stats = np.concatenate(ratios)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _pairwise_from(pairs: pd.DataFrame, *, n_boot: int, seed: int, level: float) -> Accuracy | None:
    if pairs.empty:
        return None
    outcome = pd.Series(_pair_outcome(pairs["margin"].to_numpy()), index=pairs.index)
    per = outcome.groupby(pairs["example_id"], sort=False).agg(["sum", "size"])
    return _accuracy(
        per["sum"].to_numpy(np.float64),
        per["size"].to_numpy(np.float64),
        n=len(pairs),
        chance=0.5,
        n_boot=n_boot,
        seed=seed,
        level=level,
    )


def _one_of_n_from(
    examples: pd.DataFrame, *, n_boot: int, seed: int, level: float
) -> Accuracy | None:
    if examples.empty:
        return None
    return _accuracy(
        examples["correct"].to_numpy(np.float64),
        np.ones(len(examples)),
        n=len(examples),
        chance=float(examples["chance"].mean()),
        n_boot=n_boot,
        seed=seed,
        level=level,
    )


def pairwise_accuracy(
    frame: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> Accuracy:
    """Share of (chosen, rejected) pairs where the chosen response scores higher; a tie counts
    0.5 (a coin flip would order it right half the time). Chance 0.5; ``n`` = pairs.

    >>> f = pd.DataFrame({"example_id": ["a", "a", "a"], "response_idx": [0, 1, 2],
    ...                   "role": ["chosen", "rejected", "rejected"], "score": [1.0, 0.0, 1.0]})
    >>> acc = pairwise_accuracy(f)  # one win, one tie
    >>> acc.value, acc.n, acc.chance
    (0.75, 2, 0.5)
    """
    acc = _pairwise_from(_pairs(check_preferences(frame)), n_boot=n_boot, seed=seed, level=level)
    assert acc is not None  # a checked frame has at least one pair
    return acc


def one_of_n_accuracy(
    frame: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> Accuracy:
    """StoryRMB's 1-of-N accuracy: a prompt is correct when its chosen response scores strictly
    higher than each of its N rejected ones. A tie with the best rejected response counts as a
    miss (the stricter reading: an RM that cannot separate them did not pick the chosen one).
    Chance is the mean over prompts of 1/(N+1), so prompts may have different N; ``n`` = prompts.

    >>> f = pd.DataFrame({"example_id": ["a", "a", "b", "b", "b"], "response_idx": [0, 1, 0, 1, 2],
    ...                   "role": ["chosen", "rejected", "chosen", "rejected", "rejected"],
    ...                   "score": [1.0, 1.0, 5.0, 4.0, 3.0]})
    >>> acc = one_of_n_accuracy(f)  # a: a tie, a miss; b: correct
    >>> acc.value, round(acc.chance, 4)  # chance (1/2 + 1/3) / 2
    (0.5, 0.4167)
    """
    examples = _example_outcomes(check_preferences(frame))
    acc = _one_of_n_from(examples, n_boot=n_boot, seed=seed, level=level)
    assert acc is not None
    return acc


def accuracy_by(
    frame: pd.DataFrame,
    *,
    by: str,
    side: Side = "example",
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Pairwise and 1-of-N accuracy per value of the column ``by`` (a cluster, a task, a style).

    side: where the value is read. ``"example"`` (clusters, tasks): it must be the same on every
    response of a prompt. ``"chosen"``: the chosen response's value. ``"rejected"``: each pair
    goes to its rejected response's value (e.g. "against hedged rejected answers"); 1-of-N is
    not defined per rejected response and is left NaN. One row per value (missing values form
    their own row), sorted by value: ``by, n_examples, n_pairs, pairwise, pairwise_low,
    pairwise_high, one_of_n, one_of_n_low, one_of_n_high, one_of_n_chance``.

    >>> f = pd.DataFrame({"example_id": ["a", "a", "b", "b"], "response_idx": [0, 1, 0, 1],
    ...                   "role": ["chosen", "rejected"] * 2, "score": [1.0, 0.0, 0.0, 1.0],
    ...                   "cluster": [7, 7, 8, 8]})
    >>> accuracy_by(f, by="cluster", n_boot=0)[["cluster", "pairwise", "one_of_n"]].values.tolist()
    [[7.0, 1.0, 1.0], [8.0, 0.0, 0.0]]
    """
    if side not in get_args(Side):
        raise StudioError(f"side must be one of {list(get_args(Side))}, got {side!r}")
    checked = check_preferences(frame)
    _require_columns(checked, (by,), name="scores")
    if by in PREFERENCE_COLUMNS:
        raise StudioError(f"accuracy_by: group by a category column, not {by!r}")
    examples = _example_outcomes(checked)
    if side == "rejected":
        pairs = _pairs(checked, keep=[by]).rename(columns={f"{by}_rejected": "_group"})
        examples["_group"] = np.nan
    else:
        rows = checked if side == "example" else checked[checked["role"].eq("chosen")]
        if side == "example":
            n_values = rows.groupby("example_id", sort=False)[by].nunique(dropna=False)
            varies = n_values.to_numpy() > 1
            if varies.any():
                raise StudioError(
                    f"accuracy_by: {by!r} differs between the responses of example "
                    f"{n_values.index[int(np.argmax(varies))]!r}; group by the chosen or "
                    "the rejected response's value (side='chosen' or side='rejected')"
                )
        value = rows.drop_duplicates("example_id").set_index("example_id")[by]
        examples["_group"] = value.reindex(examples.index)
        pairs = _pairs(checked)
        pairs["_group"] = value.reindex(pairs["example_id"]).to_numpy()
    rows_out = []
    for g in _sorted_values(pd.unique(pairs["_group"])):
        in_pairs = pairs["_group"].isna() if _missing(g) else pairs["_group"].eq(g)
        in_ex = examples["_group"].isna() if _missing(g) else examples["_group"].eq(g)
        pw = _pairwise_from(pairs[in_pairs], n_boot=n_boot, seed=seed, level=level)
        one = (
            None
            if side == "rejected"
            else _one_of_n_from(examples[in_ex], n_boot=n_boot, seed=seed, level=level)
        )
        rows_out.append(
            {
                by: g,
                "n_examples": int(pairs.loc[in_pairs, "example_id"].nunique()),
                "n_pairs": int(in_pairs.sum()),
                **_acc_columns("pairwise", pw),
                **_acc_columns("one_of_n", one),
                "one_of_n_chance": one.chance if one else np.nan,
            }
        )
    return pd.DataFrame(rows_out)


def _acc_columns(prefix: str, acc: Accuracy | None) -> dict[str, float]:
    if acc is None:
        return {prefix: np.nan, f"{prefix}_low": np.nan, f"{prefix}_high": np.nan}
    return {
        prefix: acc.value,
        f"{prefix}_low": np.nan if acc.ci_low is None else acc.ci_low,
        f"{prefix}_high": np.nan if acc.ci_high is None else acc.ci_high,
    }


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _sorted_values(values: Any) -> list[Any]:
    """Distinct values sorted (as strings when types mix), missing ones last."""
    present = [v for v in values if not _missing(v)]
    try:
        ordered = sorted(present)
    except TypeError:
        ordered = sorted(present, key=str)
    return ordered + ([np.nan] if len(present) < len(values) else [])


def margin_grid(frame: pd.DataFrame, *, points: int = 20, top: float = 0.95) -> list[float]:
    """Margins for :func:`margin_curve` spread over a source's own pairs: 0, then quantiles of
    |score_chosen - score_rejected| up to ``top``, so sources on different scales can be read
    on the kept-share axis.

    >>> f = pd.DataFrame({"example_id": ["a"] * 3, "response_idx": [0, 1, 2],
    ...                   "role": ["chosen", "rejected", "rejected"], "score": [1.0, 0.0, 3.0]})
    >>> margin_grid(f, points=3, top=1.0)  # |margins| 1 and 2
    [0.0, 1.0, 1.5, 2.0]
    """
    gap = np.abs(_pairs(check_preferences(frame))["margin"].to_numpy())
    qs = np.quantile(gap, np.linspace(0.0, top, points)) if len(gap) else np.array([])
    return np.unique(np.concatenate([[0.0], qs])).tolist()


def margin_curve(frame: pd.DataFrame, *, margins: Sequence[float]) -> pd.DataFrame:
    """Pairwise accuracy keeping only pairs the RM separates by more than each margin m:
    ``|score_chosen - score_rejected| > m`` (so ties are never kept). Columns ``margin,
    accuracy, n_pairs, kept_share``; accuracy is NaN where no pair is kept. Margins are in the
    RM's own score units, so compare RMs at equal kept share rather than equal m.

    >>> f = pd.DataFrame({"example_id": ["a", "a", "a"], "response_idx": [0, 1, 2],
    ...                   "role": ["chosen", "rejected", "rejected"], "score": [1.0, 0.0, 1.5]})
    >>> margin_curve(f, margins=[0.0, 0.75]).values.tolist()  # margins 1.0 and -0.5
    [[0.0, 0.5, 2.0, 1.0], [0.75, 1.0, 1.0, 0.5]]
    """
    m = np.asarray(margins, dtype=np.float64)
    if m.ndim != 1 or not np.isfinite(m).all() or (m < 0).any():
        raise StudioError(f"margins must be finite numbers >= 0, got {list(margins)}")
    pairs = _pairs(check_preferences(frame))
    diff = pairs["margin"].to_numpy()
    gap = np.abs(diff)
    rows = []
    for t in m:
        kept = gap > t
        k = int(kept.sum())
        acc = float((diff[kept] > 0).mean()) if k else np.nan
        rows.append(
            {"margin": float(t), "accuracy": acc, "n_pairs": k, "kept_share": k / len(diff)}
        )
    return pd.DataFrame(rows, columns=["margin", "accuracy", "n_pairs", "kept_share"])


# ---------------------------------------------------------------------------------------------
# Agreement between two reward sources


@dataclass(frozen=True)
class Agreement:
    """How two reward sources agree on the responses both scored (``n_items``).

    spearman / kendall (tau-b): over all those responses pooled, None when either source is
    constant. pair_agreement: share of pairs both sources order the same way (a tie in one
    source only counts 0.5, a tie in both counts 1; chance 0.5) over ``n_pairs`` pairs of kind
    ``pair_kind``: 'preference' = (chosen, rejected) pairs, 'all' = every two responses of one
    prompt. top1_agreement: over prompts with 2+ responses (``n_prompts``), how often the two
    pick the same best response (a tie for best is broken at random, so the expected agreement
    |A & B| / (|A| |B|) is counted); its chance is the mean of 1/n over those prompts.
    """

    n_items: int
    n_only_a: int
    n_only_b: int
    spearman: float | None
    kendall: float | None
    pair_kind: str
    pair_agreement: float | None
    n_pairs: int
    top1_agreement: float | None
    top1_chance: float | None
    n_prompts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_scores(frame: pd.DataFrame, *, name: str) -> pd.DataFrame:
    _require_columns(frame, (*KEY, "score"), name=name)
    return _with_scores(frame, name=name)


def _joined(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Responses scored by both (``score_a``, ``score_b``, ``role`` when either frame has one),
    and the counts scored by one source only."""
    fa, fb = _check_scores(a, name="source a"), _check_scores(b, name="source b")
    cols_a = [*KEY, "score", *(["role"] if "role" in fa.columns else [])]
    cols_b = [*KEY, "score", *(["role"] if "role" in fb.columns else [])]
    both = fa[cols_a].merge(fb[cols_b], on=list(KEY), how="inner", suffixes=("_a", "_b"))
    if "role_a" in both.columns:
        differ = (both["role_a"] != both["role_b"]).to_numpy()
        if differ.any():
            row = both[differ].iloc[0]
            raise StudioError(
                f"example {row['example_id']!r} response {row['response_idx']}: source a calls "
                f"it {row['role_a']!r}, source b {row['role_b']!r}"
            )
        both = both.drop(columns="role_b").rename(columns={"role_a": "role"})
    if len(both) < 2:
        raise StudioError(
            f"the two reward sources share {len(both)} scored response(s); agreement needs 2 or more"
        )
    return both, len(fa) - len(both), len(fb) - len(both)


def _sign_agreement(da: np.ndarray, db: np.ndarray) -> np.ndarray:
    sa, sb = np.sign(da), np.sign(db)
    return np.where(sa == sb, 1.0, np.where((sa == 0) | (sb == 0), 0.5, 0.0))


def _all_pairs(both: pd.DataFrame) -> pd.DataFrame:
    """Every two responses of one prompt, as (i, j) rows with i's response_idx < j's."""
    cols = ["example_id", "response_idx", "score_a", "score_b"]
    pairs = both[cols].merge(both[cols], on="example_id", suffixes=("_i", "_j"))
    keep = pairs["response_idx_i"].to_numpy() < pairs["response_idx_j"].to_numpy()
    return pairs.loc[keep]


def best_of_n_picks(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Which response each source picks for every prompt with 2+ responses both scored.

    a, b: frames with ``example_id, response_idx, score``. Columns ``example_id, n_candidates,
    pick_a, pick_b`` (the lowest response_idx among each source's best), ``n_top_a, n_top_b``
    (how many tie for best), ``agree`` (|A & B| / (|A| |B|): 1 or 0 without ties, the chance
    that random tie-breaking makes the two picks equal otherwise) and ``chance`` (1 / n).

    >>> a = pd.DataFrame({"example_id": ["p"] * 3, "response_idx": [0, 1, 2], "score": [1, 3, 2]})
    >>> b = a.assign(score=[3, 3, 0])
    >>> best_of_n_picks(a, b)[["pick_a", "pick_b", "n_top_b", "agree"]].values.tolist()
    [[1.0, 0.0, 2.0, 0.5]]
    """
    both, _, _ = _joined(a, b)
    return _picks(both)


def _picks(both: pd.DataFrame) -> pd.DataFrame:
    g = both.groupby("example_id", sort=False)
    top_a = both["score_a"].eq(g["score_a"].transform("max"))
    top_b = both["score_b"].eq(g["score_b"].transform("max"))
    idx = both["response_idx"]
    per = pd.DataFrame(
        {
            "example_id": both["example_id"],
            "n": 1,
            "pick_a": idx.where(top_a),
            "pick_b": idx.where(top_b),
            "n_top_a": top_a.astype(int),
            "n_top_b": top_b.astype(int),
            "both": (top_a & top_b).astype(int),
        }
    ).groupby("example_id", sort=False)
    out = per.agg(
        n_candidates=("n", "sum"),
        pick_a=("pick_a", "min"),
        pick_b=("pick_b", "min"),
        n_top_a=("n_top_a", "sum"),
        n_top_b=("n_top_b", "sum"),
        both=("both", "sum"),
    )
    out["agree"] = out["both"] / (out["n_top_a"] * out["n_top_b"])
    out["chance"] = 1.0 / out["n_candidates"]
    out = out[out["n_candidates"] >= 2].drop(columns="both")
    return out.reset_index()


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> Agreement:
    """How far two reward sources (RM vs RM, RM vs verifier) agree on the responses both scored.

    a, b: long frames ``example_id, response_idx, score``, matched on the first two. When either
    has a ``role`` column the data are preferences and pairs are (chosen, rejected); otherwise
    pairs are every two responses of a prompt (best-of-n rollouts). See :class:`Agreement`.

    >>> a = pd.DataFrame({"example_id": ["p"] * 3 + ["q"] * 3, "response_idx": [0, 1, 2] * 2,
    ...                   "score": [1.0, 2.0, 3.0, 3.0, 2.0, 1.0]})
    >>> same, flipped = agreement(a, a), agreement(a, a.assign(score=-a["score"]))
    >>> same.spearman, same.pair_agreement, same.top1_agreement, same.top1_chance
    (1.0, 1.0, 1.0, 0.3333333333333333)
    >>> flipped.spearman, flipped.pair_agreement, flipped.top1_agreement
    (-1.0, 0.0, 0.0)
    """
    both, only_a, only_b = _joined(a, b)
    if "role" in both.columns:  # every prompt both scored needs its chosen and a rejected one
        check_preferences(both.rename(columns={"score_a": "score"}), name="scored by both sources")
    return _agreement_of(both, only_a=only_a, only_b=only_b)


def _agreement_of(both: pd.DataFrame, *, only_a: int, only_b: int) -> Agreement:
    """:class:`Agreement` of joined scores (``score_a``, ``score_b``, maybe ``role``). A subset
    of a checked frame is fine: a prompt without its chosen (or without a rejected) response
    here gives no preference pair, and fewer than 2 responses give no correlation."""
    sa, sb = both["score_a"].to_numpy(), both["score_b"].to_numpy()
    varied = len(both) >= 2 and float(np.ptp(sa)) > 0.0 and float(np.ptp(sb)) > 0.0
    spearman = _finite(spearmanr(sa, sb).statistic) if varied else None  # type: ignore[attr-defined]
    kendall = _finite(kendalltau(sa, sb).statistic) if varied else None  # type: ignore[attr-defined]
    if "role" in both.columns:
        kind = "preference"
        pairs = _pairs(both.rename(columns={"score_a": "score"}), keep=["score_b"])
        da = pairs["margin"].to_numpy()
        db = (pairs["score_b_chosen"] - pairs["score_b_rejected"]).to_numpy()
    else:
        kind = "all"
        pairs = _all_pairs(both)
        da = (pairs["score_a_i"] - pairs["score_a_j"]).to_numpy()
        db = (pairs["score_b_i"] - pairs["score_b_j"]).to_numpy()
    picks = _picks(both)
    return Agreement(
        n_items=len(both),
        n_only_a=only_a,
        n_only_b=only_b,
        spearman=spearman,
        kendall=kendall,
        pair_kind=kind,
        pair_agreement=float(_sign_agreement(da, db).mean()) if len(da) else None,
        n_pairs=len(da),
        top1_agreement=float(picks["agree"].mean()) if len(picks) else None,
        top1_chance=float(picks["chance"].mean()) if len(picks) else None,
        n_prompts=len(picks),
    )


AGREEMENT_BY_COLUMNS = (
    "group",
    "n_items",
    "spearman",
    "kendall",
    "pair_agreement",
    "n_pairs",
    "top1_agreement",
    "top1_chance",
    "n_prompts",
)


def agreement_by(a: pd.DataFrame, b: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """:func:`agreement` of two reward sources within each group of responses (e.g. each
    response's cluster on the map), one row per group value.

    groups: ``example_id, response_idx, group`` (response_idx may be left out when the group
    belongs to the whole prompt); a response not in ``groups``, or with a missing group, falls
    in a row of its own (group NaN, last). Within a group only its responses count: the rank
    correlations are over them, pairs are formed only within a prompt among that group's
    responses (a preference pair needs its chosen and its rejected response both in the group;
    for best-of-n data, every two of the group's responses of one prompt), and best-of-n picks
    are made among them (prompts with 2+ of them). Columns :data:`AGREEMENT_BY_COLUMNS`; NaN
    where a measure is undefined (fewer than 2 responses or constant scores for the
    correlations; no pair; no prompt with 2+ responses). Sorted by group value.

    >>> a = pd.DataFrame({"example_id": ["p"] * 4, "response_idx": [0, 1, 2, 3],
    ...                   "score": [1.0, 2.0, 3.0, 4.0]})
    >>> b = a.assign(score=[2.0, 1.0, 3.0, 4.0])  # b swaps the first two
    >>> g = a.assign(group=["x", "x", "y", "y"])[["example_id", "response_idx", "group"]]
    >>> agreement_by(a, b, g)[["group", "kendall", "pair_agreement", "n_pairs"]].values.tolist()
    [['x', -1.0, 0.0, 1], ['y', 1.0, 1.0, 1]]
    """
    both, _, _ = _joined(a, b)
    if "role" in both.columns:
        check_preferences(both.rename(columns={"score_a": "score"}), name="scored by both sources")
    on = [c for c in KEY if c in groups.columns]
    _require_columns(groups, ("example_id", "group"), name="groups")
    if groups.duplicated(on).any():
        row = groups[groups.duplicated(on)].iloc[0]
        where = " ".join(f"{c} {row[c]!r}" for c in on)
        raise StudioError(f"groups: {where} has more than one group")
    g = groups[[*on, "group"]]
    if "response_idx" in on:  # match the key types the scores carry
        g = g.assign(response_idx=pd.to_numeric(g["response_idx"]).astype(np.int64))
        both = both.assign(response_idx=both["response_idx"].astype(np.int64))
    both = both.merge(g, on=on, how="left")
    rows = []
    for value in _sorted_values(pd.unique(both["group"])):
        part = both[both["group"].isna() if _missing(value) else both["group"].eq(value)]
        agree = _agreement_of(part.drop(columns="group"), only_a=0, only_b=0)
        rows.append(
            {
                "group": value,
                **{
                    k: np.nan if v is None else v
                    for k, v in agree.to_dict().items()
                    if k in AGREEMENT_BY_COLUMNS
                },
            }
        )
    return pd.DataFrame(rows, columns=list(AGREEMENT_BY_COLUMNS))


def _normalised_rank(values: pd.Series, groups: pd.Series | None) -> pd.Series:
    """Average ranks mapped to [0, 1]: (rank - 1) / (n - 1), 0.5 for a group of one."""
    if groups is None:
        rank = values.rank(method="average").to_numpy(np.float64)
        n = np.full(len(values), float(len(values)))
    else:
        g = values.groupby(groups, sort=False)
        rank = np.asarray(g.rank(method="average"), dtype=np.float64)
        n = np.asarray(g.transform("size"), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 1, (rank - 1.0) / (n - 1.0), 0.5)
    return pd.Series(out, index=values.index)


def disagreement(a: pd.DataFrame, b: pd.DataFrame, *, within_example: bool = False) -> pd.DataFrame:
    """Responses ordered by how differently two sources rank them, the largest first.

    Each source's scores become normalised ranks in [0, 1] (average ranks for ties), over all
    shared responses or, with ``within_example``, within each prompt (best-of-n). Columns
    ``example_id, response_idx, [role,] score_a, score_b, rank_a, rank_b, rank_diff`` with
    rank_diff = rank_a - rank_b (positive: a likes it more than b does).

    >>> a = pd.DataFrame({"example_id": list("pqr"), "response_idx": [0, 0, 0],
    ...                   "score": [1.0, 2.0, 3.0]})
    >>> disagreement(a, a.assign(score=[1.0, 3.0, 2.0]))[["example_id", "rank_diff"]].values.tolist()
    [['q', -0.5], ['r', 0.5], ['p', 0.0]]
    """
    both, _, _ = _joined(a, b)
    groups = both["example_id"] if within_example else None
    both["rank_a"] = _normalised_rank(both["score_a"], groups)
    both["rank_b"] = _normalised_rank(both["score_b"], groups)
    both["rank_diff"] = both["rank_a"] - both["rank_b"]
    both["_gap"] = both["rank_diff"].abs()
    both = both.sort_values(["_gap", *KEY], ascending=[False, True, True], kind="stable")
    return both.drop(columns="_gap").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Calibration


def _confidence(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome) per row. 2-D [n, K] class probabilities with labels 1..K: the top
    class's probability and whether it is the label (the first class wins a tie). 1-D
    probabilities with 0/1 outcomes: the probability and the outcome."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.ndim not in (1, 2) or len(p) == 0:
        raise StudioError(f"calibration: probabilities must be [n] or [n, K], got shape {p.shape}")
    if y.shape != (len(p),):
        raise StudioError(f"calibration: {len(p)} probability rows but labels of shape {y.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise StudioError("calibration: probabilities must be finite and in [0, 1]")
    if not np.isfinite(y).all():
        raise StudioError("calibration: labels must be finite (leave unlabelled rows out)")
    if p.ndim == 1:
        if not np.isin(y, (0.0, 1.0)).all():
            raise StudioError("calibration: a binary probability needs outcomes 0 or 1")
        return p, y
    k = p.shape[1]
    if k < 2:
        raise StudioError(f"calibration: need 2 or more classes, got {k}")
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        i = int(np.argmax(np.abs(sums - 1.0)))
        raise StudioError(f"calibration: row {i} of the class probabilities sums to {sums[i]:g}")
    if not (np.isin(y, np.arange(1, k + 1))).all():
        bad = y[~np.isin(y, np.arange(1, k + 1))][0]
        raise StudioError(f"calibration: labels must be whole numbers 1..{k}, got {bad:g}")
    return p.max(axis=1), (p.argmax(axis=1) + 1 == y).astype(np.float64)


def reliability_table(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> pd.DataFrame:
    """Per confidence bin, for a reliability diagram: ``bin, lo, hi, confidence, accuracy,
    count, gap`` (accuracy - confidence). Bins split [0, 1] evenly, each (lo, hi] (the first
    also holds 0); empty bins are kept with count 0 and NaN.

    probs [n, K] with labels in 1..K: top-label calibration (confidence = the largest class
    probability, accuracy = how often that class is the label). probs [n] with 0/1 labels: a
    binary probability (accuracy = how often the outcome is 1).

    >>> t = reliability_table(np.array([0.2, 0.2, 0.9, 0.9]), np.array([0, 1, 1, 1]), n_bins=2)
    >>> t[["confidence", "accuracy", "count"]].values.tolist()
    [[0.2, 0.5, 2.0], [0.9, 1.0, 2.0]]
    """
    if n_bins < 1:
        raise StudioError(f"n_bins must be at least 1, got {n_bins}")
    conf, outcome = _confidence(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=outcome, minlength=n_bins) / count
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "lo": edges[:-1],
            "hi": edges[1:],
            "confidence": mean_conf,
            "accuracy": accuracy,
            "count": count,
            "gap": accuracy - mean_conf,
        }
    )


def _ece(table: pd.DataFrame) -> float:
    used = table["count"] > 0
    w = table.loc[used, "count"].to_numpy(np.float64)
    return float((w * table.loc[used, "gap"].abs().to_numpy()).sum() / w.sum())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> float:
    """Top-label ECE of [n, K] class probabilities against labels in 1..K: the count-weighted
    mean over confidence bins of |accuracy - confidence| (see :func:`reliability_table`).

    >>> probs = np.array([[0.75, 0.25]] * 4)
    >>> expected_calibration_error(probs, np.array([1, 1, 1, 2]))  # right 3 times in 4
    0.0
    >>> expected_calibration_error(probs, np.array([2, 2, 2, 2]))
    0.75
    """
    if np.ndim(probs) != 2:
        raise StudioError(
            f"top-label ECE needs [n, K] class probabilities, got shape {np.shape(probs)} "
            "(a binary probability: binary_calibration_error)"
        )
    return _ece(reliability_table(probs, labels, n_bins=n_bins))


def binary_calibration_error(p: np.ndarray, outcome: np.ndarray, *, n_bins: int = 10) -> float:
    """ECE of a probability of a 0/1 outcome (a verifier pass, a thumbs-up): the count-weighted
    mean over probability bins of |observed rate - mean probability|.

    >>> binary_calibration_error(np.array([0.25] * 4), np.array([0, 0, 0, 1]))
    0.0
    >>> binary_calibration_error(np.array([0.9] * 2), np.array([0, 0]))
    0.9
    """
    if np.ndim(p) != 1:
        raise StudioError(f"binary ECE needs [n] probabilities, got shape {np.shape(p)}")
    return _ece(reliability_table(p, outcome, n_bins=n_bins))


@dataclass(frozen=True, eq=False)
class OrdinalCalibration:
    """How well an ordinal (CORAL) RM's class probabilities match feedback labels 1..K.

    ``ece``: top-label expected calibration error; ``table``: the reliability table it is
    computed from (:func:`reliability_table`); ``n`` labelled responses; ``k`` classes;
    ``label_counts`` / ``predicted_counts``: how many responses carry each label / have it as
    their most likely class (1..K, zeros kept); ``accuracy``: share whose most likely class is
    the label; ``mean_label`` and ``mean_reward`` (the CORAL reward, an expected label)."""

    ece: float
    table: pd.DataFrame
    n: int
    k: int
    label_counts: dict[int, int]
    predicted_counts: dict[int, int]
    accuracy: float
    mean_label: float
    mean_reward: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the table as a list of row dicts, NaN as None), e.g. for JSON."""
        out = {k: v for k, v in asdict(self).items() if k != "table"}
        out["table"] = [
            {k: (None if _missing(v) else v) for k, v in row.items()}
            for row in self.table.astype(object).to_dict("records")
        ]
        return out


def ordinal_calibration(
    logits: np.ndarray,
    labels: np.ndarray | Sequence[float],
    *,
    ids: Sequence[Any] | None = None,
    n_bins: int = 10,
) -> OrdinalCalibration:
    """Calibration of [n, K-1] CORAL logits against [n] feedback labels in 1..K (WildReward's
    ratings): the class probabilities (:func:`coral_class_probs`) judged top-label. A label
    that is not a whole number in 1..K is an error naming its row (or its id, from ``ids``).

    >>> logits = np.array([[5.0, -5.0]] * 4)  # K = 3; class 2 with probability 0.987
    >>> cal = ordinal_calibration(logits, [2, 2, 2, 1])
    >>> round(cal.ece, 3), cal.k, cal.label_counts, cal.accuracy
    (0.237, 3, {1: 1, 2: 3, 3: 0}, 0.75)
    """
    z = _logits_2d(logits, what="CORAL head")
    k = z.shape[1] + 1
    if k < 3:
        raise StudioError(
            f"calibration needs an ordinal head with 2 or more logits (K >= 3), got {k - 1}"
        )
    y = np.asarray(labels, dtype=np.float64)
    if y.shape != (len(z),):
        raise StudioError(f"calibration: {len(z)} rows of logits but labels of shape {y.shape}")
    if ids is not None and len(ids) != len(z):
        raise StudioError(f"calibration: {len(z)} rows of logits but {len(ids)} ids")
    if len(z) == 0:
        raise StudioError("calibration: no labelled response")
    bad = ~np.isin(y, np.arange(1, k + 1))
    if bad.any():
        i = int(np.argmax(bad))
        where = f"example {ids[i]!r}" if ids is not None else f"row {i}"
        raise StudioError(
            f"calibration: {where} has label {y[i]:g}, outside 1..{k} (the RM's K = {k} "
            "levels; labels must be whole numbers)"
        )
    probs = coral_class_probs(z)
    table = reliability_table(probs, y, n_bins=n_bins)
    classes = np.arange(1, k + 1)
    pred = probs.argmax(axis=1) + 1
    return OrdinalCalibration(
        ece=_ece(table),
        table=table,
        n=len(y),
        k=k,
        label_counts={int(c): int((y == c).sum()) for c in classes},
        predicted_counts={int(c): int((pred == c).sum()) for c in classes},
        accuracy=float((pred == y).mean()),
        mean_label=float(y.mean()),
        mean_reward=float(coral_reward(z).mean()),
    )


# ---------------------------------------------------------------------------------------------
# SAE features of chosen vs rejected responses


def _as_matrix(X: Any, *, what: str) -> Any:
    """CSR float64 for sparse input, a C-ordered float64 ndarray for dense; finite, 2-D."""
    M: Any
    if sparse.issparse(X):
        M = sparse.csr_matrix(X, dtype=np.float64)
        M.eliminate_zeros()
        values = M.data
    else:
        M = np.ascontiguousarray(X, dtype=np.float64)
        if M.ndim != 2:
            raise StudioError(f"{what}: features must be 2-D [rows, features], got shape {M.shape}")
        values = M
    if M.shape[0] == 0 or M.shape[1] == 0:
        raise StudioError(f"{what}: the feature matrix is empty, shape {M.shape}")
    if not np.isfinite(values).all():
        raise StudioError(f"{what}: the features contain NaN or inf")
    return M


def _col_mean(M: Any) -> np.ndarray:
    return np.asarray(M.mean(axis=0), dtype=np.float64).ravel()


def _col_count(M: Any, cond: Literal["nonzero", "pos", "neg"]) -> np.ndarray:
    if sparse.issparse(M):
        B = M.copy()
        B.data = {
            "nonzero": B.data != 0,
            "pos": B.data > 0,
            "neg": B.data < 0,
        }[cond].astype(np.float64)
        return np.asarray(B.sum(axis=0)).ravel()
    mask = {"nonzero": M != 0, "pos": M > 0, "neg": M < 0}[cond]
    return mask.sum(axis=0).astype(np.float64)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of p-values: the false discovery rate at which each would
    be called significant, over all the tests given (monotone, at most 1).

    >>> bh_qvalues(np.array([0.01, 0.04, 0.03, 0.5])).round(3).tolist()
    [0.04, 0.053, 0.053, 0.5]
    """
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    q = p[order] * m / np.arange(1, m + 1)
    q = np.minimum(np.minimum.accumulate(q[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = q
    return out


def feature_preference_shift(
    chosen_X: Any,
    rejected_X: Any,
    feature_ids: Sequence[int] | np.ndarray | None = None,
    *,
    min_fired: int = 1,
    sort_by: ShiftOrder = "mean_diff",
) -> pd.DataFrame:
    """Per SAE feature, how much more it fires in chosen than in rejected responses.

    chosen_X, rejected_X: [n_pairs, d] (scipy sparse or dense), row i of each from the same
    (chosen, rejected) pair; a chosen response with N rejected ones appears in N rows, so the
    pairs of one prompt are not independent and the tests below are a guide, not a verdict.
    feature_ids: [d] the id of each column (default 0..d-1). Columns, one row per feature that
    is nonzero in at least ``min_fired`` responses of either side, sorted by ``sort_by``, the
    largest first: ``feature_id, mean_chosen, mean_rejected, mean_diff, fire_chosen,
    fire_rejected, fire_diff`` (share of pairs where it is nonzero), ``n_pos, n_neg`` (pairs
    where it is higher, lower in the chosen response), ``sign_p`` (two-sided exact sign test),
    ``sign_q`` (its Benjamini-Hochberg q-value over the features returned: with thousands of
    features, dozens of p < 0.05 arise by chance) and ``t`` (paired t statistic; +-inf when every pair moves by the same nonzero amount, NaN
    when no pair moves).

    >>> chosen = np.array([[2.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    >>> rejected = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    >>> shift = feature_preference_shift(chosen, rejected, [10, 11])
    >>> shift[["feature_id", "mean_diff", "n_pos", "n_neg"]].values.tolist()
    [[10.0, 1.6666666666666667, 3.0, 0.0], [11.0, -0.6666666666666666, 0.0, 2.0]]
    """
    if sort_by not in get_args(ShiftOrder):
        raise StudioError(f"sort_by must be one of {list(get_args(ShiftOrder))}, got {sort_by!r}")
    if min_fired < 0:
        raise StudioError(f"min_fired must be 0 or more, got {min_fired}")
    C = _as_matrix(chosen_X, what="chosen features")
    R = _as_matrix(rejected_X, what="rejected features")
    if C.shape != R.shape:
        raise StudioError(
            f"chosen features {C.shape} and rejected features {R.shape} must have the same shape "
            "(one row per pair)"
        )
    n, d = C.shape
    ids = np.arange(d) if feature_ids is None else np.asarray(feature_ids)
    if ids.shape != (d,):
        raise StudioError(f"feature_ids must name each of the {d} columns, got shape {ids.shape}")
    D = C - R
    if sparse.issparse(D):
        D.eliminate_zeros()
        sq = _col_mean(D.multiply(D))
    else:
        sq = (D * D).mean(axis=0)
    mean_c, mean_r, diff = _col_mean(C), _col_mean(R), _col_mean(D)
    fired_c, fired_r = _col_count(C, "nonzero"), _col_count(R, "nonzero")
    n_pos, n_neg = _col_count(D, "pos"), _col_count(D, "neg")
    var = np.maximum(sq - diff**2, 0.0) * n / max(n - 1, 1)
    se = np.sqrt(var / n)
    still = se <= 1e-12 * np.abs(diff)  # every pair moved by the same amount (or none moved)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(still, np.where(diff != 0, np.sign(diff) * np.inf, np.nan), diff / se)
    if n < 2:
        t = np.full(d, np.nan)
    moved = n_pos + n_neg
    sign_p = np.minimum(1.0, 2.0 * binom.cdf(np.minimum(n_pos, n_neg), moved, 0.5))
    sign_p = np.where(moved > 0, sign_p, 1.0)
    out = pd.DataFrame(
        {
            "feature_id": ids,
            "mean_chosen": mean_c,
            "mean_rejected": mean_r,
            "mean_diff": diff,
            "fire_chosen": fired_c / n,
            "fire_rejected": fired_r / n,
            "fire_diff": (fired_c - fired_r) / n,
            "n_pos": n_pos.astype(np.int64),
            "n_neg": n_neg.astype(np.int64),
            "sign_p": sign_p,
            "t": t,
        }
    )
    out = out[(fired_c + fired_r) >= min_fired].copy()
    out.insert(
        list(out.columns).index("sign_p") + 1, "sign_q", bh_qvalues(out["sign_p"].to_numpy())
    )
    order = np.lexsort((out["feature_id"].to_numpy(), -out[sort_by].fillna(-np.inf).to_numpy()))
    return out.iloc[order].reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class BTProbe:
    """A Bradley-Terry reward probe: P(chosen beats rejected) = sigmoid(w . (x_c - x_r)).

    ``weights`` [d] are in the input's units, so ``score(X) = X @ weights`` is a reward per
    response (only differences between responses mean anything). ``oof_margin`` [n_pairs] is
    w . (x_c - x_r) from a model that never saw that pair's prompt; ``accuracy`` is the
    pairwise accuracy of those margins (ties 0.5) with a bootstrap over prompts. ``penalty``
    and ``C`` (inverse strength) are what inner cross-validation picked for the final model
    (all pairs); ``fold_choices`` what it picked inside each outer fold. ``fold_weights``
    [folds, d] are the outer fold models' weights (row k: trained without fold k's prompts),
    ``fold_groups`` [n_groups] the prompts the probe saw (sorted) and ``group_fold``
    [n_groups] the fold each was held out in: :meth:`score_out_of_fold` reads them.
    """

    weights: np.ndarray
    penalty: str
    C: float
    oof_margin: np.ndarray
    accuracy: Accuracy
    folds: int
    fold_choices: tuple[tuple[str, float], ...]
    not_converged_fits: int
    fold_weights: np.ndarray
    fold_groups: np.ndarray
    group_fold: np.ndarray

    def score(self, X: Any) -> np.ndarray:
        """[n, d] features of responses -> [n] rewards."""
        M = _as_matrix(X, what="BT probe scoring")
        if M.shape[1] != len(self.weights):
            raise StudioError(
                f"BT probe: fitted on {len(self.weights)} features, asked to score {M.shape[1]}"
            )
        return np.asarray(M @ self.weights, dtype=np.float64).ravel()

    def score_out_of_fold(self, X: Any, groups: np.ndarray | Sequence[Any]) -> np.ndarray:
        """[n, d] features of responses and [n] their prompt ids -> [n] rewards, each from the
        fold model that never saw the response's prompt (a prompt the probe never saw gets the
        final ``weights``). For the rows of a pair, chosen minus rejected is that pair's
        ``oof_margin``, so scores stored this way judge the probe out of fold. Prompt ids are
        matched by value (``3`` and ``"3"`` are different prompts)."""
        M = _as_matrix(X, what="BT probe scoring")
        if M.shape[1] != len(self.weights):
            raise StudioError(
                f"BT probe: fitted on {len(self.weights)} features, asked to score {M.shape[1]}"
            )
        g = np.asarray(groups)
        if g.shape != (M.shape[0],):
            raise StudioError(
                f"BT probe: groups must have one value per row ({M.shape[0]}), got {g.shape}"
            )
        fold_of = dict(zip(self.fold_groups.tolist(), self.group_fold.tolist(), strict=True))
        unseen = len(self.fold_weights)  # row index of the final weights in ``models``
        which = np.array([fold_of.get(v, unseen) for v in g.tolist()], dtype=np.int64)
        models = np.vstack([self.fold_weights, self.weights[None, :]])
        out = np.zeros(M.shape[0])
        for k in np.unique(which):
            rows = which == k
            out[rows] = np.asarray(M[rows] @ models[k], dtype=np.float64).ravel()
        return out

    def top_weights(
        self, feature_ids: Sequence[int] | np.ndarray | None = None, *, top: int = TOP_WEIGHTS
    ) -> list[tuple[int, float]]:
        """The ``top`` largest |weight| as (feature_id, weight), zeros left out."""
        ids = np.arange(len(self.weights)) if feature_ids is None else np.asarray(feature_ids)
        order = np.argsort(-np.abs(self.weights), kind="stable")[:top]
        return [(int(ids[i]), float(self.weights[i])) for i in order if self.weights[i] != 0.0]


def _group_folds(groups: np.ndarray, *, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold per row: whole groups dealt round the folds in a seeded random order."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    fold_of = np.empty(len(uniq), dtype=np.int64)
    fold_of[rng.permutation(len(uniq))] = np.arange(len(uniq)) % folds
    return fold_of[inverse.ravel()]


def _bt_fit(D: Any, *, penalty: str, C: float) -> np.ndarray:
    """Weights in input units of a no-intercept logistic fit on D (label 1) and -D (label 0).

    Columns are scaled before the fit, by max |value| when sparse (stays sparse, and a rarely
    firing feature is not blown up) and by root mean square when dense (the doubled data have
    mean 0, so that is their standard deviation). Only the rows given are used for the scale.
    """
    if sparse.issparse(D):
        scale = np.asarray(abs(D).max(axis=0).todense()).ravel()
    else:
        scale = np.sqrt((D * D).mean(axis=0))
    scale = np.where(scale > 0, scale, 1.0)
    S = D @ sparse.diags(1.0 / scale) if sparse.issparse(D) else D / scale
    X2 = sparse.vstack([S, -S], format="csr") if sparse.issparse(S) else np.vstack([S, -S])
    y2 = np.r_[np.ones(D.shape[0]), np.zeros(D.shape[0])]
    if penalty == "l1":
        model = LogisticRegression(
            C=C,
            l1_ratio=1.0,
            solver="liblinear",
            fit_intercept=False,
            max_iter=MAX_ITER,
            random_state=0,
        )
    else:
        model = LogisticRegression(C=C, fit_intercept=False, max_iter=MAX_ITER)
    model.fit(X2, y2)
    return np.ravel(model.coef_) / scale


def _bt_choose(
    D: Any,
    groups: np.ndarray,
    *,
    settings: Sequence[tuple[str, float]],
    rng: np.random.Generator,
) -> tuple[str, float]:
    """The (penalty, C) with the lowest mean validation log-loss over inner group folds; ties go
    to the earlier setting (the more penalised, L2 before L1).

    Each penalty's path runs from the smallest C up and stops BT_PATIENCE steps after its best
    loss: with fewer pairs than features the pairs are often separable, and there the weak end
    only grows overconfident (and liblinear's L1 fits there are the slow ones)."""
    inner = min(BT_INNER_FOLDS, len(np.unique(groups)))
    fold = _group_folds(groups, folds=inner, rng=rng)
    parts = [(D[fold != k], D[fold == k]) for k in range(inner)]
    best, best_loss = settings[0], math.inf
    path: list[float] = []
    for j, (penalty, c) in enumerate(settings):
        if j and penalty != settings[j - 1][0]:
            path = []
        elif len(path) - 1 - int(np.argmin(path or [0.0])) >= BT_PATIENCE:
            continue  # this penalty's path has stopped
        loss = 0.0
        for tr, va in parts:
            margin = np.asarray(va @ _bt_fit(tr, penalty=penalty, C=c)).ravel()
            loss += float(np.logaddexp(0.0, -margin).mean()) / inner
        path.append(loss)
        if loss < best_loss:
            best, best_loss = (penalty, c), loss
    return best


def bt_probe(
    diff_X: Any,
    *,
    groups: np.ndarray | Sequence[Any] | None = None,
    seed: int = 0,
    folds: int = 5,
    penalty: BTPenalty = "auto",
    cs: Sequence[float] = BT_CS,
    n_boot: int = N_BOOT,
) -> BTProbe:
    """Fit a Bradley-Terry reward probe on feature differences and measure it out of fold.

    diff_X: [n_pairs, d] chosen-minus-rejected features (scipy sparse or dense). groups:
    [n_pairs] prompt id per pair (default: every pair its own prompt); the pairs of one prompt
    always fall in the same fold, so no pair is scored by a model that saw its prompt. A
    logistic regression without intercept is fit on each difference (label 1) and its negation
    (label 0), so the classes balance and P(a beats b) = 1 - P(b beats a). The penalty (``l2``,
    ``l1`` for a sparse probe whose few weights can be read, or ``auto``: whichever validates
    better) and C from ``cs`` are chosen by inner group cross-validation on validation
    log-loss, inside each of ``folds`` outer folds and again on all pairs for the final weights.

    >>> rng = np.random.default_rng(0)
    >>> w = np.zeros(6); w[0] = 2.0
    >>> diffs = rng.normal(size=(120, 6)); diffs *= np.sign(diffs @ w)[:, None]  # chosen wins
    >>> probe = bt_probe(diffs, folds=3, n_boot=0)
    >>> probe.accuracy.value > 0.9, probe.top_weights(top=1)[0][0]
    (True, 0)
    """
    if folds < 2:
        raise StudioError(f"BT probe folds must be at least 2, got {folds}")
    if penalty not in get_args(BTPenalty):
        raise StudioError(f"BT probe penalty must be one of {list(get_args(BTPenalty))}")
    if not cs or any(not (math.isfinite(c) and c > 0) for c in cs):
        raise StudioError(f"BT probe: cs must be positive numbers, got {list(cs)}")
    D = _as_matrix(diff_X, what="BT probe")
    n = D.shape[0]
    g = np.arange(n) if groups is None else np.asarray(groups)
    if g.shape != (n,):
        raise StudioError(f"BT probe: groups must have one value per pair ({n}), got {g.shape}")
    n_groups = len(np.unique(g))
    if n_groups < 2 * folds:
        raise StudioError(
            f"BT probe: {n_groups} prompts; {folds} folds need at least {2 * folds} "
            "(each training part needs prompts for the inner search)"
        )
    if (sparse.issparse(D) and D.nnz == 0) or (not sparse.issparse(D) and not np.any(D)):
        raise StudioError(
            "BT probe: chosen and rejected have the same features in every pair; nothing to learn"
        )
    kinds = ("l2", "l1") if penalty == "auto" else (penalty,)
    settings = [(p, float(c)) for p in kinds for c in sorted(cs)]
    rng = np.random.default_rng(seed)
    fold = _group_folds(g, folds=folds, rng=rng)
    uniq, inverse = np.unique(g, return_inverse=True)
    group_fold = np.empty(len(uniq), dtype=np.int64)
    group_fold[inverse.ravel()] = fold
    oof = np.zeros(n)
    fold_weights = np.zeros((folds, D.shape[1]))
    choices: list[tuple[str, float]] = []
    # Many small solves: BLAS threads cost more than they save (as in core.probes); convergence
    # warnings are counted instead of printed.
    with (
        threadpool_limits(limits=1, user_api="blas"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always", ConvergenceWarning)
        for k in range(folds):
            tr, te = fold != k, fold == k
            pen, c = _bt_choose(D[tr], g[tr], settings=settings, rng=rng)
            choices.append((pen, c))
            fold_weights[k] = _bt_fit(D[tr], penalty=pen, C=c)
            oof[te] = np.asarray(D[te] @ fold_weights[k]).ravel()
        best_pen, best_c = _bt_choose(D, g, settings=settings, rng=rng)
        weights = _bt_fit(D, penalty=best_pen, C=best_c)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    outcome = pd.Series(_pair_outcome(oof)).groupby(g, sort=False).agg(["sum", "size"])
    acc = _accuracy(
        outcome["sum"].to_numpy(np.float64),
        outcome["size"].to_numpy(np.float64),
        n=n,
        chance=0.5,
        n_boot=n_boot,
        seed=seed,
        level=LEVEL,
    )
    return BTProbe(
        weights=weights,
        penalty=best_pen,
        C=best_c,
        oof_margin=oof,
        accuracy=acc,
        folds=folds,
        fold_choices=tuple(choices),
        not_converged_fits=sum(issubclass(w.category, ConvergenceWarning) for w in caught),
        fold_weights=fold_weights,
        fold_groups=uniq,
        group_fold=group_fold,
    )


# ---------------------------------------------------------------------------------------------
# Shared checks


def _require_columns(frame: pd.DataFrame, cols: Sequence[str], *, name: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise StudioError(
            f"{name}: missing column(s) {missing}; found {list(map(str, frame.columns))}"
        )


def _with_scores(frame: pd.DataFrame, *, name: str) -> pd.DataFrame:
    """A copy with ``score`` as float64; every score finite, every (example, response) once."""
    if frame.empty:
        raise StudioError(f"{name}: no scored responses")
    out = frame.reset_index(drop=True).copy()
    try:
        out["score"] = pd.to_numeric(out["score"], errors="raise").astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise StudioError(f"{name}: scores must be numbers ({exc})") from exc
    bad = ~np.isfinite(out["score"].to_numpy())
    if bad.any():
        row = out[bad].iloc[0]
        raise StudioError(
            f"{name}: example {row['example_id']!r} response {row['response_idx']} has no "
            f"finite score ({row['score']})"
        )
    dup = out.duplicated(list(KEY))
    if dup.any():
        row = out[dup].iloc[0]
        raise StudioError(
            f"{name}: example {row['example_id']!r} response {row['response_idx']} is scored twice"
        )
    return out


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
