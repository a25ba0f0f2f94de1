"""Steps that bring data in: a dataset file, rollouts (pass-rate labels) and feature descriptions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import StudioError
from core.feature_info import read_descriptions
from core.ingest import Kind, read_dataset
from core.rollouts import read_rollouts, rollout_labels, rollout_summary
from core.steps.base import (
    versions,
    warn,
)
from core.store import Store


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
        warn(warning)
    return store.write_dataset(
        name=dataset,
        kind=kind,
        source=str(path),
        examples=tables.examples,
        labels=tables.labels,
        responses=tables.responses,
        replace=replace,
    )


def ingest_rollouts(
    store: Store,
    *,
    dataset: str,
    path: str | Path,
    ks: Sequence[int] = (1, 4, 8),
    threshold: float | None = None,
    id_field: str = "id",
    source: str | None = None,
) -> dict[str, Any]:
    """Read rollout results, check every id belongs to the dataset, and replace the dataset's
    rollouts and their labels (n_rollouts, pass_rate, pass_at_k, zero_signal) in one
    transaction. Returns the summary."""

    store.dataset(dataset)
    path = Path(path)
    rollouts = read_rollouts(path, id_field=id_field, threshold=threshold)
    known = set(store.example_texts(dataset).column("id").to_pylist())
    rids = rollouts.column("example_id").to_pylist()
    unknown = [i for i in dict.fromkeys(rids) if i not in known]
    if unknown:
        raise StudioError(
            f"{path.name}: {len(unknown)} rollout ids are not examples of '{dataset}' "
            f"(first: '{unknown[0]}')"
        )
    labels = rollout_labels(rollouts, ks=ks)
    summary = rollout_summary(rollouts)
    summary["n_examples_without"] = len(known) - summary["n_prompts"]
    store.write_rollouts(
        dataset=dataset,
        rollouts=rollouts,
        labels=labels,
        config={
            "path": str(path.resolve()),
            "ks": list(ks),
            "threshold": threshold,
            "id_field": id_field,
            "source": source or str(path.name),
        },
        versions=versions(),
        summary=summary,
    )
    return summary


def import_descriptions(
    store: Store, *, run_id: int | None, dataset: str | None, path: str | Path
) -> int:
    """Store the descriptions in ``path`` for a feature run (``run_id``, else the dataset's latest
    feature run), replacing earlier ones. Everything is checked before anything is written:
    indices must lie inside the SAE's width when the run records it. Returns how many."""
    descriptions = read_descriptions(path)
    if run_id is None:
        if dataset is None:
            raise StudioError("name a feature run (--run) or a dataset (--dataset)")
        store.dataset(dataset)
        run_id = store.latest_run(dataset=dataset, step="featurize")
        if run_id is None:
            raise StudioError(f"dataset '{dataset}' has no finished feature run: featurize first")
    run = store.run(run_id)
    if run["step"] != "featurize":
        raise StudioError(f"run {run_id} is a {run['step']} run, not a feature run")
    d_sae = run["summary"].get("d_sae")
    if d_sae:
        bad = sorted(f for f in descriptions if not 0 <= f < int(d_sae))
        if bad:
            raise StudioError(
                f"{path}: feature index {bad[0]} is outside the SAE of run {run_id} "
                f"(d_sae={d_sae}); is this export for another SAE?"
            )
    return store.write_descriptions(run_id, descriptions, source=Path(path).name)
