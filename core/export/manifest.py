"""What an export's manifest is made of, besides the store's counts (core.steps.export): the CLI
call that writes the same bytes again, the filters as the user wrote them, the reward function
shipped beside the data, and how to train on the file (the layout's train recipe).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core import answers
from core.export.layouts.base import RecipeArgs
from core.export.options import ExportConfig
from core.filters import Filter, where_text

# the folder `python -m core` runs in (the one holding core/): the manifest's command runs there
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def reward_function_bytes() -> bytes:
    """The reward function a verl or trl-prompt export carries (OUT.reward.py): :mod:`core.answers`
    verbatim (self-contained, so the trainer imports it without the studio), whose
    ``compute_score`` (verl) and ``verifier_reward`` (TRL) are the studio's verifier."""
    return Path(answers.__file__).read_bytes()


def export_command(
    *,
    store_path: Path,
    dataset: str,
    out: Path,
    cfg: ExportConfig,
    filters: Sequence[Filter] = (),
    rules: str | None = None,
    ids_file: Path | None = None,
) -> list[str]:
    """The CLI call that writes this export again, byte for byte: every option that changes a
    byte, the database, rule set and ids file by absolute path (run from :data:`PROJECT_ROOT`).

        >>> export_command(store_path=Path("/s.duckdb"), dataset="d", out=Path("/o.jsonl"),
        ...                cfg=ExportConfig(order="random", seed=3))[4:]
        ['--db', '/s.duckdb', '--dataset', 'd', '--order', 'random', '--seed', '3', '--format', 'jsonl', '--out', '/o.jsonl']
    """
    argv = ["python", "-m", "core", "export", "--db", str(store_path), "--dataset", dataset]
    if rules:
        argv += ["--rules", str(Path(rules).absolute())]
    for f in filters:
        argv += ["--drop" if f.action == "drop" else "--where", where_text(f)]
    if ids_file is not None:
        argv += ["--ids", str(ids_file)]
    argv += ["--order", cfg.order, "--seed", str(cfg.seed), "--format", cfg.fmt]
    if cfg.container:
        argv += ["--to", cfg.container]
    if cfg.difficulty_column:
        argv += ["--difficulty-column", cfg.difficulty_column]
    if cfg.batch_size is not None:
        argv += ["--batch-size", str(cfg.batch_size), "--mix", repr(cfg.mix)]
    if cfg.responses != "chosen":
        argv += ["--responses", cfg.responses]
    if cfg.tokenizer is not None:
        argv += ["--tokenizer", cfg.tokenizer, "--max-length", str(cfg.max_length)]
    return [*argv, "--out", str(out)]


def train_recipe(
    cfg: ExportConfig,
    *,
    out: Path,
    container: str,
    n_rows: int,
    reward_file: Path | None = None,
) -> dict[str, Any] | None:
    """How to train on this export so the trainer reads it in its written order and batches:
    the layout's recipe (verl: the overrides and a command that starts a GRPO run with the
    reward function beside the data; TRL: each trainer's config fields and a snippet). None for
    a layout without a trainer (the plain rows)."""
    recipe = cfg.layout_spec.recipe
    if recipe is None:
        return None
    args = RecipeArgs(
        out=out,
        container=container,
        n_rows=n_rows,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        reward_file=reward_file,
    )
    return recipe(args)


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest as written: indented JSON, keys sorted (the same export, the same bytes)."""
    return (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()


def describe_filters(filters: Sequence[Filter]) -> list[dict[str, Any]]:
    """Each filter as the manifest records it: its parts and its text in words."""
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
