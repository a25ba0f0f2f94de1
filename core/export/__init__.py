"""The export's pure parts: options, the layouts, order and batches, the writer, the manifest.

The export step (core.steps.export) plans the kept rows from the store, orders and batches them,
streams them through a layout into the writer and writes the manifest beside the data. What it
leans on lives here, one concern a module, from the bottom up:

- files.py: where an export may write, temp files and modes, atomic writes, the side files
  (manifest, reward function, ids), what an hf folder of ours is;
- writer.py: ExportWriter (JSON Lines, Parquet, an hf folder), byte-stable for the same rows;
- lengths.py: row lengths in tokens as the trainers measure them (``--max-length``);
- layouts/: one file per layout and the registry ``LAYOUTS`` (adding a layout is one file plus
  one line there); the ``--format`` names (FORMATS) and CONTAINERS derive from it;
- options.py: ExportConfig, checked once; the layout's own filters; the container of a path;
- ordering.py: the written order (curriculum, easy-to-hard, random, none);
- batching.py (imports none of them): cluster-first batches with SAERL's moderate mixing;
- manifest.py: the command that writes the same bytes again, and the train recipe.

Each module imports only those above it in this list (files.py none of them). This face
re-exports what code outside the package uses, so callers write ``from core.export import X``.
"""

from core.export.batching import BatchPlan, cluster_distances, compose_batches, cross_cluster_share
from core.export.files import (
    HF_DATA,
    SIDE_SUFFIX,
    check_export_folder,
    check_target,
    file_sha256,
    leftover_temp_files,
    make_temp,
    manifest_path,
    not_an_export,
    path_under,
    remove_path,
    side_files,
    side_path,
    sweep_temp_files,
    write_atomic_bytes,
    write_error,
)
from core.export.layouts import (
    CONTAINERS,
    FORMATS,
    LAYOUTS,
    format_table,
    get_layout,
    layout_of,
    layout_schema,
    to_layout,
    trainer_lengths,
)
from core.export.layouts.base import INTERNAL, RESPONSES, Layout, RecipeArgs
from core.export.layouts.trl_shared import TRL_VERSION
from core.export.layouts.verl import VERL_VERSION
from core.export.lengths import load_tokenizer
from core.export.manifest import (
    PROJECT_ROOT,
    describe_filters,
    export_command,
    manifest_bytes,
    reward_function_bytes,
    train_recipe,
)
from core.export.options import (
    DEFAULT_EXPORT_DIR,
    ORDERS,
    RESPONSE_CHOICES,
    ExportConfig,
    Order,
    layout_filters,
    resolve_container,
)
from core.export.ordering import order_index
from core.export.writer import ExportWriter, Written, container_for, jsonl_bytes

__all__ = [
    "CONTAINERS",
    "DEFAULT_EXPORT_DIR",
    "FORMATS",
    "HF_DATA",
    "INTERNAL",
    "LAYOUTS",
    "ORDERS",
    "PROJECT_ROOT",
    "RESPONSES",
    "RESPONSE_CHOICES",
    "SIDE_SUFFIX",
    "TRL_VERSION",
    "VERL_VERSION",
    "BatchPlan",
    "ExportConfig",
    "ExportWriter",
    "Layout",
    "Order",
    "RecipeArgs",
    "Written",
    "check_export_folder",
    "check_target",
    "cluster_distances",
    "compose_batches",
    "container_for",
    "cross_cluster_share",
    "describe_filters",
    "export_command",
    "file_sha256",
    "format_table",
    "get_layout",
    "jsonl_bytes",
    "layout_filters",
    "layout_of",
    "layout_schema",
    "leftover_temp_files",
    "load_tokenizer",
    "make_temp",
    "manifest_bytes",
    "manifest_path",
    "not_an_export",
    "order_index",
    "path_under",
    "remove_path",
    "resolve_container",
    "reward_function_bytes",
    "side_files",
    "side_path",
    "sweep_temp_files",
    "to_layout",
    "train_recipe",
    "trainer_lengths",
    "write_atomic_bytes",
    "write_error",
]
