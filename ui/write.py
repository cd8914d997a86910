"""The writer's page: stories, the writing loop, branches, memory and the token budget."""

from __future__ import annotations

from functools import partial

import streamlit as st

from app.studio import Studio, current
from app.writing import Story, StoryNode
from ui.uploads import saved


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


def _save_draft(s: Studio, story_id: int, key: str) -> None:
    """Keep what the writer typed with the story, so a reload or a crash loses nothing."""
    story = s.writing.stories.get(story_id)
    s.writing.stories.update(story_id, metadata={**story.metadata, "draft": st.session_state[key]})


def _step(s: Studio, story: Story, instruction: str) -> None:
    """Write the next paragraph: ``instruction`` is a plan, or the reader's action."""
    interactive = story.mode == "interactive"
    plan, action = (None, instruction) if interactive else (instruction, None)
    with st.spinner("Writing the next paragraph…"):
        _, error = s.call(lambda: s.run(s.writing.writer.step(story.id, plan=plan, action=action)))
    if not _fail(error):
        fresh = s.writing.stories.get(story.id)
        s.writing.stories.update(story.id, metadata={**fresh.metadata, "draft": ""})
        st.rerun()


def _writing_loop(s: Studio, story: Story, head: StoryNode) -> None:
    text = s.writing.markdown(story.id).split("\n\n", 2)[-1]
    paragraphs = text.strip().split("\n\n")
    with st.container(height=420):
        for paragraph in paragraphs[-30:]:
            st.write(paragraph)
    if len(paragraphs) > 30:
        st.caption(f"Showing the last 30 of {len(paragraphs)} paragraphs (export for all).")
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
        with st.spinner("Writing another take…"):
            _, error = s.call(lambda: s.run(s.writing.writer.regenerate(story.id, head.id)))
        if not _fail(error):
            st.rerun()
    if cols[2].button("Undo", disabled=head.parent_id is None):
        _, error = s.call(lambda: s.writing.writer.undo(story.id))
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
        s.writing.writer.switch(story.id, chosen)
        st.rerun()
    st.caption(f"{len(tree)} steps in all, {sum(1 for _, p, _ in tree if p is None)} opening")


def _memory(s: Studio, story: Story, head: StoryNode) -> None:
    st.caption(f"Why it changed: {head.memory_reason or '—'}")
    memory = st.text_area("Short-term memory", value=head.short_term_memory,
                          key=f"stm-{head.id}", height=160)  # fmt: skip
    if st.button("Save memory"):
        _, error = s.call(lambda: s.writing.writer.edit_memory(story.id, head.id, memory))
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
