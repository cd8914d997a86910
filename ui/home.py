"""Mneme's Streamlit app (``mneme ui``). Talks to ``app`` only."""

from __future__ import annotations

import streamlit as st

from app.overview import overview
from ui import read, settings, write


def home() -> None:
    st.title("Mneme")
    st.caption("Write and read text far longer than any model's context.")
    info = overview()
    st.subheader("Memory")
    if info.error:
        st.error(info.error)
        return
    col_namespaces, col_episodes, col_documents = st.columns(3)
    col_namespaces.metric("Namespaces", info.namespaces)
    col_episodes.metric("Episodes", info.episodes)
    col_documents.metric("Documents", info.documents)
    st.write(f"Database: `{info.database}` (migration `{info.revision}`)")


def main() -> None:
    st.set_page_config(page_title="Mneme", page_icon="📜", layout="wide")
    pages = [
        st.Page(home, title="Home", default=True),
        st.Page(write.main, title="Write", url_path="write"),
        st.Page(read.main, title="Read", url_path="read"),
        st.Page(settings.main, title="Settings", url_path="settings"),
    ]
    st.navigation(pages).run()


main()
