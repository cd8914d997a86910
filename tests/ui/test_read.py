"""The long-document page with Streamlit's AppTest: a collection, a question, citations."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.reading import Reading
from app.settings import load_settings
from app.studio import Studio
from memory import MemoryStore
from tests.fakes import ScriptedLLM
from tests.texts import story
from ui import studio as studio_module

SCRIPT = "from ui.read import main\nmain()\n"


def cite_first(user: str, call: int) -> str:
    return json.dumps({"answer": "The chess champion did.", "passages": [1]})


@pytest.fixture
def studio(store: MemoryStore, tmp_path: Path) -> Iterator[Studio]:
    reading = Reading(load_settings(home=tmp_path), store=store, llm=ScriptedLLM(cite_first))
    studio = Studio(reading)
    studio_module.use(studio)
    yield studio
    studio_module.use(None)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_empty_collection_says_what_to_do(studio: Studio) -> None:
    app = AppTest.from_string(SCRIPT, default_timeout=60).run()
    assert not app.exception
    assert "Nothing in this collection yet" in app.info[0].value


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_question_is_answered_with_citations(studio: Studio) -> None:
    memory = studio.reading.memory("documents", "fixed")
    asyncio.run(memory.ingest(story(), name="book"))
    app = AppTest.from_string(SCRIPT, default_timeout=60).run()
    app.text_input(key="question").input("Who sacrificed a queen?")
    app.button[0].click().run()
    assert not app.exception and not app.error
    assert app.markdown[0].value == "The chess champion did."
    assert app.expander and app.expander[0].label.startswith("[1] characters ")
