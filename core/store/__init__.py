"""The DuckDB store: the one package that owns the schema, its migrations and every SQL statement.

Everything else imports from here, never from the modules inside:

- :mod:`core.store.schema`: the DDL, the append-only migrations, Arrow schemas, table names.
- :mod:`core.store.sql`: SQL text built from parts (the wide view, filters, exports), pure.
- :mod:`core.store.store`: :class:`Store`, a DuckDB file behind typed methods, and
  :meth:`Store.add_run`, one call for every step's finished run and its rows.

This file only re-exports; nothing is defined here.
"""

from core.store.schema import (
    BASE_COLUMNS,
    CLUSTER_ASSIGNMENTS,
    CLUSTERS,
    DATASET_TABLES,
    DDL_V1,
    DDL_V2,
    DDL_V3,
    DDL_V4,
    DDL_V5,
    DEDUP_COLUMNS,
    DUPLICATE_GROUPS,
    MIGRATIONS,
    NUMERIC_BASE,
    PROBE_SCORES,
    PROJECTIONS,
    RESPONSES_SUFFIX,
    REWARD_SCHEMA,
    REWARD_SCORES,
    REWARD_STEP,
    RUN_TABLES,
    SCHEMA_VERSION,
    Kind,
    RunTable,
)
from core.store.sql import Views, WideSource, quote_ident
from core.store.store import (
    RUN_STEPS,
    Rows,
    RunRecord,
    RunStep,
    Store,
    canonical_json,
    check_columns,
    foreign_message,
    open_error,
)

__all__ = [
    "BASE_COLUMNS",
    "CLUSTERS",
    "CLUSTER_ASSIGNMENTS",
    "DATASET_TABLES",
    "DDL_V1",
    "DDL_V2",
    "DDL_V3",
    "DDL_V4",
    "DDL_V5",
    "DEDUP_COLUMNS",
    "DUPLICATE_GROUPS",
    "MIGRATIONS",
    "NUMERIC_BASE",
    "PROBE_SCORES",
    "PROJECTIONS",
    "RESPONSES_SUFFIX",
    "REWARD_SCHEMA",
    "REWARD_SCORES",
    "REWARD_STEP",
    "RUN_STEPS",
    "RUN_TABLES",
    "SCHEMA_VERSION",
    "Kind",
    "Rows",
    "RunRecord",
    "RunStep",
    "RunTable",
    "Store",
    "Views",
    "WideSource",
    "canonical_json",
    "check_columns",
    "foreign_message",
    "open_error",
    "quote_ident",
]
