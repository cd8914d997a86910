"""Settings for this session: the LLM endpoint and model, with a connection test.

Defaults come from the ``MNEME_*`` environment; what is applied here lasts until the app stops.
"""

from __future__ import annotations

import streamlit as st

from app import studio as studio_module
from app.doctor import run_checks
from app.errors import SettingsError
from app.reading import Reading
from app.settings import load_settings


def main() -> None:
    st.title("Settings")
    current = studio_module.current().reading.settings
    with st.form("llm"):
        base_url = st.text_input(
            "LLM endpoint (OpenAI-compatible base URL; empty = the built-in engine)",
            value=current.llm_base_url or "",
        )
        model = st.text_input("Model", value=current.llm_model or "")
        api_key = st.text_input("API key", value=current.llm_api_key or "", type="password")
        test, apply = st.columns(2)
        tested = test.form_submit_button("Test connection")
        applied = apply.form_submit_button("Apply")
    if not (tested or applied):
        return
    overrides = {
        "llm_base_url": base_url.strip() or None,
        "llm_model": model.strip() or None,
        "llm_api_key": api_key.strip() or None,
    }
    try:
        settings = load_settings(**{**current.model_dump(), **overrides})
    except SettingsError as err:
        st.error(str(err))
        return
    (check,) = run_checks(settings, only="llm")
    if not check.ok:
        st.error(check.detail)
        return
    st.success(check.detail)
    if applied:
        old = studio_module.current()
        studio_module.use(studio_module.Studio(Reading(settings, store=old.reading.store)))
        old.reading.close()
        st.success("Applied: the next step or question uses this model.")
