"""Reward metrics on hand-made cases: CORAL against a direct computation, ties and uneven N in
pairwise and 1-of-N accuracy, perfect / inverted / constant scorers, agreement of identical and
reversed sources (overall and within groups of responses), calibration of calibrated and
miscalibrated probabilities and of CORAL logits against labels, SAE feature shifts against scipy's
tests, and a Bradley-Terry probe that finds a planted weight vector out of fold (and stays at
chance on noise), with per-response scores from the fold model that never saw the prompt."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.stats import binomtest, kendalltau, spearmanr, ttest_rel

from core.errors import StudioError
from core.rewards import (
    Accuracy,
    _group_folds,
    accuracy_by,
    agreement,
    agreement_by,
    best_of_n_picks,
    binary_calibration_error,
    bt_probe,
    check_preferences,
    coral_class_probs,
    coral_reward,
    disagreement,
    expected_calibration_error,
    feature_preference_shift,
    margin_curve,
    one_of_n_accuracy,
    ordinal_calibration,
    pairwise_accuracy,
    preference_pairs,
    reliability_table,
    scalar_reward,
)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))


def _prefs(scores: dict[str, list[float]], **extra: dict[str, list]) -> pd.DataFrame:
    """{example_id: [chosen score, rejected scores...]} -> a long preference score frame;
    extra columns as {column: {example_id: [value per response]}}."""
    rows = []
    for ex, vals in scores.items():
        for i, s in enumerate(vals):
            row = {
                "example_id": ex,
                "response_idx": i,
                "role": "chosen" if i == 0 else "rejected",
                "score": s,
            }
            for col, per in extra.items():
                row[col] = per[ex][i]  # type: ignore[index]
            rows.append(row)
    return pd.DataFrame(rows)


# Uneven N: 1, 2 and 3 rejected responses.
UNEVEN = {"a": [3.0, 1.0], "b": [2.0, 1.0, 0.0], "c": [5.0, 4.0, 3.0, 2.0]}
UNEVEN_CHANCE = (1 / 2 + 1 / 3 + 1 / 4) / 3


# --------------------------------------------------------------------------------- heads


def test_coral_reward_matches_direct_computation():
    assert coral_reward(np.zeros((1, 3))).tolist() == [2.5]  # K = 4: 1 + 3 * 0.5
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(50, 3))
    direct = np.array([1.0 + sum(1.0 / (1.0 + math.exp(-v)) for v in row) for row in z])
    np.testing.assert_allclose(coral_reward(z), direct, rtol=1e-12)
    ends = coral_reward(np.array([[-40.0] * 3, [40.0] * 3]))
    np.testing.assert_allclose(ends, [1.0, 4.0], atol=1e-12)  # in [1, K]
    # not a softmax: a softmax-expectation over the 3 logits would give 2.0 here
    assert coral_reward(np.array([[0.0, 0.0, 0.0]]))[0] != pytest.approx(2.0)


def test_coral_class_probs_from_cumulative():
    z = np.array([[2.0, 0.0, -2.0]])
    s = _sigmoid(z[0])
    expected = [1 - s[0], s[0] - s[1], s[1] - s[2], s[2]]
    np.testing.assert_allclose(coral_class_probs(z)[0], expected, rtol=1e-12)
    rng = np.random.default_rng(1)
    z = np.sort(rng.normal(0, 2, size=(40, 4)), axis=1)[:, ::-1]  # falling: nothing clipped
    p = coral_class_probs(z)
    assert p.shape == (40, 5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    # the expected class under these probabilities is the CORAL reward
    np.testing.assert_allclose(p @ np.arange(1, 6), coral_reward(z), rtol=1e-12)


def test_coral_class_probs_clip_rising_cumulatives():
    z = np.array([[-1.0, 1.0, 0.0]])  # P(y>2) > P(y>1): not a distribution without clipping
    p = coral_class_probs(z)[0]
    assert (p >= 0).all()
    assert p.sum() == pytest.approx(1.0)
    s1 = _sigmoid(-1.0)
    np.testing.assert_allclose(p, [1 - s1, 0.0, 0.0, s1], atol=1e-12)  # all clipped to P(y>1)
    assert p @ np.arange(1, 5) < coral_reward(z)[0]  # documented: below the reward


def test_scalar_reward_and_bad_heads():
    assert scalar_reward(np.array([[1.5], [-2.0]])).tolist() == [1.5, -2.0]
    assert scalar_reward(np.array([0.25])).tolist() == [0.25]
    with pytest.raises(StudioError, match="one logit per response"):
        scalar_reward(np.zeros((3, 2)))
    with pytest.raises(StudioError, match="2-D"):
        coral_reward(np.zeros(3))
    with pytest.raises(StudioError, match="NaN"):
        coral_class_probs(np.array([[0.0, np.nan]]))


# --------------------------------------------------------------------- preference metrics


def test_pairwise_accuracy_perfect_inverted_constant_and_ties():
    perfect = _prefs(UNEVEN)
    assert pairwise_accuracy(perfect).value == 1.0
    assert pairwise_accuracy(perfect).n == 6  # 1 + 2 + 3 pairs
    inverted = perfect.assign(score=-perfect["score"])
    assert pairwise_accuracy(inverted).value == 0.0
    constant = perfect.assign(score=1.0)
    assert pairwise_accuracy(constant).value == 0.5  # every pair a tie, each 0.5
    mixed = _prefs({"a": [1.0, 0.0, 1.0, 2.0]})  # a win, a tie, a loss
    acc = pairwise_accuracy(mixed)
    assert (acc.value, acc.n, acc.n_examples, acc.chance) == (0.5, 3, 1, 0.5)


def test_one_of_n_uneven_n_and_ties():
    perfect = _prefs(UNEVEN)
    acc = one_of_n_accuracy(perfect)
    assert acc.value == 1.0
    assert acc.n == 3
    assert acc.chance == pytest.approx(UNEVEN_CHANCE)
    assert one_of_n_accuracy(perfect.assign(score=-perfect["score"])).value == 0.0
    # a tie with the best rejected is a miss, even when the chosen beats the others
    tied = _prefs({"a": [3.0, 3.0, 1.0], "b": [2.0, 1.0]})
    assert one_of_n_accuracy(tied).value == 0.5
    assert one_of_n_accuracy(perfect.assign(score=0.0)).value == 0.0
    # one rejected beating the chosen is enough to miss, though most pairs are right
    mostly = _prefs({"a": [2.0, 1.0, 0.0, 3.0]})
    assert one_of_n_accuracy(mostly).value == 0.0
    assert pairwise_accuracy(mostly).value == pytest.approx(2 / 3)


def test_bootstrap_interval_over_prompts():
    rng = np.random.default_rng(0)
    scores = {f"e{i}": list(rng.normal(size=1 + (i % 3 + 1))) for i in range(60)}
    f = _prefs(scores)
    acc = pairwise_accuracy(f, seed=3)
    assert acc.ci_low is not None and acc.ci_high is not None
    assert acc.ci_low < acc.value < acc.ci_high
    assert 0.05 < acc.ci_high - acc.ci_low < 0.4
    assert pairwise_accuracy(f, seed=3) == acc  # seeded
    assert pairwise_accuracy(f, seed=4).ci_low != acc.ci_low
    none = one_of_n_accuracy(f, n_boot=0)
    assert none.ci_low is None and none.ci_high is None
    sure = one_of_n_accuracy(_prefs(UNEVEN))
    assert (sure.ci_low, sure.ci_high) == (1.0, 1.0)
    # prompts are resampled, not pairs: one prompt with 10 wrong pairs among 9 prompts with one
    # right pair each is in or out as a whole (a pair bootstrap would end near 0.7, not 1.0)
    lumpy = _prefs({"big": [0.0] + [1.0] * 10, **{f"s{i}": [1.0, 0.0] for i in range(9)}})
    acc = pairwise_accuracy(lumpy)
    assert acc.value == pytest.approx(9 / 19)
    assert acc.ci_high == 1.0 and acc.ci_low is not None and acc.ci_low < 0.25
    d = pairwise_accuracy(_prefs(UNEVEN)).to_dict()
    assert set(d) == {"value", "n", "n_examples", "chance", "ci_low", "ci_high", "level"}
    with pytest.raises(StudioError, match="n_boot"):
        pairwise_accuracy(f, n_boot=-1)


def test_bad_preference_frames_name_the_example():
    ok = _prefs(UNEVEN)
    no_rejected = pd.concat([ok, _prefs({"lonely": [1.0]})], ignore_index=True)
    with pytest.raises(StudioError, match="example 'lonely' has no rejected response"):
        pairwise_accuracy(no_rejected)
    no_chosen = ok[~((ok["example_id"] == "b") & (ok["role"] == "chosen"))]
    with pytest.raises(StudioError, match="example 'b' has no chosen response"):
        one_of_n_accuracy(no_chosen)
    two_chosen = ok.copy()
    two_chosen.loc[
        (two_chosen["example_id"] == "c") & (two_chosen["response_idx"] == 1), "role"
    ] = "chosen"
    with pytest.raises(StudioError, match="example 'c' has 2 chosen responses"):
        check_preferences(two_chosen)
    bad_role = ok.assign(role=ok["role"].replace({"rejected": "loser"}))
    with pytest.raises(StudioError, match="role must be 'chosen' or 'rejected'"):
        pairwise_accuracy(bad_role)
    nan = ok.copy()
    nan.loc[6, "score"] = np.nan
    with pytest.raises(StudioError, match="example 'c' response 1 has no finite score"):
        pairwise_accuracy(nan)
    with pytest.raises(StudioError, match="scored twice"):
        pairwise_accuracy(pd.concat([ok, ok.iloc[[0]]]))
    with pytest.raises(StudioError, match=r"missing column\(s\) \['role'\]"):
        pairwise_accuracy(ok.drop(columns="role"))
    with pytest.raises(StudioError, match="no scored responses"):
        pairwise_accuracy(ok.iloc[:0])


def test_preference_pairs_keep_columns():
    f = _prefs({"a": [1.0, 2.0, 0.0]}, style={"a": ["boxed", "terse", "hedged"]})
    pairs = preference_pairs(f, keep=["style"])
    assert pairs["rejected_idx"].tolist() == [1, 2]
    assert pairs["margin"].tolist() == [-1.0, 1.0]
    assert pairs["style_chosen"].tolist() == ["boxed", "boxed"]
    assert pairs["style_rejected"].tolist() == ["terse", "hedged"]


def test_accuracy_by_cluster_and_by_rejected_style():
    scores = {"a": [2.0, 1.0], "b": [2.0, 1.0, 0.0], "c": [0.0, 1.0, 2.0], "d": [1.0, 1.0]}
    cluster = {"a": [0, 0], "b": [0, 0, 0], "c": [1, 1, 1], "d": [None, None]}
    style = {
        "a": ["boxed", "terse"],
        "b": ["boxed", "terse", "hedged"],
        "c": ["terse", "hedged", "terse"],
        "d": ["terse", "hedged"],
    }
    f = _prefs(scores, cluster=cluster, style=style)
    by = accuracy_by(f, by="cluster", n_boot=0)
    assert by["cluster"].tolist()[:2] == [0, 1]
    assert math.isnan(by["cluster"].iloc[2])  # missing values form their own row
    assert by["n_examples"].tolist() == [2, 1, 1]
    assert by["n_pairs"].tolist() == [3, 2, 1]
    assert by["pairwise"].tolist() == [1.0, 0.0, 0.5]
    assert by["one_of_n"].tolist() == [1.0, 0.0, 0.0]
    assert by["one_of_n_chance"].tolist() == pytest.approx([(1 / 2 + 1 / 3) / 2, 1 / 3, 1 / 2])

    with pytest.raises(StudioError, match="'style' differs between the responses of example 'a'"):
        accuracy_by(f, by="style")
    rej = accuracy_by(f, by="style", side="rejected", n_boot=0).set_index("style")
    # hedged rejected: b (win), c (loss), d (tie); terse rejected: a (win), b (win), c (loss)
    assert rej.loc["hedged", "pairwise"] == pytest.approx(0.5)
    assert rej.loc["terse", "pairwise"] == pytest.approx(2 / 3)
    assert rej["one_of_n"].isna().to_numpy().all()
    ch = accuracy_by(f, by="style", side="chosen", n_boot=0).set_index("style")
    assert ch.loc["boxed", "one_of_n"] == 1.0 and ch.loc["terse", "one_of_n"] == 0.0
    with pytest.raises(StudioError, match="side must be one of"):
        accuracy_by(f, by="cluster", side="pair")  # type: ignore[arg-type]
    with pytest.raises(StudioError, match="missing column"):
        accuracy_by(f, by="nope")


def test_margin_curve_keeps_confident_pairs():
    # margins of the four pairs: 3, 0.5, -0.2, 0 (a tie)
    f = _prefs({"a": [3.0, 0.0, 2.5], "b": [1.0, 1.2], "c": [1.0, 1.0]})
    curve = margin_curve(f, margins=[0.0, 0.1, 0.3, 1.0, 5.0])
    assert curve["n_pairs"].tolist() == [3, 3, 2, 1, 0]
    assert curve["kept_share"].tolist() == [0.75, 0.75, 0.5, 0.25, 0.0]
    assert curve["accuracy"].tolist()[:4] == pytest.approx([2 / 3, 2 / 3, 1.0, 1.0])
    assert math.isnan(curve["accuracy"].iloc[4])
    with pytest.raises(StudioError, match="margins"):
        margin_curve(f, margins=[-1.0])


# ------------------------------------------------------------------------------- agreement


def _candidates(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"example_id": ex, "response_idx": i, "score": s}
        for ex, vals in scores.items()
        for i, s in enumerate(vals)
    ]
    return pd.DataFrame(rows)


def test_agreement_identical_and_reversed_sources():
    a = _candidates({"p": [1.0, 2.0, 3.0, 4.0], "q": [0.5, -1.0], "r": [7.0, 6.0, 9.0]})
    same = agreement(a, a)
    assert same.spearman == pytest.approx(1.0) and same.kendall == pytest.approx(1.0)
    assert same.pair_agreement == 1.0
    assert same.pair_kind == "all"
    assert same.n_pairs == 6 + 1 + 3
    assert same.top1_agreement == 1.0
    assert same.top1_chance == pytest.approx((1 / 4 + 1 / 2 + 1 / 3) / 3)
    assert (same.n_items, same.n_prompts, same.n_only_a, same.n_only_b) == (9, 3, 0, 0)
    rev = agreement(a, a.assign(score=-a["score"]))
    assert rev.spearman == pytest.approx(-1.0) and rev.kendall == pytest.approx(-1.0)
    assert (rev.pair_agreement, rev.top1_agreement) == (0.0, 0.0)


def test_agreement_against_scipy_and_with_ties():
    rng = np.random.default_rng(2)
    a = _candidates({f"p{i}": list(rng.normal(size=4)) for i in range(25)})
    b = a.assign(score=a["score"] + rng.normal(0, 1.0, len(a)))
    res = agreement(a, b)
    assert res.spearman == pytest.approx(spearmanr(a["score"], b["score"]).statistic)  # type: ignore[attr-defined]
    assert res.kendall == pytest.approx(kendalltau(a["score"], b["score"]).statistic)  # type: ignore[attr-defined]
    assert 0.5 < res.pair_agreement < 1.0  # type: ignore[operator]
    # a verifier ties often: a tie in one source only counts half a pair
    rm = _candidates({"p": [0.9, 0.1, 0.5]})
    verifier = _candidates({"p": [1.0, 0.0, 0.0]})
    tie = agreement(rm, verifier)
    # pairs (0,1): agree, (0,2): agree, (1,2): rm orders them, verifier ties -> 0.5
    assert tie.pair_agreement == pytest.approx((1 + 1 + 0.5) / 3)
    assert tie.top1_agreement == 1.0
    const = agreement(rm, rm.assign(score=1.0))
    assert const.spearman is None and const.kendall is None
    assert const.top1_agreement == pytest.approx(1 / 3)  # b's pick is a 3-way tie


def test_agreement_on_preferences_uses_chosen_rejected_pairs():
    a = _prefs(UNEVEN)
    b = a.copy()
    b.loc[(b["example_id"] == "c") & (b["response_idx"] == 3), "score"] = 10.0  # beats chosen
    res = agreement(a, b)
    assert res.pair_kind == "preference"
    assert res.n_pairs == 6
    assert res.pair_agreement == pytest.approx(5 / 6)
    assert res.top1_agreement == pytest.approx(2 / 3)
    # only the shared responses count, and the others are reported
    res2 = agreement(a, b[b["response_idx"] != 2])
    assert (res2.n_items, res2.n_only_a, res2.n_only_b) == (7, 2, 0)
    clash = b.assign(role=b["role"].where(b["response_idx"] != 1, "chosen"))
    with pytest.raises(StudioError, match="source a calls it 'rejected', source b 'chosen'"):
        agreement(a, clash)
    with pytest.raises(StudioError, match="share 0 scored response"):
        agreement(a, b.assign(example_id="z" + b["example_id"]))


def test_best_of_n_picks_with_ties():
    a = _candidates({"p": [1.0, 3.0, 2.0], "q": [5.0, 5.0], "solo": [1.0]})
    b = _candidates({"p": [3.0, 3.0, 0.0], "q": [0.0, 1.0], "solo": [2.0]})
    picks = best_of_n_picks(a, b).set_index("example_id")
    assert list(picks.index) == ["p", "q"]  # one candidate: no choice to agree on
    assert picks.loc["p", "pick_a"] == 1 and picks.loc["p", "pick_b"] == 0
    assert picks.loc["p", "n_top_b"] == 2
    assert picks.loc["p", "agree"] == pytest.approx(0.5)  # b breaks its tie at random
    assert picks.loc["q", "agree"] == pytest.approx(0.5)  # a ties on both
    assert picks["chance"].tolist() == pytest.approx([1 / 3, 1 / 2])


def test_disagreement_ranks_and_order():
    a = _candidates({"p": [1.0, 2.0, 3.0, 4.0, 5.0]})
    same = disagreement(a, a)
    assert (same["rank_diff"].to_numpy() == 0).all()
    assert same["rank_a"].sort_values().tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    rev = disagreement(a, a.assign(score=-a["score"]))
    assert rev["rank_diff"].abs().tolist() == [1.0, 1.0, 0.5, 0.5, 0.0]
    assert set(rev["response_idx"].iloc[:2]) == {0, 4}
    assert rev.loc[rev["response_idx"] == 4, "rank_diff"].item() == 1.0  # a likes it, b does not
    two = _candidates({"p": [1.0, 2.0], "q": [10.0, 20.0]})
    pooled = disagreement(two, two.assign(score=[2.0, 1.0, 10.0, 20.0]))
    within = disagreement(two, two.assign(score=[2.0, 1.0, 10.0, 20.0]), within_example=True)
    assert within.loc[within["example_id"] == "q", "rank_diff"].abs().max() == 0.0
    assert np.abs(within["rank_diff"].to_numpy()).max() == 1.0
    assert np.abs(pooled["rank_diff"].to_numpy()).max() == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- calibration


def _keyed(scores: dict[str, list[float]], **cols: dict[str, list]) -> pd.DataFrame:
    """{example_id: [score per response]} -> example_id, response_idx, score (+ columns)."""
    rows = [
        {"example_id": ex, "response_idx": i, "score": s, **{c: v[ex][i] for c, v in cols.items()}}
        for ex, vals in scores.items()
        for i, s in enumerate(vals)
    ]
    return pd.DataFrame(rows)


def _by_group(frame: pd.DataFrame) -> dict:
    return {r["group"]: r for r in frame.to_dict("records")}


def test_agreement_by_group_of_responses_best_of_n():
    a = _keyed({"p": [1.0, 2.0, 3.0, 4.0], "q": [4.0, 3.0, 2.0, 1.0]})
    b = _keyed({"p": [2.0, 1.0, 3.0, 4.0], "q": [4.0, 3.0, 1.0, 2.0]})
    groups = _keyed(
        {"p": [0, 0, 0, 0], "q": [0, 0, 0, 0]},
        group={"p": ["x", "x", "y", "y"], "q": ["x", "x", "y", "z"]},
    ).drop(columns="score")
    out = agreement_by(a, b, groups)
    assert out["group"].tolist() == ["x", "y", "z"]
    x, y, z = (_by_group(out)[g] for g in "xyz")
    # x: p0 p1 q0 q1; a = 1 2 4 3, b = 2 1 4 3: one rank swap of four
    assert x["n_items"] == 4
    assert x["spearman"] == pytest.approx(0.8) and x["kendall"] == pytest.approx(4 / 6)
    # pairs only within a prompt inside x: (p0, p1) flipped, (q0, q1) agreed
    assert (x["pair_agreement"], x["n_pairs"]) == (0.5, 2)
    # best of x per prompt: p: a picks 1, b picks 0; q: both pick 0
    assert (x["top1_agreement"], x["top1_chance"], x["n_prompts"]) == (0.5, 0.5, 2)
    # y: p2 p3 q2, the same order in both; q has one response in y: no pair, no pick
    assert y["n_items"] == 3 and y["spearman"] == pytest.approx(1.0)
    assert (y["pair_agreement"], y["n_pairs"], y["top1_agreement"], y["n_prompts"]) == (
        1.0,
        1,
        1.0,
        1,
    )
    # z: one response, nothing is defined
    assert z["n_items"] == 1 and z["n_pairs"] == 0 and z["n_prompts"] == 0
    for col in ("spearman", "kendall", "pair_agreement", "top1_agreement"):
        assert math.isnan(z[col]), col
    # the same as agreement() on the group's responses alone
    in_y = groups["group"].eq("y").to_numpy()
    alone = agreement(a[in_y], b[in_y])
    assert alone.spearman == pytest.approx(y["spearman"]) and alone.n_pairs == y["n_pairs"]


def test_agreement_by_on_preferences_needs_both_sides_in_the_group():
    a = _prefs({"p": [3.0, 1.0, 2.0], "q": [1.0, 2.0]})
    b = _prefs({"p": [3.0, 2.0, 1.0], "q": [5.0, 5.0]})
    per_response = a[["example_id", "response_idx"]].assign(group=["g1", "g1", "g2", "g1", "g1"])
    g1, g2 = (_by_group(agreement_by(a, b, per_response))[g] for g in ("g1", "g2"))
    # g1 pairs: (p0, p1) agree; (q0, q1) a orders it, b ties: 0.5. (p0, p2) crosses groups
    assert (g1["n_items"], g1["pair_agreement"], g1["n_pairs"]) == (4, 0.75, 2)
    assert (g2["n_items"], g2["n_pairs"]) == (1, 0) and math.isnan(g2["pair_agreement"])
    # a group per prompt (no response_idx): q's b scores are constant -> no correlation
    per_prompt = pd.DataFrame({"example_id": ["p", "q"], "group": ["A", "B"]})
    A, B = (_by_group(agreement_by(a, b, per_prompt))[g] for g in "AB")
    assert (A["pair_agreement"], A["n_pairs"], A["spearman"]) == (1.0, 2, pytest.approx(0.5))
    assert math.isnan(B["spearman"]) and math.isnan(B["kendall"])
    assert B["pair_agreement"] == 0.5
    assert B["top1_agreement"] == 0.5  # a picks q1; b ties q0 and q1
    # a response missing from groups falls in a row of its own, last
    partial = agreement_by(a, b, per_response.iloc[:-1])
    assert partial["n_items"].tolist() == [3, 1, 1] and _missing_last(partial["group"].tolist())
    with pytest.raises(StudioError, match="more than one group"):
        agreement_by(a, b, pd.concat([per_response, per_response.iloc[:1]]))
    with pytest.raises(StudioError, match="missing column"):
        agreement_by(a, b, per_response.rename(columns={"group": "cluster"}))


def _missing_last(values: list) -> bool:
    return values[:-1] == ["g1", "g2"] and isinstance(values[-1], float) and math.isnan(values[-1])


def test_ece_calibrated_and_miscalibrated():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([1, 1, 1, 2])) == 0.0
    assert expected_calibration_error(probs, np.array([2, 2, 2, 2])) == pytest.approx(0.75)
    # two bins: 0.6-confident and right 60%, 0.9-confident and right half the time
    probs = np.array([[0.6, 0.4, 0.0]] * 5 + [[0.05, 0.05, 0.9]] * 4)
    labels = np.array([1, 1, 1, 2, 3, 3, 3, 1, 2])
    expected = (5 * abs(0.6 - 0.6) + 4 * abs(0.5 - 0.9)) / 9
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    # labels drawn from the CORAL class probabilities themselves: calibrated by construction
    rng = np.random.default_rng(0)
    p = coral_class_probs(np.sort(rng.normal(0, 2, size=(20000, 3)), axis=1)[:, ::-1])
    labels = (rng.random(len(p))[:, None] > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1) + 1
    assert expected_calibration_error(p, labels) < 0.02
    assert expected_calibration_error(p, np.ones(len(p), dtype=int)) > 0.2


def test_binary_ece_and_reliability_table():
    assert (
        binary_calibration_error(
            np.array([0.25] * 4 + [0.75] * 4), np.array([0, 0, 0, 1, 1, 1, 1, 0])
        )
        == 0.0
    )
    assert binary_calibration_error(np.array([0.9, 0.9]), np.array([0, 0])) == pytest.approx(0.9)
    # bins are (lo, hi]; 0 falls in the first, 1 in the last
    t = reliability_table(np.array([0.0, 0.1, 0.15, 1.0]), np.array([0, 1, 0, 1]), n_bins=10)
    assert t["count"].tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert t.loc[0, "confidence"] == pytest.approx(0.05) and t.loc[0, "accuracy"] == 0.5
    assert np.isnan(t["confidence"].to_numpy()).sum() == 7
    top = reliability_table(np.array([[0.2, 0.8], [0.7, 0.3]]), np.array([2, 2]), n_bins=10)
    assert top.loc[top["count"] > 0, "accuracy"].tolist() == [0.0, 1.0]  # 0.7 wrong, 0.8 right
    assert top["count"].to_numpy().sum() == 2


def test_bad_calibration_inputs():
    with pytest.raises(StudioError, match="sums to"):
        expected_calibration_error(np.array([[0.5, 0.6]]), np.array([1]))
    with pytest.raises(StudioError, match=r"whole numbers 1\.\.2"):
        expected_calibration_error(np.array([[0.5, 0.5]]), np.array([0]))
    with pytest.raises(StudioError, match="outcomes 0 or 1"):
        binary_calibration_error(np.array([0.5]), np.array([2]))
    with pytest.raises(StudioError, match="binary_calibration_error"):
        expected_calibration_error(np.array([0.5]), np.array([1]))
    with pytest.raises(StudioError, match="labels of shape"):
        reliability_table(np.array([0.5, 0.5]), np.array([1]))
    with pytest.raises(StudioError, match="n_bins"):
        reliability_table(np.array([0.5]), np.array([1]), n_bins=0)


# ----------------------------------------------------------------------- SAE feature shifts


def _pair_features(n: int = 200, d: int = 30, seed: int = 0):
    """Sparse non-negative activations for chosen and rejected responses; feature 4 fires more
    in chosen, feature 9 more in rejected, the rest alike."""
    rng = np.random.default_rng(seed)

    def draw():
        X = sparse.random(n, d, density=0.15, format="lil", rng=rng)
        return X

    C, R = draw(), draw()
    C[:, 4] = (rng.random((n, 1)) < 0.7) * rng.exponential(2.0, (n, 1))
    R[:, 4] = (rng.random((n, 1)) < 0.2) * rng.exponential(1.0, (n, 1))
    R[:, 9] = (rng.random((n, 1)) < 0.6) * rng.exponential(1.0, (n, 1))
    C[:, 9] = 0.0
    C[:, 20] = 0.0
    R[:, 20] = 0.0  # never fires
    return sparse.csr_matrix(C), sparse.csr_matrix(R)


def test_feature_preference_shift_finds_planted_features():
    C, R = _pair_features()
    ids = np.arange(100, 130)
    shift = feature_preference_shift(C, R, ids)
    assert shift["feature_id"].iloc[0] == 104
    assert shift["feature_id"].iloc[-1] == 109
    assert 120 not in set(shift["feature_id"])  # fired nowhere: left out
    assert len(feature_preference_shift(C, R, ids, min_fired=0)) == 30
    row = shift.set_index("feature_id").loc[104]
    c4, r4 = C[:, 4].toarray().ravel(), R[:, 4].toarray().ravel()
    assert row["mean_diff"] == pytest.approx(c4.mean() - r4.mean())
    assert row["fire_chosen"] == pytest.approx((c4 > 0).mean())
    assert row["t"] == pytest.approx(ttest_rel(c4, r4).statistic)  # type: ignore[attr-defined]
    n_pos, n_neg = int((c4 > r4).sum()), int((c4 < r4).sum())
    assert (row["n_pos"], row["n_neg"]) == (n_pos, n_neg)
    assert row["sign_p"] == pytest.approx(binomtest(n_pos, n_pos + n_neg).pvalue)
    assert row["sign_p"] < 1e-6
    noise = shift.set_index("feature_id").drop(index=[104, 109])
    assert (noise["sign_p"].to_numpy() > 1e-4).all()
    dense = feature_preference_shift(C.toarray(), R.toarray(), ids)
    pd.testing.assert_frame_equal(shift, dense)
    by_t = feature_preference_shift(C, R, ids, sort_by="t")
    assert by_t["t"].is_monotonic_decreasing


def test_feature_preference_shift_edge_cases():
    C = np.array([[1.0, 0.0], [2.0, 0.0]])
    R = np.array([[0.0, 0.0], [1.0, 0.0]])
    shift = feature_preference_shift(C, R, min_fired=0).set_index("feature_id")
    assert shift.loc[0, "t"] == np.inf  # every pair up by exactly 1
    assert math.isnan(shift.loc[1, "t"]) and shift.loc[1, "sign_p"] == 1.0
    with pytest.raises(StudioError, match="same shape"):
        feature_preference_shift(C, R[:1])
    with pytest.raises(StudioError, match="feature_ids"):
        feature_preference_shift(C, R, [1, 2, 3])
    with pytest.raises(StudioError, match="NaN or inf"):
        feature_preference_shift(C, np.array([[np.nan, 0.0], [0.0, 0.0]]))


def test_ordinal_calibration_on_hand_made_logits():
    ln3 = math.log(3.0)
    logits = np.array([[0.0, 0.0], [0.0, 0.0], [ln3, -ln3], [ln3, -ln3], [20.0, 20.0]])
    # class probabilities (K = 3): [.5, 0, .5] (class 1 wins the tie), [.25, .5, .25], ~[0, 0, 1]
    labels = np.array([1, 3, 2, 2, 3])
    cal = ordinal_calibration(logits, labels, ids=list("abcde"))
    assert (cal.n, cal.k) == (5, 3)
    # four rows at confidence 0.5, right 3 times (gap .25); one at ~1, right: ECE = 4 * .25 / 5
    assert cal.ece == pytest.approx(0.2, abs=1e-8)
    assert cal.ece == pytest.approx(expected_calibration_error(coral_class_probs(logits), labels))
    used = cal.table[cal.table["count"] > 0]
    assert used["bin"].tolist() == [4, 9] and used["count"].tolist() == [4, 1]
    assert used["accuracy"].tolist() == [0.75, 1.0]
    assert cal.label_counts == {1: 1, 2: 2, 3: 2}
    assert cal.predicted_counts == {1: 2, 2: 2, 3: 1}
    assert cal.accuracy == pytest.approx(0.8) and cal.mean_label == pytest.approx(2.2)
    assert cal.mean_reward == pytest.approx(2.2)  # 2, 2, 2, 2 and ~3
    plain = cal.to_dict()
    assert plain["table"][0]["confidence"] is None and plain["table"][4]["count"] == 4
    with pytest.raises(StudioError, match=r"example 'c' has label 4, outside 1..3"):
        ordinal_calibration(logits, [1, 3, 4, 2, 3], ids=list("abcde"))
    with pytest.raises(StudioError, match=r"row 0 has label 1.5"):
        ordinal_calibration(logits, [1.5, 3, 2, 2, 3])
    with pytest.raises(StudioError, match="K >= 3"):
        ordinal_calibration(np.zeros((2, 1)), [1, 2])
    with pytest.raises(StudioError, match="labels of shape"):
        ordinal_calibration(logits, [1, 2])


# -------------------------------------------------------------------------- BT reward probe


def _planted_preferences(n_prompts: int = 150, n_rej: int = 3, d: int = 40, seed: int = 0):
    """Responses with sparse features; the true reward is X @ w (5 features), chosen = the
    response with the highest noisy reward of its prompt. Returns X, w, (chosen, rejected)
    row pairs and the prompt of each pair."""
    rng = np.random.default_rng(seed)
    n = n_prompts * (n_rej + 1)
    X = sparse.csr_matrix(sparse.random(n, d, density=0.3, rng=rng))
    X.data = rng.exponential(1.0, X.nnz)
    w = np.zeros(d)
    w[[2, 7, 11, 23, 31]] = [2.0, -1.5, 1.0, 1.5, -2.0]
    reward = X @ w + rng.normal(0, 0.3, n)
    pairs, groups = [], []
    for p in range(n_prompts):
        rows = np.arange(p * (n_rej + 1), (p + 1) * (n_rej + 1))
        best = rows[np.argmax(reward[rows])]
        pairs += [(best, r) for r in rows if r != best]
        groups += [p] * n_rej
    return X, w, np.array(pairs), np.array(groups)


def test_bt_probe_recovers_planted_weights():
    X, w, pairs, groups = _planted_preferences()
    D = X[pairs[:, 0]] - X[pairs[:, 1]]
    probe = bt_probe(D, groups=groups, seed=0, folds=5)
    assert probe.accuracy.value > 0.85  # out of fold; chance 0.5
    assert probe.accuracy.ci_low is not None and probe.accuracy.ci_low > 0.75
    assert probe.accuracy.n == len(pairs) and probe.accuracy.n_examples == 150
    assert np.corrcoef(probe.weights, w)[0, 1] > 0.8
    top = {fid for fid, _ in probe.top_weights(top=5)}
    assert len(top & {2, 7, 11, 23, 31}) >= 4
    assert np.sign(probe.weights[[2, 7, 11, 23, 31]]).tolist() == [1, -1, 1, 1, -1]
    # a reward per response: score(chosen) - score(rejected) is the margin on the difference
    np.testing.assert_allclose(
        probe.score(X[pairs[:, 0]]) - probe.score(X[pairs[:, 1]]), probe.score(D), atol=1e-9
    )
    assert len(probe.fold_choices) == 5 and probe.penalty in ("l1", "l2")
    again = bt_probe(D, groups=groups, seed=0, folds=5)
    np.testing.assert_array_equal(again.weights, probe.weights)  # seeded


def test_bt_probe_scores_held_out_prompts_dense_and_sparse():
    X, _, pairs, groups = _planted_preferences(n_prompts=200, seed=1)
    train = groups < 150
    D = X[pairs[train, 0]] - X[pairs[train, 1]]
    for M, penalty in ((D, "l2"), (D.toarray(), "l2"), (D, "l1")):
        probe = bt_probe(M, groups=groups[train], folds=3, penalty=penalty, n_boot=0)  # type: ignore[arg-type]
        held = pairs[~train]
        won = probe.score(X[held[:, 0]]) > probe.score(X[held[:, 1]].toarray())
        assert won.mean() > 0.85, penalty
        assert probe.penalty == penalty
    l1 = bt_probe(D, groups=groups[train], folds=3, penalty="l1", n_boot=0)
    assert np.count_nonzero(l1.weights) < len(l1.weights)  # sparse


def test_bt_probe_on_noise_stays_at_chance():
    rng = np.random.default_rng(5)
    D = sparse.random(600, 50, density=0.2, format="csr", rng=rng)
    D.data = rng.normal(size=D.nnz)  # no relation between features and which side won
    probe = bt_probe(D, groups=np.repeat(np.arange(200), 3), seed=1, n_boot=200)
    assert 0.4 < probe.accuracy.value < 0.6
    assert probe.accuracy.ci_low < 0.5 < probe.accuracy.ci_high  # type: ignore[operator]


def test_bt_probe_keeps_prompts_in_one_fold():
    groups = np.repeat(np.array(["x", "y", "z", "u", "v", "w", "t"]), [1, 2, 3, 4, 5, 6, 7])
    fold = _group_folds(groups, folds=3, rng=np.random.default_rng(0))
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    assert set(fold) == {0, 1, 2}
    # a leak would show here: each prompt's 4 pairs are the same random difference, so a model
    # that saw a prompt in training "predicts" it; across prompts there is nothing to learn
    rng = np.random.default_rng(0)
    D = np.repeat(rng.normal(size=(120, 60)), 4, axis=0)
    # one fixed weak penalty: the inner search would otherwise pick an all-zero model (ties,
    # exactly 0.5) on the grouped data and hide a leak in the outer folds
    fixed = {"penalty": "l2", "cs": [10.0], "n_boot": 0}
    grouped = bt_probe(D, groups=np.repeat(np.arange(120), 4), **fixed)  # type: ignore[arg-type]
    assert 0.35 < grouped.accuracy.value < 0.6
    leaky = bt_probe(D, groups=None, **fixed)  # type: ignore[arg-type]
    assert leaky.accuracy.value > 0.62  # every pair its own group: duplicates leak
    chosen = bt_probe(D, groups=np.repeat(np.arange(120), 4), n_boot=0)  # inner search on
    assert 0.4 < chosen.accuracy.value < 0.6


def test_bt_probe_scores_each_response_out_of_fold():
    X, _, pairs, groups = _planted_preferences(n_prompts=60, seed=2)
    D = X[pairs[:, 0]] - X[pairs[:, 1]]
    probe = bt_probe(D, groups=groups, folds=3, n_boot=0)
    assert probe.fold_weights.shape == (3, np.shape(X)[1])
    assert probe.fold_groups.tolist() == list(range(60)) and set(probe.group_fold) == {0, 1, 2}
    # chosen minus rejected, each response scored on its own, is the out-of-fold margin
    chosen = probe.score_out_of_fold(X[pairs[:, 0]], groups)
    rejected = probe.score_out_of_fold(X[pairs[:, 1]].toarray(), groups)
    np.testing.assert_allclose(chosen - rejected, probe.oof_margin, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(probe.score_out_of_fold(D, groups), probe.oof_margin)
    # each prompt by the model of the fold it was held out in, and by no other
    for p in (0, 17, 59):
        rows = groups == p
        k = int(probe.group_fold[p])
        got = probe.score_out_of_fold(X[pairs[rows, 0]], groups[rows])
        np.testing.assert_allclose(got, X[pairs[rows, 0]] @ probe.fold_weights[k])
        for j in {0, 1, 2} - {k}:
            assert not np.allclose(got, X[pairs[rows, 0]] @ probe.fold_weights[j])
    # a prompt the probe never saw: the final weights
    unseen = probe.score_out_of_fold(X[:5], np.array([1000, 1001, 1002, 1003, 1004]))
    np.testing.assert_allclose(unseen, probe.score(X[:5]))
    mixed = probe.score_out_of_fold(X[:2], np.array([0, 1000]))
    assert mixed[1] == pytest.approx(probe.score(X[1:2])[0])
    assert mixed[0] == pytest.approx((X[0] @ probe.fold_weights[probe.group_fold[0]])[0])
    with pytest.raises(StudioError, match="one value per row"):
        probe.score_out_of_fold(X[:3], groups[:2])
    with pytest.raises(StudioError, match="fitted on 40 features"):
        probe.score_out_of_fold(np.zeros((2, 3)), [0, 1])


def test_out_of_fold_scores_do_not_leak_a_prompt_into_its_own_score():
    # every prompt's 4 pairs are the same random difference: nothing carries across prompts,
    # so any model that saw a prompt "predicts" it and one that did not is at chance
    rng = np.random.default_rng(0)
    D = np.repeat(rng.normal(size=(120, 60)), 4, axis=0)
    groups = np.repeat(np.arange(120), 4).astype(str)
    probe = bt_probe(D, groups=groups, penalty="l2", cs=[10.0], n_boot=0)
    zeros = np.zeros_like(D)  # the rejected responses: a chosen row's score is its margin
    oof = probe.score_out_of_fold(D, groups) - probe.score_out_of_fold(zeros, groups)
    assert 0.35 < (oof > 0).mean() < 0.65
    assert (probe.score(D) > 0).mean() > 0.75  # the final weights saw every prompt
    # the fold models that saw a prompt would leak it: score each row with the next fold's
    fold_of = dict(zip(probe.fold_groups.tolist(), probe.group_fold.tolist(), strict=True))
    row_fold = np.array([fold_of[g] for g in groups])
    np.testing.assert_allclose(np.einsum("nd,nd->n", D, probe.fold_weights[row_fold]), oof)
    wrong = np.einsum("nd,nd->n", D, probe.fold_weights[(row_fold + 1) % probe.folds])
    assert (wrong > 0).mean() > 0.85


def test_bt_probe_bad_input():
    D = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(StudioError, match="at least 10"):
        bt_probe(D, groups=np.repeat(np.arange(6), 5))
    with pytest.raises(StudioError, match="nothing to learn"):
        bt_probe(np.zeros((30, 4)))
    with pytest.raises(StudioError, match="one value per pair"):
        bt_probe(D, groups=np.arange(5))
    with pytest.raises(StudioError, match="folds"):
        bt_probe(D, folds=1)
    with pytest.raises(StudioError, match="penalty"):
        bt_probe(D, penalty="l3")  # type: ignore[arg-type]
    probe = bt_probe(D, folds=2, n_boot=0)
    with pytest.raises(StudioError, match="fitted on 4 features"):
        probe.score(np.zeros((2, 5)))


def test_accuracy_is_plain_data():
    acc = Accuracy(value=0.5, n=2, n_examples=1, chance=0.5, ci_low=None, ci_high=None)
    assert acc.to_dict()["level"] == 0.95
