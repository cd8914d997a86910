"""app.reading: the segmenter choice, and falling back to embedding novelty without logprobs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from app.reading import SERVER_CONTEXT_TOKENS, Reading
from app.settings import load_settings
from memory import MemoryStore
from serving.errors import LogprobsUnsupported
from serving.llm import Capabilities
from tests.texts import story


class NoLogprobsLLM:
    """An LLM endpoint that gives no logprobs (the part of the LLM Protocol surprise uses)."""

    model = "no-logprobs"

    def __init__(self, capabilities: Capabilities | None = None) -> None:
        self.capabilities = capabilities or Capabilities()
        self.calls = 0

    async def token_logprobs(self, text: str) -> Any:
        self.calls += 1
        raise LogprobsUnsupported("http://example/v1 gives no log-probabilities")

    async def count_tokens(self, text: str) -> int:  # surprise windows are sized with it
        return len(text.split())


def test_auto_falls_back_to_embedding_novelty(store: MemoryStore, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, llm_context_tokens=256)
    llm = NoLogprobsLLM()
    reading = Reading(settings, store=store, llm=llm)  # type: ignore[arg-type]
    memory = reading.memory("ns", "auto")
    first = asyncio.run(memory.ingest(story(), name="one"))
    assert first.document.metadata["segmenter"] == "embedding"
    refused = llm.calls  # the windows already in flight when the first refusal came
    asyncio.run(memory.ingest(story(2), name="two"))
    assert llm.calls == refused  # the refusal is remembered
    assert "".join(e.text for e in first.episodes) == story()


@pytest.mark.parametrize(
    ("capabilities", "context"),
    [(Capabilities(context_tokens=1024), 1024), (Capabilities(), SERVER_CONTEXT_TOKENS)],
)
def test_the_context_is_the_backends_unless_configured(
    store: MemoryStore, tmp_path: Path, capabilities: Capabilities, context: int
) -> None:
    llm = NoLogprobsLLM(capabilities)
    said = Reading(load_settings(home=tmp_path), store=store, llm=llm)  # type: ignore[arg-type]
    assert said.context_tokens() == context
    configured = load_settings(home=tmp_path, llm_context_tokens=512)
    assert Reading(configured, store=store, llm=llm).context_tokens() == 512  # type: ignore[arg-type]


def test_choices_build_the_named_segmenter(store: MemoryStore, tmp_path: Path) -> None:
    reading = Reading(load_settings(home=tmp_path), store=store)
    assert reading.segmenter("fixed").kind == "fixed"
    assert reading.segmenter("embedding").kind == "embedding"
    assert reading.segmenter("surprise").kind == "surprise"  # built lazily: no model loaded
    assert reading._llm is None


def test_an_upload_is_named_by_its_own_name_not_its_temporary_path(
    store: MemoryStore, tmp_path: Path
) -> None:
    from app.errors import UnreadableDocument

    reading = Reading(load_settings(home=tmp_path), store=store)
    path = tmp_path / "mneme-upload-x1" / "notes.txt"
    path.parent.mkdir()
    path.write_text("   \n  ")
    with pytest.raises(UnreadableDocument) as refused:
        asyncio.run(reading.ingest_file("c", path, shown_as="notes.txt"))
    assert str(refused.value).startswith("notes.txt: ") and "mneme-upload" not in str(refused.value)
