"""``/v1/jobs``: a job's state, and its progress as server-sent events until it ends.

Jobs keep row ids in their results and errors (the CLI reads the same rows); :func:`job_out`
shows them as public ids (``app/api/ids.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.auth import Authenticated, Services
from app.api.errors import ERROR_RESPONSES
from app.api.events import follow
from app.api.ids import PublicIds
from app.api.schemas import JobOut
from app.api.services import ApiServices, Caller
from memory import Job, NotFound

router = APIRouter(prefix="/v1", tags=["jobs"], responses=ERROR_RESPONSES)

POLL_S = 0.25
"""Seconds between reads of a followed job's row."""


def _result(ids: PublicIds, result: Any) -> dict[str, Any] | None:
    """A job's result with the row ids it holds (ingest, summarise, story steps) as public."""
    if result is None:
        return None
    shown = dict(result)
    kinds = {"document_id": ids.documents, "story_id": ids.stories, "node_id": ids.nodes}
    for key, kind in kinds.items():
        value = shown.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            shown[key] = kind.encode(value)
    return shown


def job_out(ids: PublicIds, job: Job) -> JobOut:
    document = job.namespace_id if job.kind in ("ingest", "summarize") else None
    return JobOut(
        id=job.id,
        kind=job.kind,
        status=job.status.value,
        progress=round(job.progress, 4),
        done=job.done,
        total=job.total,
        error=None if job.error is None else ids.reword(job.error),
        result=_result(ids, job.result),
        document_id=None if document is None else ids.documents.encode(document),
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def _owned(api: ApiServices, caller: Caller, job_id: str) -> Job:
    job = api.tenancy.job(job_id, caller.prefix) if len(job_id) <= 64 else None
    if job is None:
        raise NotFound(f"job {job_id[:64]!r} does not exist")
    return job


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, api: Services, caller: Authenticated) -> JobOut:
    return job_out(api.ids, _owned(api, caller, job_id))


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Job events."}},
    summary="Follow a job: 'progress' events, then 'done' or 'failed' (server-sent events)",
)
def job_events(job_id: str, api: Services, caller: Authenticated) -> StreamingResponse:
    _owned(api, caller, job_id)  # 404 before the stream starts

    async def read() -> dict[str, Any] | None:
        job = await asyncio.to_thread(api.tenancy.job, job_id, caller.prefix)
        return None if job is None else job_out(api.ids, job).model_dump(mode="json")

    return StreamingResponse(follow(read, POLL_S), media_type="text/event-stream")
