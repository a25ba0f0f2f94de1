"""Probes and baselines: planted signals are found, noise is not, held-out clusters are honest,
and every bad input is a one-line StudioError naming the label."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import sparse

from core.clustering import check_k
from core.errors import StudioError
from core.probes import (
    ProbeConfig,
    ProbeKind,
    check_labels,
    cluster_quality,
    compare_clusterings,
    compare_probes,
    fit_probe,
    tfidf_matrix,
)

PLANTED = (3, 17, 42)


def _sparse_features(n: int = 300, d: int = 120, density: float = 0.1, seed: int = 0):
    """Non-negative sparse activations, like pooled SAE features."""
    rng = np.random.default_rng(seed)
    X = sparse.random(n, d, density=density, format="csr", rng=rng)
    X.data = rng.exponential(1.0, size=X.nnz)
    return X


def _planted(n: int = 300, seed: int = 0):
    """y depends on three columns only, plus a little noise."""
    X = _sparse_features(n=n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    dense = X.toarray()
    y = 2.0 * dense[:, 3] - 1.5 * dense[:, 17] + 1.0 * dense[:, 42] + rng.normal(0, 0.1, n)
    return X, y


def _clustered(k: int = 6, per: int = 50, d: int = 60, seed: int = 0):
    """k clusters, each firing its own block of features; y is a per-cluster offset only."""
    rng = np.random.default_rng(seed)
    width = d // k
    X = np.zeros((k * per, d))
    for c in range(k):
        X[c * per : (c + 1) * per, c * width : (c + 1) * width] = rng.random((per, width)) + 0.5
    groups = np.repeat(np.arange(k), per)
    offsets = rng.normal(0, 1, k)
    y = offsets[groups] + rng.normal(0, 0.05, len(groups))
    return sparse.csr_matrix(X), y, groups


def test_planted_regression_signal_is_recovered():
    X, y = _planted()
    res = fit_probe(X, y, cfg=ProbeConfig(kind="elasticnet"), name="difficulty")
    assert res.metrics["in_distribution"]["r2"] > 0.5
    assert res.metrics["in_distribution"]["spearman"] > 0.5
    assert res.metrics["by_cluster"] is None  # no groups given
    assert set(PLANTED) <= {col for col, _ in res.weights[:5]}
    assert {"alpha", "l1_ratio"} <= set(res.params)
    strengths = [abs(w) for _, w in res.weights]
    assert strengths == sorted(strengths, reverse=True)


def test_ridge_recovers_planted_signal_on_dense_input():
    X, y = _planted()
    res = fit_probe(X.toarray(), y, cfg=ProbeConfig(kind="ridge"), name="difficulty")
    assert res.metrics["in_distribution"]["r2"] > 0.5
    assert set(PLANTED) <= {col for col, _ in res.weights[:3]}
    assert "alpha" in res.params


def test_planted_binary_signal_gives_high_auc():
    X = _sparse_features(n=400)
    bad = ((X[:, 3].toarray() > 0) | (X[:, 17].toarray() > 0)).ravel().astype(float)
    res = fit_probe(X, bad, cfg=ProbeConfig(kind="logistic"), name="bad")
    ind = res.metrics["in_distribution"]
    assert ind["auc"] > 0.9
    assert ind["base_rate_1"] == pytest.approx(bad.mean())
    assert ind["base_rate_0"] == pytest.approx(1.0 - bad.mean())
    for c in (0, 1):  # each class more than halfway from its chance level to perfect
        rate = ind[f"base_rate_{c}"]
        assert ind[f"average_precision_{c}"] > rate + 0.5 * (1.0 - rate)
    assert {3, 17} <= {col for col, _ in res.weights[:2]}
    assert ((res.predictions >= 0) & (res.predictions <= 1)).all()  # P(bad)
    assert "C" in res.params


def test_noise_labels_give_no_skill():
    X = _sparse_features(seed=3)
    y = np.random.default_rng(4).normal(size=300)
    res = fit_probe(X, y, cfg=ProbeConfig(kind="elasticnet"), name="noise")
    assert res.metrics["in_distribution"]["r2"] < 0.05


def test_held_out_clusters_expose_a_cluster_confound():
    X, y, groups = _clustered()
    res = fit_probe(X, y, cfg=ProbeConfig(kind="ridge"), name="difficulty", groups=groups)
    ind, ood = res.metrics["in_distribution"], res.metrics["by_cluster"]
    assert ind["r2"] > 0.8  # the cluster is easy to recognise...
    assert ood["r2"] < 0.2  # ...but its offset cannot be known for a cluster never seen
    assert ood["n_groups"] == 6
    assert ood["skipped_folds"] == 0


def test_oof_is_nan_exactly_on_unlabelled_rows():
    X, y = _planted()
    y = y.copy()
    y[::3] = np.nan
    res = fit_probe(X, y, cfg=ProbeConfig(kind="elasticnet"), name="difficulty")
    assert (np.isnan(res.oof) == np.isnan(y)).all()
    # what a score column stores: out of fold where labelled, the final model elsewhere
    labelled = ~np.isnan(y)
    assert np.array_equal(res.scores[labelled], res.oof[labelled])
    assert np.array_equal(res.scores[~labelled], res.predictions[~labelled])
    assert np.isfinite(res.predictions).all()
    assert res.predictions.shape == y.shape
    assert res.n_labelled == int((~np.isnan(y)).sum())
    assert res.metrics["in_distribution"]["n"] == res.n_labelled


def test_max_rows_caps_the_fit_but_every_labelled_row_gets_an_oof():
    X, y = _planted()
    res = fit_probe(X, y, cfg=ProbeConfig(kind="elasticnet", max_rows=150), name="difficulty")
    assert res.metrics["in_distribution"]["n"] == 150
    assert res.n_labelled == 300
    assert np.isfinite(res.oof).all()


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def test_stored_scores_of_a_memorisable_label_do_not_recite_it():
    """A coin-flip label on many sparse features: the final model fits it in sample (so a column
    of its predictions would separate the label almost perfectly) but has nothing to find out of
    fold. The scores a run stores for labelled rows must be the out-of-fold ones."""
    n, d = 200, 3000
    X = _sparse_features(n=n + 40, d=d, density=0.01, seed=7)
    y = np.random.default_rng(8).integers(0, 2, n + 40).astype(float)
    y[n:] = np.nan  # 40 unlabelled rows
    res = fit_probe(X, y, cfg=ProbeConfig(kind="logistic"), name="coin")
    lab = ~np.isnan(y)
    in_sample = _auc(y[lab], res.predictions[lab])
    assert in_sample > 0.9  # the final model memorised the coin flips
    stored = _auc(y[lab], res.scores[lab])
    assert stored == pytest.approx(res.metrics["in_distribution"]["auc"])  # the OOF figure
    assert abs(stored - 0.5) < 0.15
    assert np.array_equal(res.scores[~lab], res.predictions[~lab])  # unlabelled: final model


def test_a_labelled_row_of_a_skipped_fold_gets_no_score():
    """The fold holding the only non-zero label trains on a constant and is skipped: its rows
    have no out-of-fold prediction, and their stored score is NaN, not the in-sample one."""
    X = _sparse_features(n=24, seed=9)
    y = np.zeros(24)
    y[5] = 1.0
    res = fit_probe(X, y, cfg=ProbeConfig(kind="ridge", folds=2), name="flatish")
    skipped = np.isnan(res.oof)
    assert res.metrics["in_distribution"]["skipped_folds"] == 1 and skipped.sum() == 12
    assert np.isnan(res.scores[skipped]).all() and np.isfinite(res.predictions).all()
    assert np.array_equal(res.scores[~skipped], res.oof[~skipped])


def test_average_precision_is_reported_per_class_beside_its_base_rate():
    """A rare bad class (label 0): the common class's AP is high whatever the ranking, so the
    rare class gets its own AP, and a ranking with no skill sits at its base rate."""
    X = _sparse_features(n=600, seed=10)
    rng = np.random.default_rng(11)
    y = (rng.random(600) > 0.05).astype(float)  # ~5% bad (label 0), unrelated to X
    ind = fit_probe(X, y, cfg=ProbeConfig(kind="logistic"), name="clean").metrics["in_distribution"]
    assert ind["base_rate_0"] + ind["base_rate_1"] == pytest.approx(1.0)
    assert ind["base_rate_0"] == pytest.approx(1.0 - y.mean())
    assert ind["average_precision_1"] > 0.9  # the majority's AP: high and meaningless
    assert ind["average_precision_0"] < ind["base_rate_0"] + 0.1  # no skill for the bad rows
    assert "average_precision" not in ind and "positive_rate" not in ind


def test_a_fold_without_positives_is_skipped_and_auc_is_none():
    X = _sparse_features(n=200, seed=5)
    groups = np.repeat(np.arange(4), 50)
    y = np.zeros(200)
    y[:10] = 1.0  # every positive in cluster 0: the fold holding it out trains on one class
    res = fit_probe(X, y, cfg=ProbeConfig(kind="logistic"), name="bad", groups=groups)
    ood = res.metrics["by_cluster"]
    assert ood["skipped_folds"] == 1
    assert ood["auc"] is None  # the other folds' test rows are all negative
    assert ood["n"] == 150
    json.dumps(res.metrics, allow_nan=False)


def test_metrics_and_params_are_json_serialisable():
    X, y, groups = _clustered()
    cases: list[tuple[ProbeKind, np.ndarray]] = [
        ("elasticnet", y),
        ("logistic", (y > np.median(y)).astype(float)),
    ]
    for kind, label in cases:
        res = fit_probe(X, label, cfg=ProbeConfig(kind=kind), name="q", groups=groups)
        json.dumps({"metrics": res.metrics, "params": res.params}, allow_nan=False)
        json.dumps(res.weights, allow_nan=False)


def test_compare_probes_sparse_and_dense_side_by_side():
    X, y = _planted()
    rng = np.random.default_rng(0)
    dense = np.hstack([X.toarray()[:, list(PLANTED)], rng.normal(size=(len(y), 8))])
    groups = np.arange(len(y)) % 4
    out = compare_probes(
        {"sae": X, "dense": dense},
        y,
        cfg=ProbeConfig(kind="ridge"),
        name="difficulty",
        groups=groups,
    )
    assert set(out) == {"sae", "dense"}
    for metrics in out.values():
        assert metrics["in_distribution"]["r2"] > 0.5
        assert metrics["by_cluster"]["n_groups"] == 4
        assert "alpha" in metrics["params"]
    json.dumps(out, allow_nan=False)


def test_compare_probes_checks_every_representation_before_fitting():
    X, y = _planted()
    with pytest.raises(StudioError, match="'difficulty' on dense: 5 feature rows"):
        compare_probes(
            {"sae": X, "dense": np.zeros((5, 3))},
            y,
            cfg=ProbeConfig(kind="ridge"),
            name="difficulty",
            groups=None,
        )


@pytest.mark.parametrize(
    ("kind", "values", "value_range", "message"),
    [
        ("ridge", [1.0, 2.0] * 5, None, r"'score': only 10 labelled rows.*at least 20"),
        ("ridge", [0.5] * 30, None, r"'score': all 30 labelled rows have the value 0.5"),
        (
            "ridge",
            [0.1, 0.9] * 14 + [1.5, 0.2],
            (0.0, 1.0),
            r"'score': value 1.5 \(row 28\).*\[0, 1\]",
        ),
        ("logistic", [0.0, 1.0, 2.0] * 10, None, r"'score': .* 0 and 1 only, found 3 distinct"),
        (
            "logistic",
            [0.0] * 27 + [1.0] * 3,
            None,
            r"'score': only 3 labelled rows are 1.*at least 5",
        ),
        ("ridge", [1.0, 2.0] * 14 + [np.inf, 1.0], None, r"'score': row 28 is inf"),
    ],
)
def test_bad_labels_are_one_line_errors_naming_the_label(kind, values, value_range, message):
    y = np.array(values + [np.nan] * 5)
    cfg = ProbeConfig(kind=kind, value_range=value_range)
    with pytest.raises(StudioError, match=message) as exc:
        check_labels(y, cfg=cfg, name="score")
    assert "\n" not in str(exc.value)


def test_check_labels_returns_the_labelled_mask():
    y = np.array([0.0, 1.0] * 15 + [np.nan] * 3)
    mask = check_labels(y, cfg=ProbeConfig(kind="logistic"), name="bad")
    assert mask.tolist() == [True] * 30 + [False] * 3


def test_fit_probe_refuses_mismatched_rows():
    X, y = _planted()
    with pytest.raises(StudioError, match="299 feature rows but 300 labels"):
        fit_probe(X[:299], y, cfg=ProbeConfig(kind="ridge"), name="difficulty")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "svm"}, "probe kind must be one of"),
        ({"kind": "ridge", "folds": 1}, "folds must be at least 2"),
        ({"kind": "ridge", "folds": 5, "min_labels": 9}, "min_labels must be at least"),
        ({"kind": "ridge", "value_range": (1.0, 0.0)}, "value_range"),
        ({"kind": "ridge", "max_rows": 5}, "max_rows must be at least"),
    ],
)
def test_probe_config_validates_itself(options, message):
    with pytest.raises(StudioError, match=message):
        ProbeConfig(**options)


def test_check_k():
    check_k(2, 2)
    with pytest.raises(StudioError, match="k=11 is larger than the dataset's 10 examples"):
        check_k(11, 10)
    with pytest.raises(StudioError, match="at least 2"):
        check_k(1, 10)


def test_tfidf_never_raises_on_tiny_input():
    T = tfidf_matrix(["one text only"])  # min_df=2 leaves nothing: falls back to min_df=1
    assert T.shape == (1, 5)  # one, text, only, one text, text only
    T = tfidf_matrix(["the cat sat", "the cat ran", "a dog barked"], max_features=2)
    assert T.shape == (3, 2)  # of the, cat, the cat (in 2 texts each) the 2 most frequent
    assert sparse.issparse(T)
    with pytest.raises(StudioError, match="no words"):
        tfidf_matrix(["", ""])


def test_cluster_quality_nmi_is_high_for_the_categories_and_low_for_chance():
    rng = np.random.default_rng(0)
    family = np.array(["math", "code", "chat", "logic"])[np.repeat(np.arange(4), 100)]
    X = _sparse_features(n=400, seed=1)
    same = np.repeat(np.arange(4), 100)
    chance = rng.integers(0, 4, 400)
    good = cluster_quality(X, same, categories={"family": family})
    bad = cluster_quality(X, chance, categories={"family": family})
    assert good["categories"]["family"]["nmi"] == pytest.approx(1.0)
    assert good["categories"]["family"]["ami"] == pytest.approx(1.0)
    assert bad["categories"]["family"]["nmi"] < 0.05
    assert abs(bad["categories"]["family"]["ami"]) < 0.05
    assert good["n_clusters"] == 4


def test_cluster_quality_ignores_unknown_categories_and_undefined_silhouette():
    X = _sparse_features(n=40, seed=2)
    family = np.array([None, "a", "b", "a"] * 10, dtype=object)
    one = np.zeros(40, dtype=int)
    out = cluster_quality(X, one, categories={"family": family})
    assert out["silhouette"] is None
    assert out["categories"]["family"]["n"] == 30
    json.dumps(out, allow_nan=False)


def test_compare_clusterings_on_sparse_and_dense_reuses_given_labels():
    X, _, groups = _clustered(k=3, per=40)
    dense = X.toarray() + np.random.default_rng(0).normal(0, 0.01, X.shape)
    family = np.array(["a", "b", "c"])[groups]
    out = compare_clusterings(
        {"sae": X, "dense": dense},
        k=3,
        categories={"family": family},
        labels={"sae": groups},
    )
    assert out["sae"]["precomputed"] and not out["dense"]["precomputed"]
    for rep in ("sae", "dense"):
        assert out[rep]["categories"]["family"]["nmi"] == pytest.approx(1.0)
        assert out[rep]["silhouette"] > 0.5
    json.dumps(out, allow_nan=False)
    with pytest.raises(StudioError, match="larger than the dataset's 120 examples"):
        compare_clusterings({"sae": X}, k=500)
