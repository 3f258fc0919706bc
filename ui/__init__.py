"""Thin Streamlit glue: cached loaders (cache.py) and shared sidebar controls (state.py)."""
