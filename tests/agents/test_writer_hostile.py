"""The writer against hostile model output: nothing of it is stored, and the failure is clear."""

from __future__ import annotations

import asyncio
import json
from unittest.mock import patch

import pytest

from agents.errors import StepFailed
from agents.writer_config import PREMISE_CHARS, Progress, WriterConfig
from memory import MemoryStore
from memory.errors import InvalidRecord
from tests.agents.test_writer import OPENING, echo, notes, opening, run, writer_for
from tests.fakes import ScriptedLLM

LEAKED = (
    "For a short answer, the requested length of 300 characters should be preserved. "
    "Reply again with only the corrected JSON object: no prose, no code fences."
)
LOOP = " ".join(["The door was red and the door was red and the door was red."] * 12)


def hostile_paragraph(text: str):  # type: ignore[no-untyped-def]
    """A story that starts well; then every paragraph is ``text``."""

    def reply(user: str, call: int) -> str:
        return text if "Write the next paragraph" in user else echo(user, call)

    return reply


def started(store: MemoryStore, llm: ScriptedLLM, config: WriterConfig | None = None):  # type: ignore[no-untyped-def]
    writer = writer_for(store, llm, config)
    story, root = run(writer.start("story-1", genre="adventure", premise="A courier and a letter."))
    return writer, story, root


@pytest.mark.parametrize(
    ("paragraph", "why"),
    [
        (LEAKED, "repeated the instructions"),
        (",", "came back empty"),
        ("", "came back empty"),
        (LOOP, "went round in circles"),
        ("The end came. " * 2 + "Short.", "nearly empty"),
    ],
)
def test_a_bad_paragraph_is_never_stored(store: MemoryStore, paragraph: str, why: str) -> None:
    llm = ScriptedLLM(echo)
    writer, story, root = started(store, llm)
    llm.reply = hostile_paragraph(paragraph)
    seen: list[Progress] = []
    with pytest.raises(StepFailed, match=why) as failure:
        run(writer.step(story.id, plan="Go on.", on_progress=seen.append))
    assert "Nothing was stored" in str(failure.value) and "Regenerate" in str(failure.value)
    assert writer.stories.tree(story.id) == [(root.id, None, 0)]
    assert writer.stories.get(story.id).head_node_id == root.id
    assert [p.attempt for p in seen if p.phase == "paragraph"][-1] == 2  # two tries, both shown
    assert any(p.notice.startswith("Try 1 was discarded") for p in seen)


def test_a_repetition_loop_is_stopped_while_it_streams(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer, story, _ = started(store, llm, WriterConfig(attempts=1))
    llm.reply = hostile_paragraph(LOOP)
    seen: list[str] = []
    with pytest.raises(StepFailed):
        run(writer.step(story.id, on_progress=lambda p: seen.append(p.paragraph)))
    assert len(seen[-1]) < len(LOOP) / 2  # abandoned early, not generated to the end


def test_a_discarded_try_is_shown_and_the_next_one_kept(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer, story, _ = started(store, llm)
    good = "Mara reached the well at noon and found the caravan master waiting in the shade."
    tries = iter([",", good])
    llm.reply = lambda user, call: (
        next(tries) if "Write the next paragraph" in user else echo(user, call)
    )
    seen: list[Progress] = []
    node = run(writer.step(story.id, plan="Go on.", on_progress=seen.append))
    shown = [p for p in seen if p.phase == "paragraph"]
    assert node.paragraph == good == shown[-1].paragraph  # what streamed last is what is kept
    assert shown[-1].attempt == 2 and "came back empty" in shown[-1].notice


@pytest.mark.parametrize(
    "bad_notes",
    [
        notes(". The response may have been cut off at max_tokens. Keep it shorter."),
        notes(plans=[",", ",", ","]),
        notes(plans=["Reply again with only the corrected JSON object.", "", "keep it shorter"]),
        '{"short_term_memory": "Mara is lost", "reason": "x", "plans": ["a"',  # cut off
        '{"paragraph": 5, "plans": "DROP TABLE stories"}',
    ],
)
def test_bad_notes_are_never_stored_the_step_keeps_the_previous_ones(
    store: MemoryStore, bad_notes: str
) -> None:
    llm = ScriptedLLM(echo)
    writer, story, root = started(store, llm)
    llm.reply = lambda user, call: bad_notes if "Rewrite the notes" in user else echo(user, call)
    taken = root.plans[0]

    seen: list[Progress] = []
    node = run(writer.step(story.id, plan=taken, on_progress=seen.append))
    # The paragraph the writer read is kept; none of the bad notes is.
    assert node.paragraph == [p for p in seen if p.phase == "paragraph"][-1].paragraph
    assert node.short_term_memory == root.short_term_memory
    assert node.plans == tuple(p for p in root.plans if p != taken)
    assert node.memory_reason.startswith("Not updated: the model could not write new notes")
    stored = " ".join([node.short_term_memory, node.memory_reason, *node.plans])
    for leaked in ("max_tokens", "Reply again", "DROP TABLE", "JSON"):
        assert leaked not in stored
    assert any(p.notice.startswith(node.memory_reason) for p in seen)  # shown as it happens
    assert writer.stories.tree(story.id) == [(root.id, None, 0), (node.id, root.id, 1)]


def test_bad_notes_with_no_plan_left_over_keep_the_paragraph_without_plans(
    store: MemoryStore,
) -> None:
    llm = ScriptedLLM(echo)
    writer, story, root = started(store, llm)
    writer.stories.update_node(story.id, root.id, plans=["Go on."])  # the one plan, taken
    llm.reply = lambda user, call: notes(plans=[",", ",", ","]) if "Rewrite the notes" in user \
        else echo(user, call)  # fmt: skip
    node = run(writer.step(story.id, plan="Go on."))
    assert node.plans == () and "no plan was left over" in node.memory_reason
    after = run(writer.step(story.id))  # no plan offered: the story continues
    assert after.parent_id == node.id and after.instruction == "Continue the story."


def test_bad_opening_notes_keep_the_opening_with_the_premise_as_outline(
    store: MemoryStore,
) -> None:
    llm = ScriptedLLM(
        lambda user, call: (
            notes(plans=[",", ",", ","], opening=True)
            if "Rewrite the notes" in user
            else echo(user, call)
        )
    )
    writer = writer_for(store, llm)
    premise = "A lighthouse keeper finds a sealed letter hidden inside the great lamp."
    seen: list[Progress] = []
    story, root = run(writer.start("s", genre="mystery", premise=premise, on_progress=seen.append))
    assert story.title == "A lighthouse keeper finds a sealed letter hidden…"
    assert story.outline == premise
    assert root.paragraph and root.plans == () and root.short_term_memory == ""
    assert root.memory_reason.startswith("Not updated: the model could not write notes after")
    assert sum(p.phase == "notes" and not p.notice for p in seen) == 3  # three tries
    # Nothing of the discarded notes is stored; with no plan the story continues.
    llm.reply = echo
    after = run(writer.step(story.id))
    assert after.instruction == "Continue the story." and after.plans


def test_slow_notes_are_stopped_at_the_step_target(store: MemoryStore) -> None:
    """A notes try still running when the step's target passes is stopped (after at least the
    least a first try gets): the paragraph is kept with the previous notes."""
    llm = ScriptedLLM(echo)
    writer, story, root = started(store, llm, WriterConfig(step_target_s=0.001))
    real = llm.generate_json
    calls: list[int] = []

    async def stalled(messages, schema, params, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        await asyncio.sleep(3600)
        return await real(messages, schema, params, **kwargs)

    llm.generate_json = stalled  # type: ignore[method-assign]
    with patch("agents.notes._NOTES_LEAST_S", 0.05):
        node = run(writer.step(story.id, plan=root.plans[0]))
    assert calls == [1]  # stopped, and no second try past the target
    assert node.memory_reason.startswith("Not updated")
    assert node.short_term_memory == root.short_term_memory


def test_notes_are_not_tried_again_past_the_step_target(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer, story, root = started(store, llm, WriterConfig(step_target_s=0.001))
    asked: list[int] = []

    def reply(user: str, call: int) -> str:
        if "Rewrite the notes" in user:
            asked.append(call)
            return notes(plans=[",", ",", ","])
        return echo(user, call)

    llm.reply = reply
    node = run(writer.step(story.id, plan=root.plans[0]))
    assert len(asked) == 1  # one try, not notes_attempts = 3: the target had passed
    assert node.memory_reason.startswith("Not updated")


def test_unusable_plans_are_dropped_and_the_rest_kept(store: MemoryStore) -> None:
    plans = ["Go north now.", "Go north now.", "the_lighthouse_knight_lemonbridge"]
    llm = ScriptedLLM(echo)
    writer, story, _ = started(store, llm)
    llm.reply = lambda user, call: (
        notes(plans=plans) if "Rewrite the notes" in user else echo(user, call)
    )
    node = run(writer.step(story.id, plan="Go on."))
    assert node.plans == ("Go north now.",)  # the duplicate and the non-sentence are not offered


def test_a_garbage_interactive_opening_creates_no_story(store: MemoryStore) -> None:
    def comma(user: str, call: int) -> str:
        return (
            notes(",", plans=[",", ",", ","], opening=True) if "Rewrite the notes" in user else ","
        )

    llm = ScriptedLLM(comma)
    writer = writer_for(store, llm)
    with pytest.raises(StepFailed, match="usable paragraph"):
        run(writer.start("s", genre="mystery", premise="You wake in a locked room.",
                         mode="interactive"))  # fmt: skip
    assert writer.stories.all() == []


def test_a_step_past_its_time_limit_fails_and_stores_nothing(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer, story, root = started(store, llm, WriterConfig(step_timeout_s=0.2))

    async def slow_stream(*args, **kwargs):  # type: ignore[no-untyped-def]
        yield_ = "Mara walked on. "
        while True:
            await asyncio.sleep(0.05)
            yield type("D", (), {"index": 0, "text": yield_})()

    llm.stream_chat = slow_stream  # type: ignore[method-assign]
    with pytest.raises(StepFailed, match="longer than 0 s"):
        run(writer.step(story.id, plan="Go on."))
    assert writer.stories.tree(story.id) == [(root.id, None, 0)]


def test_bad_openings_are_refused_before_any_model_call(store: MemoryStore) -> None:
    llm = ScriptedLLM(echo)
    writer = writer_for(store, llm)
    for genre, premise, why in [
        ("fantasy", "   ", "give both"),
        ("", "A dragon.", "give both"),
        ("fantasy", "x" * (PREMISE_CHARS + 1), f"the most is {PREMISE_CHARS}"),
        ("f" * 201, "A dragon.", "the most is 200"),
        ("fantasy", "!!! ???", "no words"),
    ]:
        with pytest.raises(InvalidRecord, match=why):
            run(writer.start("s", genre=genre, premise=premise))
    assert llm.prompts == []


def test_a_base_model_writes_by_continuation(store: MemoryStore) -> None:
    """No chat template (the tiny pretrained model): prose continues the story's text, and the
    notes are written field by field; nothing needs JSON."""

    def base(prompt: str, call: int) -> str:
        if prompt.endswith("Title of the story:"):
            return " The Salt Road"
        if prompt.endswith("Outline of the whole story:"):
            return " A courier crosses the desert with a sealed letter."
        if prompt.endswith("Summary of the story so far:"):
            return " Mara crosses the desert with a sealed letter for the queen."
        if "idea" in prompt:
            return f" Mara finds water number {call} in the dunes."
        return OPENING

    llm = ScriptedLLM(base, chat_template=False)
    writer = writer_for(store, llm)
    story, root = run(writer.start("s", genre="adventure", premise="A courier and a letter."))
    assert writer.style == "completion" and story.title == "The Salt Road"
    assert root.paragraph == OPENING and len(set(root.plans)) == 3
    node = run(writer.step(story.id, plan="She finds water."))
    assert node.paragraph == OPENING and "The story so far ends" not in llm.prompts[-5]


def test_bible_suggestions_are_kept_on_the_node(store: MemoryStore) -> None:
    idris = {"kind": "character", "name": "Idris", "text": "A one-eyed caravan master."}
    junk = {"kind": "fact", "name": "JSON", "text": "Reply again with only the JSON object."}

    def reply(user: str, call: int) -> str:
        if "Rewrite the notes" in user:
            return notes(bible=[idris, junk], opening=opening(user))
        return echo(user, call)

    writer, story, _ = started(store, ScriptedLLM(reply))
    node = run(writer.step(story.id, plan="Idris arrives."))
    assert node.metadata["bible_suggestions"] == [idris]  # the echo is dropped
    assert writer.stories.entries(story.id) == []  # only suggested, not accepted


def test_editing_a_paragraph_keeps_its_versions_and_re_embeds_it(store: MemoryStore) -> None:
    writer, story, _ = started(store, ScriptedLLM(echo))
    node = run(writer.step(story.id, plan="Go on."))

    async def edit() -> tuple[object, list[str]]:
        await writer.settle()
        before = writer.stories.node(story.id, node.id)
        edited = await writer.edit_paragraph(
            story.id, node.id, "Mara buried the letter under a white stone by the well."
        )
        memory = writer.memory_for(story.namespace)
        texts = [e.text for e in await memory.episodes()]
        assert edited.metadata["versions"][0]["paragraph"] == before.paragraph
        assert set(edited.episode_ids).isdisjoint(before.episode_ids)
        return edited, texts

    _, texts = run(edit())
    assert any("white stone" in t for t in texts)
    assert not any("Following 'Go on.'" in t for t in texts)  # the old text is forgotten
    with pytest.raises(InvalidRecord, match="cannot be empty"):
        run(writer.edit_paragraph(story.id, node.id, "  "))


def test_notes_are_retried_fresh_never_by_repair_request(store: MemoryStore) -> None:
    """A reply cut off, then one echoing a repair request: each try is a fresh request (no repair
    text is ever sent, so none can come back), and what is stored is the valid third."""
    leaked = {
        "short_term_memory": "That reply is not valid JSON for the StepNotes schema.",
        "reason": "",
        "plans": ["a plan here", "another plan here", "third plan here"],
    }
    answers = iter(['{"short_term_memory": ', json.dumps(leaked)])

    def reply(user: str, call: int) -> str:
        if "Rewrite the notes" in user:
            return next(answers, notes())
        return echo(user, call)

    writer, story, _ = started(store, ScriptedLLM(echo), WriterConfig(attempts=3))
    llm = ScriptedLLM(reply)
    writer.llm = llm
    node = run(writer.step(story.id, plan="Go on."))
    assert "JSON" not in node.short_term_memory and node.plans[0].startswith("She meets")
    assert sum("Rewrite the notes" in p for p in llm.prompts) == 3
    assert not any("not valid JSON" in p for p in llm.prompts)  # never a repair request


def test_notes_sample_cooler_with_a_mild_penalty(store: MemoryStore) -> None:
    """The notes repeat the story's names: cooler sampling and only a mild repetition penalty."""
    llm = ScriptedLLM(echo)
    config = WriterConfig(repetition_penalty=1.3, presence_penalty=0.5, min_p=0.1)
    writer, story, _ = started(store, llm, config)
    run(writer.step(story.id, plan="Go on."))
    prose, notes_ = llm.params[-2], llm.params[-1]
    assert (prose.repetition_penalty, prose.presence_penalty, prose.min_p) == (1.3, 0.5, 0.1)
    assert (notes_.repetition_penalty, notes_.presence_penalty, notes_.min_p) == (1.05, 0.0, 0.1)
    assert notes_.temperature == config.notes_temperature < prose.temperature
    assert prose.max_tokens == config.paragraph_tokens


def test_prompts_fit_a_small_context(store: MemoryStore) -> None:
    """A 260-token model: every request fits (the prompt loses its start, never the story's end
    or the request), and a reply is capped at half the room."""
    llm = ScriptedLLM(echo)
    config = WriterConfig(context_tokens=260, recall_tokens=400)
    writer, story, _ = started(store, llm, config)
    for i in range(3):
        run(writer.step(story.id, plan=f"Day {i}: the caravan reaches another well."))
    room = 260 - 48
    for prompt, params in zip(llm.prompts, llm.params, strict=True):
        assert params.max_tokens <= room // 2
        assert len(prompt.split()) + params.max_tokens <= room + 16  # + the system prompt
    assert "Day 2: the caravan reaches another well." in llm.prompts[-2]
    with pytest.raises(StepFailed, match="context \\(100 tokens\\) is too small"):
        run(writer_for(store, llm, WriterConfig(context_tokens=100)).step(story.id))
