"""What a layout is: one :class:`Layout` value per file of this package, registered by name in
``core.export.layouts.LAYOUTS``. Everything the export, the CLI, the page and the manifest need
to know about a layout is a field here, so a new layout is one file plus one registry line.

Every layout takes "export rows" (``Store.export_chunks``: id, idx, prompt, answer, cluster,
labels, scores, tags, fields kept only in ``extra`` as JSON text, ``chosen``/``rejected`` for
preference data, ``position``, ``batch``) a chunk at a time and returns its own rows; none
carries ``idx`` or ``position`` (the file's own order is the position).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from core.errors import StudioError
from core.export.writer import CONTAINERS

# columns that are not passed through beside a trainer layout's own columns
INTERNAL = ("idx", "position")
RESPONSES = ("chosen", "rejected", "messages", "response")


class RowsFn(Protocol):
    """Turn a chunk of export rows into the layout's rows. ``kind`` is the dataset's (prompts,
    preferences, chats, responses); ``data_source`` is its name (verl picks the reward
    function by it)."""

    def __call__(self, chunk: pa.Table, *, kind: str, data_source: str) -> pa.Table: ...


@dataclass(frozen=True)
class RecipeArgs:
    """What a train recipe is made of: the export's path and container, its row count, and the
    options that reach the trainer's settings."""

    out: Path
    container: str
    n_rows: int
    batch_size: int | None
    max_length: int | None
    reward_file: Path | None  # OUT.reward.py, for a layout that ships the reward function


@dataclass(frozen=True)
class Layout:
    """One export layout: what each row holds and everything around it.

    - ``name``: its ``--format`` (unless ``by_container``) and what the manifest calls it;
      ``summary``: a few words for the Export page's format help.
    - ``rows``: a chunk of export rows in this layout (:class:`RowsFn`).
    - ``kinds``: the dataset kinds it can fill (None: every kind).
    - ``container`` / ``containers``: the container written by default and those its readers
      take; ``containers_why``: the one-line reason when another is asked for.
    - ``by_container``: ``--format`` names the container instead (the plain rows: jsonl,
      parquet, hf), each writing itself by default.
    - ``trainers``: who reads it (none: no trainer, so no ``--max-length``).
    - ``keep_order``: how to make those trainers read the file in its written order and batches
      (the manifest's ``keep_the_order``).
    - ``reward_file``: the export ships the studio's verifier beside the data (OUT.reward.py),
      for trainers that score rollouts.
    - ``pair_rows``: one row per (chosen, rejected) pair, so the export orders and batches pairs.
    - ``picks_responses``: on a responses dataset, ``--responses`` picks the chosen responses
      (the default) or all of them (SFT trains on what the model should say).
    - ``length_rule`` / ``lengths``: what its trainer measures against its length limit, and
      that measure for each row (tokenizer, rows -> [n]); both or neither.
    - ``recipe``: the manifest's ``train`` (the trainer's settings that keep the order and the
      batches, and a command or snippet), or None without a trainer.
    """

    name: str
    summary: str
    rows: RowsFn
    keep_order: str
    kinds: tuple[str, ...] | None = None
    container: str = "jsonl"
    containers: tuple[str, ...] = CONTAINERS
    containers_why: str = ""
    by_container: bool = False
    trainers: tuple[str, ...] = ()
    reward_file: bool = False
    pair_rows: bool = False
    picks_responses: bool = False
    length_rule: str | None = None
    lengths: Callable[[Any, pa.Table], np.ndarray] | None = None
    recipe: Callable[[RecipeArgs], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        # a developer's mistake in a layout file: fails at import, before any export
        if not self.name or not self.summary or not self.keep_order:
            raise ValueError(f"layout {self.name!r}: name, summary and keep_order are required")
        unknown = [c for c in self.containers if c not in CONTAINERS]
        if unknown or self.container not in self.containers:
            raise ValueError(
                f"layout {self.name!r}: containers {self.containers} with default "
                f"{self.container!r}: each one of {', '.join(CONTAINERS)}, the default among them"
            )
        if (self.length_rule is None) != (self.lengths is None):
            raise ValueError(f"layout {self.name!r}: give length_rule and lengths together")
        if self.length_rule is not None and not self.trainers:
            raise ValueError(f"layout {self.name!r}: a length rule is a trainer's: name it")

    def formats(self) -> dict[str, str]:
        """Its ``--format`` names, each with the container it writes by default.

        >>> from core.export.layouts import LAYOUTS
        >>> LAYOUTS["rows"].formats(), LAYOUTS["verl"].formats()
        ({'jsonl': 'jsonl', 'parquet': 'parquet', 'hf': 'hf'}, {'verl': 'parquet'})
        """
        if self.by_container:
            return {container: container for container in self.containers}
        return {self.name: self.container}

    def schema(self, input_schema: pa.Schema, *, kind: str) -> pa.Schema:
        """The schema :attr:`rows` gives for chunks of ``input_schema`` (fixed for a file)."""
        return self.rows(input_schema.empty_table(), kind=kind, data_source="").schema


def column(chunk: pa.Table, name: str) -> pa.Array:
    """One column of a chunk as a single array."""
    return chunk.column(name).combine_chunks()


def beside(
    chunk: pa.Table, *, layout: str, reserved: tuple[str, ...] = (), drop: tuple[str, ...] = ()
) -> dict[str, pa.Array]:
    """The columns a layout keeps beside its own (ids, cluster, labels, tags...): all but
    :data:`INTERNAL` and ``drop``. A column named as one of ``reserved`` (what the layout's
    trainer would read as its own field) is an error, not a silent change of what it does."""
    names = [name for name in chunk.column_names if name not in (*INTERNAL, *drop)]
    clash = [name for name in names if name in reserved]
    if clash:
        raise StudioError(
            f"--format {layout}: the column {clash[0]!r} would be read by the trainer as its own "
            "field; rename it (ingest --map) or drop it before exporting"
        )
    return {name: column(chunk, name) for name in names}
