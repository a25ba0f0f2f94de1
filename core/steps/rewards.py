"""Reward steps: score responses with a reward model, import scores, run the verifier, derive a
responses dataset, fit the Bradley-Terry reward probe, and read the scores back for comparison.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import sparse
from tqdm.auto import tqdm

from core.errors import StudioError
from core.models import (
    resolve_device,
    resolve_dtype,
)
from core.probes import (
    ProbeConfig,
    fit_probe,
)
from core.reward_models import (
    CHAT,
    FALLBACK_MAX_LENGTH,
    HEADS,
    Candidates,
    Head,
    check_template,
    default_reward_name,
    load_reward_model,
    read_reward_file,
    render,
    resolve_template,
    score_texts,
)
from core.rewards import BTPenalty, bt_probe, disagreement, feature_preference_shift
from core.steps.base import (
    ChunkWriter,
    feature_labels,
    feature_matrix,
    model_label,
    need_feature_run,
    versions,
    warn,
)
from core.store import RESPONSES_SUFFIX, REWARD_SCHEMA, REWARD_STEP, RunRecord, Store
from core.verifiers import verify


def responses_dataset(store: Store, *, dataset: str, replace: bool = False) -> str:
    """Derive ``<dataset>.responses`` from a preference set: one example per chosen or rejected
    response (see :meth:`Store.write_responses_dataset`), so responses can be featurized
    (``--pool-over response`` reads each after its prompt), clustered and mapped. Returns its
    name."""
    name = dataset + RESPONSES_SUFFIX
    store.write_responses_dataset(dataset, name=name, replace=replace)
    return name


def _responses_of(store: Store, dataset: str) -> str:
    """The responses dataset of a preference set, or a one-line error saying how to make it."""
    kind = store.dataset(dataset)["kind"]
    if kind != "preferences":
        raise StudioError(
            f"dataset '{dataset}' is {kind}: reward probes and response features need a "
            "preference set (chosen and rejected responses)"
        )
    name = dataset + RESPONSES_SUFFIX
    if not store.has_dataset(name):
        raise StudioError(
            f"dataset '{dataset}' has no responses dataset: run `python -m core responses "
            f"--dataset {dataset}` and `python -m core featurize --dataset {name} "
            "--pool-over response ...` first"
        )
    return name


@dataclass(frozen=True)
class ResponseFeatures:
    """Features of every response of a preference set, with which response each row is.

    ``keys``: example_id, response_idx, role, row (the row of ``X``), in the preference set's
    order. ``X``: [n_responses, d] sparse SAE features or dense hidden states."""

    responses: str
    feature_run: int
    keys: pd.DataFrame
    X: Any

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(chosen rows, rejected rows, example ids) of every (chosen, rejected) pair."""
        k = self.keys
        chosen = k[k["role"].eq("chosen")].drop_duplicates("example_id")
        chosen_row = pd.Series(chosen["row"].to_numpy(), index=chosen["example_id"])
        rej = k[k["role"].eq("rejected") & k["example_id"].isin(chosen_row.index)]
        return (
            chosen_row.reindex(rej["example_id"]).to_numpy(np.int64),
            rej["row"].to_numpy(np.int64),
            rej["example_id"].to_numpy(),
        )


def response_features(
    store: Store,
    *,
    dataset: str,
    features: str = "sae",
    feature_run: int | None = None,
) -> ResponseFeatures:
    """The features (``sae`` or the ``dense`` baseline) of a preference set's responses, read
    from the latest (or the given) feature run of its responses dataset. Every response must
    have been featurized."""
    if features not in PROBE_FEATURES:
        raise StudioError(f"features must be one of {list(PROBE_FEATURES)}, got {features!r}")
    resp = _responses_of(store, dataset)
    fr = need_feature_run(store, resp, feature_run)
    keys = store.response_keys(resp).to_pandas()
    if features == "sae":
        ids, X = feature_matrix(store, fr)
    else:
        dv = store.dense_vectors(fr)
        if dv is None:
            raise StudioError(
                f"feature run {fr} of '{resp}' has no dense baseline: featurize it with --dense"
            )
        ids, X = dv
    pos = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
    keys["row"] = pos.reindex(keys["id"]).to_numpy()
    if keys["row"].isna().any():
        first = keys.loc[keys["row"].isna(), "id"].iloc[0]
        raise StudioError(
            f"feature run {fr} of '{resp}' has no features for {int(keys['row'].isna().sum())} "
            f"responses (first: '{first}'): finish featurizing it (rerun to resume)"
        )
    keys["row"] = keys["row"].astype(np.int64)
    return ResponseFeatures(
        responses=resp,
        feature_run=fr,
        keys=keys[["example_id", "response_idx", "role", "row"]],
        X=X,
    )


def preference_shift(
    store: Store, *, dataset: str, feature_run: int | None = None, top: int | None = None
) -> pd.DataFrame:
    """SAE features ranked by how much more they fire in chosen than in rejected responses
    (core.rewards.feature_preference_shift over every (chosen, rejected) pair), with each
    feature's ``label``; ``top`` keeps the strongest both ways (|mean_diff|)."""

    rf = response_features(store, dataset=dataset, feature_run=feature_run)
    c, r, _ = rf.pairs()
    if not len(c):
        raise StudioError(f"dataset '{dataset}' has no (chosen, rejected) pair")
    shift = feature_preference_shift(rf.X[c], rf.X[r])
    if top is not None:
        order = np.argsort(-shift["mean_diff"].abs().to_numpy(), kind="stable")[:top]
        shift = shift.iloc[np.sort(order)].reset_index(drop=True)
    names = feature_labels(store, rf.feature_run)
    shift.insert(1, "label", [names.get(int(f), "") for f in shift["feature_id"]])
    return shift


@dataclass(frozen=True)
class RewardProbeConfig:
    """Options of reward_probe, checked on construction: the representation of
    DATASET.responses it learns on (``features``: sae or dense), that representation's
    ``feature_run`` (None: the latest), the scores' ``name`` (None: bt-probe-FEATURES), and
    the Bradley-Terry fit's ``seed``, outer ``folds`` and ``penalty`` (auto, l2 or l1)."""

    dataset: str
    features: str = "sae"
    feature_run: int | None = None
    name: str | None = None
    seed: int = 0
    folds: int = 5
    penalty: BTPenalty = "auto"

    def __post_init__(self) -> None:
        if self.features not in PROBE_FEATURES:
            raise StudioError(
                f"features must be one of {list(PROBE_FEATURES)}, got {self.features!r}"
            )
        if self.folds < 2:
            raise StudioError(f"BT probe folds must be at least 2, got {self.folds}")
        if self.penalty not in get_args(BTPenalty):
            raise StudioError(f"BT probe penalty must be one of {list(get_args(BTPenalty))}")


def reward_probe(store: Store, cfg: RewardProbeConfig) -> int:
    """Train a Bradley-Terry reward probe on a preference set's response features (chosen
    minus rejected, core.rewards.bt_probe) and store it as a reward run named ``cfg.name``
    (default ``bt-probe-<features>``). Each response's stored score comes from the fold model
    that never saw its prompt, so the probe's accuracy read back from the store is out of fold,
    comparable with a reward model's. Returns the run id."""
    rf = response_features(
        store, dataset=cfg.dataset, features=cfg.features, feature_run=cfg.feature_run
    )
    c, r, groups = rf.pairs()
    if not len(c):
        raise StudioError(f"dataset '{cfg.dataset}' has no (chosen, rejected) pair to train on")
    probe = bt_probe(
        rf.X[c] - rf.X[r],
        groups=groups,
        seed=cfg.seed,
        folds=cfg.folds,
        penalty=cfg.penalty,
    )
    rows = rf.keys["row"].to_numpy()
    value = probe.score_out_of_fold(rf.X[rows], rf.keys["example_id"].to_numpy())
    truncated = store.features(rf.feature_run).to_pandas().set_index("example_id")["truncated"]
    resp_ids = rf.keys["example_id"] + "#" + rf.keys["response_idx"].astype(str)
    scores = pa.table(
        {
            "example_id": pa.array(rf.keys["example_id"], pa.string()),
            "response_idx": pa.array(rf.keys["response_idx"], pa.int32()),
            "value": pa.array(value, pa.float64()),
            "logits": pa.nulls(len(value), pa.list_(pa.float32())),
            "truncated": pa.array(truncated.reindex(resp_ids).fillna(False).astype(bool)),
        },
        schema=REWARD_SCHEMA,
    )
    what = "SAE features" if cfg.features == "sae" else "dense hidden states (baseline)"
    source = (
        f"probe: Bradley-Terry logistic on {what} of {rf.responses} (feature run "
        f"{rf.feature_run}), trained here on chosen-vs-rejected pairs; each prompt is scored by "
        f"the fold model that never saw it ({cfg.folds} folds)"
    )
    names = feature_labels(store, rf.feature_run) if cfg.features == "sae" else {}
    return store.add_run(
        RunRecord(
            REWARD_STEP,
            cfg.dataset,
            {
                "name": cfg.name or f"bt-probe-{cfg.features}",
                "kind": "bt-probe",
                "features": cfg.features,
                "feature_run": rf.feature_run,
                "responses_dataset": rf.responses,
                "seed": cfg.seed,
                "folds": cfg.folds,
                "penalty": cfg.penalty,
            },
            versions(),
            {
                "n_pairs": len(c),
                "n_prompts": len(np.unique(groups)),
                "pairwise_oof": probe.accuracy.to_dict(),
                "penalty": probe.penalty,
                "C": probe.C,
                "fold_choices": [list(x) for x in probe.fold_choices],
                "not_converged_fits": probe.not_converged_fits,
                "n_nonzero": int(np.count_nonzero(probe.weights)),
                "top_weights": [
                    {"feature": f, "weight": w, "label": names.get(f, "")}
                    for f, w in probe.top_weights()
                ],
            },
            source=source,
        ),
        scores=scores,
    )


def reward_sources(store: Store, *, dataset: str) -> dict[str, dict[str, Any]]:
    """Reward name -> {run_id, kind, source (what produced the scores, as stored), config,
    summary} of every reward source of a dataset (the newest run of each name)."""
    out: dict[str, dict[str, Any]] = {}
    for name, rid in store.reward_runs(dataset).items():
        run = store.run(rid)
        source = store.reward_source(rid)
        out[name] = {
            "run_id": rid,
            "kind": run["config"].get("kind")
            or ("imported" if "column" in run["config"] else "rm"),
            "source": source if source is not None else run["config"].get("source", ""),
            "config": run["config"],
            "summary": run["summary"],
        }
    return out


def reward_frame(store: Store, *, dataset: str) -> pd.DataFrame:
    """One row per scored candidate of a dataset: example_id, response_idx, role, prompt,
    response, then one ``score:<name>`` column per reward source (NaN where a source did not
    score it) and, when the preference set has a responses dataset, that response's
    ``cluster``, ``cluster_label``, ``x``, ``y`` from the responses dataset's latest cluster and
    projection runs (NaN when those steps have not run)."""
    frame = (
        store.reward_candidates(dataset)
        .to_pandas()[["example_id", "response_idx", "role", "prompt", "response"]]
        .reset_index(drop=True)
    )
    for name, rid in store.reward_runs(dataset).items():
        sc = store.reward_scores(rid).to_pandas()[["example_id", "response_idx", "value"]]
        frame = frame.merge(
            sc.rename(columns={"value": f"score:{name}"}),
            on=["example_id", "response_idx"],
            how="left",
        )
    resp = dataset + RESPONSES_SUFFIX
    if store.dataset(dataset)["kind"] == "preferences" and store.has_dataset(resp):
        views = store.views(resp)
        cols = ["id"] + (["cluster"] if views.cluster_run else [])
        cols += ["x", "y"] if views.projection_run else []
        wide = store.wide(resp, views=views, columns=cols).to_pandas()
        keys = store.response_keys(resp).to_pandas()[["id", "example_id", "response_idx"]]
        placed = keys.merge(wide, on="id", how="left").drop(columns="id")
        if views.cluster_run:
            labels = store.clusters(views.cluster_run).set_index("cluster")["label"]
            placed["cluster_label"] = placed["cluster"].map(labels)
        frame = frame.merge(placed, on=["example_id", "response_idx"], how="left")
    for col in ("cluster", "cluster_label", "x", "y"):
        if col not in frame.columns:
            frame[col] = np.nan
    return frame


@dataclass(frozen=True)
class DisagreementProbe:
    """Which SAE features predict where two reward sources disagree.

    ``table``: core.rewards.disagreement rows (rank_diff = rank under a - rank under b, the
    largest |rank_diff| first) with prompt and response. ``weights``: the sparse probe's
    nonzero weights (feature_id, weight on max-abs scaled features, label), the largest |weight|
    first; positive = the feature goes with ``a`` ranking a response above ``b``. ``metrics``:
    out-of-fold R2 and Spearman of the probe with every prompt's responses held out together
    (they share the prompt's context, so shuffled folds would flatter it; ``n_groups`` prompts),
    and under ``by_response`` the same over shuffled folds of responses. ``top``: per weighted
    feature, the responses where it fires most (example_id, response_idx, activation,
    rank_diff)."""

    a: str
    b: str
    table: pd.DataFrame
    weights: pd.DataFrame
    metrics: dict[str, Any]
    params: dict[str, Any]
    top: dict[int, pd.DataFrame]


def disagreement_probe(
    store: Store,
    *,
    dataset: str,
    a: str,
    b: str,
    feature_run: int | None = None,
    seed: int = 0,
    top_examples: int = 5,
) -> DisagreementProbe:
    """Rank the responses two reward sources disagree on most and fit a sparse (elastic net)
    probe of the disagreement (rank_diff) on the responses' SAE features."""

    if a == b:
        raise StudioError("pick two different reward sources to compare")
    key = ["example_id", "response_idx", "score"]
    frames = store.reward_frames(dataset, [a, b])
    table = disagreement(frames[a][key], frames[b][key])
    rf = response_features(store, dataset=dataset, feature_run=feature_run)
    at = table.merge(rf.keys, on=["example_id", "response_idx"], how="inner")
    Xa = rf.X[at["row"].to_numpy()]
    result = fit_probe(
        Xa,
        at["rank_diff"].to_numpy(np.float64),
        cfg=ProbeConfig(kind="elasticnet", seed=seed),
        name=f"rank under {a} - rank under {b}",
        groups=at["example_id"].to_numpy(),  # grouped folds: a prompt's responses together
    )
    by_prompt = result.metrics.get("by_cluster") or {}
    metrics = {**by_prompt, "by_response": result.metrics.get("in_distribution", {})}
    names = feature_labels(store, rf.feature_run)
    weights = pd.DataFrame(
        [(int(f), float(w), names.get(int(f), "")) for f, w in result.weights if w != 0.0],
        columns=["feature_id", "weight", "label"],
    )
    texts = store.reward_candidates(dataset).to_pandas()[
        ["example_id", "response_idx", "prompt", "response"]
    ]
    table = table.merge(texts, on=["example_id", "response_idx"], how="left")
    top: dict[int, pd.DataFrame] = {}
    for f in weights["feature_id"]:
        col = np.asarray(Xa[:, int(f)].todense()).ravel() if sparse.issparse(Xa) else Xa[:, f]
        order = np.argsort(-col, kind="stable")[:top_examples]
        order = order[col[order] > 0]
        top[int(f)] = pd.DataFrame(
            {
                "example_id": at["example_id"].to_numpy()[order],
                "response_idx": at["response_idx"].to_numpy()[order],
                "activation": col[order],
                "rank_diff": at["rank_diff"].to_numpy()[order],
            }
        )
    return DisagreementProbe(
        a=a,
        b=b,
        table=table,
        weights=weights,
        metrics=metrics,
        params=result.params,
        top=top,
    )


def reward_candidates(store: Store, dataset: str) -> Candidates:
    """Every response of a preference set (0 = chosen, 1.. = rejected), or the last assistant
    turn of each chat (response_idx -1, the turns before it as context). A prompt dataset has
    no responses to score: an error."""
    kind = store.dataset(dataset)["kind"]
    if kind == "prompts":
        raise StudioError(
            f"dataset '{dataset}' holds prompts only: a reward model scores responses, so it "
            "needs a preference set (chosen/rejected) or chats; an 'answer' field is a reference "
            "answer, checked by the verifier rather than scored"
        )
    tbl = store.reward_candidates(dataset)
    keys: list[tuple[str, int]] = []
    contexts: list[list[dict[str, str]]] = []
    responses: list[str] = []
    skipped = 0
    cols = tbl.to_pydict()
    for eid, ridx, prompt, response, messages in zip(
        cols["example_id"],
        cols["response_idx"],
        cols["prompt"],
        cols["response"],
        cols["messages"],
        strict=True,
    ):
        if kind == "preferences":
            context = [{"role": "user", "content": str(prompt)}]
        elif messages is None:
            raise StudioError(
                f"dataset '{dataset}': chat '{eid}' has no stored turns (ingested by an older "
                "version); ingest the file again with --replace"
            )
        else:
            turns = [
                {"role": str(m["role"]), "content": str(m["content"])} for m in json.loads(messages)
            ]
            if not turns or turns[-1]["role"] != "assistant":
                skipped += 1
                continue
            context, response = turns[:-1], turns[-1]["content"]
        keys.append((str(eid), int(ridx)))
        contexts.append(context)
        responses.append(str(response))
    if not keys:
        raise StudioError(
            f"dataset '{dataset}' ({kind}) has no response to score"
            + (f": none of its {skipped} chats ends with an assistant turn" if skipped else "")
        )
    return Candidates(keys, contexts, responses, n_skipped=skipped)


def _read_chat_template(chat_template: str) -> str:
    """Jinja text, or the text of the file it names."""
    path = Path(chat_template).expanduser()
    if "{" not in chat_template and path.is_file():
        return path.read_text(encoding="utf-8")
    if "{" not in chat_template:
        raise StudioError(
            f"--chat-template {chat_template!r}: no such file, and not a Jinja template"
        )
    return chat_template


@dataclass(frozen=True)
class RewardScoringConfig:
    """Options of score_rewards (the ``reward`` command), checked on construction.

    ``template``: None (the chat template when the tokenizer has one, else
    :data:`DEFAULT_TEMPLATE`), ``"chat"``, or a plain template with ``{prompt}`` and
    ``{response}``; ``chat_template`` (Jinja text or a file) replaces the tokenizer's.
    ``max_length`` None: the model's context (:data:`FALLBACK_MAX_LENGTH` when it states none).
    ``name`` None: from the model (``default_reward_name``). ``chunk_size``: responses per
    commit. Example: ``RewardScoringConfig("chats", "path/to/rm", "ordinal", name="wild")``.
    """

    dataset: str
    model: str
    head: Head
    name: str | None = None
    batch_size: int = 16
    max_length: int | None = None
    template: str | None = None
    chat_template: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    resume: bool = True
    chunk_size: int = 512

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise StudioError(f"--head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for what, value in (("batch size", self.batch_size), ("chunk size", self.chunk_size)):
            if value < 1:
                raise StudioError(f"{what} must be at least 1, got {value}")
        if self.max_length is not None and self.max_length < 1:
            raise StudioError(f"--max-length must be at least 1, got {self.max_length}")
        if self.template is not None and self.template != CHAT:
            check_template(self.template)
        if not self.reward_name:
            raise StudioError("--name must be a non-empty name")

    @property
    def reward_name(self) -> str:
        """The name the scores are stored under: ``name``, else one made from the model's."""
        return (self.name if self.name is not None else default_reward_name(self.model)).strip()


def score_rewards(
    store: Store,
    cfg: RewardScoringConfig,
    *,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] = warn,
) -> int:
    """Score every response of ``cfg.dataset`` with a reward model; returns the run id.

    Longer texts than the max length are truncated, counted and flagged. Commits every
    ``cfg.chunk_size`` responses on a writer thread; rerunning the same command after an
    interruption continues with the responses not yet stored. ``progress(n)`` is called after
    each batch.
    """
    dataset, head, name = cfg.dataset, cfg.head, cfg.reward_name
    cands = reward_candidates(store, dataset)  # before the (slow) model load
    dev = resolve_device(cfg.device)
    rm = load_reward_model(
        cfg.model, head=head, device=dev, dtype=resolve_dtype(cfg.dtype, device=dev)
    )
    custom = _read_chat_template(cfg.chat_template) if cfg.chat_template is not None else None
    if custom is not None:
        rm.tokenizer.chat_template = custom
    tpl = resolve_template(rm.tokenizer, cfg.template)
    length = cfg.max_length or rm.context or FALLBACK_MAX_LENGTH
    if rm.context is not None:
        length = min(length, rm.context)  # longer inputs would crash the position embeddings
    model_dtype = str(next(rm.model.parameters()).dtype).removeprefix("torch.")
    config: dict[str, Any] = {
        "name": name,
        "model": model_label(cfg.model),
        "head": head,
        "K": rm.k,
        "template": tpl,
        "max_length": length,
        "dtype": model_dtype,
    }
    if custom is not None:
        config["chat_template"] = custom
    run_id, resumed = store.begin_run(
        RunRecord(REWARD_STEP, dataset, config, versions()), resume=cfg.resume
    )
    done = store.done_reward_keys(run_id) if resumed else set()
    todo = [i for i, key in enumerate(cands.keys) if key not in done]
    source = f"model: {config['model']}"
    t0 = time.perf_counter()

    def commit(chunk: pa.Table) -> None:
        store.write_reward_chunk(run_id, chunk, source=source)

    n = len(cands.keys)
    writer = ChunkWriter(commit)
    try:
        with tqdm(total=n, initial=n - len(todo), desc=f"reward {name}", unit="resp") as bar:

            def step(k: int) -> None:
                bar.update(k)
                if progress is not None:
                    progress(k)

            for start in range(0, len(todo), cfg.chunk_size):
                part = todo[start : start + cfg.chunk_size]
                texts = [
                    render(rm.tokenizer, cands.contexts[i], cands.responses[i], template=tpl)
                    for i in part
                ]
                values, logits, truncated = score_texts(
                    rm,
                    texts,
                    chat=tpl == CHAT,
                    max_length=length,
                    batch_size=cfg.batch_size,
                    progress=step,
                )
                writer.put(
                    pa.table(
                        {
                            "example_id": pa.array([cands.keys[i][0] for i in part], pa.string()),
                            "response_idx": pa.array([cands.keys[i][1] for i in part], pa.int32()),
                            "value": pa.array(values, pa.float64()),
                            "logits": pa.array(
                                list(logits) if head == "ordinal" else [None] * len(part),
                                pa.list_(pa.float32()),
                            ),
                            "truncated": pa.array(truncated, pa.bool_()),
                        },
                        schema=REWARD_SCHEMA,
                    )
                )
    finally:
        writer.close()
    totals = store.reward_totals(run_id)
    if totals["n_truncated"]:
        warn(
            f"{totals['n_truncated']} of {totals['n_scores']} texts were longer than {length} "
            "tokens and were truncated before scoring"
        )
    if cands.n_skipped:
        warn(f"{cands.n_skipped} chats do not end with an assistant turn and were not scored")
    store.finish_run(
        run_id,
        summary={
            **totals,
            "n_skipped": cands.n_skipped,
            "resumed": resumed,
            "seconds_this_session": round(time.perf_counter() - t0, 1),
            "scored_this_session": len(todo),
            "device": dev,
            "dtype": model_dtype,
        },
    )
    return run_id


def import_rewards(
    store: Store, path: str | Path, *, dataset: str, name: str, column: str = "score"
) -> int:
    """Read a file of precomputed scores (:func:`read_reward_file`) and store it as a finished
    reward run named ``name`` (source ``imported: FILE``). An id or (id, response_idx) the
    dataset does not hold is an error naming its line, and nothing is stored. Returns the
    run id."""

    if not name or not name.strip():
        raise StudioError("--name must be a non-empty name")
    kind = store.dataset(dataset)["kind"]
    table, where = read_reward_file(path, column=column)
    file = Path(path).name
    idx = table.column("response_idx").to_pylist()
    if kind == "preferences" and -1 in idx:
        at = where[idx.index(-1)]
        raise StudioError(
            f"{file} {at}: field 'response_idx' is missing or -1: dataset '{dataset}' holds "
            "preference sets, so each score names its response (0 = chosen, 1.. = rejected)"
        )
    unknown = store.unknown_reward_keys(dataset, table)
    if unknown.num_rows:
        bad = set(
            zip(
                unknown.column("example_id").to_pylist(),
                unknown.column("response_idx").to_pylist(),
                strict=True,
            )
        )
        keys = list(zip(table.column("example_id").to_pylist(), idx, strict=True))
        i = next(i for i, key in enumerate(keys) if key in bad)
        eid, ridx = keys[i]
        what = f"example {eid!r}" if ridx == -1 else f"response {ridx} of example {eid!r}"
        raise StudioError(
            f"{file} {where[i]}: dataset '{dataset}' has no {what} ({unknown.num_rows} unknown "
            "in the file); nothing stored"
        )
    return store.import_reward_scores(
        dataset=dataset,
        name=name.strip(),
        path=str(path),
        scores=table,
        versions=versions(),
        column=column,
    )


def verify_dataset(store: Any, *, dataset: str, name: str = "verifier") -> int:
    """Score every response of a dataset (a preference set's chosen and rejected; a chat's last
    assistant turn) against its example's ground truth and store them as the reward run
    ``name`` (source "verifier: ..."), beside reward models' scores. Returns the run id."""
    import json

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
    return store.add_run(
        RunRecord(
            REWARD_STEP,
            dataset,
            {"name": name, "kind": "verifier", "methods": sorted(methods)},
            versions(),
            {
                "n": len(verdicts),
                "mean": float(np.mean([v.score for v in verdicts])) if verdicts else None,
                "by_method": methods,
                "no_answer_extracted": sum(v.extracted is None for v in verdicts),
            },
            source="verifier: reasoning-gym score_answer where the task is one, else normalised match",
        ),
        scores=scores,
    )


ProbeFeatures = Literal["sae", "dense"]
PROBE_FEATURES: tuple[str, ...] = get_args(ProbeFeatures)
