"""The Store class: a DuckDB file behind typed methods, the one door to the schema
(:mod:`core.store.schema`) and to every SQL statement (built ones in :mod:`core.store.sql`).

Everything else calls the typed methods of :class:`Store`. Values always travel as parameters;
the only identifiers built into SQL text are label names, which are quoted by
:func:`core.store.sql.quote_ident`.

A finished run and its rows are one call, :meth:`Store.add_run`, whatever the step: a
:class:`RunRecord` says what ran, and :data:`RUN_STEPS` says which tables the step writes and
what is checked before anything is written. Steps that write in chunks (featurize, reward models)
open their run with :meth:`Store.begin_run` and close it with :meth:`Store.finish_run`.

Concurrency: DuckDB locks its file per process, and a read-only connection in one process blocks a
read-write one in another (and the other way round). So no connection outlives a call: readers
(the app) open read-only, query, close; writers (the pipeline) compute outside the lock and commit
in short transactions. Both retry for a few seconds when the other holds the lock.

Example:
    >>> store = Store("data/studio.duckdb")
    >>> store.migrate()
    >>> store.list_datasets()  # a pandas DataFrame, one row per dataset
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.errors import StudioError
from core.filters import Filter

# migrate() and check_readable() read MIGRATIONS and SCHEMA_VERSION from the module when they
# run, so a test can stand in an older schema (monkeypatch core.store.schema)
from core.store import schema, sql
from core.store.schema import (
    BASE_COLUMNS,
    CLUSTER_ASSIGNMENTS,
    CLUSTERS,
    DEDUP_COLUMNS,
    DUPLICATE_GROUPS,
    PROBE_SCORES,
    PROJECTIONS,
    REWARD_SCHEMA,
    REWARD_SCORES,
    REWARD_STEP,
    Kind,
    RunTable,
)
from core.store.sql import Views, WideSource

# The rows add_run takes for one table: Arrow, or a pandas frame (DuckDB reads both)
Rows = pa.Table | pd.DataFrame


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, so equal configs compare equal as strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


_CORRUPT = ("corrupt database file", "could not read enough bytes", "checksum")


def _is_corrupt_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(part in text for part in _CORRUPT)


def open_error(path: Path, exc: BaseException) -> StudioError:
    """One line saying why DuckDB could not open ``path``: busy, not a DuckDB file (empty, text,
    a folder), corrupt or truncated, or written by a newer DuckDB. The one place these words are
    chosen, for the CLI, the app and ``doctor``.

        >>> open_error(Path("x.duckdb"), OSError("Could not set lock on file"))
        StudioError('database x.duckdb is busy (another process holds its lock); try again in a moment')
    """
    text = str(exc)
    low = text.lower()
    if _is_lock_error(exc):
        why = "is busy (another process holds its lock); try again in a moment"
    elif path.is_dir() or "is a directory" in low:
        why = "is a folder, not a DuckDB file: give --db FILE"
    elif "not a valid duckdb database" in low:
        size = path.stat().st_size if path.is_file() else 0
        what = "an empty file (0 bytes)" if size == 0 else f"not a DuckDB file ({size:,} bytes)"
        why = f"is {what}: give another --db path, or remove it to start a new store"
    elif _is_corrupt_error(exc):
        why = (
            "is corrupt or truncated (DuckDB: "
            + text.splitlines()[0].removeprefix("IO Error: ")[:120]
            + "); restore it from a copy or rebuild it"
        )
    elif "version number" in low or "storage version" in low:
        why = "was written by a newer DuckDB than this one (" + duckdb.__version__ + "): upgrade"
    elif "permission denied" in low or "read-only file system" in low:
        why = "cannot be opened for writing (permission denied or a read-only place)"
    else:
        why = "cannot be opened: " + text.splitlines()[0][:160]
    return StudioError(f"database {path} {why}")


def _table_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "ORDER BY table_name"
    ).fetchall()
    return [str(r[0]) for r in rows]


def _has_studio_schema(con: duckdb.DuckDBPyConnection) -> bool:
    try:
        return "schema_version" in _table_names(con)
    except duckdb.Error:
        return True  # cannot tell: let the original error speak


def foreign_message(path: Path, con: duckdb.DuckDBPyConnection) -> str:
    names = _table_names(con)
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    return (
        f"database {path} is a DuckDB file but not a SAERL Studio store (its tables: "
        f"{shown or 'none'}); give another --db path"
    )


# --- runs: what ran, and what each step's finished run writes ----------------------------------
@dataclass(frozen=True)
class RunRecord:
    """What a run was, as its row in ``runs`` keeps it: the step, the dataset it ran on, the
    config and package versions it ran with (for tracing and resuming), its summary, the run it
    was computed from (a cluster run's feature run), and ``source``, what produced its rows
    where the step's table keeps that on every row (reward scores).

        >>> RunRecord("project", "d", {"seed": 0}, {}, parent_run=4).parent_run
        4
    """

    step: str
    dataset: str
    config: dict[str, Any]
    versions: dict[str, str]
    summary: dict[str, Any] = field(default_factory=dict)
    parent_run: int | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if not self.step:
            raise ValueError("a run record needs a step")


@dataclass(frozen=True)
class RunStep:
    """What :meth:`Store.add_run` writes and checks for one step.

    ``tables``: where the rows go (each under its ``arg`` keyword); ``name_error``: the error
    when ``config["name"]`` is empty, for steps whose results are found by name (probe scores,
    reward scores); ``needs_parent``: a run found through its feature run (``parent_run``);
    ``check``: what must hold of the rows before anything is written, beyond their columns.
    """

    tables: tuple[RunTable, ...] = ()
    name_error: str | None = None
    needs_parent: bool = False
    check: Callable[[Store, RunRecord, Mapping[str, Rows]], None] | None = None

    def check_record(self, record: RunRecord) -> None:
        """Refuse a record this step's runs cannot be found by."""
        if self.name_error and not record.config.get("name"):
            raise StudioError(self.name_error)
        if self.needs_parent and record.parent_run is None:
            raise ValueError(f"a {record.step} run needs its feature run (parent_run)")

    def check_rows(self, record: RunRecord, rows: Mapping[str, Rows]) -> None:
        """A programming error, not a user's: exactly this step's tables, with their columns,
        and the source of rows whose table keeps it."""
        want = [t.arg for t in self.tables]
        if sorted(rows) != sorted(want):
            raise ValueError(
                f"a {record.step} run writes {', '.join(want) or 'no rows'}; "
                f"got {', '.join(rows) or 'none'}"
            )
        if any(t.with_source for t in self.tables) and record.source is None:
            raise ValueError(f"a {record.step} run needs the source of its rows")
        for spec in self.tables:
            check_columns(spec, rows[spec.arg])


def check_columns(spec: RunTable, rows: Rows) -> None:
    """Rows for ``spec.table`` must carry its columns (a ValueError naming the missing ones)."""
    have = rows.column_names if isinstance(rows, pa.Table) else [str(c) for c in rows.columns]
    missing = [c for c in spec.columns if c not in have]
    if missing:
        raise ValueError(f"{spec.table.replace('_', ' ')} lack column(s) {', '.join(missing)}")


def _check_reward_rows(store: Store, record: RunRecord, rows: Mapping[str, Rows]) -> None:
    """Every key of the scores names a response (or -1: an example) of the dataset, once."""
    scores = rows[REWARD_SCORES.arg]
    if not isinstance(scores, pa.Table):
        scores = pa.Table.from_pandas(scores, preserve_index=False)
    unknown = store.unknown_reward_keys(record.dataset, scores)
    if unknown.num_rows:
        first = unknown.slice(0, 1).to_pylist()[0]
        raise StudioError(
            f"dataset '{record.dataset}' has no response ({first['example_id']!r}, response_idx "
            f"{first['response_idx']}) to score ({unknown.num_rows} unknown); nothing stored"
        )
    counts = scores.group_by(["example_id", "response_idx"], use_threads=False).aggregate(
        [([], "count_all")]
    )
    dup = counts.filter(pc.field("count_all") > 1).slice(0, 1).to_pylist()
    if dup:
        raise StudioError(
            f"reward '{record.config['name']}': ({dup[0]['example_id']!r}, response_idx "
            f"{dup[0]['response_idx']}) is scored {dup[0]['count_all']} times; nothing stored"
        )


# The steps whose finished run add_run writes in one call. A step missing here writes its rows
# in chunks (featurize: begin_run, write_feature_chunk, finish_run) or keeps them by dataset
# (rollouts: write_rollouts).
RUN_STEPS: dict[str, RunStep] = {
    "probe": RunStep(
        (PROBE_SCORES,), name_error="a probe run needs a score name", needs_parent=True
    ),
    REWARD_STEP: RunStep(
        (REWARD_SCORES,), name_error="a reward run needs a name", check=_check_reward_rows
    ),
    "cluster": RunStep((CLUSTER_ASSIGNMENTS, CLUSTERS), needs_parent=True),
    "project": RunStep((PROJECTIONS,), needs_parent=True),
    "dedup": RunStep((DUPLICATE_GROUPS,), needs_parent=True),
    "train-sae": RunStep(),  # its output is a folder on disk; the run's summary says where
}


class Store:
    """A DuckDB file. Every method opens a short-lived connection and closes it."""

    def __init__(
        self,
        path: str | Path,
        *,
        lock_timeout_s: float = 10.0,
        memory_limit_mb: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        # DuckDB's memory cap per connection (None: its default, 80% of RAM). Beyond it, sorts
        # and joins spill to disk and cached blocks are evicted, so memory stops growing.
        self.memory_limit_mb = memory_limit_mb

    def capped(self, memory_limit_mb: int) -> Store:
        """The same file, with DuckDB's memory capped at ``memory_limit_mb``."""
        return Store(self.path, lock_timeout_s=self.lock_timeout_s, memory_limit_mb=memory_limit_mb)

    # --- connections -------------------------------------------------------------------
    @contextmanager
    def connect(self, *, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection that waits while another process holds the file's lock."""
        if not write and not self.path.exists():
            raise StudioError(
                f"database {self.path} does not exist: build the demo with "
                "`python -m core demo` or ingest a dataset first"
            )
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise StudioError(
                f"database {self.path} is a folder, not a DuckDB file: give --db FILE"
            )
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=not write)
                break
            except duckdb.Error as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    raise open_error(self.path, exc) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            if self.memory_limit_mb is not None:
                con.execute(f"SET memory_limit = '{int(self.memory_limit_mb)}MB'")
                # spill beyond the cap (a read-only connection sets no spill folder by itself);
                # every query that needs an order says ORDER BY
                spill = str(Path(tempfile.gettempdir()) / "saerl-duckdb-spill")
                # connections to one file share a database instance, and DuckDB refuses to
                # switch its spill folder once another open connection has spilled there
                current = con.execute("SELECT current_setting('temp_directory')").fetchone()
                if current is None or current[0] != spill:
                    con.execute("SET temp_directory = ?", [spill])
                con.execute("SET preserve_insertion_order = false")
            yield con
        except duckdb.CatalogException as exc:
            # a missing table in a file that has none of ours: a foreign DuckDB file
            if not _has_studio_schema(con):
                raise StudioError(foreign_message(self.path, con)) from exc
            raise
        except duckdb.Error as exc:
            if _is_corrupt_error(exc):
                raise open_error(self.path, exc) from exc
            raise
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write connection inside BEGIN/COMMIT; any exception rolls everything back."""
        with self.connect(write=True) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def version_token(self) -> tuple[float, float]:
        """Changes whenever the file is written: the app keys its caches on it."""
        wal = self.path.with_name(self.path.name + ".wal")
        mt = self.path.stat().st_mtime if self.path.exists() else 0.0
        return (mt, wal.stat().st_mtime if wal.exists() else 0.0)

    # --- schema ------------------------------------------------------------------------
    def migrate(self) -> int:
        """Create or upgrade the schema; returns the version now in force."""
        with self.transaction() as con:
            # never add our tables to someone else's database
            if not _has_studio_schema(con) and _table_names(con):
                raise StudioError(foreign_message(self.path, con))
            con.execute(schema.SCHEMA_VERSION_DDL)
            row = con.execute("SELECT max(version) FROM schema_version").fetchone()
            current = (row[0] if row else None) or 0
            if current > schema.SCHEMA_VERSION:
                raise StudioError(
                    f"database {self.path} has schema version {current}, newer than this "
                    f"tool's {schema.SCHEMA_VERSION}: upgrade SAERL Studio"
                )
            for version, name, ddl in schema.MIGRATIONS:
                if version > current:
                    con.execute(ddl)
                    con.execute(
                        "INSERT INTO schema_version (version, name) VALUES (?, ?)", [version, name]
                    )
                    current = version
        return current

    def schema_version(self) -> int:
        with self.connect() as con:
            try:
                row = con.execute("SELECT max(version) FROM schema_version").fetchone()
            except duckdb.CatalogException:
                return 0
        return int(row[0] or 0) if row else 0

    @staticmethod
    def _version(con: duckdb.DuckDBPyConnection) -> int:
        """The schema version of an open connection. The app only reads, so it may meet a file
        written by an older version of the tool: readers treat what a later migration adds
        (descriptions, char spans) as empty rather than refusing the file."""
        try:
            # fetchall closes the result (fetchone would leave it open, and a later con.sql on
            # this connection would then fail with "unfinished result")
            rows = con.execute("SELECT max(version) FROM schema_version").fetchall()
        except duckdb.CatalogException:
            return 0
        return int(rows[0][0] or 0) if rows else 0

    def check_readable(self) -> None:
        """Raise a StudioError unless the file holds a schema this tool can read."""
        version = self.schema_version()
        if version == 0:
            with self.connect() as con:
                raise StudioError(foreign_message(self.path, con))
        if version > schema.SCHEMA_VERSION:
            raise StudioError(f"database {self.path} has a newer schema ({version})")

    # --- datasets and examples -----------------------------------------------------------
    def write_dataset(
        self,
        *,
        name: str,
        kind: Kind,
        source: str,
        examples: pa.Table,
        labels: pa.Table,
        responses: pa.Table,
        replace: bool = False,
    ) -> int:
        """Insert a whole dataset in one transaction: all rows or none. Returns the row count."""
        self.migrate()
        with self.transaction() as con:
            self._free_name(con, name, replace=replace)
            con.execute(
                "INSERT INTO datasets (name, kind, source, n_examples) VALUES (?, ?, ?, ?)",
                [name, kind, source, examples.num_rows],
            )
            con.register("_ex", examples)
            con.execute(
                "INSERT INTO examples SELECT ?, id, idx, prompt, answer, text, tags, extra FROM _ex",
                [name],
            )
            con.register("_lb", labels)
            con.execute("INSERT INTO labels SELECT ?, example_id, name, value FROM _lb", [name])
            con.register("_rs", responses)
            con.execute(
                "INSERT INTO responses SELECT ?, example_id, response_idx, role, text FROM _rs",
                [name],
            )
        return examples.num_rows

    def write_responses_dataset(self, source: str, *, name: str, replace: bool = False) -> int:
        """Derive the dataset ``name`` (kind ``responses``) from the preference set ``source``:
        one example per response, in the source's order (example, then response_idx), so each
        response can be featurized, clustered and mapped on its own. An example's id is
        ``<example id>#<response_idx>``; prompt, answer and tags are the source example's, tags
        gain ``role`` (chosen/rejected); text is the response; extra keeps the source example's
        extra plus ``response_of`` = {dataset, example_id, response_idx}; labels are the source
        example's plus ``response_idx`` and ``is_chosen`` (1/0). One transaction: all or nothing.
        Returns the number of responses."""
        kind = self.dataset(source)["kind"]
        if kind != "preferences":
            raise StudioError(
                f"dataset '{source}' is {kind}: a responses dataset is derived from a preference "
                "set (its chosen and rejected responses)"
            )
        self.migrate()
        with self.transaction() as con:
            self._free_name(con, name, replace=replace)
            (n,) = con.execute(
                "SELECT count(*) FROM responses WHERE dataset = ?", [source]
            ).fetchone() or (0,)
            if not n:
                raise StudioError(f"dataset '{source}' has no responses")
            con.execute(
                "INSERT INTO datasets (name, kind, source, n_examples) VALUES (?, 'responses', ?, ?)",
                [name, f"responses of dataset {source}", n],
            )
            con.execute(
                """
                INSERT INTO examples
                SELECT ?, e.id || '#' || r.response_idx,
                       row_number() OVER (ORDER BY e.idx, r.response_idx) - 1,
                       e.prompt, e.answer, r.text,
                       json_merge_patch(coalesce(e.tags, '{}'), json_object('role', r.role)),
                       json_merge_patch(coalesce(e.extra, '{}'), json_object('response_of',
                           json_object('dataset', e.dataset, 'example_id', e.id,
                                       'response_idx', r.response_idx)))
                FROM responses r JOIN examples e ON e.dataset = r.dataset AND e.id = r.example_id
                WHERE r.dataset = ?
                """,
                [name, source],
            )
            con.execute(
                """
                INSERT INTO labels
                SELECT ?, r.example_id || '#' || r.response_idx, l.name, l.value
                FROM responses r JOIN labels l ON l.dataset = r.dataset AND l.example_id = r.example_id
                WHERE r.dataset = ?
                UNION ALL
                SELECT ?, example_id || '#' || response_idx, 'response_idx', response_idx
                FROM responses WHERE dataset = ?
                UNION ALL
                SELECT ?, example_id || '#' || response_idx, 'is_chosen',
                       CASE WHEN role = 'chosen' THEN 1.0 ELSE 0.0 END
                FROM responses WHERE dataset = ?
                """,
                [name, source, name, source, name, source],
            )
        return int(n)

    def response_keys(self, dataset: str) -> pa.Table:
        """id, example_id, response_idx, role of a responses dataset's examples (ingest order):
        which response of its preference set each one is."""
        with self.connect() as con:
            return con.sql(
                "SELECT id, json_extract_string(extra, '$.response_of.example_id') AS example_id, "
                "CAST(json_extract(extra, '$.response_of.response_idx') AS INTEGER) "
                "AS response_idx, json_extract_string(tags, '$.role') AS role "
                "FROM examples WHERE dataset = ? ORDER BY idx",
                params=[dataset],
            ).to_arrow_table()

    def rejected_counts(self, dataset: str) -> pa.Table:
        """idx, n_rejected of a preference set's examples (ingest order): how many (chosen,
        rejected) pair rows each prompt gives (0 for a prompt without a rejected response)."""
        with self.connect() as con:
            return con.sql(
                "SELECT e.idx, count(r.example_id)::BIGINT AS n_rejected FROM examples e "
                "LEFT JOIN responses r ON r.dataset = e.dataset AND r.example_id = e.id "
                "AND r.role = 'rejected' WHERE e.dataset = ? GROUP BY e.idx ORDER BY e.idx",
                params=[dataset],
            ).to_arrow_table()

    def _free_name(self, con: duckdb.DuckDBPyConnection, name: str, *, replace: bool) -> None:
        """Make room for a new dataset ``name`` inside a transaction: an existing one is an error,
        or with ``replace`` deleted with everything computed from it."""
        exists = con.execute("SELECT 1 FROM datasets WHERE name = ?", [name]).fetchone()
        if exists and not replace:
            raise StudioError(
                f"dataset '{name}' already exists in {self.path}: pass --replace to overwrite it"
            )
        if exists:
            # everything computed from it goes too, except its train-sae runs (see sql.py)
            for text, params in sql.delete_dataset(name):
                con.execute(text, params)

    def dataset(self, name: str) -> dict[str, Any]:
        """The dataset's row; StudioError naming the known ones when it does not exist."""
        with self.connect() as con:
            row = con.execute(
                "SELECT name, kind, source, n_examples, created_at FROM datasets WHERE name = ?",
                [name],
            ).fetchone()
            if row is None:
                known = [r[0] for r in con.execute("SELECT name FROM datasets").fetchall()]
                raise StudioError(
                    f"no dataset '{name}' in {self.path} (known: {', '.join(known) or 'none'})"
                )
        return dict(zip(["name", "kind", "source", "n_examples", "created_at"], row, strict=True))

    def has_dataset(self, name: str) -> bool:
        with self.connect() as con:
            return (
                con.execute("SELECT 1 FROM datasets WHERE name = ?", [name]).fetchone() is not None
            )

    def list_datasets(self) -> pd.DataFrame:
        with self.connect() as con:
            return con.execute(
                """
                SELECT d.name, d.kind, d.n_examples, d.source, d.created_at,
                       (SELECT count(DISTINCT name) FROM labels l WHERE l.dataset = d.name)
                           AS n_labels,
                       (SELECT count(*) FROM responses r WHERE r.dataset = d.name) AS n_responses
                FROM datasets d ORDER BY d.created_at
                """
            ).df()

    def example_texts(self, dataset: str) -> pa.Table:
        """id and text of every example, in ingest order."""
        with self.connect() as con:
            return con.sql(
                "SELECT id, text FROM examples WHERE dataset = ? ORDER BY idx", params=[dataset]
            ).to_arrow_table()

    def chosen_responses(self, dataset: str) -> dict[str, str]:
        """example_id -> the chosen response (response_idx 0) of a preference dataset."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT example_id, text FROM responses WHERE dataset = ? AND response_idx = 0",
                [dataset],
            ).fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    def label_names(self, dataset: str) -> list[str]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT DISTINCT name FROM labels WHERE dataset = ? ORDER BY name", [dataset]
            ).fetchall()
        return [r[0] for r in rows]

    def label_ranges(self, dataset: str, *, views: Views | None = None) -> pd.DataFrame:
        """name, min, max, count and kind ('label', or 'score' for the probe scores of
        ``views``) of every numeric column a filter slider can use."""
        with self.connect() as con:
            df = con.execute(
                "SELECT name, min(value) AS min, max(value) AS max, count(value) AS n, "
                "'label' AS kind FROM labels WHERE dataset = ? GROUP BY name ORDER BY name",
                [dataset],
            ).df()
            labelled = set(df["name"])
            for name, rid in views.score_runs if views else ():
                if name in labelled:
                    continue
                score = con.execute(
                    "SELECT ? AS name, min(value) AS min, max(value) AS max, count(value) AS n, "
                    "'score' AS kind FROM probe_scores WHERE run_id = ?",
                    [name, rid],
                ).df()
                df = score if df.empty else pd.concat([df, score], ignore_index=True)
        return df

    def labels(self, dataset: str, name: str) -> pa.Table:
        """(example_id, value) of one label, in ingest order."""
        with self.connect() as con:
            return con.sql(
                "SELECT e.id AS example_id, l.value FROM labels l JOIN examples e "
                "ON e.dataset = l.dataset AND e.id = l.example_id "
                "WHERE l.dataset = ? AND l.name = ? ORDER BY e.idx",
                params=[dataset, name],
            ).to_arrow_table()

    # --- runs ----------------------------------------------------------------------------
    def add_run(self, record: RunRecord, **rows: Rows) -> int:
        """A finished run and all its rows, in one transaction: a crash or a failed check leaves
        either the whole run or nothing. Returns the run id.

        ``rows`` names each table the step writes by its keyword (:data:`RUN_STEPS`): a probe
        run takes ``scores``, a cluster run ``assignments`` and ``clusters``, ... Checked before
        anything is written: the record (a score name, a feature run), the tables and their
        columns, and the step's own check (a reward's keys name responses, once each).

            store.add_run(RunRecord("project", "d", cfg, versions(), summary,
                                    parent_run=feature_run), points=points)
        """
        step = RUN_STEPS.get(record.step)
        if step is None:
            raise ValueError(
                f"add_run: no table is written by a {record.step!r} run "
                f"(steps: {', '.join(RUN_STEPS)}); see begin_run and record_run"
            )
        step.check_record(record)
        step.check_rows(record, rows)
        if step.check is not None:
            step.check(self, record, rows)
        with self._finished_run(record) as (con, rid):
            for spec in step.tables:
                view = f"_{spec.arg}"
                con.register(view, rows[spec.arg])
                text, params = sql.insert_run_rows(spec, view, run_id=rid, source=record.source)
                con.execute(text, params)
        return rid

    def begin_run(self, record: RunRecord, *, resume: bool = True) -> tuple[int, bool]:
        """A run that writes its rows in chunks, for this step and config: the unfinished one
        with the same config when ``resume`` (returns ``(run_id, True)``), else a new one
        (``(run_id, False)``). :meth:`finish_run` closes it; ``record.summary`` is not read."""
        step = RUN_STEPS.get(record.step)
        if step is not None:
            step.check_record(record)
        self.migrate()
        cfg = canonical_json(record.config)
        with self.transaction() as con:
            if resume:
                row = con.execute(
                    "SELECT run_id FROM runs WHERE step = ? AND dataset = ? AND config = ? "
                    "AND status = 'running' ORDER BY run_id DESC LIMIT 1",
                    [record.step, record.dataset, cfg],
                ).fetchone()
                if row:
                    return int(row[0]), True
            row = con.execute(
                "INSERT INTO runs (step, dataset, parent_run, status, config, versions) "
                "VALUES (?, ?, ?, 'running', ?, ?) RETURNING run_id",
                [
                    record.step,
                    record.dataset,
                    record.parent_run,
                    cfg,
                    canonical_json(record.versions),
                ],
            ).fetchone()
        assert row is not None
        return int(row[0]), False

    def record_run(
        self,
        *,
        step: str,
        dataset: str,
        config: dict[str, Any],
        versions: dict[str, str],
        summary: dict[str, Any],
        parent_run: int | None = None,
    ) -> int:
        """A finished run that stored no rows of its own (train-sae: its output is a folder)."""
        record = RunRecord(step, dataset, config, versions, summary, parent_run=parent_run)
        with self._finished_run(record) as (_, rid):
            pass
        return rid

    @contextmanager
    def _finished_run(self, record: RunRecord) -> Iterator[tuple[duckdb.DuckDBPyConnection, int]]:
        """One transaction that records a finished run and (in the body) its rows: a crash
        leaves either the whole run or nothing."""
        self.migrate()
        with self.transaction() as con:
            row = con.execute(
                "INSERT INTO runs (step, dataset, parent_run, status, config, summary, versions, "
                "finished_at) VALUES (?, ?, ?, 'done', ?, ?, ?, current_timestamp) "
                "RETURNING run_id",
                [
                    record.step,
                    record.dataset,
                    record.parent_run,
                    canonical_json(record.config),
                    canonical_json(record.summary),
                    canonical_json(record.versions),
                ],
            ).fetchone()
            assert row is not None
            yield con, int(row[0])

    def finish_run(self, run_id: int, *, summary: dict[str, Any]) -> None:
        with self.transaction() as con:
            con.execute(
                "UPDATE runs SET status = 'done', summary = ?, finished_at = current_timestamp "
                "WHERE run_id = ?",
                [canonical_json(summary), run_id],
            )

    # --- reading runs ----------------------------------------------------------------------
    def run(self, run_id: int) -> dict[str, Any]:
        with self.connect() as con:
            df = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df()
        if df.empty:
            raise StudioError(f"no run {run_id} in {self.path}")
        return _run_record(df.iloc[0].to_dict())

    def list_runs(self, *, dataset: str | None = None, step: str | None = None) -> pd.DataFrame:
        """Runs, newest first, with config/summary parsed into dicts."""
        with self.connect() as con:
            df = con.execute(
                "SELECT * FROM runs WHERE (? IS NULL OR dataset = ?) AND (? IS NULL OR step = ?) "
                "ORDER BY run_id DESC",
                [dataset, dataset, step, step],
            ).df()
        for col in ("config", "summary", "versions"):
            df[col] = [json.loads(v) if isinstance(v, str) else {} for v in df[col]]
        return df

    def latest_run(self, *, dataset: str, step: str, parent_run: int | None = None) -> int | None:
        """The newest finished run of a step (with that parent, when given)."""
        with self.connect() as con:
            row = con.execute(
                "SELECT max(run_id) FROM runs WHERE dataset = ? AND step = ? AND status = 'done' "
                "AND (? IS NULL OR parent_run = ?)",
                [dataset, step, parent_run, parent_run],
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def views(self, dataset: str, *, feature_run: int | None = None) -> Views:
        """The feature run (latest unless given) and the latest cluster/projection on it."""
        fr = feature_run or self.latest_run(dataset=dataset, step="featurize")
        if fr is None:
            return Views(None, None, None)
        return Views(
            fr,
            self.latest_run(dataset=dataset, step="cluster", parent_run=fr),
            self.latest_run(dataset=dataset, step="project", parent_run=fr),
            self.latest_run(dataset=dataset, step="dedup", parent_run=fr),
            self.score_runs(dataset, feature_run=fr),
        )

    def score_runs(self, dataset: str, *, feature_run: int) -> tuple[tuple[str, int], ...]:
        """(score name, run id) of the newest finished probe run of each name, by name."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT json_extract_string(config, '$.name') AS name, max(run_id) FROM runs "
                "WHERE dataset = ? AND step = 'probe' AND status = 'done' AND parent_run = ? "
                "GROUP BY name ORDER BY name",
                [dataset, feature_run],
            ).fetchall()
        return tuple((str(r[0]), int(r[1])) for r in rows if r[0] is not None)

    # --- features ------------------------------------------------------------------------
    def done_example_ids(self, run_id: int) -> set[str]:
        """Examples a (possibly interrupted) feature run already committed."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT example_id FROM features WHERE run_id = ?", [run_id]
            ).fetchall()
        return {r[0] for r in rows}

    def write_feature_chunk(
        self, run_id: int, *, chunk: pa.Table, stats: pd.DataFrame, top_tokens: pd.DataFrame
    ) -> None:
        """Commit one chunk of features with the run's running token statistics, atomically:
        after a crash the stored stats always match the stored features."""
        with self.transaction() as con:
            con.register("_chunk", chunk)
            # the dense baseline column exists from schema 4; a chunk carries it with --dense
            dense = "dense" in chunk.column_names
            if dense and self._version(con) < 4:
                raise StudioError(f"database {self.path} predates dense vectors: run migrate")
            con.execute(*sql.insert_features("_chunk", run_id=run_id, dense=dense))
            con.execute("DELETE FROM feature_stats WHERE run_id = ?", [run_id])
            con.execute("DELETE FROM feature_top_tokens WHERE run_id = ?", [run_id])
            con.register("_stats", stats)
            con.execute(
                "INSERT INTO feature_stats SELECT ?, feature_id, n_fire, sum_act, max_act "
                "FROM _stats",
                [run_id],
            )
            con.register("_top", top_tokens)
            # char spans when the frame carries them; a file still on schema 1 has no span columns
            has_spans = {"char_start", "char_end"} <= set(top_tokens.columns)
            con.execute(
                *sql.insert_top_tokens(
                    "_top", run_id=run_id, span_columns=self._version(con) >= 2, has_spans=has_spans
                )
            )

    def feature_totals(self, run_id: int) -> dict[str, int]:
        """Examples, kept tokens and truncated examples stored for a feature run."""
        with self.connect() as con:
            row = con.execute(
                "SELECT count(*), coalesce(sum(n_tokens), 0), "
                "coalesce(sum(CAST(truncated AS INTEGER)), 0) FROM features WHERE run_id = ?",
                [run_id],
            ).fetchone()
        assert row is not None
        return {"n_examples": int(row[0]), "n_tokens": int(row[1]), "n_truncated": int(row[2])}

    def features(self, run_id: int) -> pa.Table:
        """example_id, n_tokens, truncated, feature_ids, vals of a run, in ingest order."""
        with self.connect() as con:
            return con.sql(
                "SELECT f.example_id, f.n_tokens, f.truncated, f.feature_ids, f.vals "
                "FROM features f JOIN runs r ON r.run_id = f.run_id "
                "JOIN examples e ON e.dataset = r.dataset AND e.id = f.example_id "
                "WHERE f.run_id = ? ORDER BY e.idx",
                params=[run_id],
            ).to_arrow_table()

    def feature_stats(self, run_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(stats, top_tokens) frames as written by the last committed chunk; top_tokens carries
        char_start / char_end with -1 where unknown (as TokenStats.to_frames writes them)."""
        with self.connect() as con:
            stats = con.execute(
                "SELECT feature_id, n_fire, sum_act, max_act FROM feature_stats WHERE run_id = ? "
                "ORDER BY feature_id",
                [run_id],
            ).df()
            top = con.execute(
                "SELECT feature_id, rank, example_id, token, value, "
                f"{sql.spans(present=self._version(con) >= 2)} "
                "FROM feature_top_tokens t WHERE run_id = ? ORDER BY feature_id, rank",
                [run_id],
            ).df()
        return stats, top

    # --- reading the features: per-feature statistics, top examples, descriptions ----------
    def feature_summary(self, run_id: int) -> pd.DataFrame:
        """One row per feature that fired in a run, computed in one pass over the stored lists.

        Columns: feature_id; n_topk and freq (examples whose stored top-k holds the feature, as a
        count and a share of the run's examples); mean_act and max_act (its pooled value over
        those examples); n_fire, fire_rate, mean_fired and max_token_act (from feature_stats:
        pooled > 0 over all d_sae features before the top-k cut, sum_act / n_fire, and the
        largest single-token activation); tokens (its distinct top tokens, strongest first);
        description and source (imported descriptions, NULL where none).
        """
        with self.connect() as con:
            text, params = sql.feature_summary(run_id, descriptions=self._version(con) >= 2)
            return con.execute(text, params).df()

    def feature_top_examples(
        self, run_id: int, *, feature_ids: Sequence[int] | None = None, per_feature: int = 10
    ) -> pd.DataFrame:
        """The examples with the largest pooled value of each feature (all features, or only
        ``feature_ids``), in one pass over the list columns — no index, no Python loop.

        Columns: feature_id, rank (0 = strongest), example_id, value, prompt, text.
        """
        fids = None if feature_ids is None else [int(f) for f in feature_ids]
        with self.connect() as con:
            return con.execute(
                """
                WITH pick AS (SELECT CAST(? AS INTEGER[]) AS fids),
                hits AS (
                    -- unnest then filter: far faster in DuckDB than list_has_any on the lists
                    SELECT example_id, unnest(feature_ids) AS feature_id, unnest(vals) AS value
                    FROM features WHERE run_id = ?
                ),
                ranked AS (
                    SELECT feature_id, example_id, value,
                           row_number() OVER (PARTITION BY feature_id
                                              ORDER BY value DESC, example_id) - 1 AS rank
                    FROM hits, pick
                    WHERE pick.fids IS NULL OR list_contains(pick.fids, hits.feature_id)
                    QUALIFY rank < ?
                )
                SELECT r.feature_id, r.rank, r.example_id, r.value, e.prompt, e.text
                FROM ranked r JOIN runs ON runs.run_id = ?
                LEFT JOIN examples e ON e.dataset = runs.dataset AND e.id = r.example_id
                ORDER BY r.feature_id, r.rank
                """,
                [fids, run_id, per_feature, run_id],
            ).df()

    def feature_activations(self, run_id: int, feature_id: int) -> np.ndarray:
        """The feature's pooled value in every example whose stored top-k holds it."""
        with self.connect() as con:
            df = con.execute(
                "SELECT vals[list_position(feature_ids, ?)] AS value FROM features "
                "WHERE run_id = ? AND list_contains(feature_ids, ?)",
                [feature_id, run_id, feature_id],
            ).df()
        return df["value"].to_numpy(dtype=np.float64)

    def feature_tokens(
        self, run_id: int, *, feature_ids: Sequence[int] | None = None, with_text: bool = False
    ) -> pd.DataFrame:
        """Top token occurrences (feature_id, rank, example_id, token, value, char_start,
        char_end, and the example's text when ``with_text``) of a run's features, or of
        ``feature_ids``; spans are NULL where unknown."""
        fids = None if feature_ids is None else [int(f) for f in feature_ids]
        with self.connect() as con:
            text, params = sql.feature_tokens(
                run_id, fids, span_columns=self._version(con) >= 2, with_text=with_text
            )
            return con.execute(text, params).df()

    def example_features(self, run_id: int, example_ids: Sequence[str]) -> pd.DataFrame:
        """The features of one example (its stored top-k) or, over several, how many of them
        hold each feature. Columns: feature_id, n_examples, mean_value, max_value (strongest
        first; for one example mean_value is its pooled value)."""
        with self.connect() as con:
            con.register("_ids", pa.table({"id": pa.array(list(example_ids), pa.string())}))
            return con.execute(
                """
                WITH hits AS (
                    SELECT example_id, unnest(feature_ids) AS feature_id, unnest(vals) AS value
                    FROM features WHERE run_id = ? AND example_id IN (SELECT id FROM _ids)
                )
                SELECT feature_id, count(*) AS n_examples, avg(value) AS mean_value,
                       max(value) AS max_value
                FROM hits GROUP BY feature_id
                ORDER BY n_examples DESC, mean_value DESC, feature_id
                """,
                [run_id],
            ).df()

    def find_examples(self, dataset: str, query: str, *, limit: int = 50) -> pd.DataFrame:
        """Examples whose id equals ``query`` (first) or whose text contains it, ignoring case.
        Columns: id, idx, prompt, text."""
        with self.connect() as con:
            return con.execute(
                "SELECT id, idx, prompt, text FROM examples WHERE dataset = ? "
                "AND (contains(lower(id), lower(?)) OR contains(lower(text), lower(?))) "
                "ORDER BY (lower(id) = lower(?)) DESC, idx LIMIT ?",
                [dataset, query, query, query, limit],
            ).df()

    def write_descriptions(self, run_id: int, descriptions: dict[int, str], *, source: str) -> int:
        """Replace the run's feature descriptions in one transaction; returns how many."""
        self.migrate()
        table = pa.table(
            {
                "feature_id": pa.array(list(descriptions), pa.int32()),
                "description": pa.array(list(descriptions.values()), pa.string()),
            }
        )
        with self.transaction() as con:
            con.execute("DELETE FROM feature_descriptions WHERE run_id = ?", [run_id])
            con.register("_d", table)
            con.execute(
                "INSERT INTO feature_descriptions SELECT ?, feature_id, description, ? FROM _d",
                [run_id, source],
            )
        return table.num_rows

    def descriptions(self, run_id: int) -> dict[int, str]:
        """Imported feature descriptions of a feature run (empty on a pre-v2 file)."""
        with self.connect() as con:
            if self._version(con) < 2:
                return {}
            rows = con.execute(
                "SELECT feature_id, description FROM feature_descriptions WHERE run_id = ?",
                [run_id],
            ).fetchall()
        return {int(f): str(d) for f, d in rows}

    def dense_vectors(self, run_id: int) -> tuple[list[str], np.ndarray] | None:
        """(example ids in ingest order, [n, d_model] float32) of the dense baseline stored by
        ``featurize --dense``; None when the run has none."""
        with self.connect() as con:
            if self._version(con) < 4:
                return None
            tbl = con.sql(
                "SELECT f.example_id, f.dense FROM features f JOIN runs r ON r.run_id = f.run_id "
                "JOIN examples e ON e.dataset = r.dataset AND e.id = f.example_id "
                "WHERE f.run_id = ? AND f.dense IS NOT NULL ORDER BY e.idx",
                params=[run_id],
            ).to_arrow_table()
        if tbl.num_rows == 0:
            return None
        col = tbl.column("dense").combine_chunks()
        width = len(col[0])
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        if flat.size != width * tbl.num_rows:
            raise StudioError(f"feature run {run_id}: dense vectors of different widths")
        return tbl.column("example_id").to_pylist(), flat.reshape(tbl.num_rows, width)

    # --- signals: probes, marks, rollouts ----------------------------------------------------
    def probe_scores(self, run_id: int) -> pd.DataFrame:
        """example_id, value, oof of a probe run, in ingest order."""
        with self.connect() as con:
            return con.execute(
                "SELECT s.example_id, s.value, s.oof FROM probe_scores s "
                "JOIN runs r ON r.run_id = s.run_id "
                "JOIN examples e ON e.dataset = r.dataset AND e.id = s.example_id "
                "WHERE s.run_id = ? ORDER BY e.idx",
                [run_id],
            ).df()

    def set_labels(self, dataset: str, name: str, values: pa.Table) -> int:
        """Set one label for some examples (``values``: example_id, value; a NULL value removes
        the example's label), e.g. the good/bad marks made in the app. Unknown ids are an
        error and nothing is written. Returns the number of rows given."""
        self.migrate()
        with self.transaction() as con:
            con.register("_v", values)
            row = con.execute(
                "SELECT any_value(v.example_id), count(*) FROM _v v "
                "LEFT JOIN examples e ON e.dataset = ? AND e.id = v.example_id WHERE e.id IS NULL",
                [dataset],
            ).fetchone()
            if row and row[1]:
                raise StudioError(
                    f"dataset '{dataset}' has no example '{row[0]}' ({row[1]} unknown ids)"
                )
            con.execute(
                "DELETE FROM labels WHERE dataset = ? AND name = ? "
                "AND example_id IN (SELECT example_id FROM _v)",
                [dataset, name],
            )
            con.execute(
                "INSERT INTO labels SELECT ?, example_id, ?, value FROM _v WHERE value IS NOT NULL",
                [dataset, name],
            )
        return values.num_rows

    def write_rollouts(
        self,
        *,
        dataset: str,
        rollouts: pa.Table,
        labels: pa.Table,
        config: dict[str, Any],
        versions: dict[str, str],
        summary: dict[str, Any],
    ) -> int:
        """Replace a dataset's rollouts (example_id, sample_idx, passed) and the labels derived
        from them (example_id, name, value: pass_rate, pass@k, zero_signal ...) in one
        transaction, recorded as a 'rollouts' run."""
        names = sorted(set(labels.column("name").to_pylist()))
        # its rows belong to the dataset, not the run (a new import replaces them), so this is
        # not an add_run step
        record = RunRecord("rollouts", dataset, config, versions, summary)
        with self._finished_run(record) as (con, rid):
            con.execute("DELETE FROM rollouts WHERE dataset = ?", [dataset])
            con.register("_r", rollouts)
            con.execute(
                "INSERT INTO rollouts SELECT ?, example_id, sample_idx, passed, ? FROM _r",
                [dataset, str(config.get("source", ""))],
            )
            for name in names:
                con.execute("DELETE FROM labels WHERE dataset = ? AND name = ?", [dataset, name])
            con.register("_l", labels)
            con.execute("INSERT INTO labels SELECT ?, example_id, name, value FROM _l", [dataset])
        return rid

    def feature_runs(self) -> pd.DataFrame:
        """Finished feature runs with model, layer, SAE, pooling and counts, for the Overview."""
        runs = self.list_runs(step="featurize")
        rows = []
        for rec in runs.to_dict("records"):
            cfg, summ = rec["config"], rec["summary"]
            rows.append(
                {
                    "run": rec["run_id"],
                    "dataset": rec["dataset"],
                    "status": rec["status"],
                    "model": cfg.get("model"),
                    "layer": cfg.get("layer"),
                    "hook": cfg.get("hook"),
                    "sae": cfg.get("sae"),
                    "d_sae": summ.get("d_sae"),
                    "pooling": cfg.get("pooling"),
                    "top_k": cfg.get("top_k"),
                    "examples": summ.get("n_examples"),
                    "tokens": summ.get("n_tokens"),
                    "finished": rec["finished_at"],
                }
            )
        return pd.DataFrame(rows)

    # --- rewards: reward models, imported scores, verifiers --------------------------------------
    def reward_candidates(self, dataset: str) -> pa.Table:
        """What a reward source scores, in ingest order: example_id, response_idx, role, prompt,
        response, messages.

        preferences: every response (0 = chosen, 1.. = rejected; ``messages`` NULL); chats: one
        row per example with response_idx -1, role "response", ``response`` NULL and the chat's
        validated turns as JSON text in ``messages`` (the caller picks the turn to score);
        prompts: no rows, as a prompt carries no response."""
        kind = self.dataset(dataset)["kind"]
        with self.connect() as con:
            if kind == "chats":
                return con.sql(
                    "SELECT id AS example_id, CAST(-1 AS INTEGER) AS response_idx, "
                    "'response' AS role, prompt, CAST(NULL AS VARCHAR) AS response, "
                    "CAST(json_extract(extra, '$.messages') AS VARCHAR) AS messages "
                    "FROM examples WHERE dataset = ? ORDER BY idx",
                    params=[dataset],
                ).to_arrow_table()
            return con.sql(
                "SELECT r.example_id, r.response_idx, r.role, e.prompt, r.text AS response, "
                "CAST(NULL AS VARCHAR) AS messages FROM responses r JOIN examples e "
                "ON e.dataset = r.dataset AND e.id = r.example_id WHERE r.dataset = ? "
                "ORDER BY e.idx, r.response_idx",
                params=[dataset],
            ).to_arrow_table()

    def write_reward_chunk(self, run_id: int, chunk: pa.Table, *, source: str) -> None:
        """Commit one chunk of a reward run's scores (``REWARD_SCHEMA``) in one transaction:
        after a crash a chunk is stored whole or not at all."""
        check_columns(REWARD_SCORES, chunk)
        with self.transaction() as con:
            con.register("_rw", chunk)
            con.execute(*sql.insert_run_rows(REWARD_SCORES, "_rw", run_id=run_id, source=source))

    def done_reward_keys(self, run_id: int) -> set[tuple[str, int]]:
        """(example_id, response_idx) a (possibly interrupted) reward run already committed."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT example_id, response_idx FROM reward_scores WHERE run_id = ?", [run_id]
            ).fetchall()
        return {(str(r[0]), int(r[1])) for r in rows}

    def reward_totals(self, run_id: int) -> dict[str, Any]:
        """Scores, examples and truncated texts stored for a reward run, and the scores' mean,
        standard deviation, min and max (None without scores)."""
        with self.connect() as con:
            row = con.execute(
                "SELECT count(*), count(DISTINCT example_id), "
                "coalesce(sum(CAST(truncated AS INTEGER)), 0), avg(value), stddev_pop(value), "
                "min(value), max(value) FROM reward_scores WHERE run_id = ?",
                [run_id],
            ).fetchone()
        assert row is not None
        keys = ("n_scores", "n_examples", "n_truncated", "mean", "std", "min", "max")
        out: dict[str, Any] = dict(zip(keys, row, strict=True))
        for k in ("n_scores", "n_examples", "n_truncated"):
            out[k] = int(out[k])
        return out

    def reward_runs(self, dataset: str) -> dict[str, int]:
        """Reward name -> its newest finished reward run, by name."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT json_extract_string(config, '$.name') AS name, max(run_id) FROM runs "
                "WHERE dataset = ? AND step = ? AND status = 'done' GROUP BY name ORDER BY name",
                [dataset, REWARD_STEP],
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows if r[0] is not None}

    def reward_scores(self, run_id: int) -> pa.Table:
        """example_id, response_idx, role ('chosen', 'rejected', or 'response' for -1), value,
        logits, truncated, source of a reward run, in ingest order then response_idx (no rows
        on a file from before schema 5)."""
        with self.connect() as con:
            if self._version(con) < 5:
                empty = REWARD_SCHEMA.insert(2, pa.field("role", pa.string()))
                return empty.append(pa.field("source", pa.string())).empty_table()
            return con.sql(
                "SELECT s.example_id, s.response_idx, "
                "coalesce(rs.role, CASE WHEN s.response_idx = -1 THEN 'response' END) AS role, "
                "s.value, s.logits, s.truncated, s.source FROM reward_scores s "
                "JOIN runs r ON r.run_id = s.run_id "
                "JOIN examples e ON e.dataset = r.dataset AND e.id = s.example_id "
                "LEFT JOIN responses rs ON rs.dataset = r.dataset "
                "AND rs.example_id = s.example_id AND rs.response_idx = s.response_idx "
                "WHERE s.run_id = ? ORDER BY e.idx, s.response_idx",
                params=[run_id],
            ).to_arrow_table()

    def unknown_reward_keys(self, dataset: str, keys: pa.Table) -> pa.Table:
        """The rows of ``keys`` (example_id, response_idx) that name nothing a reward can score
        in the dataset: a response of a preference set, or (-1) an example of another kind."""
        kind = self.dataset(dataset)["kind"]
        with self.connect() as con:
            con.register("_k", keys.select(["example_id", "response_idx"]))
            return con.sql(
                "WITH known AS (SELECT example_id, response_idx FROM responses WHERE dataset = ? "
                "UNION ALL SELECT id, -1 FROM examples WHERE dataset = ? AND ? <> 'preferences') "
                "SELECT k.example_id, k.response_idx FROM _k k ANTI JOIN known n "
                "ON n.example_id = k.example_id AND n.response_idx = k.response_idx",
                params=[dataset, dataset, kind],
            ).to_arrow_table()

    def reward_frames(
        self, dataset: str, names: Sequence[str] | None = None
    ) -> dict[str, pd.DataFrame]:
        """Reward name -> the newest run's scores as core.rewards reads them (``value`` named
        ``score``), for ``names`` (default: every source, by name); an unknown name is one line
        listing the sources there are."""
        runs = self.reward_runs(dataset)
        names = list(names) if names else sorted(runs)
        missing = [n for n in names if n not in runs]
        if missing:
            raise StudioError(
                f"dataset '{dataset}' has no reward scores named {missing[0]!r}; it has: "
                f"{', '.join(sorted(runs)) or 'none (run reward, verify or import-rewards)'}"
            )
        return {
            n: self.reward_scores(runs[n]).to_pandas().rename(columns={"value": "score"})
            for n in names
        }

    def reward_source(self, run_id: int) -> str | None:
        """What produced a reward run's scores, as stored with them (None without scores)."""
        with self.connect() as con:
            row = con.execute(
                "SELECT source FROM reward_scores WHERE run_id = ? LIMIT 1", [run_id]
            ).fetchone()
        return None if row is None else row[0]

    def import_reward_scores(
        self,
        *,
        dataset: str,
        name: str,
        path: str,
        scores: pa.Table,
        versions: dict[str, str],
        column: str = "score",
    ) -> int:
        """Scores read from a file (``REWARD_SCHEMA``; logits and truncated NULL) as a finished
        reward run named ``name``, with source ``imported: FILE``. Returns the run id."""
        source = f"imported: {path}"
        config = {"name": name, "source": source, "column": column}
        summary = {"n_scores": scores.num_rows, "source": source}
        record = RunRecord(REWARD_STEP, dataset, config, versions, summary, source=source)
        return self.add_run(record, scores=scores)

    # --- clusters and projections ----------------------------------------------------------
    def duplicate_groups(self, run_id: int, *, limit: int = 200) -> pd.DataFrame:
        """The largest near-duplicate groups: group_id, size, and the representative's id and
        prompt."""
        with self.connect() as con:
            return con.execute(
                "SELECT g.group_id, count(*) AS size, "
                "any_value(g.example_id) FILTER (WHERE g.is_representative) AS representative, "
                "any_value(e.prompt) FILTER (WHERE g.is_representative) AS prompt "
                "FROM duplicate_groups g JOIN runs r ON r.run_id = g.run_id "
                "JOIN examples e ON e.dataset = r.dataset AND e.id = g.example_id "
                "WHERE g.run_id = ? GROUP BY g.group_id ORDER BY size DESC, g.group_id LIMIT ?",
                [run_id, limit],
            ).df()

    def cluster_summary(self, dataset: str, *, views: Views) -> pd.DataFrame:
        """The clusters of ``views.cluster_run`` with their size, label, top features, the mean of
        every numeric label and probe score (``mean_<name>``) and, with a dedup run, their extra copies
        (``n_duplicates``)."""
        if views.cluster_run is None:
            return pd.DataFrame()
        clusters = self.clusters(views.cluster_run)
        with self.connect() as con:
            means = con.execute(
                "SELECT ca.cluster, l.name, avg(l.value) AS mean FROM cluster_assignments ca "
                "JOIN labels l ON l.dataset = ? AND l.example_id = ca.example_id "
                "WHERE ca.run_id = ? GROUP BY ca.cluster, l.name",
                [dataset, views.cluster_run],
            ).df()
            labelled = set(means["name"]) if not means.empty else set()
            for name, rid in views.score_runs:
                if name in labelled:
                    continue
                scores = con.execute(
                    "SELECT ca.cluster, ? AS name, avg(s.value) AS mean "
                    "FROM cluster_assignments ca JOIN probe_scores s "
                    "ON s.run_id = ? AND s.example_id = ca.example_id "
                    "WHERE ca.run_id = ? GROUP BY ca.cluster",
                    [name, rid, views.cluster_run],
                ).df()
                means = scores if means.empty else pd.concat([means, scores], ignore_index=True)
            # a dedup run implies schema v3; an older file has no duplicate_groups table
            dups = (
                con.execute(
                    "SELECT ca.cluster, count(*) AS n_duplicates FROM cluster_assignments ca "
                    "JOIN duplicate_groups g ON g.run_id = ? AND g.example_id = ca.example_id "
                    "WHERE ca.run_id = ? AND NOT g.is_representative GROUP BY ca.cluster",
                    [views.dedup_run, views.cluster_run],
                ).df()
                if views.dedup_run is not None
                else None
            )
        if not means.empty:
            wide = means.pivot(index="cluster", columns="name", values="mean")
            wide.columns = [f"mean_{c}" for c in wide.columns]
            clusters = clusters.merge(wide, how="left", left_on="cluster", right_index=True)
        if dups is not None:
            clusters = clusters.merge(dups, how="left", on="cluster")
            clusters["n_duplicates"] = clusters["n_duplicates"].fillna(0).astype(int)
        return clusters

    def clusters(self, run_id: int) -> pd.DataFrame:
        with self.connect() as con:
            df = con.execute(
                "SELECT cluster, size, label, top_features FROM clusters WHERE run_id = ? "
                "ORDER BY cluster",
                [run_id],
            ).df()
        df["top_features"] = [json.loads(v) if v else [] for v in df["top_features"]]
        return df

    # --- the wide view: one row per example with cluster, xy, every label and tag -------------
    def tag_names(self, dataset: str) -> list[str]:
        """Names of the string tags (task, corruption, ...) the dataset's examples carry."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT DISTINCT unnest(json_keys(tags)) AS k FROM examples "
                "WHERE dataset = ? AND tags IS NOT NULL ORDER BY k",
                [dataset],
            ).fetchall()
        return [r[0] for r in rows]

    def tag_values(self, dataset: str, *, max_values: int = 50) -> pd.DataFrame:
        """(name, value, n) for every tag with at most ``max_values`` distinct values."""
        names = self.tag_names(dataset)
        frames = []
        with self.connect() as con:
            for name in names:
                df = con.execute(
                    "SELECT ? AS name, json_extract_string(tags, ?) AS value, count(*) AS n "
                    "FROM examples WHERE dataset = ? GROUP BY value ORDER BY value",
                    [name, sql.json_path(name), dataset],
                ).df()
                if len(df) <= max_values:
                    frames.append(df)
        if not frames:
            return pd.DataFrame({"name": [], "value": [], "n": []})
        return pd.concat(frames, ignore_index=True)

    def _columns(
        self, dataset: str, views: Views | None = None
    ) -> tuple[list[str], list[str], list[str]]:
        """(label names, score names, tag names) of a dataset; tags that clash with a column
        are left out, and so is a score that clashes with a label."""
        return sql.view_columns(self.label_names(dataset), views, self.tag_names(dataset))

    def filter_columns(self, dataset: str, *, views: Views) -> list[str]:
        """The columns a filter may name on this view (``feature:N`` aside): base columns, the
        dedup columns with a dedup run, probe scores, labels and tags."""
        labels, scores, tags = self._columns(dataset, views)
        dedup = list(DEDUP_COLUMNS) if views.dedup_run is not None else []
        return [*BASE_COLUMNS, *dedup, *scores, *labels, *tags]

    def wide(
        self,
        dataset: str,
        *,
        views: Views,
        filters: Sequence[Filter] = (),
        ids: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> pa.Table:
        """Examples of a dataset as one wide table (ingest order), filtered.

        Columns: id, idx, prompt, answer, text, tags, extra, cluster, x, y, (with a dedup run)
        dup_group, is_duplicate, then one column per probe score (difficulty_proxy ...), one
        per numeric label and one per string tag. ``filters`` are ANDed (each keeps or drops
        rows, see :class:`Filter`); ``ids`` keeps only those example ids (a map selection);
        ``columns`` restricts the output (default: all) and may name ``feature:N`` columns.
        """
        src = self._source(dataset, views, [*(f.column for f in filters), *(columns or ())])
        text, params = sql.filtered(src, filters, columns, ids=ids is not None)
        if limit is not None:
            text += " LIMIT ?"
            params.append(int(limit))
        return self._query_with_ids(text, params, ids)

    def count(
        self,
        dataset: str,
        *,
        views: Views,
        filters: Sequence[Filter] = (),
        ids: Sequence[str] | None = None,
    ) -> int:
        return self.wide(dataset, views=views, filters=filters, ids=ids, columns=["id"]).num_rows

    def rule_hits(
        self,
        dataset: str,
        *,
        views: Views,
        filters: Sequence[Filter],
        ids: Sequence[str] | None = None,
        columns: Sequence[str] = ("cluster",),
    ) -> pa.Table:
        """Which rule removes which row, in one query: one row per example (ingest order) with
        id, ``columns``, and a boolean ``r0, r1, ...`` per filter, True where that filter
        removes the row on its own; with ``ids`` also ``r_sel``, True outside the selection.

        A row survives all the rules exactly when every ``r*`` is False, so the rows
        ``wide(filters=..., ids=...)`` returns are the rows with no hit."""
        cols = [c for c in columns if c != "id"]
        src = self._source(dataset, views, [*(f.column for f in filters), *cols])
        text, params = sql.rule_hits(src, filters, cols, ids=ids is not None)
        return self._query_with_ids(text, params, ids)

    def _query_with_ids(self, text: str, params: list[Any], ids: Sequence[str] | None) -> pa.Table:
        """Run a query over the wide view, with ``ids`` registered as ``_ids`` when given."""
        with self.connect() as con:
            if ids is not None:
                con.register("_ids", pa.table({"id": pa.array(list(ids), pa.string())}))
            return con.sql(text, params=params).to_arrow_table()

    def _source(self, dataset: str, views: Views, refs: Sequence[str]) -> WideSource:
        """The wide view as ``FROM (...) w``, joined to the feature run's stored features when
        ``refs`` (the columns filters and the select list name) include a ``feature:N``; the
        feature run's SAE width bounds N."""
        d_sae = None
        if views.feature_run is not None and sql.feature_refs(refs):
            width = self.run(views.feature_run)["summary"].get("d_sae")
            d_sae = int(width) if width is not None else None
        columns = self._columns(dataset, views)
        return sql.wide_source(dataset, views, columns, refs, d_sae=d_sae)

    def map_points(self, dataset: str, *, views: Views, top_n: int = 3) -> pd.DataFrame:
        """What the Map draws: id, x, y, cluster, prompt, every label, and a 'top_features'
        string of the example's strongest features with their top tokens."""
        wide = self.wide(dataset, views=views).to_pandas()
        wide = wide.drop(columns=["text", "extra"])
        if views.feature_run is None or wide.empty:
            wide["top_features"] = ""
            return wide
        with self.connect() as con:
            tops = con.execute(
                """
                WITH f AS (
                    SELECT example_id, unnest(list_slice(feature_ids, 1, ?)) AS fid,
                           unnest(list_slice(vals, 1, ?)) AS v,
                           generate_subscripts(list_slice(feature_ids, 1, ?), 1) AS pos
                    FROM features WHERE run_id = ?
                ), names AS (
                    SELECT feature_id, string_agg(token, ' ' ORDER BY rank) AS toks
                    FROM (SELECT feature_id, token, min(rank) AS rank FROM feature_top_tokens
                          WHERE run_id = ? AND rank < 12 GROUP BY feature_id, token)
                    GROUP BY feature_id
                )
                SELECT example_id,
                       string_agg('f' || fid || ' ' || printf('%.3f', v) || ' [' ||
                                  coalesce(array_to_string(list_slice(string_split(toks, ' '), 1, 4), ' '), '')
                                  || ']', '<br>' ORDER BY pos) AS top_features
                FROM f LEFT JOIN names ON names.feature_id = f.fid
                GROUP BY example_id
                """,
                [top_n, top_n, top_n, views.feature_run, views.feature_run],
            ).df()
        out = wide.merge(tops, how="left", left_on="id", right_on="example_id")
        out = out.drop(columns=["example_id"])
        out["top_features"] = out["top_features"].fillna("")
        return out

    # --- exports -------------------------------------------------------------------------
    def export_chunks(
        self,
        dataset: str,
        *,
        views: Views,
        plan: pa.Table,
        chunk_rows: int = 65_536,
    ) -> Iterator[pa.Table]:
        """The rows of an export in written order, as Arrow chunks of ``chunk_rows``.

        ``plan`` is (idx int64, position int64, batch int64 or null[, rejected_idx int64]):
        which examples go out and where; with ``rejected_idx`` (trl-preference), an example
        appears once per planned pair row, ``rejected`` is that pair's rejected response (text,
        not the list). Columns: id, idx, prompt, answer, cluster, (dup_group, is_duplicate), scores,
        labels, tags, every field kept only in ``extra`` (JSON text, e.g. a chat's messages),
        for preference data ``chosen`` and ``rejected`` (a list), for a responses dataset
        ``response``, then position and batch.
        Only one chunk is in Python at a time; DuckDB sorts within the store's memory cap
        (:meth:`capped`), spilling to disk beyond it.
        """
        columns = self._columns(dataset, views)
        kind = self.dataset(dataset)["kind"]
        with self.connect() as con:
            keys = con.execute(
                "SELECT DISTINCT unnest(json_keys(extra)) AS k FROM examples WHERE dataset = ? "
                "ORDER BY k",
                [dataset],
            ).fetchall()
            text, params = sql.export_rows(
                dataset,
                views=views,
                kind=kind,
                columns=columns,
                extra_keys=[str(k[0]) for k in keys],
                pairs="rejected_idx" in plan.column_names,
            )
            con.register("_plan", plan)
            reader = con.sql(text, params=params).to_arrow_reader(chunk_rows)
            empty = True
            for batch in reader:
                empty = False
                yield pa.Table.from_batches([batch])
            if empty:  # the caller still needs the columns
                yield reader.schema.empty_table()

    def record_export(
        self, *, dataset: str, path: str, fmt: str, n_rows: int, manifest: dict[str, Any]
    ) -> None:
        with self.transaction() as con:
            con.execute(
                "INSERT INTO exports (dataset, path, format, n_rows, manifest) "
                "VALUES (?, ?, ?, ?, ?)",
                [dataset, path, fmt, n_rows, canonical_json(manifest)],
            )

    def list_exports(self, dataset: str | None = None) -> pd.DataFrame:
        with self.connect() as con:
            return con.execute(
                "SELECT dataset, path, format, n_rows, created_at FROM exports "
                "WHERE ? IS NULL OR dataset = ? ORDER BY created_at DESC",
                [dataset, dataset],
            ).df()

    # --- health (python -m core doctor) -------------------------------------------------
    def health(self) -> dict[str, Any]:
        """What ``doctor`` checks inside the file, read-only: the schema version, rows whose
        run or dataset is gone (orphans, per table), runs not finished (still running or
        interrupted), datasets whose recorded size differs from their rows, and the paths the
        runs and exports point at (SAE folders, export files), for checks on disk."""
        with self.connect() as con:
            version = self._version(con)
            out: dict[str, Any] = {"schema_version": version, "orphans": {}}
            if version == 0:
                return out
            # an older schema lacks the newer tables
            for table, text in sql.orphan_counts(set(_table_names(con))):
                n = con.execute(text).fetchall()[0][0]
                if n:
                    out["orphans"][table] = int(n)
            out["unfinished_runs"] = con.execute(
                "SELECT run_id, step, dataset, started_at FROM runs WHERE status <> 'done' "
                "ORDER BY run_id"
            ).df()
            out["size_mismatches"] = con.execute(
                "SELECT d.name, d.n_examples, count(e.id) AS n_rows FROM datasets d "
                "LEFT JOIN examples e ON e.dataset = d.name GROUP BY d.name, d.n_examples "
                "HAVING count(e.id) <> d.n_examples ORDER BY d.name"
            ).df()
            out["sae_runs"] = con.execute(
                "SELECT run_id, dataset, json_extract_string(summary, '$.path') AS path "
                "FROM runs WHERE step = 'train-sae' AND status = 'done' ORDER BY run_id"
            ).df()
            out["feature_runs"] = con.execute(
                "SELECT run_id, dataset, json_extract_string(config, '$.sae') AS sae "
                "FROM runs WHERE step = 'featurize' ORDER BY run_id"
            ).df()
            out["exports"] = con.execute(
                "SELECT dataset, path, created_at FROM exports ORDER BY created_at"
            ).df()
        return out


def _run_record(rec: dict[str, Any]) -> dict[str, Any]:
    for col in ("config", "summary", "versions"):
        v = rec.get(col)
        rec[col] = json.loads(v) if isinstance(v, str) else {}
    return rec
