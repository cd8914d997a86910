"""The writer's page with Streamlit's AppTest: real stores, the scripted LLM via the studio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.reading import Reading
from app.settings import load_settings
from app.studio import Studio
from memory import MemoryStore
from tests.agents.test_writer import PLANS, echo
from tests.fakes import ScriptedLLM
from ui import studio as studio_module

SCRIPT = "from ui.write import main\nmain()\n"


@pytest.fixture
def studio(store: MemoryStore, tmp_path: Path) -> Iterator[Studio]:
    reading = Reading(load_settings(home=tmp_path), store=store, llm=ScriptedLLM(echo))
    studio = Studio(reading)
    studio_module.use(studio)
    yield studio
    studio_module.use(None)


def started(studio: Studio) -> AppTest:
    app = AppTest.from_string(SCRIPT, default_timeout=60).run()
    assert not app.exception
    assert "No story yet" in app.sidebar.info[0].value
    app.sidebar.text_input[0].input("adventure")
    app.sidebar.text_area[0].input("A courier crosses the desert with a sealed letter.")
    app.sidebar.button[0].click().run()
    assert not app.exception and not app.error
    return app


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_start_write_undo_and_memory(studio: Studio) -> None:
    app = started(studio)
    assert app.header[0].value == "The Salt Road"
    plans = [t for t in app.text_area if t.label.startswith("Option")]
    assert len(plans) == 3
    next(b for b in app.button if b.label == "Write this").click().run()
    assert not app.exception and not app.error
    assert "step 1" in app.caption[0].value
    story = studio.writing.stories.all()[0]
    assert len(studio.writing.stories.tree(story.id)) == 2
    next(b for b in app.button if b.label == "Undo").click().run()
    assert "step 0" in app.caption[0].value
    memory = next(t for t in app.text_area if t.label == "Short-term memory")
    memory.input("Mara fears the sea.").run()
    next(b for b in app.button if b.label == "Save memory").click().run()
    assert app.success and "Saved" in app.success[0].value
    story = studio.writing.stories.get(story.id)
    assert story.head_node_id is not None
    head = studio.writing.stories.node(story.id, story.head_node_id)
    assert head.parent_id is None and head.short_term_memory == "Mara fears the sea."


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_budget_tab_shows_the_prompt_parts(studio: Studio) -> None:
    app = started(studio)
    next(b for b in app.button if b.label == "Write this").click().run()
    assert any(m.label == "Prompt tokens" and int(m.value) > 0 for m in app.metric)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_llm_failure_is_a_message_not_a_traceback(studio: Studio) -> None:
    studio.reading._llm = ScriptedLLM(lambda user, call: "not json at all")
    app = AppTest.from_string(SCRIPT, default_timeout=60).run()
    app.sidebar.text_input[0].input("adventure")
    app.sidebar.text_area[0].input("A premise.")
    app.sidebar.button[0].click().run()
    assert not app.exception
    assert "could not write a usable paragraph" in app.error[0].value
    assert "JSON" not in app.error[0].value and "Reply" not in app.error[0].value
    assert app.sidebar.text_area[0].value == "A premise."  # what was typed is kept
    assert any(b.label == "Regenerate" for b in app.button)
    assert studio.writing.stories.all() == []


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_bible_entries_are_added_and_refused_when_empty(studio: Studio) -> None:
    app = started(studio)
    name = next(t for t in app.text_input if t.label == "Name")
    name.input("Idris")
    next(t for t in app.text_area if t.label == "What to remember").input("A caravan master.")
    next(b for b in app.button if b.label == "Save entry").click().run()
    assert not app.exception and not app.error
    story = studio.writing.stories.all()[0]
    assert [e.name for e in studio.writing.stories.entries(story.id)] == ["Idris"]
    assert any(e.label == "Idris (character)" for e in app.expander)
    next(t for t in app.text_input if t.label == "Name").input("Nobody")
    next(t for t in app.text_area if t.label == "What to remember").input("")
    next(b for b in app.button if b.label == "Save entry").click().run()
    assert app.error and "text" in app.error[0].value


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_events_are_searched_pinned_and_forgotten(studio: Studio) -> None:
    app = started(studio)
    next(b for b in app.button if b.label == "Write this").click().run()
    app.text_input(key="event-query").input("sealed letter oasis").run()
    assert not app.exception and not app.error
    assert app.expander, "the opening paragraph is found"
    pin = next(b for b in app.button if b.label == "Pin")
    pin.click().run()
    story = studio.writing.stories.all()[0]
    pinned = [e for e in studio.reading.store.episodes.page(story.namespace) if e.pinned]
    assert len(pinned) == 1
    assert next(b for b in app.button if b.label == "Unpin")


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_draft_survives_a_reload_and_clears_once_written(studio: Studio) -> None:
    app = started(studio)
    app.text_input(key=next(k for k in app.session_state if str(k).startswith("own-"))).input(
        "Mara buries the letter under a cairn."
    ).run()
    reloaded = AppTest.from_string(SCRIPT, default_timeout=60).run()  # a new browser session
    own = next(t for t in reloaded.text_input if t.label == "Or write your own")
    assert own.value == "Mara buries the letter under a cairn."
    next(b for b in reloaded.button if b.label == "Write").click().run()
    assert not reloaded.exception and not reloaded.error
    assert "Mara buries the letter under a cairn." in studio.writing.markdown(
        studio.writing.stories.all()[0].id
    )
    assert studio.writing.stories.all()[0].metadata["draft"] == ""


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_interactive_buttons_say_what_they_do_and_actions_join_the_transcript(
    studio: Studio,
) -> None:
    app = AppTest.from_string(SCRIPT, default_timeout=60).run()
    app.sidebar.text_input[0].input("mystery")
    app.sidebar.text_area[0].input("You wake in a locked lighthouse.")
    app.sidebar.radio[0].set_value("interactive")
    app.sidebar.button[0].click().run()
    assert not app.exception and not app.error
    options = [b for b in app.button if b.label.startswith("▶ ")]
    assert [b.label for b in options] == [f"▶ {plan}" for plan in PLANS]
    options[0].click().run()
    assert not app.exception and not app.error
    transcript = [m.value for m in app.markdown]
    assert f"**▶ You:** *{PLANS[0]}*" in transcript


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_an_empty_premise_is_refused_before_the_model_loads(studio: Studio) -> None:
    app = AppTest.from_string(SCRIPT, default_timeout=60).run()
    app.sidebar.text_input[0].input("mystery")
    app.sidebar.text_area[0].input("   ")
    app.sidebar.button[0].click().run()
    assert "give both" in app.error[0].value
    assert studio.reading._llm.prompts == []  # type: ignore[union-attr]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_with_no_plans_left_the_page_offers_to_continue(studio: Studio) -> None:
    app = started(studio)
    story = studio.writing.stories.all()[0]
    assert story.head_node_id is not None
    studio.writing.stories.update_node(story.id, story.head_node_id, plans=[])  # none left
    app.run()
    assert not [t for t in app.text_area if t.label.startswith("Option")]
    assert any("no options" in c.value for c in app.caption)
    next(b for b in app.button if b.label == "Continue the story").click().run()
    assert not app.exception and not app.error
    head = studio.writing.stories.node(story.id, studio.writing.stories.get(story.id).head_node_id)
    assert head.parent_id == story.head_node_id and head.instruction == "Continue the story."


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_suggested_entries_are_accepted_and_dismissed(studio: Studio) -> None:
    app = started(studio)
    story = studio.writing.stories.all()[0]
    assert story.head_node_id is not None
    idris = {"kind": "character", "name": "Idris", "text": "A caravan master."}
    well = {"kind": "place", "name": "The well", "text": "Dry since spring."}
    studio.writing.stories.update_node(
        story.id, story.head_node_id, metadata={"bible_suggestions": [idris, well]}
    )
    app.run()
    assert any(h.value == "Suggested entries" for h in app.subheader)
    next(b for b in app.button if b.label == "Accept").click().run()
    assert not app.exception and not app.error
    assert [e.name for e in studio.writing.stories.entries(story.id)] == ["Idris"]
    assert any(e.label == "Idris (character)" for e in app.expander)
    next(b for b in app.button if b.label == "Dismiss").click().run()
    assert not app.exception and not any(h.value == "Suggested entries" for h in app.subheader)
    assert [e.name for e in studio.writing.stories.entries(story.id)] == ["Idris"]
    head = studio.writing.stories.node(story.id, story.head_node_id)
    assert head.metadata["bible_suggestions"] == []
