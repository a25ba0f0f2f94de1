"""The file safety layer of an export: where it may write, temp files and their modes, atomic
writes, the side files beside the data, and what an hf folder of ours looks like. It imports
nothing else of the export package, so every other part (the writer, the manifest, the step) can
lean on it.

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
before the data (core.export.writer.ExportWriter), and carries the data's sha256, so a kill
between the two leaves a manifest that visibly does not match its data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePath

from core.errors import StudioError

STALE_TEMP_S = 24 * 3600  # a temp whose pid looks alive but that nothing touched for a day
_TEMP_NAME = re.compile(r"^\.(?P<out>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.(?:tmp|old)$")

# an hf folder as save_to_disk writes one shard, and what datasets adds when a trainer maps it
HF_DATA = "data-00000-of-00001.arrow"
HF_FILES = (HF_DATA, "dataset_info.json", "state.json")
HF_CACHE_GLOB = "cache-*.arrow"
# what an export writes beside its data OUT, as OUT + suffix
SIDE_SUFFIX = {"manifest": ".manifest.json", "reward": ".reward.py", "ids": ".ids.txt"}


# --- temp files and modes -----------------------------------------------------------------------
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


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the OS allows opening a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (an export's data, for its manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- where an export may write --------------------------------------------------------------
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


def check_target(
    out: Path, *, container_of: Callable[[Path], str], store_path: Path | None = None
) -> None:
    """Refuse, before anything is written, an output that would destroy data or cannot be
    written: the store's files (or a folder holding them), an existing folder for a one-file
    export, a folder an hf export did not write, a place under a file or without write
    permission. Each refusal is one line naming ``--out``; see the module doc.

    ``container_of(out)`` tells the container (core.export.options.resolve_container); it is
    asked only after the store's files are checked, so that a complaint about the suffix never
    hides that the export would have replaced the database."""
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
    container = container_of(out)
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


# --- an hf folder of ours ---------------------------------------------------------------------
def check_export_folder(out: Path) -> None:
    """A one-line StudioError unless the existing folder ``out`` may be replaced by an hf
    export (:func:`not_an_export`)."""
    why = not_an_export(out)
    if why is not None:
        raise StudioError(
            f"--out {out}: an hf export replaces the whole folder, and {why}; pick another "
            "path or empty that folder"
        )


def not_an_export(folder: Path) -> str | None:
    """Why an existing ``folder`` is not an hf export this tool wrote (None when it is one, or
    empty): it must hold only ``HF_FILES`` (plus ``cache-*.arrow`` files, which datasets adds
    when a trainer maps the set) and a ``state.json`` whose fingerprint is the data file's
    sha256, as :class:`core.export.writer.ExportWriter` writes it (datasets' own save_to_disk draws a random one)."""
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return None
    foreign = [
        n
        for n in names
        if n not in HF_FILES and not (Path(n).match(HF_CACHE_GLOB) and (folder / n).is_file())
    ]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return f"it holds {', '.join(repr(n) for n in foreign[:3])}{more} that no export wrote"
    missing = [n for n in HF_FILES if not (folder / n).is_file()]
    if missing:
        return f"it lacks {missing[0]}, so it is not an export's folder"
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        fingerprint = state.get("_fingerprint") if isinstance(state, dict) else None
        matches = fingerprint == file_sha256(folder / HF_DATA)[:16]
    except (OSError, ValueError):
        matches = False
    if not matches:
        return "its state.json does not name its data as an export's does (another writer's)"
    return None


# --- the side files ----------------------------------------------------------------------------
def side_path(out: Path, part: str) -> Path:
    """``OUT`` + the suffix of ``part`` (manifest, reward, ids): a side file of the export."""
    return out.with_name(out.name + SIDE_SUFFIX[part])


def manifest_path(out: Path) -> Path:
    """Where the manifest of the export ``out`` lies (doctor reads it back)."""
    return side_path(out, "manifest")


def side_files(out: Path, *, reward: bool, with_ids: bool) -> dict[str, Path]:
    """The files an export writes beside its data, besides the manifest: the reward function
    of a layout whose trainer scores rollouts (``OUT.reward.py``), and the id list its command
    reads back (``OUT.ids.txt``)."""
    sides = {"reward": side_path(out, "reward")} if reward else {}
    if with_ids:
        sides["ids"] = side_path(out, "ids")
    return sides
