"""The export step: plan the kept rows (filters, rule sets, the length check), order and batch them,
stream them to the layout's writer and write the manifest that reproduces the export.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import StudioError
from core.export import (
    PROJECT_ROOT,
    ExportConfig,
    ExportWriter,
    Written,
    check_target,
    compose_batches,
    cross_cluster_share,
    describe_filters,
    export_command,
    layout_filters,
    layout_schema,
    load_tokenizer,
    manifest_bytes,
    manifest_path,
    order_index,
    resolve_container,
    reward_function_bytes,
    side_files,
    to_layout,
    train_recipe,
    trainer_lengths,
    write_atomic_bytes,
    write_error,
)
from core.filters import Filter
from core.rules import RuleSet, band_counts, difficulty_column, intersect_ids
from core.steps.base import (
    versions,
)
from core.steps.rules import difficulty_scores
from core.store import Store, Views

# --- export ----------------------------------------------------------------------------------
EXPORT_MEMORY_MB = 1024  # DuckDB's cap while exporting (--memory-mb): memory stays flat


@dataclass(frozen=True)
class ExportRequest:
    """What an export keeps, given the same way by the CLI's flags and the Export page: the
    dataset; a rule set (its filters come first, its ids are intersected with ``ids``) and the
    file it was read from (``rules_path``, None for an upload); the filters and ids given
    beside it. The manifest records the rule set the same way whoever asked."""

    dataset: str
    filters: tuple[Filter, ...] = ()
    ids: tuple[str, ...] | None = None
    rule_set: RuleSet | None = None
    rules_path: str | None = None

    def kept_filters(self) -> list[Filter]:
        """The rule set's filters, then the request's own."""
        return [*(self.rule_set.filters() if self.rule_set else []), *self.filters]

    def kept_ids(self) -> list[str] | None:
        """The ids to keep: the rule set's and the request's, intersected (None: every id)."""
        listed = None if self.ids is None else list(self.ids)
        return intersect_ids(self.rule_set.ids() if self.rule_set else None, listed)

    def recorded_rule_set(self) -> dict[str, Any] | None:
        """The manifest's ``rule_set``: name, path, its own filters and the whole set."""
        if self.rule_set is None:
            return None
        return {
            "name": self.rule_set.name,
            "path": self.rules_path,
            "filters": [f.describe() for f in self.rule_set.filters()],
            "rules": self.rule_set.to_dict(),
        }


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
    if cfg.layout_spec.pair_rows:
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
    as the layout's trainer measures them (:func:`core.export.trainer_lengths` with
    ``cfg.tokenizer``), and what the manifest reports: the rule, the longest row, and the ids
    of the rows dropped (a pair row as ``ID#rejected_idx``). Reads the rows' text chunk by
    chunk, in ingest order, before anything is ordered or batched, so batches stay whole."""

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
        "measured": cfg.layout_spec.length_rule,
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
    request: ExportRequest,
    cfg: ExportConfig,
    *,
    out: str | Path,
    record: bool = True,
    memory_mb: int = EXPORT_MEMORY_MB,
) -> dict[str, Any]:
    """Write the filtered, ordered rows in ``cfg.fmt`` and a manifest that reproduces them, both
    atomically, streaming the rows in chunks (memory stays flat as the row count grows).
    ``record`` also logs the export in the store (the app, which opens the store read-only,
    passes False). ``memory_mb`` caps DuckDB's memory (its sorts spill to disk beyond it).

    Beside the data (``OUT``): ``OUT.manifest.json``; for verl and trl-prompt, ``OUT.reward.py``
    (the studio's verifier as verl's ``compute_score`` and TRL's ``verifier_reward``,
    :mod:`core.answers`); with ``ids``, ``OUT.ids.txt``
    (what the manifest's command reads back). Before anything is written, ``out`` is checked
    (:func:`core.export.files.check_target`): never the store's files or a folder holding them,
    never a folder we did not write, never a place that cannot be written. The side files are
    renamed into place before the data, so a kill between the two leaves a manifest whose
    sha256 does not match the data beside it."""

    given = Path(out)
    check_target(given, container_of=partial(resolve_container, cfg=cfg), store_path=store.path)
    # the manifest, its command and the store's record name the export by its absolute path
    out = given.absolute()
    layout, container = cfg.layout, resolve_container(given, cfg)
    dataset, filters, ids = request.dataset, request.kept_filters(), request.kept_ids()
    kind = store.dataset(dataset)["kind"]  # a clear error for an unknown name
    store = store.capped(memory_mb)
    views = store.views(dataset)
    plan = export_plan(store, dataset=dataset, views=views, filters=filters, ids=ids, cfg=cfg)
    sides = side_files(out, reward=cfg.layout_spec.reward_file, with_ids=ids is not None)
    # before the rows stream: its queries then never run beside the open stream's spill
    manifest = export_manifest(store, request, cfg, plan=plan, views=views, out=out, sides=sides)
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
    request: ExportRequest,
    cfg: ExportConfig,
    *,
    plan: ExportPlan,
    views: Views,
    out: Path,
    sides: dict[str, Path],
) -> dict[str, Any]:
    """Everything needed to rebuild the file: rules, order, seed, batches, runs, counts per
    cluster and per difficulty band, versions, the command that writes the same bytes again,
    and how to train on it (``train``: the trainer's settings that keep the order and the
    batches, and a command or snippet that starts a run)."""
    feature_run = store.run(views.feature_run)["config"] if views.feature_run else None
    dataset, filters, ids = request.dataset, request.kept_filters(), request.kept_ids()
    rule_set = request.recorded_rule_set()
    kind = store.dataset(dataset)["kind"]
    command = export_command(
        store_path=Path(store.path).absolute(),
        dataset=dataset,
        out=out,
        cfg=cfg,
        # a rule set read from a file is named by it; an uploaded one is spelled out
        filters=list(request.filters) if request.rules_path else filters,
        rules=request.rules_path,
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
        if kind != "responses" or not cfg.layout_spec.picks_responses
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
        "keep_the_order": cfg.layout_spec.keep_order,
        "train": train_recipe(
            cfg,
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
