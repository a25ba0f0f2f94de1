"""``python -m core doctor --db PATH``: check a store and the files it points at, and say what to do.

Read-only (the store is opened read-only, nothing on disk changes) unless ``--sweep`` is given,
which removes only the temp files and folders of our own killed exports and SAE trainings, or
``upgrade``, which applies the schema's pending migrations first. Each finding is one line: what
is wrong, then what to do. Checks:

- the file opens and holds our schema (the same one-line errors as every command), its version;
  a store of an older schema is one finding (its rows are checked once it is upgraded), and the
  checks on disk below still run;
- rows whose run or dataset is gone (orphans), datasets whose recorded size differs from their rows;
- runs not finished (interrupted, or running now in another process): rerun to resume;
- SAE folders: a train-sae run whose folder is gone, a feature run whose SAE folder is gone;
- exports: a recorded export whose file is gone, and every manifest (recorded exports and the
  export folder) that cannot be read, names no file beside it, or whose sha256 does not match
  its data file (a kill between the two renames);
- leftover temp files of killed exports and SAE trainings beside the store, in the export folder,
  the SAE folder and the folders of recorded exports and SAEs.

    >>> findings = diagnose("data/demo.duckdb")  # doctest: +SKIP
    >>> [f.line() for f in findings if f.level != "ok"]  # doctest: +SKIP
    []
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from core.defaults import DEFAULT_SAE_DIR
from core.defaults import export_dir as default_export_dir
from core.errors import StudioError
from core.export import HF_DATA, file_sha256, leftover_temp_files, manifest_path
from core.sae import leftover_temp_dirs
from core.store import SCHEMA_VERSION, Store

Level = Literal["ok", "note", "problem"]
# steps with a --no-resume flag (train-sae takes up its unfinished run when rerun)
RESUMABLE = ("featurize", "reward")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIX_MANIFEST = "remove it, or rerun the export it describes"


@dataclass(frozen=True)
class Finding:
    level: Level  # ok: checked and fine; note: worth knowing; problem: needs action
    what: str
    todo: str = ""

    def line(self) -> str:
        tag = {"ok": "ok     ", "note": "note   ", "problem": "PROBLEM"}[self.level]
        return f"{tag} {self.what}" + (f": {self.todo}" if self.todo else "")


def data_file(out: Path) -> Path:
    """The file an export's sha256 is of: the file itself, or an hf folder's arrow file."""
    return out / HF_DATA if out.is_dir() else out


def check_manifest(manifest: Path) -> Finding | None:
    """A problem when ``manifest`` is malformed, or the data it names is missing or does not
    match its sha256; None when it matches."""
    return _check_manifest(manifest)[0]


def _check_manifest(manifest: Path) -> tuple[Finding | None, int]:
    """:func:`check_manifest` and how many bytes of data it hashed (0 unless it matched)."""
    meta = _read_manifest(manifest)
    if isinstance(meta, Finding):
        return meta, 0
    out = manifest.with_name(meta[0])
    try:
        data = data_file(out)
        size = data.stat().st_size if data.is_file() else None
        if size is None:
            return Finding(
                "problem",
                f"manifest {manifest} describes {out}, which is missing",
                "rerun the export (the manifest's command) or remove the manifest",
            ), 0
        matches = file_sha256(data) == meta[1]
    except OSError as exc:
        return Finding(
            "problem", f"{out} cannot be read ({_reason(exc)})", "check its permissions"
        ), 0
    if not matches:
        return Finding(
            "problem",
            f"{out} does not match its manifest's sha256 (an export was interrupted between "
            "writing the manifest and the data, or the file was changed)",
            "rerun the export (the manifest's command)",
        ), 0
    return None, size


def _read_manifest(manifest: Path) -> tuple[str, str] | Finding:
    """(data file name, sha256) of a manifest, or the one finding that says which part of it
    is wrong: not readable, not UTF-8, not JSON, not an object, or a field missing or bad."""

    def bad(why: str) -> Finding:
        return Finding("problem", f"manifest {manifest} {why}", _FIX_MANIFEST)

    try:
        raw = manifest.read_bytes()
    except OSError as exc:
        return bad(f"cannot be read ({_reason(exc)})")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return bad(f"is not UTF-8 text (byte {exc.start})")
    except json.JSONDecodeError as exc:
        return bad(f"is not valid JSON (line {exc.lineno}: {exc.msg})")
    except (ValueError, RecursionError):  # an integer too long to convert, nesting too deep
        return bad("is not valid JSON as Python reads it")
    if not isinstance(meta, dict):
        return bad("is not a JSON object")
    for key in ("file", "sha256"):
        if key not in meta:
            return bad(f"has no field {key!r}")
    name, digest = meta["file"], meta["sha256"]
    if not _is_file_name(name):
        return bad(f"field 'file' must be a file name beside it, got {_short(name)}")
    if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        return bad(f"field 'sha256' must be a hex digest, got {_short(digest)}")
    return name, digest


def _is_file_name(name: Any) -> bool:
    """A name the export wrote beside its manifest (``out.name``): no folder part."""
    seps = {"/", "\0", os.sep, *([os.altsep] if os.altsep else [])}
    return isinstance(name, str) and name not in ("", ".", "..") and not seps & set(name)


def _short(value: Any, width: int = 40) -> str:
    s = repr(value)
    return s if len(s) <= width else s[: width - 3] + "..."


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 1_000_000 else f"{n / 1e6:,.1f} MB"


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; one we may not look at counts as there (nothing to report)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return True


def _rows(health: dict[str, Any] | None, key: str) -> list[Any]:
    """The rows (named tuples) of one health table; none when the store was not checked."""
    return [] if health is None else list(health[key].itertuples())


def _store_findings(health: dict[str, Any]) -> list[Finding]:
    out: list[Finding] = [Finding("ok", f"schema version {health['schema_version']}")]
    orphans = health["orphans"]
    if orphans:
        listed = ", ".join(f"{t} {n:,}" for t, n in sorted(orphans.items()))
        out.append(
            Finding(
                "problem",
                f"rows whose run or dataset is gone ({listed})",
                "they are never read; ingest --replace the dataset or rebuild the store to drop "
                "them",
            )
        )
    else:
        out.append(Finding("ok", "no orphan rows"))
    for r in health["size_mismatches"].itertuples():
        out.append(
            Finding(
                "problem",
                f"dataset '{r.name}' records {r.n_examples:,} examples but holds {r.n_rows:,}",
                "ingest it again with --replace",
            )
        )
    runs = health["unfinished_runs"]
    for r in runs.itertuples():
        out.append(
            Finding(
                "note",
                f"run {r.run_id} ({r.step} on '{r.dataset}', started {r.started_at}) is not "
                "finished: interrupted, or running now in another process",
                "rerun the same command to resume it"
                + (" (or --no-resume to start over)" if r.step in RESUMABLE else ""),
            )
        )
    if runs.empty:
        out.append(Finding("ok", "every run finished"))
    for r in health["sae_runs"].itertuples():
        if r.path and not _exists(Path(r.path)):
            out.append(
                Finding(
                    "note",
                    f"train-sae run {r.run_id} ('{r.dataset}') wrote {r.path}, which is gone",
                    "its feature runs keep their features; featurizing again needs the folder",
                )
            )
    for r in health["feature_runs"].itertuples():
        sae = str(r.sae or "")
        if sae.startswith("/") and not _exists(Path(sae)):
            out.append(
                Finding(
                    "note",
                    f"feature run {r.run_id} ('{r.dataset}') read the SAE {sae}, which is gone",
                    "its stored features stay usable; resuming or featurizing again needs it",
                )
            )
    return out


def _export_findings(health: dict[str, Any] | None, export_dir: Path) -> list[Finding]:
    out: list[Finding] = []
    manifests: dict[Path, None] = {}
    for r in _rows(health, "exports"):
        path = Path(r.path)
        if not _exists(path):
            out.append(
                Finding(
                    "note",
                    f"export of '{r.dataset}' to {path} ({r.created_at}) is gone",
                    "nothing to do unless you need it: rerun its manifest's command",
                )
            )
        elif path.name and manifest_path(path).is_file():
            manifests[manifest_path(path).absolute()] = None
    if export_dir.is_dir():
        for m in sorted(export_dir.glob("*.manifest.json")):
            manifests[m.absolute()] = None
    checked = [_check_manifest(m) for m in manifests]
    bad = [f for f, _ in checked if f is not None]
    out += bad
    if manifests and not bad:
        hashed = sum(n for _, n in checked)
        out.append(
            Finding(
                "ok",
                f"{len(manifests)} export manifests match their data (sha256 of "
                f"{len(checked)} file{'s' if len(checked) != 1 else ''}, {_size(hashed)})",
            )
        )
    return out


def _temp_folders(
    store: Store, health: dict[str, Any] | None, export_dir: Path, sae_dir: Path
) -> list[Path]:
    folders = {store.path.parent, export_dir, sae_dir}
    for r in _rows(health, "exports"):
        folders.add(Path(r.path).parent)
    for r in _rows(health, "sae_runs"):
        if r.path:
            folders.add(Path(r.path).parent)
    return sorted(f for f in folders if f.is_dir())


def leftovers(folders: Iterable[Path]) -> list[Path]:
    """Temp files and folders our killed exports and SAE trainings left in ``folders``."""
    found: dict[Path, None] = {}
    for folder in folders:
        for p in (*leftover_temp_files(folder), *leftover_temp_dirs(folder)):
            found[p] = None
    return list(found)


def diagnose(
    db: str | Path,
    *,
    export_dir: str | Path | None = None,
    sae_dir: str | Path = DEFAULT_SAE_DIR,
    sweep: bool = False,
    upgrade: bool = False,
) -> list[Finding]:
    """Every finding on the store at ``db``, in the order of the module doc. A file that does
    not open is one problem finding (the same words every command uses). ``export_dir`` None
    is the app's export folder (:func:`core.defaults.export_dir`). ``sweep`` removes the leftover temp
    files it finds (and says so); ``upgrade`` migrates an older schema before checking."""
    store = Store(db)
    if not store.path.exists():
        return [Finding("problem", f"database {store.path} does not exist", "check --db")]
    upgraded: int | None = None
    try:
        store.check_readable()
        version = store.schema_version()
        if upgrade and version < SCHEMA_VERSION:
            upgraded, version = version, store.migrate()
        # the health queries read every table of the current schema; an older one lacks some
        health = store.health() if version >= SCHEMA_VERSION else None
    except StudioError as exc:
        return [Finding("problem", str(exc))]
    except duckdb.Error as exc:  # tables of ours that do not read as their migrations made them
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [
            Finding(
                "problem",
                f"database {store.path} opens, but its tables cannot be checked ({first})",
                "restore it from a backup or rebuild the store",
            )
        ]
    export_dir, sae_dir = default_export_dir(export_dir), Path(sae_dir)
    findings = [Finding("ok", f"database {store.path} opens")]
    if upgraded is not None:
        findings.append(Finding("note", f"upgraded the schema from version {upgraded}"))
    if health is None:
        findings.append(
            Finding(
                "problem",
                f"schema version {version} is older than this tool's {SCHEMA_VERSION}, so the "
                "rows inside were not checked",
                "run any command that writes to it (e.g. python -m core ingest FILE --dataset "
                f"NAME --db {db}) to upgrade it in place, then doctor again",
            )
        )
    else:
        findings += _store_findings(health)
    findings += _export_findings(health, export_dir)
    stale = leftovers(_temp_folders(store, health, export_dir, sae_dir))
    for p in stale:
        if sweep:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            findings.append(Finding("note", f"removed leftover temp {p}"))
        else:
            findings.append(
                Finding(
                    "problem",
                    f"leftover temp {'folder' if p.is_dir() else 'file'} {p} of a killed export "
                    "or train-sae",
                    "remove it, or run doctor --sweep (the next export or train-sae there also "
                    "sweeps it)",
                )
            )
    if not stale:
        findings.append(Finding("ok", "no leftover temp files"))
    return findings
