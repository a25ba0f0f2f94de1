"""The store's schema: the DDL, its append-only migrations, the Arrow schemas rows travel in, and
the names of tables and columns the rest of the store refers to. No connection, no query.

A migration is ``(version, name, ddl)``; :meth:`core.store.Store.migrate` applies the ones newer
than the file's version, in order, inside one transaction. Append new ones; never edit an applied
one (a file in the field has run it already).

    >>> SCHEMA_VERSION == MIGRATIONS[-1][0]
    True
    >>> CLUSTERS.arg, CLUSTERS.table, CLUSTERS.columns
    ('clusters', 'clusters', ('cluster', 'size', 'label', 'top_features'))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

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

# The bookkeeping table migrate() reads first; it is not a migration itself (it says which ran).
SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, "
    "name VARCHAR, applied_at TIMESTAMP DEFAULT current_timestamp)"
)

# A chunk of reward scores as write_reward_chunk and add_run (step "reward") take it (and
# reward_scores returns it, with role added after response_idx).
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


@dataclass(frozen=True)
class RunTable:
    """A table a finished run writes its rows into, as :meth:`Store.add_run` takes them.

    ``arg`` is add_run's keyword for the rows, ``columns`` what is read from them (after the run
    id, in the table's order); with ``with_source`` the run's ``source`` fills the last column,
    the same on every row (what produced a reward score).
    """

    arg: str
    table: str
    columns: tuple[str, ...]
    with_source: bool = False

    def __post_init__(self) -> None:
        if self.table not in RUN_TABLES:
            raise ValueError(f"{self.table!r} is not a run table (RUN_TABLES)")


PROBE_SCORES = RunTable("scores", "probe_scores", ("example_id", "value", "oof"))
REWARD_SCORES = RunTable("scores", "reward_scores", tuple(REWARD_SCHEMA.names), with_source=True)
CLUSTER_ASSIGNMENTS = RunTable("assignments", "cluster_assignments", ("example_id", "cluster"))
CLUSTERS = RunTable("clusters", "clusters", ("cluster", "size", "label", "top_features"))
PROJECTIONS = RunTable("points", "projections", ("example_id", "x", "y"))
DUPLICATE_GROUPS = RunTable(
    "groups", "duplicate_groups", ("example_id", "group_id", "is_representative")
)
