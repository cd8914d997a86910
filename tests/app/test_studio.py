"""app.studio: the web app's services, and reconfiguring them with new settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.reading import Reading
from app.settings import load_settings
from app.studio import Studio
from memory import MemoryStore
from serving.rerank.errors import UnknownScorer
from tests.agents.test_writer import echo
from tests.fakes import ScriptedLLM


class ClosingLLM(ScriptedLLM):
    """The scripted LLM, remembering whether it was closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


def test_reconfigure_keeps_the_store_and_closes_the_old_model(
    store: MemoryStore, tmp_path: Path
) -> None:
    llm = ClosingLLM(echo)
    old = Studio(Reading(load_settings(home=tmp_path), store=store, llm=llm))
    story, _ = asyncio.run(old.writing.start("adventure", "A courier crosses the desert."))
    new = old.reconfigure(load_settings(home=tmp_path, writer_min_p=0.1))
    assert new is not old and llm.closed
    assert new.reading.store is store and new.writing.config.min_p == 0.1
    assert [s.id for s in new.writing.list_stories()] == [story.id]


def test_a_reranker_is_loaded_for_settings_or_its_error_told(
    store: MemoryStore, tmp_path: Path
) -> None:
    studio = Studio(Reading(load_settings(home=tmp_path), store=store, llm=ScriptedLLM(echo)))
    named = load_settings(home=tmp_path, writer_candidates=3, rerank_scorer="embedder")
    assert studio.reranker(named).name == f"embedder:{store.embedder.model_name}"
    unknown = load_settings(home=tmp_path, writer_candidates=3, rerank_scorer="no-such-scorer")
    reranker, error = studio.call(lambda: studio.reranker(unknown))
    assert reranker is None and error is not None and "no-such-scorer" in error
    with pytest.raises(UnknownScorer, match="unknown rerank scorer"):
        studio.reranker(unknown)
