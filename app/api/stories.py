"""``/v1/stories``: start a story, write the next paragraph, branch, undo, export, delete.

A story's long-term memory is a namespace ``tenant:<name>/stories/<uuid>``; the story is the
tenant's when its namespace is under the tenant's prefix (another tenant's story answers 404).
Story and node ids are public ids (``app/api/ids.py``): routes decode them once, name the id the
client sent in their own messages, and reword the messages that come from below.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from agents.errors import StepFailed
from agents.writer_config import check_opening
from app.api.admission import admitted
from app.api.auth import Authenticated, Services
from app.api.errors import ERROR_RESPONSES, MODEL_RESPONSES
from app.api.ids import PublicIds
from app.api.schemas import (
    BranchRequest,
    Deleted,
    NodeOut,
    RecordId,
    RunOut,
    StepRequest,
    StoryCreate,
    StoryList,
    StoryOut,
)
from app.api.services import ApiServices, Caller
from app.errors import Conflict
from app.story_runs import STOPPED
from memory import NotFound, Story, StoryNode
from memory.errors import InvalidRecord
from memory.records import Job, JobStatus
from serving.server.disconnect import ClientGone

router = APIRouter(prefix="/v1", tags=["stories"], responses=ERROR_RESPONSES)

_EXPORTS = {
    "markdown": ("text/markdown; charset=utf-8", "md"),
    "docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
    "epub": ("application/epub+zip", "epub"),
}


def node_out(ids: PublicIds, node: StoryNode) -> NodeOut:
    return NodeOut(
        id=ids.nodes.encode(node.id),
        parent_id=None if node.parent_id is None else ids.nodes.encode(node.parent_id),
        depth=node.depth,
        instruction=node.instruction,
        paragraph=node.paragraph,
        short_term_memory=node.short_term_memory,
        plans=list(node.plans),
        created_at=node.created_at,
    )


def _story_out(api: ApiServices, story: Story) -> StoryOut:
    head = None
    if story.head_node_id is not None:
        head = node_out(api.ids, api.writing.node(story.id, story.head_node_id))
    return StoryOut(
        id=api.ids.stories.encode(story.id),
        title=story.title,
        genre=story.genre,
        premise=story.premise,
        outline=story.outline,
        mode=story.mode.value,
        head=head,
        created_at=story.created_at,
        updated_at=story.updated_at,
    )


def _missing(story_id: int) -> NotFound:
    return NotFound(f"story {story_id} does not exist; list yours with GET /v1/stories")


@contextmanager
def _still_there(story_id: int) -> Iterator[None]:
    """A NotFound from below (the story was deleted meanwhile, by another request) as the
    route's own 404, naming the public ``story_id`` rather than the row id."""
    try:
        yield
    except NotFound as err:
        raise _missing(story_id) from err


def _owned(api: ApiServices, caller: Caller, story_id: int) -> Story:
    """The tenant's story of public id ``story_id``; the same 404 whether it is missing or
    someone else's."""
    try:
        story = api.writing.story(api.ids.stories.decode(story_id))
    except NotFound:
        story = None
    if story is None or not story.namespace.startswith(caller.stories):
        raise _missing(story_id)
    return story


def _node(api: ApiServices, story: Story, story_id: int, node_id: int) -> StoryNode:
    """The node of public id ``node_id`` in ``story`` (public id ``story_id``), else 404."""
    try:
        return api.writing.node(story.id, api.ids.nodes.decode(node_id))
    except NotFound as err:
        raise NotFound(f"node {node_id} is not in story {story_id}") from err


async def _finished(api: ApiServices, job: Job) -> tuple[int, int]:
    """Wait for a run; the story and node it stored (row ids), or its error (stopped: 409)."""
    try:
        job = await api.runs.wait(job.id)
    except asyncio.CancelledError:  # the client left: the run stops and stores nothing
        api.runs.stop(job.id)
        raise
    if job.status is JobStatus.DONE and job.result:
        return int(job.result["story_id"]), int(job.result["node_id"])
    if job.error == STOPPED:
        raise Conflict("the step was stopped before it finished; nothing was stored")
    raise StepFailed(api.ids.reword(job.error or "the writer stopped; nothing was stored"))


async def _writing(
    api: ApiServices, caller: Caller, request: Request, start: Callable[[], Awaitable[Job]]
) -> tuple[int, int] | None:
    """Run the writer's job that ``start`` launches through admission (429 when too much is
    queued, 504 past the deadline, stopped if the client leaves: then None)."""
    ticket = api.model_gate.enter(caller.tenant)
    try:
        await api.load_llm()
    except BaseException:
        ticket.release()
        raise

    async def write() -> tuple[int, int]:
        return await _finished(api, await start())

    try:
        return await admitted(ticket, write, deadline_s=api.settings.api_request_timeout_s,
                              what="paragraph", receive=request.receive)  # fmt: skip
    except ClientGone:
        return None


@router.post("/stories", status_code=201, response_model=StoryOut, responses=MODEL_RESPONSES)
async def create_story(
    body: StoryCreate, request: Request, api: Services, caller: Authenticated
) -> StoryOut | Response:
    """Start a story from a genre and a premise (title, outline, opening, three plans)."""
    check_opening(body.genre, body.premise, body.mode)  # before the model loads
    namespace = f"{caller.stories}{uuid.uuid4().hex}"

    def start() -> Awaitable[Job]:
        return api.runs.opening(body.genre, body.premise, body.mode, namespace=namespace)

    written = await _writing(api, caller, request, start)
    if written is None:
        return Response(status_code=499)  # the client left; the opening was stopped
    story = await asyncio.to_thread(api.writing.story, written[0])
    return await asyncio.to_thread(_story_out, api, story)


@router.get("/stories", response_model=StoryList)
def list_stories(api: Services, caller: Authenticated) -> StoryList:
    mine = [s for s in api.writing.list_stories() if s.namespace.startswith(caller.stories)]
    shown = []
    for story in mine:
        with contextlib.suppress(NotFound):  # deleted while listing
            shown.append(_story_out(api, story))
    return StoryList(stories=shown)


@router.get("/stories/{story_id}", response_model=StoryOut)
def get_story(story_id: RecordId, api: Services, caller: Authenticated) -> StoryOut:
    story = _owned(api, caller, story_id)
    with _still_there(story_id):
        return _story_out(api, story)


@router.post(
    "/stories/{story_id}/steps", status_code=201, response_model=NodeOut, responses=MODEL_RESPONSES
)
async def step(
    story_id: RecordId, body: StepRequest, request: Request, api: Services, caller: Authenticated
) -> NodeOut | Response:
    """Write the next paragraph after the head (or ``parent_id``) from a plan or an action."""
    story = await asyncio.to_thread(_owned, api, caller, story_id)
    parent = None
    if body.parent_id is not None:
        parent = await asyncio.to_thread(_node, api, story, story_id, body.parent_id)

    def busy(run: Job) -> Conflict:
        return Conflict(
            f"story {story_id} is already writing a paragraph (run {run.id}); wait for it "
            f"or stop it: DELETE /v1/stories/{story_id}/steps/running"
        )

    with _still_there(story_id):
        if (running := api.runs.running(story.id)) is not None:  # 409 before queueing
            raise busy(running)

    async def start() -> Job:
        with _still_there(story_id):
            try:
                return await api.runs.step(
                    story.id,
                    plan=body.plan,
                    action=body.action,
                    parent_id=None if parent is None else parent.id,
                )
            except Conflict as err:  # another step started meanwhile: the 409 above, public
                if (running := api.runs.running(story.id)) is not None:
                    raise busy(running) from err
                raise Conflict(api.ids.reword(str(err))) from err

    written = await _writing(api, caller, request, start)
    if written is None:
        return Response(status_code=499)  # the client left; the step was stopped
    with _still_there(story_id):
        node = await asyncio.to_thread(api.writing.node, story.id, written[1])
    return node_out(api.ids, node)


def _run_out(ids: PublicIds, job: Job) -> RunOut:
    payload = job.payload
    return RunOut(
        id=job.id,
        status=job.status.value,
        phase=str(payload.get("phase", "queued")),
        instruction=str(payload.get("instruction", "")),
        paragraph=str(payload.get("paragraph", "")),
        attempt=int(payload.get("attempt", 1)),
        notice=str(payload.get("notice", "")),
        error=None if job.error is None else ids.reword(job.error),
        node_id=None if not job.result else ids.nodes.encode(int(job.result["node_id"])),
    )


@router.get("/stories/{story_id}/steps/running", response_model=RunOut)
def running_step(story_id: RecordId, api: Services, caller: Authenticated) -> RunOut:
    """The step the story is writing now, with its paragraph as streamed so far (404: none)."""
    return _run_out(api.ids, _running(api, caller, story_id))


def _running(api: ApiServices, caller: Caller, story_id: int) -> Job:
    story = _owned(api, caller, story_id)
    with _still_there(story_id):
        job = api.runs.running(story.id)
    if job is None:
        raise NotFound(f"story {story_id} is not writing a step now")
    return job


@router.delete("/stories/{story_id}/steps/running", response_model=RunOut)
def stop_step(story_id: RecordId, api: Services, caller: Authenticated) -> RunOut:
    """Stop the running step; nothing of it is stored (404: none is running)."""
    job = _running(api, caller, story_id)
    api.runs.stop(job.id)
    return _run_out(api.ids, job)


@router.post("/stories/{story_id}/branch", response_model=NodeOut)
def branch(
    story_id: RecordId, body: BranchRequest, api: Services, caller: Authenticated
) -> NodeOut:
    """Continue from any node: it becomes the head; the next step sees its memory."""
    story = _owned(api, caller, story_id)
    node = _node(api, story, story_id, body.node_id)  # another story's node: a 404, no branch
    with _still_there(story_id):
        return node_out(api.ids, api.writing.branch(story.id, node.id))


@router.post("/stories/{story_id}/undo", response_model=NodeOut)
def undo(story_id: RecordId, api: Services, caller: Authenticated) -> NodeOut:
    """Move the head back to its parent (the undone step stays, as a branch)."""
    story = _owned(api, caller, story_id)
    try:
        with _still_there(story_id):
            return node_out(api.ids, api.writing.undo(story.id))
    except InvalidRecord as err:  # at the opening, or not started: a state, not a bad request
        raise Conflict(f"story {story_id}: {api.ids.reword(str(err))}") from err


@router.get(
    "/stories/{story_id}/export",
    response_class=Response,
    responses={
        200: {
            "content": {kind: {} for kind, _ in _EXPORTS.values()},
            "description": "The story along its current branch.",
        }
    },
)
def export(
    story_id: RecordId,
    api: Services,
    caller: Authenticated,
    format: Literal["markdown", "docx", "epub"] = Query("markdown"),
) -> Response:
    """The story from its opening to the head, as Markdown, DOCX or EPUB."""
    story = _owned(api, caller, story_id)
    media, extension = _EXPORTS[format]
    with _still_there(story_id):
        if format == "markdown":
            data: bytes = api.writing.markdown(story.id).encode("utf-8")
        elif format == "docx":
            data = api.writing.docx(story.id)
        else:
            data = api.writing.epub(story.id, identifier=f"mneme-story-{story_id}")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", story.title).strip("-")[:60] or "story"
    headers = {"Content-Disposition": f'attachment; filename="{slug}.{extension}"'}
    return Response(data, media_type=media, headers=headers)


@router.delete("/stories/{story_id}", response_model=Deleted)
def delete_story(story_id: RecordId, api: Services, caller: Authenticated) -> Deleted:
    """Delete a story with its tree and its long-term memory (rows and vectors); refused (409)
    while a step of it is running."""
    story = _owned(api, caller, story_id)
    with _still_there(story_id):
        if api.runs.running(story.id) is not None:
            raise Conflict(
                f"story {story_id} is writing a step; stop it first (DELETE …/steps/running)"
            )
        api.writing.delete(story.id)
    return Deleted(id=api.ids.stories.encode(story.id), deleted=True)
