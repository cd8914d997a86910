"""The long-document page: upload, ingest with progress, ask with citations, summarise."""

from __future__ import annotations

import time

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from app.errors import KNOWN_ERRORS
from app.reading import IngestProgress
from app.studio import Studio
from ui.studio import current
from ui.uploads import saved

_STAGES = {"segment": "Cutting into episodes", "embed": "Embedding", "store": "Storing"}


def _ingest(s: Studio, collection: str, upload: UploadedFile) -> None:
    latest: list[IngestProgress] = []
    bar = st.progress(0.0, text="Starting…")
    with saved(upload) as path:
        future = s.submit(
            s.reading.ingest_file(collection, path, on_progress=latest.append, shown_as=upload.name)
        )
        st.session_state["ingesting"] = future
        st.button("Stop ingesting", on_click=_stop)
        while not future.done():
            if latest:
                step = latest[-1]
                bar.progress(min(step.done / max(step.total, 1), 1.0), text=_STAGES[step.stage])
            time.sleep(0.2)
    st.session_state.pop("ingesting", None)
    bar.empty()
    if future.cancelled():
        st.info("Stopped.")
        return
    try:
        done = future.result()
    except KNOWN_ERRORS as err:
        st.error(str(err).replace(str(path), upload.name))
        return
    verb = "Ingested" if done.created else "Already held"
    st.success(f"{verb} {upload.name}: {len(done.episodes)} episodes, {done.tokens:,} tokens "
               f"in {done.seconds:.1f} s")  # fmt: skip


def _stop() -> None:
    """Cancel the running ingest. A document is stored in one transaction at the end, so it is
    stored whole (if the stop came while it was being saved) or not at all."""
    future = st.session_state.pop("ingesting", None)
    if future is not None and future.cancel():
        st.session_state["read-notice"] = (
            "Stopped. A document is stored whole or not at all: the list below shows which."
        )


def _ask(s: Studio, collection: str) -> None:
    with st.form("ask"):
        question = st.text_input("Question", key="question")
        asked = st.form_submit_button("Ask")
    if not asked or not question.strip():
        return
    with st.spinner("Reading…"):
        answer, error = s.call(lambda: s.run(s.reading.reader(collection).ask(question)))
    if error or answer is None:
        st.error(error)
        return
    st.markdown(answer.text)
    for citation in answer.citations:
        with st.expander(f"[{citation.number}] characters {citation.start}-{citation.end}"):
            st.write(citation.text)


def _summary(s: Studio, collection: str) -> None:
    if st.button("Summarise"):
        with st.spinner("Summarising section by section…"):
            summary, error = s.call(lambda: s.run(s.reading.reader(collection).summarize()))
        if error or summary is None:
            st.error(error)
            return
        st.markdown(summary.text)
        st.caption(f"{summary.calls} model calls over {len(summary.levels)} levels; largest "
                   f"prompt {summary.max_prompt_tokens} tokens")  # fmt: skip


def main() -> None:
    st.title("Read")
    s = current()
    if notice := st.session_state.pop("read-notice", None):
        st.info(notice)
    collection = st.text_input("Collection", value=st.session_state.get("collection", "documents"))
    st.session_state["collection"] = collection
    upload = st.file_uploader("Add a document (text, Markdown, PDF, DOCX, EPUB)")
    if upload is not None and st.button("Ingest"):
        _ingest(s, collection, upload)
    documents, error = s.call(lambda: s.run(s.reading.memory(collection).documents()))
    if error:
        st.error(error)
        return
    if not documents:
        st.info("Nothing in this collection yet: add a document above.")
        return
    st.caption(", ".join(f"{d.name} ({d.char_count:,} characters)" for d in documents))
    _ask(s, collection)
    _summary(s, collection)
