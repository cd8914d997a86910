"""``/v1/documents``: upload (a job), list, get, search, ask, summarise (a job), delete.

Each document lives in its own namespace ``tenant:<name>/documents/<uuid>``; the namespace's id
is the document's id in the API. So a tenant's documents never share an index, deleting one
drops its rows and its vectors together, and ownership is a prefix check.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from app.api.auth import Authenticated, Services
from app.api.errors import ERROR_RESPONSES
from app.api.events import keepalive, sse
from app.api.schemas import (
    MAX_NAME_CHARS,
    Accepted,
    AnswerOut,
    AskRequest,
    Citation,
    Deleted,
    DocumentList,
    DocumentOut,
    DocumentState,
    DocumentText,
    Hit,
    Hits,
    RecordId,
    SearchRequest,
)
from app.api.services import ApiServices, Caller
from app.api.worker import Progress
from app.errors import KNOWN_ERRORS, Conflict, PayloadTooLarge, http_status
from app.loaders import load_document
from memory import Document, Job, NotFound
from memory.episodic import IngestProgress
from memory.records import Namespace
from memory.retrieval import Recall

router = APIRouter(prefix="/v1", tags=["documents"], responses=ERROR_RESPONSES)

# Share of an ingest's progress per stage (segmenting is the slow part with an LLM scorer).
_STAGES = {"segment": (0.0, 0.45), "embed": (0.45, 0.5), "store": (0.95, 0.05)}
_UNITS = 1000  # a job's done/total are thousandths of the whole

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DocumentText"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string", "maxLength": 200},
                        "segmenter": {
                            "type": "string",
                            "enum": ["auto", "surprise", "embedding", "fixed"],
                        },
                    },
                }
            },
        },
    }
}


# -- lookups -----------------------------------------------------------------------------------


def _view(space: Namespace, job: Job | None, document: Document | None) -> DocumentOut:
    payload: Mapping[str, Any] = job.payload if job is not None else {}
    state = None if job is None else job.status.value
    error = None if job is None else job.error
    if document is not None and state in (None, "done"):
        status: DocumentState = "ready"
    elif state in ("queued", "running", "failed"):
        status = state  # type: ignore[assignment]
    else:  # no job, or a finished one without its document: nothing usable was stored
        status, error = "failed", error or "the upload was interrupted; upload it again"
    result = (job.result if job is not None else None) or {}
    return DocumentOut(
        id=space.id,
        name=document.name if document else str(payload.get("name", "")),
        status=status,
        job_id=job.id if job else None,
        error=error if status == "failed" else None,
        chars=document.char_count if document else payload.get("chars"),
        episodes=result.get("episodes"),
        tokens=result.get("tokens"),
        segmenter=str(document.metadata.get("segmenter")) if document else None,
        created_at=space.created_at,
    )


def _documents(api: ApiServices, caller: Caller, only: int | None = None) -> list[DocumentOut]:
    tenancy = api.tenancy
    if only is None:
        spaces = tenancy.namespaces(caller.documents)
    else:
        found = tenancy.namespace(only, caller.documents)
        if found is None:
            raise NotFound(f"document {only} does not exist; list yours with GET /v1/documents")
        spaces = [found]
    ids = [s.id for s in spaces]
    jobs = tenancy.latest_jobs(ids, "ingest")
    documents = tenancy.documents(ids)
    return [_view(s, jobs.get(s.id), documents.get(s.id)) for s in spaces]


def _stored(api: ApiServices, caller: Caller, document_id: int) -> tuple[str, Document]:
    """The namespace and stored document of a ready document, else 404 / 409."""
    view = _documents(api, caller, document_id)[0]
    space = api.tenancy.namespace(document_id, caller.documents)
    document = api.tenancy.documents([document_id]).get(document_id)
    if view.status == "ready" and space is not None and document is not None:
        return space.name, document
    if view.status == "failed":
        raise Conflict(
            f"document {document_id} could not be read ({view.error}); delete it and "
            "upload it again"
        )
    raise Conflict(
        f"document {document_id} is still being read (job {view.job_id} is "
        f"{view.status}); wait for it: GET /v1/jobs/{view.job_id}/events"
    )


async def _ready(api: ApiServices, caller: Caller, document_id: int) -> tuple[str, Document]:
    return await asyncio.to_thread(_stored, api, caller, document_id)


def hit(recall: Recall, document_id: int | None) -> Hit:
    return Hit(
        episode_id=recall.episode_id,
        document_id=document_id,
        text=recall.text,
        start=recall.start,
        end=recall.end,
        tokens=recall.tokens,
        score=round(recall.score, 4),
        reason=recall.reason,
    )


# -- upload ------------------------------------------------------------------------------------


async def _from_json(request: Request) -> DocumentText:
    raw = await request.body()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HTTPException(
            400, f"the body is not UTF-8 (byte {err.start}); send UTF-8 JSON"
        ) from err
    try:
        return DocumentText.model_validate_json(raw)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False)) from err


async def _from_form(request: Request, limit: int) -> DocumentText:
    async with request.form(max_files=1, max_fields=4) as form:
        upload, name, segmenter = form.get("file"), form.get("name"), form.get("segmenter")
        if not isinstance(upload, UploadFile):
            raise RequestValidationError(
                [{"loc": ("file",), "msg": "a multipart field 'file' with the document is needed"}]
            )
        if upload.size is not None and upload.size > limit:
            raise PayloadTooLarge(
                f"the document is {upload.size} bytes, over the limit of {limit}; split it"
            )
        filename = Path(upload.filename or "document.txt")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"upload{filename.suffix[:10]}"
            path.write_bytes(await upload.read())
            loaded = await asyncio.to_thread(load_document, path, max_bytes=limit)
    if isinstance(name, str) and name.strip():
        title = name
    elif loaded.format in ("pdf", "docx", "epub") and loaded.title != "upload":
        title = loaded.title[:MAX_NAME_CHARS]  # the document's own metadata
    else:
        title = filename.stem[:MAX_NAME_CHARS] or "document"
    fields: dict[str, Any] = {"name": title, "text": loaded.text}  # a given name is checked
    if segmenter is not None:
        fields["segmenter"] = segmenter
    try:
        return DocumentText.model_validate(fields)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False)) from err


@router.post(
    "/documents",
    status_code=202,
    response_model=Accepted,
    openapi_extra=_UPLOAD_BODY,
    summary="Upload a document (JSON {name, text} or multipart 'file'); reads it as a job",
)
async def upload(request: Request, api: Services, caller: Authenticated) -> Accepted:
    limit = api.settings.api_max_upload_bytes
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        body = await _from_form(request, limit)
    elif kind in ("application/json", ""):
        body = await _from_json(request)
    else:
        raise HTTPException(
            415, f"content type {kind!r} is not accepted; send application/json or multipart"
        )
    size = len(body.text.encode("utf-8"))
    if size > limit:
        raise PayloadTooLarge(f"the document is {size} bytes, over the limit of {limit}")
    space = await asyncio.to_thread(api.store.namespace, f"{caller.documents}{uuid.uuid4().hex}")
    segmenter = body.segmenter or api.settings.segmenter
    job = await asyncio.to_thread(
        api.store.jobs.create,
        "ingest",
        namespace_id=space.id,
        total=_UNITS,
        payload={"name": body.name, "chars": len(body.text), "segmenter": segmenter},
    )

    async def ingest(progress: Progress) -> Mapping[str, Any]:
        def report(step: IngestProgress) -> None:
            start, share = _STAGES[step.stage]
            fraction = step.done / step.total if step.total else 1.0
            progress(int(_UNITS * (start + share * min(fraction, 1.0))), _UNITS)

        memory = api.reading.memory(space.name, segmenter)
        done = await memory.ingest(body.text, name=body.name, on_progress=report)
        return {
            "document_id": space.id,
            "episodes": len(done.episodes),
            "tokens": done.tokens,
            "chars": len(body.text),
            "seconds": round(done.seconds, 3),
        }

    request.app.state.worker.submit(job, ingest)
    return Accepted(document_id=space.id, job_id=job.id)


# -- reading -----------------------------------------------------------------------------------


@router.get("/documents", response_model=DocumentList)
def list_documents(api: Services, caller: Authenticated) -> DocumentList:
    return DocumentList(documents=_documents(api, caller))


@router.get("/documents/{document_id}", response_model=DocumentOut)
def get_document(document_id: RecordId, api: Services, caller: Authenticated) -> DocumentOut:
    return _documents(api, caller, document_id)[0]


@router.post("/documents/{document_id}/search", response_model=Hits)
async def search(
    document_id: RecordId, body: SearchRequest, api: Services, caller: Authenticated
) -> Hits:
    namespace, _ = await _ready(api, caller, document_id)
    recalled = await api.reading.memory(namespace).search(
        body.query,
        budget_tokens=body.budget_tokens,
        k_similar=body.k_similar,
        k_contiguous=body.k_contiguous,
    )
    return Hits(hits=[hit(r, document_id) for r in recalled])


@router.post(
    "/documents/{document_id}/ask",
    response_model=AnswerOut,
    responses={200: {"content": {"text/event-stream": {}}}},
    summary="Answer a question with citations (server-sent events with stream=true)",
)
async def ask(
    document_id: RecordId, body: AskRequest, api: Services, caller: Authenticated
) -> AnswerOut | StreamingResponse:
    namespace, _ = await _ready(api, caller, document_id)

    async def answer() -> AnswerOut:
        reader = await api.reader(namespace)
        found = await reader.ask(body.question, budget_tokens=body.budget_tokens)
        citations = [
            Citation(
                number=c.number,
                episode_id=c.episode_id,
                document_id=document_id,
                start=c.start,
                end=c.end,
                text=c.text,
            )
            for c in found.citations
        ]
        return AnswerOut(answer=found.text, citations=citations)

    if not body.stream:
        return await answer()

    async def events() -> AsyncIterator[str]:
        yield sse("progress", {"stage": "answering"})
        try:
            async for item in keepalive(answer()):
                yield item if isinstance(item, str) else sse("answer", item.model_dump())
        except KNOWN_ERRORS as err:  # the status line is sent: the error travels as an event
            status, kind = http_status(err)
            yield sse("error", {"type": kind, "message": str(err), "status": status})
            return
        yield sse("done", {})

    return StreamingResponse(events(), media_type="text/event-stream")


@router.post("/documents/{document_id}/summarize", status_code=202, response_model=Accepted)
async def summarize(
    document_id: RecordId, request: Request, api: Services, caller: Authenticated
) -> Accepted:
    namespace, document = await _ready(api, caller, document_id)
    job = await asyncio.to_thread(api.store.jobs.create, "summarize", namespace_id=document_id)

    async def work(progress: Progress) -> Mapping[str, Any]:
        reader = await api.reader(namespace)
        summary = await reader.summarize(document_id=document.id, on_progress=progress)
        return {
            "document_id": document_id,
            "summary": summary.text,
            "levels": len(summary.levels),
            "calls": summary.calls,
        }

    request.app.state.worker.submit(job, work)
    return Accepted(document_id=document_id, job_id=job.id)


@router.delete("/documents/{document_id}", response_model=Deleted)
def delete_document(document_id: RecordId, api: Services, caller: Authenticated) -> Deleted:
    view = _documents(api, caller, document_id)[0]
    if view.status in ("queued", "running"):
        raise Conflict(
            f"document {document_id} is being read (job {view.job_id}); delete it once the "
            "job has finished"
        )
    space = api.tenancy.namespace(document_id, caller.documents)
    if space is None:  # deleted meanwhile
        raise NotFound(f"document {document_id} does not exist")
    api.store.delete_namespace(space.name)
    return Deleted(id=document_id, deleted=True)
