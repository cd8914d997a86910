"""Settings for this session: the LLM endpoint and model, with a connection test.

Defaults come from the ``MNEME_*`` environment; what is applied here lasts until the app stops.
"""

from __future__ import annotations

import streamlit as st

from app.doctor import run_checks
from app.errors import SettingsError
from app.settings import load_settings
from ui import studio


def main() -> None:
    st.title("Settings")
    current = studio.current().reading.settings
    with st.form("llm"):
        base_url = st.text_input(
            "LLM endpoint (OpenAI-compatible base URL; empty = the built-in engine)",
            value=current.llm_base_url or "",
        )
        model = st.text_input("Model", value=current.llm_model or "")
        api_key = st.text_input("API key", value=current.llm_api_key or "", type="password")
        drafts = st.number_input(
            "Paragraph drafts per step (above 1, the reranker keeps the best)",
            min_value=1,
            max_value=16,
            value=current.writer_candidates,
        )
        scorer = st.text_input(
            'Reranker ("embedder", or a RankGen checkpoint name or folder)',
            value=current.rerank_scorer,
        )
        st.subheader("Writer sampling")
        st.caption("Defaults chosen by benchmarks/writer_quality.py (see the README).")
        left, middle, right = st.columns(3)
        temperature = left.number_input("Temperature", 0.0, 2.0, current.writer_temperature, 0.05)
        top_p = middle.number_input("Top p", 0.01, 1.0, current.writer_top_p, 0.01)
        min_p = right.number_input("Min p", 0.0, 1.0, current.writer_min_p, 0.01)
        repetition = left.number_input(
            "Repetition penalty (1 = off)", 0.5, 2.0, current.writer_repetition_penalty, 0.05
        )
        presence = middle.number_input(
            "Presence penalty", -2.0, 2.0, current.writer_presence_penalty, 0.1
        )
        frequency = right.number_input(
            "Frequency penalty", -2.0, 2.0, current.writer_frequency_penalty, 0.1
        )
        paragraph = left.number_input(
            "Paragraph length (tokens)", 16, 2048, current.writer_paragraph_tokens, 10
        )
        test, apply = st.columns(2)
        tested = test.form_submit_button("Test connection")
        applied = apply.form_submit_button("Apply")
    if not (tested or applied):
        return
    overrides = {
        "llm_base_url": base_url.strip() or None,
        "llm_model": model.strip() or None,
        "llm_api_key": api_key.strip() or None,
        "writer_candidates": int(drafts),
        "rerank_scorer": scorer.strip() or "embedder",
        "writer_temperature": float(temperature),
        "writer_top_p": float(top_p),
        "writer_min_p": float(min_p),
        "writer_repetition_penalty": float(repetition),
        "writer_presence_penalty": float(presence),
        "writer_frequency_penalty": float(frequency),
        "writer_paragraph_tokens": int(paragraph),
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
    old = studio.current()
    if settings.writer_candidates > 1:
        with st.spinner("Loading the reranker…"):
            reranker, error = old.call(lambda: old.reranker(settings))
        if error or reranker is None:
            st.error(f"The reranker {settings.rerank_scorer!r} cannot be used: {error}")
            return
        st.success(f"Reranker ready: {reranker.name}")
    if applied:
        studio.use(old.reconfigure(settings))
        st.success("Applied: the next step or question uses this model.")
