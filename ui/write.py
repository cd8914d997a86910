"""The writer's page: stories, the writing loop, branches, memory and the token budget."""

from __future__ import annotations

import difflib
import textwrap
import time
from functools import partial

import streamlit as st

from app.story_runs import OPENING, STOPPED, JobStatus
from app.studio import Studio
from app.writing import GENRE_CHARS, PREMISE_CHARS, Story, StoryNode, Writing
from ui.studio import current
from ui.uploads import saved

PAGE = 20
"""Paragraphs shown per page of the text."""
EVENTS_SHOWN = 200
"""Most events of a branch plotted and listed (its latest)."""


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
        genre = st.text_input("Genre", value=st.session_state.get("draft-genre", ""),
                              max_chars=GENRE_CHARS)  # fmt: skip
        premise = st.text_area("Premise", value=st.session_state.get("draft-premise", ""),
                               max_chars=PREMISE_CHARS)  # fmt: skip
        mode = st.radio("Mode", ["novel", "interactive"], horizontal=True)
        if st.form_submit_button("Start"):
            st.session_state["draft-genre"], st.session_state["draft-premise"] = genre, premise
            _open(s, genre, premise, str(mode))


def _open(s: Studio, genre: str, premise: str, mode: str) -> None:
    """Start writing a story's opening (bad input is refused before any model loads)."""
    job, error = s.call(lambda: s.run(s.runs.opening(genre, premise, mode)))  # type: ignore[arg-type]
    if not _fail(error) and job is not None:
        st.session_state["watching"] = job.id
        st.rerun()


def _follow_openings(s: Studio) -> bool:
    """Show the stories being started, streaming, with Stop; whether one was running."""
    openings = s.runs.openings()
    watching = st.session_state.get("watching")
    if not openings and watching is not None:
        ended = s.runs.get(watching)
        openings = [ended] if ended.kind == OPENING else []  # it ended before the page looked
    for job in openings:
        st.subheader(f"Starting a story: {job.payload.get('premise', '')[:80]}")
        _follow_run(s, job.id, what="opening")
    return bool(openings)


_PHASES = {
    "queued": "Loading the model…",
    "frame": "Planning the title and outline…",
    "paragraph": "Writing the paragraph…",
    "notes": "Paragraph written. Updating the memory and the plans…",
    "storing": "Storing…",
}


def _follow_run(s: Studio, job_id: str, *, what: str = "step") -> None:
    """Stream a run's paragraph until it ends, with Stop; then say what happened."""
    st.button("Stop writing", on_click=s.runs.stop, args=(job_id,), type="primary",
              key=f"stop-{job_id}")  # fmt: skip
    status, box, notice = st.empty(), st.empty(), st.empty()
    job = s.runs.get(job_id)
    while job.status in (JobStatus.RUNNING, JobStatus.QUEUED):
        payload = job.payload
        attempt = int(payload.get("attempt", 1))
        tries = f" (try {attempt} of {s.writing.config.attempts})" if attempt > 1 else ""
        status.caption(_PHASES.get(str(payload.get("phase")), "Writing…") + tries)
        if payload.get("notice"):
            notice.info(str(payload["notice"]))
        text = str(payload.get("paragraph", ""))
        cursor = " ▌" if payload.get("phase") == "paragraph" else ""
        box.markdown((text or "…") + cursor)
        time.sleep(0.2)
        job = s.runs.get(job_id)
    st.session_state.pop("watching", None)
    if job.status is JobStatus.DONE and job.result:
        story_id = int(job.result["story_id"])
        st.session_state["story"] = story_id
        node = s.writing.node(story_id, int(job.result["node_id"]))
        st.session_state["notice"] = (
            f"The story moved on: step {node.depth} was added and is now the head."
            if what == "step" else "The story has begun."
        )  # fmt: skip
        if what == "step":
            s.writing.save_draft(story_id, "")
    else:
        st.session_state["failed"] = {"job": job_id, "what": what, "error": job.error}
    st.rerun()


def _failed(s: Studio, story: Story | None) -> None:
    """The last run's failure in one sentence, with Regenerate (the same instruction again)."""
    failed = st.session_state.get("failed")
    if failed is None:
        return
    job = s.runs.get(failed["job"])
    if failed["error"] == STOPPED:
        st.info("Stopped: nothing was stored; the plans are as they were.")
        st.session_state.pop("failed")
        return
    st.error(failed["error"] or "The writer stopped; nothing was stored.")
    if st.button("Regenerate", key="regenerate-failed", type="primary"):
        st.session_state.pop("failed")
        payload = job.payload
        if failed["what"] == "opening":
            _open(s, str(payload["genre"]), str(payload["premise"]), str(payload["mode"]))
        elif story is not None:
            _step(s, story, str(payload.get("instruction", "")))


def _import(s: Studio) -> None:
    with st.sidebar.expander("Import a manuscript"):
        upload = st.file_uploader("Text, Markdown, DOCX, EPUB or PDF", key="manuscript")
        genre = st.text_input("Genre", key="import-genre")
        if upload is not None and st.button("Import and continue"):
            with saved(upload) as path, st.spinner("Reading the manuscript…"):
                result, error = s.call(
                    lambda: s.run(
                        s.writing.import_manuscript(path, genre=genre, shown_as=upload.name)
                    )
                )
            if not _fail(error) and result is not None:
                st.session_state["story"] = result[0].id
                st.rerun()


def _pick_story(s: Studio) -> Story | None:
    stories, error = s.call(s.writing.list_stories)
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
    return s.writing.story(chosen.id)


def _manage(s: Studio, story: Story) -> None:
    """Rename the story, or delete it (after a confirmation) with all it remembers."""
    with st.sidebar.expander("This story"):
        title = st.text_input("Title", value=story.title, key=f"title-{story.id}")
        if st.button("Rename", disabled=title.strip() == story.title):
            _, error = s.call(lambda: s.writing.rename(story.id, title))
            if not _fail(error):
                st.rerun()
        sure = st.checkbox(f"Yes, delete “{story.title}” and its memory", key=f"sure-{story.id}")
        busy = s.runs.running(story.id) is not None
        if st.button("Delete story", disabled=not sure or busy, type="primary",
                     help="Stop the running step first" if busy else None):  # fmt: skip
            _, error = s.call(lambda: s.writing.delete(story.id))
            if not _fail(error):
                st.session_state.pop("story", None)
                st.rerun()


def _save_draft(s: Studio, story_id: int, key: str) -> None:
    """Keep what the writer typed with the story, so a reload or a crash loses nothing."""
    s.writing.save_draft(story_id, st.session_state[key])


def _step(s: Studio, story: Story, instruction: str, *, regenerate: int | None = None) -> None:
    """Start writing the next paragraph: ``instruction`` is a plan, or the reader's action. The
    step runs on the server: a reload or a second tab finds it and follows it."""
    interactive = story.mode == "interactive"
    plan, action = (None, instruction) if interactive else (instruction, None)
    job, error = s.call(lambda: s.run(s.runs.step(story.id, plan=plan, action=action,
                                                  regenerate=regenerate)))  # fmt: skip
    if not _fail(error) and job is not None:
        st.session_state["watching"] = job.id
        st.rerun()


def _follow(s: Studio, story: Story) -> bool:
    """Follow the story's running step, if any (started here, in another tab, or before a
    reload); whether one was running."""
    running = s.runs.running(story.id)
    if running is None and (watching := st.session_state.get("watching")) is not None:
        running = s.runs.get(watching)  # it ended before this page looked: show how
    if running is None:
        return False
    if running.payload.get("instruction"):
        st.caption(f"Writing: {running.payload['instruction']}")
    _follow_run(s, running.id)
    return True


def _text(s: Studio, story: Story, head: StoryNode) -> None:
    """The branch's text a page at a time (the last page first), so long books stay fast; an
    interactive story shows the reader's actions in the transcript."""
    count = head.depth + 1  # the nodes from the opening down to the head
    pages = max(1, -(-count // PAGE))
    page = pages
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages})", 1, pages, pages, key=f"page-{head.id}"))
    shown = s.writing.transcript(story.id, head.id, (page - 1) * PAGE, page * PAGE)
    interactive = story.mode == "interactive"
    with st.container(height=420):
        for instruction, paragraph in shown:
            if interactive and instruction:
                st.markdown(f"**▶ You:** *{instruction}*")
            st.write(paragraph)
    st.caption(f"{count} paragraphs, {PAGE} a page")


def _writing_loop(s: Studio, story: Story, head: StoryNode) -> None:
    if notice := st.session_state.pop("notice", None):
        st.success(notice)
    _text(s, story, head)
    if _follow(s, story):
        return
    _failed(s, story)
    interactive = story.mode == "interactive"
    st.subheader("What do you do?" if interactive else "What happens next")
    if not head.plans:
        st.caption("The model left no options after this paragraph: write your own below, or")
        if st.button("Continue the story", key=f"continue-{head.id}",
                     help="Write the next paragraph with no plan: the story goes on"):  # fmt: skip
            _step(s, story, "")
    if interactive:
        for i, option in enumerate(head.plans):
            if st.button(f"▶ {option}", key=f"go-{head.id}-{i}", help="Do this: the story "
                         "answers with the next paragraph"):  # fmt: skip
                _step(s, story, option)
    else:
        columns = st.columns(3)
        for i, (column, plan) in enumerate(zip(columns, head.plans, strict=False)):
            edited = column.text_area(f"Option {i + 1}", value=plan, key=f"plan-{head.id}-{i}")
            if column.button("Write this", key=f"go-{head.id}-{i}",
                             help="Write the next paragraph following this plan"):  # fmt: skip
                _step(s, story, edited)
    own = st.text_input(
        "Or do something else" if interactive else "Or write your own",
        value=str(story.metadata.get("draft", "")),
        key=f"own-{head.id}",
        on_change=_save_draft,
        args=(s, story.id, f"own-{head.id}"),
    )
    cols = st.columns(4)
    if cols[0].button("Do it" if interactive else "Write", disabled=not own.strip()):
        _step(s, story, own)
    if cols[1].button("Regenerate", disabled=head.parent_id is None,
                      help="Another take on the last paragraph, as a sibling branch"):  # fmt: skip
        _step(s, story, head.instruction, regenerate=head.id)
    if cols[2].button("Undo", disabled=head.parent_id is None,
                      help="Go back one step (the step stays, as a branch)"):  # fmt: skip
        _, error = s.call(lambda: s.writing.undo(story.id))
        if not _fail(error):
            st.rerun()
    with cols[3].popover("Export"):
        st.download_button("Markdown", s.writing.markdown(story.id), f"{story.title}.md")
        st.download_button("Word (DOCX)", s.writing.docx(story.id), f"{story.title}.docx")
        st.download_button("EPUB", s.writing.epub(story.id), f"{story.title}.epub")


def _tree_dot(previews: list[tuple[int, int | None, str]], head: int) -> str:
    """The story tree in Graphviz DOT: each node with its preview; the head highlighted."""
    lines = ["digraph story {", "rankdir=TB;", 'node [shape=box, style="rounded,filled", '
             'fillcolor="#f5f5f5", fontsize=10];']  # fmt: skip
    for node_id, parent, preview in previews:
        label = textwrap.fill(preview.replace('"', "'").replace("\\", "/"), 28)[:90]
        color = ', fillcolor="#ffd8a8"' if node_id == head else ""
        lines.append(f'n{node_id} [label="#{node_id}\\n{label}…"{color}];')
        if parent is not None:
            lines.append(f"n{parent} -> n{node_id};")
    return "\n".join([*lines, "}"])


def _branches(s: Studio, story: Story, head: StoryNode) -> None:
    """The Loom view: the whole tree with a preview of each node; continue from any node, and
    edit a node's paragraph in place (earlier versions are kept)."""
    previews = s.writing.previews(story.id)
    st.graphviz_chart(_tree_dot(previews, head.id))
    labels = {nid: f"#{nid}: {preview[:60]}…" for nid, _, preview in previews}
    chosen = st.selectbox("Node", list(labels), index=list(labels).index(head.id),
                          format_func=labels.__getitem__)  # fmt: skip
    node = s.writing.node(story.id, chosen)
    if chosen != head.id and st.button("Continue from here", type="primary"):
        s.writing.branch(story.id, chosen)
        st.session_state["notice"] = f"Continuing from node #{chosen}."
        st.rerun()
    with st.form(f"edit-{chosen}"):
        text = st.text_area("Paragraph (edit in place)", value=node.paragraph, height=200)
        if st.form_submit_button("Save paragraph"):
            _, error = s.call(lambda: s.run(s.writing.edit_paragraph(story.id, chosen, text)))
            if not _fail(error):
                st.session_state["notice"] = f"Saved: node #{chosen} now reads as edited."
                st.rerun()
    versions = node.metadata.get("versions", [])
    if versions:
        with st.expander(f"Earlier versions ({len(versions)})"):
            for version in reversed(versions):
                st.write(version["paragraph"])
                st.divider()
    st.caption(f"{len(previews)} steps in all, {sum(1 for _, p, _ in previews if p is None)} "
               "opening")  # fmt: skip


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
        parent = s.writing.node(story.id, head.parent_id)
        with st.expander("What changed at this step"):
            st.markdown(_diff(parent.short_term_memory, head.short_term_memory))
    memory = st.text_area("Short-term memory", value=head.short_term_memory,
                          key=f"stm-{head.id}", height=160)  # fmt: skip
    if st.button("Save memory"):
        _, error = s.call(lambda: s.writing.edit_memory(story.id, head.id, memory))
        if not _fail(error):
            st.success("Saved: the next step reads this memory.")
    path = s.writing.path(story.id, head.id)
    rows = [
        {"step": n.depth, "instruction": n.instruction, "short-term memory": n.short_term_memory}
        for n in path
    ]
    st.dataframe(rows, hide_index=True)


@st.cache_data(max_entries=64, show_spinner=False)
def _novelty(texts: tuple[str, ...], _writing: Writing) -> list[float]:
    """:meth:`Writing.novelty` of the events, cached by their texts (embedding them is slow)."""
    return _writing.novelty(texts)


def _events(s: Studio, story: Story, head: StoryNode) -> None:
    """Long-term memory along this branch: its events, how new each one is, search, pin, forget."""
    events = s.run(s.writing.events(story.id, head.id))
    episodes = {e.id: e for e in events}
    points = events[-EVENTS_SHOWN:]
    if not points:
        st.info("No events yet: each stored paragraph becomes one (a moment after it is written).")
    else:
        surprise = [e.surprise_mean for e in points]
        if max(surprise) - min(surprise) > 1e-6:
            signal, what = surprise, "surprise (mean -log p of the event's tokens)"
        else:
            signal, what = _novelty(tuple(e.text for e in points), s.writing), "novelty"
        st.caption(f"Events along this branch, by {what}: a high point is a turn in the story")
        st.line_chart({what.split(" ")[0]: signal})
        st.dataframe(
            [{"event": e.ordinal, what.split(" ")[0]: round(v, 3), "pinned": e.pinned,
              "text": e.text[:120]} for e, v in zip(points, signal, strict=True)],
            hide_index=True,
        )  # fmt: skip
    query = st.text_input("Search this branch's memory", key="event-query")
    if not query.strip():
        return
    hits, error = s.call(lambda: s.run(s.writing.search_events(story.id, head.id, query)))
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
                s.run(s.writing.pin_event(story.id, hit.episode_id, not pinned))
                st.rerun()
            if right.button("Forget", key=f"forget-{hit.episode_id}", disabled=pinned):
                _, error = s.call(partial(s.run, s.writing.forget_event(story.id, hit.episode_id)))
                if not _fail(error):
                    st.rerun()


def _suggestions(s: Studio, story: Story, head: StoryNode) -> None:
    """The model's proposed bible entries for the last paragraph: accept or dismiss each."""
    suggested = list(head.metadata.get("bible_suggestions", []))
    if not suggested:
        return
    st.subheader("Suggested entries")
    for i, item in enumerate(suggested):
        left, accept, dismiss = st.columns([6, 1, 1])
        left.markdown(f"**{item['name']}** ({item['kind']}): {item['text']}")
        if accept.button("Accept", key=f"accept-{head.id}-{i}"):
            _, error = s.call(partial(s.writing.accept_suggestion, story.id, head.id, i))
            if not _fail(error):
                st.rerun()
        if dismiss.button("Dismiss", key=f"dismiss-{head.id}-{i}"):
            s.writing.dismiss_suggestion(story.id, head.id, i)
            st.rerun()


def _bible(s: Studio, story: Story, head: StoryNode) -> None:
    _suggestions(s, story, head)
    st.caption("Entries named in the plan or the last paragraph (or sharing its words) go into "
               "the prompt.")  # fmt: skip
    for entry in s.writing.entries(story.id):
        with st.expander(f"{entry.name} ({entry.kind})"):
            st.write(entry.text)
            if st.button("Delete", key=f"bible-delete-{entry.id}"):
                s.writing.delete_entry(story.id, entry.id)
                st.rerun()
    with st.form("bible-entry"):
        name = st.text_input("Name")
        kind = st.selectbox("Kind", ["character", "place", "fact", "other"])
        text = st.text_area("What to remember")
        if st.form_submit_button("Save entry"):
            _, error = s.call(
                lambda: s.writing.save_entry(story.id, kind=kind, name=name, text=text)
            )
            if not _fail(error):
                st.rerun()


def _budget(head: StoryNode) -> None:
    """What the step's two prompts held, part by part: the paragraph's and the notes'."""
    prompts = {"Prompt tokens": head.prompt, "Notes prompt tokens": head.prompt.get("notes", {})}
    for label, record in prompts.items():
        parts = {name: int(value["tokens"]) for name, value in record.get("parts", {}).items()}
        if not parts:
            continue
        st.metric(label, sum(parts.values()))
        st.bar_chart(parts, horizontal=True)
        st.dataframe([{"part": k, "tokens": v} for k, v in parts.items()], hide_index=True)


def main() -> None:
    st.title("Write")
    s = studio()
    _new_story(s)
    _import(s)
    if _follow_openings(s):
        return
    story = _pick_story(s)
    if story is None or story.head_node_id is None:
        _failed(s, None)
        return
    _manage(s, story)
    head = s.writing.node(story.id, story.head_node_id)
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
        _bible(s, story, head)
    with budget:
        _budget(head)
