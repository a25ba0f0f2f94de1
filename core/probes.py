"""Probes: how well a representation predicts a difficulty or quality label, measured honestly.

A probe is a regularised linear model (elastic net or ridge for a score, logistic regression for a
0/1 flag) on one representation of the examples: SAE features, a dense hidden state, or TF-IDF.
Its evidence is nested cross-validation: every out-of-fold prediction comes from a model whose
hyperparameter search never saw that fold. It is reported twice: in distribution (shuffled
folds) and by cluster (whole clusters held out), the second being the honest figure for data
unlike the labelled rows. The same probes and k-means on the baselines give side-by-side numbers.

Example:
    >>> y = np.full(n, np.nan); y[labelled] = difficulty  # NaN = unlabelled
    >>> cfg = ProbeConfig(kind="elasticnet", value_range=(0.0, 1.0))
    >>> res = fit_probe(X_sae, y, cfg=cfg, name="difficulty", groups=cluster_labels)
    >>> res.metrics["in_distribution"]["r2"], res.metrics["by_cluster"]["r2"]
    (0.61, 0.34)
    >>> res.scores  # [n] what a score column stores: out-of-fold where labelled, else final
    >>> res.weights[:3]  # [(feature_id, coef), ...] strongest first
    >>> compare_probes({"sae": X_sae, "dense": H, "tfidf": tfidf_matrix(texts)},
    ...                y, cfg=cfg, name="difficulty", groups=cluster_labels)
    >>> compare_clusterings({"sae": X_sae, "dense": H}, k=12, categories={"family": fam},
    ...                     labels={"sae": cluster_labels})  # silhouette, NMI/AMI per rep
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from scipy import sparse
from scipy.stats import spearmanr
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import ElasticNet, LogisticRegression, RidgeCV
from sklearn.metrics import (
    adjusted_mutual_info_score,
    average_precision_score,
    normalized_mutual_info_score,
    r2_score,
    roc_auc_score,
    silhouette_score,
)
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler
from sklearn.svm import l1_min_c
from threadpoolctl import threadpool_limits

from core.clustering import check_k, kmeans_clusters
from core.errors import StudioError

ProbeKind = Literal["elasticnet", "logistic", "ridge"]

INNER_FOLDS = 3  # hyperparameter search inside each outer fold
L1_RATIOS = (0.1, 0.5, 0.9)
N_ALPHAS = 12  # elastic net: data-driven alpha path, from alpha_max down to alpha_max / 1000
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 8))
LOGISTIC_CS = tuple(float(c) for c in np.logspace(-5, 2, 15))
PATIENCE = 3  # path steps past the best inner score before a path stops
MAX_ITER = 1000
TOP_WEIGHTS = 20


@dataclass(frozen=True)
class ProbeConfig:
    """Options of one probe. ``folds`` outer folds give the evidence (each refits the inner
    hyperparameter search); ``max_rows`` caps the labelled rows used to fit (a seeded sample)."""

    kind: ProbeKind
    folds: int = 5
    seed: int = 0
    min_labels: int = 20
    value_range: tuple[float, float] | None = None
    max_rows: int | None = 20000

    def __post_init__(self) -> None:
        if self.kind not in get_args(ProbeKind):
            raise StudioError(
                f"probe kind must be one of {list(get_args(ProbeKind))}, got {self.kind!r}"
            )
        if self.folds < 2:
            raise StudioError(f"probe folds must be at least 2, got {self.folds}")
        if self.seed < 0:
            raise StudioError(f"probe seed must be non-negative, got {self.seed}")
        if self.min_labels < 2 * self.folds:
            raise StudioError(
                f"min_labels must be at least twice the folds ({2 * self.folds}), got {self.min_labels}"
            )
        if self.value_range is not None:
            lo, hi = self.value_range
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise StudioError(
                    f"value_range must be two finite numbers lo < hi, got {self.value_range}"
                )
        if self.max_rows is not None and self.max_rows < self.min_labels:
            raise StudioError(
                f"max_rows must be at least min_labels ({self.min_labels}), got {self.max_rows}"
            )


@dataclass
class ProbeResult:
    """What a probe gives back. Logistic predictions are P(label == 1) under balanced class
    weights: they rank well but are not calibrated to the base rate. ``weights`` are coefficients
    on the scaled features (comparable across columns), the strongest first, zeros left out.

    ``scores`` is what a score column may honestly hold: the final model has seen the labels of
    the rows it was fit on (it can memorise them: AUC 1.0 in sample where out of fold is 0.65),
    so a labelled row gets its out-of-fold prediction, and only unlabelled rows get the final
    model's. A labelled row whose fold was skipped has no honest score: NaN, never in-sample."""

    predictions: np.ndarray  # [n] float64: the final model (all labelled rows) on every row
    oof: np.ndarray  # [n] float64: out-of-fold prediction for labelled rows, NaN for unlabelled
    scores: np.ndarray  # [n] float64: oof where labelled (NaN if skipped), else predictions
    metrics: dict  # {"in_distribution": {...}, "by_cluster": {...} | None}, JSON-safe
    params: dict  # chosen hyperparameters of the final model, and its count of nonzero weights
    weights: list[tuple[int, float]]  # top TOP_WEIGHTS (column, coef) by |coef|
    n_labelled: int


def min_per_class(cfg: ProbeConfig) -> int:
    """Rows of each class a logistic probe needs: one per outer fold, and at least 2 left in every
    fold's training part for the inner search (so 4 with 2 folds)."""
    return max(cfg.folds, 4)


def check_labels(y: np.ndarray, *, cfg: ProbeConfig, name: str) -> np.ndarray:
    """``y``: [n] float, NaN for unlabelled rows. Returns the boolean mask of labelled rows, or
    raises StudioError with a one-line message naming the label ``name``."""
    try:
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StudioError(f"label {name!r}: values must be numbers ({exc})") from exc
    if y.ndim != 1:
        raise StudioError(f"label {name!r}: expected one value per row, got shape {y.shape}")
    inf = np.flatnonzero(np.isinf(y))
    if len(inf):
        i = int(inf[0])
        raise StudioError(
            f"label {name!r}: row {i} is {y[i]} (labels must be finite; leave unlabelled rows NaN)"
        )
    mask = ~np.isnan(y)
    vals = y[mask]
    if len(vals) < cfg.min_labels:
        raise StudioError(
            f"label {name!r}: only {len(vals)} labelled rows, a probe needs at least {cfg.min_labels}"
        )
    if cfg.value_range is not None:
        lo, hi = cfg.value_range
        bad = np.flatnonzero(mask & ((y < lo) | (y > hi)))
        if len(bad):
            i = int(bad[0])
            raise StudioError(
                f"label {name!r}: value {y[i]:g} (row {i}) is outside the range [{lo:g}, {hi:g}]"
            )
    classes = np.unique(vals)
    if len(classes) == 1:
        raise StudioError(
            f"label {name!r}: all {len(vals)} labelled rows have the value {classes[0]:g}; "
            "nothing to learn"
        )
    if cfg.kind == "logistic":
        if len(classes) != 2 or set(classes.tolist()) != {0.0, 1.0}:
            shown = ", ".join(f"{c:g}" for c in classes[:5]) + (", ..." if len(classes) > 5 else "")
            raise StudioError(
                f"label {name!r}: a logistic probe needs labels 0 and 1 only, found "
                f"{len(classes)} distinct values ({shown})"
            )
        need = min_per_class(cfg)
        counts = {int(c): int((vals == c).sum()) for c in (0.0, 1.0)}
        for c, count in counts.items():
            if count < need:
                raise StudioError(
                    f"label {name!r}: only {count} labelled rows are {c}, a logistic probe with "
                    f"{cfg.folds} folds needs at least {need} of each class"
                )
    return mask


def fit_probe(
    X: Any,
    y: np.ndarray,
    *,
    cfg: ProbeConfig,
    name: str = "label",
    groups: np.ndarray | None = None,
) -> ProbeResult:
    """Fit a probe of ``y`` on ``X`` and measure it with nested cross-validation.

    X: scipy sparse [n, d] (SAE features, TF-IDF; scaled by max |value| per column, staying
    sparse) or dense [n, d] (hidden states; standardised). y: [n] float, NaN = unlabelled.
    groups: [n] cluster id per row for the by-cluster (out-of-distribution) evidence, or None.

    If more than ``cfg.max_rows`` rows are labelled, a seeded sample of that many is used to fit;
    the others are out of sample for the final model, so their ``oof`` is its prediction.
    """
    mask = check_labels(y, cfg=cfg, name=name)
    return _fit_checked(_as_matrix(X, n=len(mask), name=name), y, mask, cfg=cfg, groups=groups)


def _as_matrix(X: Any, *, n: int, name: str, rep: str | None = None) -> Any:
    """CSR float64 for sparse input, a C-ordered float64 ndarray for dense; rows must match y."""
    what = f"probe of {name!r}" + (f" on {rep}" if rep else "")
    M: Any
    if sparse.issparse(X):
        M = sparse.csr_matrix(X, dtype=np.float64)
        values = M.data
    else:
        M = np.ascontiguousarray(X, dtype=np.float64)
        if M.ndim != 2:
            raise StudioError(f"{what}: features must be 2-D, got shape {M.shape}")
        values = M
    rows, cols = M.shape
    if rows != n:
        raise StudioError(f"{what}: {rows} feature rows but {n} labels")
    if cols == 0:
        raise StudioError(f"{what}: the representation has no columns")
    if not np.isfinite(values).all():
        raise StudioError(f"{what}: the features contain NaN or inf")
    return M


def _fit_checked(
    X: Any, y: np.ndarray, mask: np.ndarray, *, cfg: ProbeConfig, groups: np.ndarray | None
) -> ProbeResult:
    # Hundreds of small solves: BLAS threads cost more in wake-ups than they save (10x slower
    # on 2 busy cores), so they are held to one here and restored after.
    # Along a path, the weakest penalties may stop short of the solver's tolerance; those fits
    # are still scored (inner CV rarely picks them). Their count is reported in ``params``
    # instead of a screenful of warnings.
    with (
        threadpool_limits(limits=1, user_api="blas"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always", ConvergenceWarning)
        res = _fit_rows(X, y, mask, cfg=cfg, groups=groups)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    res.params["not_converged_fits"] = sum(
        issubclass(w.category, ConvergenceWarning) for w in caught
    )
    return res


def _fit_rows(
    X: Any, y: np.ndarray, mask: np.ndarray, *, cfg: ProbeConfig, groups: np.ndarray | None
) -> ProbeResult:
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise StudioError(f"groups must have one value per row ({n}), got shape {groups.shape}")
    labelled = np.flatnonzero(mask)
    fit_rows = _sample_rows(labelled, y[labelled], cfg=cfg)
    Xf, yf = X[fit_rows], y[fit_rows]

    oof = np.full(n, np.nan)
    splitter = (
        StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
        if cfg.kind == "logistic"
        else KFold(cfg.folds, shuffle=True, random_state=cfg.seed)
    )
    pred, skipped = _cross_predict(Xf, yf, splitter.split(Xf, yf), cfg=cfg)
    oof[fit_rows] = pred
    metrics: dict[str, Any] = {
        "in_distribution": _score(yf, pred, kind=cfg.kind, skipped=skipped),
        "by_cluster": None,
    }
    if groups is not None:
        g = groups[fit_rows]
        n_groups = len(np.unique(g))
        if n_groups >= 2:
            folds = GroupKFold(min(cfg.folds, n_groups))
            gpred, gskipped = _cross_predict(Xf, yf, folds.split(Xf, yf, g), cfg=cfg)
            metrics["by_cluster"] = {
                **_score(yf, gpred, kind=cfg.kind, skipped=gskipped),
                "n_groups": int(n_groups),
            }

    final = _make_model(cfg, sparse_input=sparse.issparse(X), y_train=yf)
    final.fit(Xf, yf)
    predictions = _predict(final, X, kind=cfg.kind)
    rest = np.setdiff1d(labelled, fit_rows)  # never seen by the final model: honest predictions
    oof[rest] = predictions[rest]
    return ProbeResult(
        predictions=predictions,
        oof=oof,
        scores=np.where(mask, oof, predictions),
        metrics=metrics,
        params=_params(final, kind=cfg.kind),
        weights=_top_weights(final),
        n_labelled=len(labelled),
    )


def _sample_rows(rows: np.ndarray, y: np.ndarray, *, cfg: ProbeConfig) -> np.ndarray:
    """At most ``cfg.max_rows`` of ``rows`` (seeded); per class in proportion for logistic."""
    if cfg.max_rows is None or len(rows) <= cfg.max_rows:
        return rows
    rng = np.random.default_rng(cfg.seed)
    if cfg.kind != "logistic":
        return np.sort(rng.choice(rows, size=cfg.max_rows, replace=False))
    # the rarer class keeps its share, and at least enough rows for the folds
    rare = 1.0 if (y == 1.0).sum() <= (y == 0.0).sum() else 0.0
    few, many = rows[y == rare], rows[y != rare]
    n_few = min(len(few), max(min_per_class(cfg), round(cfg.max_rows * len(few) / len(rows))))
    picked = [
        rng.choice(few, size=n_few, replace=False),
        rng.choice(many, size=cfg.max_rows - n_few, replace=False),
    ]
    return np.sort(np.concatenate(picked))


def _cross_predict(
    X: Any, y: np.ndarray, splits: Iterable[tuple[np.ndarray, np.ndarray]], *, cfg: ProbeConfig
) -> tuple[np.ndarray, int]:
    """Pooled out-of-fold predictions (NaN where a fold was skipped) and the number skipped.

    Each fold gets a fresh pipeline whose scaler and inner search see only its training part.
    A fold is skipped when that part cannot be fit: a constant score, or for logistic fewer than
    2 rows of either class (so no inner stratified split).
    """
    pred = np.full(len(y), np.nan)
    skipped = 0
    for train, test in splits:
        if not _fittable(y[train], kind=cfg.kind):
            skipped += 1
            continue
        model = _make_model(cfg, sparse_input=sparse.issparse(X), y_train=y[train])
        model.fit(X[train], y[train])
        pred[test] = _predict(model, X[test], kind=cfg.kind)
    return pred, skipped


def _fittable(y: np.ndarray, *, kind: ProbeKind) -> bool:
    if kind == "logistic":
        return min(int((y == 0.0).sum()), int((y == 1.0).sum())) >= 2
    return len(y) >= 2 * INNER_FOLDS and float(np.ptp(y)) > 0.0


def _inner_folds(y: np.ndarray, *, kind: ProbeKind) -> int:
    if kind == "logistic":
        return min(INNER_FOLDS, int((y == 0.0).sum()), int((y == 1.0).sum()))
    return min(INNER_FOLDS, len(y) // 2)


def _make_model(cfg: ProbeConfig, *, sparse_input: bool, y_train: np.ndarray) -> Pipeline:
    """Scaler + cross-validated linear model. Sparse input is divided by each column's max |value|
    (stays sparse, and a rarely active feature is not blown up the way unit variance would);
    dense input is standardised. Both are fit on the rows the pipeline is fit on, nothing else."""
    scaler = MaxAbsScaler() if sparse_input else StandardScaler()
    folds = _inner_folds(y_train, kind=cfg.kind)
    model: Any
    if cfg.kind == "ridge" and not sparse_input:
        model = RidgeCV(alphas=RIDGE_ALPHAS)  # exact leave-one-out from one SVD: cheap when dense
    elif cfg.kind == "ridge":
        model = RidgeCV(alphas=RIDGE_ALPHAS, cv=KFold(folds, shuffle=True, random_state=cfg.seed))
    else:
        model = PathCV(kind=cfg.kind, folds=folds, seed=cfg.seed)
    return Pipeline([("scale", scaler), ("model", model)])


class PathCV(BaseEstimator):
    """Inner cross-validation along regularisation paths, strongest penalty first.

    elasticnet: for each l1_ratio in L1_RATIOS, alpha from alpha_max (all weights zero) down to
    alpha_max / 1000 in N_ALPHAS steps, scored by validation MSE. logistic, with balanced class
    weights (the interesting class, e.g. bad items, is usually rare), scored by validation AUC:
    an L2 path up LOGISTIC_CS and an L1 path up from the smallest C with a nonzero weight (L1
    finds a rule carried by a few sparse features, which L2 spreads over every column).

    Each fold's model is warm-started from the previous step, and a path stops PATIENCE steps
    after its best score (steps whose models are all zero do not count): the weak-penalty end is
    the slow one (near interpolation with more columns than rows) and is rarely the best. The
    best setting over all paths (ties: the earlier, more penalised one) is refit on all rows.
    """

    def __init__(self, kind: str = "elasticnet", folds: int = INNER_FOLDS, seed: int = 0) -> None:
        self.kind = kind
        self.folds = folds
        self.seed = seed

    def fit(self, X: Any, y: np.ndarray) -> PathCV:
        y = np.asarray(y, dtype=np.float64)
        split = StratifiedKFold if self.kind == "logistic" else KFold
        parts = [
            (X[tr], y[tr], X[va], y[va])
            for tr, va in split(self.folds, shuffle=True, random_state=self.seed).split(X, y)
        ]
        best_score, best = -math.inf, {}
        for fixed, name, grid in self._paths(X, y):
            models = [self._model(fixed) for _ in parts]
            scores: list[float] = []  # of the steps where some model has a nonzero weight
            for value in grid:
                fold_scores = []
                for model, (Xt, yt, Xv, yv) in zip(models, parts, strict=True):
                    model.set_params(**{name: value}).fit(Xt, yt)
                    fold_scores.append(self._validate(model, Xv, yv))
                score = float(np.mean(fold_scores))
                if score > best_score:
                    best_score, best = score, {**fixed, name: float(value)}
                if any(np.any(m.coef_) for m in models):
                    scores.append(score)
                    if len(scores) - 1 - int(np.argmax(scores)) >= PATIENCE:
                        break
        self.best_params_ = best
        self.best_score_ = best_score
        self.model_ = self._model(best).fit(X, y)
        self.coef_ = np.ravel(self.model_.coef_)
        return self

    def _paths(self, X: Any, y: np.ndarray) -> list[tuple[dict[str, float], str, np.ndarray]]:
        if self.kind == "logistic":
            c0 = l1_min_c(X, y, loss="log")  # ignores class weights: a few empty steps first
            return [
                ({"l1_ratio": 0.0}, "C", np.asarray(LOGISTIC_CS)),
                ({"l1_ratio": 1.0}, "C", c0 * np.logspace(0, 4, 9)),
            ]
        # alpha_max: the smallest alpha with all weights zero; X'(y - mean) equals the centred X'y
        top = float(np.abs(X.T @ (y - y.mean())).max()) / len(y)
        steps = np.logspace(0, -3, N_ALPHAS)
        return [({"l1_ratio": r}, "alpha", max(top / r, 1e-12) * steps) for r in L1_RATIOS]

    def _model(self, params: Mapping[str, float]) -> Any:
        if self.kind == "logistic" and params.get("l1_ratio") == 1.0:
            model = LogisticRegression(
                solver="liblinear", class_weight="balanced", max_iter=MAX_ITER
            )
        elif self.kind == "logistic":
            model = LogisticRegression(class_weight="balanced", max_iter=MAX_ITER, warm_start=True)
        else:
            # tol is on the duality gap relative to ||y||^2. On the demo's SAE features (n ~ d,
            # strong signal, best alpha near the weak end) 1e-3 with cyclic updates left 42 fits
            # unconverged at 5,000 sweeps (287 s); 1e-2 with random updates converges in all but
            # one and gives the same R^2 to 3 decimals in 11 s.
            model = ElasticNet(
                max_iter=MAX_ITER, tol=1e-2, warm_start=True, selection="random", random_state=0
            )
        return model.set_params(**params)

    def _validate(self, model: Any, X: Any, y: np.ndarray) -> float:
        if self.kind == "logistic":
            return float(roc_auc_score(y, model.decision_function(X)))
        return -float(np.mean((model.predict(X) - y) ** 2))

    def predict(self, X: Any) -> np.ndarray:
        return self.model_.predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.model_.predict_proba(X)


def _predict(model: Pipeline, X: Any, *, kind: ProbeKind) -> np.ndarray:
    if kind == "logistic":
        return np.asarray(model.predict_proba(X)[:, 1], dtype=np.float64)
    return np.asarray(model.predict(X), dtype=np.float64)


def _params(model: Pipeline, *, kind: ProbeKind) -> dict[str, Any]:
    est = model.named_steps["model"]
    coef = np.ravel(est.coef_)
    params: dict[str, Any] = {"n_nonzero": int(np.count_nonzero(coef))}
    if kind == "ridge":
        return params | {"alpha": float(est.alpha_)}
    return params | est.best_params_


def _top_weights(model: Pipeline, *, top: int = TOP_WEIGHTS) -> list[tuple[int, float]]:
    coef = np.ravel(model.named_steps["model"].coef_)
    order = np.argsort(-np.abs(coef), kind="stable")[:top]
    return [(int(i), float(coef[i])) for i in order if coef[i] != 0.0]


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _score(y: np.ndarray, pred: np.ndarray, *, kind: ProbeKind, skipped: int) -> dict[str, Any]:
    """Metrics of pooled out-of-fold predictions (rows of skipped folds left out), JSON-safe."""
    ok = ~np.isnan(pred)
    yt, yp = y[ok], pred[ok]
    n = int(ok.sum())
    out: dict[str, Any]
    if kind == "logistic":
        # AUC is the same read from either class; average precision is not (for a rare class it
        # is far below the common one's), so each class gets its own, beside its base rate (the
        # AP of a random ranking): the caller names the class it filters for.
        both = len(np.unique(yt)) == 2
        out = {"auc": _finite(roc_auc_score(yt, yp)) if both else None}
        for c in (0, 1):
            hit = yt == float(c)
            ranked = yp if c == 1 else 1.0 - yp  # P(label == c)
            out[f"average_precision_{c}"] = (
                _finite(average_precision_score(hit, ranked)) if both else None
            )
            out[f"base_rate_{c}"] = float(hit.mean()) if n else None
    else:
        varied = n >= 2 and float(np.ptp(yt)) > 0.0
        out = {
            "r2": _finite(r2_score(yt, yp)) if varied else None,
            "spearman": _spearman(yt, yp) if varied else None,
        }
    return {**out, "n": n, "skipped_folds": int(skipped)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if float(np.ptp(b)) == 0.0:  # constant predictions: rank correlation undefined
        return None
    return _finite(spearmanr(a, b).statistic)  # type: ignore[attr-defined]


def tfidf_matrix(texts: Sequence[str], *, max_features: int = 20000) -> sparse.csr_matrix:
    """[n, <= max_features] TF-IDF of word unigrams and bigrams (sublinear tf), the bag-of-words
    baseline. Terms must occur in 2 documents, or in 1 when that would leave no terms."""
    if max_features < 1:
        raise StudioError(f"max_features must be at least 1, got {max_features}")
    docs = [t or "" for t in texts]
    for min_df in (2, 1):
        vec = TfidfVectorizer(
            ngram_range=(1, 2), sublinear_tf=True, min_df=min_df, max_features=max_features
        )
        try:
            return sparse.csr_matrix(vec.fit_transform(docs))
        except ValueError:  # too few documents for min_df=2, or an empty vocabulary
            continue
    raise StudioError(f"TF-IDF: the {len(docs)} texts contain no words (tokens of 2+ characters)")


def compare_probes(
    reps: Mapping[str, Any],
    y: np.ndarray,
    *,
    cfg: ProbeConfig,
    name: str,
    groups: np.ndarray | None,
) -> dict[str, dict]:
    """The same probe on each representation (``{"sae": X, "dense": H, "tfidf": T}``):
    ``{rep: {"in_distribution": ..., "by_cluster": ..., "params": ...}}``. Labels and shapes are
    checked for every representation before any fitting starts."""
    mask = check_labels(y, cfg=cfg, name=name)
    mats = {rep: _as_matrix(X, n=len(mask), name=name, rep=rep) for rep, X in reps.items()}
    out: dict[str, dict] = {}
    for rep, M in mats.items():
        res = _fit_checked(M, y, mask, cfg=cfg, groups=groups)
        out[rep] = {**res.metrics, "params": res.params}
    return out


def cluster_quality(
    X: Any,
    labels: np.ndarray,
    *,
    categories: Mapping[str, np.ndarray] | None = None,
    sample: int = 3000,
    seed: int = 0,
) -> dict:
    """How well a clustering fits ``X`` and the known categories.

    silhouette: cosine, in X's own space, on a seeded sample of at most ``sample`` rows; None
    when undefined (fewer than 2 clusters in the sample, or every row its own cluster).
    categories: ``{"family": values}`` (strings, None = unknown, left out): NMI and AMI between
    the clusters and each column. ``{"silhouette": 0.12, "n_clusters": 12, "categories":
    {"family": {"nmi": 0.71, "ami": 0.70, "n": 3000}}}``
    """
    labels = np.asarray(labels)
    n = X.shape[0]
    if labels.shape != (n,):
        raise StudioError(f"cluster labels must have one value per row ({n}), got {labels.shape}")
    if sample < 2:
        raise StudioError(f"sample must be at least 2, got {sample}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    n_in_sample = len(np.unique(labels[idx]))
    silhouette = None
    if 2 <= n_in_sample < len(idx):
        Xs = X[idx] if sparse.issparse(X) else np.asarray(X)[idx]
        silhouette = _finite(silhouette_score(Xs, labels[idx], metric="cosine"))
    cats: dict[str, dict[str, Any]] = {}
    for col, values in (categories or {}).items():
        vals = np.asarray(values, dtype=object)
        if vals.shape != (n,):
            raise StudioError(
                f"category {col!r} must have one value per row ({n}), got {vals.shape}"
            )
        known = np.array([not _missing(v) for v in vals], dtype=bool)
        truth = np.array([str(v) for v in vals[known]])
        found = labels[known]
        enough = known.sum() >= 2
        cats[col] = {
            "nmi": _finite(normalized_mutual_info_score(truth, found)) if enough else None,
            "ami": _finite(adjusted_mutual_info_score(truth, found)) if enough else None,
            "n": int(known.sum()),
        }
    return {"silhouette": silhouette, "n_clusters": len(np.unique(labels)), "categories": cats}


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def compare_clusterings(
    reps: Mapping[str, Any],
    *,
    k: int,
    seed: int = 0,
    n_init: int = 3,
    categories: Mapping[str, np.ndarray] | None = None,
    sample: int = 3000,
    labels: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict]:
    """k-means with the same ``k`` on each representation (L2-normalised rows, as in
    :func:`core.clustering.kmeans_clusters`), then :func:`cluster_quality`. ``labels`` gives
    clusterings already computed (e.g. the stored SAE one) so they are not recomputed."""
    given = labels or {}
    for X in reps.values():  # before any k-means runs
        check_k(k, X.shape[0])
    out: dict[str, dict] = {}
    for rep, X in reps.items():
        if rep in given:
            lab = np.asarray(given[rep])
        else:
            # kmeans_clusters reads CSR internals, so a dense matrix goes in as CSR
            M = sparse.csr_matrix(X if sparse.issparse(X) else np.asarray(X, dtype=np.float32))
            lab = kmeans_clusters(M, k=k, seed=seed, n_init=n_init).labels
        quality = cluster_quality(X, lab, categories=categories, sample=sample, seed=seed)
        out[rep] = {**quality, "k": int(k), "precomputed": rep in given}
    return out
