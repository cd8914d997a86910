"""Streamlit pages for writers. Imports ``app`` only."""
