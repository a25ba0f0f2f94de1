"""UI helpers shared by the page scripts (kept out of pages/, which Streamlit may read as pages)."""
