"""featurize on Ray Data, for datasets and clusters one process cannot serve in time.

The same work as ``steps.featurize``, spread over actors: one per GPU (or CPU slot), each loads
the model and SAE once and runs ``features.featurize_batches`` on length-sorted blocks of
examples. The pipeline writes Parquet shards; the driver then loads them into DuckDB in bulk
chunks through the store. A Ray run and a single-process run with the same options are the
same run config, so either can resume the other.

Statistics travel with their rows: every block's output carries that block's ``TokenStats``
frames (Arrow IPC in two binary columns of the block's first row) under a block key, and the
driver merges them as it commits. A block is committed whole, with the merged statistics of
everything committed so far, so after a crash the stored statistics match the stored features;
a block a Ray retry wrote twice is loaded once. With ``dense`` the rows carry their dense
baseline vectors (a list<float32> column) through the shards into the store.

Ray is an optional install: ``pip install -r requirements-ray.txt``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import StudioError
from core.features import (
    DENSE_FEATURE_SCHEMA,
    FEATURE_SCHEMA,
    TokenStats,
    check_at_least_one,
    featurize_batches,
)
from core.models import context_length, default_max_length, load_model, resolve_dtype
from core.sae import sae_info, transfer_warning
from core.steps.base import model_label, resolve_model
from core.steps.featurize import (
    FeaturizeConfig,
    begin_feature_run,
    example_pairs,
    finish_feature_run,
    load_feature_sae,
    sae_warnings,
)
from core.store import Store

RAY_MISSING = "featurize --ray needs Ray: pip install -r requirements-ray.txt"
TOP_N = 10  # top token occurrences kept per feature, as TokenStats' default
_BLOCK = "block"  # block key: one per map call, on every row
_BLOCK_ROWS = "block_rows"  # rows the block has (first row only)
_STATS = "stats_ipc"  # the block's TokenStats stats frame (first row only)
_TOP = "top_ipc"  # the block's TokenStats top-token frame (first row only)
_BOOKKEEPING = (_BLOCK, _BLOCK_ROWS, _STATS, _TOP)  # shard columns that are not feature columns
_DONE_MARKER = "_SUCCESS"  # written once the pipeline finished writing an attempt's shards
# Environment a remote worker needs to load models the way the driver does.
_ENV_PASSTHROUGH = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_TOKEN")


# --- merging per-block statistics ----------------------------------------------------------
def merge_token_stats(
    parts: Iterable[tuple[pd.DataFrame, pd.DataFrame]], *, top_n: int = TOP_N
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge ``TokenStats.to_frames()`` outputs of disjoint sets of examples into one pair.

    Per feature: n_fire and sum_act add up, max_act is the largest; the top token occurrences
    are the ``top_n`` strongest of all parts, one per (token, example), re-ranked from 0. Extra
    columns of the top frames (e.g. char spans) are kept. Example: parts with n_fire {3: 2} and
    {3: 5, 7: 1} merge to {3: 7, 7: 1}.
    """
    parts = list(parts)
    stats_frames = [s for s, _ in parts if len(s)]
    top_frames = [t for _, t in parts if len(t)]
    if stats_frames:
        stats = (
            pd.concat(stats_frames, ignore_index=True)
            .groupby("feature_id", sort=True)
            .agg(n_fire=("n_fire", "sum"), sum_act=("sum_act", "sum"), max_act=("max_act", "max"))
            .reset_index()
        )
    else:
        stats = pd.DataFrame({"feature_id": [], "n_fire": [], "sum_act": [], "max_act": []})
    stats = stats.astype(
        {"feature_id": np.int32, "n_fire": np.int64, "sum_act": np.float64, "max_act": np.float32}
    )
    if not top_frames:
        empty = {"feature_id": [], "rank": [], "example_id": [], "token": [], "value": []}
        top = pd.DataFrame(empty).astype({"feature_id": np.int32, "rank": np.int32})
        return stats, top.astype({"example_id": object, "token": object, "value": np.float32})
    top = pd.concat(top_frames, ignore_index=True)
    top = top.sort_values(["feature_id", "value"], ascending=[True, False], kind="stable")
    top = top.drop_duplicates(["feature_id", "token", "example_id"], keep="first")
    top = top.groupby("feature_id", sort=False).head(top_n).copy()
    top["rank"] = top.groupby("feature_id", sort=False).cumcount()
    top = top.astype({"feature_id": np.int32, "rank": np.int32, "value": np.float32})
    for span in ("char_start", "char_end"):  # -1 = unknown, as the store reads them back
        if span in top.columns:
            top[span] = top[span].fillna(-1).astype(np.int32)
    return stats, top.reset_index(drop=True)


def _frame_to_ipc(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _frame_from_ipc(data: bytes) -> pd.DataFrame:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all().to_pandas()


def block_key(example_ids: Iterable[str]) -> str:
    """A stable key for a block of examples, so a block written twice is recognised."""
    digest = hashlib.sha1("\x00".join(example_ids).encode("utf-8"), usedforsecurity=False)
    return digest.hexdigest()


# --- the options and the actor -------------------------------------------------------------
@dataclass(frozen=True)
class RayOptions:
    """Where the Ray engine runs a :class:`~core.steps.featurize.FeaturizeConfig`.

    ``address``: "local" starts a Ray instance here (``num_cpus`` CPUs, default all) and shuts
    it down afterwards; otherwise a cluster address (``auto``, ``ray://head:10001``).
    ``num_workers``: actors (default one per GPU, else CPU slots). ``shard_dir``: where shards
    go (default ``ray-shards/`` beside the database; on a multi-node cluster a folder every node
    shares). ``rows_per_block``: examples per actor call (default about 4 blocks per actor);
    ``chunk_rows``: rows per commit into the store.
    """

    address: str = "local"
    num_workers: int | None = None
    num_cpus: int | None = None
    shard_dir: str | Path | None = None
    rows_per_block: int | None = None
    chunk_rows: int = 50_000

    def __post_init__(self) -> None:
        check_at_least_one(
            {
                "chunk_rows": self.chunk_rows,
                "--workers": self.num_workers,
                "--ray-cpus": self.num_cpus,
                "rows_per_block": self.rows_per_block,
            }
        )


class WorkerPlan(NamedTuple):
    """How the actors share the cluster (see :func:`plan_workers`)."""

    workers: int
    threads: int
    cpus_per_actor: float
    gpus_per_actor: int


@dataclass(frozen=True)
class _ActorSpec:
    """What an actor needs to load the model and SAE and featurize: plain, picklable values.
    ``cfg`` as the user gave it until the probe chose its layer and max length for all actors;
    ``model`` the resolved weights folder, ``cfg.sae_path`` resolved."""

    model: str
    cfg: FeaturizeConfig
    threads: int
    use_gpu: bool


def _load(spec: _ActorSpec) -> tuple[Any, Any, int]:
    """The model and SAE on this worker's device, checked against each other, and the layer."""
    import torch

    torch.set_num_threads(spec.threads)
    device = "cuda" if spec.use_gpu and torch.cuda.is_available() else "cpu"
    lm = load_model(spec.model, device=device, dtype=resolve_dtype(spec.cfg.dtype, device=device))
    sae, layer = load_feature_sae(lm, spec.cfg)
    return lm, sae, layer


def _probe(spec: _ActorSpec) -> dict[str, Any]:
    """Load and check the model and SAE once, as an actor will, before any run is recorded.

    Returns the resolved layer, the model's dtype, the SAE's info, a transfer warning (or
    None), the max length (the one asked for, else the model's default) and the model's
    context; raises the same StudioError a single-process run would.
    """

    lm, sae, layer = _load(spec)
    return {
        "layer": layer,
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        "device": lm.device,
        "info": sae_info(sae),
        "warning": transfer_warning(sae, model_label(spec.cfg.model)),
        "max_length": spec.cfg.max_length or default_max_length(lm),
        "context": context_length(lm),
    }


class Featurizer:
    """A Ray Data callable class: one per actor, model and SAE loaded once in ``__init__``.

    ``__call__`` featurizes one block (an Arrow table with ``id``, ``text`` and, when pooling
    over responses, ``response``) and returns its rows (``FEATURE_SCHEMA`` columns, or
    ``DENSE_FEATURE_SCHEMA``'s with ``dense``, plus the block key) with the block's token
    statistics on the first row.
    """

    def __init__(self, spec: _ActorSpec) -> None:

        self.lm, self.sae, _ = _load(spec)
        self.cfg = spec.cfg
        self.columns = (DENSE_FEATURE_SCHEMA if self.cfg.dense else FEATURE_SCHEMA).names
        self.d_sae = int(self.sae.cfg.d_sae)

    def __call__(self, batch: pa.Table) -> pa.Table:

        ids = [str(i) for i in batch.column("id").to_pylist()]
        extra: dict[str, Any] = {}
        if "response" in batch.column_names:
            extra["responses"] = batch.column("response").to_pylist()
        stats = TokenStats(self.d_sae, top_n=TOP_N)
        tables = featurize_batches(
            lm=self.lm,
            sae=self.sae,
            texts=batch.column("text").to_pylist(),
            example_ids=ids,
            cfg=self.cfg,
            stats=stats,
            **extra,
        )
        out = pa.concat_tables(list(tables)).select(self.columns)
        s, top = stats.to_frames()
        n = out.num_rows
        return (
            out.append_column(_BLOCK, pa.array([block_key(ids)] * n, pa.string()))
            .append_column(_BLOCK_ROWS, pa.array([n] + [None] * (n - 1), pa.int64()))
            .append_column(_STATS, pa.array([_frame_to_ipc(s)] + [None] * (n - 1), pa.binary()))
            .append_column(_TOP, pa.array([_frame_to_ipc(top)] + [None] * (n - 1), pa.binary()))
        )


# --- planning ------------------------------------------------------------------------------
def plan_workers(resources: dict[str, float], num_workers: int | None) -> WorkerPlan:
    """(actors, torch threads per actor, CPUs reserved per actor, GPUs per actor).

    With GPUs: one actor per GPU. Without: CPU actors of a few threads each (one thread each on
    a box of up to 8 cores), e.g. 2 CPUs -> 2 actors x 1 thread; 16 CPUs -> 8 actors x 2.
    """
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = int(resources.get("GPU", 0))
    if num_workers is not None and num_workers < 1:
        raise StudioError(f"--workers must be at least 1, got {num_workers}")
    if gpus:
        workers = num_workers or gpus
        threads = max(1, min(8, (cpus - 1) // workers))
        return WorkerPlan(workers, threads, 1.0, 1)
    if num_workers:
        threads = max(1, cpus // num_workers)
        return WorkerPlan(num_workers, threads, float(threads), 0)
    threads = max(1, cpus // 8)
    return WorkerPlan(max(1, cpus // threads), threads, float(threads), 0)


def length_sorted_blocks(
    ids: list[str],
    texts: list[str],
    *,
    rows_per_block: int,
    responses: list[str | None] | None = None,
) -> list[pa.Table]:
    """(id, text[, response]) tables of ``rows_per_block`` rows, longest first, so each block
    holds examples of similar length (characters stand in for tokens; the actor then buckets
    by tokens). Example: texts of 3, 9, 4 chars, 2 per block -> blocks [9, 4], [3]."""

    def size(i: int) -> int:
        return len(texts[i]) + (len(responses[i] or "") if responses is not None else 0)

    order = sorted(range(len(ids)), key=lambda i: (-size(i), i))
    columns = {
        "id": pa.array([ids[i] for i in order], pa.string()),
        "text": pa.array([texts[i] for i in order], pa.string()),
    }
    if responses is not None:
        columns["response"] = pa.array([responses[i] for i in order], pa.string())
    table = pa.table(columns)
    return [
        table.slice(start, rows_per_block) for start in range(0, table.num_rows, rows_per_block)
    ]


# --- loading shards into DuckDB ------------------------------------------------------------
@dataclass
class _Loader:
    """Commit complete blocks from shards in chunks, each with the merged stats so far."""

    store: Store
    run_id: int
    stats: tuple[pd.DataFrame, pd.DataFrame]
    done: set[str]
    chunk_rows: int
    n_tokens: int = 0
    n_committed: int = 0
    n_dropped: int = 0
    _seen_blocks: set[str] = field(default_factory=set)
    _pending_rows: dict[str, list[pa.Table]] = field(default_factory=dict)
    _pending_blob: dict[str, tuple[int, bytes, bytes]] = field(default_factory=dict)
    _buffer: list[pa.Table] = field(default_factory=list)
    _buffer_stats: list[tuple[pd.DataFrame, pd.DataFrame]] = field(default_factory=list)

    def add_file(self, table: pa.Table) -> None:
        for key in pc.unique(table.column(_BLOCK)).to_pylist():
            rows = table.filter(pc.equal(table.column(_BLOCK), key))
            features = rows.drop_columns(list(_BOOKKEEPING))  # with dense when the run has it
            self._pending_rows.setdefault(key, []).append(features)
            first = pc.index(rows.column(_BLOCK_ROWS).is_valid(), True).as_py()
            if first >= 0:
                self._pending_blob[key] = (
                    int(rows.column(_BLOCK_ROWS)[first].as_py()),
                    rows.column(_STATS)[first].as_py(),
                    rows.column(_TOP)[first].as_py(),
                )
            self._take_if_complete(key)
        if sum(t.num_rows for t in self._buffer) >= self.chunk_rows:
            self.commit()

    def _take_if_complete(self, key: str) -> None:
        blob = self._pending_blob.get(key)
        rows = self._pending_rows.get(key, [])
        if blob is None or sum(t.num_rows for t in rows) < blob[0]:
            return
        del self._pending_blob[key], self._pending_rows[key]
        if key in self._seen_blocks:  # a block a retry wrote twice
            return
        self._seen_blocks.add(key)
        block = pa.concat_tables(rows)
        ids = block.column("example_id").to_pylist()
        fresh = [eid not in self.done for eid in ids]
        if not any(fresh):  # committed by an earlier attempt: its stats are stored already
            return
        if not all(fresh):
            raise StudioError(
                f"run {self.run_id}: a shard block overlaps committed examples; rerun with "
                "--no-resume or delete the run's shard folder"
            )
        self.done.update(ids)
        self._buffer.append(block)
        self._buffer_stats.append((_frame_from_ipc(blob[1]), _frame_from_ipc(blob[2])))

    def commit(self) -> None:
        if not self._buffer:
            return
        chunk = pa.concat_tables(self._buffer)
        self.stats = merge_token_stats([self.stats, *self._buffer_stats])
        s, top = self.stats
        self.store.write_feature_chunk(self.run_id, chunk=chunk, stats=s, top_tokens=top)
        self.n_committed += chunk.num_rows
        self.n_tokens += int(pc.sum(chunk.column("n_tokens")).as_py() or 0)
        self._buffer, self._buffer_stats = [], []

    def finish(self) -> None:
        self.commit()
        if self._pending_rows or self._pending_blob:
            raise StudioError(
                f"run {self.run_id}: {len(set(self._pending_rows) | set(self._pending_blob))} shard "
                "blocks are incomplete; rerun the same command to redo them"
            )


def _shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.parquet") if p.is_file())


def load_shards(loader: _Loader, folder: Path) -> None:
    """Commit every complete block of the Parquet shards under ``folder``."""
    for path in _shard_files(folder):
        loader.add_file(pq.read_table(path))
    loader.finish()


# --- Ray -----------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise StudioError(RAY_MISSING) from exc
    return ray


def _runtime_env() -> dict[str, Any]:
    """Ship the core package and the hub settings to the workers (remote nodes may lack them)."""
    core_dir = str(Path(__file__).resolve().parent)
    env = {k: os.environ[k] for k in _ENV_PASSTHROUGH if k in os.environ}
    return {"py_modules": [core_dir], "env_vars": env}


def _ray_init(ray: Any, address: str, num_cpus: int | None) -> bool:
    """Connect to Ray; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env=_runtime_env(),
        )
    else:
        ray.init(address=address, log_to_driver=False, runtime_env=_runtime_env())
    return True


def _unwrap(exc: BaseException) -> BaseException:
    """The StudioError inside a Ray task or Ray Data error, when there is one."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None or isinstance(seen, StudioError):
            break
        seen = getattr(seen, "cause", None) or seen.__cause__
    return seen if isinstance(seen, StudioError) else exc


def _ray_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; a StudioError raised inside a Ray task or actor comes out as itself."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        err = _unwrap(exc)
        if isinstance(err, StudioError):
            raise StudioError(*err.args, field=err.field) from None  # its field too
        raise


def _run_pipeline(
    ray: Any, *, blocks: list[pa.Table], spec: _ActorSpec, plan: WorkerPlan, out: Path
) -> None:
    """The Ray Data pipeline: blocks -> Featurizer actors -> Parquet shards under ``out``."""
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(
        Featurizer,
        fn_constructor_kwargs={"spec": spec},
        batch_size=max(t.num_rows for t in blocks),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.workers),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor,
    )
    # Writing is light; reserving no CPU lets it run while the actors hold every slot.
    ds.write_parquet(str(out), ray_remote_args={"num_cpus": 0})
    (out / _DONE_MARKER).touch()


def featurize_ray(
    store: Store,
    cfg: FeaturizeConfig,
    options: RayOptions | None = None,
    *,
    warn: Callable[[str], None] | None = None,
) -> int:
    """``steps.featurize`` of the same ``cfg`` as a Ray Data pipeline, run where ``options``
    say (default: a local Ray on every CPU); returns the run id.

    Actors use a GPU each when the cluster has GPUs (``cfg.dtype`` auto = bf16 there). Shards
    go to ``shard_dir/<run_id>/``, are committed in chunks of ``chunk_rows`` and removed.
    Resumes an interrupted run with the same config, whichever engine ran it, and loads shards
    a finished pipeline of an interrupted attempt left behind.
    """
    options = options or RayOptions()
    say = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    ids, texts, responses = example_pairs(store, cfg.dataset, pool_over=cfg.pool_over)
    ray = _import_ray()
    started = _ray_init(ray, options.address, options.num_cpus)
    try:
        plan = plan_workers(ray.cluster_resources(), options.num_workers)
        sae_path = cfg.sae_name if cfg.sae_path is not None else None
        spec = _ActorSpec(
            model=resolve_model(cfg.model),
            cfg=replace(cfg, sae_path=sae_path),
            threads=plan.threads,
            use_gpu=plan.gpus_per_actor > 0,
        )
        # One load on a worker like the actors', so every check runs before the run is recorded.
        probe = ray.remote(num_cpus=0, num_gpus=plan.gpus_per_actor)(_probe)
        found = _ray_call(lambda: ray.get(probe.remote(spec)))
        for msg in sae_warnings(store, spec.cfg, found["warning"]):
            say(msg)
        used = spec.cfg.chosen(layer=found["layer"], max_length=found["max_length"])
        spec = replace(spec, cfg=used)
        run_id, resumed = begin_feature_run(store, cfg, used, dtype=found["dtype"], warn=say)
        t0 = time.perf_counter()
        if resumed:
            prior, done = store.feature_stats(run_id), store.done_example_ids(run_id)
        else:
            prior, done = merge_token_stats([]), set()
        loader = _Loader(store, run_id, stats=prior, done=done, chunk_rows=options.chunk_rows)
        root = options.shard_dir or Path(store.path).parent / "ray-shards"
        run_root = Path(root) / str(run_id)
        _load_leftovers(loader, run_root, resumed=resumed)
        _featurize_blocks(
            loader,
            (ids, texts, responses),
            spec=spec,
            plan=plan,
            rows_per_block=options.rows_per_block,
            run_root=run_root,
        )
    finally:
        if started:
            ray.shutdown()

    missing = len(ids) - len(loader.done)
    if missing:
        raise StudioError(f"run {run_id}: {missing} examples were not featurized; rerun")
    summary = {
        "d_sae": int(found["info"]["d_sae"]),
        "sae_info": found["info"],
        "resumed": resumed,
        "seconds_this_session": round(time.perf_counter() - t0, 1),
        "tokens_this_session": loader.n_tokens,
        "device": found["device"],
        "dtype": found["dtype"],
        "engine": "ray",
        "workers": plan.workers,
        "threads_per_worker": plan.threads,
        "gpus_per_worker": plan.gpus_per_actor,
    }
    finish_feature_run(store, run_id, used, context=found["context"], summary=summary, warn=say)
    return run_id


def _load_leftovers(loader: _Loader, run_root: Path, *, resumed: bool) -> None:
    """Load the shards a finished pipeline of an interrupted attempt left (when ``resumed``)
    and remove every earlier attempt's folder, so only fresh shards are written after."""
    for attempt in _attempts(run_root):
        if resumed and (attempt / _DONE_MARKER).is_file():
            load_shards(loader, attempt)
        shutil.rmtree(attempt, ignore_errors=True)


def _featurize_blocks(
    loader: _Loader,
    examples: tuple[list[str], list[str], list[str | None] | None],
    *,
    spec: _ActorSpec,
    plan: WorkerPlan,
    rows_per_block: int | None,
    run_root: Path,
) -> None:
    """Featurize the (ids, texts, responses) ``loader`` has not committed through the pipeline
    into a fresh attempt's shards under ``run_root``, and load them."""
    ids, texts, responses = examples
    todo = [i for i, eid in enumerate(ids) if eid not in loader.done]
    if todo:
        blocks = length_sorted_blocks(
            [ids[i] for i in todo],
            [texts[i] for i in todo],
            responses=None if responses is None else [responses[i] for i in todo],
            rows_per_block=rows_per_block
            or _default_rows_per_block(len(todo), spec.cfg.batch_size, plan.workers),
        )
        out = run_root / f"attempt-{uuid.uuid4().hex[:8]}"
        _ray_call(_run_pipeline, _import_ray(), blocks=blocks, spec=spec, plan=plan, out=out)
        load_shards(loader, out)
        shutil.rmtree(out, ignore_errors=True)
    _remove_if_empty(run_root)


def _default_rows_per_block(n: int, batch_size: int, workers: int) -> int:
    """About 4 blocks per actor so work balances, each of 1 to 16 model batches."""
    per_block = -(-n // (4 * workers))
    return max(batch_size, min(16 * batch_size, per_block))


def _attempts(run_root: Path) -> Iterator[Path]:
    if run_root.is_dir():
        yield from sorted(p for p in run_root.iterdir() if p.is_dir())


def _remove_if_empty(folder: Path) -> None:
    for path in (folder, folder.parent):
        try:
            path.rmdir()
        except OSError:
            return
