"""``python -m core doctor --db PATH``: check a store and the files it points at, and say what to do.

Read-only (the store is opened read-only, nothing on disk changes) unless ``--sweep`` is given,
which removes only the temp files and folders of our own killed exports and SAE trainings. Each
finding is one line: what is wrong, then what to do. Checks:

- the file opens and holds our schema (the same one-line errors as every command), its version;
- rows whose run or dataset is gone (orphans), datasets whose recorded size differs from their rows;
- runs not finished (interrupted, or running now in another process): rerun to resume;
- SAE folders: a train-sae run whose folder is gone, a feature run whose SAE folder is gone;
- exports: a recorded export whose file is gone, and every manifest (recorded exports and the
  export folder) whose sha256 does not match its data file (a kill between the two renames);
- leftover temp files of killed exports and SAE trainings beside the store, in the export folder,
  the SAE folder and the folders of recorded exports and SAEs.

    >>> findings = diagnose("data/demo.duckdb")  # doctest: +SKIP
    >>> [f.line() for f in findings if f.level != "ok"]  # doctest: +SKIP
    []
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.defaults import DEFAULT_EXPORT_DIR, DEFAULT_SAE_DIR
from core.errors import StudioError
from core.export import leftover_temp_files, manifest_path
from core.formats import HF_DATA, file_sha256
from core.sae import leftover_temp_dirs
from core.store import SCHEMA_VERSION, Store

Level = Literal["ok", "note", "problem"]
# steps with a --no-resume flag (train-sae takes up its unfinished run when rerun)
RESUMABLE = ("featurize", "reward")


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
    """A problem when the data named by ``manifest`` is missing or does not match its sha256."""
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        name, digest = str(meta["file"]), str(meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return Finding("problem", f"manifest {manifest} cannot be read", "remove it or re-export")
    out = manifest.with_name(name)
    data = data_file(out)
    if not data.is_file():
        return Finding(
            "problem",
            f"manifest {manifest} describes {out}, which is missing",
            "rerun the export (the manifest's command) or remove the manifest",
        )
    if file_sha256(data) != digest:
        return Finding(
            "problem",
            f"{out} does not match its manifest's sha256 (an export was interrupted between "
            "writing the manifest and the data, or the file was changed)",
            "rerun the export (the manifest's command)",
        )
    return None


def _store_findings(store: Store, health: dict) -> list[Finding]:
    out: list[Finding] = []
    version = health["schema_version"]
    if version < SCHEMA_VERSION:
        out.append(
            Finding(
                "note",
                f"schema version {version}, older than this tool's {SCHEMA_VERSION}",
                "any writing command (e.g. ingest) upgrades it; the app reads it as it is",
            )
        )
    else:
        out.append(Finding("ok", f"schema version {version}"))
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
        if r.path and not Path(r.path).exists():
            out.append(
                Finding(
                    "note",
                    f"train-sae run {r.run_id} ('{r.dataset}') wrote {r.path}, which is gone",
                    "its feature runs keep their features; featurizing again needs the folder",
                )
            )
    for r in health["feature_runs"].itertuples():
        sae = str(r.sae or "")
        if sae.startswith("/") and not Path(sae).exists():
            out.append(
                Finding(
                    "note",
                    f"feature run {r.run_id} ('{r.dataset}') read the SAE {sae}, which is gone",
                    "its stored features stay usable; resuming or featurizing again needs it",
                )
            )
    return out


def _export_findings(health: dict, export_dir: Path) -> list[Finding]:
    out: list[Finding] = []
    manifests: dict[Path, None] = {}
    for r in health["exports"].itertuples():
        path = Path(r.path)
        if not path.exists():
            out.append(
                Finding(
                    "note",
                    f"export of '{r.dataset}' to {path} ({r.created_at}) is gone",
                    "nothing to do unless you need it: rerun its manifest's command",
                )
            )
        elif manifest_path(path).is_file():
            manifests[manifest_path(path)] = None
    if export_dir.is_dir():
        for m in sorted(export_dir.glob("*.manifest.json")):
            manifests[m] = None
    bad = [f for m in manifests if (f := check_manifest(m)) is not None]
    out += bad
    if manifests and not bad:
        out.append(Finding("ok", f"{len(manifests)} export manifests match their data"))
    return out


def _temp_folders(store: Store, health: dict, export_dir: Path, sae_dir: Path) -> list[Path]:
    folders = {store.path.parent, export_dir, sae_dir}
    for r in health["exports"].itertuples():
        folders.add(Path(r.path).parent)
    for r in health["sae_runs"].itertuples():
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
    export_dir: str | Path = DEFAULT_EXPORT_DIR,
    sae_dir: str | Path = DEFAULT_SAE_DIR,
    sweep: bool = False,
) -> list[Finding]:
    """Every finding on the store at ``db``, in the order of the module doc. A file that does
    not open is one problem finding (the same words every command uses). ``sweep`` removes the
    leftover temp files it finds (and says so)."""
    store = Store(db)
    if not store.path.exists():
        return [Finding("problem", f"database {store.path} does not exist", "check --db")]
    try:
        store.check_readable()
        health = store.health()
    except StudioError as exc:
        return [Finding("problem", str(exc))]
    export_dir, sae_dir = Path(export_dir), Path(sae_dir)
    findings = [Finding("ok", f"database {store.path} opens")]
    findings += _store_findings(store, health)
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
