"""SAERL Studio core library: ingest, featurize, cluster, project, export over one DuckDB store."""

__version__ = "0.1.0"
