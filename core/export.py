"""Export options: the formats, the orders (SAERL's curriculum, global easy-to-hard, random, as
ingested), filter expressions, and atomic writes of the manifest. The rows themselves are planned
in core.steps.export_plan, streamed out of the store and written by core.formats.

Filters come from the CLI as small expressions, parsed here into typed :class:`Filter` objects;
the store turns them into parameterised SQL (no user text is ever pasted into SQL).

Example:
    >>> parse_where("difficulty<=3")
    Filter(column='difficulty', op='<=', value=3.0, action='keep')
    >>> parse_where("cluster in 1,4")
    Filter(column='cluster', op='in', value=[1.0, 4.0], action='keep')
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.errors import StudioError
from core.store import Filter

Order = Literal["curriculum", "easy-to-hard", "random", "none"]
ORDERS = ("curriculum", "easy-to-hard", "random", "none")
# --format: the layout of each row and the container written by default. jsonl, parquet and hf
# are the plain rows (every column) in that container; the rest are trainers' layouts
# (core.formats). --to (or the output path's suffix) picks another container.
FORMAT_LAYOUT = {
    "jsonl": "rows",
    "parquet": "rows",
    "hf": "rows",
    "verl": "verl",
    "trl-prompt": "trl-prompt",
    "trl-preference": "trl-preference",
    "trl-messages": "trl-messages",
}
FORMAT_CONTAINER = {
    "jsonl": "jsonl",
    "parquet": "parquet",
    "hf": "hf",
    "verl": "parquet",
    "trl-prompt": "jsonl",
    "trl-preference": "jsonl",
    "trl-messages": "jsonl",
}
FORMATS = tuple(FORMAT_LAYOUT)
Format = str

# How to make each trainer read the file in its written order (they shuffle by default), by
# layout. Checked against the trainers' source: verl's create_rl_sampler (verl/trainer/main_ppo.py:
# a SequentialSampler when data.shuffle is false and no data.sampler class is set); TRL's
# GRPOTrainer/RLOOTrainer._get_train_sampler (a RepeatSampler with shuffle=args.shuffle_dataset,
# batch_size = generation_batch_size // num_generations unique prompts); DPO/Reward/SFT trainers
# keep transformers' Trainer._get_train_sampler, which reads args.train_sampling_strategy.
_TRL_SEQUENTIAL = (
    "train_sampling_strategy='sequential' in the trainer's config (transformers >= 5.2's "
    "TrainingArguments; DPOTrainer, RewardTrainer and SFTTrainer use the Trainer's sampler; on "
    "older transformers, subclass and return a SequentialSampler from _get_train_sampler); "
    "per_device_train_batch_size x devices x gradient_accumulation_steps equal to the batch size "
    "above"
)
KEEP_ORDER = {
    "rows": "read the file sequentially (no shuffling sampler); a batch is a run of consecutive "
    "rows with the same batch number",
    "verl": "data.shuffle=False with data.sampler.class_path unset (verl then uses a "
    "SequentialSampler), data.train_batch_size equal to the batch size above, "
    "data.gen_batch_size unset, data.train_max_samples=-1, and data.filter_overlong_prompts=False "
    "or prompts within max_prompt_length (a dropped row shifts every later batch); the last "
    "incomplete batch is dropped. verl reads .parquet (or .json) "
    "files and picks the reward function by data_source (the dataset name here): point "
    "custom_reward_function.path at yours",
    "trl-prompt": "GRPOConfig/RLOOConfig(shuffle_dataset=False); a generation batch holds "
    "generation_batch_size // num_generations consecutive prompts, so make that equal to the "
    "batch size above (generation_batch_size = per_device_train_batch_size x devices x "
    "steps_per_generation); an incomplete last generation batch is dropped; keep "
    "remove_unused_columns=False (the default) so reward functions get the other columns",
    "trl-preference": _TRL_SEQUENTIAL + "; each prompt gives one row per rejected response, so "
    "a prompt batch becomes that many pair rows",
    "trl-messages": _TRL_SEQUENTIAL + "; SFTConfig(shuffle_dataset=False, packing=False) "
    "(packing regroups sequences by length)",
}

_WHERE = re.compile(
    r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|!=|==|=|<|>|\s+not\s+in\s+|\s+in\s+)\s*(.+?)\s*$"
)


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text.strip().strip("'\"")


def parse_where(expr: str) -> Filter:
    """``col<op>value`` with op one of < <= > >= = != , or ``col in a,b`` / ``col not in a,b``."""
    m = _WHERE.match(expr)
    if not m:
        raise StudioError(
            f"--where {expr!r}: expected COLUMN<op>VALUE (op: < <= > >= = !=) "
            "or 'COLUMN in A,B,...'"
        )
    col, op, raw = m.group(1), " ".join(m.group(2).split()), m.group(3)
    if op in ("in", "not in"):
        return Filter(col, op, [_value(v) for v in raw.split(",") if v.strip()])  # type: ignore[arg-type]
    return Filter(col, "=" if op == "==" else op, _value(raw))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ExportConfig:
    """Options of the export step."""

    order: Order = "none"
    fmt: Format = "jsonl"
    container: str | None = None  # jsonl | parquet | hf; None: the output's suffix or the format's
    seed: int = 0
    difficulty_column: str | None = None  # None: "difficulty", a difficulty probe, a pass rate
    batch_size: int | None = None  # cluster-first batches of this size (core.batching)
    mix: float = 0.2  # share of each batch from other clusters (SAERL's moderate mixing)

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise StudioError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.mix <= 1.0:
            raise StudioError(f"--mix must lie in [0, 1], got {self.mix}")
        if self.order not in ORDERS:
            raise StudioError(f"unknown order {self.order!r}: use {', '.join(ORDERS)}")
        if self.fmt not in FORMATS:
            raise StudioError(f"unknown format {self.fmt!r}: use {', '.join(FORMATS)}")
        if self.container is not None and self.container not in ("jsonl", "parquet", "hf"):
            raise StudioError(f"unknown container {self.container!r}: use jsonl, parquet or hf")

    @property
    def layout(self) -> str:
        return FORMAT_LAYOUT[self.fmt]


def resolve_container(out: Path, cfg: ExportConfig) -> str:
    """Where the rows go: ``cfg.container`` (--to) if set; else the format itself for jsonl,
    parquet and hf; else the output's suffix (.jsonl/.json, .parquet, none = an hf folder).
    A suffix that contradicts the format is an error, and verl reads Parquet only.

        >>> resolve_container(Path("x.parquet"), ExportConfig(fmt="trl-prompt"))
        'parquet'
    """
    from core.formats import container_for

    if cfg.container is not None:
        container = cfg.container
    elif FORMAT_LAYOUT[cfg.fmt] == "rows":
        container = cfg.fmt
        by_suffix = container_for(out, None) if Path(out).suffix else None
        if by_suffix not in (None, container):
            raise StudioError(
                f"--out {out}: --format {cfg.fmt} writes {container}, the suffix says "
                f"{by_suffix}; change one of them"
            )
    else:
        container = container_for(out, None)
    if cfg.layout == "verl" and container != "parquet":
        raise StudioError(
            f"--out {out}: verl's RLHFDataset reads .parquet files (not JSON Lines named .jsonl "
            "or save_to_disk folders); use a .parquet path"
        )
    return container


def order_index(
    n: int,
    *,
    order: Order,
    seed: int = 0,
    cluster: np.ndarray | None = None,
    difficulty: np.ndarray | None = None,
    higher_is: str = "harder",
) -> np.ndarray:
    """The written order as indices into rows given in ingest order.

    - none: as ingested. random: a seeded permutation.
    - easy-to-hard: the whole set sorted by ``difficulty`` (easiest first).
    - curriculum (SAERL): easy-to-hard within each cluster, clusters interleaved by progress (row
      i of a cluster of size s sorts at i/s), so a sequential reader sees the easy part of every
      cluster before the hard part of any.

    ``higher_is`` says what a larger difficulty value means ("harder", or "easier" for a pass
    rate). Rows with no difficulty go last; ties keep ingest order.

        >>> order_index(4, order="easy-to-hard", difficulty=np.array([0.9, 0.1, 0.5, 0.2]),
        ...             higher_is="easier").tolist()
        [0, 2, 3, 1]
    """
    rows = np.arange(n)
    if order == "none" or n == 0:
        return rows
    if order == "random":
        return np.random.default_rng(seed).permutation(n)
    if difficulty is None:
        raise StudioError(f"--order {order} needs a difficulty column")
    d = np.asarray(difficulty, dtype=np.float64)
    hardness = -d if higher_is == "easier" else d
    hardness = np.where(np.isnan(hardness), np.inf, hardness)
    if order == "easy-to-hard":
        return np.lexsort((rows, hardness))
    c = np.zeros(n) if cluster is None else np.asarray(cluster, dtype=np.float64)
    c = np.where(np.isnan(c), -1, c)
    by_cluster = np.lexsort((rows, hardness, c))
    # position of each row inside its cluster, as a share of the cluster's size
    sorted_cluster = c[by_cluster]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_cluster)) + 1]
    sizes = np.diff(np.r_[starts, n])
    pos = rows - np.repeat(starts, sizes)
    progress = pos / np.repeat(sizes, sizes)
    return by_cluster[np.lexsort((sorted_cluster, progress))]


def _atomic_path(out: Path) -> tuple[int, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    return fd, Path(tmp)


def write_atomic_bytes(out: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``out``."""
    fd, tmp = _atomic_path(out)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()


def describe_filters(filters: Sequence[Filter]) -> list[dict[str, Any]]:
    return [
        {
            "action": f.action,
            "column": f.column,
            "op": f.op,
            "value": f.value,
            "text": f.describe(),
        }
        for f in filters
    ]
