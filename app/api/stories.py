"""``/v1/stories``: start a story, write the next paragraph, branch, undo, export, delete.

A story's long-term memory is a namespace ``tenant:<name>/stories/<uuid>``; the story is the
tenant's when its namespace is under the tenant's prefix (another tenant's story answers 404).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from agents.errors import StepFailed
from agents.writer import check_opening
from app.api.admission import admitted
from app.api.auth import Authenticated, Services
from app.api.errors import ERROR_RESPONSES, MODEL_RESPONSES
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


def node_out(node: StoryNode) -> NodeOut:
    return NodeOut(
        id=node.id,
        parent_id=node.parent_id,
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
        head = node_out(api.writing.stories.node(story.id, story.head_node_id))
    return StoryOut(
        id=story.id,
        title=story.title,
        genre=story.genre,
        premise=story.premise,
        outline=story.outline,
        mode=story.mode.value,
        head=head,
        created_at=story.created_at,
        updated_at=story.updated_at,
    )


def _owned(api: ApiServices, caller: Caller, story_id: int) -> Story:
    """The tenant's story ``story_id``; the same 404 whether it is missing or someone else's."""
    try:
        story = api.writing.stories.get(story_id)
    except NotFound:
        story = None
    if story is None or not story.namespace.startswith(caller.stories):
        raise NotFound(f"story {story_id} does not exist; list yours with GET /v1/stories")
    return story


def _node(api: ApiServices, story_id: int, node_id: int) -> StoryNode:
    try:
        return api.writing.stories.node(story_id, node_id)
    except NotFound as err:
        raise NotFound(f"node {node_id} is not in story {story_id}") from err


async def _finished(api: ApiServices, job: Job) -> tuple[int, int]:
    """Wait for a run; the story and node it stored, or its error (stopped: 409)."""
    try:
        job = await api.runs.wait(job.id)
    except asyncio.CancelledError:  # the client left: the run stops and stores nothing
        api.runs.stop(job.id)
        raise
    if job.status is JobStatus.DONE and job.result:
        return int(job.result["story_id"]), int(job.result["node_id"])
    if job.error == STOPPED:
        raise Conflict("the step was stopped before it finished; nothing was stored")
    raise StepFailed(job.error or "the writer stopped; nothing was stored")


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
    story = await asyncio.to_thread(api.writing.stories.get, written[0])
    return await asyncio.to_thread(_story_out, api, story)


@router.get("/stories", response_model=StoryList)
def list_stories(api: Services, caller: Authenticated) -> StoryList:
    mine = [s for s in api.writing.stories.all() if s.namespace.startswith(caller.stories)]
    return StoryList(stories=[_story_out(api, s) for s in mine])


@router.get("/stories/{story_id}", response_model=StoryOut)
def get_story(story_id: RecordId, api: Services, caller: Authenticated) -> StoryOut:
    return _story_out(api, _owned(api, caller, story_id))


@router.post(
    "/stories/{story_id}/steps", status_code=201, response_model=NodeOut, responses=MODEL_RESPONSES
)
async def step(
    story_id: RecordId, body: StepRequest, request: Request, api: Services, caller: Authenticated
) -> NodeOut | Response:
    """Write the next paragraph after the head (or ``parent_id``) from a plan or an action."""
    await asyncio.to_thread(_owned, api, caller, story_id)
    if body.parent_id is not None:
        await asyncio.to_thread(_node, api, story_id, body.parent_id)
    if (running := api.runs.running(story_id)) is not None:  # 409 before queueing
        raise Conflict(
            f"story {story_id} is already writing a paragraph (run {running.id}); wait for it "
            f"or stop it: DELETE /v1/stories/{story_id}/steps/running"
        )

    def start() -> Awaitable[Job]:
        return api.runs.step(story_id, plan=body.plan, action=body.action,
                             parent_id=body.parent_id)  # fmt: skip

    written = await _writing(api, caller, request, start)
    if written is None:
        return Response(status_code=499)  # the client left; the step was stopped
    return node_out(await asyncio.to_thread(api.writing.stories.node, story_id, written[1]))


def _run_out(job: Job) -> RunOut:
    payload = job.payload
    return RunOut(
        id=job.id,
        status=job.status.value,
        phase=str(payload.get("phase", "queued")),
        instruction=str(payload.get("instruction", "")),
        paragraph=str(payload.get("paragraph", "")),
        attempt=int(payload.get("attempt", 1)),
        notice=str(payload.get("notice", "")),
        error=job.error,
        node_id=None if not job.result else int(job.result["node_id"]),
    )


@router.get("/stories/{story_id}/steps/running", response_model=RunOut)
def running_step(story_id: RecordId, api: Services, caller: Authenticated) -> RunOut:
    """The step the story is writing now, with its paragraph as streamed so far (404: none)."""
    return _run_out(_running(api, caller, story_id))


def _running(api: ApiServices, caller: Caller, story_id: int) -> Job:
    _owned(api, caller, story_id)
    job = api.runs.running(story_id)
    if job is None:
        raise NotFound(f"story {story_id} is not writing a step now")
    return job


@router.delete("/stories/{story_id}/steps/running", response_model=RunOut)
def stop_step(story_id: RecordId, api: Services, caller: Authenticated) -> RunOut:
    """Stop the running step; nothing of it is stored (404: none is running)."""
    job = _running(api, caller, story_id)
    api.runs.stop(job.id)
    return _run_out(job)


@router.post("/stories/{story_id}/branch", response_model=NodeOut)
def branch(
    story_id: RecordId, body: BranchRequest, api: Services, caller: Authenticated
) -> NodeOut:
    """Continue from any node: it becomes the head; the next step sees its memory."""
    _owned(api, caller, story_id)
    _node(api, story_id, body.node_id)  # a node of another story is a 404, not a branch
    return node_out(api.writing.tree.switch(story_id, body.node_id))


@router.post("/stories/{story_id}/undo", response_model=NodeOut)
def undo(story_id: RecordId, api: Services, caller: Authenticated) -> NodeOut:
    """Move the head back to its parent (the undone step stays, as a branch)."""
    _owned(api, caller, story_id)
    try:
        return node_out(api.writing.tree.undo(story_id))
    except InvalidRecord as err:  # at the opening, or not started: a state, not a bad request
        raise Conflict(f"story {story_id}: {err}") from err


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
    if format == "markdown":
        data: bytes = api.writing.markdown(story_id).encode("utf-8")
    elif format == "docx":
        data = api.writing.docx(story_id)
    else:
        data = api.writing.epub(story_id)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", story.title).strip("-")[:60] or "story"
    headers = {"Content-Disposition": f'attachment; filename="{slug}.{extension}"'}
    return Response(data, media_type=media, headers=headers)


@router.delete("/stories/{story_id}", response_model=Deleted)
def delete_story(story_id: RecordId, api: Services, caller: Authenticated) -> Deleted:
    """Delete a story with its tree and its long-term memory (rows and vectors); refused (409)
    while a step of it is running."""
    _owned(api, caller, story_id)
    if api.runs.running(story_id) is not None:
        raise Conflict(
            f"story {story_id} is writing a step; stop it first (DELETE …/steps/running)"
        )
    api.writing.delete(story_id)
    return Deleted(id=story_id, deleted=True)
