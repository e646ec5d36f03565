"""The Streamlit dashboard: `streamlit run dashboard/app.py` (or `iad up`)."""
