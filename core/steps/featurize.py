"""Steps that read the model's internals: train an SAE on a layer's activations, and featurize a
dataset (each example's pooled top-k SAE features, optionally its dense pooled activations),
committed in chunks and resumed when interrupted with the same config.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from core.defaults import DEFAULT_SAE_DIR
from core.errors import StudioError
from core.features import (
    FeatureConfig,
    TokenStats,
    check_at_least_one,
    featurize_batches,
    truncation_warning,
)
from core.models import (
    DTYPES,
    LoadedModel,
    check_chat_template,
    collate,
    context_length,
    default_max_length,
    encode_texts,
    hook_name,
    iter_length_batches,
    layer_activations,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_layer,
)
from core.sae import (
    SaeTrainConfig,
    check_sae_matches,
    check_sae_out,
    load_sae,
    quality_warnings,
    sae_info,
    training_info,
    transfer_warning,
)
from core.sae import train_sae as _train
from core.steps.base import (
    ChunkWriter,
    model_label,
    resolve_model,
    versions,
    warn,
)
from core.store import RunRecord, Store, Views

# Examples per forward when collecting train-sae's activations.
ACTIVATION_BATCH = 32


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


def _load_for_activations(model: str, *, device: str, dtype: str) -> Any:
    """The model on ``device`` (auto: cuda if there is one) in ``dtype`` (auto: bf16 on a
    GPU, fp32 on CPU)."""

    dev = resolve_device(device)
    return load_model(resolve_model(model), device=dev, dtype=resolve_dtype(dtype, device=dev))


@dataclass(frozen=True, kw_only=True)
class TrainSAEConfig(SaeTrainConfig):
    """Options of train-sae: the SAE's own (``core.sae.SaeTrainConfig``: width, k, epochs, lr,
    batch_tokens, max_length, max_tokens, seed, eval_every, each written and checked there
    once) plus what it is trained on and where it goes, checked before any model loads.

    ``layer``, else ``hook``, picks the layer; ``out`` None: ``DEFAULT_SAE_DIR``/
    DATASET-MODEL-LLAYER-wWIDTH-kK. Example: ``TrainSAEConfig(dataset="demo", model="minilm",
    layer=3, epochs=1)``.
    """

    dataset: str
    model: str
    layer: int | None = None
    hook: str | None = None
    out: str | Path | None = None
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_model_options(dataset=self.dataset, model=self.model, dtype=self.dtype)


def check_model_options(*, dataset: str, model: str, dtype: str) -> None:
    """What every step that reads a dataset through a model checks first; errors name the field
    and its flag."""
    if not dataset:
        raise StudioError("dataset must be given (--dataset)")
    if not model:
        raise StudioError("model must be given (--model)")
    if dtype != "auto" and dtype not in DTYPES:
        raise StudioError(
            f"dtype must be auto or one of {', '.join(DTYPES)}, got '{dtype}' (--dtype)"
        )


def collect_activations(
    lm: Any,
    texts: Sequence[str],
    *,
    layer: int,
    max_length: int,
    max_tokens: int,
    seed: int = 0,
) -> Any:
    """Token activations of ``layer`` for the kept (non-special) tokens of ``texts``.

    With more than ``max_tokens`` tokens in the dataset, a seeded random subset of the texts is
    taken (so a cap samples the whole dataset, not its head). Each text is tokenized once;
    batches of ``ACTIVATION_BATCH`` are bucketed by length, as in featurize. Returns a float32
    CPU tensor [n_tokens, d_model] in a seeded shuffled order.
    """
    encoded = encode_texts(lm, texts, max_length=max_length)
    lengths = np.asarray([len(e.ids) for e in encoded])
    order = np.random.default_rng(seed).permutation(len(texts))
    n_take = int(np.searchsorted(np.cumsum(lengths[order]), max_tokens)) + 1
    chosen = order[:n_take]
    chunks: list[torch.Tensor] = []
    with tqdm(total=len(chosen), desc="collect activations", unit="ex") as bar:
        for idx in iter_length_batches(lengths[chosen].tolist(), batch_size=ACTIVATION_BATCH):
            rows = chosen[idx]
            batch = collate(lm, [encoded[i] for i in rows])
            acts = layer_activations(lm, batch, layer=layer)
            chunks.append(acts[batch["keep"].to(acts.device)].float().cpu())
            bar.update(len(rows))
    acts = torch.cat(chunks)
    perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(acts.shape[0]))
    return acts[perm][:max_tokens]


def train_sae(
    store: Store, cfg: TrainSAEConfig, *, report: Callable[[Any], None] | None = None
) -> dict[str, Any]:
    """Train a TopK SAE with sae-lens on the dataset's activations at ``cfg.layer`` (or
    ``cfg.hook``); saves it in sae-lens's on-disk format and records a run. Returns the run's
    summary, whose ``warnings`` say when the SAE reconstructs poorly or has many dead features.

    ``cfg`` checked itself; ``out`` is checked here, before the model loads. ``width`` None:
    8 x the hidden size; ``max_length`` None: the model's context, capped. The run is started
    (status running) before training and finished right after the finished SAE folder is
    renamed into place, so a kill leaves no folder, or a folder whose run exists (and its
    ``studio_training.json`` names it); rerunning the same command takes up that run.
    ``report`` gets a ``core.sae.TrainProgress`` every ``eval_every`` steps and at the end.
    """
    if cfg.out:
        check_sae_out(cfg.out)
    _, texts = _texts(store, cfg.dataset)
    lm = _load_for_activations(cfg.model, device=cfg.device, dtype=cfg.dtype)
    layer = resolve_layer(lm, layer=cfg.layer, hook=cfg.hook)
    hook = hook_name(layer)
    width = cfg.width if cfg.width is not None else 8 * int(lm.d_model)
    if cfg.k > width:
        raise StudioError(f"--k {cfg.k} must not exceed the SAE width {width} (--width)")
    max_length = cfg.max_length or default_max_length(lm)
    label = model_label(cfg.model)
    name = f"{cfg.dataset}-{Path(label).name}-L{layer}-w{width}-k{cfg.k}"
    out_dir = check_sae_out(Path(cfg.out) if cfg.out else Path(DEFAULT_SAE_DIR) / name)
    config = {
        "model": label,
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
    run_id, _ = store.begin_run(RunRecord("train-sae", cfg.dataset, config, versions()))
    acts = collect_activations(
        lm, texts, layer=layer, max_length=max_length, max_tokens=cfg.max_tokens, seed=cfg.seed
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
        model_name=label,
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


@dataclass(frozen=True, kw_only=True)
class FeaturizeConfig(FeatureConfig):
    """Options of featurize, for both engines (single process and Ray): how texts become
    features (``core.features.FeatureConfig``: layer, pooling, top_k, batch_size, max_length,
    pool_over, chat_template, dense, each written and checked there once) plus where the texts,
    model and SAE come from and how the run commits.

    Exactly one of ``sae_path`` (a folder or raw checkpoint) and ``sae_release``
    (RELEASE/ID); ``sae_k``: k of a raw TopK checkpoint whose config lacks it. The layer is
    ``layer``, else ``hook``, else the SAE's own hook. ``chunk_size``: examples per commit of
    the single-process engine (the Ray engine commits ``RayOptions.chunk_rows``); ``device``
    is the single-process engine's (Ray actors take a GPU when the cluster has one).
    Example: ``FeaturizeConfig(dataset="demo", model="minilm", layer=3, sae_path="data/saes/x")``.
    """

    dataset: str
    model: str
    hook: str | None = None
    sae_path: str | None = None
    sae_release: str | None = None
    sae_k: int | None = None
    chunk_size: int = 512
    resume: bool = True
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        check_sae_source(self.sae_path, self.sae_release)
        check_at_least_one({"--chunk-size": self.chunk_size, "--sae-k": self.sae_k})
        super().__post_init__()
        check_model_options(dataset=self.dataset, model=self.model, dtype=self.dtype)

    @property
    def sae_name(self) -> str:
        """The SAE a run records: the resolved ``sae_path``, or RELEASE/ID."""
        return check_sae_source(self.sae_path, self.sae_release)

    def chosen(self, *, layer: int, max_length: int) -> FeaturizeConfig:
        """This config with the layer and max length the model and SAE decided (hook settled)."""
        return replace(self, layer=layer, hook=None, max_length=max_length)


def feature_run_config(cfg: FeaturizeConfig, *, dtype: str) -> dict[str, Any]:
    """The config a featurize run records, from ``cfg`` with its layer and max length chosen
    (:meth:`FeaturizeConfig.chosen`) and the model's ``dtype`` as loaded: one function for both
    engines, so runs with the same options are the same run and resume each other.

    Keys added later are written only when not at their default, so an interrupted run of an
    older version still resumes with the same config.
    """
    if cfg.layer is None or cfg.max_length is None:
        raise StudioError("feature_run_config needs the layer and max_length chosen")
    config: dict[str, Any] = {
        "model": model_label(cfg.model),
        "layer": cfg.layer,
        "hook": hook_name(cfg.layer),
        "sae": cfg.sae_name,
        "pooling": cfg.pooling,
        "top_k": cfg.top_k,
        "max_length": cfg.max_length,
    }
    if cfg.pool_over != "prompt":
        config["pool_over"] = cfg.pool_over
    if cfg.chat_template:
        config["chat_template"] = True
    if dtype != "float32":
        config["dtype"] = dtype
    if cfg.dense:
        config["dense"] = True
    return config


def load_feature_sae(lm: LoadedModel, cfg: FeaturizeConfig) -> tuple[Any, int]:
    """The SAE of ``cfg`` on ``lm``'s device, checked against the model, and the layer it reads
    (``cfg.layer``, else ``cfg.hook``, else the SAE's hook). Both engines load through here."""
    if cfg.chat_template:
        check_chat_template(lm)
    if cfg.sae_path is not None:
        sae = load_sae(path=cfg.sae_path, device=lm.device, k=cfg.sae_k)
    else:
        release, _, sae_id = cfg.sae_name.partition("/")
        sae = load_sae(release=release, sae_id=sae_id, device=lm.device, k=cfg.sae_k)
    layer = resolve_layer(lm, layer=cfg.layer, hook=cfg.hook, sae_hook=sae.cfg.metadata.hook_name)
    check_sae_matches(sae, lm, layer=layer)
    return sae, layer


def sae_warnings(store: Store, cfg: FeaturizeConfig, transfer: str | None) -> list[str]:
    """The SAE's warnings before a run: ``transfer`` (``core.sae.transfer_warning``, or None)
    and, for a folder train-sae wrote for this store, a run not recorded as finished."""
    found = [transfer]
    if cfg.sae_path is not None:
        found.append(unrecorded_sae_warning(store, cfg.sae_path))
    return [msg for msg in found if msg is not None]


def begin_feature_run(
    store: Store,
    cfg: FeaturizeConfig,
    used: FeaturizeConfig,
    *,
    dtype: str,
    warn: Callable[[str], None],
) -> tuple[int, bool]:
    """Record (or take up, with ``cfg.resume``) the run of ``used`` (``cfg`` chosen on the model,
    whose weights are ``dtype``); warns when an interrupted run differs only in the default max
    length ``cfg`` left open. Returns (run id, resumed)."""
    config = feature_run_config(used, dtype=dtype)
    explicit = cfg.max_length is not None
    if cfg.resume and not explicit and (msg := other_length_run(store, cfg.dataset, config)):
        warn(msg)
    record = RunRecord("featurize", cfg.dataset, config, versions())
    return store.begin_run(record, resume=cfg.resume)


def finish_feature_run(
    store: Store,
    run_id: int,
    used: FeaturizeConfig,
    *,
    context: int | None,
    summary: dict[str, Any],
    warn: Callable[[str], None],
) -> None:
    """Finish a feature run: warn when examples were cut at ``used.max_length`` (or the model's
    ``context``), and store the totals read back from the store ahead of ``summary``."""
    totals = store.feature_totals(run_id)
    cut = truncation_warning(
        int(totals["n_truncated"]),
        int(totals["n_examples"]),
        max_length=int(used.max_length or 0),
        context=context,
        chat_template=used.chat_template,
    )
    if cut is not None:
        warn(cut)
    store.finish_run(
        run_id,
        summary={
            "n_examples": totals["n_examples"],
            "n_tokens": totals["n_tokens"],
            "n_truncated": totals["n_truncated"],
            **summary,
        },
    )


def featurize(store: Store, cfg: FeaturizeConfig, *, warn: Callable[[str], None] = warn) -> int:
    """SAE features of every example: forward up to the layer only, SAE-encode each token on
    the model's device, pool over the non-special tokens of the prompt/response/both, keep the
    top ``top_k`` as sparse pairs. With ``dense``, also store each example's mean hidden state
    of the layer over the same tokens (d_model floats), the dense baseline.

    ``cfg`` checked itself; the dataset, responses, model, SAE width and hook are checked here
    before the run is recorded. ``max_length`` None: the model's context, at most
    ``core.models.MAX_LENGTH_CAP`` tokens; the run records the number used. Commits every
    ``chunk_size`` examples on a writer thread; rerunning the same command after an
    interruption continues with the examples not yet stored. Returns the run id.
    """
    ids, texts, responses = example_pairs(store, cfg.dataset, pool_over=cfg.pool_over)
    lm = _load_for_activations(cfg.model, device=cfg.device, dtype=cfg.dtype)
    sae, layer = load_feature_sae(lm, cfg)
    for msg in sae_warnings(store, cfg, transfer_warning(sae, model_label(cfg.model))):
        warn(msg)
    used = cfg.chosen(layer=layer, max_length=cfg.max_length or default_max_length(lm))
    dtype = str(lm.model.dtype).removeprefix("torch.")
    run_id, resumed = begin_feature_run(store, cfg, used, dtype=dtype, warn=warn)
    info = sae_info(sae)
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

    writer = ChunkWriter(commit)
    try:
        with tqdm(total=len(ids), initial=len(ids) - len(todo), desc="featurize", unit="ex") as bar:
            for chunk in featurize_batches(
                lm,
                sae,
                [texts[i] for i in todo],
                [ids[i] for i in todo],
                used,
                stats=stats,
                progress=bar.update,
                chunk_size=cfg.chunk_size,
                responses=None if responses is None else [responses[i] for i in todo],
            ):
                n_tokens += int(pa.compute.sum(chunk.column("n_tokens")).as_py() or 0)
                s, top = stats.to_frames()  # a snapshot: stats keep changing after this
                writer.put(chunk, s, top)
    finally:
        writer.close()
    summary = {
        "d_sae": d_sae,
        "sae_info": info,
        "resumed": resumed,
        "seconds_this_session": round(time.perf_counter() - t0, 1),
        "tokens_this_session": n_tokens,
        "device": lm.device,
        "dtype": dtype,
    }
    finish_feature_run(store, run_id, used, context=context_length(lm), summary=summary, warn=warn)
    return run_id
