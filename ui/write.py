"""The writer's page: stories, the writing loop, branches, memory and the token budget."""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import streamlit as st

from app.studio import Studio, current
from app.writing import Story, StoryNode
from ui.uploads import saved

PAGE = 20
"""Paragraphs shown per page of the text."""


def studio() -> Studio:
    return current()


def _fail(message: str | None) -> bool:
    if message:
        st.error(message)
        return True
    return False


def _new_story(s: Studio) -> None:
    with st.sidebar.form("new-story", clear_on_submit=False):
        st.subheader("New story")
        genre = st.text_input("Genre", value=st.session_state.get("draft-genre", ""))
        premise = st.text_area("Premise", value=st.session_state.get("draft-premise", ""))
        mode = st.radio("Mode", ["novel", "interactive"], horizontal=True)
        if st.form_submit_button("Start"):
            st.session_state["draft-genre"], st.session_state["draft-premise"] = genre, premise
            with st.spinner("Writing the opening…"):
                result, error = s.call(
                    lambda: s.run(s.writing.start(genre, premise, mode))  # type: ignore[arg-type]
                )
            if not _fail(error) and result is not None:
                st.session_state["story"] = result[0].id
                st.session_state.pop("draft-premise", None)
                st.rerun()


def _import(s: Studio) -> None:
    with st.sidebar.expander("Import a manuscript"):
        upload = st.file_uploader("Text, Markdown, DOCX, EPUB or PDF", key="manuscript")
        genre = st.text_input("Genre", key="import-genre")
        if upload is not None and st.button("Import and continue"):
            with saved(upload) as path, st.spinner("Reading the manuscript…"):
                result, error = s.call(
                    lambda: s.run(s.writing.import_manuscript(path, genre=genre))
                )
            if not _fail(error) and result is not None:
                st.session_state["story"] = result[0].id
                st.rerun()


def _pick_story(s: Studio) -> Story | None:
    stories, error = s.call(s.writing.stories.all)
    if _fail(error) or not stories:
        st.sidebar.info("No story yet: start one below.")
        return None
    ids = [story.id for story in stories]
    current = st.session_state.get("story", ids[0])
    index = ids.index(current) if current in ids else 0
    chosen = st.sidebar.selectbox(
        "Story", stories, index=index, format_func=lambda story: f"{story.title} (#{story.id})"
    )
    st.session_state["story"] = chosen.id
    return s.writing.stories.get(chosen.id)


def _manage(s: Studio, story: Story) -> None:
    """Rename the story, or delete it (after a confirmation) with all it remembers."""
    with st.sidebar.expander("This story"):
        title = st.text_input("Title", value=story.title, key=f"title-{story.id}")
        if st.button("Rename", disabled=title.strip() == story.title):
            _, error = s.call(lambda: s.writing.stories.rename(story.id, title))
            if not _fail(error):
                st.rerun()
        sure = st.checkbox(f"Yes, delete “{story.title}” and its memory", key=f"sure-{story.id}")
        if st.button("Delete story", disabled=not sure, type="primary"):
            _, error = s.call(lambda: s.writing.delete(story.id))
            if not _fail(error):
                st.session_state.pop("story", None)
                st.rerun()


def _save_draft(s: Studio, story_id: int, key: str) -> None:
    """Keep what the writer typed with the story, so a reload or a crash loses nothing."""
    story = s.writing.stories.get(story_id)
    s.writing.stories.update(story_id, metadata={**story.metadata, "draft": st.session_state[key]})


def _step(s: Studio, story: Story, instruction: str) -> None:
    """Start writing the next paragraph: ``instruction`` is a plan, or the reader's action."""
    interactive = story.mode == "interactive"
    plan, action = (None, instruction) if interactive else (instruction, None)
    _begin(s, story, lambda on: s.writing.writer.step(story.id, plan=plan, action=action,
                                                      on_paragraph=on))  # fmt: skip


def _begin(
    s: Studio, story: Story, work: Callable[[Callable[[str], None]], Coroutine[Any, Any, StoryNode]]
) -> None:
    """Run a step on the studio's loop; the page streams its paragraph (see :func:`_follow`).

    The step survives reruns (typing elsewhere on the page does not stop it); Stop cancels it,
    and a cancelled step stores nothing."""
    streamed = {"text": ""}
    future = s.submit(work(lambda text: streamed.__setitem__("text", text)))
    st.session_state["generation"] = {"story": story.id, "future": future, "streamed": streamed}
    st.rerun()


def _stop() -> None:
    generation = st.session_state.get("generation")
    if generation is not None:
        generation["future"].cancel()


def _follow(s: Studio, story: Story) -> bool:
    """Show a running step's paragraph as it streams, until it ends; whether one was running."""
    generation = st.session_state.get("generation")
    if generation is None or generation["story"] != story.id:
        return False
    future, streamed = generation["future"], generation["streamed"]
    st.button("Stop writing", on_click=_stop, type="primary", key="stop-generation")
    box = st.empty()
    with st.spinner("Writing the next paragraph…"):
        while not future.done():
            box.markdown((streamed["text"] or "…") + " ▌")
            time.sleep(0.1)
    st.session_state.pop("generation", None)
    _, error = s.outcome(future)
    if error == "stopped":
        st.session_state["notice"] = "Stopped: nothing was stored; the plans are as they were."
    elif error:
        st.session_state["notice-error"] = error
    else:
        fresh = s.writing.stories.get(story.id)
        s.writing.stories.update(story.id, metadata={**fresh.metadata, "draft": ""})
    st.rerun()
    return True


def _text(s: Studio, story: Story, head: StoryNode) -> None:
    """The branch's text a page at a time (the last page first), so long books stay fast."""
    count = head.depth + 1  # the nodes from the opening down to the head
    pages = max(1, -(-count // PAGE))
    page = pages
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages})", 1, pages, pages, key=f"page-{head.id}"))
    shown = s.writing.stories.paragraphs(story.id, head.id, (page - 1) * PAGE, page * PAGE)
    with st.container(height=420):
        for paragraph in shown:
            st.write(paragraph)
    st.caption(f"{count} paragraphs, {PAGE} a page")


def _writing_loop(s: Studio, story: Story, head: StoryNode) -> None:
    if notice := st.session_state.pop("notice", None):
        st.info(notice)
    _fail(st.session_state.pop("notice-error", None))
    _text(s, story, head)
    if _follow(s, story):
        return
    st.subheader("What do you do?" if story.mode == "interactive" else "What happens next")
    columns = st.columns(3)
    for i, (column, plan) in enumerate(zip(columns, head.plans, strict=False)):
        edited = column.text_area(f"Option {i + 1}", value=plan, key=f"plan-{head.id}-{i}")
        if column.button("Write this", key=f"go-{head.id}-{i}"):
            _step(s, story, edited)
    own = st.text_input(
        "Or write your own",
        value=str(story.metadata.get("draft", "")),
        key=f"own-{head.id}",
        on_change=_save_draft,
        args=(s, story.id, f"own-{head.id}"),
    )
    cols = st.columns(4)
    if cols[0].button("Write", disabled=not own.strip()):
        _step(s, story, own)
    if cols[1].button("Regenerate", disabled=head.parent_id is None):
        _begin(s, story, lambda on: s.writing.writer.regenerate(story.id, head.id, on_paragraph=on))
    if cols[2].button("Undo", disabled=head.parent_id is None):
        _, error = s.call(lambda: s.writing.tree.undo(story.id))
        if not _fail(error):
            st.rerun()
    with cols[3].popover("Export"):
        st.download_button("Markdown", s.writing.markdown(story.id), f"{story.title}.md")
        st.download_button("Word (DOCX)", s.writing.docx(story.id), f"{story.title}.docx")
        st.download_button("EPUB", s.writing.epub(story.id), f"{story.title}.epub")


def _branches(s: Studio, story: Story, head: StoryNode) -> None:
    tree = s.writing.stories.tree(story.id)
    labels = {nid: f"{'  ' * depth}#{nid} (step {depth})" for nid, _, depth in tree}
    chosen = st.selectbox("Continue from", list(labels), index=list(labels).index(head.id),
                          format_func=labels.__getitem__)  # fmt: skip
    if chosen != head.id and st.button("Switch to this node"):
        s.writing.tree.switch(story.id, chosen)
        st.rerun()
    st.caption(f"{len(tree)} steps in all, {sum(1 for _, p, _ in tree if p is None)} opening")


def _diff(old: str, new: str) -> str:
    """Markdown of a word-level diff: removed words struck out in red, added ones in green."""
    out = []
    for token in difflib.ndiff(old.split(), new.split()):
        word = token[2:].replace("~", "\\~").replace("[", "\\[").replace("]", "\\]")
        if token.startswith("- "):
            out.append(f":red[~~{word}~~]")
        elif token.startswith("+ "):
            out.append(f":green[{word}]")
        elif token.startswith("  "):
            out.append(word)
    return " ".join(out)


def _memory(s: Studio, story: Story, head: StoryNode) -> None:
    st.caption(f"Why it changed: {head.memory_reason or '—'}")
    if head.parent_id is not None:
        parent = s.writing.stories.node(story.id, head.parent_id)
        with st.expander("What changed at this step"):
            st.markdown(_diff(parent.short_term_memory, head.short_term_memory))
    memory = st.text_area("Short-term memory", value=head.short_term_memory,
                          key=f"stm-{head.id}", height=160)  # fmt: skip
    if st.button("Save memory"):
        _, error = s.call(lambda: s.writing.tree.edit_memory(story.id, head.id, memory))
        if not _fail(error):
            st.success("Saved: the next step reads this memory.")
    path = s.writing.stories.path(story.id, head.id)
    rows = [
        {"step": n.depth, "instruction": n.instruction, "short-term memory": n.short_term_memory}
        for n in path
    ]
    st.dataframe(rows, hide_index=True)


def _events(s: Studio, story: Story, head: StoryNode) -> None:
    """Long-term memory along this branch: the surprise timeline, search, pin and forget."""
    path = s.writing.stories.path(story.id, head.id)
    timeline = [eid for node in path for eid in node.episode_ids]
    memory = s.reading.story_memory(story.namespace)
    episodes = {e.id: e for e in s.run(memory.episodes())}
    points = [episodes[eid] for eid in timeline if eid in episodes]
    if points:
        st.caption("Novelty of each event along this branch (a new event starts where it spikes)")
        st.line_chart({"novelty": [e.surprise_mean for e in points]})
    query = st.text_input("Search this branch's memory", key="event-query")
    if not query.strip():
        return
    hits, error = s.call(lambda: s.run(memory.search(query, within=timeline)))
    if _fail(error) or hits is None:
        return
    for hit in hits:
        episode = episodes.get(hit.episode_id)
        pinned = episode is not None and episode.pinned
        with st.expander(
            f"{'📌 ' if pinned else ''}{hit.reason} {hit.score:.2f}: {hit.text[:60]}…"
        ):
            st.write(hit.text)
            left, right = st.columns(2)
            if left.button("Unpin" if pinned else "Pin", key=f"pin-{hit.episode_id}"):
                s.run(memory.pin(hit.episode_id, not pinned))
                st.rerun()
            if right.button("Forget", key=f"forget-{hit.episode_id}", disabled=pinned):
                _, error = s.call(partial(s.run, memory.forget([hit.episode_id])))
                if not _fail(error):
                    st.rerun()


def _bible(s: Studio, story: Story) -> None:
    st.caption("Entries named in the plan or the last paragraph (or sharing its words) go into "
               "the prompt.")  # fmt: skip
    for entry in s.writing.stories.entries(story.id):
        with st.expander(f"{entry.name} ({entry.kind})"):
            st.write(entry.text)
            if st.button("Delete", key=f"bible-delete-{entry.id}"):
                s.writing.stories.delete_entry(story.id, entry.id)
                st.rerun()
    with st.form("bible-entry"):
        name = st.text_input("Name")
        kind = st.selectbox("Kind", ["character", "place", "fact", "other"])
        text = st.text_area("What to remember")
        if st.form_submit_button("Save entry"):
            _, error = s.call(
                lambda: s.writing.stories.upsert_entry(story.id, kind=kind, name=name, text=text)
            )
            if not _fail(error):
                st.rerun()


def _budget(head: StoryNode) -> None:
    parts = {name: int(value["tokens"]) for name, value in head.prompt.get("parts", {}).items()}
    if not parts:
        st.info("This node has no recorded prompt (the opening's is in its own step).")
        return
    st.metric("Prompt tokens", sum(parts.values()))
    st.bar_chart(parts, horizontal=True)
    st.dataframe([{"part": k, "tokens": v} for k, v in parts.items()], hide_index=True)


def main() -> None:
    st.title("Write")
    s = studio()
    _new_story(s)
    _import(s)
    story = _pick_story(s)
    if story is None or story.head_node_id is None:
        return
    _manage(s, story)
    head = s.writing.stories.node(story.id, story.head_node_id)
    st.header(story.title)
    st.caption(f"{story.genre} · {story.mode} · step {head.depth}")
    write, branches, memory, events, bible, budget = st.tabs(
        ["Write", "Branches", "Memory", "Events", "Bible", "Token budget"]
    )
    with write:
        _writing_loop(s, story, head)
    with branches:
        _branches(s, story, head)
    with memory:
        _memory(s, story, head)
    with events:
        _events(s, story, head)
    with bible:
        _bible(s, story)
    with budget:
        _budget(head)
