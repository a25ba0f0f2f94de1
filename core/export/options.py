"""The export's options: :class:`ExportConfig` (order, format, container, batches, the length
check), checked once on construction, and what follows from them before any row is read (the
layout's own filters, the container an output path gets).

The CLI maps its flags onto these fields and the app's Export page builds the same object.
Defaults that other parts share are written once in :mod:`core.defaults`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# re-exported (written once, in core.defaults): the Export page writes only under it, through
# path_under(DEFAULT_EXPORT_DIR or its --export-dir, name)
from core.defaults import DEFAULT_EXPORT_DIR as DEFAULT_EXPORT_DIR
from core.defaults import DEFAULT_MIX
from core.errors import StudioError
from core.export.layouts import format_table, layout_of
from core.export.layouts.base import Layout
from core.export.writer import CONTAINERS, container_for
from core.filters import Filter

Order = Literal["curriculum", "easy-to-hard", "random", "none"]
ORDERS = ("curriculum", "easy-to-hard", "random", "none")
RESPONSE_CHOICES = ("chosen", "all")
Format = str  # a --format name: a layout's, or a container's for the plain rows


def _one_of(names: tuple[str, ...]) -> str:
    """``("a", "b", "c")`` as "a, b or c"."""
    *head, last = names
    return f"{', '.join(head)} or {last}" if head else last


@dataclass(frozen=True)
class ExportConfig:
    """Options of the export step. ``fmt`` is a ``--format`` name (core.export.layouts): the
    layout of each row, and the container written when neither ``container`` nor the output's
    suffix says otherwise."""

    order: Order = "none"
    fmt: Format = "jsonl"
    container: str | None = None  # jsonl | parquet | hf; None: the output's suffix or the format's
    seed: int = 0
    difficulty_column: str | None = None  # None: "difficulty", a difficulty probe, a pass rate
    batch_size: int | None = None  # cluster-first batches of this size (core.export.batching)
    mix: float = DEFAULT_MIX  # share of each batch from other clusters (SAERL's moderate mixing)
    # a responses dataset in trl-messages (SFT): the chosen responses only, or all of them
    responses: Literal["chosen", "all"] = "chosen"
    # drop the rows the trainer would drop or cut as too long, before ordering and batching:
    # their length in tokens of this tokenizer (a path or hub id), as the trainer measures it
    tokenizer: str | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise StudioError(
                f"{{field}} must be at least 1, got {self.batch_size}", field="batch_size"
            )
        if not 0.0 <= self.mix <= 1.0:
            raise StudioError(f"{{field}} must lie in [0, 1], got {self.mix}", field="mix")
        if self.order not in ORDERS:
            raise StudioError(f"unknown order {self.order!r}: use {', '.join(ORDERS)}")
        layout_of(self.fmt)  # an unknown format is one line naming the formats
        if self.container is not None and self.container not in CONTAINERS:
            raise StudioError(f"unknown container {self.container!r}: use {_one_of(CONTAINERS)}")
        if (self.tokenizer is None) != (self.max_length is None):
            raise StudioError("--tokenizer and --max-length go together: give both or neither")
        if self.max_length is not None and self.layout_spec.lengths is None:
            raise StudioError(
                f"--max-length measures rows as a trainer does; --format {self.fmt} has no "
                "trainer (use verl or a trl-* format)"
            )
        if self.max_length is not None and self.max_length < 1:
            raise StudioError(
                f"{{field}} must be at least 1, got {self.max_length}", field="max_length"
            )
        if self.responses not in RESPONSE_CHOICES:
            raise StudioError(
                f"unknown {{field}} {self.responses!r}: use {', '.join(RESPONSE_CHOICES)}",
                field="responses",
            )

    @property
    def layout(self) -> str:
        """The name of the layout ``fmt`` writes (rows for jsonl, parquet and hf)."""
        return self.layout_spec.name

    @property
    def layout_spec(self) -> Layout:
        """The layout ``fmt`` writes, from the registry (core.export.layouts.LAYOUTS)."""
        return layout_of(self.fmt)


def layout_filters(kind: str, cfg: ExportConfig) -> list[Filter]:
    """Filters the layout itself adds to the user's: SFT (trl-messages) on a responses dataset
    trains on the chosen responses unless ``cfg.responses`` is "all" (a rejected response is
    what the model should not say).

        >>> layout_filters("responses", ExportConfig(fmt="trl-messages"))
        [Filter(column='is_chosen', op='=', value=1.0, action='keep')]
    """
    if kind == "responses" and cfg.layout_spec.picks_responses and cfg.responses == "chosen":
        return [Filter("is_chosen", "=", 1.0)]
    return []


def resolve_container(out: Path, cfg: ExportConfig) -> str:
    """Where the rows go: ``cfg.container`` (--to) if set; else the format itself for jsonl,
    parquet and hf; else the output's suffix (.jsonl/.json, .parquet, none = an hf folder).
    A suffix that contradicts the format is an error, and so is a container the layout's
    readers do not take (verl reads no hf folder).

        >>> resolve_container(Path("x.parquet"), ExportConfig(fmt="trl-prompt"))
        'parquet'
    """
    spec = cfg.layout_spec
    if cfg.container is not None:
        container = cfg.container
    elif spec.by_container:
        container = format_table()[cfg.fmt][1]
        by_suffix = container_for(out, None) if Path(out).suffix else None
        if by_suffix not in (None, container):
            raise StudioError(
                f"--out {out}: --format {cfg.fmt} writes {container}, the suffix says "
                f"{by_suffix}; change one of them"
            )
    else:
        container = container_for(out, None)
    if container not in spec.containers:
        why = spec.containers_why or (
            f"--format {cfg.fmt} writes {_one_of(spec.containers)}, not {container}"
        )
        raise StudioError(f"--out {out}: {why}")
    return container
