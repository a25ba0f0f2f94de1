"""The DuckDB store: the one module that owns the schema, its migrations and every SQL statement.

Everything else calls the typed methods of :class:`Store`. Values always travel as parameters;
the only identifiers built into SQL text are label names, which are quoted by :func:`quote_ident`.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import StudioError
from core.filters import LIST_OPS, OPERATORS, Filter, feature_index

Kind = Literal["prompts", "preferences", "chats", "responses"]
# A responses dataset is derived from a preference set (see Store.write_responses_dataset): one
# example per response, named "<dataset>.responses"
RESPONSES_SUFFIX = ".responses"


DDL_V1 = """
CREATE TABLE datasets (
    name VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    source VARCHAR,
    n_examples BIGINT NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp
);
-- One row per example of every kind. text is what gets featurized.
CREATE TABLE examples (
    dataset VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    idx BIGINT NOT NULL,
    prompt VARCHAR,
    answer VARCHAR,
    text VARCHAR NOT NULL,
    tags VARCHAR,
    extra VARCHAR
);
-- Numeric labels that came with the data (difficulty, pass_rate, quality, feedback ...).
CREATE TABLE labels (
    dataset VARCHAR NOT NULL,
    example_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    value DOUBLE
);
-- Responses of preference sets: one chosen, one or more rejected.
CREATE TABLE responses (
    dataset VARCHAR NOT NULL,
    example_id VARCHAR NOT NULL,
    response_idx INTEGER NOT NULL,
    role VARCHAR NOT NULL,
    text VARCHAR NOT NULL
);
-- Every pipeline step that produced data: its config, summary and package versions.
CREATE SEQUENCE run_ids START 1;
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY DEFAULT nextval('run_ids'),
    step VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    parent_run INTEGER,
    status VARCHAR NOT NULL,
    config VARCHAR NOT NULL,
    summary VARCHAR,
    versions VARCHAR,
    started_at TIMESTAMP DEFAULT current_timestamp,
    finished_at TIMESTAMP
);
-- Sparse SAE features: the top-k (feature, value) pairs per example, as lists.
CREATE TABLE features (
    run_id INTEGER NOT NULL,
    example_id VARCHAR NOT NULL,
    n_tokens INTEGER,
    truncated BOOLEAN,
    feature_ids INTEGER[],
    vals FLOAT[]
);
CREATE TABLE feature_stats (
    run_id INTEGER NOT NULL,
    feature_id INTEGER NOT NULL,
    n_fire BIGINT,
    sum_act DOUBLE,
    max_act DOUBLE
);
CREATE TABLE feature_top_tokens (
    run_id INTEGER NOT NULL,
    feature_id INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    example_id VARCHAR,
    token VARCHAR,
    value FLOAT
);
CREATE TABLE clusters (
    run_id INTEGER NOT NULL,
    cluster INTEGER NOT NULL,
    size BIGINT NOT NULL,
    label VARCHAR,
    top_features VARCHAR
);
CREATE TABLE cluster_assignments (
    run_id INTEGER NOT NULL,
    example_id VARCHAR NOT NULL,
    cluster INTEGER NOT NULL
);
CREATE TABLE projections (
    run_id INTEGER NOT NULL,
    example_id VARCHAR NOT NULL,
    x FLOAT NOT NULL,
    y FLOAT NOT NULL
);
CREATE TABLE exports (
    dataset VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    format VARCHAR NOT NULL,
    n_rows BIGINT NOT NULL,
    manifest VARCHAR NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp
);
"""

# Feature descriptions (imported, e.g. from Neuronpedia) and the character span of each top token
# occurrence in its example's text (NULL where the featurizer did not know it).
DDL_V2 = """
CREATE TABLE feature_descriptions (
    run_id INTEGER NOT NULL,
    feature_id INTEGER NOT NULL,
    description VARCHAR NOT NULL,
    source VARCHAR
);
ALTER TABLE feature_top_tokens ADD COLUMN char_start INTEGER;
ALTER TABLE feature_top_tokens ADD COLUMN char_end INTEGER;
"""

# Near-duplicate groups of a dedup run: only examples that have a near copy get a row.
DDL_V3 = """
CREATE TABLE duplicate_groups (
    run_id INTEGER NOT NULL,
    example_id VARCHAR NOT NULL,
    group_id BIGINT NOT NULL,
    is_representative BOOLEAN NOT NULL
);
"""

# Signals: the dense baseline vector of an example (mean-pooled hidden state of the feature
# run's layer, only when featurize ran with --dense), per-example scores of a probe run (the
# final model's prediction for every example and, for labelled ones, the out-of-fold
# prediction the evidence is computed from), and raw rollout results.
DDL_V4 = """
ALTER TABLE features ADD COLUMN dense FLOAT[];
CREATE TABLE probe_scores (
    run_id INTEGER NOT NULL,
    example_id VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    oof DOUBLE
);
CREATE TABLE rollouts (
    dataset VARCHAR NOT NULL,
    example_id VARCHAR NOT NULL,
    sample_idx INTEGER NOT NULL,
    passed BOOLEAN NOT NULL,
    source VARCHAR
);
"""

# Reward scores of a reward run (step "reward": a reward model, imported scores, a verifier).
# One row per scored candidate: response_idx is the response of a preference set (0 = chosen,
# 1.. = rejected) or -1 for an example's single response (a chat's last assistant turn); logits
# are an ordinal head's raw outputs (NULL for a scalar head and imported scores); truncated is
# NULL where no model read the text.
DDL_V5 = """
CREATE TABLE reward_scores (
    run_id INTEGER NOT NULL,
    example_id VARCHAR NOT NULL,
    response_idx INTEGER NOT NULL,
    value DOUBLE NOT NULL,
    logits FLOAT[],
    truncated BOOLEAN,
    source VARCHAR
);
"""

# (version, name, ddl). Append new migrations; never edit an applied one.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial schema", DDL_V1),
    (2, "feature descriptions and token char spans", DDL_V2),
    (3, "near-duplicate groups", DDL_V3),
    (4, "dense baseline vectors, probe scores, rollouts", DDL_V4),
    (5, "reward scores", DDL_V5),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# A chunk of reward scores as write_reward_chunk and add_reward_run take it (and reward_scores
# returns it, with role added after response_idx).
REWARD_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("response_idx", pa.int32(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("logits", pa.list_(pa.float32())),
        pa.field("truncated", pa.bool_()),
    ]
)
REWARD_STEP = "reward"

# Tables whose rows belong to a run, and tables whose rows belong to a dataset (by name)
RUN_TABLES = (
    "features",
    "feature_stats",
    "feature_top_tokens",
    "feature_descriptions",
    "clusters",
    "cluster_assignments",
    "projections",
    "duplicate_groups",
    "probe_scores",
    "reward_scores",
)
DATASET_TABLES = ("examples", "labels", "responses", "runs", "exports", "rollouts")

# Columns of the wide example view that are not labels; filters may use these too.
BASE_COLUMNS = ("id", "idx", "prompt", "answer", "text", "cluster", "x", "y")
NUMERIC_BASE = ("idx", "cluster", "x", "y")
# Present only when the dataset has a dedup run: dup_group (NULL without a near copy) and
# is_duplicate (1 for the extra copies of a group, else 0; `--where is_duplicate=0` drops them).
DEDUP_COLUMNS = ("dup_group", "is_duplicate")


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (a label name): ``a"b`` -> ``"a""b"``."""
    return '"' + name.replace('"', '""') + '"'


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, so equal configs compare equal as strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Views:
    """The runs a view of a dataset is built from (None where the step has not run)."""

    feature_run: int | None
    cluster_run: int | None
    projection_run: int | None
    dedup_run: int | None = None
    # (score name, probe run) of the latest probe run per name on the feature run: each adds a
    # numeric column of that name (e.g. difficulty_proxy) to the wide view
    score_runs: tuple[tuple[str, int], ...] = ()


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
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, "
                "name VARCHAR, applied_at TIMESTAMP DEFAULT current_timestamp)"
            )
            row = con.execute("SELECT max(version) FROM schema_version").fetchone()
            current = (row[0] if row else None) or 0
            if current > SCHEMA_VERSION:
                raise StudioError(
                    f"database {self.path} has schema version {current}, newer than this "
                    f"tool's {SCHEMA_VERSION}: upgrade SAERL Studio"
                )
            for version, name, ddl in MIGRATIONS:
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
        if version > SCHEMA_VERSION:
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
            self._delete_dataset(con, name)

    @staticmethod
    def _delete_dataset(con: duckdb.DuckDBPyConnection, name: str) -> None:
        """Delete a dataset and everything computed from it, except its train-sae runs: they
        record an SAE folder on disk that feature runs of any dataset may read, so they stay
        as its provenance."""
        runs = "SELECT run_id FROM runs WHERE dataset = ? AND step <> 'train-sae'"
        for table in RUN_TABLES:
            con.execute(f"DELETE FROM {table} WHERE run_id IN ({runs})", [name])
        con.execute(f"DELETE FROM runs WHERE run_id IN ({runs})", [name])
        for table in DATASET_TABLES:
            if table != "runs":
                con.execute(f"DELETE FROM {table} WHERE dataset = ?", [name])
        con.execute("DELETE FROM datasets WHERE name = ?", [name])

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
    def start_run(
        self,
        *,
        step: str,
        dataset: str,
        config: dict[str, Any],
        versions: dict[str, str],
        parent_run: int | None = None,
        resume: bool = True,
    ) -> tuple[int, bool]:
        """A run for this step and config: the unfinished one with the same config when
        ``resume`` (returns ``(run_id, True)``), else a new one (``(run_id, False)``)."""
        self.migrate()
        cfg = canonical_json(config)
        with self.transaction() as con:
            if resume:
                row = con.execute(
                    "SELECT run_id FROM runs WHERE step = ? AND dataset = ? AND config = ? "
                    "AND status = 'running' ORDER BY run_id DESC LIMIT 1",
                    [step, dataset, cfg],
                ).fetchone()
                if row:
                    return int(row[0]), True
            row = con.execute(
                "INSERT INTO runs (step, dataset, parent_run, status, config, versions) "
                "VALUES (?, ?, ?, 'running', ?, ?) RETURNING run_id",
                [step, dataset, parent_run, cfg, canonical_json(versions)],
            ).fetchone()
        assert row is not None
        return int(row[0]), False

    def finish_run(self, run_id: int, *, summary: dict[str, Any]) -> None:
        with self.transaction() as con:
            con.execute(
                "UPDATE runs SET status = 'done', summary = ?, finished_at = current_timestamp "
                "WHERE run_id = ?",
                [canonical_json(summary), run_id],
            )

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
            con.execute(
                "INSERT INTO features (run_id, example_id, n_tokens, truncated, feature_ids, "
                f"vals{', dense' if dense else ''}) SELECT ?, example_id, n_tokens, truncated, "
                f'feature_ids, "values"{", dense" if dense else ""} FROM _chunk',
                [run_id],
            )
            con.execute("DELETE FROM feature_stats WHERE run_id = ?", [run_id])
            con.execute("DELETE FROM feature_top_tokens WHERE run_id = ?", [run_id])
            con.register("_stats", stats)
            con.execute(
                "INSERT INTO feature_stats SELECT ?, feature_id, n_fire, sum_act, max_act "
                "FROM _stats",
                [run_id],
            )
            con.register("_top", top_tokens)
            # char spans when the frame carries them (-1 = unknown -> NULL), else NULL;
            # a file still on schema 1 has no span columns
            cols, spans = "", ""
            if self._version(con) >= 2:
                cols = ", char_start, char_end"
                has = {"char_start", "char_end"} <= set(top_tokens.columns)
                spans = ", nullif(char_start, -1), nullif(char_end, -1)" if has else ", NULL, NULL"
            con.execute(
                "INSERT INTO feature_top_tokens (run_id, feature_id, rank, example_id, token, "
                f"value{cols}) SELECT ?, feature_id, rank, example_id, token, value{spans} "
                "FROM _top",
                [run_id],
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
                f"SELECT feature_id, rank, example_id, token, value, {self._spans(con)} "
                "FROM feature_top_tokens t WHERE run_id = ? ORDER BY feature_id, rank",
                [run_id],
            ).df()
        return stats, top

    def _spans(self, con: duckdb.DuckDBPyConnection, *, unknown: str = "-1") -> str:
        """Select list for the char span columns of feature_top_tokens ``t`` (absent before v2)."""
        if self._version(con) >= 2:
            return (
                f"CAST(coalesce(t.char_start, {unknown}) AS INTEGER) AS char_start, "
                f"CAST(coalesce(t.char_end, {unknown}) AS INTEGER) AS char_end"
            )
        return f"CAST({unknown} AS INTEGER) AS char_start, CAST({unknown} AS INTEGER) AS char_end"

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
            v2 = self._version(con) >= 2
            desc = (
                "LEFT JOIN feature_descriptions d ON d.run_id = ? AND d.feature_id = ids.feature_id"
                if v2
                else ""
            )
            desc_cols = (
                "d.description, d.source"
                if v2
                else "NULL::VARCHAR AS description, NULL::VARCHAR AS source"
            )
            params: list[Any] = [run_id, run_id, run_id, run_id]
            if v2:
                params.append(run_id)
            return con.execute(
                f"""
                WITH n AS (SELECT count(*) AS n FROM features WHERE run_id = ?),
                hits AS (
                    SELECT unnest(feature_ids) AS feature_id, unnest(vals) AS v
                    FROM features WHERE run_id = ?
                ),
                agg AS (
                    SELECT feature_id, count(*) AS n_topk, avg(v) AS mean_act, max(v) AS max_act
                    FROM hits GROUP BY feature_id
                ),
                st AS (SELECT * FROM feature_stats WHERE run_id = ?),
                toks AS (
                    SELECT feature_id, list(token ORDER BY r, token) AS tokens
                    FROM (SELECT feature_id, token, min(rank) AS r FROM feature_top_tokens
                          WHERE run_id = ? GROUP BY feature_id, token)
                    GROUP BY feature_id
                ),
                ids AS (SELECT feature_id FROM agg UNION SELECT feature_id FROM st)
                SELECT ids.feature_id,
                       coalesce(agg.n_topk, 0) AS n_topk,
                       coalesce(agg.n_topk, 0) / greatest(n.n, 1) AS freq,
                       agg.mean_act, agg.max_act,
                       coalesce(st.n_fire, 0) AS n_fire,
                       coalesce(st.n_fire, 0) / greatest(n.n, 1) AS fire_rate,
                       st.sum_act / nullif(st.n_fire, 0) AS mean_fired,
                       st.max_act AS max_token_act,
                       coalesce(toks.tokens, []::VARCHAR[]) AS tokens,
                       {desc_cols}
                FROM ids CROSS JOIN n
                LEFT JOIN agg ON agg.feature_id = ids.feature_id
                LEFT JOIN st ON st.feature_id = ids.feature_id
                LEFT JOIN toks ON toks.feature_id = ids.feature_id
                {desc}
                ORDER BY ids.feature_id
                """,
                params,
            ).df()

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
        text = ", e.text" if with_text else ""
        join = (
            "LEFT JOIN runs r ON r.run_id = t.run_id "
            "LEFT JOIN examples e ON e.dataset = r.dataset AND e.id = t.example_id "
            if with_text
            else ""
        )
        with self.connect() as con:
            return con.execute(
                "SELECT t.feature_id, t.rank, t.example_id, t.token, t.value, "
                f"{self._spans(con, unknown='NULL')}{text} FROM feature_top_tokens t {join}"
                "WHERE t.run_id = ? AND (CAST(? AS INTEGER[]) IS NULL "
                "OR list_contains(CAST(? AS INTEGER[]), t.feature_id)) "
                "ORDER BY t.feature_id, t.rank",
                [run_id, fids, fids],
            ).df()

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
    def add_probe_run(
        self,
        *,
        dataset: str,
        feature_run: int,
        config: dict[str, Any],
        versions: dict[str, str],
        summary: dict[str, Any],
        scores: pa.Table,
    ) -> int:
        """A finished probe run (config["name"] names its score column) and its scores:
        (example_id, value, oof) with oof NULL for unlabelled examples."""
        if not config.get("name"):
            raise StudioError("a probe run needs a score name")
        with self._finished_run(
            step="probe",
            dataset=dataset,
            parent_run=feature_run,
            config=config,
            versions=versions,
            summary=summary,
        ) as (con, rid):
            con.register("_s", scores)
            con.execute("INSERT INTO probe_scores SELECT ?, example_id, value, oof FROM _s", [rid])
        return rid

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
        with self._finished_run(
            step="rollouts",
            dataset=dataset,
            parent_run=None,
            config=config,
            versions=versions,
            summary=summary,
        ) as (con, _rid):
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
        return _rid

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

    def start_reward_run(
        self,
        *,
        dataset: str,
        config: dict[str, Any],
        versions: dict[str, str],
        resume: bool = True,
    ) -> tuple[int, bool]:
        """A reward run (``config["name"]`` names its scores): the unfinished one with the same
        config when ``resume``, else a new one. See :meth:`start_run`."""
        if not config.get("name"):
            raise StudioError("a reward run needs a name")
        return self.start_run(
            step=REWARD_STEP, dataset=dataset, config=config, versions=versions, resume=resume
        )

    def finish_reward_run(self, run_id: int, *, summary: dict[str, Any]) -> None:
        self.finish_run(run_id, summary=summary)

    def write_reward_chunk(self, run_id: int, chunk: pa.Table, *, source: str) -> None:
        """Commit one chunk of a reward run's scores (``REWARD_SCHEMA``) in one transaction:
        after a crash a chunk is stored whole or not at all."""
        _check_reward_chunk(chunk)
        with self.transaction() as con:
            con.register("_rw", chunk)
            con.execute(
                "INSERT INTO reward_scores SELECT ?, example_id, response_idx, value, logits, "
                "truncated, ? FROM _rw",
                [run_id, source],
            )

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
                schema = REWARD_SCHEMA.insert(2, pa.field("role", pa.string()))
                return schema.append(pa.field("source", pa.string())).empty_table()
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

    def add_reward_run(
        self,
        *,
        dataset: str,
        config: dict[str, Any],
        versions: dict[str, str],
        summary: dict[str, Any],
        scores: pa.Table,
        source: str,
    ) -> int:
        """A finished reward run and all its scores (``REWARD_SCHEMA``) in one transaction, for
        sources that score everything at once (imported files, verifiers). ``config["name"]``
        names the scores. A key the dataset does not hold (see :meth:`unknown_reward_keys`) or
        a key given twice is an error, and nothing is written."""
        if not config.get("name"):
            raise StudioError("a reward run needs a name")
        _check_reward_chunk(scores)
        unknown = self.unknown_reward_keys(dataset, scores)
        if unknown.num_rows:
            first = unknown.slice(0, 1).to_pylist()[0]
            raise StudioError(
                f"dataset '{dataset}' has no response ({first['example_id']!r}, response_idx "
                f"{first['response_idx']}) to score ({unknown.num_rows} unknown); nothing stored"
            )
        with self._finished_run(
            step=REWARD_STEP,
            dataset=dataset,
            parent_run=None,
            config=config,
            versions=versions,
            summary=summary,
        ) as (con, rid):
            con.register("_rw", scores)
            dup = con.execute(
                "SELECT example_id, response_idx, count(*) AS n FROM _rw "
                "GROUP BY example_id, response_idx HAVING count(*) > 1 LIMIT 1"
            ).fetchall()
            if dup:
                raise StudioError(
                    f"reward '{config['name']}': ({dup[0][0]!r}, response_idx {dup[0][1]}) is "
                    f"scored {dup[0][2]} times; nothing stored"
                )
            con.execute(
                "INSERT INTO reward_scores SELECT ?, example_id, response_idx, value, logits, "
                "truncated, ? FROM _rw",
                [rid, source],
            )
        return rid

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
        return self.add_reward_run(
            dataset=dataset,
            config={"name": name, "source": source, "column": column},
            versions=versions,
            summary={"n_scores": scores.num_rows, "source": source},
            scores=scores,
            source=source,
        )

    # --- clusters and projections ----------------------------------------------------------
    @contextmanager
    def _finished_run(
        self,
        *,
        step: str,
        dataset: str,
        parent_run: int | None,
        config: dict[str, Any],
        versions: dict[str, str],
        summary: dict[str, Any],
    ) -> Iterator[tuple[duckdb.DuckDBPyConnection, int]]:
        """One transaction that records a finished run and (in the body) its rows: a crash
        leaves either the whole run or nothing."""
        self.migrate()
        with self.transaction() as con:
            row = con.execute(
                "INSERT INTO runs (step, dataset, parent_run, status, config, summary, versions, "
                "finished_at) VALUES (?, ?, ?, 'done', ?, ?, ?, current_timestamp) "
                "RETURNING run_id",
                [
                    step,
                    dataset,
                    parent_run,
                    canonical_json(config),
                    canonical_json(summary),
                    canonical_json(versions),
                ],
            ).fetchone()
            assert row is not None
            yield con, int(row[0])

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
        with self._finished_run(
            step=step,
            dataset=dataset,
            parent_run=parent_run,
            config=config,
            versions=versions,
            summary=summary,
        ) as (_, rid):
            pass
        return rid

    def add_cluster_run(
        self,
        *,
        dataset: str,
        feature_run: int,
        config: dict[str, Any],
        versions: dict[str, str],
        summary: dict[str, Any],
        assignments: pa.Table,
        clusters: pd.DataFrame,
    ) -> int:
        """assignments: (example_id, cluster); clusters: (cluster, size, label, top_features)."""
        with self._finished_run(
            step="cluster",
            dataset=dataset,
            parent_run=feature_run,
            config=config,
            versions=versions,
            summary=summary,
        ) as (con, rid):
            con.register("_a", assignments)
            con.execute(
                "INSERT INTO cluster_assignments SELECT ?, example_id, cluster FROM _a", [rid]
            )
            con.register("_c", clusters)
            con.execute(
                "INSERT INTO clusters SELECT ?, cluster, size, label, top_features FROM _c", [rid]
            )
        return rid

    def add_projection_run(
        self,
        *,
        dataset: str,
        feature_run: int,
        config: dict[str, Any],
        versions: dict[str, str],
        summary: dict[str, Any],
        points: pa.Table,
    ) -> int:
        """points: (example_id, x, y)."""
        with self._finished_run(
            step="project",
            dataset=dataset,
            parent_run=feature_run,
            config=config,
            versions=versions,
            summary=summary,
        ) as (con, rid):
            con.register("_p", points)
            con.execute("INSERT INTO projections SELECT ?, example_id, x, y FROM _p", [rid])
        return rid

    def add_dedup_run(
        self,
        *,
        dataset: str,
        feature_run: int,
        config: dict[str, Any],
        versions: dict[str, str],
        summary: dict[str, Any],
        groups: pa.Table,
    ) -> int:
        """groups: (example_id, group_id, is_representative), one row per member of a group."""
        with self._finished_run(
            step="dedup",
            dataset=dataset,
            parent_run=feature_run,
            config=config,
            versions=versions,
            summary=summary,
        ) as (con, rid):
            con.register("_g", groups)
            con.execute(
                "INSERT INTO duplicate_groups SELECT ?, example_id, group_id, is_representative "
                "FROM _g",
                [rid],
            )
        return rid

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
                    [name, _json_path(name), dataset],
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
        labels = self.label_names(dataset)
        scores = [n for n, _ in (views.score_runs if views else ()) if n not in labels]
        taken = set(BASE_COLUMNS) | set(DEDUP_COLUMNS) | set(labels) | set(scores)
        taken |= {"tags", "extra"}
        return labels, scores, [t for t in self.tag_names(dataset) if t not in taken]

    def filter_columns(self, dataset: str, *, views: Views) -> list[str]:
        """The columns a filter may name on this view (``feature:N`` aside): base columns, the
        dedup columns with a dedup run, probe scores, labels and tags."""
        labels, scores, tags = self._columns(dataset, views)
        dedup = list(DEDUP_COLUMNS) if views.dedup_run is not None else []
        return [*BASE_COLUMNS, *dedup, *scores, *labels, *tags]

    def _wide_sql(
        self, dataset: str, views: Views, label_names: Sequence[str], tag_names: Sequence[str]
    ) -> tuple[str, list]:
        params: list[Any] = []
        tag_cols = []
        for name in tag_names:
            tag_cols.append(f"json_extract_string(e.tags, ?) AS {quote_ident(name)}")
            params.append(_json_path(name))
        label_cols = []
        for name in label_names:
            label_cols.append(f"max(value) FILTER (WHERE name = ?) AS {quote_ident(name)}")
            params.append(name)
        label_select = ", ".join(["example_id", *label_cols])
        extra = [f"lb.{quote_ident(n)}" for n in label_names] + tag_cols
        dedup_cols, dedup_join, dedup_params = "", "", []
        if views.dedup_run is not None:
            dedup_cols = (
                ", dg.group_id AS dup_group, "
                "CAST(coalesce(NOT dg.is_representative, false) AS INTEGER) AS is_duplicate"
            )
            dedup_join = "LEFT JOIN duplicate_groups dg ON dg.run_id = ? AND dg.example_id = e.id"
            dedup_params = [views.dedup_run]
        score_cols, score_joins, score_params = "", [], []
        for i, (name, rid) in enumerate(views.score_runs):
            if name in label_names:  # a label of that name wins; the probe step forbids it
                continue
            score_cols += f", ps{i}.value AS {quote_ident(name)}"
            score_joins.append(
                f"LEFT JOIN probe_scores ps{i} ON ps{i}.run_id = ? AND ps{i}.example_id = e.id"
            )
            score_params.append(rid)
        sql = f"""
            SELECT e.id, e.idx, e.prompt, e.answer, e.text, e.tags, e.extra,
                   ca.cluster, p.x, p.y{dedup_cols}{score_cols}{"".join(", " + c for c in extra)}
            FROM examples e
            LEFT JOIN (SELECT {label_select} FROM labels WHERE dataset = ? GROUP BY example_id) lb
                ON lb.example_id = e.id
            LEFT JOIN cluster_assignments ca ON ca.run_id = ? AND ca.example_id = e.id
            LEFT JOIN projections p ON p.run_id = ? AND p.example_id = e.id
            {dedup_join}
            {" ".join(score_joins)}
            WHERE e.dataset = ?
        """
        # the tag expressions come first in the text, then the label subquery
        tag_params, label_params = params[: len(tag_names)], params[len(tag_names) :]
        return sql, [
            *tag_params,
            *label_params,
            dataset,
            views.cluster_run,
            views.projection_run,
            *dedup_params,
            *score_params,
            dataset,
        ]

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
        sql, params, id_table = self._filtered_sql(dataset, views, filters, ids, columns)
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self.connect() as con:
            if id_table is not None:
                con.register("_ids", id_table)
            return con.sql(sql, params=params).to_arrow_table()

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
        select, params = src.select(["id", *cols])
        for i, f in enumerate(filters):
            cond, cparams = src.condition(f)
            # a keep rule removes the rows where its condition is false or NULL
            hit = f"coalesce({cond}, false)"
            select += f", {hit if f.action == 'drop' else f'NOT {hit}'} AS r{i}"
            params += cparams
        id_table = None
        if ids is not None:
            select += ", w.id NOT IN (SELECT id FROM _ids) AS r_sel"
            id_table = _id_table(ids)
        sql = f"SELECT {select} {src.from_sql} ORDER BY w.idx"
        with self.connect() as con:
            if id_table is not None:
                con.register("_ids", id_table)
            return con.sql(sql, params=params + src.params).to_arrow_table()

    def _filtered_sql(
        self,
        dataset: str,
        views: Views,
        filters: Sequence[Filter],
        ids: Sequence[str] | None,
        columns: Sequence[str] | None,
    ) -> tuple[str, list[Any], pa.Table | None]:
        """``SELECT columns FROM <wide view> WHERE <every filter> ORDER BY idx``: the SQL, its
        parameters, and the table of ``ids`` to register as ``_ids`` (None without ids).

        The one place the filtered wide view is written: wide() and count() run it as is; a
        caller may wrap it (LIMIT, a streaming fetch) as long as it registers the ids table."""
        src = self._source(dataset, views, [*(f.column for f in filters), *(columns or ())])
        select, params = src.select(columns)
        where: list[str] = []
        wparams: list[Any] = []
        for f in filters:
            cond, cparams = src.condition(f)
            keep = f"coalesce({cond}, false)"
            where.append(f"NOT {keep}" if f.action == "drop" else keep)
            wparams += cparams
        id_table = None
        if ids is not None:
            where.append("w.id IN (SELECT id FROM _ids)")
            id_table = _id_table(ids)
        sql = f"SELECT {select} {src.from_sql}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY w.idx"
        return sql, params + src.params + wparams, id_table

    def _source(self, dataset: str, views: Views, refs: Sequence[str]) -> _WideSource:
        """The wide view as ``FROM (...) w``, joined to the feature run's stored features when
        ``refs`` (the columns filters and the select list name) include a ``feature:N``."""
        labels, scores, tags = self._columns(dataset, views)
        inner, params = self._wide_sql(dataset, views, labels, tags)
        dedup = set(DEDUP_COLUMNS) if views.dedup_run is not None else set()
        numeric = set(NUMERIC_BASE) | dedup | set(labels) | set(scores)
        allowed = numeric | set(BASE_COLUMNS) | set(tags)
        from_sql = f"FROM ({inner}) w"
        wanted = [(c, n) for c in refs if (n := feature_index(c)) is not None]
        d_sae = None
        if wanted:
            if views.feature_run is None:
                raise StudioError(
                    f"{wanted[0][0]}: dataset '{dataset}' has no feature run; run "
                    f"`python -m core featurize --dataset {dataset} ...` first"
                )
            d_sae = self.run(views.feature_run)["summary"].get("d_sae")
            d_sae = int(d_sae) if d_sae is not None else None
            for col, n in wanted:
                if d_sae is not None and n >= d_sae:
                    raise StudioError(
                        f"{col}: feature {n} is out of range: the SAE of feature run "
                        f"{views.feature_run} has {d_sae} features (0..{d_sae - 1})"
                    )
            from_sql += " LEFT JOIN features fr ON fr.run_id = ? AND fr.example_id = w.id"
            params = [*params, views.feature_run]
        return _WideSource(from_sql, params, allowed, numeric, has_features=bool(wanted))

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
        labels, scores, tags = self._columns(dataset, views)
        inner, params = self._wide_sql(dataset, views, labels, tags)
        kind = self.dataset(dataset)["kind"]
        with self.connect() as con:
            keys = con.execute(
                "SELECT DISTINCT unnest(json_keys(extra)) AS k FROM examples WHERE dataset = ? "
                "ORDER BY k",
                [dataset],
            ).fetchall()
            taken = {*BASE_COLUMNS, *DEDUP_COLUMNS, *labels, *scores, *tags, "tags", "extra"}
            taken |= {"chosen", "rejected", "response", "position", "batch"}
            extra_only = [str(k[0]) for k in keys if str(k[0]) not in taken]
            cols = ["w.id", "w.idx", "w.prompt", "w.answer", "CAST(w.cluster AS BIGINT) AS cluster"]
            if views.dedup_run is not None:
                cols += ["w.dup_group", "w.is_duplicate"]
            cols += [f"w.{quote_ident(c)}" for c in (*scores, *labels, *tags)]
            cols += [
                f"CAST(json_extract(w.extra, ?) AS VARCHAR) AS {quote_ident(k)}" for k in extra_only
            ]
            xparams: list[Any] = [_json_path(k) for k in extra_only]
            join, jparams = "", []
            if kind == "responses":  # the response is the example's text
                cols += ["w.text AS response"]
            pairs = "rejected_idx" in plan.column_names
            if kind == "preferences" and pairs:
                # one planned (chosen, rejected) pair a row: rejected_idx j is response j + 1
                # (ingest numbers the chosen response 0, the rejected ones 1..k), joined row by
                # row, so no prompt's list of responses is built or repeated per pair
                cols += ["rc.text AS chosen", "rr.text AS rejected"]
                join = (
                    "LEFT JOIN responses rc ON rc.dataset = ? AND rc.example_id = w.id "
                    "AND rc.role = 'chosen' "
                    "LEFT JOIN responses rr ON rr.dataset = ? AND rr.example_id = w.id "
                    "AND rr.role = 'rejected' AND rr.response_idx = p.rejected_idx + 1"
                )
                jparams = [dataset, dataset]
            elif kind == "preferences":
                cols += ["r.chosen", "r.rejected"]
                join = (
                    "LEFT JOIN (SELECT example_id, "
                    "first(text ORDER BY response_idx) FILTER (WHERE role = 'chosen') AS chosen, "
                    "list(text ORDER BY response_idx) FILTER (WHERE role = 'rejected') "
                    "AS rejected FROM responses WHERE dataset = ? GROUP BY example_id) r "
                    "ON r.example_id = w.id"
                )
                jparams = [dataset]
            cols += ["p.position", "p.batch"]
            if pairs:
                cols += ["p.rejected_idx"]
            sql = (
                f"SELECT {', '.join(cols)} FROM ({inner}) w JOIN _plan p ON p.idx = w.idx "
                f"{join} ORDER BY p.position"
            )
            con.register("_plan", plan)
            reader = con.sql(sql, params=xparams + params + jparams).to_arrow_reader(chunk_rows)
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
            owners = [(t, "runs r WHERE r.run_id = t.run_id") for t in RUN_TABLES]
            owners += [(t, "datasets d WHERE d.name = t.dataset") for t in DATASET_TABLES]
            present = set(_table_names(con))  # an older schema lacks the newer tables
            for table, owner in owners:
                if table not in present:
                    continue
                n = con.execute(
                    f"SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM {owner})"
                ).fetchall()[0][0]
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


def _json_path(key: str) -> str:
    """A JSON path for one top-level key, quoted so any key name is safe: ``$."a b"``."""
    return "$." + json.dumps(key, ensure_ascii=False)


def _check_reward_chunk(chunk: pa.Table) -> None:
    """A programming error, not a user's: the chunk must carry REWARD_SCHEMA's columns."""
    missing = [n for n in REWARD_SCHEMA.names if n not in chunk.column_names]
    if missing:
        raise ValueError(f"reward scores lack column(s) {', '.join(missing)}")


def _run_record(rec: dict[str, Any]) -> dict[str, Any]:
    for col in ("config", "summary", "versions"):
        v = rec.get(col)
        rec[col] = json.loads(v) if isinstance(v, str) else {}
    return rec


def _id_table(ids: Sequence[str]) -> pa.Table:
    return pa.table({"id": pa.array(list(ids), pa.string())})


@dataclass(frozen=True)
class _WideSource:
    """``FROM (wide view) w [LEFT JOIN features fr]`` with its parameters, and the columns a
    filter or a select list may name. Identifiers are checked here; values become parameters."""

    from_sql: str
    params: list[Any]
    allowed: set[str]
    numeric: set[str]
    has_features: bool

    def expr(self, column: str) -> tuple[str, list[Any]]:
        """The SQL of one column: ``w."name"``, or a feature's activation (0 where the feature
        is not among the example's stored top-k; NULL for an example the run did not store)."""
        n = feature_index(column)
        if n is not None:
            assert self.has_features, "_source saw no feature column"
            return (
                "CASE WHEN fr.example_id IS NULL THEN NULL "
                "ELSE CAST(coalesce(fr.vals[list_position(fr.feature_ids, ?)], 0) AS DOUBLE) END",
                [n],
            )
        return f"w.{quote_ident(column)}", []

    def select(self, columns: Sequence[str] | None) -> tuple[str, list[Any]]:
        if columns is None:
            return "w.*", []
        parts, params = [], []
        for c in columns:
            if feature_index(c) is None and c not in self.allowed | {"tags", "extra"}:
                known = ", ".join(sorted(self.allowed))
                raise StudioError(f"unknown column {c!r}; known: {known}")
            sql, p = self.expr(c)
            parts.append(f"{sql} AS {quote_ident(c)}")
            params += p
        return ", ".join(parts), params

    def condition(self, f: Filter) -> tuple[str, list[Any]]:
        """The bare condition of a filter (NULL where the row's value is NULL)."""
        is_feature = feature_index(f.column) is not None
        if f.column in DEDUP_COLUMNS and f.column not in self.allowed:
            raise StudioError(
                f"filter {f.describe()!r}: the dataset has no near-duplicate groups yet; "
                "run `python -m core dedup --dataset NAME` first"
            )
        if not is_feature and f.column not in self.allowed:
            raise StudioError(
                f"filter {f.describe()!r}: unknown column {f.column!r}; "
                f"known: {', '.join(sorted(self.allowed))}"
            )
        numeric = is_feature or f.column in self.numeric
        col, params = self.expr(f.column)
        if f.op not in OPERATORS:
            raise StudioError(f"filter {f.describe()!r}: unknown operator {f.op!r}")
        template = OPERATORS[f.op][0]
        if f.op in LIST_OPS:
            values = [_filter_value(f, v, numeric=numeric) for v in f.value]
            if not values:
                raise StudioError(f"filter {f.describe()!r}: empty list")
            cast = "DOUBLE" if numeric else "VARCHAR"
            # the list's placeholder comes before the column's own parameters
            return template.format(col=col, cast=cast), [values, *params]
        return template.format(col=col), [*params, _filter_value(f, f.value, numeric=numeric)]


def _filter_value(f: Filter, value: Any, *, numeric: bool) -> Any:
    """A filter value typed for its column: a number for a numeric column (else a one-line error
    naming the filter, not a DuckDB conversion traceback), text for a text column."""
    if numeric:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise StudioError(
                f"filter {f.describe()!r}: column {f.column!r} is numeric, got {value!r}"
            ) from None
        if number != number:  # NaN compares false with everything: it would match nothing
            raise StudioError(f"filter {f.describe()!r}: NaN is not a value to compare with")
        return number
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # `task=3` parsed as 3.0 means the text "3"
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # argv carries one lone surrogate per byte that is not UTF-8
        raise StudioError(
            f"filter on {f.column!r}: the value {text!r} is not valid UTF-8 text"
        ) from None
    return text
