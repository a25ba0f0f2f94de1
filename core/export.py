"""Export options: the formats, the orders (SAERL's curriculum, global easy-to-hard, random, as
ingested), filter expressions, and where and how an export may write. The rows themselves are
planned in core.steps.export_plan, streamed out of the store and written by core.formats.

Where an export writes (:func:`check_target`, called by the export step before anything is
written, so the CLI and the app's Export page both get it):

- never onto the store: the database file, its write-ahead log (``X.duckdb.wal``), or a folder
  the database lies in (compared as real paths: symlinks, ``./``, relative or absolute);
- a jsonl or parquet export is one file: an existing file of that name is replaced (the user
  named it), an existing folder never is;
- an hf export replaces a folder only when it is empty or holds a previous hf export of ours:
  exactly the files one writes (``data-00000-of-00001.arrow``, ``dataset_info.json``,
  ``state.json``, plus the ``cache-*.arrow`` files ``datasets`` adds when a trainer maps it) and a
  ``state.json`` whose fingerprint is the sha256 of that data file, which is what our writer
  puts there (``datasets`` itself draws a random one). No extra marker file: the folder stays
  exactly what ``save_to_disk`` writes;
- a place that cannot be written (under a file, no permission, a read-only file system) is one
  line naming the path and the reason.

Temp files (:func:`make_temp`) are named ``.{out name}.{writer's pid}.{8 random}.tmp`` (a folder
set aside while an hf folder is replaced: ``...old``) beside the output, with the normal modes
(0666 / 0777 less the umask, not mkstemp's 0600 / 0700). An export that is killed leaves them
behind; the next export into the same folder removes those whose writer is no longer running
(or that nothing touched for a day: a pid reused), never a live export's
(:func:`leftover_temp_files`, :func:`sweep_temp_files`). The manifest is renamed into place
before the data (core.formats.ExportWriter), and carries the data's sha256, so a kill between
the two leaves a manifest that visibly does not match its data.

Filters (``--where``, ``--drop``, rule sets) are the filter language of :mod:`core.filters`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Literal

import numpy as np

from core import answers

# re-exported (written once, in core.defaults): the Export page writes only under it, through
# path_under(DEFAULT_EXPORT_DIR or its --export-dir, name)
from core.defaults import DEFAULT_EXPORT_DIR as DEFAULT_EXPORT_DIR
from core.defaults import DEFAULT_MIX
from core.errors import StudioError
from core.filters import Filter, where_text

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
RESPONSE_CHOICES = ("chosen", "all")
# what verl's RLHFDataset reads (verl/utils/dataset/rl_dataset.py: .parquet, .json, .jsonl)
VERL_CONTAINERS = ("parquet", "jsonl")
Format = str

# How to make each trainer read the file in its written order (they shuffle by default), by
# layout; the exact settings per trainer are in the manifest's ``train`` (:func:`train_recipe`).
# Checked against the trainers' source (verl 0.9.1, TRL 1.16, transformers 5.23) and run by
# tests/e2e/test_trainers.py: verl's create_rl_sampler (verl/trainer/ppo/utils.py: a
# SequentialSampler when data.shuffle is false) under a StatefulDataLoader of
# data.train_batch_size with drop_last; TRL's GRPOTrainer/RLOOTrainer RepeatSampler
# (shuffle=args.shuffle_dataset, generation_batch_size // num_generations prompts a chunk, an
# incomplete last chunk dropped); DPO/Reward/SFT keep transformers' Trainer sampler, which reads
# args.train_sampling_strategy.
_TRL_SEQUENTIAL = (
    "train_sampling_strategy='sequential' (transformers >= 5.2's TrainingArguments: DPOTrainer, "
    "RewardTrainer and SFTTrainer use the Trainer's sampler) and per_device_train_batch_size x "
    "devices x gradient_accumulation_steps equal to the batch size above"
)
KEEP_ORDER = {
    "rows": "read the file sequentially (no shuffling sampler); a batch is a run of consecutive "
    "rows with the same batch number",
    "verl": "data.shuffle=False (verl then uses a SequentialSampler) and data.train_batch_size "
    "equal to the batch size above, so each step takes one export batch (verl orders the rows "
    "inside a step by length: the batch's members are kept, not their order within it); leave "
    "data.gen_batch_size, data.train_max_samples and algorithm.filter_groups (DAPO) unset and "
    "data.filter_overlong_prompts=False (a dropped row shifts every later batch: use "
    "--tokenizer/--max-length instead); the last incomplete batch is dropped. Point "
    "reward.custom_reward_function.path at OUT.reward.py (the studio's verifier)",
    "trl-prompt": "GRPOConfig/RLOOConfig(shuffle_dataset=False) and generation_batch_size = "
    "batch size x num_generations: a generation batch is then generation_batch_size // "
    "num_generations consecutive prompts, one export batch (an incomplete last one is "
    "dropped); keep remove_unused_columns=False (the default) so reward functions get the "
    "other columns",
    "trl-preference": _TRL_SEQUENTIAL + "; the batch size counts (chosen, rejected) pair rows, "
    "the trainer's rows",
    "trl-messages": _TRL_SEQUENTIAL + "; SFTConfig(shuffle_dataset=False, packing=False) "
    "(packing regroups sequences by length)",
}


@dataclass(frozen=True)
class ExportConfig:
    """Options of the export step."""

    order: Order = "none"
    fmt: Format = "jsonl"
    container: str | None = None  # jsonl | parquet | hf; None: the output's suffix or the format's
    seed: int = 0
    difficulty_column: str | None = None  # None: "difficulty", a difficulty probe, a pass rate
    batch_size: int | None = None  # cluster-first batches of this size (core.batching)
    mix: float = DEFAULT_MIX  # share of each batch from other clusters (SAERL's moderate mixing)
    # a responses dataset in trl-messages (SFT): the chosen responses only, or all of them
    responses: Literal["chosen", "all"] = "chosen"
    # drop the rows the trainer would drop or cut as too long, before ordering and batching:
    # their length in tokens of this tokenizer (a path or hub id), as the trainer measures it
    tokenizer: str | None = None
    max_length: int | None = None

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
        if (self.tokenizer is None) != (self.max_length is None):
            raise StudioError("--tokenizer and --max-length go together: give both or neither")
        if self.max_length is not None and FORMAT_LAYOUT.get(self.fmt) == "rows":
            raise StudioError(
                f"--max-length measures rows as a trainer does; --format {self.fmt} has no "
                "trainer (use verl or a trl-* format)"
            )
        if self.max_length is not None and self.max_length < 1:
            raise StudioError(f"--max-length must be at least 1, got {self.max_length}")
        if self.responses not in RESPONSE_CHOICES:
            raise StudioError(
                f"unknown --responses {self.responses!r}: use {', '.join(RESPONSE_CHOICES)}"
            )

    @property
    def layout(self) -> str:
        return FORMAT_LAYOUT[self.fmt]


def layout_filters(kind: str, cfg: ExportConfig) -> list[Filter]:
    """Filters the layout itself adds to the user's: SFT (trl-messages) on a responses dataset
    trains on the chosen responses unless ``cfg.responses`` is "all" (a rejected response is
    what the model should not say).

        >>> layout_filters("responses", ExportConfig(fmt="trl-messages"))
        [Filter(column='is_chosen', op='=', value=1.0, action='keep')]
    """
    if kind == "responses" and cfg.layout == "trl-messages" and cfg.responses == "chosen":
        return [Filter("is_chosen", "=", 1.0)]
    return []


def resolve_container(out: Path, cfg: ExportConfig) -> str:
    """Where the rows go: ``cfg.container`` (--to) if set; else the format itself for jsonl,
    parquet and hf; else the output's suffix (.jsonl/.json, .parquet, none = an hf folder).
    A suffix that contradicts the format is an error, and verl reads no hf folder.

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
    if cfg.layout == "verl" and container not in VERL_CONTAINERS:
        raise StudioError(
            f"--out {out}: verl's RLHFDataset reads .parquet, .json and .jsonl files, not "
            "save_to_disk folders; use a .parquet or .jsonl path"
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


# --- files: where an export may write, temp names, modes ----------------------------------------
STALE_TEMP_S = 24 * 3600  # a temp whose pid looks alive but that nothing touched for a day
_TEMP_NAME = re.compile(r"^\.(?P<out>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.(?:tmp|old)$")


def umask() -> int:
    """The process's umask, read without changing it where Linux reports it (/proc/self/status);
    elsewhere set and restored at once (racy only against another thread creating a file in
    that instant, acceptable at write time)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """What ``open()`` would give a new file: 0666 less the umask."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """What ``mkdir`` would give a new folder: 0777 less the umask."""
    return 0o777 & ~umask()


def temp_prefix(out: Path) -> str:
    """``.{name}.{pid}.``: a temp of ours names its output and its writer, so a later export can
    tell a killed writer's leftovers from a live one's."""
    return f".{out.name}.{os.getpid()}."


def make_temp(out: Path, *, folder: bool = False) -> Path:
    """An empty temp file (or folder) beside ``out``, named by :func:`temp_prefix`, with the
    mode a plain ``open``/``mkdir`` would give it. Creates ``out``'s parent folders."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent))
        os.chmod(tmp, folder_mode())
        return tmp
    fd, name = tempfile.mkstemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    return Path(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OverflowError, ValueError, OSError):
        return False
    with contextlib.suppress(OSError, IndexError):  # a zombie has finished writing for good
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _last_touched(path: Path) -> float:
    """The newest mtime of ``path`` and, for a folder, of what it holds (a live hf export
    writes into a file inside its temp folder)."""
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            times += [p.lstat().st_mtime for p in path.iterdir()]
    return max(times)


def leftover_temp_files(folder: Path, *, stale_after_s: float = STALE_TEMP_S) -> list[Path]:
    """Temp files and folders that killed exports (or rule-set saves) left in ``folder``: names
    of ours (``.{name}.{pid}.{8 chars}.tmp`` or ``.old``) whose writer is no longer running, or
    that nothing touched for ``stale_after_s`` seconds (the pid since reused). A live writer's
    temp is never listed, nor this process's own. Sorted; empty when ``folder`` is missing.

        >>> leftover_temp_files(Path("/nonexistent"))
        []
    """
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    now, mine = time.time(), os.getpid()
    found = []
    for path in entries:
        m = _TEMP_NAME.match(path.name)
        if m is None or int(m["pid"]) == mine:
            continue
        try:
            stale = now - _last_touched(path) > stale_after_s
        except OSError:
            continue  # gone meanwhile
        if stale or not _alive(int(m["pid"])):
            found.append(path)
    return sorted(found)


def remove_path(path: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a folder tree; missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep_temp_files(folder: Path) -> list[Path]:
    """Remove :func:`leftover_temp_files` of ``folder``; returns what was removed."""
    found = leftover_temp_files(folder)
    for path in found:
        remove_path(path)
    return found


def write_atomic_bytes(out: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``out`` (a plain file's
    mode: 0666 less the umask)."""
    tmp = make_temp(out)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def store_files(store_path: Path) -> list[tuple[Path, str]]:
    """The store's files an export must never replace, as real paths with what each is: the
    database and its write-ahead log (DuckDB puts it at the path it was given + ``.wal``, so
    beside a symlink and beside its target both count)."""
    given, real = Path(store_path), _real(store_path)
    wal = f"the database's write-ahead log {given}.wal"
    return [
        (real, f"the database {given}"),
        (_real(f"{given}.wal"), wal),
        (_real(f"{real}.wal"), wal),
    ]


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_target(out: Path, *, cfg: ExportConfig, store_path: Path | None = None) -> None:
    """Refuse, before anything is written, an output that would destroy data or cannot be
    written: the store's files (or a folder holding them), an existing folder for a one-file
    export, a folder an hf export did not write, a place under a file or without write
    permission. Each refusal is one line naming ``--out``; see the module doc. The store comes
    first, so that a complaint about the suffix (:func:`resolve_container`) never hides it."""
    out = Path(out)
    real = _real(out)
    named = out.name not in ("", ".", "..")
    sides = [(_real(side_path(out, p)), f"its {p} file") for p in SIDE_SUFFIX] if named else []
    targets = [(real, "it"), *sides]
    for kept, what in store_files(store_path) if store_path is not None else []:
        for target, whose in targets:
            if _same(target, kept):
                raise StudioError(
                    f"--out {out}: {whose} would replace {what}; write the export elsewhere"
                )
        if kept.is_relative_to(real):
            raise StudioError(
                f"--out {out}: {what} lies inside it and an export replaces what is there; "
                "write the export elsewhere"
            )
    if not named:
        raise StudioError(f"--out {out}: name the file or folder to write, not {str(out)!r}")
    container = resolve_container(out, cfg)
    place = _nearest_existing(real.parent)
    if not place.is_dir():
        raise StudioError(f"--out {out}: cannot write there: {place} is a file, not a folder")
    if not os.access(place, os.W_OK | os.X_OK):
        raise StudioError(
            f"--out {out}: cannot write in {place}: no permission, or a read-only file system"
        )
    if real.is_dir():
        if container != "hf":
            raise StudioError(
                f"--out {out} is a folder; a {container} export is one file: name a file "
                "(inside it or elsewhere)"
            )
        from core.formats import check_export_folder

        check_export_folder(out)


def write_error(out: Path, exc: OSError) -> StudioError:
    """An OSError while writing an export as one line naming ``--out`` and the reason."""
    where = f" ({exc.filename})" if exc.filename else ""
    return StudioError(f"--out {out}: cannot write: {exc.strerror or exc}{where}")


def path_under(folder: str | Path, name: str) -> Path:
    """``folder/name`` resolved, for the app's Export page, which writes only under its export
    folder. ``name`` (spaces around it stripped) may hold subfolders; an empty or absolute name,
    a ``..`` part, or one that resolves outside ``folder`` (through a symlink) is a one-line
    StudioError.

        >>> path_under("data/exports", "train.jsonl") == Path("data/exports/train.jsonl").resolve()
        True
    """
    text = name.strip() if isinstance(name, str) else ""
    if not text:
        raise StudioError("export name is empty: give a file name such as train.jsonl")
    if "\x00" in text:
        raise StudioError(f"export name {name!r}: holds a NUL character")
    pure = PurePath(text)
    if pure.is_absolute():
        raise StudioError(
            f"export name {name!r}: give a name inside {folder}, not an absolute path"
        )
    if ".." in pure.parts:
        raise StudioError(f"export name {name!r}: '..' is not allowed; give a name inside {folder}")
    root = Path(folder).resolve()
    target = (root / pure).resolve()
    if target == root:
        raise StudioError(
            f"export name {name!r} names the folder {folder} itself; give a file name"
        )
    if not target.is_relative_to(root):
        raise StudioError(f"export name {name!r} resolves to {target}, outside {folder}")
    return target


# what an export writes beside its data OUT, as OUT + suffix
SIDE_SUFFIX = {"manifest": ".manifest.json", "reward": ".reward.py", "ids": ".ids.txt"}
REWARD_FUNCTION = "compute_score"  # core.answers' verl entry point
TRL_REWARD_FUNCTION = "verifier_reward"  # core.answers' TRL (GRPO/RLOO reward_funcs) entry point
# the layouts whose trainers score rollouts with a reward function: the export writes one
REWARD_LAYOUTS = ("verl", "trl-prompt")
# the folder `python -m core` runs in (the one holding core/): the manifest's command runs there
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def side_path(out: Path, part: str) -> Path:
    return out.with_name(out.name + SIDE_SUFFIX[part])


def manifest_path(out: Path) -> Path:
    return side_path(out, "manifest")


def side_files(out: Path, *, layout: str, with_ids: bool) -> dict[str, Path]:
    """The files an export writes beside its data, besides the manifest: verl's reward function
    (``OUT.reward.py``), and the id list its command reads back (``OUT.ids.txt``)."""
    sides = {"reward": side_path(out, "reward")} if layout in REWARD_LAYOUTS else {}
    if with_ids:
        sides["ids"] = side_path(out, "ids")
    return sides


def reward_function_bytes() -> bytes:
    """The reward function a verl export carries: :mod:`core.answers` verbatim (self-contained,
    so verl imports it without the studio), whose ``compute_score`` is the studio's verifier."""
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


# The trainer versions the recipes below were checked against (tests/e2e/test_trainers.py).
VERL_VERSION = "0.9.1"
TRL_VERSION = "1.16.0"
GRPO_GENERATIONS = 4  # completions per prompt in the GRPO recipe (any number works: it scales)
# TRL's trainer classes and config classes per layout
TRL_TRAINERS = {
    "trl-prompt": (("GRPOTrainer", "GRPOConfig"), ("RLOOTrainer", "RLOOConfig")),
    "trl-preference": (("DPOTrainer", "DPOConfig"), ("RewardTrainer", "RewardConfig")),
    "trl-messages": (("SFTTrainer", "SFTConfig"),),
}
# verl modes that re-batch what the sampler gives, so a step no longer sees one export batch
VERL_REBATCHING = (
    "these re-batch, so a step no longer takes one export batch (the order of prompts still "
    "holds): algorithm.filter_groups.enable=True (DAPO's dynamic sampling drops groups whose "
    "rewards are all equal and refills from later prompts), "
    "trainer.v1.sampler.sync_refill_failed_groups=True, "
    "trainer.v1.trainer_mode=colocate_async|separate_async (async rollouts mix steps), "
    "data.gen_batch_size different from data.train_batch_size, data.train_max_samples > 0 and "
    "data.filter_overlong_prompts=True"
)


def _load_call(container: str, out: Path) -> str:
    if container == "hf":
        return f"datasets.load_from_disk({str(out)!r})"
    kind = "json" if container == "jsonl" else "parquet"
    return f"datasets.load_dataset({kind!r}, data_files={str(out)!r}, split='train')"


def train_recipe(
    cfg: ExportConfig,
    *,
    kind: str,
    out: Path,
    container: str,
    n_rows: int,
    reward_file: Path | None = None,
) -> dict[str, Any] | None:
    """How to train on this export so the trainer reads it in its written order and batches:
    for verl, the overrides and a command that starts a GRPO run with the reward function
    beside the data; for TRL, each trainer's config fields and a snippet. None for the plain
    row formats (no trainer)."""
    layout = cfg.layout
    batch = cfg.batch_size
    if layout == "verl":
        overrides = [
            f"data.train_files={out}",
            f"data.val_files={out}",
            "data.shuffle=False",
            f"data.train_batch_size={batch or 'B'}",
            "data.filter_overlong_prompts=False",
            f"reward.custom_reward_function.path={reward_file}",
            f"reward.custom_reward_function.name={REWARD_FUNCTION}",
        ]
        if cfg.max_length is not None:
            overrides.insert(4, f"data.max_prompt_length={cfg.max_length}")
        command = " ".join(
            [
                "python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo",
                *(shlex.quote(o) for o in overrides),
                "data.max_response_length=1024",
                "actor_rollout_ref.model.path=MODEL actor_rollout_ref.rollout.name=vllm",
                "actor_rollout_ref.rollout.n=4",
                f"actor_rollout_ref.actor.ppo_mini_batch_size={batch or 'B'}",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
                "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
                "trainer.n_gpus_per_node=1 trainer.nnodes=1 'trainer.logger=[\"console\"]'",
                "trainer.total_epochs=1",
            ]
        )
        return {
            "trainer": f"verl {VERL_VERSION} (python3 -m verl.trainer.main_ppo)",
            "reward_function": {
                "path": str(reward_file),
                "name": REWARD_FUNCTION,
                "scores": "the studio's verifier: reasoning-gym's score_answer when "
                "extra_info.task is one of its tasks (with extra_info.metadata), else the "
                "normalised match against reward_model.ground_truth",
            },
            "overrides": overrides,
            "command": command,
            "placeholders": "MODEL: the model's path or hub id; the rollout, micro-batch and "
            "GPU settings are an example for one GPU",
            "batches": "each training step takes one export batch (its members; verl orders "
            "them by length within the step)"
            if batch
            else "no --batch-size: set data.train_batch_size to your batch",
            "rebatching": VERL_REBATCHING,
            "last_batch": f"{n_rows % batch} rows of an incomplete last batch are dropped "
            "(verl's dataloader drop_last)"
            if batch and n_rows % batch
            else None,
        }
    if layout not in TRL_TRAINERS:
        return None
    b = batch or "B"
    if layout == "trl-prompt":
        # one device: per_device_train_batch_size x steps_per_generation == generation_batch_size
        config: dict[str, Any] = {
            "shuffle_dataset": False,
            "num_generations": GRPO_GENERATIONS,
            "generation_batch_size": batch * GRPO_GENERATIONS if batch else "B * G",
            "per_device_train_batch_size": GRPO_GENERATIONS,
            "remove_unused_columns": False,
        }
        note = (
            f"a generation batch is generation_batch_size // num_generations = {b} consecutive "
            "prompts: one export batch (one device shown; with more, keep generation_batch_size)"
        )
    else:
        config = {
            "train_sampling_strategy": "sequential",
            "per_device_train_batch_size": b,
            "gradient_accumulation_steps": 1,
        }
        if cfg.max_length is not None:
            config["max_length"] = cfg.max_length
        if layout == "trl-messages":
            config |= {"packing": False, "shuffle_dataset": False}
        unit = "(chosen, rejected) pair rows" if layout == "trl-preference" else "rows"
        note = (
            f"a step reads per_device_train_batch_size x devices x gradient_accumulation_steps "
            f"= {b} consecutive {unit}: one export batch (one device shown)"
        )
    trainers = TRL_TRAINERS[layout]
    trainer, config_class = trainers[0]
    fields = ", ".join(f"{k}={v!r}" for k, v in config.items())
    lines = ["import datasets", f"from trl import {config_class}, {trainer}"]
    args = "model='MODEL', args=args, train_dataset=train"
    recipe: dict[str, Any] = {}
    if reward_file is not None:  # GRPO/RLOO score rollouts with the studio's verifier
        lines = [
            "import importlib.util",
            *lines,
            f"spec = importlib.util.spec_from_file_location('reward', {str(reward_file)!r})",
            "reward = importlib.util.module_from_spec(spec)",
            "spec.loader.exec_module(reward)",
        ]
        args = f"model='MODEL', reward_funcs=reward.{TRL_REWARD_FUNCTION}, args=args, train_dataset=train"
        recipe["reward_function"] = {
            "path": str(reward_file),
            "name": TRL_REWARD_FUNCTION,
            "scores": "the studio's verifier on each completion, from the answer, task and "
            "metadata columns beside the prompt",
        }
    lines += [
        f"train = {_load_call(container, out)}",
        f"args = {config_class}(output_dir='run', {fields})",
        f"{trainer}({args}).train()",
    ]
    snippet = "\n".join(lines)
    return {
        "trainer": f"TRL {TRL_VERSION}: " + " or ".join(t for t, _ in trainers),
        **recipe,
        "load": _load_call(container, out),
        "config": config,
        "batches": note if batch else "no --batch-size: the order holds, batches are yours",
        "snippet": snippet,
        "command": f"python - <<'EOF'\n{snippet}\nEOF",
        "placeholders": "MODEL: the model's path or hub id",
    }


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
