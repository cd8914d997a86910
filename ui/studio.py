"""The studio the web app serves from: one a process, kept in Streamlit's resource cache (it
lives across reruns and browser sessions), replaced when the settings page applies new ones."""

from __future__ import annotations

import threading

import streamlit as st

from app.studio import Studio


class _Slot:
    """The process's studio, once built; the lock keeps two first pages from building two."""

    def __init__(self) -> None:
        self.studio: Studio | None = None
        self.lock = threading.Lock()


@st.cache_resource(show_spinner=False)
def _slot() -> _Slot:
    return _Slot()


def current() -> Studio:
    """The process's studio: the one given to :func:`use`, else one built from the settings."""
    slot = _slot()
    with slot.lock:
        if slot.studio is None:
            slot.studio = Studio()
        return slot.studio


def use(studio: Studio | None) -> None:
    """Serve every page of this process from ``studio`` (settings applied, or a test's own);
    None: build one from the settings on next use."""
    slot = _slot()
    with slot.lock:
        slot.studio = studio
