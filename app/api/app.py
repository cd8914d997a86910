"""The REST API's FastAPI application: ``create_app(settings)``; ``mneme api`` serves it.

Routes live under ``/v1`` (documents, jobs, stories, memories) and need a tenant's API key;
``/health`` (the process answers) and ``/ready`` (the stores answer) do not. The OpenAPI schema
is at ``/openapi.json`` and the docs page at ``/docs``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import Scope

from app.api import documents, jobs, memories, stories
from app.api.errors import BodyLimit, error_response, install
from app.api.heap import Activity, Quiet, trim_when_quiet
from app.api.schemas import ErrorBody
from app.api.services import ApiServices
from app.api.worker import JobWorker
from app.errors import KNOWN_ERRORS, http_status
from app.reading import Reading
from app.settings import Settings

log = logging.getLogger("mneme.api")

REQUEST_BYTES = 1024 * 1024
"""Largest body of any request but a document upload, in bytes."""
_MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around an uploaded file


def create_app(settings: Settings, *, reading: Reading | None = None) -> FastAPI:
    """The API over ``settings``' stores; ``reading`` replaces the services (tests)."""
    api = ApiServices(settings, reading)
    activity = Activity()  # requests in flight: the heap is trimmed once they stop

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(lambda: api.store)  # open the stores (and repair drift) first
        await asyncio.to_thread(lambda: api.ids)  # the public-id key: a missing one fails here
        # Load the embedder now, not on the first search (it is lazy for the CLI's sake).
        await asyncio.to_thread(lambda: api.store.embedder.dimension)
        worker = JobWorker(
            api.store,
            heartbeat_s=settings.api_job_heartbeat_s,
            stale_s=settings.api_job_stale_s,
        )
        app.state.worker = worker
        await worker.start()
        trimmer = asyncio.create_task(trim_when_quiet(activity))
        try:
            yield
        finally:
            trimmer.cancel()
            await worker.stop()
            api.close()

    app = FastAPI(
        title="Mneme REST API",
        version="1",
        description="Long documents (ingest, search, ask with citations, summarise), stories "
        "and agent memories, per tenant. Authenticate with 'Authorization: Bearer <key>' "
        "(`mneme keys create --tenant NAME`).",
        lifespan=lifespan,
    )
    app.state.services = api
    install(app)

    upload_limit = settings.api_max_upload_bytes * 2 + _MULTIPART_SLACK  # JSON escapes included

    def limit_for(scope: Scope) -> int:
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/documents"
        return upload_limit if upload else REQUEST_BYTES

    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(Quiet, activity=activity)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """The process answers (no store is touched)."""
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["health"],
        responses={503: {"model": ErrorBody, "description": "A store is not ready."}},
    )
    def ready() -> Any:
        """The database answers and is migrated; the vector index answers."""
        try:
            api.store.database.ping()
            api.store.database.check_schema()
            api.store.index.ping()
        except KNOWN_ERRORS as err:
            status, kind = http_status(err)
            return error_response(503 if status >= 500 else status, kind, str(err))
        return JSONResponse({"status": "ready"})

    for module in (documents, jobs, stories, memories):
        app.include_router(module.router)
    return app
