"""Where things go by default, written once and import-light (the CLI reads these for --help
without importing pandas, DuckDB or torch)."""

import os
from pathlib import Path

DEFAULT_DB = "data/studio.duckdb"
DEMO_DB = "data/demo.duckdb"
# The app's Export page writes only under this folder (`streamlit run app.py -- --export-dir`);
# the CLI's --out may name any path.
DEFAULT_EXPORT_DIR = "data/exports"
# train-sae writes here when --out is not given.
DEFAULT_SAE_DIR = "data/saes"
# Share of each export batch taken from other clusters (SAERL's moderate mixing).
DEFAULT_MIX = 0.2
# SAE features kept per example by featurize.
DEFAULT_TOP_K = 64


def export_dir(explicit: str | Path | None = None) -> Path:
    """The export folder: ``explicit`` (the app's or doctor's ``--export-dir``), else
    ``$SAERL_EXPORT_DIR``, else :data:`DEFAULT_EXPORT_DIR`. The app's Export page writes only
    there, and doctor checks the manifests there."""
    return Path(explicit or os.environ.get("SAERL_EXPORT_DIR") or DEFAULT_EXPORT_DIR)
