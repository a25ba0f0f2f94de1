"""Where things go by default, written once and import-light (the CLI reads these for --help
without importing pandas, DuckDB or torch)."""

DEFAULT_DB = "data/studio.duckdb"
DEMO_DB = "data/demo.duckdb"
# The app's Export page writes only under this folder (`streamlit run app.py -- --export-dir`);
# the CLI's --out may name any path.
DEFAULT_EXPORT_DIR = "data/exports"
# train-sae writes here when --out is not given.
DEFAULT_SAE_DIR = "data/saes"
