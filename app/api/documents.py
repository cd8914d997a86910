"""``/v1/documents``: upload (a job), list, get, search, ask, summarise (a job), delete.

Each document lives in its own namespace ``tenant:<name>/documents/<uuid>``; the namespace's id,
as a public id (``app/api/ids.py``), is the document's id in the API. So a tenant's documents
never share an index, deleting one drops its rows and its vectors together, and ownership is a
prefix check. Routes take public ids, decode them once, and name the id the client sent in
their messages.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, get_args

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from app.api.admission import admitted
from app.api.auth import Authenticated, Services
from app.api.errors import ERROR_RESPONSES, MODEL_RESPONSES
from app.api.events import keepalive, sse
from app.api.ids import PublicIds
from app.api.schemas import (
    MAX_NAME_CHARS,
    STORABLE,
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
    PublicId,
    RecordId,
    SearchRequest,
    SegmenterName,
)
from app.api.services import ApiServices, Caller
from app.api.worker import Progress
from app.errors import KNOWN_ERRORS, Conflict, PayloadTooLarge, http_status
from app.loaders import load_document
from memory import Document, Job, NotFound
from memory.episodic import IngestProgress
from memory.records import Namespace
from memory.retrieval import Recall
from serving.server.disconnect import ClientGone

router = APIRouter(prefix="/v1", tags=["documents"], responses=ERROR_RESPONSES)

# Share of an ingest's progress per stage (segmenting is the slow part with an LLM scorer).
_STAGES = {"segment": (0.0, 0.45), "embed": (0.45, 0.5), "store": (0.95, 0.05)}
_UNITS = 1000  # a job's done/total are thousandths of the whole

_FORM_PARTS = 8
"""Most parts of each kind (files, fields) a multipart upload is parsed for; more is a 400."""
_FORM: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "additionalProperties": False,  # any other field is a 422 naming it
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "The document: text, Markdown, PDF, DOCX or EPUB (size limit from "
            "settings). A file with no text in it is refused (422).",
        },
        "name": {
            "type": "string",
            "maxLength": MAX_NAME_CHARS,
            "pattern": STORABLE,
            "description": "Blank or absent: the document's own title, else the file's name.",
        },
        "segmenter": {"type": "string", "enum": list(get_args(SegmenterName))},
    },
}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DocumentText"}},
            "multipart/form-data": {"schema": _FORM},
        },
    },
    "responses": {
        "400": {
            "description": "Malformed request: bad JSON, invalid UTF-8, a broken multipart "
            f"body, or more than {_FORM_PARTS} files or fields in it."
        }
    },
}


# -- lookups -----------------------------------------------------------------------------------


def _view(
    ids: PublicIds, space: Namespace, job: Job | None, document: Document | None
) -> DocumentOut:
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
        id=ids.documents.encode(space.id),
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


def _missing(document_id: int) -> NotFound:
    return NotFound(f"document {document_id} does not exist; list yours with GET /v1/documents")


def _space(api: ApiServices, caller: Caller, document_id: int) -> Namespace:
    """The namespace of the caller's document with public id ``document_id``, else 404."""
    found = api.tenancy.namespace(api.ids.documents.decode(document_id), caller.documents)
    if found is None:
        raise _missing(document_id)
    return found


def _views(api: ApiServices, spaces: list[Namespace]) -> list[DocumentOut]:
    rows = [s.id for s in spaces]
    jobs = api.tenancy.latest_jobs(rows, "ingest")
    documents = api.tenancy.documents(rows)
    return [_view(api.ids, s, jobs.get(s.id), documents.get(s.id)) for s in spaces]


def _document(api: ApiServices, caller: Caller, document_id: int) -> tuple[Namespace, DocumentOut]:
    """The namespace and the view of the caller's document ``document_id`` (public), else 404."""
    space = _space(api, caller, document_id)
    return space, _views(api, [space])[0]


def _stored(api: ApiServices, caller: Caller, document_id: int) -> tuple[Namespace, Document]:
    """The namespace and stored document of a ready document, else 404 / 409."""
    space, view = _document(api, caller, document_id)
    document = api.tenancy.documents([space.id]).get(space.id)
    if view.status == "ready" and document is not None:
        return space, document
    if view.status == "failed":
        raise Conflict(
            f"document {document_id} could not be read ({view.error}); delete it and "
            "upload it again"
        )
    raise Conflict(
        f"document {document_id} is still being read (job {view.job_id} is "
        f"{view.status}); wait for it: GET /v1/jobs/{view.job_id}/events"
    )


async def _ready(api: ApiServices, caller: Caller, document_id: int) -> tuple[Namespace, Document]:
    return await asyncio.to_thread(_stored, api, caller, document_id)


def hit(ids: PublicIds, recall: Recall, document_id: PublicId | None) -> Hit:
    return Hit(
        episode_id=ids.episodes.encode(recall.episode_id),
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
    async with request.form(max_files=_FORM_PARTS, max_fields=_FORM_PARTS) as form:
        fields = tuple(_FORM["properties"])
        problems = [
            {"loc": (key,), "msg": f"is not a field of an upload; send {', '.join(fields)}"}
            for key in form
            if key not in fields
        ]
        problems += [
            {"loc": (key,), "msg": "is given more than once; give it once"}
            for key in fields
            if len(form.getlist(key)) > 1
        ]
        upload, name, segmenter = form.get("file"), form.get("name"), form.get("segmenter")
        problems += [
            {"loc": (key,), "msg": "is a file; send it as a plain form field"}
            for key, value in (("name", name), ("segmenter", segmenter))
            if isinstance(value, UploadFile)
        ]
        if problems or not isinstance(upload, UploadFile):
            if not isinstance(upload, UploadFile):
                needed = "a multipart field 'file' with the document is needed"
                problems.append({"loc": ("file",), "msg": needed})
            raise RequestValidationError(problems)
        if upload.size is not None and upload.size > limit:
            raise PayloadTooLarge(
                f"the document is {upload.size} bytes, over the limit of {limit}; split it"
            )
        filename = Path(upload.filename or "document.txt")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"upload{filename.suffix[:10]}"
            path.write_bytes(await upload.read())
            loaded = await asyncio.to_thread(
                load_document,
                path,
                max_bytes=limit,
                max_chars=limit,  # the text's UTF-8 bytes are bounded by limit anyway
                name=filename.name,  # errors name the client's file, not our temp path
            )
    given = name if isinstance(name, str) else ""
    if given.strip() or len(given) > MAX_NAME_CHARS or "\x00" in given:
        title = given  # checked below, as a JSON name is (the schema refuses what this does)
    else:  # blank: the document's own title (its metadata), else the file's name
        own = loaded.format in ("pdf", "docx", "epub") and loaded.title != "upload"
        title = (loaded.title if own else filename.stem).replace("\x00", "")
        title = title[:MAX_NAME_CHARS].strip() or "document"
    body: dict[str, Any] = {"name": title, "text": loaded.text}  # a given name is checked
    if segmenter is not None:
        body["segmenter"] = segmenter
    try:
        return DocumentText.model_validate(body)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False)) from err


@router.post(
    "/documents",
    status_code=202,
    response_model=Accepted,
    responses=MODEL_RESPONSES,
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
    ticket = api.job_gate.enter(caller.tenant)  # 429 here, before anything is stored
    try:
        space = await asyncio.to_thread(
            api.store.namespace, f"{caller.documents}{uuid.uuid4().hex}"
        )
    except BaseException:
        ticket.release()
        raise
    segmenter = body.segmenter or api.settings.segmenter
    try:
        job = await asyncio.to_thread(
            api.store.jobs.create,
            "ingest",
            namespace_id=space.id,
            total=_UNITS,
            payload={"name": body.name, "chars": len(body.text), "segmenter": segmenter},
        )
    except BaseException:
        ticket.release()
        raise

    async def ingest(progress: Progress) -> Mapping[str, Any]:
        def report(step: IngestProgress) -> None:
            start, share = _STAGES[step.stage]
            fraction = step.done / step.total if step.total else 1.0
            progress(int(_UNITS * (start + share * min(fraction, 1.0))), _UNITS)

        memory = api.reading.memory(space.name, segmenter)
        scored = segmenter in ("surprise", "auto")  # by the model: it shares the model's slots
        slot = api.model_gate.enter(caller.tenant, bounded=False) if scored else nullcontext()
        async with slot:
            done = await memory.ingest(body.text, name=body.name, on_progress=report)
        return {
            "document_id": space.id,  # a row id, as every job result holds: jobs.py shows it
            "episodes": len(done.episodes),
            "tokens": done.tokens,
            "chars": len(body.text),
            "seconds": round(done.seconds, 3),
        }

    request.app.state.worker.submit(job, ingest, ticket)
    return Accepted(document_id=api.ids.documents.encode(space.id), job_id=job.id)


# -- reading -----------------------------------------------------------------------------------


@router.get("/documents", response_model=DocumentList)
def list_documents(api: Services, caller: Authenticated) -> DocumentList:
    return DocumentList(documents=_views(api, api.tenancy.namespaces(caller.documents)))


@router.get("/documents/{document_id}", response_model=DocumentOut)
def get_document(document_id: RecordId, api: Services, caller: Authenticated) -> DocumentOut:
    return _document(api, caller, document_id)[1]


@router.post("/documents/{document_id}/search", response_model=Hits)
async def search(
    document_id: RecordId, body: SearchRequest, api: Services, caller: Authenticated
) -> Hits:
    space, _ = await _ready(api, caller, document_id)
    recalled = await api.reading.memory(space.name).search(
        body.query,
        budget_tokens=body.budget_tokens,
        k_similar=body.k_similar,
        k_contiguous=body.k_contiguous,
    )
    shown = api.ids.documents.encode(space.id)
    return Hits(hits=[hit(api.ids, r, shown) for r in recalled])


@router.post(
    "/documents/{document_id}/ask",
    response_model=AnswerOut,
    responses={200: {"content": {"text/event-stream": {}}}, **MODEL_RESPONSES},
    summary="Answer a question with citations (server-sent events with stream=true)",
)
async def ask(
    document_id: RecordId,
    body: AskRequest,
    request: Request,
    api: Services,
    caller: Authenticated,
) -> AnswerOut | Response:
    space, _ = await _ready(api, caller, document_id)
    ticket = api.model_gate.enter(caller.tenant)  # 429 now if too much is queued

    async def answer() -> AnswerOut:
        return await admitted(
            ticket,
            answering,
            deadline_s=api.settings.api_request_timeout_s,
            what="answer",
            receive=None if body.stream else request.receive,
        )

    async def answering() -> AnswerOut:
        reader = await api.reader(space.name)
        found = await reader.ask(body.question, budget_tokens=body.budget_tokens)
        citations = [
            Citation(
                number=c.number,
                episode_id=api.ids.episodes.encode(c.episode_id),
                document_id=api.ids.documents.encode(space.id),
                start=c.start,
                end=c.end,
                text=c.text,
            )
            for c in found.citations
        ]
        return AnswerOut(answer=found.text, citations=citations)

    if not body.stream:
        try:
            return await answer()
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the work was stopped

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


@router.post(
    "/documents/{document_id}/summarize",
    status_code=202,
    response_model=Accepted,
    responses=MODEL_RESPONSES,
)
async def summarize(
    document_id: RecordId, request: Request, api: Services, caller: Authenticated
) -> Accepted:
    space, document = await _ready(api, caller, document_id)
    ticket = api.job_gate.enter(caller.tenant)  # 429 here, before the job exists
    try:
        job = await asyncio.to_thread(api.store.jobs.create, "summarize", namespace_id=space.id)
    except BaseException:
        ticket.release()
        raise

    async def work(progress: Progress) -> Mapping[str, Any]:
        async with api.model_gate.enter(caller.tenant, bounded=False):  # the model's slots
            reader = await api.reader(space.name)
            summary = await reader.summarize(document_id=document.id, on_progress=progress)
        return {
            "document_id": space.id,  # a row id, as every job result holds: jobs.py shows it
            "summary": summary.text,
            "levels": len(summary.levels),
            "calls": summary.calls,
        }

    request.app.state.worker.submit(job, work, ticket)
    return Accepted(document_id=api.ids.documents.encode(space.id), job_id=job.id)


@router.delete("/documents/{document_id}", response_model=Deleted)
def delete_document(document_id: RecordId, api: Services, caller: Authenticated) -> Deleted:
    space, view = _document(api, caller, document_id)
    if view.status in ("queued", "running"):
        raise Conflict(
            f"document {document_id} is being read (job {view.job_id}); delete it once the "
            "job has finished"
        )
    open_jobs = api.store.jobs.running("summarize", namespace_id=space.id, queued=True)
    if open_jobs:
        summary = open_jobs[0]
        raise Conflict(
            f"document {document_id} is being summarised (job {summary.id}); delete it once "
            f"the job has finished: GET /v1/jobs/{summary.id}/events"
        )
    try:
        api.store.delete_namespace(space.name)
    except NotFound as err:  # deleted meanwhile
        raise _missing(document_id) from err
    return Deleted(id=api.ids.documents.encode(space.id), deleted=True)
